"""nuScenes reader on nuScenes-layout trees built around the real keyframe in ../shared/data.

The trees hold symlinks to the real scan and images and JSON tables written here from frame.json,
so the reader runs through the same tables and folders as on a real download.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from nuscenes_tree import (
    CAMERA_PERIOD_US,
    SWEEP_LAG_US,
    TINY_LIDAR_TOKEN,
    VERSION,
    build_nuscenes_tree,
    link,
    matrix_quaternion,
    pose_record,
    sample_data_record,
)

from clip2scene_core.cli import main
from clip2scene_core.data import SourceError, open_source
from clip2scene_core.data.nuscenes import CAMERA_CHANNELS, NuScenes, official_splits, quaternion_matrix
from clip2scene_core.geometry import aggregate_sweeps, invert, transform_points


@pytest.fixture(scope="module")
def keyframe(shared_data) -> Path:
    return shared_data / "nuscenes_keyframe"


@pytest.fixture
def tree(tmp_path, keyframe):
    root = tmp_path / "nuscenes"
    return root, build_nuscenes_tree(root, keyframe)


def test_quaternion_round_trip():
    rng = np.random.default_rng(0)
    for q in rng.normal(size=(20, 4)):
        q /= np.linalg.norm(q)
        back = matrix_quaternion(quaternion_matrix(q))
        assert np.allclose(np.abs(np.dot(back, q)), 1.0)


def test_official_splits_match_devkit_counts():
    splits = official_splits()
    assert [len(splits[s]) for s in ("train", "val", "test", "mini_train", "mini_val")] == [700, 150, 150, 8, 2]
    assert len(splits["train"] | splits["val"] | splits["test"]) == 1000
    assert splits["mini_train"] <= splits["train"] | splits["val"]
    assert "scene-0061" in splits["mini_train"] and splits["mini_val"] == {"scene-0103", "scene-0916"}


def test_keyframe_reproduces_the_reference_calibration(tree):
    root, truth = tree
    info = truth["info"]
    source = NuScenes(str(root), split="mini_train")
    assert len(source) == 1
    started = time.perf_counter()
    frame = source[0]
    load_s = time.perf_counter() - started
    assert frame.name == f"scene-0061/{truth['sample_a']}"
    assert [c.name for c in frame.cameras] == list(CAMERA_CHANNELS)
    for camera in frame.cameras:
        reference = info["cameras"][camera.name]
        # float32 reference matrices: agree to their own precision.
        np.testing.assert_allclose(camera.lidar_to_camera, reference["lidar_to_camera"], atol=2e-5)
        np.testing.assert_allclose(camera.intrinsics, reference["K"])
        assert camera.image.shape == (reference["height"], reference["width"], 3)
        assert camera.stamp_ns == round(reference["timestamp_s"] * 1e6) * 1000
    np.testing.assert_allclose(frame.lidar_to_ego, info["lidar"]["lidar_to_ego"], atol=1e-6)
    np.testing.assert_allclose(frame.ego_pose, info["ego_to_global"], atol=1e-5)
    assert frame.stamp_ns == round(info["timestamp_s"] * 1e6) * 1000
    assert load_s < 5.0, f"one keyframe with six images took {load_s:.2f} s"


def test_points_and_fields_are_the_real_scan(tree, keyframe):
    root, truth = tree
    frame = NuScenes(str(root), split="mini_train", cameras=[])[0]
    raw = np.fromfile(keyframe / truth["info"]["lidar"]["file"], dtype=np.float32).reshape(-1, 5)
    assert len(frame) == 34688 == len(raw)
    np.testing.assert_array_equal(frame.points, raw[:, :3])
    assert frame.fields["intensity"].dtype == np.float32 and frame.fields["ring"].dtype == np.uint16
    np.testing.assert_array_equal(frame.fields["intensity"], raw[:, 3])
    assert frame.fields["ring"].max() == 31  # 32-beam HDL-32E
    np.testing.assert_array_equal(frame.labels, truth["labels"])
    assert NuScenes(str(root)).label_names[5] == "class.5"  # category.json's `index` numbers the classes


def test_inspect(tree, capsys):
    root, _ = tree
    assert main(["inspect", f"nuscenes:{root}?version=v1.0-mini", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kind"] == "nuscenes" and summary["frames"] == 2 and len(summary["cameras"]) == 6
    assert all(camera["points_in_view"] > 0 for camera in summary["cameras"])


def test_split_selection_and_order(tree):
    root, truth = tree
    assert [f.name.split("/")[0] for f in NuScenes(str(root), cameras=[])] == ["scene-0061", "scene-0103"]
    val = NuScenes(str(root), split="mini_val", cameras=[])
    assert len(val) == 1 and val[0].name == f"scene-0103/{truth['sample_b']}"
    assert val[0].labels is None  # lidarseg.json does not list this scan


def test_sweeps_carry_their_own_pose_and_nearest_cameras(tree):
    root, truth = tree
    source = open_source(f"nuscenes:{root}?version={VERSION}&split=mini_train&sweeps=3&cameras=CAM_FRONT,CAM_BACK"
                         f"&sweep_cameras=true")
    assert NuScenes(str(root), split="mini_train", sweeps=1)[0].sweeps[0].cameras == []  # not decoded by default
    frame = source[0]
    assert len(frame.sweeps) == 1  # the scene starts one sweep earlier
    sweep = frame.sweeps[0]
    assert sweep.stamp_ns == frame.stamp_ns - SWEEP_LAG_US * 1000
    assert sweep.labels is None and sweep.name == "scene-0061/sd-sweep"
    np.testing.assert_allclose(sweep.ego_pose, truth["shift"] @ frame.ego_pose, atol=1e-9)
    front, back = sweep.camera("CAM_FRONT"), sweep.camera("CAM_BACK")
    # CAM_FRONT: the earlier image is nearer in time to the sweep than the keyframe's.
    assert front.stamp_ns == frame.camera("CAM_FRONT").stamp_ns - CAMERA_PERIOD_US * 1000
    np.testing.assert_allclose(front.lidar_to_camera, frame.camera("CAM_FRONT").lidar_to_camera, atol=1e-6)
    # CAM_BACK has no earlier image: the keyframe's, with the sweep's ego motion folded in.
    assert back.stamp_ns == frame.camera("CAM_BACK").stamp_ns
    expected = frame.camera("CAM_BACK").lidar_to_camera @ invert(frame.lidar_pose) @ sweep.lidar_pose
    np.testing.assert_allclose(back.lidar_to_camera, expected, atol=1e-6)
    # Aggregation moves the sweep's points by the ego displacement, seen from the current LiDAR.
    aggregate = aggregate_sweeps(frame)
    moved = aggregate.points[aggregate.sweep_index == 1]
    expected_points = transform_points(invert(frame.lidar_pose) @ sweep.lidar_pose, frame.points)
    np.testing.assert_allclose(moved, expected_points, atol=1e-3)


def test_lidarseg_length_mismatch_names_both_files(tree):
    root, truth = tree
    label_file = root / "lidarseg" / VERSION / "ls-a_lidarseg.bin"
    np.zeros(len(truth["labels"]) + 3, dtype=np.uint8).tofile(label_file)
    with pytest.raises(SourceError, match="ls-a_lidarseg.bin.*34691.*pcd.bin.*34688"):
        NuScenes(str(root), cameras=[])[0]
    label_file.unlink()
    with pytest.raises(SourceError, match="nuScenes-lidarseg"):
        NuScenes(str(root), cameras=[])[0]


def test_errors_name_the_input_and_the_fix(tree, tmp_path):
    root, _ = tree
    with pytest.raises(SourceError, match="does not exist.*v1.0-mini"):
        NuScenes(str(tmp_path / "nowhere"))
    with pytest.raises(SourceError, match="v1.0-trainval.*pass version=v1.0-mini"):
        NuScenes(str(root), version="v1.0-trainval")
    with pytest.raises(SourceError, match="split 'val' belongs to v1.0-trainval.*version=v1.0-trainval"):
        NuScenes(str(root), split="val")
    with pytest.raises(SourceError, match="unknown split 'training'"):
        NuScenes(str(root), split="training")
    with pytest.raises(SourceError, match="unknown camera.*CAM_TOP"):
        NuScenes(str(root), cameras=["CAM_TOP"])
    (root / "samples" / "CAM_BACK").rename(root / "samples" / "CAM_BACK_moved")
    with pytest.raises(SourceError, match=r"CAM_BACK image .*\.jpg is missing.*samples/"):
        NuScenes(str(root))[0]
    (root / VERSION / "ego_pose.json").unlink()
    with pytest.raises(SourceError, match="ego_pose.json is missing.*v1.0-mini"):
        NuScenes(str(root))


def test_truncated_scan_is_an_error(tree, tmp_path):
    root, truth = tree
    scan = root / "samples" / "LIDAR_TOP" / truth["info"]["lidar"]["file"]
    scan.unlink()
    np.zeros(7, dtype=np.float32).tofile(scan)
    with pytest.raises(SourceError, match="not rows of 5"):
        NuScenes(str(root), cameras=[])[0]


def test_real_lidarseg_sample(tmp_path, shared_data):
    """The 40-point real lidarseg pair: uint8 category index per point, matched by the LiDAR token."""
    sample_dir = shared_data / "format_samples" / "nuscenes_lidarseg_tiny"
    scan_name = "n015-2018-08-02-17-16-37+0800__LIDAR_TOP__1533201470948018.pcd.bin"
    root = tmp_path / "tiny"
    meta = root / VERSION
    meta.mkdir(parents=True)
    link(sample_dir / scan_name, root / "samples" / "LIDAR_TOP" / scan_name)
    label_name = f"{TINY_LIDAR_TOKEN}_lidarseg.bin"
    link(sample_dir / label_name, root / "lidarseg" / VERSION / label_name)
    identity = np.eye(4)
    tables = {
        "log": [{"token": "log", "logfile": "n015-2018-08-02-17-16-37+0800"}],
        "scene": [{"token": "s", "name": "scene-0553", "log_token": "log"}],
        "sample": [{"token": "k", "timestamp": 1533201470948018, "scene_token": "s", "prev": "", "next": ""}],
        "sample_data": [sample_data_record(TINY_LIDAR_TOKEN, "k", "e", "c", 1533201470948018,
                                     f"samples/LIDAR_TOP/{scan_name}", True)],
        "sensor": [{"token": "l", "channel": "LIDAR_TOP", "modality": "lidar"}],
        "calibrated_sensor": [pose_record("c", identity, sensor_token="l", camera_intrinsic=[])],
        "ego_pose": [pose_record("e", identity, timestamp=1533201470948018)],
        # No `index` field (pre-lidarseg category.json): list order numbers the classes.
        "category": [{"token": f"c{i}", "name": f"class.{i}"} for i in range(32)],
        "lidarseg": [{"token": "x", "sample_data_token": TINY_LIDAR_TOKEN}],  # no filename: the default path
    }
    for name, rows in tables.items():
        (meta / f"{name}.json").write_text(json.dumps(rows))
    source = NuScenes(str(root), split="mini_train")
    frame = source[0]
    raw = np.fromfile(sample_dir / scan_name, dtype=np.float32).reshape(-1, 5)
    expected = np.fromfile(sample_dir / label_name, dtype=np.uint8)
    assert len(frame) == 40 and not frame.cameras
    np.testing.assert_array_equal(frame.points, raw[:, :3])
    np.testing.assert_array_equal(frame.labels, expected)
    assert frame.labels.dtype == np.int64 and frame.labels.max() <= 31
    assert source.label_names[24] == "class.24"


def test_tree_holds_only_links_to_the_real_data(tree):
    root, _ = tree
    for path in (root / "samples").rglob("*"):
        assert path.is_dir() or path.is_symlink()
    shutil.rmtree(root / "sweeps")
    with pytest.raises(SourceError, match="sweeps/"):
        NuScenes(str(root), sweeps=1)[0]
