"""ScanNet reader: both layouts around the real 100-point sample, with RGB-D frames synthesised here.

The depth images are rendered from the sample's own points (a z-buffer), with an occluder placed
in front of every point with world x < 0, so which points a camera may pair with is known exactly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip2scene_core.cli import main
from clip2scene_core.data import SourceError, open_source
from clip2scene_core.data.scannet import NYU40_NAMES, ScanNet, read_ply_vertices
from clip2scene_core.geometry import project

DEPTH_SIZE = (320, 240)  # (width, height); colour is written at twice that, like ScanNet's 1296x968 vs 640x480
DEPTH_K = np.array([[150.0, 0.0, 159.5], [0.0, 150.0, 119.5], [0.0, 0.0, 1.0]])
COLOR_K = np.array([[300.0, 0.0, 319.5], [0.0, 300.0, 239.5], [0.0, 0.0, 1.0]])  # DEPTH_K on the 2x grid
OCCLUDER_M = 0.5


def camera_to_world(position, forward, down) -> np.ndarray:
    """4x4 pose of an optical frame (x right, y down, z forward) at position, in world coordinates."""
    z, y = np.asarray(forward, float), np.asarray(down, float)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([np.cross(y, z), y, z], axis=1)
    pose[:3, 3] = position
    return pose


POSES = [camera_to_world([0.0, -7.0, 1.5], [0, 1, 0], [0, 0, -1]),   # looking along +y
         np.full((4, 4), np.inf),                                     # tracking lost, as ScanNet marks it
         camera_to_world([7.0, 0.0, 1.5], [-1, 0, 0], [0, 0, -1])]   # looking along -x


def render_depth(points: np.ndarray, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) uint16 mm z-buffer of the points seen from pose, occluded where world x < 0, and the
    (N,) bool set of points the depth image confirms (nearest in their pixel, not behind the occluder)."""
    width, height = DEPTH_SIZE
    camera = (points - pose[:3, 3]) @ pose[:3, :3]  # world -> optical frame: R^T (p - c)
    z = camera[:, 2]
    u = np.floor(DEPTH_K[0, 0] * camera[:, 0] / z + DEPTH_K[0, 2] + 0.5).astype(int)
    v = np.floor(DEPTH_K[1, 1] * camera[:, 1] / z + DEPTH_K[1, 2] + 0.5).astype(int)
    inside = (z > 0.1) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    occluded = points[:, 0] < 0
    surface = np.where(occluded, z - OCCLUDER_M, z)
    depth_m = np.full((height, width), np.inf)
    for i in np.flatnonzero(inside):
        depth_m[v[i], u[i]] = min(depth_m[v[i], u[i]], surface[i])
    depth_mm = np.where(np.isfinite(depth_m), np.rint(depth_m * 1000), 0).astype(np.uint16)
    seen = np.zeros(len(points), bool)
    seen[inside] = np.abs(depth_mm[v[inside], u[inside]] / 1000 - z[inside]) <= 0.1
    return depth_mm, seen


def _color(k: int) -> Image.Image:
    width, height = DEPTH_SIZE
    return Image.new("RGB", (2 * width, 2 * height), (200, 40 * k, 30))


def _matrix_text(matrix) -> str:
    return "\n".join(" ".join(f"{v:f}" for v in row) for row in np.asarray(matrix)) + "\n"


@pytest.fixture(scope="module")
def sample(shared_data):
    folder = shared_data / "format_samples" / "scannet_tiny"
    raw = np.fromfile(folder / "points_xyzrgb_float32.bin", dtype=np.float32).reshape(-1, 6)
    labels = np.fromfile(folder / "semantic_mask_int64.bin", dtype=np.int64)
    return folder, raw, labels


def write_frames(folder: Path, points: np.ndarray, official: bool) -> list[np.ndarray]:
    """RGB-D frames 0..2 in mmdetection3d's posed_images naming, or SensReader's folders; returns the
    visible-point masks of the frames with a valid pose."""
    seen_masks = []
    for k, pose in enumerate(POSES):
        if official:
            paths = [folder / "color" / f"{k}.jpg", folder / "depth" / f"{k}.png", folder / "pose" / f"{k}.txt"]
        else:
            paths = [folder / f"{k:05d}.jpg", folder / f"{k:05d}.png", folder / f"{k:05d}.txt"]
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
        _color(k).save(paths[0])
        if np.all(np.isfinite(pose)):
            depth, seen = render_depth(points, pose)
            seen_masks.append(seen)
        else:
            depth = np.zeros(DEPTH_SIZE[::-1], np.uint16)
        Image.fromarray(depth).save(paths[1])
        paths[2].write_text(_matrix_text(pose).replace("inf", "-inf"))
    if official:
        (folder / "intrinsic").mkdir()
        K4 = np.eye(4)
        K4[:3, :3] = DEPTH_K
        (folder / "intrinsic" / "intrinsic_depth.txt").write_text(_matrix_text(K4))
        K4[:3, :3] = COLOR_K
        (folder / "intrinsic" / "intrinsic_color.txt").write_text(_matrix_text(K4))
    else:
        K4 = np.eye(4)
        K4[:3, :3] = COLOR_K  # mmdetection3d exports the colour intrinsics only
        (folder / "intrinsic.txt").write_text(_matrix_text(K4))
    return seen_masks


