"""Small hand-made frames for tests that need exact, known content (not the synthetic world)."""

import numpy as np

from clip2scene_core.frame import Camera, Frame

# Optical frame (x right, y down, z forward) of a camera looking along the LiDAR's +x axis.
CAMERA_TO_LIDAR = np.array([[0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1.0]])


def yaw_pose(yaw: float, x: float = 0.0, y: float = 0.0, z: float = 0.0) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = [[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]]
    T[:3, 3] = [x, y, z]
    return T


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A gradient image that survives jpeg nearly unchanged."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.uint8)
    image[:, :, 0] = (np.arange(width) * 200 // max(width - 1, 1))[None, :]
    image[:, :, 1] = (np.arange(height) * 200 // max(height - 1, 1))[:, None]
    image[:, :, 2] = rng.integers(40, 200)
    return image


def make_frames(count: int = 4, points: int = 500, cameras: int = 1, seed: int = 0, labels: bool = True,
                period_ns: int = 100_000_000) -> list[Frame]:
    """count frames of random points in front of the sensor, with cameras looking forward/left."""
    rng = np.random.default_rng(seed)
    lidar_to_ego = yaw_pose(0.0, 0.9, 0.0, 1.8)
    frames = []
    for i in range(count):
        xyz = rng.normal(size=(points, 3)).astype(np.float32) * [4, 4, 1] + [12, 0, 0]
        stamp = 1_700_000_000_000_000_000 + i * period_ns
        cams = []
        for c in range(cameras):
            to_lidar = yaw_pose(c * np.pi / 2) @ CAMERA_TO_LIDAR
            cams.append(Camera(f"CAM_{c}", smooth_image(48, 64, c), [[40, 0, 31.5], [0, 40, 23.5], [0, 0, 1]],
                               np.linalg.inv(to_lidar), stamp_ns=stamp,
                               label_image=rng.integers(0, 20, (48, 64)) if labels else None))
        frames.append(Frame(points=xyz, stamp_ns=stamp,
                            fields={"intensity": rng.random(points).astype(np.float32),
                                    "ring": rng.integers(0, 32, points).astype(np.uint16),
                                    "time": rng.random(points).astype(np.float32) * 0.1},
                            lidar_to_ego=lidar_to_ego, ego_pose=yaw_pose(0.05 * i, 1.0 * i, 0.2 * i),
                            cameras=cams, labels=rng.integers(0, 32, points) if labels else None, name=f"hand/{i}"))
    return frames
