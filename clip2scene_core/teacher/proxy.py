"""The CLIP-like proxy teacher (`cliplike`): the synthetic world's stand-in for MaskCLIP, erring the way CLIP does.

No CLIP weights reach these machines, so every learning claim is read from this instrument. It is built to know
no more than CLIP would, in three steps, each a function of the one before only:
1. Surfaces. Every pixel belongs to a persistent surface of the world (Camera.instance_image: one world object,
   or one 8 m square of ground). Each surface draws, from a hash of (teacher seed, surface id), whether CLIP gets
   it wrong (ERROR_TABLE's class rate x `errors`), which class it takes then (the table's confusions, mostly
   within the class's semantic group; OUT_OF_GROUP of them anywhere), and a clarity in [0, 1] (lower for wrong
   surfaces: CLIP is less sure where it errs). So the same car is mislabelled the same way in every frame and
   from every camera of a drive, and another drive (other surface ids) errs elsewhere. Per view, a surface
   changes its label to one confusable with it with probability `jitter` (lighting, occlusion, viewpoint).
   This is the only step that reads the true class.
2. Patches. MaskCLIP predicts one feature per 16x16 patch of its 224x416 crop: a PATCH_GRID of patches over the
   image. A patch's feature is the area-weighted mean of its surfaces' features, each
       clarity * text[label] + (1 - clarity) * mean text of the label's confusable classes + noise * r(surface)
   with r a random unit direction per surface, plus `noise` / 3 of random direction per patch and view. Small
   and far objects, less than a patch, dissolve into their surroundings.
3. Pixels. Patch features are upsampled bilinearly (as MaskCLIP upsamples its feature map); the pseudo label is
   the nearest class text embedding, the confidence the softmax at logit scale `scale`.
Pixels whose true label the vocabulary does not cover (sky, noise) get no prediction, as with the other label
teachers. Given the label (and whether it is right), features and confidence are independent of the true class.

Spec: cliplike[:KEY=VALUE,...] with the keys of PARAMETERS; e.g. cliplike:errors=1.2,jitter=0.05.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UsageError
from ..frame import Camera
from ..hashing import mix, text_key, uniform
from ..vocabulary import IGNORE, Vocabulary
from .base import PixelPredictions, Teacher, TeacherOutput
from .labels import LabelImageTeacher, confusable

PATCH_GRID = (14, 26)       # rows, columns: a 224x416 crop in 16-pixel patches (CLIP2Scene's crop, ViT-B/16)
OUT_OF_GROUP = 0.1          # share of a class's errors that go to any class, not one of its confusions
DEFAULT_RATE = 0.4          # error rate of a class the table does not list (confused within CONFUSION_GROUPS)
# Clarity of a surface: uniform in [low, high], by whether its label is right (CLIP is surer where it is right).
CLARITY_RIGHT, CLARITY_WRONG = (0.6, 1.0), (0.42, 0.8)

# Per class: the chance that CLIP mislabels one of its surfaces, and what it takes it for (relative weights).
# Small things and rare classes err more than road and vegetation; confusions stay within the groups
# vehicles, two-wheelers and people, flat ground, vegetation and terrain, manmade and barriers. Rates are
# ours, shaped after the confusions SAL (arXiv 2408.13262) and CLIP2Scene report for CLIP on nuScenes.
ERROR_TABLE: dict[str, tuple[float, dict[str, float]]] = {
    "driveable_surface": (0.05, {"sidewalk": 0.5, "other_flat": 0.3, "terrain": 0.2}),
    "other_flat": (0.5, {"driveable_surface": 0.5, "sidewalk": 0.5}),
    "sidewalk": (0.25, {"driveable_surface": 0.5, "terrain": 0.3, "other_flat": 0.2}),
    "terrain": (0.3, {"vegetation": 0.5, "sidewalk": 0.3, "other_flat": 0.2}),
    "vegetation": (0.08, {"terrain": 0.6, "manmade": 0.4}),
    "manmade": (0.1, {"barrier": 0.4, "vegetation": 0.3, "traffic_cone": 0.3}),
    "barrier": (0.45, {"manmade": 0.7, "traffic_cone": 0.3}),
    "traffic_cone": (0.55, {"barrier": 0.6, "manmade": 0.4}),
    "car": (0.12, {"truck": 0.5, "bus": 0.2, "trailer": 0.2, "construction_vehicle": 0.1}),
    "truck": (0.45, {"car": 0.5, "bus": 0.2, "trailer": 0.2, "construction_vehicle": 0.1}),
    "bus": (0.4, {"truck": 0.6, "car": 0.4}),
    "trailer": (0.6, {"truck": 0.6, "construction_vehicle": 0.2, "car": 0.2}),
    "construction_vehicle": (0.55, {"truck": 0.6, "trailer": 0.3, "car": 0.1}),
    "pedestrian": (0.25, {"bicycle": 0.6, "motorcycle": 0.4}),
    "bicycle": (0.5, {"motorcycle": 0.6, "pedestrian": 0.4}),
    "motorcycle": (0.5, {"bicycle": 0.7, "pedestrian": 0.3}),
}


@dataclass(frozen=True)
class ProxyConfig:
    """errors: multiplier on ERROR_TABLE's rates (0: right everywhere but for patch blur); jitter: per-view chance
    a surface takes another, confusable label; noise: weight of the random feature directions; scale: logit scale
    of the confidence softmax; seed: which surfaces err."""

    errors: float = 1.0
    jitter: float = 0.03
    noise: float = 0.3
    scale: float = 10.0
    seed: int = 0


# key: (low, high) of each parameter's range.
PARAMETERS = {"errors": (0.0, 4.0), "jitter": (0.0, 0.5), "noise": (0.0, 2.0), "scale": (1.0, 100.0),
              "seed": (0, 2**31 - 1)}


def parse_proxy(argument: str, seed: int = 0) -> ProxyConfig:
    """A ProxyConfig from "KEY=VALUE,..." (empty: the defaults, with this seed); UsageError naming the key and its
    range for anything else."""
    values: dict = {"seed": seed}
    types = {f.name: f.type for f in fields(ProxyConfig)}
    for item in filter(None, (part.strip() for part in argument.split(","))):
        key, equals, text = item.partition("=")
        key = key.strip()
        if key not in PARAMETERS or not equals:
            raise UsageError(f"teacher cliplike: {item!r} is not KEY=VALUE with KEY one of {', '.join(PARAMETERS)} "
                             f"(e.g. cliplike:errors=1.2,jitter=0.05)")
        low, high = PARAMETERS[key]
        try:
            value = int(text) if types[key] in (int, "int") else float(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:  # NaN fails too
            raise UsageError(f"teacher cliplike: {key}={text.strip()!r} is out of range; {key} must be a number from "
                             f"{low} to {high}")
        values[key] = value
    return ProxyConfig(**values)


def confusion_matrix(vocabulary: Vocabulary) -> tuple[np.ndarray, np.ndarray]:
    """(C,) error rate and (C, C) distribution of the wrong label of each class of the vocabulary, from
    ERROR_TABLE (classes it lacks: DEFAULT_RATE, confused evenly within their group), OUT_OF_GROUP spread over
    every other class."""
    names = vocabulary.names
    count = len(names)
    rates = np.full(count, DEFAULT_RATE)
    targets = np.zeros((count, count))
    for index, (name, partners) in enumerate(zip(names, confusable(vocabulary))):
        rate, table = ERROR_TABLE.get(name, (DEFAULT_RATE, {}))
        rates[index] = rate
        listed = {names.index(other): weight for other, weight in table.items() if other in names}
        for other, weight in (listed or {int(p): 1.0 for p in partners}).items():
            targets[index, other] = weight
        if count > 1:
            anywhere = np.full(count, OUT_OF_GROUP / (count - 1))
            anywhere[index] = 0.0
            total = targets[index].sum()
            targets[index] = (1 - OUT_OF_GROUP) * targets[index] / total + anywhere if total else anywhere
            targets[index] /= targets[index].sum()
    return rates, targets


def pick(distribution: np.ndarray, u: np.ndarray) -> np.ndarray:
    """A class per row of distribution (K, C), by inverse CDF at u (K,)."""
    cdf = np.cumsum(distribution, axis=1)
    return np.minimum((u[:, None] >= cdf / cdf[:, -1:]).sum(1), distribution.shape[1] - 1)


class ProxyOutput(TeacherOutput):
    """Patch-level feature maps (one (D, rows, cols) map per camera), upsampled bilinearly where queried."""

    def __init__(self, maps: list[torch.Tensor], known: list[np.ndarray], text_embeddings: torch.Tensor,
                 scale: float):
        self.maps, self.known, self.text, self.scale = maps, known, text_embeddings, scale

    def at(self, camera_index: int, uv: np.ndarray) -> PixelPredictions:
        known = self.known[camera_index]
        height, width = known.shape
        grid = torch.from_numpy(np.stack([(uv[:, 0] + 0.5) / width * 2 - 1, (uv[:, 1] + 0.5) / height * 2 - 1],
                                         axis=1).astype(np.float32))
        features = F.grid_sample(self.maps[camera_index][None], grid[None, None], mode="bilinear",
                                 padding_mode="border", align_corners=False)[0, :, 0].T
        cols = np.clip(np.floor(uv[:, 0] + 0.5).astype(np.int64), 0, width - 1)
        rows = np.clip(np.floor(uv[:, 1] + 0.5).astype(np.int64), 0, height - 1)
        valid = torch.from_numpy(known[rows, cols])
        features = F.normalize(features, dim=1) * valid[:, None]
        probabilities = torch.softmax(self.scale * features @ self.text.T, dim=1)
        confidence, labels = probabilities.max(1)
        return PixelPredictions(features, torch.where(valid, labels, IGNORE), confidence * valid)

    def label_image(self, camera_index: int) -> np.ndarray:
        known = self.known[camera_index]
        logits = torch.einsum("dhw,cd->chw", self.maps[camera_index], self.text)
        upsampled = F.interpolate(logits[None], size=known.shape, mode="bilinear", align_corners=False)[0]
        return np.where(known, upsampled.argmax(0).numpy(), IGNORE)

    def image_embeddings(self) -> torch.Tensor:
        """Each view's mean patch feature over the patches it has labelled pixels in, normalised."""
        return F.normalize(torch.stack([m.flatten(1).sum(1) for m in self.maps]), dim=1)


