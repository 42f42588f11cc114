"""The student: a sparse-convolution U-Net over voxels (MinkUNet-style) mapping every LiDAR point into
the teacher's text space. One class for pretraining, evaluation, fine-tuning and the ROS node.

Two heads, as CLIP2Scene found necessary: `semantic` (the zero-shot features, compared with text
embeddings) and `local` (the spatial-temporal consistency features). Zero-shot label of a point =
argmax over classes of cos(semantic feature, class text embedding).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import numpy as np
import spconv.pytorch as spconv
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from ..errors import UsageError
from ..geometry import voxelize
from .head import HeadFeatures
from .sparse import DownConv, SparseVoxels, SubMConv, UpConv

# Channels: stem, four encoder stages, four decoder stages. "paper" is the released CLIP2Scene
# backbone's widths (MinkUNet/SPVCNN: 32, 32, 64, 128, 256, 256, 128, 96, 96, two blocks per stage).
PRESETS = {
    "tiny": ((8, 8, 16, 16, 32, 32, 16, 16, 16), 1),
    "small": ((16, 16, 32, 64, 128, 128, 64, 48, 48), 1),
    "paper": ((32, 32, 64, 128, 256, 256, 128, 96, 96), 2),
}
INPUT_CHANNELS = 5  # point offset in its voxel (3), height, intensity


@dataclass
class StudentConfig:
    """preset: tiny (tests), small (CPU), paper (CLIP2Scene's widths); channels/blocks override it.
    voxel_size_m: 0.1 outdoors, 0.05 indoors. embed_dim: the text space's dimension (set by training)."""

    preset: str = "small"
    channels: tuple[int, ...] | None = None
    blocks: int | None = None
    voxel_size_m: float = 0.1
    embed_dim: int = 512

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"student.preset must be one of {list(PRESETS)}, got {self.preset!r}")
        if self.channels is not None and len(self.channels) != 9:
            raise ValueError(f"student.channels needs 9 values (stem, 4 encoder, 4 decoder), got {len(self.channels)}")
        if not self.voxel_size_m > 0:  # NaN fails too
            raise ValueError(f"student.voxel_size_m must be positive, got {self.voxel_size_m}")
        for key in ("blocks", "embed_dim"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ValueError(f"student.{key} must be at least 1, got {getattr(self, key)}")
        if self.channels is not None and min(self.channels) < 1:
            raise ValueError(f"student.channels must all be at least 1, got {list(self.channels)}")
        if self.channels is not None:
            self.channels = tuple(int(c) for c in self.channels)

    @property
    def resolved(self) -> tuple[tuple[int, ...], int]:
        channels, blocks = PRESETS[self.preset]
        return tuple(self.channels or channels), int(self.blocks or blocks)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["channels"] = list(self.resolved[0])
        data["blocks"] = self.resolved[1]
        return data


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes, differentiable: the gradient of a sum is the sum of the gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, gradient: torch.Tensor) -> torch.Tensor:
        gradient = gradient.clone()
        dist.all_reduce(gradient)
        return gradient


class SparseBatchNorm(nn.BatchNorm1d):
    """BatchNorm over voxel features; statistics are summed over all processes when training
    distributed, so N processes compute exactly what one process would on their joint batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        count = torch.tensor([float(len(x))], dtype=x.dtype, device=x.device)
        stats = _AllReduceSum.apply(torch.cat([x.sum(0), (x * x).sum(0), count]))
        channels = x.shape[1]
        total = stats[-1]
        mean = stats[:channels] / total
        var = stats[channels:2 * channels] / total - mean * mean
        with torch.no_grad():
            self.num_batches_tracked += 1
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
            unbiased = var.detach() * total / max(float(total) - 1, 1.0)
            self.running_var.mul_(1 - momentum).add_(momentum * unbiased)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


def _conv_bn_relu(conv: nn.Module, bn: nn.BatchNorm1d, x, residual: torch.Tensor | None = None):
    """relu(bn(conv(x)) [+ residual]). On the CPU path at inference (no autograd, BatchNorm on its running
    statistics), BatchNorm is folded into the convolution's weight and starting values and ReLU runs in place."""
    if isinstance(x, SparseVoxels) and not torch.is_grad_enabled() and not bn.training:
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        y = conv(x, affine=(scale, bn.bias - bn.running_mean * scale), residual=residual)
        y.features.relu_()
        return y
    y = conv(x)
    normalized = bn(y.features)
    return y.replace_feature(F.relu(normalized if residual is None else normalized + residual))


class ResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, key: str):
        super().__init__()
        self.conv1, self.bn1 = SubMConv(c_in, c_out, 3, key), SparseBatchNorm(c_out)
        self.conv2, self.bn2 = SubMConv(c_out, c_out, 3, key), SparseBatchNorm(c_out)
        # A 1x1x1 convolution is a per-voxel linear map. (spconv's own 1x1 path reads its weight in another
        # layout than its other kernels, so a checkpoint would not move between CPU and GPU through it.)
        self.skip = None if c_in == c_out else nn.Linear(c_in, c_out, bias=False)
        self.skip_bn = None if c_in == c_out else SparseBatchNorm(c_out)

    def forward(self, x):
        y = _conv_bn_relu(self.conv1, self.bn1, x)
        shortcut = x.features if self.skip is None else self.skip_bn(self.skip(x.features))
        return _conv_bn_relu(self.conv2, self.bn2, y, shortcut)


class Stage(nn.Module):
    def __init__(self, c_in: int, c_out: int, blocks: int, key: str):
        super().__init__()
        self.blocks = nn.ModuleList([ResidualBlock(c_in if i == 0 else c_out, c_out, key) for i in range(blocks)])

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def _recomputing_keeps_running_stats(stage: nn.Module):
    """checkpoint's context_fn: the forward run again in backward must not count its batch a second time in
    BatchNorm's running statistics."""
    norms = [module for module in stage.modules() if isinstance(module, nn.BatchNorm1d)]

    @contextlib.contextmanager
    def recompute():
        saved = [{name: buffer.clone() for name, buffer in norm.named_buffers()} for norm in norms]
        try:
            yield
        finally:  # also when checkpoint stops the recomputation early (by an exception)
            with torch.no_grad():
                for norm, buffers in zip(norms, saved):
                    for name, buffer in norm.named_buffers():
                        buffer.copy_(buffers[name])

    return contextlib.nullcontext(), recompute()


@dataclass
class VoxelBatch:
    """Scans voxelised for the network.

    coords: (V, 4) int64 (scan, x, y, z); features: (V, INPUT_CHANNELS) float32;
    point_to_voxel: (P,) int64 for the points of all scans, concatenated in scan order;
    points_per_scan: list of P_b.
    """

    coords: torch.Tensor
    features: torch.Tensor
    point_to_voxel: torch.Tensor
    points_per_scan: list[int]

    def to(self, device) -> VoxelBatch:
        return VoxelBatch(self.coords.to(device), self.features.to(device), self.point_to_voxel.to(device),
                          self.points_per_scan)


def point_inputs(points: np.ndarray, intensity: np.ndarray | None) -> np.ndarray:
    """(N, 2) per-point height (m / 5) and intensity scaled to about [0, 1] (0-255 sensors are divided)."""
    if intensity is None:
        intensity = np.zeros(len(points), np.float32)
    intensity = np.asarray(intensity, np.float32)
    if len(intensity) and np.nanmax(intensity) > 1.5:
        intensity = intensity / 255.0
    return np.stack([points[:, 2] / 5.0, np.clip(np.nan_to_num(intensity), 0, 1)], axis=1).astype(np.float32)


