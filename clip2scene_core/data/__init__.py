"""Readers: every sensor source becomes a sequence of `Frame`s. One file per format.

    from clip2scene_core.data import open_source
    source = open_source("nuscenes:/data/nuscenes?version=v1.0-mini&split=val&sweeps=2")
    frame = source[0]
"""

from __future__ import annotations

import importlib

from .source import FrameList, FrameSource, MissingPosesError, SourceError, SourceSpec, build_source, parse_source

# kind -> (module, class); modules are imported only when their kind is opened.
READERS = {
    "nuscenes": ("nuscenes", "NuScenes"),
    "semantickitti": ("semantickitti", "SemanticKitti"),
    "scannet": ("scannet", "ScanNet"),
    "bag": ("rosbag2", "BagSource"),
    "synthetic": ("synthetic", "SyntheticWorld"),
}


def open_source(text: str | SourceSpec, **defaults) -> FrameSource:
    """Open a data source by its source string.

    defaults: option values used unless the string sets them (e.g. sweeps=2 for training);
    options a reader does not take are ignored here, unlike options in the string.
    """
    spec = parse_source(text) if isinstance(text, str) else text
    if spec.kind not in READERS:
        raise SourceError(f"unknown source kind {spec.kind!r} in {str(text)!r}; known kinds: {', '.join(READERS)}")
    module_name, class_name = READERS[spec.kind]
    cls = getattr(importlib.import_module(f".{module_name}", __name__), class_name)
    return build_source(cls, spec, defaults)


__all__ = ["FrameList", "FrameSource", "MissingPosesError", "SourceError", "SourceSpec", "open_source", "parse_source",
           "READERS"]
