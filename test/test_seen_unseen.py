"""MCFA's seen/unseen setting: training labels from ground truth for seen classes and from the teacher for the
others, hIoU, the shipped splits, and the CLI from a labelled bag and from the synthetic world."""

import copy
import json

import numpy as np
import pytest
import torch

from clip2scene_core.cli import main
from clip2scene_core.data import open_source
from clip2scene_core.data.rosbag2 import write_bag
from clip2scene_core.errors import UsageError
from clip2scene_core.metrics import ConfusionMatrix, Evaluation, harmonic_mean, seen_unseen
from clip2scene_core.samples import pair_frame, seen_unseen_labels
from clip2scene_core.teacher import build_teacher
from clip2scene_core.vocabulary import IGNORE, VocabularyError, class_mask, load_vocabulary, split_unseen

SCENE = "synthetic:frames=2,seed=6,cameras=2,width=96,height=64"


@pytest.fixture(scope="module")
def vocabulary():
    return load_vocabulary("nuscenes")


def test_hiou_on_a_hand_made_confusion_matrix():
    matrix = ConfusionMatrix(3)
    matrix.matrix[:] = [[8, 2, 0, 0],    # class 0 (seen): 8 right, 2 taken for class 1
                        [0, 3, 1, 0],    # class 1 (unseen): 3 right, 1 taken for class 2
                        [0, 0, 1, 3]]    # class 2 (unseen): 1 right, 3 left unlabelled
    # IoU: class 0 8 / 10, class 1 3 / (4 + 5 - 3) = 0.5, class 2 1 / (4 + 2 - 1) = 0.2
    scores = seen_unseen(matrix, np.array([True, False, False]))
    assert scores["seen_miou"] == pytest.approx(0.8)
    assert scores["unseen_miou"] == pytest.approx(0.35)
    assert scores["hiou"] == pytest.approx(2 * 0.8 * 0.35 / 1.15)
    assert harmonic_mean(0.0, 0.0) == 0.0 and np.isnan(harmonic_mean(0.5, float("nan")))
    evaluation = Evaluation(["a", "b", "c"], matrix, matrix, seen=["a"])
    report = evaluation.to_dict()
    assert report["unseen_classes"] == ["b", "c"] and report["in_view"]["hiou"] == pytest.approx(scores["hiou"])
    assert "hIoU" in evaluation.table() and "unseen" in evaluation.table()
    assert "hiou" not in Evaluation(["a", "b", "c"], matrix, matrix).to_dict()["all_points"]


def test_shipped_splits_name_classes_of_their_vocabularies(vocabulary):
    assert split_unseen(vocabulary, "unseen4") == ["motorcycle", "trailer", "terrain", "traffic_cone"]
    assert split_unseen(load_vocabulary("semantickitti"), "unseen4") == ["motorcycle", "truck", "bicyclist",
                                                                          "traffic-sign"]
    for name in ("unseen2", "unseen6", "unseen8"):   # nested: each holds the smaller ones
        assert len(split_unseen(vocabulary, name)) == int(name[-1])
    with pytest.raises(VocabularyError, match="--split unseen5: no such split of vocabulary 'nuscenes_lidarseg_16'"):
        split_unseen(vocabulary, "unseen5")
    with pytest.raises(VocabularyError, match="train.seen_classes: 'lorry' not in vocabulary"):
        class_mask(vocabulary, ["car", "lorry"], "train.seen_classes")