def make_batch(scans: list[tuple[np.ndarray, np.ndarray | None]], voxel_size_m: float) -> VoxelBatch:
    """scans: (points (N, 3) float32, intensity (N,) or None) per scan -> one VoxelBatch."""
    coords, features, point_to_voxel, counts = [], [], [], []
    offset = 0
    for index, (points, intensity) in enumerate(scans):
        voxels = voxelize(points, voxel_size_m)
        centres = (voxels.coords[voxels.point_to_voxel].double() + 0.5) * voxel_size_m + torch.from_numpy(voxels.origin)
        relative = (torch.from_numpy(points).double() - centres) / voxel_size_m
        per_point = torch.cat([relative.float(), torch.from_numpy(point_inputs(points, intensity))], dim=1)
        summed = torch.zeros(len(voxels), INPUT_CHANNELS).index_add_(0, voxels.point_to_voxel, per_point)
        features.append(summed / voxels.counts[:, None].float())
        coords.append(torch.cat([torch.full((len(voxels), 1), index), voxels.coords.long()], dim=1))
        point_to_voxel.append(voxels.point_to_voxel + offset)
        counts.append(len(points))
        offset += len(voxels)
    return VoxelBatch(torch.cat(coords), torch.cat(features), torch.cat(point_to_voxel), counts)


