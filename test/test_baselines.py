"""Fair baselines wherever teacher and student are compared: the teacher's projection in view, and over all points
with its unlabelled points filled from their labelled neighbours (fill_from_neighbours); in evaluate, replay and
the demo's table."""

import json

import numpy as np
import pytest

from clip2scene_core.data import open_source
from clip2scene_core.data.rosbag2 import write_bag
from clip2scene_core.evaluate import evaluate_source, write_report
from clip2scene_core.metrics import FILL_K, FILL_RADIUS_M, ConfusionMatrix, Evaluation, fill_from_neighbours
from clip2scene_core.replay import replay
from clip2scene_core.segmenter import Segmenter
from clip2scene_core.teacher import build_teacher
from clip2scene_core.vocabulary import IGNORE, load_vocabulary

SCENE = "synthetic:frames=1,seed=0,cameras=6,width=200,height=112,beams=16"
U = IGNORE


@pytest.fixture(scope="module")
def vocabulary():
    return load_vocabulary("nuscenes")


@pytest.fixture(scope="module")
def teacher_segmenter(vocabulary):
    return Segmenter(vocabulary, "teacher", teacher=build_teacher("labels", vocabulary, text_encoder="hash"))


def reference_fill(points, labels, k, radius_m):
    """One point at a time, by the definition: the k nearest labelled points, those within radius_m, majority,
    ties to the nearest."""
    filled = labels.copy()
    known = np.flatnonzero(labels != IGNORE)
    for i in np.flatnonzero(labels == IGNORE):
        distance = np.linalg.norm(points[known, :3] - points[i, :3], axis=1)
        nearest = np.argsort(distance, kind="stable")[:k]
        votes = labels[known[nearest[distance[nearest] <= radius_m]]]
        if len(votes):
            counts = {c: int((votes == c).sum()) for c in votes}
            filled[i] = next(c for c in votes if counts[c] == max(counts.values()))
    return filled


def test_fill_on_a_hand_made_cloud():
    # (x, y, z, label); clusters 20 m apart, k = 4 nearest within 1 m.
    cloud = [
        # majority over the nearest: class 2 is nearest (0.1 m), class 1 has two of the 4 nearest; the 5th point
        # (class 2, 0.6 m) is not among the 4, else 2 and 1 would tie and the nearest, 2, would win
        (0, 0, 0, U), (0.1, 0, 0, 2), (0, 0.2, 0, 1), (0, 0, 0.3, 1), (0.45, 0, 0, 0), (0, 0.6, 0, 2),
        # a 2-2 tie goes to the class of the nearest of the tied points (3 at 0.2 m, not the lower index 0)
        (20, 0, 0, U), (20.2, 0, 0, 3), (20, 0.3, 0, 0), (20, 0, 0.5, 0), (20, -0.6, 0, 3),
        # the radius: three class-5 points at 1.01 m do not vote, the one class-4 point at 0.99 m does
        (40, 0, 0, U), (40.99, 0, 0, 4), (40, 1.01, 0, 5), (40, -1.01, 0, 5), (40, 0, 1.01, 5),
        # nothing labelled within 1 m: stays unlabelled
        (60, 0, 0, U), (61.5, 0, 0, 1),
        # the radius is inclusive: exactly 1 m away
        (80, 0, 0, U), (81, 0, 0, 2),
        # unlabelled points do not vote for each other: both take the labelled point's class
        (100, 0, 0, U), (100.1, 0, 0, U), (100.8, 0, 0, 1),
    ]
    points = np.array([c[:3] for c in cloud], np.float64)
    labels = np.array([c[3] for c in cloud], np.int64)
    expected = labels.copy()
    expected[[0, 6, 11, 16, 18, 20, 21]] = [1, 3, 4, U, 2, 1, 1]
    intensity = np.c_[points, np.arange(len(points))].astype(np.float32)  # extra columns are ignored
    for given in (points, intensity):
        filled = fill_from_neighbours(given, labels, k=4, radius_m=1.0)
        assert filled.dtype == np.int64 and filled.tolist() == expected.tolist()
    assert labels[0] == U  # the input is left as it was
    # k = 5: the class-2 point at 0.6 m joins the vote, 2 and 1 tie, the nearest (class 2, 0.1 m) wins
    assert fill_from_neighbours(points, labels, k=5, radius_m=1.0)[0] == 2
    assert fill_from_neighbours(points, labels, k=1, radius_m=1.0)[[0, 6]].tolist() == [2, 3]
    assert fill_from_neighbours(points, labels, k=4, radius_m=2.0)[16] == 1  # 1.5 m: now within the radius
    assert (fill_from_neighbours(points, np.full(len(points), U), 4, 1.0) == U).all()  # nothing labelled
    assert fill_from_neighbours(points[:0], labels[:0]).shape == (0,)
    for bad in (dict(k=0), dict(radius_m=0.0), dict(radius_m=float("nan"))):
        with pytest.raises(ValueError):
            fill_from_neighbours(points, labels, **bad)
    with pytest.raises(ValueError):
        fill_from_neighbours(points[:, :2], labels)
    with pytest.raises(ValueError):
        fill_from_neighbours(points, labels[:-1])