def test_seen_classes_take_ground_truth_and_the_others_the_teachers_best_unseen_class(vocabulary):
    frame = open_source(SCENE)[0]
    teacher = build_teacher("noisy:0.3", vocabulary, text_encoder="hash")
    pairing = pair_frame(frame, teacher, 1, None)
    seen = ~class_mask(vocabulary, split_unseen(vocabulary, "unseen4"), "split")
    labels = seen_unseen_labels(frame, pairing, pairing.labels, seen, teacher)
    truth = vocabulary.raw_to_class(frame.labels)
    truth_seen = (truth >= 0) & seen[np.clip(truth, 0, None)]
    assert truth_seen.sum() > 100 and (~truth_seen & pairing.paired).sum() > 20
    assert np.array_equal(labels[truth_seen], truth[truth_seen])            # paired or not
    others = ~truth_seen & pairing.paired
    assert (~seen[labels[others]]).all()                                    # only unseen classes
    nearest = np.flatnonzero(~seen)[(pairing.features[others] @ teacher.text_embeddings[~seen].T).argmax(1)]
    assert np.array_equal(labels[others], nearest)
    assert (labels[~truth_seen & ~pairing.paired] == IGNORE).all()
    unlabelled = copy.copy(frame)
    unlabelled.labels = None
    with pytest.raises(UsageError, match="has no per-point labels: train.seen_classes"):
        seen_unseen_labels(unlabelled, pairing, pairing.labels, seen, teacher)


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    return write_bag(open_source(SCENE), tmp_path_factory.mktemp("bag") / "bag")


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("teacher: {text_encoder: hash}\nstudent: {preset: tiny}\n"
                    "train: {optimizer: adamw, lr: 0.001, max_paired: 1000, batch_size: 1, sweeps: 1, "
                    "spatial_temporal: false, distill_weight: 1.0, global_weight: 1.0}\n")
    return path


def test_seen_unseen_from_the_cli_on_a_labelled_bag(tmp_path, bag, config, capsys, vocabulary):
    out = tmp_path / "pretrain"
    assert main(["pretrain", "--data", f"bag:{bag}", "--teacher", "noisy:0.2", "--vocabulary", "nuscenes",
                 "--config", str(config), "--epochs", "1", "--split", "unseen4", "--out", str(out)]) == 0
    assert "global" in (out / "log.csv").read_text() and "distillation" in (out / "log.csv").read_text()
    checkpoint = out / "checkpoints" / "last.pt"
    unseen = [name for name in vocabulary.names if name in ("motorcycle", "trailer", "terrain", "traffic_cone")]
    seen = [name for name in vocabulary.names if name not in unseen]
    assert torch.load(checkpoint, weights_only=True)["seen_classes"] == seen
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", f"bag:{bag}", "--out",
                 str(tmp_path / "eval")]) == 0
    assert "hIoU" in capsys.readouterr().out
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert report["seen_classes"] == seen and report["unseen_classes"] == unseen
    assert {"seen_miou", "unseen_miou", "hiou"} <= set(report["all_points"]) and report["all_points"]["iou"]
    # An option names other seen classes for the report; two options at once are refused.
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", SCENE, "--unseen-classes", "car,bus",
                 "--out", str(tmp_path / "eval2")]) == 0
    assert json.loads((tmp_path / "eval2" / "evaluation.json").read_text())["unseen_classes"] == ["bus", "car"]
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", SCENE, "--split", "unseen4",
                 "--seen-classes", "car"]) == 2
    assert "--seen-classes and --split both name the seen classes" in capsys.readouterr().err


def test_seen_unseen_pretraining_from_the_synthetic_world_names_a_wrong_class(tmp_path, config, capsys):
    assert main(["pretrain", "--data", SCENE, "--teacher", "noisy:0.2", "--vocabulary", "nuscenes", "--config",
                 str(config), "--epochs", "1", "--seen-classes", "car,lorry", "--out", str(tmp_path / "bad")]) == 2
    assert "--seen-classes: 'lorry' not in vocabulary 'nuscenes_lidarseg_16'" in capsys.readouterr().err
    out = tmp_path / "pretrain"
    assert main(["pretrain", "--data", SCENE, "--teacher", "noisy:0.2", "--vocabulary", "nuscenes", "--config",
                 str(config), "--epochs", "1", "--seen-classes", "car,driveable_surface", "--out", str(out)]) == 0
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["seen_classes"] == ["car",
                                                                                             "driveable_surface"]
