"""Vocabularies: the classes a user names in text, with prompts, colours and the raw label ids they cover.

A vocabulary is a YAML file:

    name: nuscenes_lidarseg_16
    classes:
      - name: car
        prompts: [car, sedan]      # optional; defaults to [name]
        color: [255, 158, 0]
        ids: [17]                  # raw label ids of a dataset this class covers (evaluation)
        thing: true                # optional, default false: countable objects, clustered into boxes

Class index i (the order in the file) is the label value the segmenters output. Raw ids that no
class covers are ignored in evaluation.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import UserError
from .files import read_yaml

IGNORE = -1
_SHARED = Path("share") / "clip2scene_ros" / "config" / "vocabularies"


def _config_dir() -> Path:
    """Where the shipped vocabularies are: this repository's config/ (a source tree or an editable install),
    else the installed share folder of a colcon workspace (on AMENT_PREFIX_PATH) or of a pip install."""
    candidates = [Path(__file__).resolve().parents[1] / "config" / "vocabularies"]
    candidates += [Path(prefix) / _SHARED for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)
                   if prefix]
    candidates.append(Path(sys.prefix) / _SHARED)
    return next((c for c in candidates if c.is_dir()), candidates[0])


CONFIG_DIR = _config_dir()
_CLASS_KEYS = {"name", "prompts", "color", "ids", "thing"}


class VocabularyError(UserError, ValueError):
    """A vocabulary that cannot be used; the message names the file, the class and the key."""


@dataclass
class VocabularyClass:
    name: str
    prompts: list[str]
    color: tuple[int, int, int]
    ids: list[int] = field(default_factory=list)
    thing: bool = False  # a countable object class (vehicle, person, movable object): clustered into boxes


@dataclass
class Vocabulary:
    name: str
    classes: list[VocabularyClass]
    origin: str = ""

    def __post_init__(self) -> None:
        where = self.origin or f"vocabulary {self.name!r}"
        if not self.classes:
            raise VocabularyError(f"{where}: 'classes' is empty; list at least one class")
        seen_names, seen_ids = {}, {}
        for index, cls in enumerate(self.classes):
            if cls.name in seen_names:
                raise VocabularyError(f"{where}: class name {cls.name!r} appears twice (classes {seen_names[cls.name]} "
                                      f"and {index}); names must be unique")
            seen_names[cls.name] = index
            for raw in cls.ids:
                if raw in seen_ids:
                    raise VocabularyError(f"{where}: raw id {raw} is in both {seen_ids[raw]!r} and {cls.name!r}; "
                                          f"each raw id may map to one class only")
                seen_ids[raw] = cls.name

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def colors(self) -> np.ndarray:
        """(C, 3) uint8 RGB."""
        return np.array([c.color for c in self.classes], dtype=np.uint8)

    @property
    def palette(self) -> dict[int, tuple[int, int, int]]:
        """class index -> colour, for render.palette_colors."""
        return {i: tuple(c.color) for i, c in enumerate(self.classes)}

    def raw_to_class(self, raw_ids: np.ndarray) -> np.ndarray:
        """Map raw dataset label ids (any shape) to class indices; ids no class covers -> IGNORE (-1)."""
        raw_ids = np.asarray(raw_ids, dtype=np.int64)
        covered = [(raw, index) for index, cls in enumerate(self.classes) for raw in cls.ids]
        if not covered:
            return np.full(raw_ids.shape, IGNORE, dtype=np.int64)
        keys = np.array([raw for raw, _ in covered])
        values = np.array([index for _, index in covered])
        order = np.argsort(keys)
        keys, values = keys[order], values[order]
        position = np.clip(np.searchsorted(keys, raw_ids), 0, len(keys) - 1)
        return np.where(keys[position] == raw_ids, values[position], IGNORE)

    @property
    def covers_ids(self) -> bool:
        return any(c.ids for c in self.classes)

    @classmethod
    def from_dict(cls, data, origin: str = "vocabulary") -> Vocabulary:
        if not isinstance(data, dict):
            raise VocabularyError(f"{origin}: expected a mapping with 'name' and 'classes', got {type(data).__name__}")
        unknown = set(data) - {"name", "classes", "description"}
        if unknown:
            raise VocabularyError(f"{origin}: unknown key(s) {sorted(unknown)}; a vocabulary has name, classes "
                                  f"(and an optional description)")
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise VocabularyError(f"{origin}: key 'name' is missing or not a string")
        classes = data.get("classes")
        if not isinstance(classes, list):
            raise VocabularyError(f"{origin}: key 'classes' is missing or not a list")
        return cls(name, [_parse_class(entry, index, origin) for index, entry in enumerate(classes)], origin)

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        path = Path(path)
        if not path.exists():
            raise VocabularyError(f"vocabulary file {path} does not exist; shipped ones: {shipped_vocabularies()}")
        return cls.from_dict(read_yaml(path, "vocabulary file", VocabularyError), str(path))

    @classmethod
    def from_names(cls, names: list[str], name: str = "custom") -> Vocabulary:
        """A vocabulary from class names alone (prompts = names, colours from a fixed palette, no ids)."""
        return cls(name, [VocabularyClass(n, [n], default_color(i)) for i, n in enumerate(names)])

    def to_dict(self) -> dict:
        return {"name": self.name, "classes": [{"name": c.name, "prompts": list(c.prompts), "color": list(c.color),
                                                "ids": list(c.ids), "thing": c.thing} for c in self.classes]}


def _parse_class(entry, index: int, origin: str) -> VocabularyClass:
    if not isinstance(entry, dict):
        raise VocabularyError(f"{origin}: classes[{index}] must be a mapping with name, color (and prompts, ids, "
                              f"thing)")
    label = f"{origin}: class {entry.get('name', index)!r}"
    unknown = set(entry) - _CLASS_KEYS
    if unknown:
        raise VocabularyError(f"{label}: unknown key(s) {sorted(unknown)}; a class has {sorted(_CLASS_KEYS)}")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise VocabularyError(f"{origin}: classes[{index}]: key 'name' is missing or empty")
    prompts = entry.get("prompts", [name])
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise VocabularyError(f"{label}: key 'prompts' must be a non-empty list of non-empty strings")
    color = entry.get("color", default_color(index))
    if (not isinstance(color, (list, tuple)) or len(color) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in color)):
        raise VocabularyError(f"{label}: key 'color' must be [r, g, b] with integers 0-255, got {color!r}")
    ids = entry.get("ids", [])
    if not isinstance(ids, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in ids):
        raise VocabularyError(f"{label}: key 'ids' must be a list of integer raw label ids, got {ids!r}")
    if len(set(ids)) != len(ids):
        raise VocabularyError(f"{label}: key 'ids' lists an id twice: {ids}")
    thing = entry.get("thing", False)
    if not isinstance(thing, bool):
        raise VocabularyError(f"{label}: key 'thing' must be true or false, got {thing!r}")
    return VocabularyClass(name.strip(), [p.strip() for p in prompts], tuple(color), list(ids), thing)


def class_mask(vocabulary: Vocabulary, names, key: str) -> np.ndarray:
    """(C,) bool: which of the vocabulary's classes are named; a VocabularyError naming key for an unknown name."""
    unknown = [name for name in names if name not in vocabulary.names]
    if unknown:
        raise VocabularyError(f"{key}: {', '.join(map(repr, unknown))} not in vocabulary {vocabulary.name!r}; its "
                              f"classes: {', '.join(vocabulary.names)}")
    return np.isin(np.array(vocabulary.names), list(names))


