"""Geometry on frames: rigid transforms, projection into cameras, sweep aggregation, voxelisation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .frame import Camera, Frame


def transform_points(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a (4, 4) transform to (N, 3) points; returns float64 (N, 3)."""
    return points @ transform[:3, :3].T + transform[:3, 3]


def invert(transform: np.ndarray) -> np.ndarray:
    """Inverse of a rigid (4, 4) transform."""
    inverse = np.eye(4)
    rotation = transform[:3, :3]
    inverse[:3, :3] = rotation.T
    inverse[:3, 3] = -rotation.T @ transform[:3, 3]
    return inverse


@dataclass
class Projection:
    """Where N points land in one camera.

    uv: (N, 2) float32 pixel coordinates (u = column, v = row; (0, 0) is the centre of the top-left
        pixel, as in OpenCV and ROS CameraInfo).
    depth: (N,) float32 metres along the optical axis.
    valid: (N,) bool, in front of the camera and inside the image (and, for RGB-D cameras,
        consistent with the depth image).
    """

    uv: np.ndarray
    depth: np.ndarray
    valid: np.ndarray

    @property
    def pixels(self) -> np.ndarray:
        """(N, 2) int64 (row, column) of the pixel each point lands on; meaningful where valid."""
        return np.floor(self.uv[:, ::-1] + 0.5).astype(np.int64)


def _monotonic_radius_sq(k1: float, k2: float, k3: float) -> float:
    """Largest r^2 for which plumb_bob's radial map r -> r (1 + k1 r^2 + k2 r^4 + k3 r^6) still grows.

    Beyond it the polynomial folds back and would put points from far outside the field of view
    inside the image, so such points are invalid.
    """
    # d/dr of the radial map, as a polynomial in s = r^2: 1 + 3 k1 s + 5 k2 s^2 + 7 k3 s^3.
    roots = np.roots([7 * k3, 5 * k2, 3 * k1, 1.0]) if any((k1, k2, k3)) else np.array([])
    positive = [r.real for r in roots if abs(r.imag) < 1e-12 and r.real > 0]
    return min(positive) if positive else np.inf


def _monotonic_limit(radius: np.ndarray, mapped: np.ndarray) -> float:
    """The radius up to which mapped (sampled at the increasing radius) still grows; inf if it grows throughout."""
    falls = np.flatnonzero((np.diff(mapped) <= 0) | ~np.isfinite(mapped[1:]))
    return float(radius[falls[0]]) if falls.size else np.inf


def _rational_radial(r2, k1, k2, k3, k4, k5, k6):
    return (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))


def _fisheye_theta(theta, k1, k2, k3, k4):
    t2 = theta * theta
    return theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))