@pytest.fixture
def mmdet3d_tree(tmp_path, sample):
    folder, raw, _ = sample
    root = tmp_path / "scannet"
    (root / "points").mkdir(parents=True)
    (root / "semantic_mask").mkdir()
    for scene in ("scene0000_00", "scene0011_00"):
        os.symlink(folder / "points_xyzrgb_float32.bin", root / "points" / f"{scene}.bin")
        os.symlink(folder / "semantic_mask_int64.bin", root / "semantic_mask" / f"{scene}.bin")
    seen = write_frames(root / "posed_images" / "scene0000_00", raw[:, :3].astype(np.float64), official=False)
    (root / "meta_data").mkdir()
    (root / "meta_data" / "scannetv2_train.txt").write_text("scene0000_00\nscene0001_00\n")
    (root / "meta_data" / "scannetv2_val.txt").write_text("scene0011_00\n")
    return root, seen


def write_ply(path: Path, columns: dict[str, np.ndarray], types: dict[str, str], binary: bool) -> None:
    """A PLY mesh with the given vertex columns and two faces after them, as ScanNet's files have."""
    n = len(next(iter(columns.values())))
    header = ["ply", f"format {'binary_little_endian' if binary else 'ascii'} 1.0", "comment written by the test",
              f"element vertex {n}"]
    header += [f"property {types[name]} {name}" for name in columns]
    header += ["element face 2", "property list uchar int vertex_indices", "end_header"]
    text = ("\n".join(header) + "\n").encode()
    numpy_types = {"float": "<f4", "uchar": "u1", "ushort": "<u2"}
    if binary:
        rows = np.empty(n, dtype=[(name, numpy_types[types[name]]) for name in columns])
        for name, values in columns.items():
            rows[name] = values
        faces = np.array([(3, 0, 1, 2), (3, 2, 3, 4)], dtype=[("n", "u1"), ("a", "<i4"), ("b", "<i4"), ("c", "<i4")])
        path.write_bytes(text + rows.tobytes() + faces.tobytes())
    else:
        lines = [" ".join(f"{columns[name][i]:.7g}" if types[name] == "float" else str(int(columns[name][i]))
                          for name in columns) for i in range(n)]
        path.write_bytes(text + ("\n".join(lines) + "\n3 0 1 2\n3 2 3 4\n").encode())


@pytest.fixture
def official_tree(tmp_path, sample):
    _, raw, labels = sample
    root = tmp_path / "scannet_release"
    scene = root / "scans" / "scene0011_00"
    scene.mkdir(parents=True)
    rgb = raw[:, 3:6].astype(np.uint8)
    mesh = {"x": raw[:, 0], "y": raw[:, 1], "z": raw[:, 2], "red": rgb[:, 0], "green": rgb[:, 1], "blue": rgb[:, 2],
            "alpha": np.full(len(raw), 255)}
    types = {"x": "float", "y": "float", "z": "float", "red": "uchar", "green": "uchar", "blue": "uchar",
             "alpha": "uchar", "label": "ushort"}
    write_ply(scene / "scene0011_00_vh_clean_2.ply", mesh, types, binary=True)
    write_ply(scene / "scene0011_00_vh_clean_2.labels.ply", {**mesh, "label": labels}, types, binary=False)
    seen = write_frames(scene, raw[:, :3].astype(np.float64), official=True)
    return root, seen


def _check_cameras(frame, seen_masks):
    assert [c.name for c in frame.cameras] == ["rgbd_00000", "rgbd_00002"]  # frame 1 has an inf pose
    for camera, seen, pose in zip(frame.cameras, seen_masks, (POSES[0], POSES[2])):
        assert (camera.width, camera.height) == DEPTH_SIZE  # colour resized onto the depth grid
        np.testing.assert_allclose(camera.intrinsics, DEPTH_K)
        np.testing.assert_allclose(camera.lidar_to_camera @ pose, np.eye(4), atol=1e-6)
        assert camera.depth.dtype == np.float32 and camera.depth.max() < 12
        valid = project(frame.points, camera).valid
        np.testing.assert_array_equal(valid, seen)
        assert 10 <= valid.sum() < len(frame)  # some seen, the occluded ones not
        assert not np.any(valid & (frame.points[:, 0] < 0))


