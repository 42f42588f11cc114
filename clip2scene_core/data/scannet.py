"""ScanNet v2 scenes: the reconstructed mesh vertices as points, RGB-D frames as cameras.

Two layouts are read:
(a) mmdetection3d's preprocessed data (batch_load_scannet_data.py, extract_posed_images.py):
    ROOT/points/<scene>.bin              float32 (N, 6): x, y, z, r, g, b (world frame, metres)
    ROOT/semantic_mask/<scene>.bin       int64 (N,) raw NYU40 ids
    ROOT/posed_images/<scene>/NNNNN.jpg  colour; NNNNN.png uint16 depth (mm) where exported;
                                         NNNNN.txt 4x4 camera -> world; intrinsic.txt 4x4 (colour)
(b) the official release with frames exported by ScanNet's SensReader:
    ROOT/scans/<scene>/<scene>_vh_clean_2.ply          vertices x y z red green blue
    ROOT/scans/<scene>/<scene>_vh_clean_2.labels.ply   vertex `label` = NYU40 id
    ROOT/scans/<scene>/{color/N.jpg, depth/N.png, pose/N.txt, intrinsic/intrinsic_depth.txt}
    (test scenes live in ROOT/scans_test/)
When ROOT has both, (a) is used. Splits come from scannetv2_{train,val,test}.txt in ROOT or
ROOT/meta_data/.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..frame import Camera, Frame
from ..geometry import invert
from .source import FrameSource, SourceError, read_labels, read_rows

SPLITS = ("all", "train", "val", "test")
FRAME_PERIOD_NS = 33_333_333  # the Structure sensor records at 30 Hz
DEPTH_SCALE_M = 1e-3  # depth PNGs hold millimetres

NYU40_NAMES = {
    0: "unannotated", 1: "wall", 2: "floor", 3: "cabinet", 4: "bed", 5: "chair", 6: "sofa", 7: "table",
    8: "door", 9: "window", 10: "bookshelf", 11: "picture", 12: "counter", 13: "blinds", 14: "desk",
    15: "shelves", 16: "curtain", 17: "dresser", 18: "pillow", 19: "mirror", 20: "floor mat", 21: "clothes",
    22: "ceiling", 23: "books", 24: "refrigerator", 25: "television", 26: "paper", 27: "towel",
    28: "shower curtain", 29: "box", 30: "whiteboard", 31: "person", 32: "night stand", 33: "toilet",
    34: "sink", 35: "lamp", 36: "bathtub", 37: "bag", 38: "otherstructure", 39: "otherfurniture",
    40: "otherprop",
}

PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
             "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
             "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}
PLY_FORMATS = {"binary_little_endian": "<", "binary_big_endian": ">", "ascii": ""}


def read_ply_vertices(path: Path) -> dict[str, np.ndarray]:
    """The scalar properties of a PLY file's `vertex` element, {name: (N,) array of its declared type}.

    Reads ascii and binary files. Elements after `vertex` (faces) are ignored; elements before it
    must have fixed-size rows in binary files.
    """
    with open(path, "rb") as file:
        if file.readline().strip() != b"ply":
            raise SourceError(f"{path} is not a PLY file (no 'ply' magic line)")
        encoding, elements = None, []  # elements: [name, count, [(property, numpy type or None for lists)]]
        while True:
            line = file.readline()
            if not line:
                raise SourceError(f"{path}: PLY header has no end_header")
            words = line.decode("ascii", "replace").split()
            if not words or words[0] in ("comment", "obj_info"):
                continue
            if words[0] == "end_header":
                break
            if words[0] == "format":
                if words[1] not in PLY_FORMATS:
                    raise SourceError(f"{path}: unknown PLY format {words[1]!r}")
                encoding = words[1]
            elif words[0] == "element":
                elements.append([words[1], int(words[2]), []])
            elif words[0] == "property" and elements:
                if words[1] == "list":
                    elements[-1][2].append((words[-1], None))
                elif words[1] in PLY_TYPES:
                    elements[-1][2].append((words[2], PLY_TYPES[words[1]]))
                else:
                    raise SourceError(f"{path}: unknown PLY property type {words[1]!r}")
        body = file.read()
    if encoding is None:
        raise SourceError(f"{path}: PLY header has no format line")
    names = [e[0] for e in elements]
    if "vertex" not in names:
        raise SourceError(f"{path}: PLY file has no vertex element")
    before, (_, count, properties) = elements[:names.index("vertex")], elements[names.index("vertex")]
    if any(kind is None for _, kind in properties):
        raise SourceError(f"{path}: list properties in the vertex element are not supported")
    if encoding == "ascii":
        lines = body.split(b"\n")
        start = sum(e[1] for e in before)
        try:
            table = np.array([line.split() for line in lines[start:start + count]], dtype=np.float64)
        except ValueError:
            raise SourceError(f"{path}: ascii vertex rows are ragged or not numbers") from None
        if table.shape != (count, len(properties)):
            raise SourceError(f"{path}: expected {count} vertex rows of {len(properties)} values, got {table.shape}")
        return {name: table[:, i].astype(kind) for i, (name, kind) in enumerate(properties)}
    order = PLY_FORMATS[encoding]
    offset = 0
    for name, n, element_properties in before:
        if any(kind is None for _, kind in element_properties):
            raise SourceError(f"{path}: element {name!r} with list properties precedes the vertices")
        offset += n * np.dtype([(p, order + k) for p, k in element_properties]).itemsize
    dtype = np.dtype([(name, order + kind) for name, kind in properties])
    if len(body) < offset + count * dtype.itemsize:
        raise SourceError(f"{path}: truncated; the header declares {count} vertices")
    vertices = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
    return {name: vertices[name].astype(vertices[name].dtype.newbyteorder("="), copy=True) for name, _ in properties}


def _read_matrix(file: Path) -> np.ndarray:
    try:
        matrix = np.array(file.read_text().split(), dtype=np.float64)
    except ValueError:
        raise SourceError(f"{file} is not a 4x4 matrix of numbers") from None
    if matrix.size != 16:
        raise SourceError(f"{file} holds {matrix.size} numbers, expected a 4x4 matrix")
    return matrix.reshape(4, 4)


def _scale_intrinsics(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """K for the same camera after resizing its image by (sx, sy); pixel centres at integers."""
    scaled = K.copy()
    scaled[0, 0], scaled[0, 1], scaled[1, 1] = K[0, 0] * sx, K[0, 1] * sx, K[1, 1] * sy
    scaled[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    scaled[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return scaled


class ScanNet(FrameSource):
    """ScanNet v2 as one Frame per scene.

    path: ROOT of either layout (see module docstring).
    split: all (every scene present), train, val or test (scannetv2_<split>.txt).
    frames_per_scene: RGB-D frames attached as cameras, evenly spaced over the scene's frames with
        a finite pose; 0 for none, -1 for all.
    scenes: explicit scene names (e.g. scene0000_00), overriding split.

    Frame: points (N, 3) float32, the scene's world frame (lidar_to_ego = ego_pose = identity);
    fields red, green, blue (uint8); labels raw NYU40 ids when annotated; cameras with `depth` in
    metres, so geometry.project keeps only points the depth image confirms (no see-through walls).
    """

    kind = "scannet"
    label_names = NYU40_NAMES

    def __init__(self, path: str, split: str = "all", frames_per_scene: int = 10, scenes: list[str] | None = None):
        self.root = Path(path).expanduser()
        if not self.root.is_dir():
            raise SourceError(f"ScanNet root {self.root} does not exist: pass the folder holding points/ "
                              f"(mmdetection3d preprocessing) or scans/ (the official release)")
        if split not in SPLITS:
            raise SourceError(f"scannet source: unknown split {split!r}; use one of {', '.join(SPLITS)}")
        self.frames_per_scene = int(frames_per_scene)
        if (self.root / "points").is_dir():
            self.layout = "mmdet3d"
            present = {p.stem: p for p in (self.root / "points").glob("*.bin")}
        elif (self.root / "scans").is_dir() or (self.root / "scans_test").is_dir():
            self.layout = "official"
            present = {p.name: p for folder in ("scans", "scans_test") if (self.root / folder).is_dir()
                       for p in (self.root / folder).iterdir() if (p / f"{p.name}_vh_clean_2.ply").is_file()}
        else:
            raise SourceError(f"{self.root} holds neither points/ (mmdetection3d's preprocessed ScanNet: run "
                              f"batch_load_scannet_data.py) nor scans/<scene>/<scene>_vh_clean_2.ply (the official "
                              f"release)")
        if scenes is not None:
            wanted = list(scenes)
            missing = [s for s in wanted if s not in present]
            if missing:
                raise SourceError(f"scannet source: scene(s) {missing} not found in {self.root} ({self.layout} layout)")
        elif split == "all":
            wanted = sorted(present)
        else:
            wanted = [s for s in self._split_list(split) if s in present]
            if not wanted:
                raise SourceError(f"scannet source: none of the {split} scenes is in {self.root}")
        if not wanted:
            raise SourceError(f"scannet source: no scenes in {self.root}")
        self.scenes = wanted
        self._scene_paths = present

    def _split_list(self, split: str) -> list[str]:
        for folder in (self.root, self.root / "meta_data"):
            file = folder / f"scannetv2_{split}.txt"
            if file.is_file():
                return [line.strip() for line in file.read_text().splitlines() if line.strip()]
        raise SourceError(f"scannet source: split {split!r} needs scannetv2_{split}.txt in {self.root} or "
                          f"{self.root / 'meta_data'} (from the ScanNet repository's Tasks/Benchmark folder)")

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> Frame:
        scene = self.scenes[self._check_index(index)]
        if self.layout == "mmdet3d":
            points, colors, labels = self._mmdet3d_points(scene)
            frames_folder = self.root / "posed_images" / scene
        else:
            points, colors, labels = self._official_points(scene)
            frames_folder = self._scene_paths[scene]
        fields = {name: colors[:, i] for i, name in enumerate(("red", "green", "blue"))}
        return Frame(points=points, stamp_ns=0, fields=fields, cameras=self._cameras(scene, frames_folder),
                     labels=labels, name=scene, frame_id="world")

    # --- points -------------------------------------------------------------------------------

    def _mmdet3d_points(self, scene: str):
        file = self._scene_paths[scene]
        raw = read_rows(file, 6, "x, y, z, r, g, b", "ScanNet points")
        colors = np.clip(np.rint(raw[:, 3:6]), 0, 255).astype(np.uint8)
        labels = None
        mask = self.root / "semantic_mask" / f"{scene}.bin"
        if mask.is_file():
            labels = read_labels(mask, np.int64, file, len(raw), "ScanNet labels")
        return raw[:, :3], colors, labels

    def _official_points(self, scene: str):
        folder = self._scene_paths[scene]
        mesh = folder / f"{scene}_vh_clean_2.ply"
        vertices = read_ply_vertices(mesh)
        missing = [p for p in ("x", "y", "z", "red", "green", "blue") if p not in vertices]
        if missing:
            raise SourceError(f"{mesh}: vertex element lacks {missing}")
        points = np.stack([vertices[a] for a in "xyz"], axis=1)
        colors = np.stack([vertices[c] for c in ("red", "green", "blue")], axis=1).astype(np.uint8)
        labels = None
        label_mesh = folder / f"{scene}_vh_clean_2.labels.ply"
        if label_mesh.is_file():
            labelled = read_ply_vertices(label_mesh)
            if "label" not in labelled:
                raise SourceError(f"{label_mesh}: vertex element has no 'label' property")
            if len(labelled["label"]) != len(points):
                raise SourceError(f"ScanNet labels {label_mesh} hold {len(labelled['label'])} vertices but {mesh} "
                                  f"has {len(points)}; the two do not belong together")
            labels = labelled["label"].astype(np.int64)
        return points, colors, labels

    # --- RGB-D frames -------------------------------------------------------------------------

    def _frame_files(self, folder: Path) -> list[tuple[int, Path, Path, Path]]:
        """(frame number, colour, depth, pose) of every exported frame, by number; depth may not exist."""
        if self.layout == "mmdet3d":
            poses = [p for p in folder.glob("*.txt") if p.stem.isdigit()]
            files = [(int(p.stem), p.with_suffix(".jpg"), p.with_suffix(".png"), p) for p in poses]
        else:
            poses = [p for p in (folder / "pose").glob("*.txt") if p.stem.isdigit()]
            files = [(int(p.stem), folder / "color" / f"{p.stem}.jpg", folder / "depth" / f"{p.stem}.png", p)
                     for p in poses]
        return sorted(f for f in files if f[1].is_file())

    def _cameras(self, scene: str, folder: Path) -> list[Camera]:
        if self.frames_per_scene == 0 or not folder.is_dir():
            return []
        files = self._frame_files(folder)
        if not files:
            return []
        if self.layout == "mmdet3d":
            depth_intrinsics_file = folder / "intrinsic_depth.txt"
            color_intrinsics = _read_matrix(folder / "intrinsic.txt")[:3, :3] if (folder / "intrinsic.txt").is_file() \
                else None
        else:
            depth_intrinsics_file = folder / "intrinsic" / "intrinsic_depth.txt"
            color_intrinsics = None
        depth_intrinsics = _read_matrix(depth_intrinsics_file)[:3, :3] if depth_intrinsics_file.is_file() else None
        if color_intrinsics is None and depth_intrinsics is None:
            raise SourceError(f"ScanNet scene {scene}: no camera intrinsics ({depth_intrinsics_file} is missing)")

        cameras = []
        for number, color_file, depth_file, pose_file in self._pick_frames(files):
            camera_to_world = _read_matrix(pose_file)
            with Image.open(color_file) as image:
                color = image.convert("RGB")
            depth = None
            K = color_intrinsics
            if depth_file.is_file():
                with Image.open(depth_file) as image:
                    depth = np.asarray(image, dtype=np.float32) * DEPTH_SCALE_M
                height, width = depth.shape
                if (color.width, color.height) != (width, height):
                    # The colour camera (1296x968) and depth camera (640x480) differ in size; the
                    # depth image is what tells visible from occluded points, so colour is resized
                    # onto the depth grid and the depth intrinsics describe both (their fields of
                    # view agree after ScanNet's registration).
                    if depth_intrinsics is not None:
                        K = depth_intrinsics
                    else:
                        K = _scale_intrinsics(color_intrinsics, width / color.width, height / color.height)
                    color = color.resize((width, height), Image.BILINEAR)
                elif K is None:
                    K = depth_intrinsics
            elif K is None:
                K = depth_intrinsics  # colour exported at depth size without depth: the best we have
            cameras.append(Camera(name=f"rgbd_{number:05d}", image=np.array(color), intrinsics=K,
                                  lidar_to_camera=invert(camera_to_world), stamp_ns=number * FRAME_PERIOD_NS,
                                  depth=depth, frame_id="camera"))
        return cameras

    def _pick_frames(self, files: list) -> list:
        """Up to frames_per_scene frames spread evenly over the recording, skipping invalid poses.

        ScanNet marks frames where tracking was lost with an inf/NaN pose; a target frame with one
        is replaced by the next valid frame before the following target.
        """
        if self.frames_per_scene < 0 or self.frames_per_scene >= len(files):
            targets = list(range(len(files)))
        else:
            targets = np.linspace(0, len(files), self.frames_per_scene, endpoint=False).astype(int).tolist()
        chosen = []
        for t, start in enumerate(targets):
            stop = targets[t + 1] if t + 1 < len(targets) else len(files)
            for position in range(start, stop):
                if np.all(np.isfinite(_read_pose_or_nan(files[position][3]))):
                    chosen.append(files[position])
                    break
        return chosen


def _read_pose_or_nan(file: Path) -> np.ndarray:
    try:
        return _read_matrix(file)
    except SourceError:
        return np.full((4, 4), np.nan)
