"""Self-training from a mean teacher: the EMA, per-class thresholds, the agreement gate, points outside cameras."""

import numpy as np
import pytest
import torch

from clip2scene_core.data import FrameList, open_source
from clip2scene_core.self_training import MeanTeacher, confident
from clip2scene_core.student.network import Student, StudentConfig
from clip2scene_core.teacher import build_teacher
from clip2scene_core.train import Pretrainer, TrainConfig
from clip2scene_core.vocabulary import load_vocabulary


def test_mean_teacher_is_an_exponential_moving_average():
    torch.manual_seed(0)
    student = Student(StudentConfig(preset="tiny", embed_dim=8))
    teacher = MeanTeacher(student, decay=0.9)
    start = [p.detach().clone() for p in student.parameters()]
    for step in range(3):
        with torch.no_grad():
            for p in student.parameters():
                p.add_(1.0)
        teacher.update(student)
    # Warm-up: the decay of step t is min(0.9, (1 + t) / (10 + t)): 0.1, 2/11, 3/12.
    expected = [s.clone() for s in start]
    for step, shift in enumerate((1.0, 2.0, 3.0)):
        decay = min(0.9, (1 + step) / (10 + step))
        expected = [decay * e + (1 - decay) * (s + shift) for e, s in zip(expected, start)]
    for mine, wanted in zip(teacher.model.parameters(), expected):
        assert torch.allclose(mine, wanted, atol=1e-5)
        assert not mine.requires_grad
    state = teacher.state_dict()
    other = MeanTeacher(Student(StudentConfig(preset="tiny", embed_dim=8)), decay=0.9)
    other.load_state_dict(state)
    assert other.steps == 3 and all(torch.equal(a, b) for a, b in zip(other.model.parameters(),
                                                                         teacher.model.parameters()))


def test_confidence_thresholds_are_per_class():
    # Class 0 is easy (confidences near 1), class 1 hard (near 0.3): a global threshold would keep no class-1 point.
    labels = torch.tensor([0] * 4 + [1] * 4)
    confidence = torch.tensor([0.99, 0.98, 0.97, 0.96, 0.35, 0.33, 0.31, 0.29])
    keep = confident(labels, confidence, 0.5, 3)
    assert keep.tolist() == [True, True, False, False, True, True, False, False]
    assert confident(labels, confidence, 1.0, 3).all()
    assert confident(labels, confidence, 0.25, 3).sum() == 2


@pytest.fixture(scope="module")
def scene():
    return FrameList(list(open_source("synthetic:frames=2,seed=2,cameras=1,width=96,height=54,sweeps=0,beams=8")))


def run(scene, tmp_path, **settings):
    vocabulary = load_vocabulary("nuscenes")
    teacher = build_teacher("noisy:0.0", vocabulary, text_encoder="hash")
    config = TrainConfig(**{**dict(epochs=4, batch_size=1, sweeps=1, max_paired=800, seed=1, self_training=True),
                            **settings})
    trainer = Pretrainer([scene], teacher, StudentConfig(preset="tiny"), config, tmp_path, torch.device("cpu"),
                         progress=False)
    return trainer, trainer.run()


def test_self_training_waits_for_agreement_and_labels_points_outside_the_cameras(scene, tmp_path):
    never, history = run(scene, tmp_path / "never", self_training_start=0.0, self_training_agreement=1.01)
    assert never.self_training_from is None and all(r["self_training"] == 0 for r in history)
    assert all(0 <= r["agreement"] <= 1 for r in history)
    gated, history = run(scene, tmp_path / "gated", self_training_start=0.5, self_training_agreement=0.0)
    assert gated.self_training_from == 2 and [r["self_training"] for r in history] == [0, 0, 1, 1]
    assert history[1]["self_trained"] == 0 and history[2]["self_trained"] > 0
    # One camera sees a fraction of the scan: as many points no camera pairs join as there are paired ones.
    samples = gated._samples(3, [0], candidates=True)
    assert (~samples[0].paired).sum() == samples[0].paired.sum() == 800


def test_resuming_with_a_mean_teacher_ends_exactly_where_an_unbroken_run_ends(scene, tmp_path):
    settings = dict(self_training=True, self_training_start=0.5, self_training_agreement=0.0, epochs=3)
    unbroken, _ = run(scene, tmp_path / "a", **settings)
    vocabulary = load_vocabulary("nuscenes")
    teacher = build_teacher("noisy:0.0", vocabulary, text_encoder="hash")
    resumed = Pretrainer([scene], teacher, StudentConfig(preset="tiny"),
                         TrainConfig(**{**dict(batch_size=1, sweeps=1, max_paired=800, seed=1), **settings}),
                         tmp_path / "b", torch.device("cpu"), progress=False)
    resumed.resume(tmp_path / "a" / "checkpoints" / "epoch_002.pt")
    resumed.run()
    assert resumed.self_training_from == unbroken.self_training_from == 2
    for a, b in zip(unbroken.student.state_dict().values(), resumed.student.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(unbroken.mean_teacher.model.parameters(), resumed.mean_teacher.model.parameters()):
        assert torch.equal(a, b)
    assert np.allclose([r["loss"] for r in unbroken.history], [r["loss"] for r in resumed.history], rtol=0, atol=0)
