"""A nuScenes-layout tree built around the real keyframe in ../shared/data (symlinks to the real scan and
images, JSON tables written from its frame.json), shared by the nuScenes and projection tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

VERSION = "v1.0-mini"
SWEEP_SHIFT_M = np.array([1.0, -0.5, 0.0])  # ego displacement (global frame) of the previous sweep
SWEEP_LAG_US = 100_000
CAMERA_PERIOD_US = 83_333  # 12 Hz cameras
TINY_LIDAR_TOKEN = "5f6c1e0a0c3b444b97e78d2aa3fa34d2"


def matrix_quaternion(matrix: np.ndarray) -> list[float]:
    """[w, x, y, z] of the rotation nearest to matrix[:3, :3] (the float32 sample is not exactly orthonormal)."""
    u, _, vt = np.linalg.svd(np.asarray(matrix, dtype=np.float64)[:3, :3])
    r = u @ vt
    # Pick the largest of the four squared components to divide by, which keeps this stable.
    traces = [1 + r[0, 0] + r[1, 1] + r[2, 2], 1 + r[0, 0] - r[1, 1] - r[2, 2],
              1 - r[0, 0] + r[1, 1] - r[2, 2], 1 - r[0, 0] - r[1, 1] + r[2, 2]]
    k = int(np.argmax(traces))
    s = 2 * np.sqrt(traces[k])
    if k == 0:
        q = [s / 4, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
    elif k == 1:
        q = [(r[2, 1] - r[1, 2]) / s, s / 4, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s]
    elif k == 2:
        q = [(r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, s / 4, (r[1, 2] + r[2, 1]) / s]
    else:
        q = [(r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, s / 4]
    return [float(v) for v in q]


def pose_record(token: str, matrix: np.ndarray, **extra) -> dict:
    return {"token": token, "rotation": matrix_quaternion(matrix),
            "translation": [float(v) for v in np.asarray(matrix)[:3, 3]], **extra}


def link(target: Path, link: Path) -> str:
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link)
    return link.as_posix()


def sample_data_record(token, sample, ego, calibration, stamp_us, filename, key, prev="", next_=""):
    return {"token": token, "sample_token": sample, "ego_pose_token": ego, "calibrated_sensor_token": calibration,
            "timestamp": int(stamp_us), "fileformat": filename.rsplit(".", 1)[-1], "is_key_frame": key,
            "height": 0, "width": 0, "filename": filename, "prev": prev, "next": next_}


def build_nuscenes_tree(root: Path, keyframe: Path, lidarseg: bool = True) -> dict:
    """A v1.0-mini tree: scene-0061 (the real keyframe plus one earlier LiDAR sweep and one earlier
    CAM_FRONT image) and scene-0103 (the same files as a second keyframe, no history).

    Each camera's ego pose is derived so that the tables reproduce frame.json's lidar_to_camera:
    ego_cam = ego_lidar @ lidar_to_ego @ inv(lidar_to_camera) @ inv(camera_to_ego).
    Returns what the tests compare against.
    """
    info = json.loads((keyframe / "frame.json").read_text())
    meta = root / VERSION
    meta.mkdir(parents=True)
    lidar_to_ego = np.array(info["lidar"]["lidar_to_ego"])
    ego_lidar = np.array(info["ego_to_global"])
    lidar_us = round(info["timestamp_s"] * 1e6)
    scan_name = info["lidar"]["file"]

    sensors = [{"token": "sensor-LIDAR_TOP", "channel": "LIDAR_TOP", "modality": "lidar"}]
    calibrations = [pose_record("cs-LIDAR_TOP", lidar_to_ego, sensor_token="sensor-LIDAR_TOP", camera_intrinsic=[])]
    shift = np.eye(4)
    shift[:3, 3] = SWEEP_SHIFT_M
    ego_poses = [pose_record("ep-lidar", ego_lidar, timestamp=lidar_us),
                 pose_record("ep-lidar-sweep", shift @ ego_lidar, timestamp=lidar_us - SWEEP_LAG_US)]
    camera_files, camera_us, ego_cameras = {}, {}, {}
    for channel, camera in info["cameras"].items():
        camera_to_ego = np.array(camera["camera_to_ego"])
        ego_cam = ego_lidar @ lidar_to_ego @ np.linalg.inv(np.array(camera["lidar_to_camera"])) \
            @ np.linalg.inv(camera_to_ego)
        camera_us[channel] = round(camera["timestamp_s"] * 1e6)
        ego_cameras[channel] = ego_cam
        sensors.append({"token": f"sensor-{channel}", "channel": channel, "modality": "camera"})
        calibrations.append(pose_record(f"cs-{channel}", camera_to_ego, sensor_token=f"sensor-{channel}",
                                        camera_intrinsic=camera["K"]))
        ego_poses.append(pose_record(f"ep-{channel}", ego_cam, timestamp=camera_us[channel]))
        camera_files[channel] = f"samples/{channel}/{camera['file']}"
        link(keyframe / camera["file"], root / camera_files[channel])
    # The earlier CAM_FRONT image moved with the ego like the sweep, so its relative pose to the
    # sweep equals the keyframe pair's.
    ego_poses.append(pose_record("ep-CAM_FRONT-prev", shift @ ego_cameras["CAM_FRONT"],
                                 timestamp=camera_us["CAM_FRONT"] - CAMERA_PERIOD_US))
    prev_front_file = "sweeps/CAM_FRONT/" + info["cameras"]["CAM_FRONT"]["file"].replace(".jpg", "-prev.jpg")
    link(keyframe / info["cameras"]["CAM_FRONT"]["file"], root / prev_front_file)
    scan_file = f"samples/LIDAR_TOP/{scan_name}"
    sweep_file = f"sweeps/LIDAR_TOP/{scan_name.replace('.pcd.bin', '-sweep.pcd.bin')}"
    link(keyframe / scan_name, root / scan_file)
    link(keyframe / scan_name, root / sweep_file)

    sample_a, sample_b = info["sample_token"], "b" * 32
    sample_data = [
        sample_data_record("sd-lidar", sample_a, "ep-lidar", "cs-LIDAR_TOP", lidar_us, scan_file, True, prev="sd-sweep"),
        sample_data_record("sd-sweep", sample_a, "ep-lidar-sweep", "cs-LIDAR_TOP", lidar_us - SWEEP_LAG_US, sweep_file,
                     False, next_="sd-lidar"),
        sample_data_record("sd-CAM_FRONT-prev", sample_a, "ep-CAM_FRONT-prev", "cs-CAM_FRONT",
                     camera_us["CAM_FRONT"] - CAMERA_PERIOD_US, prev_front_file, False, next_="sd-CAM_FRONT"),
        sample_data_record("sd-lidar-b", sample_b, "ep-lidar", "cs-LIDAR_TOP", lidar_us + 10**7, scan_file, True),
    ]
    for channel in info["cameras"]:
        sample_data.append(sample_data_record(f"sd-{channel}", sample_a, f"ep-{channel}", f"cs-{channel}",
                                        camera_us[channel], camera_files[channel], True,
                                        prev="sd-CAM_FRONT-prev" if channel == "CAM_FRONT" else ""))
        sample_data.append(sample_data_record(f"sd-{channel}-b", sample_b, f"ep-{channel}", f"cs-{channel}",
                                        camera_us[channel] + 10**7, camera_files[channel], True))
    tables = {
        "log": [{"token": "log-0", "logfile": "n015-2018-07-24-11-22-45+0800", "location": "singapore-onenorth"}],
        "scene": [  # scene-0103 first: the reader must order by scene, not by table order
            {"token": "scene-b", "name": "scene-0103", "log_token": "log-0", "nbr_samples": 1,
             "first_sample_token": sample_b, "last_sample_token": sample_b},
            {"token": "scene-a", "name": "scene-0061", "log_token": "log-0", "nbr_samples": 1,
             "first_sample_token": sample_a, "last_sample_token": sample_a}],
        "sample": [{"token": sample_b, "timestamp": lidar_us + 10**7, "scene_token": "scene-b", "prev": "", "next": ""},
                   {"token": sample_a, "timestamp": lidar_us, "scene_token": "scene-a", "prev": "", "next": ""}],
        "sample_data": sample_data, "sensor": sensors, "calibrated_sensor": calibrations, "ego_pose": ego_poses,
        "category": [{"token": f"cat-{i}", "name": f"class.{i}", "description": "", "index": i} for i in range(32)],
    }
    n_points = os.path.getsize(keyframe / scan_name) // 20
    labels = (np.arange(n_points) % 32).astype(np.uint8)
    if lidarseg:
        tables["lidarseg"] = [{"token": "ls-a", "sample_data_token": "sd-lidar",
                               "filename": f"lidarseg/{VERSION}/ls-a_lidarseg.bin"}]
        (root / "lidarseg" / VERSION).mkdir(parents=True)
        labels.tofile(root / "lidarseg" / VERSION / "ls-a_lidarseg.bin")
    for name, rows in tables.items():
        (meta / f"{name}.json").write_text(json.dumps(rows))
    return {"info": info, "labels": labels, "shift": shift, "sample_a": sample_a, "sample_b": sample_b}
