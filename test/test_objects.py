"""Instances and boxes from labelled points, on scenes where the answer is known."""

import math

import numpy as np
import pytest

from clip2scene_core.box_metrics import box_iou, match
from clip2scene_core.geometry import Box3D
from clip2scene_core.objects import ObjectConfig, ObjectsError, cluster, detect_objects, fit_box


def box_surface(center, size, yaw, spacing=0.1, sides=("front", "back", "left", "right", "top")):
    """Points on the chosen faces of an oriented box (length along yaw), like LiDAR returns."""
    length, width, height = size
    along = np.arange(-length / 2, length / 2 + 1e-9, spacing)
    across = np.arange(-width / 2, width / 2 + 1e-9, spacing)
    up = np.arange(0, height + 1e-9, spacing)
    faces = []
    if "front" in sides or "back" in sides:
        a, z = np.meshgrid(across, up)
        for name, x in (("front", length / 2), ("back", -length / 2)):
            if name in sides:
                faces.append(np.stack([np.full(a.size, x), a.ravel(), z.ravel()], 1))
    l_, z = np.meshgrid(along, up)
    for name, y in (("left", width / 2), ("right", -width / 2)):
        if name in sides:
            faces.append(np.stack([l_.ravel(), np.full(l_.size, y), z.ravel()], 1))
    if "top" in sides:
        l_, a = np.meshgrid(along, across)
        faces.append(np.stack([l_.ravel(), a.ravel(), np.full(l_.size, height)], 1))
    local = np.concatenate(faces)
    c, s = math.cos(yaw), math.sin(yaw)
    world = local @ np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])
    return (world + [center[0], center[1], center[2] - height / 2]).astype(np.float32)


def test_two_boxes_side_by_side_are_two_instances_with_their_boxes():
    first = box_surface((5.0, 1.5, 0.75), (4.5, 1.8, 1.5), 0.0)
    second = box_surface((5.0, -1.5, 0.75), (4.5, 1.8, 1.5), 0.0)  # a 1.2 m gap
    points = np.concatenate([first, second])
    labels = np.full(len(points), 3)
    result = detect_objects(points, labels, np.full(len(points), 0.8, np.float32), np.array([False] * 3 + [True]),
                            ObjectConfig(distance_m=0.5, min_points=5))
    assert len(result.objects) == 2
    assert set(result.instances[:len(first)]) == {0} and set(result.instances[len(first):]) == {1}
    for detected, y in zip(result.objects, (1.5, -1.5)):
        assert detected.class_index == 3 and detected.num_points in (len(first), len(second))
        assert detected.score == pytest.approx(0.8)
        np.testing.assert_allclose(detected.box.center, [5.0, y, 0.75], atol=1e-5)
        np.testing.assert_allclose(detected.box.size, [4.5, 1.8, 1.5], atol=1e-5)
        assert abs(detected.box.yaw) < 1e-3
        truth = Box3D(np.array([5.0, y, 0.75]), np.array([4.5, 1.8, 1.5]), 0.0)
        assert box_iou(detected.box, truth) > 0.99


def test_a_gap_smaller_than_the_distance_joins_two_boxes():
    first = box_surface((5.0, 1.0, 0.75), (4.5, 1.8, 1.5), 0.0)
    second = box_surface((5.0, -1.0, 0.75), (4.5, 1.8, 1.5), 0.0)  # a 0.2 m gap
    points = np.concatenate([first, second])
    assert set(cluster(points, np.zeros(len(points), int), distance_m=0.5)) == {0}


def test_touching_points_of_different_classes_stay_apart():
    points = box_surface((5.0, 0.0, 0.75), (4.0, 2.0, 1.5), 0.0)
    classes = (points[:, 0] > 5.0).astype(int)
    instances = cluster(points, classes, distance_m=0.5)
    assert len(set(instances)) == 2
    for c in (0, 1):
        assert len(set(instances[classes == c])) == 1


def test_l_shaped_car_gives_its_heading_and_size():
    # LiDAR sees a car's rear and its right side only: an L of points.
    yaw = math.radians(30)
    points = box_surface((12.0, -4.0, 0.8), (4.6, 1.9, 1.6), yaw, sides=("back", "right"))
    box = fit_box(points)
    assert abs(box.yaw - yaw) < math.radians(0.2)
    np.testing.assert_allclose(box.size, [4.6, 1.9, 1.6], atol=0.02)
    np.testing.assert_allclose(box.center, [12.0, -4.0, 0.8], atol=0.02)


