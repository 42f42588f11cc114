import numpy as np
import pytest
import torch

from clip2scene_core.frame import Camera, Frame, FrameError
from clip2scene_core.geometry import aggregate_sweeps, invert, project, project_to_cameras, transform_points, voxelize
from frames import CAMERA_TO_LIDAR, yaw_pose

K = np.array([[100.0, 0, 79.5], [0, 100.0, 59.5], [0, 0, 1]])


def forward_camera(**kwargs) -> Camera:
    return Camera("front", np.zeros((120, 160, 3), np.uint8), K, np.linalg.inv(CAMERA_TO_LIDAR), **kwargs)


def test_invert_and_transform_round_trip():
    T = yaw_pose(0.7, 1.0, -2.0, 0.5)
    points = np.random.default_rng(0).normal(size=(10, 3))
    assert np.allclose(transform_points(invert(T), transform_points(T, points)), points)
    assert np.allclose(invert(T) @ T, np.eye(4))


def test_pinhole_projection_pixel_convention_and_validity():
    camera = forward_camera()
    # LiDAR x forward, y left, z up; the optical axis is LiDAR +x.
    points = np.array([[10.0, 0, 0],       # on the axis -> principal point
                       [10.0, -1.0, 0.5],  # right and up -> u larger, v smaller
                       [-5.0, 0, 0],       # behind
                       [10.0, 20.0, 0],    # far left, outside
                       [1.0, -0.7945, 0]])  # lands at u = 159.45, just inside the last column
    p = project(points, camera)
    assert np.allclose(p.uv[0], [79.5, 59.5])
    assert np.allclose(p.uv[1], [79.5 + 10, 59.5 - 5])
    assert np.allclose(p.depth[:2], 10.0)
    assert p.valid.tolist() == [True, True, False, False, True]
    assert p.pixels[0].tolist() == [60, 80] or p.pixels[0].tolist() == [59, 79]  # half-pixel boundary
    assert p.pixels[4].tolist()[1] == 159


def test_plumb_bob_against_hand_computed_values():
    k1, k2, p1, p2, k3 = -0.2, 0.05, 0.001, -0.002, 0.0
    camera = forward_camera(distortion_model="plumb_bob", distortion=[k1, k2, p1, p2, k3])
    x, y = 0.3, -0.2  # normalised coordinates
    point = CAMERA_TO_LIDAR @ np.array([x * 5, y * 5, 5.0, 1.0])
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 * r2
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    p = project(point[None, :3], camera)
    assert np.allclose(p.uv[0], [100 * xd + 79.5, 100 * yd + 59.5])


def test_plumb_bob_fold_back_is_rejected():
    # With strong barrel distortion the radial polynomial turns back at r^2 = 1 / (3 * 0.4) ~ 0.83:
    # a point at 80 degrees off-axis would otherwise land near the image centre.
    camera = forward_camera(distortion_model="plumb_bob", distortion=[-0.4, 0, 0, 0, 0])
    far_off_axis = CAMERA_TO_LIDAR @ np.array([np.tan(np.radians(80)), 0, 1.0, 1.0])
    p = project(far_off_axis[None, :3] * 5, camera)
    assert not p.valid[0]


def test_rational_polynomial_against_hand_computed_values():
    k1, k2, p1, p2, k3, k4, k5, k6 = -0.3, 0.08, 0.001, -0.002, 0.01, 0.2, -0.01, 0.002
    camera = forward_camera(distortion_model="rational_polynomial", distortion=[k1, k2, p1, p2, k3, k4, k5, k6])
    x, y = 0.3, -0.2
    r2 = x * x + y * y
    radial = (1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3) / (1 + k4 * r2 + k5 * r2 ** 2 + k6 * r2 ** 3)
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    point = CAMERA_TO_LIDAR @ np.array([x * 5, y * 5, 5.0, 1.0])
    assert np.allclose(project(point[None, :3], camera).uv[0], [100 * xd + 79.5, 100 * yd + 59.5])
    # k4..k6 zero: the same camera as plumb_bob
    plumb = forward_camera(distortion_model="plumb_bob", distortion=[k1, k2, p1, p2, k3])
    rational = forward_camera(distortion_model="rational_polynomial", distortion=[k1, k2, p1, p2, k3, 0, 0, 0])
    points = np.random.default_rng(1).uniform([2, -1, -1], [6, 1, 1], (50, 3))
    assert np.allclose(project(points, plumb).uv, project(points, rational).uv)
    # strong barrel distortion folds back: r (1 - 0.4 r^2) / 1 peaks at r^2 = 0.83, so 80 degrees is refused
    folding = forward_camera(distortion_model="rational_polynomial", distortion=[-0.4, 0, 0, 0, 0, 0, 0, 0])
    far_off_axis = CAMERA_TO_LIDAR @ np.array([np.tan(np.radians(80)), 0, 1.0, 1.0])
    assert not project(far_off_axis[None, :3] * 5, folding).valid[0]


