"""Calibration files: the static transforms between a vehicle's LiDAR and cameras, as a YAML file.

    # child -> parent, as on /tf_static
    transforms:
      - {parent: base_link, child: lidar, translation: [0.94, 0.0, 1.84], rotation: [0, 0, 0, 1]}
      - {parent: base_link, child: cam_front_optical, translation: [...], rotation: [x, y, z, w]}

Frames are named as in the messages' header.frame_id. The live nodes read this file (tf2 is not
installable from PyPI); the recorder writes it into its bags as /tf_static.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from .errors import UserError
from .files import read_yaml
from .frame import Frame
from .geometry import invert
from .messages import matrix_to_quaternion
from .tf_tree import TransformTree


class CalibrationError(UserError, ValueError):
    """A calibration file that cannot be used; the message names the file and the entry."""


def frame_transforms(frame: Frame, ego_frame: str = "base_link") -> list[tuple[str, str, np.ndarray]]:
    """(parent, child, child -> parent) static transforms of a frame's sensors."""
    transforms = [(ego_frame, frame.frame_id, frame.lidar_to_ego)]
    for camera in frame.cameras:
        # lidar_to_camera = inv(camera_to_ego) @ inv(E_camera) @ E_lidar @ lidar_to_ego, solved for camera_to_ego.
        camera_pose = frame.ego_pose if camera.ego_pose is None else camera.ego_pose
        to_ego = invert(camera_pose) @ frame.ego_pose @ frame.lidar_to_ego @ invert(camera.lidar_to_camera)
        transforms.append((ego_frame, camera.optical_frame, to_ego))
    return transforms


def save_calibration(path: str | Path, transforms: list[tuple[str, str, np.ndarray]]) -> Path:
    entries = []
    for parent, child, T in transforms:
        entries.append({"parent": parent, "child": child, "translation": [round(float(v), 9) for v in T[:3, 3]],
                        "rotation": [round(float(v), 12) for v in matrix_to_quaternion(T)]})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# Static transforms, child -> parent (as on /tf_static); rotation is a quaternion x, y, z, w.\n"
    path.write_text(header + yaml.safe_dump({"transforms": entries}, sort_keys=False, default_flow_style=None))
    return path


def load_calibration(path: str | Path) -> tuple[TransformTree, list[tuple[str, str, np.ndarray]]]:
    """(transform tree, the transforms) from a calibration file; errors name the entry and the fix."""
    from .messages import transform_to_matrix

    path = Path(path)
    if not path.exists():
        raise CalibrationError(f"calibration file {path} does not exist; write one with `clip2scene calibration "
                               f"SOURCE --out {path.name}` or by hand (see config/calibration_example.yaml)")
    data = read_yaml(path, "calibration file", CalibrationError)
    if not isinstance(data, dict) or not isinstance(data.get("transforms"), list):
        raise CalibrationError(f"calibration file {path}: key 'transforms' (a list) is missing")
    unknown = set(data) - {"transforms"}
    if unknown:
        raise CalibrationError(f"calibration file {path}: unknown key(s) {sorted(unknown)}")
    tree, transforms = TransformTree(), []
    for index, entry in enumerate(data["transforms"]):
        where = f"calibration file {path}: transforms[{index}]"
        if not isinstance(entry, dict) or set(entry) != {"parent", "child", "translation", "rotation"}:
            raise CalibrationError(f"{where} needs exactly parent, child, translation [x, y, z] and rotation "
                                   f"[x, y, z, w], got {entry!r}")
        try:
            translation = np.asarray(entry["translation"], dtype=np.float64)
            rotation = np.asarray(entry["rotation"], dtype=np.float64)
            if translation.shape != (3,) or rotation.shape != (4,) or not np.isfinite([*translation, *rotation]).all():
                raise ValueError
            T = transform_to_matrix(_Vector(*translation), _Vector(*rotation))
        except ValueError:
            raise CalibrationError(f"{where}: translation must be 3 finite numbers and rotation a non-zero "
                                   f"quaternion x, y, z, w") from None
        tree.add_static(str(entry["parent"]), str(entry["child"]), T)
        transforms.append((str(entry["parent"]), str(entry["child"]), T))
    return tree, transforms


class _Vector:
    def __init__(self, x, y, z, w=None):
        self.x, self.y, self.z, self.w = x, y, z, w
