"""The synthetic world: determinism, frame contents, class coverage, LiDAR/camera/pose consistency."""

import dataclasses
import math

import numpy as np
import pytest

from clip2scene_core.data import SourceError, open_source
from clip2scene_core.data.synthetic import NUSCENES_CATEGORIES, SyntheticWorld
from clip2scene_core.geometry import aggregate_sweeps, project
from clip2scene_core.render import mosaic, render_frame, save_png

# nuScenes' 16 lidarseg evaluation classes as raw ids (pedestrian = adult).
EVALUATION_CLASSES = {"barrier": 9, "bicycle": 14, "bus": 16, "car": 17, "construction_vehicle": 18,
                      "motorcycle": 21, "pedestrian": 2, "traffic_cone": 12, "trailer": 22, "truck": 23,
                      "driveable_surface": 24, "other_flat": 25, "sidewalk": 26, "terrain": 27, "manmade": 28,
                      "vegetation": 30}
PALETTE = {0: (0, 0, 0), 2: (255, 30, 30), 4: (255, 120, 0), 9: (255, 120, 50), 12: (255, 200, 0),
           14: (255, 60, 200), 16: (255, 0, 120), 17: (0, 160, 255), 18: (230, 200, 0), 21: (200, 0, 255),
           22: (120, 60, 30), 23: (80, 30, 180), 24: (140, 0, 140), 25: (80, 80, 160), 26: (75, 0, 75),
           27: (150, 240, 80), 28: (230, 230, 250), 30: (0, 175, 0)}
SMALL = dict(width=96, height=64)


def frames_equal(a, b) -> bool:
    same = (np.array_equal(a.points, b.points) and np.array_equal(a.labels, b.labels) and a.stamp_ns == b.stamp_ns
            and np.array_equal(a.ego_pose, b.ego_pose) and a.fields.keys() == b.fields.keys()
            and all(np.array_equal(a.fields[k], b.fields[k]) for k in a.fields) and len(a.cameras) == len(b.cameras))
    return same and all(np.array_equal(ca.image, cb.image) and np.array_equal(ca.label_image, cb.label_image)
                        and np.array_equal(ca.lidar_to_camera, cb.lidar_to_camera)
                        for ca, cb in zip(a.cameras, b.cameras, strict=True))


def agreement(frame, points=None, labels=None, select=None, use_depth=True) -> tuple[int, int]:
    """(agreeing, total) LiDAR labels vs label-image pixels over all cameras of the frame."""
    points = frame.points if points is None else points
    labels = frame.labels if labels is None else labels
    agree = total = 0
    for camera in frame.cameras:
        if not use_depth:
            camera = dataclasses.replace(camera, depth=None)
        projection = project(points, camera)
        valid = projection.valid if select is None else projection.valid & select
        rows, cols = projection.pixels[valid].T
        agree += int((camera.label_image[rows, cols] == labels[valid]).sum())
        total += int(valid.sum())
    return agree, total


def yaw(pose: np.ndarray) -> float:
    return math.atan2(pose[1, 0], pose[0, 0])


def test_same_seed_identical_any_access_order():
    options = dict(frames=4, seed=3, cameras=2, sweeps=1, **SMALL)
    forward = [SyntheticWorld(**options)[i] for i in range(4)]
    source = SyntheticWorld(**options)
    backward = {i: source[i] for i in (3, 1, 0, 2)}
    for i in range(4):
        assert frames_equal(forward[i], backward[i])
        assert frames_equal(forward[i].sweeps[0], backward[i].sweeps[0])
    # Reading again returns the same; and a frame handed out can be modified without harm.
    backward[2].points[:] = 0
    backward[2].cameras[0].image[:] = 0
    assert frames_equal(source[2], forward[2])
    assert frames_equal(source[-1], forward[3])


def test_different_seeds_differ():
    a, b = (SyntheticWorld(frames=1, seed=seed, cameras=1, **SMALL)[0] for seed in (0, 1))
    assert a.points.shape != b.points.shape or not np.array_equal(a.points, b.points)
    assert not np.array_equal(a.cameras[0].image, b.cameras[0].image)