def test_equidistant_fisheye_against_hand_computed_values():
    k1, k2, k3, k4 = 0.05, -0.01, 0.002, -0.0005
    camera = forward_camera(distortion_model="equidistant", distortion=[k1, k2, k3, k4])
    x, y = 0.6, -0.4
    r = np.hypot(x, y)
    theta = np.arctan(r)
    theta_d = theta * (1 + k1 * theta ** 2 + k2 * theta ** 4 + k3 * theta ** 6 + k4 * theta ** 8)
    point = CAMERA_TO_LIDAR @ np.array([x * 5, y * 5, 5.0, 1.0])
    p = project(point[None, :3], camera)
    assert np.allclose(p.uv[0], [100 * x * theta_d / r + 79.5, 100 * y * theta_d / r + 59.5])
    on_axis = CAMERA_TO_LIDAR @ np.array([0, 0, 5.0, 1.0])
    assert np.allclose(project(on_axis[None, :3], camera).uv[0], [79.5, 59.5])
    # a fisheye with no coefficients maps the angle itself: 60 degrees off axis lands at f * pi / 3
    plain = forward_camera(distortion_model="equidistant", distortion=[1e-12, 0, 0, 0])
    sixty = CAMERA_TO_LIDAR @ np.array([np.tan(np.radians(60)), 0, 1.0, 1.0])
    assert np.allclose(project(sixty[None, :3], plain).uv[0, 0], 79.5 + 100 * np.pi / 3, atol=1e-3)
    # theta_d = theta (1 - 0.5 theta^2) stops growing at theta = 0.816 rad (46.8 degrees): 60 degrees refused
    folding = forward_camera(distortion_model="equidistant", distortion=[-0.5, 0, 0, 0])
    assert not project(sixty[None, :3], folding).valid[0]
    assert project(point[None, :3], folding).valid.tolist() == [True]  # 35.8 degrees: inside


def test_distortion_coefficient_counts_are_checked():
    assert forward_camera(distortion_model="equidistant", distortion=[0.1, 0, 0, 0]).distortion.shape == (4,)
    assert forward_camera(distortion_model="plumb_bob", distortion=[0.1, 0]).distortion.shape == (5,)
    with pytest.raises(FrameError, match="but equidistant has 4"):
        forward_camera(distortion_model="equidistant", distortion=[0.1, 0, 0, 0, 0.2])
    with pytest.raises(FrameError, match="is not one of"):
        forward_camera(distortion_model="fisheye62", distortion=[0.1])


def test_depth_image_rejects_occluded_points():
    depth = np.full((120, 160), 10.0, np.float32)
    camera = forward_camera(depth=depth)
    points = np.array([[10.0, 0, 0], [20.0, 0, 0], [10.05, 0.5, 0]])
    assert project(points, camera).valid.tolist() == [True, False, True]


def test_project_to_cameras_matches_single():
    cameras = [forward_camera(), Camera("left", np.zeros((120, 160, 3), np.uint8), K,
                                        np.linalg.inv(yaw_pose(np.pi / 2) @ CAMERA_TO_LIDAR))]
    points = np.random.default_rng(1).normal(size=(200, 3)) * 10
    for camera, projection in zip(cameras, project_to_cameras(points, cameras)):
        assert np.array_equal(projection.valid, project(points, camera).valid)
    left = project(np.array([[0, 10.0, 0]]), cameras[1])
    assert left.valid[0] and np.allclose(left.uv[0], [79.5, 59.5])


