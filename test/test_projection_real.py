"""Projection checked on real sensor data: KITTI's own composed matrix, nuScenes boxes and image edges.

Credits for the samples and pictures: KITTI (CC BY-NC-SA 3.0) and nuScenes (CC BY-NC-SA 4.0), via
mmdetection3d's demo data; see ../shared/data/README.md.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from nuscenes_tree import build_nuscenes_tree
from PIL import Image

from clip2scene_core import render
from clip2scene_core.data.nuscenes import NuScenes
from clip2scene_core.frame import Camera
from clip2scene_core.geometry import project
from clip2scene_core.render import palette_colors

YAW_ERROR_DEG = 3.0


# --- KITTI -------------------------------------------------------------------------------------

def test_kitti_from_kitti_reproduces_the_composed_matrix(shared_data, artifacts):
    folder = shared_data / "kitti_object_000008"
    info = json.loads((folder / "frame.json").read_text())["camera"]
    points = np.fromfile(folder / "velodyne.bin", dtype=np.float32).reshape(-1, 4)[:, :3]
    image = np.array(Image.open(folder / "image_2.png").convert("RGB"))
    camera = Camera.from_kitti("image_2", image, np.array(info["P2"]), np.array(info["R0_rect"]),
                               np.array(info["Tr_velo_to_cam"]))
    projection = project(points, camera)
    reference = np.c_[points, np.ones(len(points))] @ np.array(info["lidar_to_image"]).T
    uv = reference[:, :2] / reference[:, 2:3]
    # The scan was cropped to the camera's view: nearly every point lands in the image (the few
    # that do not sit on its last column, where the crop rounded the other way).
    assert projection.valid.mean() > 0.995
    np.testing.assert_allclose(projection.uv[projection.valid], uv[projection.valid], atol=1e-3)
    np.testing.assert_allclose(projection.depth, reference[:, 2], atol=1e-4)
    render.save_png(artifacts / "kitti_000008_depth.png", render.overlay(camera, points))


# --- nuScenes ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nuscenes(shared_data, tmp_path_factory):
    keyframe = shared_data / "nuscenes_keyframe"
    root = tmp_path_factory.mktemp("projection") / "nuscenes"
    build_nuscenes_tree(root, keyframe, lidarseg=False)
    frame = NuScenes(str(root), split="mini_train")[0]
    return frame, json.loads((keyframe / "frame.json").read_text())


def box_corners(box: dict) -> np.ndarray:
    """(8, 3) corners of a box given by centre, size (l, w, h) and yaw about z, in its frame."""
    length, width, height = box["size_lwh"]
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
    local = signs * [length / 2, width / 2, height / 2]
    c, s = np.cos(box["yaw"]), np.sin(box["yaw"])
    rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    return local @ rotation.T + box["center_xyz"]


def points_in_box(points: np.ndarray, box: dict) -> np.ndarray:
    """(N,) bool: points (N, 3) inside the box (same frame)."""
    c, s = np.cos(box["yaw"]), np.sin(box["yaw"])
    offset = points.astype(np.float64) - box["center_xyz"]
    along = offset[:, 0] * c + offset[:, 1] * s
    across = -offset[:, 0] * s + offset[:, 1] * c
    half = np.asarray(box["size_lwh"]) / 2
    return (np.abs(along) <= half[0]) & (np.abs(across) <= half[1]) & (np.abs(offset[:, 2]) <= half[2])


def convex_hull(points: np.ndarray) -> np.ndarray:
    """(M, 2) counter-clockwise hull of (K, 2) points (monotone chain)."""
    ordered = sorted(map(tuple, points))
    cross = lambda o, a, b: (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
    lower, upper = [], []
    for p in ordered:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(ordered):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1])


def inside_polygon(points: np.ndarray, polygon: np.ndarray, tolerance_px: float = 1e-2) -> np.ndarray:
    """(N,) bool: points (N, 2) inside a counter-clockwise convex polygon (M, 2)."""
    inside = np.ones(len(points), dtype=bool)
    for a, b in zip(polygon, np.roll(polygon, -1, axis=0)):
        edge = b - a
        normal_len = np.hypot(*edge)
        cross = edge[0] * (points[:, 1] - a[1]) - edge[1] * (points[:, 0] - a[0])
        inside &= cross / normal_len >= -tolerance_px
    return inside


def test_box_points_land_inside_the_projected_boxes(nuscenes, artifacts):
    frame, info = nuscenes
    boxes = info["boxes_lidar_frame"]
    memberships = [points_in_box(frame.points, box) for box in boxes]
    # frame.json's own note: 994 points fall in the boxes with the centre-z convention.
    assert sum(int(m.sum()) for m in memberships) == pytest.approx(994, abs=10)
    checked = 0
    for camera in frame.cameras:
        for box, member in zip(boxes, memberships):
            if member.sum() < 5:
                continue
            corners = project(box_corners(box), camera, min_depth_m=0.5)
            if not np.all(corners.depth > 0.5):
                continue  # not fully in front of this camera: its outline is not a projected hexagon
            seen = project(frame.points[member], camera)
            if not seen.valid.any():
                continue
            outline = convex_hull(corners.uv.astype(np.float64))
            assert inside_polygon(seen.uv[seen.valid].astype(np.float64), outline).all(), \
                f"{camera.name}: a {box['category']} point falls outside its box's outline"
            checked += 1
    assert checked >= 20

    # Pictures coloured by box membership: only the points inside boxes, in their category's
    # colour (all points would bury them once the mosaic scales the images down).
    categories = sorted({box["category"] for box in boxes})
    values = np.zeros(len(frame), dtype=np.int64)
    for box, member in zip(boxes, memberships):
        values[member] = categories.index(box["category"]) + 1
    palette = {i + 1: tuple(int(c) for c in np.random.default_rng(i).integers(60, 256, 3))
               for i in range(len(categories))}
    in_boxes = frame.select(values > 0)
    picture = render.render_frame(in_boxes, color_by="label", values=values[values > 0], palette=palette, radius=4)
    render.save_png(artifacts / "nuscenes_keyframe_boxes.png", picture)
    back = in_boxes.camera("CAM_BACK")
    render.save_png(artifacts / "nuscenes_keyframe_boxes_CAM_BACK.png",
                    render.overlay(back, in_boxes.points, palette_colors(values[values > 0], palette), radius=3))
    render.save_png(artifacts / "nuscenes_keyframe_depth.png", render.render_frame(frame))


# Calibration check that can fail: LiDAR depth discontinuities must sit on image edges.

def depth_discontinuities(points: np.ndarray, ring: np.ndarray, min_jump_m: float = 1.0,
                          min_relative: float = 0.2, min_range_m: float = 3.0) -> np.ndarray:
    """Indices of foreground points at range jumps between horizontally adjacent returns of one beam.

    The nearer point of a jump is an object's silhouette, which the camera sees as an edge; the
    farther one is background that the camera may not see at all. Ranges below min_range_m are
    dropped (the ego vehicle's own body).
    """
    distance = np.linalg.norm(points.astype(np.float64), axis=1)
    azimuth = np.arctan2(points[:, 1], points[:, 0])
    order = np.lexsort((azimuth, ring))
    r, a, d = ring[order], azimuth[order], distance[order]
    neighbours = (r[1:] == r[:-1]) & (np.abs(a[1:] - a[:-1]) < np.radians(0.6))
    jump = np.abs(d[1:] - d[:-1])
    nearer = np.minimum(d[1:], d[:-1])
    silhouette = neighbours & (jump > min_jump_m) & (jump > min_relative * nearer) & (nearer > min_range_m)
    near_index = np.where(d[1:] < d[:-1], order[1:], order[:-1])
    return np.unique(near_index[silhouette])


def vertical_edge_map(image: np.ndarray, half_window: int = 3) -> np.ndarray:
    """(H, W) horizontal intensity gradient, box-blurred so that near misses still score, mean 1.

    Only the horizontal gradient: jumps along a beam are horizontal neighbours, so they mark
    vertical silhouettes, and a yaw error moves points horizontally across them.
    """
    gray = image.astype(np.float32).mean(axis=2)
    gradient = np.zeros_like(gray)
    gradient[:, 1:-1] = np.abs(gray[:, 2:] - gray[:, :-2])
    size = 2 * half_window + 1
    blurred = torch.nn.functional.avg_pool2d(torch.from_numpy(gradient)[None, None], size, 1, half_window,
                                             count_include_pad=False)[0, 0].numpy()
    return blurred / blurred.mean()


def yaw(degrees: float) -> np.ndarray:
    """(4, 4) rotation about the LiDAR's z axis."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    transform = np.eye(4)
    transform[:2, :2] = [[c, -s], [s, c]]
    return transform


def edge_scores(frame, silhouettes, edge_maps, lidar_to_camera: dict[str, np.ndarray]) -> dict[str, tuple]:
    """Per camera (sum of edge strength at the projected silhouette points, their count)."""
    scores = {}
    for camera in frame.cameras:
        moved = dataclasses.replace(camera, lidar_to_camera=lidar_to_camera[camera.name])
        projection = project(frame.points[silhouettes], moved)
        rows, cols = projection.pixels[projection.valid].T
        scores[camera.name] = (float(edge_maps[camera.name][rows, cols].sum()), int(projection.valid.sum()))
    return scores


def mean_score(scores: dict[str, tuple]) -> float:
    return sum(s for s, _ in scores.values()) / sum(n for _, n in scores.values())


def test_depth_discontinuities_sit_on_image_edges(nuscenes, artifacts):
    frame, info = nuscenes
    silhouettes = depth_discontinuities(frame.points, frame.fields["ring"])
    assert len(silhouettes) > 300
    edge_maps = {camera.name: vertical_edge_map(camera.image) for camera in frame.cameras}
    true = {camera.name: camera.lidar_to_camera for camera in frame.cameras}
    at_true = edge_scores(frame, silhouettes, edge_maps, true)

    # 1) Per camera: the true extrinsic beats the same one yawed by +-3 degrees in most cameras.
    perturbed = [edge_scores(frame, silhouettes, edge_maps, {k: v @ yaw(sign * YAW_ERROR_DEG) for k, v in true.items()})
                 for sign in (-1, 1)]
    ratios = {name: (s / n) / max(p[name][0] / p[name][1] for p in perturbed) for name, (s, n) in at_true.items()}
    assert sum(r > 1.0 for r in ratios.values()) >= 5, ratios
    assert sum(r > 1.1 for r in ratios.values()) >= 4, ratios

    # 2) All cameras pooled: sweeping the yaw error, the score peaks sharply at zero.
    sweep = {offset: mean_score(edge_scores(frame, silhouettes, edge_maps, {k: v @ yaw(offset) for k, v in true.items()}))
             for offset in np.arange(-4.0, 4.01, 0.5)}
    best = max(sweep, key=sweep.get)
    assert abs(best) < 0.01, sweep
    assert sweep[0.0] > 1.25 * max(v for k, v in sweep.items() if abs(k) >= 1.0), sweep

    # 3) Ego motion matters: ignoring it (camera_to_ego^-1 @ lidar_to_ego, as if the camera fired at
    # the LiDAR's time) moves the extrinsics by up to 0.33 m, and the edges say so.
    lidar_to_ego = np.array(info["lidar"]["lidar_to_ego"])
    static = {name: np.linalg.inv(np.array(c["camera_to_ego"])) @ lidar_to_ego for name, c in info["cameras"].items()}
    at_static = edge_scores(frame, silhouettes, edge_maps, static)
    assert mean_score(at_true) > 1.1 * mean_score(at_static)
    for name in true:
        if np.abs(static[name][:3, 3] - true[name][:3, 3]).max() > 0.15:
            assert at_true[name][0] / at_true[name][1] > at_static[name][0] / at_static[name][1], name

    # A picture to look at: edge map of the left front camera with the silhouette points at the
    # true extrinsic (green) and yawed by 3 degrees (red).
    camera = frame.camera("CAM_FRONT_LEFT")
    edges = np.clip(edge_maps[camera.name] * 40, 0, 255).astype(np.uint8)
    canvas = np.repeat(edges[:, :, None], 3, axis=2)
    for transform, color in ((camera.lidar_to_camera @ yaw(YAW_ERROR_DEG), (230, 40, 40)),
                             (camera.lidar_to_camera, (40, 230, 40))):
        moved = dataclasses.replace(camera, lidar_to_camera=transform)
        projection = project(frame.points[silhouettes], moved)
        colors = np.tile(np.array(color, np.uint8), (int(projection.valid.sum()), 1))
        canvas = render.draw_points(canvas, projection.uv[projection.valid], colors, radius=3)
    render.save_png(artifacts / "nuscenes_keyframe_edges_CAM_FRONT_LEFT.png", canvas)