def test_frame_contents():
    source = SyntheticWorld(frames=3, seed=0, cameras=6, **SMALL)
    assert len(source) == 3 and source.kind == "synthetic"
    assert source.label_names is NUSCENES_CATEGORIES and sorted(NUSCENES_CATEGORIES) == list(range(32))
    assert NUSCENES_CATEGORIES[17] == "vehicle.car" and NUSCENES_CATEGORIES[31] == "vehicle.ego"
    frames = list(source)
    assert [f.name for f in frames] == ["synthetic-0/000000", "synthetic-0/000001", "synthetic-0/000002"]
    assert np.diff([f.stamp_ns for f in frames]).tolist() == [100_000_000] * 2
    frame = frames[1]
    n = len(frame)
    assert 25_000 < n < 34_560
    assert frame.points.dtype == np.float32 and frame.points.shape == (n, 3)
    assert set(frame.fields) == {"intensity", "ring", "time"}
    assert frame.fields["intensity"].dtype == np.float32 and frame.fields["ring"].dtype == np.uint16
    assert frame.fields["time"].dtype == np.float32
    assert frame.fields["ring"].max() == 31 and frame.fields["ring"].min() == 0
    assert -0.05 <= frame.fields["time"].min() < -0.045 and 0.045 < frame.fields["time"].max() < 0.05
    assert np.all((frame.fields["intensity"] >= 0) & (frame.fields["intensity"] <= 255))
    assert frame.labels.dtype == np.int64 and frame.labels.min() >= 1 and frame.labels.max() <= 30
    assert np.linalg.norm(frame.points, axis=1).max() <= 70.1
    # Roughly flat ground 1.84 m below the sensor.
    road = frame.points[frame.labels == 24]
    assert abs(np.median(road[:, 2]) + 1.84) < 0.02
    # Paint and retroreflective cones outshine asphalt.
    intensity = frame.fields["intensity"]
    assert np.median(intensity[frame.labels == 24]) < np.median(intensity[frame.labels == 28])
    np.testing.assert_allclose(frame.lidar_to_ego[:3, :3], np.eye(3))
    assert 1.7 < frame.lidar_to_ego[2, 3] < 2.0
    names = [c.name for c in frame.cameras]
    assert names == ["CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT"]
    for camera in frame.cameras:
        assert camera.image.shape == (64, 96, 3) and camera.image.dtype == np.uint8
        assert camera.label_image.shape == (64, 96) and camera.label_image.dtype == np.int64
        assert camera.stamp_ns == frame.stamp_ns and camera.distortion_model == "none" and camera.depth is None
        R = camera.lidar_to_camera[:3, :3]
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        # Cameras are mounted about 1.5 m above ground, level: optical y (down) is -z of the LiDAR.
        camera_in_lidar = -R.T @ camera.lidar_to_camera[:3, 3]
        assert -0.45 < camera_in_lidar[2] < -0.2
        np.testing.assert_allclose(R[1], [0, 0, -1], atol=1e-12)
    assert all((c.label_image == 0).any() for c in frame.cameras if c.name in ("CAM_FRONT", "CAM_BACK"))  # sky
    front = frame.camera("CAM_FRONT")
    assert 60 < math.degrees(2 * math.atan(96 / 2 / front.intrinsics[0, 0])) < 80
    # The sky is bluish and above the road, the road greyish below.
    assert front.image[0, :, 2].mean() > front.image[0, :, 0].mean()
    assert (front.label_image[-1] == 24).mean() > 0.5


def test_lidar_output_does_not_depend_on_camera_options():
    a = SyntheticWorld(frames=2, cameras=0)[1]
    b = SyntheticWorld(frames=2, cameras=2, distortion=True, **SMALL)[1]
    assert np.array_equal(a.points, b.points) and np.array_equal(a.labels, b.labels)


