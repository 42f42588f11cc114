"""SemanticKITTI reader on the real samples and on temporary trees that link to them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip2scene_core.cli import main
from clip2scene_core.data import SourceError, open_source
from clip2scene_core.data.semantickitti import LABEL_NAMES, SemanticKitti
from clip2scene_core.geometry import aggregate_sweeps, invert, project, transform_points

# Sequence 00's published odometry calibration (3x4 rows).
P2 = [[718.856, 0.0, 607.1928, 45.38225], [0.0, 718.856, 185.2157, -0.1130887], [0.0, 0.0, 1.0, 0.003779761]]
TR = [[4.276802385584e-04, -9.999672484946e-01, -8.084491683471e-03, -1.198459927713e-02],
      [-7.210626507497e-03, 8.081198471645e-03, -9.999413164504e-01, -5.403984729748e-02],
      [9.999738645903e-01, 4.859485810390e-04, -7.206933692422e-03, -2.921968648686e-01]]
IMAGE_SIZE = (1241, 376)  # (width, height) of the odometry colour images
SEQ00_IDS = {0, 1, 10, 11, 30, 40, 44, 48, 50, 51, 52, 70, 71, 72, 80, 81, 99, 252, 254}


def _row(matrix) -> str:
    return " ".join(f"{v:.12e}" for v in np.asarray(matrix)[:3].ravel())


def camera_pose(k: int) -> np.ndarray:
    """Camera 0 -> world for scan k: 1 m forward (camera z) per scan while turning 2 degrees left."""
    yaw = np.radians(2.0 * k)
    pose = np.eye(4)
    # A left turn seen from camera 0 (y down) is a rotation about -y.
    pose[:3, :3] = [[np.cos(yaw), 0, -np.sin(yaw)], [0, 1, 0], [np.sin(yaw), 0, np.cos(yaw)]]
    pose[:3, 3] = [-np.sin(yaw) * k, 0.0, np.cos(yaw) * k]
    return pose


def make_sequence(folder: Path, scan: Path, labels: Path | None, n_scans: int, calib=True, poses=True, times=True,
                  images=False) -> None:
    """A sequence of n_scans links to one real scan, with optional calib/poses/times/images written here."""
    (folder / "velodyne").mkdir(parents=True)
    if labels is not None:
        (folder / "labels").mkdir()
    for k in range(n_scans):
        os.symlink(scan, folder / "velodyne" / f"{k:06d}.bin")
        if labels is not None:
            os.symlink(labels, folder / "labels" / f"{k:06d}.label")
    if calib:
        projections = "".join(f"P{i}: {_row(P2)}\n" for i in range(4))
        (folder / "calib.txt").write_text(projections + f"Tr: {_row(TR)}\n")
    if poses:
        (folder / "poses.txt").write_text("".join(_row(camera_pose(k)) + "\n" for k in range(n_scans)))
    if times:
        (folder / "times.txt").write_text("".join(f"{0.1037 * k:.6e}\n" for k in range(n_scans)))
    if images:
        (folder / "image_2").mkdir()
        for k in range(n_scans):
            Image.new("RGB", IMAGE_SIZE, (k * 40, 90, 160)).save(folder / "image_2" / f"{k:06d}.png")


@pytest.fixture(scope="module")
def tiny(shared_data) -> Path:
    return shared_data / "format_samples" / "semantickitti_tiny" / "sequences" / "00"


@pytest.fixture
def tree(tmp_path, tiny) -> Path:
    """sequences 00 (3 scans, images), 08 (1 scan), 11 (1 scan, no labels, no poses): links to the tiny scan."""
    root = tmp_path / "kitti"
    scan, labels = tiny / "velodyne" / "000000.bin", tiny / "labels" / "000000.label"
    make_sequence(root / "sequences" / "00", scan, labels, 3, images=True)
    make_sequence(root / "sequences" / "08", scan, labels, 1)
    make_sequence(root / "sequences" / "11", scan, None, 1, poses=False, times=False)
    return root


def test_real_full_scan(shared_data):
    source = SemanticKitti(str(shared_data / "semantickitti_seq00"))
    assert len(source) == 1
    frame = source[0]
    raw = np.fromfile(shared_data / "semantickitti_seq00/sequences/00/velodyne/000000.bin", np.float32).reshape(-1, 4)
    assert len(frame) == 123_389 and frame.name == "00/000000"
    np.testing.assert_array_equal(frame.points, raw[:, :3])
    np.testing.assert_array_equal(frame.fields["intensity"], raw[:, 3])
    assert set(np.unique(frame.labels)) == SEQ00_IDS
    assert SEQ00_IDS <= set(source.label_names)
    assert source.label_names[252] == "moving-car" and source.label_names[48] == "sidewalk"
    # No calib, poses or times: no cameras, identity pose, stamp from the scan number.
    assert not frame.cameras and frame.stamp_ns == 0
    np.testing.assert_array_equal(frame.ego_pose, np.eye(4))
    # 64-beam scan around the car: a few metres below the sensor lies the road (id 40).
    assert np.median(frame.points[frame.labels == 40, 2]) == pytest.approx(-1.75, abs=0.3)


def test_tiny_sample_and_label_table(tiny):
    frame = SemanticKitti(str(tiny.parents[1]))[0]
    packed = np.fromfile(tiny / "labels" / "000000.label", dtype=np.uint32)
    assert len(frame) == 50
    np.testing.assert_array_equal(frame.labels, packed & 0xFFFF)
    assert frame.labels.dtype == np.int64
    assert len(LABEL_NAMES) == 34 and LABEL_NAMES[0] == "unlabeled" and LABEL_NAMES[259] == "moving-other-vehicle"


def test_path_forms(tmp_path, tiny):
    dataset = tmp_path / "download" / "dataset"
    dataset.mkdir(parents=True)
    os.symlink(tiny.parent, dataset / "sequences")
    for path in (tmp_path / "download", dataset, dataset / "sequences"):
        assert len(SemanticKitti(str(path))) == 1


def test_poses_times_and_camera(tree):
    source = SemanticKitti(str(tree), sequences=["0"])
    assert [f.name for f in source] == ["00/000000", "00/000001", "00/000002"]
    tr = np.vstack([TR, [0, 0, 0, 1]])
    for k, frame in enumerate(source):
        np.testing.assert_allclose(frame.ego_pose, invert(tr) @ camera_pose(k) @ tr, atol=1e-9)
        np.testing.assert_array_equal(frame.lidar_to_ego, np.eye(4))
        assert frame.stamp_ns == round(float(f"{0.1037 * k:.6e}") * 1e9)
    # Camera 0 moves forward (its z) and left (its -x); the Velodyne sees that along its x and +y.
    yaw = np.radians(2.0)
    np.testing.assert_allclose(source[1].ego_pose[:3, 3], [np.cos(yaw), np.sin(yaw), 0.0], atol=0.02)
    camera = source[2].camera("image_2")
    assert (camera.width, camera.height) == IMAGE_SIZE and camera.image[0, 0, 0] == 80
    # Pixel = P2 @ Tr @ x (R0 identity for odometry).
    points = source[2].points
    homogeneous = (np.asarray(P2) @ tr @ np.c_[points, np.ones(len(points))].T).T
    in_front = homogeneous[:, 2] > 1.0
    projection = project(points, camera)
    np.testing.assert_allclose(projection.uv[in_front], homogeneous[in_front, :2] / homogeneous[in_front, 2:], atol=1e-3)


def test_inspect(shared_data, capsys):
    assert main(["inspect", f"semantickitti:{shared_data / 'semantickitti_seq00'}?sequences=00", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kind"] == "semantickitti" and summary["frames"] == 1 and summary["points_min"] == 123389
    assert any(key.startswith("40") for key in summary["labels"])  # raw id 40, road


def test_sweeps_are_previous_scans_aligned_by_pose(tree):
    source = open_source(f"semantickitti:{tree}?sequences=00&sweeps=2")
    first, last = source[0], source[2]
    assert first.sweeps == []
    assert [s.name for s in last.sweeps] == ["00/000001", "00/000000"]  # newest first
    assert last.sweeps[0].labels is not None and last.sweeps[0].cameras
    aggregate = aggregate_sweeps(last)
    for k, sweep in ((1, last.sweeps[0]), (2, last.sweeps[1])):
        expected = transform_points(invert(last.lidar_pose) @ sweep.lidar_pose, sweep.points)
        np.testing.assert_allclose(aggregate.points[aggregate.sweep_index == k], expected, atol=1e-4)
    # Two scans back the car was ~2 m behind: the same scan lands shifted by about -2 m in x.
    shift = aggregate.points[aggregate.sweep_index == 2].mean(0) - last.points.mean(0)
    assert shift[0] == pytest.approx(-2.0, abs=0.3)


def test_split_selection(tree):
    assert {f.name.split("/")[0] for f in SemanticKitti(str(tree))} == {"00", "08", "11"}
    assert {f.name.split("/")[0] for f in SemanticKitti(str(tree), split="train")} == {"00"}
    assert [f.name for f in SemanticKitti(str(tree), split="val")] == ["08/000000"]
    test = SemanticKitti(str(tree), split="test")
    assert [f.name for f in test] == ["11/000000"] and test[0].labels is None
    assert [f.name for f in SemanticKitti(str(tree), split="test", sequences=["8"])] == ["08/000000"]


def test_errors_name_the_input_and_the_fix(tree, tmp_path, shared_data, tiny):
    with pytest.raises(SourceError, match="does not exist"):
        SemanticKitti(str(tmp_path / "nowhere"))
    with pytest.raises(SourceError, match="no SemanticKITTI sequences/ folder"):
        SemanticKitti(str(tmp_path))
    with pytest.raises(SourceError, match="unknown split 'training'"):
        SemanticKitti(str(tree), split="training")
    with pytest.raises(SourceError, match=r"sequence\(s\) \['05'\] not found"):
        SemanticKitti(str(tree), sequences=["5"])
    with pytest.raises(SourceError, match="no sequence of split 'val'"):
        SemanticKitti(str(shared_data / "semantickitti_seq00"), split="val")
    # Poses are optional until sweeps need them.
    assert len(SemanticKitti(str(tree), sequences=["11"])) == 1
    with pytest.raises(SourceError, match=r"sweeps=1 needs .*11/poses\.txt"):
        SemanticKitti(str(tree), sequences=["11"], sweeps=1)
    (tree / "sequences" / "08" / "times.txt").write_text("")
    with pytest.raises(SourceError, match=r"08/times\.txt has 0 lines.*000000"):
        SemanticKitti(str(tree), split="val")


def test_label_length_mismatch_names_both_files(tmp_path, shared_data, tiny):
    folder = tmp_path / "mixed" / "sequences" / "00"
    make_sequence(folder, shared_data / "semantickitti_seq00/sequences/00/velodyne/000000.bin",
                  tiny / "labels" / "000000.label", 1, calib=False, poses=False, times=False)
    with pytest.raises(SourceError, match=r"000000\.label holds 50 labels but .*000000\.bin has 123389 points"):
        SemanticKitti(str(tmp_path / "mixed"))[0]
