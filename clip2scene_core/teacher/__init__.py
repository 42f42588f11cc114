"""Teachers: where CLIP's knowledge enters. Named on the command line and in configs as

    maskclip          MaskCLIP dense features from CLIP (needs CLIP weights)
    labels[:NAME]     per-pixel class-id images of a 2D segmenter (bag topic <camera namespace>/NAME)
    cliplike[:K=V,..] the synthetic world's stand-in for MaskCLIP: errors tied to objects and places, patch-level
                      blur, group confusions, an informative confidence (teacher/proxy.py; the default there)
    noisy:RATE        the label teacher corrupted at RATE (0-1) per image (the older stand-in, for comparison)
"""

from __future__ import annotations

import logging

import torch

from ..errors import UsageError
from ..vocabulary import Vocabulary
from .base import PixelPredictions, PointPredictions, Teacher, TeacherOutput, predict_points
from .clip_model import ClipConfig, ClipWeightsError, resolve_weights
from .text import ClipTextEncoder, HashTextEncoder, TextEncoder

log = logging.getLogger(__name__)


def make_text_encoder(kind: str, clip: ClipConfig, device="cpu", cache_dir=None) -> TextEncoder:
    """kind: "clip" (CLIP's text tower; needs the weights), "hash" (no semantics, no weights), or
    "auto" (CLIP when its weights are on this machine, hash otherwise)."""
    if kind not in ("auto", "clip", "hash"):
        raise UsageError(f"text_encoder must be auto, clip or hash, got {kind!r}")
    if kind == "auto":
        try:
            resolve_weights(ClipConfig(**{**clip.__dict__, "allow_download": False}))
            kind = "clip"
        except ClipWeightsError as error:
            log.warning("no CLIP weights (%s); using hash text embeddings, which have no open-vocabulary "
                        "semantics", str(error).split(";")[0])
            kind = "hash"
    if kind == "hash":
        return HashTextEncoder()
    from .clip_model import load_clip
    model, _, _ = load_clip(clip, device)
    return ClipTextEncoder(model, clip.model, clip.weights_id, cache_dir=cache_dir)


def label_images_name(spec: str) -> str:
    """The label-image topic name (beside each camera's camera_info) a teacher reads: NAME for labels:NAME,
    `labels` otherwise."""
    kind, _, argument = spec.partition(":")
    return argument.strip("/") if kind == "labels" and argument else "labels"


def build_teacher(spec: str, vocabulary: Vocabulary, clip: ClipConfig | None = None, text_encoder: str = "auto",
                  device: str | torch.device = "cpu", seed: int = 0, text_cache_dir=None, strict: bool = True) -> Teacher:
    """A teacher from its name (see the module docstring). strict: a camera without a label image is an
    error for the label teachers (offline data); otherwise it contributes no labels (live streams)."""
    from .labels import LabelImageTeacher, NoisyTeacher
    from .maskclip import MaskClipTeacher
    from .proxy import CLIPLikeTeacher, parse_proxy

    clip = clip or ClipConfig()
    kind, _, argument = spec.partition(":")
    if kind == "maskclip":
        if argument:
            raise UsageError(f"teacher {spec!r}: maskclip takes no argument (set the CLIP model in the config)")
        return MaskClipTeacher(vocabulary, clip, device, text_cache_dir=text_cache_dir)
    if kind in ("labels", "noisy", "cliplike"):
        encoder = make_text_encoder(text_encoder, clip, device, text_cache_dir)
        if kind == "labels":
            return LabelImageTeacher(vocabulary, encoder, topic=label_images_name(spec), strict=strict)
        if kind == "cliplike":
            return CLIPLikeTeacher(LabelImageTeacher(vocabulary, encoder, strict=strict), parse_proxy(argument, seed))
        try:
            rate = float(argument)
        except ValueError:
            raise UsageError(f"teacher {spec!r}: write noisy:RATE with RATE between 0 and 1, e.g. noisy:0.3") from None
        return NoisyTeacher(LabelImageTeacher(vocabulary, encoder, strict=strict), rate, seed)
    raise UsageError(f"unknown teacher {spec!r}; use maskclip, labels[:NAME], cliplike[:KEY=VALUE,...] or noisy:RATE")


__all__ = ["ClipConfig", "ClipWeightsError", "PixelPredictions", "PointPredictions", "Teacher", "TeacherOutput",
           "build_teacher", "label_images_name", "make_text_encoder", "predict_points"]
