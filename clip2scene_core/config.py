"""Configuration: small typed dataclasses with defaults; a YAML file only overrides them.

Unknown keys and wrongly typed values are errors that name the key (e.g. `clip.image_size`).
Command-line options override the file.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .files import read_yaml
from .finetune import FinetuneConfig
from .objects import ObjectConfig
from .student.network import StudentConfig
from .teacher.clip_model import ClipConfig
from .train import TrainConfig, check_grid


class ConfigError(UserError, ValueError):
    """A configuration value that cannot be used; the message names the key."""


@dataclass
class TeacherConfig:
    """teacher: maskclip, labels[:NAME], cliplike[:KEY=VALUE,...] or noisy:RATE. text_encoder: auto, clip or hash."""

    name: str = "maskclip"
    text_encoder: str = "auto"
    seed: int = 0
    text_cache_dir: str | None = None


@dataclass
class Config:
    """Everything a command can be configured with; sections grow with the commands that use them."""

    device: str = "auto"
    vocabulary: str = "nuscenes"
    clip: ClipConfig = field(default_factory=ClipConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    objects: ObjectConfig = field(default_factory=ObjectConfig)

    def __post_init__(self) -> None:
        check_grid(self.train, self.student)


def _check_type(value, annotation, key: str):
    """value converted to annotation (int -> float, list -> tuple), or ConfigError naming key."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(annotation):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _check_type(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{key}: got {value!r}")
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, key)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        items = typing.get_args(annotation)
        converted = [_check_type(v, items[0] if items else typing.Any, f"{key}[{i}]") for i, v in enumerate(value)]
        if origin is tuple and items and items[-1] is not Ellipsis and len(items) != len(value):
            raise ConfigError(f"{key}: expected {len(items)} values, got {len(value)}")
        return origin(converted)
    if annotation is typing.Any:
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: {value} is not a number a run can use; give a finite value")
    if annotation in (int, float, str, bool) and (type(value) is not annotation):
        raise ConfigError(f"{key}: expected {annotation.__name__}, got {type(value).__name__} {value!r}")
    return value


def from_dict(cls, data, prefix: str = ""):
    """An instance of dataclass cls from a (possibly partial) mapping, checked against its fields."""
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    fields = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = ", ".join(f"{prefix}.{k}" if prefix else k for k in unknown)
        raise ConfigError(f"unknown config key(s) {where}; known here: {', '.join(fields)}")
    values = {name: _check_type(value, fields[name], f"{prefix}.{name}" if prefix else name)
              for name, value in data.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{prefix or 'config'}: {error}") from None


def merge(base, overrides: dict, prefix: str = ""):
    """A copy of dataclass instance base with a nested mapping of overrides applied (checked)."""
    fields = typing.get_type_hints(type(base))
    changes = {}
    for key, value in overrides.items():
        name = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            raise ConfigError(f"unknown config key {name}; known here: {', '.join(fields)}")
        current = getattr(base, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[key] = merge(current, value, name)
        else:
            changes[key] = _check_type(value, fields[key], name)
    try:
        return dataclasses.replace(base, **changes)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{prefix or 'config'}: {error}") from None


def load_config(path: str | Path | None = None, cls=Config):
    """Defaults, overridden by the YAML file at path (if any)."""
    if path is None:
        return cls()
    path = Path(path)
    data = read_yaml(path, "config file", ConfigError)
    try:
        return from_dict(cls, {} if data is None else data)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def to_dict(config) -> dict:
    return dataclasses.asdict(config)
