"""Teachers from per-pixel class-id images: any 2D segmenter's output, and a noisy version of it.

The label-image teacher maps each camera's `label_image` (raw ids of the segmenter or dataset)
through the vocabulary; its pixel features are the class text embeddings. The noisy teacher
corrupts those labels the way CLIP errs, at a set rate, seeded, for experiments where the truth
is known (the synthetic world).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F

from ..frame import Camera
from ..vocabulary import IGNORE, Vocabulary
from .base import PixelPredictions, Teacher, TeacherOutput
from .text import TextEncoder


class LabelImageOutput(TeacherOutput):
    """Class-index images (one per camera), queried at the nearest pixel."""

    def __init__(self, class_images: list[np.ndarray], text_embeddings: torch.Tensor):
        self.class_images = class_images
        self.text_embeddings = text_embeddings

    def at(self, camera_index: int, uv: np.ndarray) -> PixelPredictions:
        image = self.class_images[camera_index]
        cols = np.clip(np.floor(uv[:, 0] + 0.5).astype(np.int64), 0, image.shape[1] - 1)
        rows = np.clip(np.floor(uv[:, 1] + 0.5).astype(np.int64), 0, image.shape[0] - 1)
        labels = torch.from_numpy(image[rows, cols])
        known = labels != IGNORE
        features = torch.zeros(len(labels), self.text_embeddings.shape[1])
        features[known] = self.text_embeddings[labels[known]]
        return PixelPredictions(features, labels, known.float())

    def label_image(self, camera_index: int) -> np.ndarray:
        return self.class_images[camera_index]


class LabelImageTeacher(Teacher):
    """Pseudo labels from each camera's label_image (raw ids, mapped through the vocabulary's ids)."""

    name = "labels"

    def __init__(self, vocabulary: Vocabulary, text_encoder: TextEncoder, topic: str = "labels", strict: bool = True):
        self.topic, self.strict = topic, strict
        super().__init__(vocabulary, text_encoder)
        if not vocabulary.covers_ids:
            raise ValueError(f"the label-image teacher maps raw label ids through the vocabulary, but vocabulary "
                             f"{vocabulary.name!r} lists no 'ids'; add each class's raw ids")

    def class_images(self, cameras: list[Camera]) -> list[np.ndarray]:
        images = []
        for camera in cameras:
            if camera.label_image is None and not self.strict:
                images.append(np.full((camera.height, camera.width), IGNORE, np.int64))
                continue
            if camera.label_image is None:
                raise ValueError(f"camera {camera.name!r} has no label image for the label-image teacher; record "
                                 f"the 2D segmenter's output at <camera namespace>/{self.topic} (mono8/mono16/32SC1, "
                                 f"same stamp as the image)")
            images.append(self.vocabulary.raw_to_class(camera.label_image))
        return images

    def predict(self, cameras: list[Camera]) -> TeacherOutput:
        return LabelImageOutput(self.class_images(cameras), self.text_embeddings)


# Classes CLIP confuses with each other, by name (for the noisy teacher); names not listed are
# confused with any other class of the vocabulary.
CONFUSION_GROUPS = [
    {"car", "truck", "bus", "trailer", "construction_vehicle", "other-vehicle", "van"},
    {"pedestrian", "person", "bicyclist", "motorcyclist", "bicycle", "motorcycle"},
    {"driveable_surface", "road", "sidewalk", "other_flat", "parking", "other-ground", "terrain"},
    {"manmade", "building", "fence", "wall", "pole", "traffic-sign", "barrier", "traffic_cone"},
    {"vegetation", "trunk", "terrain", "tree"},
]


def confusable(vocabulary: Vocabulary) -> list[np.ndarray]:
    """For each class index, the class indices it is confused with."""
    names = vocabulary.names
    partners = []
    for index, name in enumerate(names):
        group = set().union(*[g for g in CONFUSION_GROUPS if name in g]) - {name}
        found = sorted(names.index(other) for other in group if other in names)  # sets have no stable order
        partners.append(np.array(found or [i for i in range(len(names)) if i != index], dtype=np.int64))
    return partners


class NoisyTeacher(Teacher):
    """Wraps a label-image teacher and corrupts about `rate` of the labelled pixels of every image:
    whole classes swapped for a similar class (CLIP's systematic confusions), blobs of a wrong class,
    and noise along class boundaries, in equal parts. Deterministic per (seed, camera, stamp)."""

    name = "noisy"

    def __init__(self, base: LabelImageTeacher, rate: float, seed: int = 0):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"noise rate must be in [0, 1], got {rate}")
        self.base, self.rate, self.seed = base, rate, seed
        super().__init__(base.vocabulary, base.text_encoder)

    def set_vocabulary(self, vocabulary: Vocabulary) -> None:
        super().set_vocabulary(vocabulary)
        if hasattr(self, "base"):
            self.base.set_vocabulary(vocabulary)
        self.partners = confusable(vocabulary)

    @property
    def identity(self) -> str:
        return f"noisy:{self.rate}:{self.seed}|{self.text_encoder.identity}"

    def predict(self, cameras: list[Camera]) -> TeacherOutput:
        images = [self.corrupt(image, camera) for image, camera in zip(self.base.class_images(cameras), cameras)]
        return LabelImageOutput(images, self.text_embeddings)

    def _rng(self, camera: Camera) -> np.random.Generator:
        digest = hashlib.sha256(f"{self.seed}/{camera.name}/{camera.stamp_ns}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def corrupt(self, classes: np.ndarray, camera: Camera) -> np.ndarray:
        """A corrupted copy of a class-index image (IGNORE pixels stay IGNORE)."""
        if self.rate == 0:
            return classes
        rng = self._rng(camera)
        noisy = classes.copy()
        labelled = classes != IGNORE
        budget = self.rate / 3 * labelled.sum()
        self._swap_classes(noisy, classes, labelled, budget, rng)
        self._blobs(noisy, classes, labelled, budget, rng)
        self._boundaries(noisy, classes, labelled, budget, rng)
        return noisy

    def _wrong(self, label: int, rng: np.random.Generator) -> int:
        return int(rng.choice(self.partners[label]))

    def _swap_classes(self, noisy, classes, labelled, budget, rng) -> None:
        present, counts = np.unique(classes[labelled], return_counts=True)
        swapped = 0
        for index in rng.permutation(len(present)):
            if swapped + counts[index] > 1.5 * budget or len(self.partners[present[index]]) == 0:
                continue
            noisy[classes == present[index]] = self._wrong(int(present[index]), rng)
            swapped += counts[index]
            if swapped >= budget:
                break

    def _blobs(self, noisy, classes, labelled, budget, rng) -> None:
        height, width = classes.shape
        rows, cols = np.mgrid[0:height, 0:width]
        covered = 0
        for _ in range(200):
            if covered >= budget:
                break
            r, c = rng.integers(0, height), rng.integers(0, width)
            if not labelled[r, c]:
                continue
            radius_r, radius_c = rng.uniform(0.03, 0.12) * height, rng.uniform(0.03, 0.12) * width
            blob = (((rows - r) / radius_r) ** 2 + ((cols - c) / radius_c) ** 2 <= 1) & labelled
            noisy[blob] = self._wrong(int(classes[r, c]), rng)
            covered += blob.sum()

    def _boundaries(self, noisy, classes, labelled, budget, rng) -> None:
        # Pixels next to another class take that neighbour's label: CLIP's coarse 16-pixel patches blur edges.
        padded = torch.from_numpy(classes)[None, None].float()
        neighbour = -F.max_pool2d(-padded, 5, stride=1, padding=2)[0, 0].long().numpy()  # the smallest nearby id
        other = F.max_pool2d(padded, 5, stride=1, padding=2)[0, 0].long().numpy()          # the largest nearby id
        replacement = np.where(neighbour != classes, neighbour, other)
        edge = labelled & (replacement != classes) & (replacement != IGNORE)
        candidates = np.flatnonzero(edge)
        if len(candidates):
            chosen = rng.choice(candidates, size=min(len(candidates), int(budget)), replace=False)
            noisy.ravel()[chosen] = replacement.ravel()[chosen]
