"""`clip2scene inspect`: what a data source holds, and a picture of one frame."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from .data import FrameSource
from .data.source import SourceError
from .geometry import project


@dataclass
class CameraSummary:
    name: str
    width: int
    height: int
    frames: int = 0                     # inspected frames that have this camera
    points_in_view: float = 0.0         # mean fraction of a frame's points that project into it


@dataclass
class SourceSummary:
    source: str
    kind: str
    frames: int
    inspected: int
    points_min: int = 0
    points_mean: float = 0.0
    points_max: int = 0
    fields: list[str] = field(default_factory=list)
    sweeps_per_frame: float = 0.0
    cameras: list[CameraSummary] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)   # "id name" -> points, over inspected frames
    labelled_frames: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        lines = [f"source     {self.source}", f"kind       {self.kind}",
                 f"frames     {self.frames} ({self.inspected} inspected)",
                 f"points     min {self.points_min}, mean {self.points_mean:.0f}, max {self.points_max} per frame",
                 f"fields     {', '.join(self.fields) or '-'}",
                 f"sweeps     {self.sweeps_per_frame:.1f} previous sweeps per frame",
                 f"cameras    {len(self.cameras)}"]
        for camera in self.cameras:
            lines.append(f"  {camera.name:<18} {camera.width}x{camera.height}  in {camera.frames} frames  "
                         f"{100 * camera.points_in_view:5.1f}% of points in view")
        lines.append(f"labels     {len(self.labels)} ids in {self.labelled_frames} labelled frames")
        total = max(sum(self.labels.values()), 1)
        for key, count in self.labels.items():
            lines.append(f"  {key:<40} {count:>10}  {100 * count / total:5.1f}%")
        return "\n".join(lines)


def inspected_indices(length: int, max_frames: int) -> list[int]:
    """Up to max_frames indices spread evenly over the source (all of them when it is short)."""
    if length <= max_frames:
        return list(range(length))
    return sorted(set(np.linspace(0, length - 1, max_frames).round().astype(int).tolist()))


def summarize(source: FrameSource, description: str, max_frames: int = 20) -> SourceSummary:
    """Read up to max_frames frames and summarise them; raises SourceError when a camera's
    calibration puts no point of any inspected frame into its image."""
    indices = inspected_indices(len(source), max_frames)
    summary = SourceSummary(source=description, kind=source.kind, frames=len(source), inspected=len(indices))
    counts, fields, labels, sweeps = [], set(), Counter(), []
    cameras: dict[str, CameraSummary] = {}
    in_view: dict[str, list[float]] = {}
    for index in indices:
        frame = source[index]
        counts.append(len(frame))
        fields.update(frame.fields)
        sweeps.append(len(frame.sweeps))
        if frame.labels is not None:
            summary.labelled_frames += 1
            labels.update(dict(zip(*np.unique(frame.labels, return_counts=True))))
        for camera in frame.cameras:
            entry = cameras.setdefault(camera.name, CameraSummary(camera.name, camera.width, camera.height))
            entry.frames += 1
            fraction = project(frame.points, camera).valid.mean() if len(frame) else 0.0
            in_view.setdefault(camera.name, []).append(float(fraction))
    for name, fractions in in_view.items():
        cameras[name].points_in_view = float(np.mean(fractions))
        if not any(fractions):
            raise SourceError(f"{description}: camera {name!r} sees no LiDAR point in any of {len(fractions)} inspected "
                              f"frames; its calibration is wrong (is lidar_to_camera inverted, or the camera frame "
                              f"not the optical frame: x right, y down, z forward?)")
    summary.points_min, summary.points_max = (min(counts), max(counts)) if counts else (0, 0)
    summary.points_mean = float(np.mean(counts)) if counts else 0.0
    summary.fields = sorted(fields)
    summary.sweeps_per_frame = float(np.mean(sweeps)) if sweeps else 0.0
    summary.cameras = list(cameras.values())
    names = source.label_names
    summary.labels = {f"{int(i)} {names.get(int(i), '')}".strip(): int(n) for i, n in sorted(labels.items())}
    return summary