def distort(x: np.ndarray, y: np.ndarray, model: str, coefficients: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised image coordinates through a CameraInfo distortion model (OpenCV's equations):
    (x', y', valid). Beyond the radius where the model's map stops growing it folds back and would put points
    from outside the field of view inside the image, so those are not valid."""
    r2 = x * x + y * y
    if model == "none" or not np.any(coefficients):
        return x, y, np.ones(len(x), bool)
    if model == "equidistant":  # angle from the axis theta -> theta_d; the point moves along its ray
        k1, k2, k3, k4 = coefficients
        theta = np.arctan(np.sqrt(r2))
        grid = np.linspace(0.0, np.pi / 2, 2049)
        valid = theta < _monotonic_limit(grid, _fisheye_theta(grid, k1, k2, k3, k4))
        r = np.sqrt(r2)
        scale = np.where(r > 1e-12, _fisheye_theta(theta, k1, k2, k3, k4) / np.maximum(r, 1e-12), 1.0)
        return x * scale, y * scale, valid
    if model == "plumb_bob":
        k1, k2, p1, p2, k3 = coefficients
        valid = r2 < _monotonic_radius_sq(k1, k2, k3)
        radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    elif model == "rational_polynomial":
        k1, k2, p1, p2, k3, k4, k5, k6 = coefficients
        grid = np.linspace(0.0, 10.0, 4097)  # r up to 10: 84 degrees off the axis
        limit = _monotonic_limit(grid, grid * _rational_radial(grid * grid, k1, k2, k3, k4, k5, k6))
        valid = r2 < limit * limit
        radial = _rational_radial(r2, k1, k2, k3, k4, k5, k6)
    else:
        raise ValueError(f"distortion model {model!r} is not one of none, plumb_bob, rational_polynomial, equidistant")
    return (x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
            y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y, valid)


def project(points: np.ndarray, camera: Camera, min_depth_m: float = 0.1,
            depth_tolerance_m: float = 0.1) -> Projection:
    """Project (N, 3) LiDAR-frame points into one camera (pinhole and its distortion model)."""
    cam = transform_points(camera.lidar_to_camera, np.asarray(points, dtype=np.float64))
    depth = cam[:, 2]
    in_front = depth > min_depth_m
    safe_depth = np.where(in_front, depth, 1.0)
    x, y, undistorted = distort(cam[:, 0] / safe_depth, cam[:, 1] / safe_depth, camera.distortion_model,
                                camera.distortion)
    in_front &= undistorted
    K = camera.intrinsics
    u = K[0, 0] * x + K[0, 1] * y + K[0, 2]
    v = K[1, 1] * y + K[1, 2]
    valid = in_front & (u >= -0.5) & (u < camera.width - 0.5) & (v >= -0.5) & (v < camera.height - 0.5)
    projection = Projection(uv=np.stack([u, v], axis=1).astype(np.float32), depth=depth.astype(np.float32),
                            valid=valid)
    if camera.depth is not None:
        rows, cols = projection.pixels[valid].T
        measured = camera.depth[rows, cols]
        agrees = (measured > 0) & (np.abs(measured - depth[valid]) <= depth_tolerance_m)
        projection.valid[np.flatnonzero(valid)[~agrees]] = False
    return projection


def project_to_cameras(points: np.ndarray, cameras: list[Camera], **kwargs) -> list[Projection]:
    """Project the same points into every camera; one Projection per camera, in order."""
    return [project(points, camera, **kwargs) for camera in cameras]


@dataclass
class Aggregate:
    """A sweep and its previous sweeps in the current sweep's LiDAR frame.

    points: (M, 3) float32, current LiDAR frame; the current sweep's points come first.
    sweep_index: (M,) int64, 0 for the current sweep, k for frame.sweeps[k - 1].
    time_lag_s: (M,) float32, current stamp minus the sweep's stamp.
    """

    points: np.ndarray
    sweep_index: np.ndarray
    time_lag_s: np.ndarray


def aggregate_sweeps(frame: Frame, n_sweeps: int | None = None) -> Aggregate:
    """Bring the frame and up to n_sweeps - 1 previous sweeps into the frame's LiDAR frame.

    Each sweep is moved with its own ego pose (motion compensation): the static world lines up
    across sweeps while the vehicle moves. Moving objects still smear, as in any aggregation.
    """
    sweeps = [frame] + list(frame.sweeps)
    if n_sweeps is not None:
        sweeps = sweeps[:max(1, n_sweeps)]
    world_to_current = invert(frame.lidar_pose)
    points, index, lag = [], [], []
    for k, sweep in enumerate(sweeps):
        to_current = world_to_current @ sweep.lidar_pose
        points.append(transform_points(to_current, sweep.points).astype(np.float32))
        index.append(np.full(len(sweep), k, dtype=np.int64))
        lag.append(np.full(len(sweep), (frame.stamp_ns - sweep.stamp_ns) * 1e-9, dtype=np.float32))
    return Aggregate(np.concatenate(points), np.concatenate(index), np.concatenate(lag))


@dataclass
class Voxels:
    """Points grouped into cubic voxels.

    coords: (V, 3) int32 non-negative voxel indices (x, y, z) from `origin`.
    point_to_voxel: (N,) int64, the voxel each point falls in.
    voxel_to_point: (V,) int64, the first point of each voxel (a representative).
    counts: (V,) int64 points per voxel.
    origin: (3,) float64, the corner of voxel (0, 0, 0) in the points' frame, metres.
    """

    coords: torch.Tensor
    point_to_voxel: torch.Tensor
    voxel_to_point: torch.Tensor
    counts: torch.Tensor
    origin: np.ndarray

    def __len__(self) -> int:
        return len(self.coords)


def voxelize(points: np.ndarray | torch.Tensor, voxel_size_m: float) -> Voxels:
    """Group (N, 3) points into voxels of edge voxel_size_m; runs on the points' device."""
    if voxel_size_m <= 0:
        raise ValueError(f"voxel_size_m must be positive, got {voxel_size_m}")
    points = torch.as_tensor(points)
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
        raise ValueError(f"voxelize needs (N, 3) points with N > 0, got {tuple(points.shape)}")
    grid = torch.floor(points.double() / voxel_size_m).long()
    low = grid.min(dim=0).values
    grid -= low
    extent = grid.max(dim=0).values + 1
    key = (grid[:, 0] * extent[1] + grid[:, 1]) * extent[2] + grid[:, 2]
    unique_keys, point_to_voxel = torch.unique(key, return_inverse=True)
    n_voxels = len(unique_keys)
    first = torch.full((n_voxels,), len(points), dtype=torch.long, device=points.device)
    first.scatter_reduce_(0, point_to_voxel, torch.arange(len(points), device=points.device), reduce="amin")
    counts = torch.bincount(point_to_voxel, minlength=n_voxels)
    return Voxels(coords=grid[first].int(), point_to_voxel=point_to_voxel, voxel_to_point=first, counts=counts,
                  origin=low.cpu().numpy() * voxel_size_m)


@dataclass
class Box3D:
    """An oriented box in the points' frame (for the segmenter, the LiDAR frame): center (3,) metres,
    size (3,) length along the heading, width, height, metres; yaw: heading about z, radians."""

    center: np.ndarray
    size: np.ndarray
    yaw: float

    def corners_bev(self) -> np.ndarray:
        """(4, 2) ground-plane corners, counter-clockwise."""
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        half_l, half_w = self.size[0] / 2, self.size[1] / 2
        local = np.array([[half_l, half_w], [-half_l, half_w], [-half_l, -half_w], [half_l, -half_w]])
        return local @ np.array([[c, s], [-s, c]]) + self.center[:2]