class Student(nn.Module):
    """forward(batch) -> (semantic, local) point features, each (P, embed_dim)."""

    def __init__(self, config: StudentConfig):
        super().__init__()
        self.config = config
        (c0, e1, e2, e3, e4, d1, d2, d3, d4), blocks = config.resolved
        self.stem = nn.ModuleList([SubMConv(INPUT_CHANNELS, c0, 3, "s0"), SubMConv(c0, c0, 3, "s0")])
        self.stem_bn = nn.ModuleList([SparseBatchNorm(c0), SparseBatchNorm(c0)])
        encoder = [c0, e1, e2, e3, e4]
        self.down = nn.ModuleList([DownConv(encoder[i], encoder[i], f"d{i}") for i in range(4)])
        self.down_bn = nn.ModuleList([SparseBatchNorm(encoder[i]) for i in range(4)])
        self.encoder = nn.ModuleList([Stage(encoder[i], encoder[i + 1], blocks, f"s{i + 1}") for i in range(4)])
        decoder_in = [e4, d1, d2, d3]
        decoder_out = [d1, d2, d3, d4]
        skips = [e3, e2, e1, c0]
        self.up = nn.ModuleList([UpConv(decoder_in[j], decoder_out[j], f"d{3 - j}") for j in range(4)])
        self.up_bn = nn.ModuleList([SparseBatchNorm(decoder_out[j]) for j in range(4)])
        self.decoder = nn.ModuleList([Stage(decoder_out[j] + skips[j], decoder_out[j], blocks, f"s{3 - j}")
                                      for j in range(4)])
        self.semantic_head = nn.Linear(d4, config.embed_dim)
        self.local_head = nn.Linear(d4, config.embed_dim)
        self.text_embeddings: torch.Tensor | None = None  # (C, D) for zero-shot prediction; not a parameter
        # Activation checkpointing per U-Net stage when training (TrainConfig.checkpoint_stages): a stage's
        # activations are recomputed in backward instead of kept; same gradients, less memory, more time.
        self.checkpoint_stages = False

    def _sparse_input(self, batch: VoxelBatch, backend: str | None):
        if (backend or ("spconv" if batch.features.is_cuda else "cpu")) == "spconv":
            # spconv's fast path; the spatial shape must halve four times without cutting sites.
            shape = ((batch.coords[:, 1:].max(dim=0).values + 1 + 15) // 16 * 16).tolist()
            batch_size = int(batch.coords[:, 0].max()) + 1
            return spconv.SparseConvTensor(batch.features, batch.coords.int(), shape, batch_size)
        return SparseVoxels(batch.features, batch.coords, int(batch.coords[:, 0].max()) + 1)

    def voxel_features(self, batch: VoxelBatch, backend: str | None = None) -> torch.Tensor:
        """(V, d4) decoder features of the voxels, in batch.coords order. backend: "spconv" (default on
        CUDA) or "cpu" (the kernels of sparse.py; default on CPU)."""
        x = self._sparse_input(batch, backend)
        for conv, bn in zip(self.stem, self.stem_bn):
            x = _conv_bn_relu(conv, bn, x)
        skips = []
        for down, bn, stage in zip(self.down, self.down_bn, self.encoder):
            skips.append(x)
            x = self._stage(stage, _conv_bn_relu(down, bn, x))
        for up, bn, stage, skip in zip(self.up, self.up_bn, self.decoder, reversed(skips)):
            x = _conv_bn_relu(up, bn, x)
            x = self._stage(stage, x.replace_feature(torch.cat([x.features, skip.features], dim=1)))
        return x.features

    def _stage(self, stage: Stage, x):
        if not (self.checkpoint_stages and torch.is_grad_enabled() and isinstance(x, SparseVoxels)):
            return stage(x)
        return torch.utils.checkpoint.checkpoint(stage, x, use_reentrant=False,
                                                 context_fn=lambda: _recomputing_keeps_running_stats(stage))

    def head_features(self, batch: VoxelBatch, points: torch.Tensor | None = None,
                      normalize: bool = True) -> tuple[HeadFeatures, HeadFeatures]:
        """(semantic, local) features of the points, factored (head.py: no (points, embed_dim) matrix is built).
        points: optional (M,) indices of the points wanted (default all); training asks only for the points its
        losses use. normalize: L2-normalise the semantic features (the local ones always are)."""
        voxel_of_point = batch.point_to_voxel if points is None else batch.point_to_voxel[points]
        # index_select, not [] indexing: its backward is a deterministic index_add on CPU, where the
        # backward of advanced indexing accumulates with atomics in a thread-dependent order.
        features = self.voxel_features(batch).index_select(0, voxel_of_point)
        return (HeadFeatures.from_linear(features, self.semantic_head, normalize),
                HeadFeatures.from_linear(features, self.local_head, True))

    def forward(self, batch: VoxelBatch, points: torch.Tensor | None = None,
                normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(semantic, local) point features, each (M, embed_dim): head_features() built out."""
        semantic, local = self.head_features(batch, points, normalize)
        return semantic.dense(), local.dense()

    def set_text_embeddings(self, embeddings: torch.Tensor) -> None:
        if embeddings.shape[1] != self.config.embed_dim:
            raise UsageError(f"text embeddings have {embeddings.shape[1]} dimensions, the student's head "
                             f"{self.config.embed_dim}: they come from another text encoder")
        self.text_embeddings = embeddings.float()


@torch.no_grad()
def recalibrate_batchnorm(network: nn.Module, batches: list[VoxelBatch]) -> None:
    """Set every BatchNorm's running statistics to their exact average over `batches` (precise BN).

    Running averages with momentum trail the weights: after a short or fast run they describe a network
    from many steps ago, and the evaluated network (which uses them) is not the trained one.
    """
    norms = [module for module in network.modules() if isinstance(module, nn.BatchNorm1d)]
    if not batches or not norms:
        return
    momenta = [module.momentum for module in norms]
    training = network.training
    for module in norms:
        module.reset_running_stats()
        module.momentum = None  # a cumulative average
    network.train()
    for batch in batches:
        network.voxel_features(batch)
    for module, momentum in zip(norms, momenta):
        module.momentum = momentum
    network.train(training)


class Classifier(nn.Module):
    """logits = scale * (W normalised-feature + b), W initialised from the class text embeddings (fine-tuning)."""

    def __init__(self, text_embeddings: torch.Tensor, scale: float = 10.0):
        super().__init__()
        self.classes: list[str] = []
        self.weight = nn.Parameter(text_embeddings.clone().float())
        self.bias = nn.Parameter(torch.zeros(len(text_embeddings)))
        self.scale = scale

    def forward(self, features: torch.Tensor | HeadFeatures) -> torch.Tensor:
        products = features.dot(self.weight) if isinstance(features, HeadFeatures) else features @ self.weight.T
        return self.scale * (products + self.bias)
