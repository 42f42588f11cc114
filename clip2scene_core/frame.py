"""The one type every sensor source becomes: a LiDAR sweep with its cameras, calibration and pose.

Frames and conventions
- LiDAR frame: the sensor's own frame; `Frame.points` are in it.
- Ego frame: the vehicle body; `lidar_to_ego` maps LiDAR points into it.
- World frame: fixed; `ego_pose` maps ego-frame points into it at the sweep's time.
- Camera optical frame: x right, y down, z forward; `Camera.lidar_to_camera` maps points of the
  frame's LiDAR (at the sweep's time) into it at the image's time, so ego motion between the two
  timestamps is already folded in.
All transforms are (4, 4) float64 homogeneous matrices, row-major, applied as `T @ [x y z 1]`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import UserError

# sensor_msgs/CameraInfo distortion models (ROS names, OpenCV's equations) and how many coefficients each has:
# plumb_bob k1 k2 p1 p2 k3; rational_polynomial k1 k2 p1 p2 k3 k4 k5 k6; equidistant (fisheye) k1 k2 k3 k4.
COEFFICIENTS = {"none": 5, "plumb_bob": 5, "rational_polynomial": 8, "equidistant": 4}
DISTORTION_MODELS = tuple(COEFFICIENTS)


class FrameError(UserError, ValueError):
    """A frame or camera whose arrays do not fit together."""


def _matrix(value, shape: tuple[int, ...], what: str) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.shape != shape:
        raise FrameError(f"{what} must have shape {shape}, got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise FrameError(f"{what} contains NaN or inf")
    return array


@dataclass
class Camera:
    """One camera image with its calibration.

    image: (H, W, 3) uint8 RGB.
    intrinsics: (3, 3) pinhole matrix K, pixels.
    lidar_to_camera: (4, 4) LiDAR frame -> camera optical frame (see module docstring).
    distortion_model: one of DISTORTION_MODELS: "none", "plumb_bob" (radial-tangential k1 k2 p1 p2 k3),
        "rational_polynomial" (k1 k2 p1 p2 k3 k4 k5 k6) or "equidistant" (fisheye k1 k2 k3 k4).
    distortion: the model's coefficients (COEFFICIENTS[model] of them); 5 zeros for "none".
    stamp_ns: capture time, ns.
    label_image: optional (H, W) int64 raw label ids per pixel (synthetic world, 2D segmenters).
    instance_image: optional (H, W) int64 persistent surface id per pixel (synthetic world): the same id for the
        same world object (or patch of ground) in every frame and camera of a drive, other ids on another drive;
        0 where nothing was hit. The CLIP-like proxy teacher ties its errors to it.
    depth: optional (H, W) float32 metres along the optical axis (RGB-D); 0 where unknown.
    ego_pose: optional (4, 4) ego -> world at stamp_ns, when the source knows it and it differs from
        the frame's (the camera fired at another time than the LiDAR); lets writers recover the static
        camera-to-ego extrinsic from lidar_to_camera.
    """

    name: str
    image: np.ndarray
    intrinsics: np.ndarray
    lidar_to_camera: np.ndarray
    stamp_ns: int = 0
    distortion_model: str = "none"
    distortion: np.ndarray = field(default_factory=lambda: np.zeros(5))
    label_image: np.ndarray | None = None
    instance_image: np.ndarray | None = None
    depth: np.ndarray | None = None
    ego_pose: np.ndarray | None = None
    frame_id: str = ""

    def __post_init__(self) -> None:
        what = f"camera {self.name!r}"
        self.image = np.asarray(self.image)
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise FrameError(f"{what}: image must be (H, W, 3) uint8 RGB, got {self.image.shape} {self.image.dtype}")
        self.intrinsics = _matrix(self.intrinsics, (3, 3), f"{what} intrinsics")
        if self.intrinsics[0, 0] <= 0 or self.intrinsics[1, 1] <= 0:
            raise FrameError(f"{what}: intrinsics have a non-positive focal length; check the calibration")
        self.lidar_to_camera = _matrix(self.lidar_to_camera, (4, 4), f"{what} lidar_to_camera")
        if self.distortion_model not in DISTORTION_MODELS:
            raise FrameError(f"{what}: distortion model {self.distortion_model!r} is not one of {DISTORTION_MODELS}")
        count = COEFFICIENTS[self.distortion_model]
        given = np.asarray(self.distortion, dtype=np.float64).ravel()
        if np.any(given[count:]):
            raise FrameError(f"{what}: {given.size} distortion coefficients, but {self.distortion_model} has {count}")
        coefficients = np.zeros(count)
        coefficients[: min(count, given.size)] = given[:count]
        if not np.all(np.isfinite(coefficients)):
            raise FrameError(f"{what}: distortion holds NaN or inf")
        self.distortion = coefficients
        for name in ("label_image", "instance_image", "depth"):
            extra = getattr(self, name)
            if extra is not None and np.shape(extra) != self.image.shape[:2]:
                raise FrameError(f"{what}: {name} shape {np.shape(extra)} differs from the image's {self.image.shape[:2]}")
        if self.ego_pose is not None:
            self.ego_pose = _matrix(self.ego_pose, (4, 4), f"{what} ego_pose")
        self.stamp_ns = int(self.stamp_ns)

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def optical_frame(self) -> str:
        """The camera's frame name in messages and transform trees."""
        return self.frame_id or f"{self.name.lower()}_optical"

    @classmethod
    def from_kitti(cls, name: str, image: np.ndarray, P: np.ndarray, R0_rect: np.ndarray,
                   velo_to_cam: np.ndarray, **kwargs) -> Camera:
        """A camera from KITTI's rectified model, pixel ~ P @ R0_rect @ Tr_velo_to_cam @ x.

        P (3, 4) or (4, 4) is K @ [I | t] for a rectified camera; the decomposition below is exact,
        so projecting with the result reproduces the composed KITTI matrix to rounding.
        """
        P = np.asarray(P, dtype=np.float64)[:3]
        K = P[:, :3]
        rectified_to_camera = np.eye(4)
        rectified_to_camera[:3, 3] = np.linalg.solve(K, P[:, 3])
        R0 = np.eye(4)
        R0[:3, :3] = np.asarray(R0_rect, dtype=np.float64)[:3, :3]
        velo = np.eye(4)
        velo[:3] = np.asarray(velo_to_cam, dtype=np.float64)[:3]
        return cls(name=name, image=image, intrinsics=K, lidar_to_camera=rectified_to_camera @ R0 @ velo, **kwargs)


