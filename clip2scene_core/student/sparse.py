"""Sparse 3D convolutions over voxels: spconv on GPU, an exact pure-torch path on CPU.

spconv's CPU build has a racy scatter-add (wrong sums with more than one thread) and every spconv
build fails in backward on a machine without CUDA (ENVIRONMENT.md). So on CPU the same layers run
through rulebooks computed here and gather-matmul-scatter in torch, which is deterministic, takes
any number of threads and has autograd. The weights are spconv's own parameters (layout
(C_out, k, k, k, C_in)) in both paths, so a checkpoint trained on one runs on the other; tests check
both against dense conv3d and against each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import spconv.pytorch as spconv
import torch
import torch.nn as nn


@dataclass
class Rulebook:
    """For each kernel offset k: input rows in_index[k] contribute to output rows out_index[k]."""

    in_index: list[torch.Tensor]
    out_index: list[torch.Tensor]
    num_in: int
    num_out: int


@dataclass
class SparseVoxels:
    """Active voxels with features, for the CPU path.

    features: (N, C); coords: (N, 4) int64 (batch, x, y, z) at the current resolution;
    rulebooks: shared by every tensor derived from the same input, keyed by layer key.
    """

    features: torch.Tensor
    coords: torch.Tensor
    batch_size: int
    rulebooks: dict = field(default_factory=dict)

    def replace_feature(self, features: torch.Tensor) -> SparseVoxels:
        return SparseVoxels(features, self.coords, self.batch_size, self.rulebooks)


def _keys(coords: torch.Tensor, extent: torch.Tensor) -> torch.Tensor:
    """Unique int64 keys of (batch, x, y, z) rows, with a margin of one cell for neighbour lookups."""
    size = extent + 2
    return ((coords[:, 0] * size[0] + coords[:, 1] + 1) * size[1] + coords[:, 2] + 1) * size[2] + coords[:, 3] + 1


def submanifold_rulebook(coords: torch.Tensor, kernel: int) -> Rulebook:
    """Output sites = input sites; offset (a, b, c) links site p to site p + (a, b, c) - kernel // 2."""
    extent = coords[:, 1:].max(dim=0).values + kernel
    keys = _keys(coords, extent)
    order = torch.argsort(keys)
    sorted_keys = keys[order]
    half = kernel // 2
    in_index, out_index = [], []
    for a in range(kernel):
        for b in range(kernel):
            for c in range(kernel):
                shift = torch.tensor([0, a - half, b - half, c - half], device=coords.device)
                query = _keys(coords + shift, extent)
                position = torch.searchsorted(sorted_keys, query).clamp(max=len(keys) - 1)
                found = sorted_keys[position] == query
                in_index.append(order[position[found]])
                out_index.append(torch.nonzero(found).squeeze(1))
    return Rulebook(in_index, out_index, len(coords), len(coords))


def downsample_rulebook(coords: torch.Tensor) -> tuple[torch.Tensor, Rulebook]:
    """Kernel 2, stride 2: site p goes to p // 2 through offset p % 2. Returns (coarse coords, rulebook)."""
    coarse = coords.clone()
    coarse[:, 1:] = torch.div(coords[:, 1:], 2, rounding_mode="floor")
    # Unique rows through one int64 key per row (torch.unique over rows is far slower).
    extent = coarse.max(dim=0).values + 1
    keys = ((coarse[:, 0] * extent[1] + coarse[:, 1]) * extent[2] + coarse[:, 2]) * extent[3] + coarse[:, 3]
    _, inverse = torch.unique(keys, return_inverse=True)
    unique = coarse.new_empty(int(inverse.max()) + 1, 4)
    unique[inverse] = coarse
    remainder = coords[:, 1:] - 2 * coarse[:, 1:]
    offset = remainder[:, 0] * 4 + remainder[:, 1] * 2 + remainder[:, 2]
    in_index, out_index = [], []
    for k in range(8):
        rows = torch.nonzero(offset == k).squeeze(1)
        in_index.append(rows)
        out_index.append(inverse[rows])
    return unique, Rulebook(in_index, out_index, len(coords), len(unique))


def _apply(features: torch.Tensor, weight: torch.Tensor, rulebook: Rulebook, transpose: bool = False) -> torch.Tensor:
    """Gather-matmul-scatter. weight: spconv layout (C_out, k, k, k, C_in)."""
    c_out = weight.shape[0]
    per_offset = weight.reshape(c_out, -1, weight.shape[-1]).permute(1, 2, 0)  # (K, C_in, C_out)
    if transpose:
        sources, targets, size = rulebook.out_index, rulebook.in_index, rulebook.num_in
    else:
        sources, targets, size = rulebook.in_index, rulebook.out_index, rulebook.num_out
    # One gather and one scatter for all offsets (and so one of each in backward), with a matmul per
    # offset on slices between them: far cheaper than gathering and scattering offset by offset.
    used = [k for k, source in enumerate(sources) if len(source)]
    out = features.new_zeros(size, c_out)
    if not used:
        return out + 0 * per_offset.sum()  # keep the weight in the graph
    gathered = features.index_select(0, torch.cat([sources[k] for k in used]))
    products = torch.cat([part @ per_offset[k] for k, part in
                          zip(used, torch.split(gathered, [len(sources[k]) for k in used]))])
    return out.index_add_(0, torch.cat([targets[k] for k in used]), products)


class SubMConv(nn.Module):
    """Submanifold convolution (outputs only at active sites), kernel k, stride 1."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, key: str = "subm"):
        super().__init__()
        self.kernel, self.key = kernel, key
        self.conv = spconv.SubMConv3d(c_in, c_out, kernel, bias=False, indice_key=key)

    def forward(self, x):
        if isinstance(x, spconv.SparseConvTensor):
            return self.conv(x)
        name = f"subm{self.kernel}:{len(x.coords)}:{self.key}"
        if name not in x.rulebooks:
            x.rulebooks[name] = submanifold_rulebook(x.coords, self.kernel)
        return x.replace_feature(_apply(x.features, self.conv.weight, x.rulebooks[name]))


class DownConv(nn.Module):
    """Kernel 2, stride 2 sparse convolution; its key lets the matching UpConv invert it."""

    def __init__(self, c_in: int, c_out: int, key: str):
        super().__init__()
        self.key = key
        self.conv = spconv.SparseConv3d(c_in, c_out, 2, stride=2, bias=False, indice_key=key)

    def forward(self, x):
        if isinstance(x, spconv.SparseConvTensor):
            return self.conv(x)
        coarse, rulebook = downsample_rulebook(x.coords)
        x.rulebooks[f"down:{self.key}"] = (x.coords, rulebook)
        return SparseVoxels(_apply(x.features, self.conv.weight, rulebook), coarse, x.batch_size, x.rulebooks)


class UpConv(nn.Module):
    """The transpose of the DownConv with the same key: back to that layer's input sites, in its order."""

    def __init__(self, c_in: int, c_out: int, key: str):
        super().__init__()
        self.key = key
        self.conv = spconv.SparseInverseConv3d(c_in, c_out, 2, bias=False, indice_key=key)

    def forward(self, x):
        if isinstance(x, spconv.SparseConvTensor):
            return self.conv(x)
        fine, rulebook = x.rulebooks[f"down:{self.key}"]
        return SparseVoxels(_apply(x.features, self.conv.weight, rulebook, transpose=True), fine, x.batch_size,
                            x.rulebooks)
