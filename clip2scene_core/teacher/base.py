"""The teacher interface: camera images in, per-pixel features, pseudo labels and confidence out;
and the training-free step that carries those predictions onto LiDAR points."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from ..frame import Camera
from ..geometry import project
from ..vocabulary import IGNORE, Vocabulary
from .text import TextEncoder


@dataclass
class PixelPredictions:
    """A teacher's predictions at N query pixels of one camera.

    features: (N, D) float32 unit vectors in the text space (zero where labels == IGNORE).
    labels: (N,) int64 class index into the vocabulary, IGNORE (-1) where the teacher has none.
    confidence: (N,) float32 in [0, 1].
    """

    features: torch.Tensor
    labels: torch.Tensor
    confidence: torch.Tensor


class TeacherOutput(ABC):
    """Predictions for one set of camera images, queried at pixels (u = column, v = row)."""

    @abstractmethod
    def at(self, camera_index: int, uv: np.ndarray) -> PixelPredictions: ...

    @abstractmethod
    def label_image(self, camera_index: int) -> np.ndarray:
        """(H, W) int64 pseudo label of every pixel of that camera's image, IGNORE where none."""

    def image_embeddings(self) -> torch.Tensor:
        """(K, D) float32 unit image-level embedding of each of the K cameras' views (CLIP's pooled one); needed
        by the global alignment loss (train.global_weight)."""
        raise NotImplementedError(f"{type(self).__name__} gives no image-level embeddings; train with "
                                  f"train.global_weight 0")


class Teacher(ABC):
    """Turns camera images into predictions over a vocabulary, in a text encoder's embedding space."""

    name: str = ""
    text_encoder: TextEncoder

    def __init__(self, vocabulary: Vocabulary, text_encoder: TextEncoder):
        self.text_encoder = text_encoder
        self.set_vocabulary(vocabulary)

    def set_vocabulary(self, vocabulary: Vocabulary) -> None:
        """Switch classes: (re)computes the (C, D) text embeddings."""
        self.vocabulary = vocabulary
        self.text_embeddings = self.text_encoder.embed(vocabulary).float()

    @abstractmethod
    def predict(self, cameras: list[Camera]) -> TeacherOutput: ...

    @property
    def identity(self) -> str:
        return f"{self.name}|{self.text_encoder.identity}"


@dataclass
class PointPredictions:
    """Teacher predictions carried onto N points.

    labels: (N,) int64 class index, IGNORE for points no camera sees (or the teacher leaves out).
    confidence: (N,) float32, 0 where unlabelled.
    camera: (N,) int64 index of the camera whose prediction was taken, -1 where none.
    features: (N, D) float32 pixel features (zeros where unlabelled) when asked for, else None.
    in_view: (N,) bool, inside some camera's image, labelled or not (the in-view points of evaluation).
    """

    labels: np.ndarray
    confidence: np.ndarray
    camera: np.ndarray
    features: torch.Tensor | None = None
    in_view: np.ndarray | None = None

    @property
    def seen(self) -> np.ndarray:
        return self.camera >= 0


def predict_points(output: TeacherOutput, points: np.ndarray, cameras: list[Camera],
                   with_features: bool = False) -> PointPredictions:
    """Each point takes the prediction at its pixel; where several cameras see it, the most confident."""
    n = len(points)
    labels = np.full(n, IGNORE, dtype=np.int64)
    confidence = np.zeros(n, dtype=np.float32)
    chosen = np.full(n, -1, dtype=np.int64)
    in_view = np.zeros(n, dtype=bool)
    features = None
    for index, camera in enumerate(cameras):
        projection = project(points, camera)
        in_view |= projection.valid
        visible = np.flatnonzero(projection.valid)
        if len(visible) == 0:
            continue
        pixel = output.at(index, projection.uv[visible])
        pixel_labels = pixel.labels.cpu().numpy()
        pixel_confidence = pixel.confidence.float().cpu().numpy()
        better = (pixel_labels != IGNORE) & (pixel_confidence > confidence[visible])
        take = visible[better]
        labels[take] = pixel_labels[better]
        confidence[take] = pixel_confidence[better]
        chosen[take] = index
        if with_features:
            if features is None:
                features = torch.zeros(n, pixel.features.shape[1], dtype=torch.float32)
            features[torch.from_numpy(take)] = pixel.features[torch.from_numpy(better)].float().cpu()
    if with_features and features is None:
        features = torch.zeros(n, 0)
    return PointPredictions(labels, confidence, chosen, features, in_view)
