"""The `clip2scene` command end to end on the synthetic world and on a bag."""

import json

import numpy as np
import pytest

from clip2scene_core.cli import main
from clip2scene_core.data import open_source
from clip2scene_core.data.rosbag2 import BagWriter, write_bag

SCENE = "synthetic:frames=3,seed=6,cameras=2,width=96,height=64"


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    return write_bag(open_source(SCENE), tmp_path_factory.mktemp("bag") / "bag")


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("teacher: {text_encoder: hash}\nstudent: {preset: tiny}\n"
                    "train: {optimizer: adamw, lr: 0.001, max_paired: 2000, batch_size: 1, sweeps: 2}\n"
                    "finetune: {epochs: 1, batch_size: 1}\n")
    return path


def test_inspect_synthetic_and_bag(tmp_path, bag, capsys, artifacts):
    assert main(["inspect", SCENE, "--json", "--render", str(tmp_path / "frame.png"), "--color-by", "label"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["frames"] == 3 and summary["kind"] == "synthetic" and len(summary["cameras"]) == 2
    assert summary["points_min"] > 10_000 and set(summary["fields"]) == {"intensity", "ring", "time"}
    assert all(0.05 < c["points_in_view"] < 0.5 for c in summary["cameras"])
    assert any("car" in key for key in summary["labels"]) and (tmp_path / "frame.png").stat().st_size > 1000
    assert main(["inspect", f"bag:{bag}", "--render", str(artifacts / "inspect_bag.png")]) == 0
    table = capsys.readouterr().out
    assert "frames     3 (3 inspected)" in table and "cam_front" in table


def test_export_formats_and_calibration(tmp_path, capsys):
    assert main(["export", SCENE, str(tmp_path / "lite"), "--storage", "sqlite3", "--quiet"]) == 0
    exported, scene = open_source(f"bag:{tmp_path / 'lite'}"), open_source(SCENE)
    assert len(exported) == 3 and len(exported[0].cameras) == 2
    for got, want in zip(exported[0].cameras, scene[0].cameras):  # label and surface-id images, exactly
        assert np.array_equal(got.label_image, want.label_image)
        assert np.array_equal(got.instance_image, want.instance_image)
    assert main(["calibration", SCENE, "--out", str(tmp_path / "calibration.yaml")]) == 0
    assert "cam_front_right" in (tmp_path / "calibration.yaml").read_text()
    assert main(["inspect", "lidar:/nowhere"]) == 2
    assert "unknown source kind 'lidar'" in capsys.readouterr().err


def test_a_calibration_that_puts_no_point_in_an_image_is_named(tmp_path, capsys):
    frames = list(open_source(SCENE))
    for frame in frames:
        frame.cameras[1].lidar_to_camera[2, 3] -= 1000.0  # millimetres read as metres: everything behind it
    write_bag(frames, tmp_path / "bag")
    assert main(["inspect", f"bag:{tmp_path / 'bag'}"]) == 2
    error = capsys.readouterr().err
    assert "camera 'cam_front_right' sees no LiDAR point" in error and "calibration is wrong" in error


def test_segment_and_evaluate_in_teacher_mode(tmp_path, bag, config, capsys):
    assert main(["segment", "--mode", "teacher", "--teacher", "labels", "--data", SCENE, "--vocabulary", "nuscenes",
                 "--config", str(config), "--out", str(tmp_path / "seg")]) == 0
    stored = np.load(tmp_path / "seg" / "frames" / "000000.npz")
    frame = open_source(SCENE)[0]
    assert len(stored["labels"]) == len(frame) and stored["seen"].any() and (stored["labels"][~stored["seen"]] == -1).all()
    assert (tmp_path / "seg" / "pictures" / "000002.png").is_file()
    assert main(["evaluate", "--mode", "teacher", "--teacher", "labels", "--data", f"bag:{bag}", "--vocabulary",
                 "nuscenes", "--config", str(config), "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert report["in_view"]["miou"] > 0.7 > report["all_points"]["coverage"]
    for picture in ("confusion_all.png", "confusion_in_view.png", "iou.png", "frame.png"):
        assert (tmp_path / "eval" / picture).is_file()


def test_segment_writes_objects_and_a_text_query(tmp_path, config, capsys):
    """Boxes of the thing classes and a per-point similarity to a text; with the label teacher a point's feature
    is its class's text embedding, so a query naming a class scores exactly that class's points 1."""
    assert main(["segment", "--mode", "teacher", "--teacher", "labels", "--data", SCENE, "--vocabulary", "nuscenes",
                 "--config", str(config), "--out", str(tmp_path / "seg"), "--query", "car"]) == 0
    assert "query 'car'" in capsys.readouterr().out
    stored = np.load(tmp_path / "seg" / "frames" / "000000.npz")
    summary = json.loads((tmp_path / "seg" / "segmentation.json").read_text())
    car = summary["vocabulary"]["classes"].index(next(c for c in summary["vocabulary"]["classes"] if c["name"] == "car"))
    labels, similarity = stored["labels"], stored["similarity"].astype(np.float32)
    assert (labels == car).any()
    np.testing.assert_allclose(similarity[labels == car], 1.0, atol=1e-3)
    labelled_other = (labels != car) & (labels >= 0)
    assert (similarity[labelled_other] < 0.25).all() and np.isnan(similarity[labels < 0]).all()
    assert summary["query"]["points_per_frame"][0] == int((labels == car).sum())
    # Every object is a thing class, its points share its instance id, and a car is among them.
    things = {i for i, c in enumerate(summary["vocabulary"]["classes"]) if c["thing"]}
    assert car in stored["box_classes"] and set(stored["box_classes"]) <= things
    for k, cls in enumerate(stored["box_classes"]):
        assert (labels[stored["instances"] == k] == cls).all()
    assert len(stored["box_centers"]) == summary["objects_per_frame"][0] > 0
    assert (tmp_path / "seg" / "pictures" / "000000_query.png").is_file()
    (tmp_path / "bad.yaml").write_text("objects: {distance_m: 0}\n")
    assert main(["segment", "--mode", "teacher", "--teacher", "labels", "--data", SCENE, "--config",
                 str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "bad")]) == 2
    assert "distance_m" in capsys.readouterr().err


def test_a_labels_teacher_reads_its_named_topic(tmp_path, config, capsys):
    """--teacher labels:NAME takes the label images at <camera namespace>/NAME in segment, evaluate and replay."""
    from clip2scene_core.data.rosbag2 import BagLayout, BagWriter

    with BagWriter(tmp_path / "bag", layout=BagLayout(label_images="segmenter_2d")) as writer:
        for frame in open_source(SCENE):
            writer.write_frame(frame)
    data = ["--data", f"bag:{tmp_path / 'bag'}", "--vocabulary", "nuscenes", "--config", str(config)]
    assert main(["evaluate", "--mode", "teacher", "--teacher", "labels:segmenter_2d", *data,
                 "--out", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "evaluation.json").read_text())["in_view"]["miou"] > 0.7
    assert main(["segment", "--mode", "teacher", "--teacher", "labels:segmenter_2d", *data,
                 "--out", str(tmp_path / "seg"), "--no-pictures"]) == 0
    assert np.load(tmp_path / "seg" / "frames" / "000000.npz")["seen"].any()
    assert main(["replay", str(tmp_path / "bag"), "--mode", "teacher", "--teacher", "labels:segmenter_2d",
                 "--vocabulary", "nuscenes", "--config", str(config), "--out", str(tmp_path / "replay")]) == 0
    assert json.loads((tmp_path / "replay" / "replay.json").read_text())["in_view"]["miou"] > 0.7


@pytest.mark.slow
def test_pretrain_evaluate_finetune_on_a_bag(tmp_path, bag, config, capsys):
    out = tmp_path / "pretrain"
    assert main(["pretrain", "--data", f"bag:{bag}", "--teacher", "noisy:0.2", "--vocabulary", "nuscenes",
                 "--config", str(config), "--epochs", "1", "--out", str(out)]) == 0
    assert (out / "checkpoints" / "epoch_001.pt").is_file() and (out / "losses.png").is_file()
    assert "semantic" in (out / "log.csv").read_text()
    checkpoint = out / "checkpoints" / "last.pt"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", f"bag:{bag}", "--out",
                 str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert report["all_points"]["coverage"] == 1.0  # the student labels every point, seen or not
    assert main(["finetune", "--checkpoint", str(checkpoint), "--data", f"bag:{bag}", "--labels-fraction", "0.5",
                 "--val", f"bag:{bag}", "--config", str(config), "--out", str(tmp_path / "tune")]) == 0
    from clip2scene_core.student.checkpoint import load_student
    model, payload = load_student(tmp_path / "tune" / "finetuned.pt")
    assert payload["finetune"]["labelled_scans"] == [0, 2] and model.classifier is not None
    assert (tmp_path / "tune" / "evaluation.json").is_file()


class WithoutOdometry(BagWriter):
    """A recording of a vehicle that published no /tf (no ego poses)."""

    def write_message(self, topic, *args, **kwargs):
        if topic != "/tf":
            super().write_message(topic, *args, **kwargs)


def test_pretraining_a_bag_without_odometry_names_the_sweeps_flag(tmp_path, config, capsys):
    with WithoutOdometry(tmp_path / "bag") as writer:
        for frame in open_source(SCENE):
            writer.write_frame(frame)
    assert main(["pretrain", "--data", f"bag:{tmp_path / 'bag'}", "--teacher", "noisy:0.2", "--config", str(config),
                 "--epochs", "1", "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "--sweeps 1" in error and "sweeps=" not in error and "need ego poses" in error
    assert main(["pretrain", "--data", f"bag:{tmp_path / 'bag'}", "--teacher", "noisy:0.2", "--config", str(config),
                 "--epochs", "1", "--sweeps", "1", "--out", str(tmp_path / "out")]) == 0