def test_kitti_model_reproduces_composed_matrix():
    rng = np.random.default_rng(2)
    P2 = np.array([[721.5, 0, 609.6, 44.86], [0, 721.5, 172.9, 0.216], [0, 0, 1, 0.0027]])
    R0 = yaw_pose(0.01)[:3, :3]
    velo = np.linalg.inv(CAMERA_TO_LIDAR)[:3]
    camera = Camera.from_kitti("image_2", np.zeros((375, 1242, 3), np.uint8), P2, R0, velo)
    points = rng.uniform([5, -10, -2], [40, 10, 2], size=(100, 3))
    composed = P2 @ np.vstack([np.hstack([R0, np.zeros((3, 1))]), [0, 0, 0, 1]]) @ np.vstack([velo, [0, 0, 0, 1]])
    h = np.c_[points, np.ones(len(points))] @ composed.T
    assert np.allclose(project(points, camera).uv, h[:, :2] / h[:, 2:], atol=1e-3)


def test_aggregate_sweeps_aligns_static_points():
    world_point = np.array([20.0, 5.0, 1.0])
    lidar_to_ego = yaw_pose(0.0, 1.0, 0.0, 1.8)
    frames = []
    for i, pose in enumerate([yaw_pose(0.3, 4.0, 1.0), yaw_pose(0.2, 2.0, 0.5), yaw_pose(0.0)]):
        lidar_pose = pose @ lidar_to_ego
        local = transform_points(invert(lidar_pose), world_point[None])
        frames.append(Frame(points=local, stamp_ns=(10 - i) * 100_000_000, lidar_to_ego=lidar_to_ego, ego_pose=pose))
    current = frames[0]
    current.sweeps = frames[1:]
    aggregate = aggregate_sweeps(current, 3)
    assert aggregate.sweep_index.tolist() == [0, 1, 2]
    assert np.allclose(aggregate.points, aggregate.points[0], atol=1e-4)
    assert np.allclose(aggregate.time_lag_s, [0.0, 0.1, 0.2])
    assert len(aggregate_sweeps(current, 2).points) == 2


def test_voxelize_maps_both_ways():
    rng = np.random.default_rng(3)
    points = rng.uniform(-3, 3, size=(2000, 3)).astype(np.float32)
    voxels = voxelize(points, 0.5)
    grid = np.floor(points / 0.5).astype(np.int64)
    grid -= grid.min(axis=0)
    # Every point's voxel has the point's grid cell; every voxel's representative lies in it.
    coords = voxels.coords.numpy()
    assert np.array_equal(coords[voxels.point_to_voxel.numpy()], grid)
    assert np.array_equal(voxels.point_to_voxel[voxels.voxel_to_point].numpy(), np.arange(len(voxels)))
    assert voxels.counts.sum() == len(points)
    assert len(np.unique(coords, axis=0)) == len(voxels)
    assert np.allclose(voxels.origin, np.floor(points / 0.5).min(axis=0) * 0.5)
    # Representative is the first point of its voxel.
    first = {}
    for i, v in enumerate(voxels.point_to_voxel.tolist()):
        first.setdefault(v, i)
    assert voxels.voxel_to_point.tolist() == [first[v] for v in range(len(voxels))]


def test_voxelize_errors_and_torch_input():
    with pytest.raises(ValueError, match="voxel_size_m"):
        voxelize(np.zeros((3, 3)), 0)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        voxelize(np.zeros((0, 3)), 0.1)
    assert len(voxelize(torch.zeros(5, 3), 0.1)) == 1


def test_frame_and_camera_validation_messages():
    with pytest.raises(FrameError, match="shape"):
        Frame(points=np.zeros((5, 4)), stamp_ns=0)
    with pytest.raises(FrameError, match="field 'intensity' has 4 values for 5 points"):
        Frame(points=np.zeros((5, 3)), stamp_ns=0, fields={"intensity": np.zeros(4)})
    with pytest.raises(FrameError, match="4 labels for 5 points"):
        Frame(points=np.zeros((5, 3)), stamp_ns=0, labels=np.zeros(4))
    with pytest.raises(FrameError, match="focal length"):
        Camera("c", np.zeros((4, 4, 3), np.uint8), np.zeros((3, 3)), np.eye(4))
    with pytest.raises(FrameError, match="uint8 RGB"):
        Camera("c", np.zeros((4, 4)), K, np.eye(4))
    with pytest.raises(FrameError, match="label_image shape"):
        Camera("c", np.zeros((4, 4, 3), np.uint8), K, np.eye(4), label_image=np.zeros((3, 4)))
