"""SemanticKITTI (KITTI odometry scans with per-point labels).

Layout, per sequence XX:
    sequences/XX/velodyne/NNNNNN.bin   float32 (N, 4): x, y, z, reflectance; Velodyne HDL-64E frame
    sequences/XX/labels/NNNNNN.label   uint32 (N,): lower 16 bits raw semantic id, upper 16 instance id
    sequences/XX/calib.txt             P0..P3 (3x4 projections), Tr (3x4 velodyne -> camera 0)
    sequences/XX/poses.txt             one 3x4 pose of camera 0 (camera 0 -> world) per scan
    sequences/XX/times.txt             seconds since the sequence start, one per scan
    sequences/XX/image_2/NNNNNN.png    left colour camera, when the KITTI odometry images are installed
`path` may be the folder holding `sequences/`, the folder holding `dataset/sequences/` (as the
official archives extract), or `sequences/` itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..frame import Camera, Frame
from ..geometry import invert
from .source import FrameSource, SourceError, read_labels, read_rows

SPLITS = {
    "train": ("00", "01", "02", "03", "04", "05", "06", "07", "09", "10"),
    "val": ("08",),
    "test": tuple(f"{n:02d}" for n in range(11, 22)),
}
SCAN_PERIOD_NS = 100_000_000  # 10 Hz Velodyne, used when times.txt is absent

# The raw ids a .label file holds (SemanticKITTI's semantic-kitti.yaml `labels`).
LABEL_NAMES = {
    0: "unlabeled", 1: "outlier", 10: "car", 11: "bicycle", 13: "bus", 15: "motorcycle", 16: "on-rails",
    18: "truck", 20: "other-vehicle", 30: "person", 31: "bicyclist", 32: "motorcyclist", 40: "road",
    44: "parking", 48: "sidewalk", 49: "other-ground", 50: "building", 51: "fence", 52: "other-structure",
    60: "lane-marking", 70: "vegetation", 71: "trunk", 72: "terrain", 80: "pole", 81: "traffic-sign",
    99: "other-object", 252: "moving-car", 253: "moving-bicyclist", 254: "moving-person",
    255: "moving-motorcyclist", 256: "moving-on-rails", 257: "moving-bus", 258: "moving-truck",
    259: "moving-other-vehicle",
}


def read_calib(file: Path) -> dict[str, np.ndarray]:
    """calib.txt -> {key: (4, 4)} for its 3x4 rows (P0..P3, Tr); bottom row [0 0 0 1]."""
    calib = {}
    for number, line in enumerate(file.read_text().splitlines(), start=1):
        key, colon, values = line.partition(":")
        if not colon:
            continue
        try:
            numbers = np.array(values.split(), dtype=np.float64)
        except ValueError:
            raise SourceError(f"{file}:{number}: {key.strip()} is not a list of numbers") from None
        if numbers.size != 12:
            raise SourceError(f"{file}:{number}: {key.strip()} has {numbers.size} numbers, expected 12 (3x4)")
        matrix = np.eye(4)
        matrix[:3] = numbers.reshape(3, 4)
        calib[key.strip()] = matrix
    return calib


def read_poses(file: Path) -> np.ndarray:
    """poses.txt -> (M, 4, 4), one 3x4 row-major pose per line."""
    lines = [line.split() for line in file.read_text().splitlines() if line.strip()]
    if any(len(line) != 12 for line in lines):
        raise SourceError(f"{file}: every line must hold 12 numbers (a 3x4 pose)")
    try:
        rows = np.array(lines, dtype=np.float64).reshape(-1, 12)
    except ValueError:
        raise SourceError(f"{file} holds something other than numbers") from None
    poses = np.tile(np.eye(4), (len(rows), 1, 1))
    poses[:, :3] = rows.reshape(-1, 3, 4)
    return poses


@dataclass
class _Sequence:
    name: str
    folder: Path
    scans: list[Path]
    calib: dict[str, np.ndarray] | None
    lidar_poses: np.ndarray | None  # (M, 4, 4) LiDAR -> world, indexed by scan number
    times_s: np.ndarray | None  # (M,) indexed by scan number


def _sequences_folder(root: Path) -> Path:
    for candidate in (root / "sequences", root / "dataset" / "sequences"):
        if candidate.is_dir():
            return candidate
    if root.name == "sequences" and root.is_dir():
        return root
    raise SourceError(f"no SemanticKITTI sequences/ folder under {root}: pass the folder that holds "
                      f"sequences/XX/velodyne (e.g. .../dataset), after extracting data_odometry_velodyne and "
                      f"data_odometry_labels there")


class SemanticKitti(FrameSource):
    """SemanticKITTI scans as Frames, sequence by sequence, in scan order.

    path: dataset root (see module docstring).
    split: all (every sequence present), train (00-07, 09, 10), val (08) or test (11-21).
    sequences: explicit sequence names ("8" or "08"), overriding split.
    sweeps: attach up to this many previous scans of the same sequence (needs poses.txt and calib.txt).

    Frame: points (N, 3) float32 Velodyne frame; field intensity (float32 reflectance); labels the raw
    SemanticKITTI id per point; lidar_to_ego identity and ego_pose the LiDAR pose in the sequence's
    world (inv(Tr) @ pose_cam0 @ Tr), identity without poses; camera image_2 when its image and
    calib.txt exist (rectified odometry images: R0 is the identity).
    """

    kind = "semantickitti"
    label_names = LABEL_NAMES

    def __init__(self, path: str, split: str = "all", sequences: list[str] | None = None, sweeps: int = 0):
        self.root = Path(path).expanduser()
        if not self.root.is_dir():
            raise SourceError(f"SemanticKITTI root {self.root} does not exist: pass the folder that holds "
                              f"sequences/ (download data_odometry_velodyne and data_odometry_labels)")
        self.n_sweeps = int(sweeps)
        if self.n_sweeps < 0:
            raise SourceError(f"semantickitti source: sweeps must be >= 0, got {sweeps}")
        folder = _sequences_folder(self.root)
        present = sorted(p.name for p in folder.iterdir() if (p / "velodyne").is_dir())
        if sequences is not None:
            wanted = [self._sequence_name(s) for s in sequences]
            missing = [s for s in wanted if s not in present]
            if missing:
                raise SourceError(f"semantickitti source: sequence(s) {missing} not found in {folder} "
                                  f"(it has {present or 'none'})")
        elif split == "all":
            wanted = present
        elif split in SPLITS:
            wanted = [s for s in SPLITS[split] if s in present]
            if not wanted:
                raise SourceError(f"semantickitti source: no sequence of split {split!r} ({', '.join(SPLITS[split])}) "
                                  f"in {folder}; it has {present or 'none'}")
        else:
            raise SourceError(f"semantickitti source: unknown split {split!r}; use all, {', '.join(SPLITS)}")
        if not wanted:
            raise SourceError(f"no sequences with a velodyne/ folder in {folder}")
        self.sequences = [self._load_sequence(folder / name) for name in wanted]
        self._index = [(s, k) for s, sequence in enumerate(self.sequences) for k in range(len(sequence.scans))]
        # Without poses.txt every scan sits at the origin: nothing may be voted across scans.
        self.has_poses = all(sequence.lidar_poses is not None for sequence in self.sequences)

    @staticmethod
    def _sequence_name(text: str) -> str:
        text = str(text).strip()
        return f"{int(text):02d}" if text.isdigit() else text

    def _load_sequence(self, folder: Path) -> _Sequence:
        scans = sorted((folder / "velodyne").glob("*.bin"))
        if not scans:
            raise SourceError(f"{folder / 'velodyne'} holds no .bin scans")
        last_number = max(int(s.stem) for s in scans)
        calib = read_calib(folder / "calib.txt") if (folder / "calib.txt").is_file() else None
        if calib is not None and "Tr" not in calib:
            raise SourceError(f"{folder / 'calib.txt'} has no Tr (velodyne -> camera 0) line")
        lidar_poses = None
        # Camera-0 poses without Tr cannot be turned into LiDAR poses: such frames get identity.
        if (folder / "poses.txt").is_file() and calib is not None:
            camera_poses = read_poses(folder / "poses.txt")
            self._check_count(folder / "poses.txt", len(camera_poses), last_number)
            velo_to_cam = calib["Tr"]
            # poses.txt moves camera 0; conjugating by Tr gives the same motion for the Velodyne.
            lidar_poses = invert(velo_to_cam) @ camera_poses @ velo_to_cam
        if self.n_sweeps > 0:
            for needed in ("poses.txt", "calib.txt"):
                if not (folder / needed).is_file():
                    raise SourceError(f"semantickitti source: sweeps={self.n_sweeps} needs {folder / needed} to "
                                      f"align earlier scans; install the odometry poses/calibration or pass sweeps=0")
        times = None
        if (folder / "times.txt").is_file():
            try:
                times = np.array((folder / "times.txt").read_text().split(), dtype=np.float64)
            except ValueError:
                raise SourceError(f"{folder / 'times.txt'} is not a list of seconds, one per scan") from None
            self._check_count(folder / "times.txt", len(times), last_number)
        return _Sequence(folder.name, folder, scans, calib, lidar_poses, times)

    @staticmethod
    def _check_count(file: Path, count: int, last_number: int) -> None:
        if count <= last_number:
            raise SourceError(f"{file} has {count} lines but velodyne/ has scan {last_number:06d}; "
                              f"the file belongs to another sequence or is truncated")

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, index: int) -> Frame:
        s, k = self._index[self._check_index(index)]
        sequence = self.sequences[s]
        frame = self._frame(sequence, k)
        for j in range(1, self.n_sweeps + 1):
            if k - j < 0:
                break
            frame.sweeps.append(self._frame(sequence, k - j))
        return frame

    def _frame(self, sequence: _Sequence, k: int) -> Frame:
        scan = sequence.scans[k]
        number = int(scan.stem)
        raw = read_rows(scan, 4, "x, y, z, reflectance", "SemanticKITTI scan")
        labels = None
        label_file = sequence.folder / "labels" / f"{scan.stem}.label"
        if label_file.is_file():
            packed = read_labels(label_file, np.uint32, scan, len(raw), "SemanticKITTI labels")
            labels = (packed & 0xFFFF).astype(np.int64)
        stamp_ns = round(sequence.times_s[number] * 1e9) if sequence.times_s is not None else number * SCAN_PERIOD_NS
        ego_pose = sequence.lidar_poses[number] if sequence.lidar_poses is not None else np.eye(4)
        cameras = []
        image_file = sequence.folder / "image_2" / f"{scan.stem}.png"
        if sequence.calib is not None and "P2" in sequence.calib and image_file.is_file():
            with Image.open(image_file) as image:
                rgb = np.array(image.convert("RGB"))
            # Odometry images are already rectified, so R0_rect is the identity.
            cameras.append(Camera.from_kitti("image_2", rgb, sequence.calib["P2"], np.eye(3), sequence.calib["Tr"],
                                             stamp_ns=stamp_ns, frame_id="image_2"))
        return Frame(points=raw[:, :3], stamp_ns=stamp_ns, fields={"intensity": raw[:, 3].copy()},
                     lidar_to_ego=np.eye(4), ego_pose=ego_pose, cameras=cameras, labels=labels,
                     name=f"{sequence.name}/{scan.stem}", frame_id="velodyne")
