"""Teachers from per-pixel class-id images: any 2D segmenter's output, and a noisy version of it.

The label-image teacher maps each camera's `label_image` (raw ids of the segmenter or dataset)
through the vocabulary; its pixel features are the class text embeddings. The noisy teacher
corrupts those labels the way CLIP errs, at a set rate, seeded, for experiments where the truth
is known (the synthetic world), and gives pixel features that behave like MaskCLIP's (SoftLabelOutput).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UsageError
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

    def image_embeddings(self) -> torch.Tensor:
        """Each view's mean pixel feature over a grid every POOL_STRIDE pixels, normalised: a class mix weighted
        by area, as CLIP's image embedding roughly is (zero for a view without a labelled pixel)."""
        embeddings = []
        for index, image in enumerate(self.class_images):
            start = POOL_STRIDE // 2
            rows, cols = np.mgrid[start:image.shape[0]:POOL_STRIDE, start:image.shape[1]:POOL_STRIDE]
            uv = np.stack([cols.ravel(), rows.ravel()], axis=1).astype(np.float32)
            embeddings.append(self.at(index, uv).features.sum(0))
        return F.normalize(torch.stack(embeddings), dim=1)


# The noisy teacher's pixel feature, before normalisation: its label's text embedding, the true class's
# where the label is wrong (CLIP's second guess is often the right one), the mean of the label's
# confusable classes, and a smooth random direction (MaskCLIP's errors come in patches).
LABEL_WEIGHT, TRUTH_WEIGHT, CONFUSABLE_WEIGHT, NOISE_WEIGHT = 1.0, 0.5, 0.3, 1.0
NOISE_GRID = (7, 13)        # rows, columns of the noise field over an image (224x416 crops in 32-pixel cells)
LOGIT_SCALE = 100.0         # CLIP's: the confidence is the softmax at that scale, as MaskCLIP's
POOL_STRIDE = 8             # pixels between the samples an image-level embedding is pooled from


class SoftLabelOutput(LabelImageOutput):
    """Noisy class images with MaskCLIP-like pixel features: a noisy point near the label's text embedding,
    pulled towards the true class where the label is wrong and towards the classes confusable with it,
    the noise spatially smooth (bilinear over a coarse random field per image)."""

    def __init__(self, class_images: list[np.ndarray], true_images: list[np.ndarray], noise: list[torch.Tensor],
                 text_embeddings: torch.Tensor, confusable_mean: torch.Tensor):
        super().__init__(class_images, text_embeddings)
        self.true_images, self.noise, self.confusable_mean = true_images, noise, confusable_mean

    def at(self, camera_index: int, uv: np.ndarray) -> PixelPredictions:
        image = self.class_images[camera_index]
        height, width = image.shape
        cols = np.clip(np.floor(uv[:, 0] + 0.5).astype(np.int64), 0, width - 1)
        rows = np.clip(np.floor(uv[:, 1] + 0.5).astype(np.int64), 0, height - 1)
        labels = torch.from_numpy(image[rows, cols])
        truth = torch.from_numpy(self.true_images[camera_index][rows, cols])
        known = labels != IGNORE
        label, true = labels.clamp(min=0), truth.clamp(min=0)
        grid = torch.from_numpy(np.stack([(uv[:, 0] + 0.5) / width * 2 - 1, (uv[:, 1] + 0.5) / height * 2 - 1],
                                         axis=1).astype(np.float32))
        noise = F.grid_sample(self.noise[camera_index][None], grid[None, None], mode="bilinear",
                              padding_mode="border", align_corners=False)[0, :, 0].T
        text = self.text_embeddings
        features = LABEL_WEIGHT * text[label] + CONFUSABLE_WEIGHT * self.confusable_mean[label] + \
            TRUTH_WEIGHT * text[true] * (truth != labels)[:, None] + NOISE_WEIGHT * F.normalize(noise, dim=1)
        features = F.normalize(features, dim=1) * known[:, None]
        confidence = torch.softmax(LOGIT_SCALE * features @ text.T, dim=1).gather(1, label[:, None])[:, 0]
        return PixelPredictions(features, labels, confidence * known)


class LabelImageTeacher(Teacher):
    """Pseudo labels from each camera's label_image (raw ids, mapped through the vocabulary's ids)."""

    name = "labels"

    def __init__(self, vocabulary: Vocabulary, text_encoder: TextEncoder, topic: str = "labels", strict: bool = True):
        self.topic, self.strict = topic, strict
        super().__init__(vocabulary, text_encoder)
        if not vocabulary.covers_ids:
            raise UsageError(f"the label-image teacher maps raw label ids through the vocabulary, but vocabulary "
                             f"{vocabulary.name!r} lists no 'ids'; add each class's raw ids")

    def class_images(self, cameras: list[Camera]) -> list[np.ndarray]:
        images = []
        for camera in cameras:
            if camera.label_image is None and not self.strict:
                images.append(np.full((camera.height, camera.width), IGNORE, np.int64))
                continue
            if camera.label_image is None:
                raise UsageError(f"camera {camera.name!r} has no label image for the label-image teacher; record "
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
            raise UsageError(f"noise rate must be in [0, 1], got {rate}")
        self.base, self.rate, self.seed = base, rate, seed
        super().__init__(base.vocabulary, base.text_encoder)

    def set_vocabulary(self, vocabulary: Vocabulary) -> None:
        super().set_vocabulary(vocabulary)
        if hasattr(self, "base"):
            self.base.set_vocabulary(vocabulary)
        self.partners = confusable(vocabulary)
        self.confusable_mean = F.normalize(torch.stack([
            self.text_embeddings[torch.from_numpy(p)].mean(0) if len(p) else torch.zeros(self.text_embeddings.shape[1])
            for p in self.partners]), dim=1)

    @property
    def identity(self) -> str:
        return f"noisy:{self.rate}:{self.seed}|{self.text_encoder.identity}"

    def predict(self, cameras: list[Camera]) -> TeacherOutput:
        truth = self.base.class_images(cameras)
        images = [self.corrupt(image, camera) for image, camera in zip(truth, cameras)]
        dimensions = self.text_embeddings.shape[1]
        noise = [torch.from_numpy(self._rng(camera, "noise").standard_normal((dimensions, *NOISE_GRID),
                                                                             dtype=np.float32)) for camera in cameras]
        return SoftLabelOutput(images, truth, noise, self.text_embeddings, self.confusable_mean)

    def _rng(self, camera: Camera, purpose: str = "") -> np.random.Generator:
        digest = hashlib.sha256(f"{self.seed}/{camera.name}/{camera.stamp_ns}{purpose}".encode()).digest()
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