def test_ego_turns_and_moves_along_a_drive():
    source = SyntheticWorld(frames=40, cameras=0)
    first, last = source[0], source[39]
    assert abs(math.degrees(yaw(last.ego_pose) - yaw(first.ego_pose))) > 2.0
    travelled = np.linalg.norm(last.ego_pose[:2, 3] - first.ego_pose[:2, 3])
    assert 30 < travelled < 33  # 8 m/s for 3.9 s
    np.testing.assert_allclose(first.ego_pose[:3, :3] @ first.ego_pose[:3, :3].T, np.eye(3), atol=1e-12)


def _classes_in_drive(seed: int) -> set[int]:
    # LiDAR labels do not depend on cameras (tested above), so the default drive's are found fast.
    present = set()
    for frame in SyntheticWorld(frames=40, seed=seed, cameras=0):
        present.update(np.unique(frame.labels).tolist())
    return present


def test_every_evaluation_class_in_the_default_drive():
    present = _classes_in_drive(0)
    assert not {name for name, label in EVALUATION_CLASSES.items() if label not in present}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_every_evaluation_class_for_other_seeds(seed):
    present = _classes_in_drive(seed)
    assert not {name for name, label in EVALUATION_CLASSES.items() if label not in present}


@pytest.mark.parametrize("distortion", [False, True])
def test_lidar_labels_match_label_images(distortion):
    source = SyntheticWorld(frames=30, seed=0, width=160, height=96, distortion=distortion, depth=True)
    visible = raw = np.zeros(2, int)
    for i in (0, 14, 29):
        frame = source[i]
        for camera in frame.cameras:
            assert camera.distortion_model == ("plumb_bob" if distortion else "none")
            assert np.any(camera.distortion) == distortion
            assert camera.depth.dtype == np.float32 and camera.depth.shape == (96, 160)
        visible = visible + agreement(frame)
        raw = raw + agreement(frame, use_depth=False)
    # Points the camera sees (depth-consistent): rendering and calibration agree exactly but for
    # pixel-edge cases.
    assert visible[0] / visible[1] > 0.99, visible
    # All in-view points, as a real car pairs them: the LiDAR, 1.84 m up, sees over parked cars
    # onto surfaces the lower cameras see hidden, so some points legitimately land on the occluder.
    assert raw[0] / raw[1] > 0.95, raw
    assert raw[1] > visible[1] > 0.8 * raw[1]


def test_sweeps_are_earlier_and_line_up():
    source = SyntheticWorld(frames=5, sweeps=2, moving=False, width=160, height=96)
    frame = source[4]
    assert [s.stamp_ns for s in frame.sweeps] == [frame.stamp_ns - 100_000_000, frame.stamp_ns - 200_000_000]
    assert all(not s.sweeps and len(s.cameras) == 6 and s.labels is not None for s in frame.sweeps)
    assert not np.allclose(frame.sweeps[1].ego_pose, frame.ego_pose)
    # A sweep is exactly the earlier frame.
    assert frames_equal(frame.sweeps[0], source[3])
    # Previous sweeps' points, motion-compensated into the current LiDAR frame, land on surfaces of
    # their own class in the current images; left uncompensated they do not.
    aggregate = aggregate_sweeps(frame, 3)
    labels = np.concatenate([frame.labels] + [s.labels for s in frame.sweeps])
    old = aggregate.sweep_index > 0
    assert old.sum() == sum(len(s) for s in frame.sweeps)
    agree, total = agreement(frame, aggregate.points, labels, old, use_depth=False)
    uncompensated = np.concatenate([frame.points] + [s.points for s in frame.sweeps])
    agree_raw, total_raw = agreement(frame, uncompensated, labels, old, use_depth=False)
    assert agree / total > 0.9
    assert agree / total > agree_raw / total_raw + 0.05
    # The static world stays put in world coordinates: the ground under the LiDAR stays 1.84 m down.
    road = aggregate.points[old & (labels == 24)]
    assert abs(np.median(road[:, 2]) + 1.84) < 0.02


def test_frame_zero_has_sweeps_before_the_drive():
    frame = SyntheticWorld(frames=1, sweeps=1, cameras=0)[0]
    assert frame.sweeps[0].stamp_ns == frame.stamp_ns - 100_000_000 and len(frame.sweeps[0]) > 20_000