class CLIPLikeTeacher(Teacher):
    """The proxy for MaskCLIP on the synthetic world (see the module docstring); needs each camera's label_image
    and instance_image."""

    name = "cliplike"

    def __init__(self, base: LabelImageTeacher, config: ProxyConfig):
        self.base, self.config = base, config
        super().__init__(base.vocabulary, base.text_encoder)

    def set_vocabulary(self, vocabulary: Vocabulary) -> None:
        super().set_vocabulary(vocabulary)
        if hasattr(self, "base"):
            self.base.set_vocabulary(vocabulary)
        self.rates, self.targets = confusion_matrix(vocabulary)
        partners = torch.from_numpy(self.targets).float()
        self.confusable_mean = F.normalize(partners @ self.text_embeddings, dim=1)

    @property
    def identity(self) -> str:
        c = self.config
        return (f"cliplike:errors={c.errors},jitter={c.jitter},noise={c.noise},scale={c.scale},seed={c.seed}|"
                f"{self.text_encoder.identity}")

    def predict(self, cameras: list[Camera]) -> ProxyOutput:
        truth = self.base.class_images(cameras)
        maps, known = [], []
        for classes, camera in zip(truth, cameras):
            surfaces = camera.instance_image
            if surfaces is None:
                if not self.base.strict:  # a live stream without them: this camera contributes no labels
                    surfaces = np.zeros(classes.shape, np.int64)
                else:
                    raise UsageError(f"camera {camera.name!r} has no instance image for the cliplike teacher; it "
                                     f"needs the synthetic world's surface ids (<camera namespace>/instances in a "
                                     f"bag); for other label images use noisy:RATE or labels")
            valid = (classes != IGNORE) & (surfaces != 0)
            maps.append(self._patch_map(classes, surfaces, valid, camera))
            known.append(valid)
        return ProxyOutput(maps, known, self.text_embeddings, self.config.scale)

    def surface_labels(self, truth: np.ndarray, ids: np.ndarray, camera: Camera) -> tuple[np.ndarray, np.ndarray]:
        """Step 1 for K surfaces of one view: their labels (K,) and clarities (K,) from their true classes (K,)
        and ids (K,)."""
        c = self.config
        wrong = uniform(c.seed, 1, ids) < np.minimum(self.rates[truth] * c.errors, 0.95)
        labels = np.where(wrong, pick(self.targets[truth], uniform(c.seed, 2, ids)), truth)
        view = text_key(camera.name)
        flipped = uniform(c.seed, 3, ids, view, camera.stamp_ns) < c.jitter
        labels = np.where(flipped, pick(self.targets[labels], uniform(c.seed, 4, ids, view, camera.stamp_ns)),
                          labels)
        low, high = np.where((wrong | flipped)[None], np.array(CLARITY_WRONG)[:, None],
                             np.array(CLARITY_RIGHT)[:, None])
        return labels, low + (high - low) * uniform(c.seed, 5, ids)

    def features(self, labels: np.ndarray, clarity: np.ndarray, ids: np.ndarray) -> torch.Tensor:
        """Step 2's feature (K, D) of surfaces with these labels, clarities and ids: no true class in sight."""
        text = self.text_embeddings
        dimensions = text.shape[1]
        direction = torch.from_numpy(uniform(self.config.seed, 6, ids[:, None], np.arange(dimensions)[None]) - 0.5)
        kappa = torch.from_numpy(clarity).float()[:, None]
        label = torch.from_numpy(labels)
        return kappa * text[label] + (1 - kappa) * self.confusable_mean[label] + \
            self.config.noise * F.normalize(direction.float(), dim=1)

    def _patch_map(self, classes: np.ndarray, surfaces: np.ndarray, valid: np.ndarray, camera: Camera) -> torch.Tensor:
        """(D, rows, cols) patch features of one view (steps 1 and 2)."""
        height, width = classes.shape
        rows, cols = PATCH_GRID
        patch = (np.arange(height)[:, None] * rows // height) * cols + np.arange(width)[None] * cols // width
        ids, first, surface_of = np.unique(surfaces[valid], return_index=True, return_inverse=True)
        dimensions = self.text_embeddings.shape[1]
        if len(ids) == 0:
            return torch.zeros(dimensions, rows, cols)
        labels, clarity = self.surface_labels(classes[valid][first], ids, camera)
        area = np.bincount(patch[valid] * len(ids) + surface_of.ravel(), minlength=rows * cols * len(ids))
        weights = torch.from_numpy(area.reshape(rows * cols, len(ids)) / (height * width / (rows * cols))).float()
        maps = weights @ self.features(labels, clarity, ids)
        view = uniform(self.config.seed, 7, text_key(camera.name), camera.stamp_ns,
                       np.arange(rows * cols * dimensions)).reshape(rows * cols, dimensions) - 0.5
        covered = (weights.sum(1, keepdim=True) > 0).float()
        maps += self.config.noise / 3 * F.normalize(torch.from_numpy(view).float(), dim=1) * covered
        return maps.T.reshape(dimensions, rows, cols).contiguous()
