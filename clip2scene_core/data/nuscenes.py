"""nuScenes (and nuScenes-lidarseg) read straight from its JSON tables.

Layout (the official download, extracted into one ROOT):
    ROOT/<version>/{scene,sample,sample_data,calibrated_sensor,ego_pose,sensor,log,category}.json
    ROOT/<version>/lidarseg.json                      (only with nuScenes-lidarseg)
    ROOT/samples/<CHANNEL>/*.pcd.bin|*.jpg            (keyframes)
    ROOT/sweeps/<CHANNEL>/*.pcd.bin|*.jpg             (the frames between keyframes)
    ROOT/lidarseg/<version>/<lidar token>_lidarseg.bin

nuscenes-devkit is deliberately not used: it pins numpy<2, and all we need is a token index over
the tables. One frame per keyframe (`sample`) of the chosen split's scenes, in scene then time
order.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from ..frame import Camera, Frame
from ..geometry import invert
from .source import FrameSource, SourceError, read_labels, read_rows

LIDAR_CHANNEL = "LIDAR_TOP"
CAMERA_CHANNELS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT")
TABLES = ("scene", "sample", "sample_data", "calibrated_sensor", "ego_pose", "sensor", "log", "category")
SPLITS = ("all", "train", "val", "test", "mini_train", "mini_val")
# Which release each official split is drawn from (nuscenes-devkit checks the same).
SPLIT_VERSION = {"train": "trainval", "val": "trainval", "test": "test", "mini_train": "mini", "mini_val": "mini"}
# LIDAR_TOP .pcd.bin rows: x, y, z, intensity, ring index.
POINT_COLUMNS = 5


def quaternion_matrix(wxyz) -> np.ndarray:
    """(3, 3) rotation of a unit quaternion given as [w, x, y, z] (nuScenes' order)."""
    w, x, y, z = np.asarray(wxyz, dtype=np.float64) / np.linalg.norm(wxyz)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def pose_matrix(record: dict) -> np.ndarray:
    """(4, 4) from a calibrated_sensor (sensor -> ego) or ego_pose (ego -> global) record."""
    transform = np.eye(4)
    transform[:3, :3] = quaternion_matrix(record["rotation"])
    transform[:3, 3] = record["translation"]
    return transform


@lru_cache(maxsize=1)
def official_splits() -> dict[str, frozenset[str]]:
    """Scene names of each official split, from nuscenes_splits.json (ranges of scene numbers)."""
    stored = json.loads((Path(__file__).with_name("nuscenes_splits.json")).read_text())
    splits = {}
    for split in SPLITS[1:]:
        names = set()
        for part in stored[split].split(","):
            low, _, high = part.partition("-")
            names.update(f"scene-{n:04d}" for n in range(int(low), int(high or low) + 1))
        splits[split] = frozenset(names)
    return splits


class NuScenes(FrameSource):
    """Keyframes of a nuScenes release as Frames.

    path: ROOT holding <version>/, samples/, sweeps/ (and lidarseg/ when installed).
    version: the metadata folder, e.g. v1.0-mini, v1.0-trainval, v1.0-test.
    split: all, or an official split (train, val, test, mini_train, mini_val) of that version.
    sweeps: attach up to this many previous LIDAR_TOP sweeps to each frame, newest first.
    sweep_cameras: also give each sweep the camera images nearest to it in time. CLIP2Scene pairs
        sweep points with the keyframe's images, so training does not need them (and skips decoding them).
    cameras: camera channels to load (default: all six).

    Frame: points (N, 3) float32 LIDAR_TOP frame; fields intensity (float32), ring (uint16);
    lidar_to_ego from calibrated_sensor; ego_pose ego -> global at the LiDAR time; labels the
    lidarseg category index per point where lidarseg lists the scan.
    """

    kind = "nuscenes"

    def __init__(self, path: str, version: str = "v1.0-mini", split: str = "all", sweeps: int = 0,
                 cameras: list[str] | None = None, sweep_cameras: bool = False):
        self.root = Path(path).expanduser()
        self.version = version
        self.split = split
        self.n_sweeps = int(sweeps)
        self.sweep_cameras = sweep_cameras
        if self.n_sweeps < 0:
            raise SourceError(f"nuscenes source: sweeps must be >= 0, got {sweeps}")
        if not self.root.is_dir():
            raise SourceError(f"nuScenes root {self.root} does not exist: download and extract {version} there "
                              f"(it must hold {version}/, samples/ and sweeps/), or pass the right path")
        self.meta = self.root / version
        if not self.meta.is_dir():
            found = sorted(p.name for p in self.root.iterdir() if p.is_dir() and (p / "sample.json").is_file())
            hint = f"pass version={found[0]}" if found else f"download/extract the {version} metadata into {self.root}"
            raise SourceError(f"nuScenes metadata folder {self.meta} is missing "
                              f"(found {found or 'no metadata folders'}): {hint}")
        self._check_split()

        tables = {name: self._table(name) for name in TABLES}
        self.scenes = {r["token"]: r for r in tables["scene"]}
        self.samples = {r["token"]: r for r in tables["sample"]}
        self.sample_data = {r["token"]: r for r in tables["sample_data"]}
        self.calibrations = {r["token"]: r for r in tables["calibrated_sensor"]}
        self.ego_poses = {r["token"]: r for r in tables["ego_pose"]}
        sensors = {r["token"]: r for r in tables["sensor"]}
        self._channel_of_calibration = {token: sensors[r["sensor_token"]]["channel"]
                                        for token, r in self.calibrations.items()}

        camera_sensors = {s["channel"] for s in sensors.values() if s.get("modality") == "camera"}
        # The usual clockwise order from the front first, then any camera a custom release adds.
        present_cameras = [c for c in CAMERA_CHANNELS if c in camera_sensors]
        present_cameras += sorted(camera_sensors - set(CAMERA_CHANNELS))
        if cameras is None:
            self.cameras = present_cameras
        else:
            unknown = [c for c in cameras if c not in present_cameras]
            if unknown:
                raise SourceError(f"nuscenes source: unknown camera(s) {unknown}; {version} has {present_cameras}")
            self.cameras = list(cameras)

        # sample token -> {channel: sample_data token} of its keyframe data, built in one pass.
        self._keyframe_data: dict[str, dict[str, str]] = {}
        for token, record in self.sample_data.items():
            if record.get("is_key_frame", True) and record.get("sample_token"):
                channel = self._channel_of_calibration[record["calibrated_sensor_token"]]
                self._keyframe_data.setdefault(record["sample_token"], {})[channel] = token

        self.label_names = self._label_names(tables["category"])
        self._lidarseg = self._lidarseg_files()
        # Frame order: (scene name, sample token) of every keyframe of the split.
        self._order = self._keyframes_in_order()

    # --- tables -------------------------------------------------------------------------------

    def _table(self, name: str) -> list[dict]:
        file = self.meta / f"{name}.json"
        if not file.is_file():
            raise SourceError(f"nuScenes table {file} is missing: re-extract the {self.version} metadata "
                              f"(v1.0-*-meta archive) into {self.root}")
        try:
            return json.loads(file.read_text())
        except json.JSONDecodeError as error:
            raise SourceError(f"nuScenes table {file} is not valid JSON ({error}); re-extract it") from None

    def _check_split(self) -> None:
        if self.split not in SPLITS:
            raise SourceError(f"nuscenes source: unknown split {self.split!r}; use one of {', '.join(SPLITS)}")
        needed = SPLIT_VERSION.get(self.split)
        if needed and not self.version.endswith(needed):
            versions = {"trainval": "v1.0-trainval", "test": "v1.0-test", "mini": "v1.0-mini"}
            raise SourceError(f"nuscenes source: split {self.split!r} belongs to {versions[needed]}, not "
                              f"{self.version}; pass version={versions[needed]} or a split of {self.version}")

    @staticmethod
    def _label_names(categories: list[dict]) -> dict[int, str]:
        # lidarseg's category.json numbers its classes with `index`; older releases have list order.
        return {int(c.get("index", i)): c["name"] for i, c in enumerate(categories)}

    def _lidarseg_files(self) -> dict[str, Path]:
        """LiDAR sample_data token -> its lidarseg file, for the scans lidarseg.json lists."""
        file = self.meta / "lidarseg.json"
        if not file.is_file():
            return {}
        files = {}
        for record in json.loads(file.read_text()):
            # Real records carry `filename`; the released files are named by the LiDAR token.
            scan_token = record["sample_data_token"]
            name = record.get("filename") or f"lidarseg/{self.version}/{scan_token}_lidarseg.bin"
            files[scan_token] = self.root / name
        return files

    def _keyframes_in_order(self) -> list[tuple[str, str]]:
        scenes = sorted(self.scenes.values(), key=lambda s: s["name"])
        if self.split != "all":
            wanted = official_splits()[self.split]
            scenes = [s for s in scenes if s["name"] in wanted]
            if not scenes:
                raise SourceError(f"nuscenes source: none of the {self.split} scenes is in {self.meta / 'scene.json'}; "
                                  f"check version={self.version}")
        by_scene: dict[str, list[dict]] = {}
        for sample in self.samples.values():
            by_scene.setdefault(sample["scene_token"], []).append(sample)
        order = []
        for scene in scenes:
            for sample in sorted(by_scene.get(scene["token"], []), key=lambda s: s["timestamp"]):
                order.append((scene["name"], sample["token"]))
        return order

    # --- frames -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._order)

    def __getitem__(self, index: int) -> Frame:
        scene_name, sample_token = self._order[self._check_index(index)]
        data = self._keyframe_data.get(sample_token, {})
        if LIDAR_CHANNEL not in data:
            raise SourceError(f"nuScenes sample {sample_token} ({scene_name}) has no {LIDAR_CHANNEL} data in "
                              f"{self.meta / 'sample_data.json'}")
        camera_tokens = {c: data[c] for c in self.cameras if c in data}
        images: dict[Path, np.ndarray] = {}
        frame = self._frame(data[LIDAR_CHANNEL], camera_tokens, f"{scene_name}/{sample_token}", images,
                            with_labels=True)
        lidar_token = data[LIDAR_CHANNEL]
        for _ in range(self.n_sweeps):
            lidar_token = self.sample_data[lidar_token]["prev"]
            if not lidar_token:
                break  # the scene starts here
            stamp_us = self.sample_data[lidar_token]["timestamp"]
            camera_tokens = {c: self._nearest_in_time(t, stamp_us) for c, t in camera_tokens.items()}
            frame.sweeps.append(self._frame(lidar_token, camera_tokens if self.sweep_cameras else {},
                                            f"{scene_name}/{lidar_token}", images, with_labels=False))
        return frame

    def _nearest_in_time(self, token: str, stamp_us: int) -> str:
        """The sample_data on token's channel nearest in time to stamp_us, walking its prev/next chain."""
        record = self.sample_data[token]
        for step in ("prev", "next"):
            while record[step] and abs(self.sample_data[record[step]]["timestamp"] - stamp_us) \
                    < abs(record["timestamp"] - stamp_us):
                token = record[step]
                record = self.sample_data[token]
        return token

    def _frame(self, lidar_token: str, camera_tokens: dict[str, str], name: str, images: dict[Path, np.ndarray],
               with_labels: bool) -> Frame:
        lidar = self.sample_data[lidar_token]
        scan = self._file(lidar["filename"], "LiDAR scan")
        raw = read_rows(scan, POINT_COLUMNS, "x, y, z, intensity, ring", "nuScenes LIDAR_TOP scan")
        lidar_to_ego = pose_matrix(self.calibrations[lidar["calibrated_sensor_token"]])
        lidar_pose = pose_matrix(self.ego_poses[lidar["ego_pose_token"]])
        lidar_to_world = lidar_pose @ lidar_to_ego
        cameras = []
        for channel, token in camera_tokens.items():
            record = self.sample_data[token]
            calibration = self.calibrations[record["calibrated_sensor_token"]]
            camera_to_ego = pose_matrix(calibration)
            camera_pose = pose_matrix(self.ego_poses[record["ego_pose_token"]])
            # The camera fires up to ~50 ms away from the LiDAR; go through the world frame so the
            # ego motion in between is folded into the extrinsic.
            lidar_to_camera = invert(camera_to_ego) @ invert(camera_pose) @ lidar_to_world
            file = self._file(record["filename"], f"{channel} image")
            if file not in images:
                with Image.open(file) as image:
                    images[file] = np.array(image.convert("RGB"))
            cameras.append(Camera(name=channel, image=images[file], intrinsics=calibration["camera_intrinsic"],
                                  lidar_to_camera=lidar_to_camera, stamp_ns=record["timestamp"] * 1000,
                                  ego_pose=camera_pose, frame_id=channel))
        labels = None
        if with_labels and lidar_token in self._lidarseg:
            labels = self._labels(self._lidarseg[lidar_token], scan, len(raw))
        return Frame(points=raw[:, :3], stamp_ns=lidar["timestamp"] * 1000,
                     fields={"intensity": raw[:, 3].copy(), "ring": raw[:, 4].astype(np.uint16)},
                     lidar_to_ego=lidar_to_ego, ego_pose=lidar_pose, cameras=cameras, labels=labels, name=name,
                     frame_id=LIDAR_CHANNEL)

    def _file(self, relative: str, what: str) -> Path:
        file = self.root / relative
        if not file.is_file():
            folder = relative.split("/", 1)[0]
            raise SourceError(f"nuScenes {what} {file} is missing: extract the {self.version} sensor blobs "
                              f"({folder}/) into {self.root}")
        return file

    def _labels(self, file: Path, scan: Path, n_points: int) -> np.ndarray:
        if not file.is_file():
            raise SourceError(f"nuScenes lidarseg file {file} is missing although lidarseg.json lists it: "
                              f"download/extract nuScenes-lidarseg for {self.version} into {self.root}")
        labels = read_labels(file, np.uint8, scan, n_points, "nuScenes lidarseg file")
        return labels.astype(np.int64)
