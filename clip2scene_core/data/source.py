"""The small interface every reader implements, and the source strings that name readers.

A source string is `KIND:PATH?key=value&key=value`, for example
`nuscenes:/data/nuscenes?version=v1.0-trainval&split=val`, `semantickitti:/data/kitti?split=val`,
`bag:/recordings/run1?lidar=/points&cameras=/cam_front/image_raw,/cam_left/image_raw`. The synthetic
world has no path and takes comma-separated options: `synthetic:frames=40,seed=0,cameras=6`.
Options are the reader's constructor arguments, converted to the types its signature declares.
Every source also takes `start`, `stop` and `step` to read a slice of its frames.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path

import numpy as np
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..errors import UserError
from ..frame import Frame


class SourceError(UserError, ValueError):
    """A data source that cannot be read as named; the message says what to fix."""


class MissingPosesError(SourceError):
    """Older sweeps were asked for, but the source has no ego poses to bring them into the keyframe."""


class FrameSource(ABC):
    """A sequence of frames: len(source), source[i], iteration.

    label_names maps the raw label ids the source's frames carry to readable names (empty when
    the source has no labels or does not name them).
    """

    kind: str = ""
    label_names: dict[int, str] = {}

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __getitem__(self, index: int) -> Frame: ...

    def __iter__(self) -> Iterator[Frame]:
        for index in range(len(self)):
            yield self[index]

    def _check_index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.kind} source has {len(self)} frames; index {index} is out of range")
        return index % len(self)


class Subset(FrameSource):
    """Every step-th frame of another source, from start to stop."""

    def __init__(self, source: FrameSource, indices: range):
        self.source = source
        self.indices = indices
        self.kind = source.kind
        self.label_names = source.label_names

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Frame:
        return self.source[self.indices[self._check_index(index)]]


class FrameList(FrameSource):
    """Frames already in memory (e.g. rendered once and trained on for many epochs)."""

    kind = "frames"

    def __init__(self, frames, label_names: dict[int, str] | None = None):
        self.frames = list(frames)
        self.label_names = label_names or {}

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> Frame:
        return self.frames[self._check_index(index)]


def read_rows(file: Path, columns: int, layout: str, what: str, dtype=np.float32) -> np.ndarray:
    """A binary file of rows of `columns` values, e.g. a scan of x, y, z, intensity floats."""
    raw = np.fromfile(file, dtype=dtype)
    if raw.size % columns:
        raise SourceError(f"{what} {file} holds {raw.size} values, not rows of {columns} ({layout}); the file is "
                          f"truncated or of another format")
    return raw.reshape(-1, columns)


def read_labels(file: Path, dtype, points_file: Path, points: int, what: str) -> np.ndarray:
    """One label per point from a binary file, checked against the number of points of its scan."""
    labels = np.fromfile(file, dtype=dtype)
    if len(labels) != points:
        raise SourceError(f"{what} {file} holds {len(labels)} labels but {points_file} has {points} points; the two "
                          f"files do not belong together")
    return labels


@dataclass
class SourceSpec:
    """A parsed source string."""

    kind: str
    path: str = ""
    options: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        query = "&".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.kind}:{self.path}" + (f"?{query}" if query else "")


def parse_source(text: str) -> SourceSpec:
    """Split `KIND:PATH?k=v&k=v` (or `synthetic:k=v,k=v`) into its parts."""
    kind, colon, rest = text.partition(":")
    if not colon or not kind:
        raise SourceError(f"source {text!r} has no kind: write KIND:PATH, e.g. bag:/recordings/run1 "
                          f"or synthetic:frames=40,seed=0")
    kind = kind.strip().lower()
    if kind == "synthetic" and "?" not in rest:
        path, items = "", [item for item in rest.split(",") if item]
    else:
        path, _, query = rest.partition("?")
        items = [item for item in query.split("&") if item]
    options = {}
    for item in items:
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise SourceError(f"source {text!r}: option {item!r} is not of the form key=value")
        options[key.strip()] = value.strip()
    return SourceSpec(kind, path, options)


def _convert(value: str, annotation, key: str, kind: str):
    if isinstance(annotation, str):
        annotation = eval(annotation, vars(typing))  # noqa: S307 - our own annotations, e.g. "int | None"
    options = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    target = options[0]
    try:
        if target is bool:
            lowered = value.lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(value)
            return lowered in ("1", "true", "yes", "on")
        if typing.get_origin(target) in (list, tuple):
            return [item for item in value.split(",") if item]
        return target(value)
    except ValueError:
        raise SourceError(f"{kind} source: option {key}={value!r} is not a valid {getattr(target, '__name__', target)}") \
            from None


def build_source(cls: type[FrameSource], spec: SourceSpec, defaults: dict | None = None) -> FrameSource:
    """Construct cls from spec's path and options, checked against cls's constructor signature."""
    parameters = inspect.signature(cls.__init__).parameters
    accepted = [name for name in parameters if name not in ("self", "path")]
    slicing = {key: spec.options[key] for key in ("start", "stop", "step") if key in spec.options}
    kwargs = {key: value for key, value in (defaults or {}).items() if key in parameters}
    for key, value in spec.options.items():
        if key in slicing:
            continue
        if key not in accepted:
            raise SourceError(f"{spec.kind} source: unknown option {key!r}; it takes "
                              f"{', '.join(accepted + ['start', 'stop', 'step'])}")
        kwargs[key] = _convert(value, parameters[key].annotation, key, spec.kind)
    if "path" in parameters:
        if not spec.path:
            raise SourceError(f"{spec.kind} source needs a path: {spec.kind}:/path/to/data")
        kwargs["path"] = spec.path
    source = cls(**kwargs)
    if slicing:
        try:
            start, stop, step = (int(slicing[k]) if k in slicing else None for k in ("start", "stop", "step"))
        except ValueError:
            raise SourceError(f"{spec.kind} source: start, stop and step must be integers, got {slicing}") from None
        source = Subset(source, range(len(source))[slice(start, stop, step)])
    return source