@pytest.mark.parametrize("text, message", [
    ("synthetic:frames=0", "frames"),
    ("synthetic:cameras=7", "cameras"),
    ("synthetic:sweeps=11", "sweeps"),
    ("synthetic:width=8", "width"),
    ("synthetic:beams=0", "beams"),
    ("synthetic:seed=-1", "seed"),
    ("synthetic:frames=ten", "frames"),
    ("synthetic:moving=maybe", "moving"),
    ("synthetic:colour=red", "colour"),
])
def test_bad_options_raise_source_error(text, message):
    with pytest.raises(SourceError, match=message):
        open_source(text)


def test_bad_python_arguments_raise_source_error():
    with pytest.raises(SourceError, match="frames"):
        SyntheticWorld(frames=2.5)
    with pytest.raises(SourceError, match="distortion"):
        SyntheticWorld(distortion="yes")


def test_open_source():
    source = open_source("synthetic:frames=2,seed=1,cameras=1")
    assert isinstance(source, SyntheticWorld) and len(source) == 2 and source.seed == 1
    frame = source[1]
    assert [c.name for c in frame.cameras] == ["CAM_FRONT"] and frame.name == "synthetic-1/000001"
    sliced = open_source("synthetic:frames=6,cameras=0,start=2,step=2")
    assert len(sliced) == 2 and sliced[1].name == "synthetic-0/000004"
    assert open_source("synthetic:frames=1,cameras=0,beams=16,moving=false")[0].fields["ring"].max() == 15


def test_pictures(artifacts):
    """Pictures for a person: label-coloured points over all six cameras, and the raw images."""
    frame = SyntheticWorld(frames=20, seed=0)[19]
    save_png(artifacts / "synthetic_overlay.png", render_frame(frame, color_by="label", palette=PALETTE))
    save_png(artifacts / "synthetic_cameras.png", mosaic([c.image for c in frame.cameras], width=400))
    save_png(artifacts / "synthetic_bev.png", render_frame(dataclasses.replace(frame, cameras=[]), color_by="label",
                                                           palette=PALETTE))
    assert (artifacts / "synthetic_overlay.png").stat().st_size > 10_000


def test_object_truth_gives_every_object_point_an_instance_inside_its_box():
    world = SyntheticWorld(frames=2, seed=3, cameras=0)
    frame, truth = world[1], world.objects(1)
    assert truth.instances.shape == (len(frame),)
    ground = np.isin(frame.labels, [24, 25, 26, 27])
    assert (truth.instances[ground] == -1).all() and (truth.instances[~ground] >= 0).all()
    assert len(truth.boxes) == len(truth.labels) == len(truth.num_points) == truth.instances.max() + 1
    np.testing.assert_array_equal(np.bincount(truth.instances[~ground]), truth.num_points)
    cars = 0
    for k, box in enumerate(truth.boxes):
        members = frame.points[truth.instances == k]
        assert (frame.labels[truth.instances == k] == truth.labels[k]).all()
        # Inside the box up to the 1.5 cm range noise (5 sigma).
        c, s = math.cos(box.yaw), math.sin(box.yaw)
        local = members - box.center
        along, across = local[:, 0] * c + local[:, 1] * s, -local[:, 0] * s + local[:, 1] * c
        slack = 0.08
        assert (np.abs(along) <= box.size[0] / 2 + slack).all() and (np.abs(across) <= box.size[1] / 2 + slack).all()
        assert (np.abs(local[:, 2]) <= box.size[2] / 2 + slack).all()
        if truth.labels[k] == 17:
            cars += 1
            assert 4.1 < box.size[0] < 5.0 and 1.7 < box.size[1] < 2.0 and 1.4 < box.size[2] < 1.8
            # Cars stand on the road: the box bottom is at the ground, 1.84 m below the LiDAR.
            assert box.center[2] - box.size[2] / 2 == pytest.approx(-1.84, abs=1e-3)
    assert cars >= 2
