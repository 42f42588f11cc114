"""The segmenter's fast student path (per voxel, folded head, no local head) against the full per-point path."""

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from clip2scene_core.data import open_source
from clip2scene_core.segmenter import Segmenter
from clip2scene_core.student.checkpoint import StudentModel
from clip2scene_core.student.network import Classifier, Student, StudentConfig
from clip2scene_core.teacher.text import HashTextEncoder
from clip2scene_core.vocabulary import Vocabulary, load_vocabulary


def model(vocabulary, classifier=None) -> StudentModel:
    torch.manual_seed(0)
    network = Student(StudentConfig(preset="tiny", embed_dim=64))
    with torch.no_grad():  # varied features (an untrained network's are nearly constant) and a head bias
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.normal_(0.0, 0.1)
                module.weight.uniform_(1.0, 3.0)
                module.bias.normal_(0.0, 0.2)
        network.semantic_head.weight.normal_(0.0, 1.0)
        network.semantic_head.bias.normal_(0.0, 0.5)
    return StudentModel(network, vocabulary, HashTextEncoder(64), classifier=classifier)


def frame():
    return open_source("synthetic:frames=1,seed=3,cameras=0,beams=8")[0]


def full_path(student: StudentModel, scene, query=None):
    features = student.features(scene)
    labels, scores = student.classify(features)
    similarity = None if query is None else (F.normalize(features, dim=1) @ query).numpy()
    return labels, scores, similarity


def assert_same(fast, full):
    assert np.array_equal(fast[0], full[0])
    np.testing.assert_allclose(fast[1], full[1], rtol=1e-4, atol=1e-5)
    if full[2] is not None:
        np.testing.assert_allclose(fast[2], full[2], rtol=1e-4, atol=1e-5)


def test_fast_path_gives_the_full_paths_labels_and_scores_also_after_a_vocabulary_change():
    nuscenes = load_vocabulary("nuscenes")
    student, scene = model(nuscenes), frame()
    assert len(np.unique(student.infer(scene)[0])) > 1  # a scene with several labels, not a trivial one
    assert_same(student.infer(scene), full_path(student, scene))
    other = Vocabulary.from_names(["tree", "wall", "person", "bicycle"], "other")
    student.set_vocabulary(other)
    fast = student.infer(scene)
    assert fast[0].max() < 4
    assert_same(fast, full_path(student, scene))


def test_fast_path_follows_weights_written_after_the_fold():
    student, scene = model(load_vocabulary("nuscenes")), frame()
    student.infer(scene)
    with torch.no_grad():
        student.network.semantic_head.weight.mul_(-1.0)
    assert_same(student.infer(scene), full_path(student, scene))


def test_fast_path_with_a_query_and_with_a_fine_tuned_classifier():
    nuscenes = load_vocabulary("nuscenes")
    torch.manual_seed(1)
    classifier = Classifier(HashTextEncoder(64).embed(nuscenes))
    classifier.classes = list(nuscenes.names)
    with torch.no_grad():
        classifier.bias.normal_(0.0, 0.3)
    student, scene = model(nuscenes, classifier), frame()
    assert student.classifier is not None
    query = F.normalize(HashTextEncoder(64).embed(Vocabulary.from_names(["car"], "q"))[0], dim=0)
    assert_same(student.infer(scene, query), full_path(student, scene, query))


def test_segmenter_uses_the_fast_path_with_unchanged_results():
    nuscenes = load_vocabulary("nuscenes")
    student, scene = model(nuscenes), frame()
    segmenter = Segmenter(nuscenes, "student", student=student)
    segmenter.set_query("car")
    result = segmenter.segment(scene)
    assert_same((result.labels, result.scores, result.similarity), full_path(student, scene, segmenter.query_embedding))


def test_an_empty_frame():
    student = model(load_vocabulary("nuscenes"))
    empty = replace(frame(), points=np.zeros((0, 3), np.float32), fields={}, labels=None)
    labels, scores, similarity = student.infer(empty, torch.zeros(64))
    assert len(labels) == len(scores) == len(similarity) == 0