@pytest.mark.parametrize("k,radius_m", [(FILL_K, FILL_RADIUS_M), (1, 0.7), (8, 3.0)])
def test_fill_matches_the_definition_on_a_random_cloud(k, radius_m):
    """Clusters of different densities, so that points resolve at every cell size of the grid levels."""
    rng = np.random.default_rng(k)
    points = np.concatenate([rng.normal(centre, spread, (n, 3)) for centre, spread, n in
                             ((0, 0.3, 300), (5, 1.0, 300), (-8, 3.0, 300), (15, 6.0, 200))])
    labels = rng.integers(0, 6, len(points))
    labels[rng.random(len(points)) < 0.4] = U
    filled = fill_from_neighbours(points, labels, k, radius_m)
    assert np.array_equal(filled, reference_fill(points, labels, k, radius_m))
    assert 0 < (filled == U).sum() < (labels == U).sum()  # some filled, some too far from any labelled point


def test_an_evaluation_with_a_filled_row():
    points = np.array([[0, 0, 0], [0.4, 0, 0], [1, 0, 0], [30, 0, 0], [30.5, 0, 0]], float)
    predicted = np.array([0, U, 1, U, U])
    target = np.array([0, 0, 1, 1, 1])
    evaluation = Evaluation.empty(["a", "b"], fill=True)
    filled = evaluation.update(predicted, target, np.array([1, 0, 1, 0, 0], bool), points)
    assert filled.tolist() == [0, 0, 1, U, U]  # one vote each for a and b: the nearest (a) wins; 30 m: too far
    report = evaluation.to_dict()
    assert report["neighbour_fill"] == {"k": FILL_K, "radius_m": FILL_RADIUS_M}
    assert report["all_points"]["coverage"] == pytest.approx(0.4) and report["filled_all_points"]["coverage"] == \
        pytest.approx(0.6)
    assert report["filled_all_points"]["iou"] == {"a": 1.0, "b": pytest.approx(1 / 3)}
    assert report["filled_all_points"]["confusion"] == [[2, 0, 0], [0, 1, 2]]
    assert report["in_view"]["points"] == 2 and report["filled_all_points"]["points"] == 5
    table = evaluation.table()
    assert "IoU filled" in table and "5 nearest labelled points within 2 m" in table
    with pytest.raises(ValueError, match="needs the sweep's points"):
        evaluation.update(predicted, target, np.zeros(5, bool))
    plain = Evaluation.empty(["a", "b"])
    assert plain.update(predicted, target, np.zeros(5, bool), points) is None
    assert "filled_all_points" not in plain.to_dict() and "IoU filled" not in plain.table()
    matrix = ConfusionMatrix(2)
    assert Evaluation(["a", "b"], matrix, matrix, filled=ConfusionMatrix(2)).fill.k == FILL_K


def test_teacher_evaluation_fills_and_the_fill_only_helps(tmp_path, vocabulary, teacher_segmenter):
    source = open_source(SCENE)
    evaluation, timings = evaluate_source(source, teacher_segmenter, progress=False)  # teacher mode: filled
    bare, filled = evaluation.all_points, evaluation.filled
    assert filled is not None and filled.matrix.sum() == bare.matrix.sum()
    assert bare.coverage() < 0.95 and filled.coverage() > bare.coverage()
    assert filled.miou() >= bare.miou() and filled.accuracy() > bare.accuracy()
    assert evaluation.in_view.miou() > 0.7  # the labels teacher is right wherever it sees
    report = write_report(tmp_path, evaluation, timings, source, teacher_segmenter, {"mode": "teacher"})
    stored = json.loads(report.read_text())
    assert stored["filled_all_points"]["miou"] == pytest.approx(filled.miou())
    assert set(stored["filled_all_points"]["iou"]) == set(vocabulary.names)
    for picture in ("confusion_all.png", "confusion_in_view.png", "confusion_filled.png", "iou.png"):
        assert (tmp_path / picture).is_file()
    unfilled, _ = evaluate_source(source, teacher_segmenter, progress=False, fill=False)
    assert unfilled.filled is None and np.array_equal(unfilled.all_points.matrix, bare.matrix)


def test_replay_in_teacher_mode_reports_the_filled_row(tmp_path, teacher_segmenter):
    bag = write_bag(open_source("synthetic:frames=1,seed=0,cameras=2,width=128,height=72"), tmp_path / "bag")
    report = replay(bag, teacher_segmenter, progress=False)
    data = report.evaluation.to_dict()
    assert data["filled_all_points"]["miou"] >= data["all_points"]["miou"]
    assert data["filled_all_points"]["coverage"] > data["all_points"]["coverage"]
    assert "IoU filled" in report.table()


def test_the_demo_table_compares_teacher_in_view_and_filled_with_the_student():
    from clip2scene_ros.demo import table

    summary = {"teacher": "noisy:0.3", "teacher_miou_all": 0.293, "teacher_miou_in_view": 0.320,
               "teacher_miou_filled_all": 0.301, "neighbour_fill": {"k": 5, "radius_m": 2.0},
               "student_miou_all": 0.379, "student_miou_in_view": 0.358, "student_latency_ms_p50": 50.0,
               "live_latency_ms_p50": 90.0, "live_sweeps": 8, "live_dropped": 0, "record_s": 1.0, "pretrain_s": 2.0,
               "live_s": 3.0, "replay_s": 4.0}
    lines = table(summary).splitlines()
    assert "mIoU all points" in lines[1] and "mIoU in view" in lines[1]
    assert lines[2].split()[-2:] == ["-", "32.0"] and lines[2].startswith("teacher (noisy:0.3), projection")
    assert lines[3].split()[-2:] == ["30.1", "-"] and lines[3].startswith("teacher + neighbour fill")
    assert lines[4].split()[-2:] == ["37.9", "35.8"] and lines[4].startswith("student")
    assert "5 nearest labelled points within 2 m" in "".join(lines) and "29.3" in lines[6]