@dataclass
class Frame:
    """One LiDAR sweep and everything paired with it.

    points: (N, 3) float32, LiDAR frame, metres.
    stamp_ns: sweep time, ns.
    fields: named per-point arrays of length N: "intensity" (float32), "ring" (uint16),
        "time" (float32 seconds relative to stamp_ns), and any other the source carries.
    lidar_to_ego: (4, 4); ego_pose: (4, 4) ego -> world at stamp_ns.
    cameras: the images paired with this sweep.
    labels: optional (N,) int64 raw per-point label ids of the source's dataset.
    sweeps: optional previous sweeps (newest first), each a Frame with its own pose, for the
        spatial-temporal loss; see geometry.aggregate_sweeps.
    name: a stable identifier for outputs (e.g. "00/000042").
    """

    points: np.ndarray
    stamp_ns: int
    fields: dict[str, np.ndarray] = field(default_factory=dict)
    lidar_to_ego: np.ndarray = field(default_factory=lambda: np.eye(4))
    ego_pose: np.ndarray = field(default_factory=lambda: np.eye(4))
    cameras: list[Camera] = field(default_factory=list)
    labels: np.ndarray | None = None
    sweeps: list[Frame] = field(default_factory=list)
    name: str = ""
    frame_id: str = "lidar"

    def __post_init__(self) -> None:
        points = np.asarray(self.points)
        if points.ndim != 2 or points.shape[1] != 3:
            raise FrameError(f"frame {self.name!r}: points must have shape (N, 3), got {points.shape}")
        self.points = np.ascontiguousarray(points, dtype=np.float32)
        n = len(self.points)
        for key, values in self.fields.items():
            if len(values) != n:
                raise FrameError(f"frame {self.name!r}: field {key!r} has {len(values)} values for {n} points")
        if self.labels is not None:
            self.labels = np.asarray(self.labels).astype(np.int64, copy=False)
            if self.labels.shape != (n,):
                raise FrameError(f"frame {self.name!r}: {len(self.labels)} labels for {n} points")
        self.lidar_to_ego = _matrix(self.lidar_to_ego, (4, 4), f"frame {self.name!r} lidar_to_ego")
        self.ego_pose = _matrix(self.ego_pose, (4, 4), f"frame {self.name!r} ego_pose")
        self.stamp_ns = int(self.stamp_ns)

    def __len__(self) -> int:
        return len(self.points)

    @property
    def lidar_pose(self) -> np.ndarray:
        """(4, 4) LiDAR frame -> world frame at stamp_ns."""
        return self.ego_pose @ self.lidar_to_ego

    def camera(self, name: str) -> Camera:
        for camera in self.cameras:
            if camera.name == name:
                return camera
        raise KeyError(f"frame {self.name!r} has no camera {name!r}; it has {[c.name for c in self.cameras]}")

    def select(self, mask: np.ndarray) -> Frame:
        """A copy holding only the points where mask (N,) bool is true; cameras and sweeps are shared."""
        return Frame(points=self.points[mask], stamp_ns=self.stamp_ns,
                     fields={k: v[mask] for k, v in self.fields.items()}, lidar_to_ego=self.lidar_to_ego,
                     ego_pose=self.ego_pose, cameras=self.cameras,
                     labels=None if self.labels is None else self.labels[mask], sweeps=self.sweeps,
                     name=self.name, frame_id=self.frame_id)