def test_mmdet3d_layout(mmdet3d_tree, sample):
    root, seen = mmdet3d_tree
    _, raw, labels = sample
    source = ScanNet(str(root), scenes=["scene0000_00"])
    frame = source[0]
    assert frame.name == "scene0000_00" and len(frame) == 100
    np.testing.assert_array_equal(frame.points, raw[:, :3])
    np.testing.assert_array_equal(frame.labels, labels)
    for i, channel in enumerate(("red", "green", "blue")):
        assert frame.fields[channel].dtype == np.uint8
        np.testing.assert_array_equal(frame.fields[channel], raw[:, 3 + i].astype(np.uint8))
    np.testing.assert_array_equal(frame.ego_pose, np.eye(4))
    np.testing.assert_array_equal(frame.lidar_to_ego, np.eye(4))
    _check_cameras(frame, seen)
    assert source.label_names[labels.max()] == "otherprop"


def test_inspect(mmdet3d_tree, capsys):
    root, _ = mmdet3d_tree
    assert main(["inspect", f"scannet:{root}?scenes=scene0000_00", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kind"] == "scannet" and summary["frames"] == 1 and summary["points_min"] == 100


def test_official_layout_with_ply(official_tree, sample):
    root, seen = official_tree
    _, raw, labels = sample
    source = open_source(f"scannet:{root}")
    frame = source[0]
    assert frame.name == "scene0011_00"
    np.testing.assert_allclose(frame.points, raw[:, :3], atol=1e-6)
    np.testing.assert_array_equal(frame.labels, labels)
    np.testing.assert_array_equal(frame.fields["green"], raw[:, 4].astype(np.uint8))
    _check_cameras(frame, seen)


def test_frame_selection(mmdet3d_tree):
    root, _ = mmdet3d_tree
    names = lambda n: [c.name for c in ScanNet(str(root), frames_per_scene=n, scenes=["scene0000_00"])[0].cameras]
    assert names(0) == []
    assert names(1) == ["rgbd_00000"]
    assert names(2) == ["rgbd_00000", "rgbd_00002"]  # the second target (frame 1) is invalid: the next one
    assert names(-1) == ["rgbd_00000", "rgbd_00002"]
    assert ScanNet(str(root), scenes=["scene0011_00"])[0].cameras == []  # no posed images exported


def test_splits(mmdet3d_tree):
    root, _ = mmdet3d_tree
    assert [f.name for f in ScanNet(str(root), frames_per_scene=0)] == ["scene0000_00", "scene0011_00"]
    assert ScanNet(str(root), split="train").scenes == ["scene0000_00"]
    assert ScanNet(str(root), split="val").scenes == ["scene0011_00"]
    with pytest.raises(SourceError, match="scannetv2_test.txt"):
        ScanNet(str(root), split="test")


def test_ply_reader_ascii_and_binary_agree(tmp_path):
    columns = {"x": np.array([0.5, -1.25, 3.0], np.float32), "label": np.array([1, 40, 7])}
    types = {"x": "float", "label": "ushort"}
    write_ply(tmp_path / "b.ply", columns, types, binary=True)
    write_ply(tmp_path / "a.ply", columns, types, binary=False)
    for name in ("a.ply", "b.ply"):
        vertices = read_ply_vertices(tmp_path / name)
        np.testing.assert_array_equal(vertices["x"], columns["x"])
        assert vertices["label"].dtype == np.uint16 and vertices["label"].tolist() == [1, 40, 7]
    (tmp_path / "bad.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 5\n"
                                       b"property float x\nend_header\n\x00\x00")
    with pytest.raises(SourceError, match="truncated"):
        read_ply_vertices(tmp_path / "bad.ply")


def test_errors_name_the_input_and_the_fix(mmdet3d_tree, tmp_path):
    root, _ = mmdet3d_tree
    with pytest.raises(SourceError, match="does not exist"):
        ScanNet(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="neither points/.*nor scans/"):
        ScanNet(str(tmp_path / "empty"))
    with pytest.raises(SourceError, match="unknown split 'training'"):
        ScanNet(str(root), split="training")
    with pytest.raises(SourceError, match=r"scene\(s\) \['scene0999_00'\] not found"):
        ScanNet(str(root), scenes=["scene0999_00"])
    mask = root / "semantic_mask" / "scene0011_00.bin"
    mask.unlink()
    np.zeros(99, np.int64).tofile(mask)
    with pytest.raises(SourceError, match=r"scene0011_00\.bin holds 99 labels but .*scene0011_00\.bin has 100 points"):
        ScanNet(str(root), scenes=["scene0011_00"])[0]


def test_nyu40_names():
    assert len(NYU40_NAMES) == 41 and NYU40_NAMES[1] == "wall" and NYU40_NAMES[40] == "otherprop"
