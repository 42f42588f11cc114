"""The MaskCLIP teacher: CLIP's dense image features against the vocabulary's text embeddings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..frame import Camera
from ..vocabulary import Vocabulary
from .base import PixelPredictions, Teacher, TeacherOutput
from .clip_model import ClipConfig, DenseClipEncoder, load_clip
from .text import ClipTextEncoder


@dataclass
class _CropGeometry:
    """How an original image maps onto the network's input: crop = original * scale - offset (pixels)."""

    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float
    width: int    # original image size
    height: int

    def to_grid(self, uv: torch.Tensor, crop_size: tuple[int, int]) -> torch.Tensor:
        """Original pixel coordinates (N, 2) -> grid_sample coordinates in [-1, 1] over the crop."""
        crop_h, crop_w = crop_size
        u = (uv[:, 0] + 0.5) * self.scale_x - self.offset_x
        v = (uv[:, 1] + 0.5) * self.scale_y - self.offset_y
        return torch.stack([2 * u / crop_w - 1, 2 * v / crop_h - 1], dim=1)


def crop_geometry(width: int, height: int, crop_size: tuple[int, int], mode: str) -> _CropGeometry:
    crop_h, crop_w = crop_size
    if mode == "stretch":
        return _CropGeometry(crop_w / width, crop_h / height, 0.0, 0.0, width, height)
    scale = max(crop_h / height, crop_w / width)
    return _CropGeometry(scale, scale, (width * scale - crop_w) / 2, (height * scale - crop_h) / 2, width, height)


def preprocess(images: list[np.ndarray], crop_size: tuple[int, int], mode: str, mean: np.ndarray, std: np.ndarray,
               device) -> tuple[torch.Tensor, list[_CropGeometry]]:
    """RGB uint8 images -> (B, 3, h, w) normalised network input, and each image's crop geometry."""
    batch, geometries = [], []
    crop_h, crop_w = crop_size
    for image in images:
        height, width = image.shape[:2]
        geometry = crop_geometry(width, height, crop_size, mode)
        tensor = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None].float() / 255.0
        size = (crop_h, crop_w) if mode == "stretch" else (round(height * geometry.scale_y),
                                                           round(width * geometry.scale_x))
        tensor = F.interpolate(tensor, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top, left = int(round(geometry.offset_y)), int(round(geometry.offset_x))
        batch.append(tensor[:, :, top:top + crop_h, left:left + crop_w])
        geometries.append(geometry)
    x = torch.cat(batch)
    mean_t = torch.as_tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, device=device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t, geometries


class DenseOutput(TeacherOutput):
    """Feature grids (B, D, gh, gw) over the crops; queried by bilinear sampling at original pixels."""

    def __init__(self, features: torch.Tensor, geometries: list[_CropGeometry], crop_size: tuple[int, int],
                 text_embeddings: torch.Tensor, logit_scale: float, pool: Callable[[], torch.Tensor] | None = None):
        self.features = features
        self.pool = pool   # computes the (K, D) image embeddings on demand: only the global alignment needs them
        self.geometries = geometries
        self.crop_size = crop_size
        self.text_embeddings = text_embeddings.to(features.device, features.dtype)
        self.logit_scale = logit_scale

    def _sample(self, values: torch.Tensor, camera_index: int, uv) -> tuple[torch.Tensor, torch.Tensor]:
        """Bilinear samples (N, channels) of one camera's grid values (channels, gh, gw) at original pixels
        uv, and whether each pixel lies inside the crop."""
        uv = torch.as_tensor(np.asarray(uv, dtype=np.float32), device=values.device)
        grid = self.geometries[camera_index].to_grid(uv, self.crop_size)
        inside = (grid.abs() <= 1).all(dim=1)
        sampled = F.grid_sample(values[None], grid[None, None].to(values.dtype), mode="bilinear",
                                padding_mode="border", align_corners=False)
        return sampled[0, :, 0].T, inside

    def _classify(self, features: torch.Tensor):
        probabilities = torch.softmax(self.logit_scale * features.float() @ self.text_embeddings.float().T, dim=1)
        confidence, labels = probabilities.max(dim=1)
        return labels, confidence

    def at(self, camera_index: int, uv: np.ndarray) -> PixelPredictions:
        features, inside = self._sample(self.features[camera_index], camera_index, uv)
        features = F.normalize(features.float(), dim=1)
        labels, confidence = self._classify(features)
        labels = torch.where(inside, labels, torch.full_like(labels, -1))
        confidence = torch.where(inside, confidence, torch.zeros_like(confidence))
        return PixelPredictions(features * inside[:, None], labels, confidence)

    def image_embeddings(self) -> torch.Tensor:
        if self.pool is None:
            raise ValueError("this DenseOutput was built without its image tokens: no image embeddings")
        return F.normalize(self.pool().float(), dim=1)

    def label_image(self, camera_index: int) -> np.ndarray:
        geometry = self.geometries[camera_index]
        logits = torch.einsum("dhw,cd->chw", self.features[camera_index].float(), self.text_embeddings.float())
        rows, cols = np.mgrid[0:geometry.height, 0:geometry.width]
        uv = np.stack([cols.ravel(), rows.ravel()], axis=1)
        sampled, inside = self._sample(logits, camera_index, uv)
        labels = sampled.argmax(dim=1)
        labels = torch.where(inside, labels, torch.full_like(labels, -1))
        return labels.cpu().numpy().reshape(geometry.height, geometry.width)


class MaskClipTeacher(Teacher):
    """MaskCLIP dense features from a frozen CLIP image tower (see clip_model.DenseClipEncoder)."""

    name = "maskclip"

    def __init__(self, vocabulary: Vocabulary, config: ClipConfig | None = None, device: str | torch.device = "cpu",
                 text_cache_dir=None, camera_batch: int = 6):
        self.config = config or ClipConfig()
        self.device = torch.device(device)
        model, self.mean, self.std = load_clip(self.config, self.device)
        half = self.config.precision == "fp16" or (self.config.precision == "auto" and self.device.type == "cuda")
        self.dtype = torch.float16 if half else torch.float32
        self.encoder = DenseClipEncoder(model.visual, self.config.value_path).to(self.device, self.dtype)
        self.logit_scale = float(model.logit_scale.exp())
        self.camera_batch = camera_batch
        super().__init__(vocabulary, ClipTextEncoder(model, self.config.model, self.config.weights_id,
                                                     cache_dir=text_cache_dir))

    @torch.no_grad()
    def predict(self, cameras: list[Camera]) -> DenseOutput:
        chunks, tokens, geometries = [], [], []
        for start in range(0, len(cameras), self.camera_batch):
            images = [camera.image for camera in cameras[start:start + self.camera_batch]]
            x, geometry = preprocess(images, self.config.image_size, self.config.resize, self.mean, self.std,
                                     self.device)
            x, grid = self.encoder.tokens(x.to(self.dtype))
            chunks.append(self.encoder.dense(x, grid))
            tokens.append(x)
            geometries += geometry
        return DenseOutput(torch.cat(chunks), geometries, self.config.image_size, self.text_embeddings,
                           self.logit_scale, lambda: self._pool(tokens))

    @torch.no_grad()
    def _pool(self, tokens: list[torch.Tensor]) -> torch.Tensor:
        """The image embeddings of a prediction's cameras from its kept tokens (one last block's pass)."""
        return torch.cat([self.encoder.pool(x) for x in tokens])