def test_heading_stays_in_a_half_turn_and_length_is_the_longer_side():
    for degrees in (-89, -45, 0, 60, 95, 170, 250):
        yaw = math.radians(degrees)
        box = fit_box(box_surface((0.0, 0.0, 1.0), (3.0, 1.0, 2.0), yaw, spacing=0.1))
        assert -math.pi / 2 < box.yaw <= math.pi / 2
        assert box.size[0] >= box.size[1]
        difference = (box.yaw - yaw) % math.pi
        assert min(difference, math.pi - difference) < math.radians(0.2)


def test_single_point():
    point = np.array([[1.0, 2.0, 3.0]], np.float32)
    box = fit_box(point)
    np.testing.assert_allclose(box.center, [1, 2, 3])
    np.testing.assert_allclose(box.size, [0, 0, 0])
    kept = detect_objects(point, np.array([0]), np.array([0.5]), np.array([True]), ObjectConfig(0.5, 1))
    assert len(kept.objects) == 1 and kept.objects[0].num_points == 1
    dropped = detect_objects(point, np.array([0]), np.array([0.5]), np.array([True]), ObjectConfig(0.5, 2))
    assert dropped.objects == [] and list(dropped.instances) == [-1]


def test_empty_cloud():
    result = detect_objects(np.zeros((0, 3), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32),
                            np.array([True]))
    assert result.objects == [] and result.instances.shape == (0,)
    with pytest.raises(ObjectsError, match="M >= 1"):
        fit_box(np.zeros((0, 3)))


def test_stuff_and_unlabelled_points_make_no_objects():
    points = box_surface((5.0, 0.0, 0.75), (4.0, 2.0, 1.5), 0.0)
    labels = np.where(points[:, 0] > 5.0, 0, -1)
    result = detect_objects(points, labels, np.ones(len(points)), np.array([False]))
    assert result.objects == [] and (result.instances == -1).all()


def test_bad_parameters_name_themselves():
    with pytest.raises(ObjectsError, match="distance_m"):
        ObjectConfig(distance_m=0.0)
    with pytest.raises(ObjectsError, match="min_points"):
        ObjectConfig(min_points=0)
    with pytest.raises(ObjectsError, match="classes"):
        cluster(np.zeros((3, 3)), np.zeros(2), 0.5)


def test_iou_and_matching():
    a = Box3D(np.array([0.0, 0.0, 1.0]), np.array([4.0, 2.0, 2.0]), 0.0)
    shifted = Box3D(np.array([2.0, 0.0, 1.0]), np.array([4.0, 2.0, 2.0]), 0.0)
    assert box_iou(a, a) == pytest.approx(1.0)
    assert box_iou(a, shifted) == pytest.approx(1 / 3)  # half overlaps: 8 of 24 m^3
    turned = Box3D(np.array([0.0, 0.0, 1.0]), np.array([2.0, 2.0, 2.0]), math.pi / 4)
    square = Box3D(np.array([0.0, 0.0, 1.0]), np.array([2.0, 2.0, 2.0]), 0.0)
    # A square turned 45 degrees against itself: the octagon of area 8 (sqrt 2 - 1).
    assert box_iou(turned, square, bev=True) == pytest.approx(8 * (math.sqrt(2) - 1) / (8 - 8 * (math.sqrt(2) - 1)))
    counts = match([(shifted, 0.9), (a, 0.8)], [a])
    assert (counts.true_positives, counts.detections, counts.ground_truth) == (1, 2, 1)
    assert counts.precision == 0.5 and counts.recall == 1.0


def test_matching_by_centre_distance():
    truth = Box3D(np.array([10.0, 0.0, 1.0]), np.array([4.0, 2.0, 2.0]), 0.0)
    thin = Box3D(np.array([11.5, 0.5, 1.0]), np.array([1.0, 0.1, 1.0]), 0.0)  # a partial view, 1.58 m off
    assert match([(thin, 1.0)], [truth]).true_positives == 0
    assert match([(thin, 1.0)], [truth], center_distance_m=2.0).true_positives == 1
    assert match([(thin, 1.0)], [truth], center_distance_m=1.0).true_positives == 0