SPLITS_FILE = CONFIG_DIR / "splits" / "zero_shot.yaml"


def split_unseen(vocabulary: Vocabulary, split: str) -> list[str]:
    """The unseen classes of a shipped zero-shot split (config/vocabularies/splits/zero_shot.yaml) of this
    vocabulary, e.g. split_unseen(semantickitti, "unseen4")."""
    splits = read_yaml(SPLITS_FILE, "zero-shot splits file", VocabularyError) or {}
    mine = splits.get(vocabulary.name)
    if not isinstance(mine, dict) or split not in mine:
        known = ", ".join(f"{name} ({', '.join(s)})" for name, s in splits.items() if isinstance(s, dict))
        raise VocabularyError(f"--split {split}: no such split of vocabulary {vocabulary.name!r} in {SPLITS_FILE}; "
                              f"splits there: {known}")
    class_mask(vocabulary, mine[split], f"split {split} in {SPLITS_FILE}")
    return list(mine[split])


def default_color(index: int) -> tuple[int, int, int]:
    """A distinct, stable colour for class index (golden-angle hues)."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((index * 0.618033988749895) % 1.0, 0.75, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def shipped_vocabularies() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_vocabulary(name_or_path: str | Path) -> Vocabulary:
    """A vocabulary from a YAML path, or a shipped one by name (e.g. `nuscenes`, `semantickitti`, `scannet`)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return Vocabulary.load(path)
    exact = [p for p in CONFIG_DIR.glob("*.yaml") if p.stem == str(name_or_path)]
    matches = exact or [p for p in CONFIG_DIR.glob("*.yaml") if p.stem.startswith(str(name_or_path))]
    if len(matches) != 1:
        raise VocabularyError(f"no vocabulary file {name_or_path!r}; give a YAML path or one of the shipped "
                              f"vocabularies: {shipped_vocabularies()}")
    return Vocabulary.load(matches[0])


def no_matching_labels(raw_ids: np.ndarray, vocabulary: Vocabulary, task: str) -> str:
    """The message for labels none of which the vocabulary's classes cover (another dataset's vocabulary)."""
    present = np.unique(np.asarray(raw_ids))
    shown = ", ".join(str(v) for v in present[:12]) + (", ..." if len(present) > 12 else "")
    return (f"no label of the source matches vocabulary {vocabulary.name!r}: the scans hold raw ids {shown}, and no "
            f"class lists any of them in its 'ids'; nothing to {task}. Use the dataset's vocabulary (--vocabulary "
            f"nuscenes, semantickitti or scannet) or add the ids to the classes")
