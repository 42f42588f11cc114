"""Sparse 3D convolutions over voxels: spconv on GPU, an exact pure-torch path on CPU.

spconv's CPU build has a racy scatter-add (wrong sums with more than one thread) and every spconv
build fails in backward on a machine without CUDA (ENVIRONMENT.md). So on CPU the same layers run
through rulebooks computed here and gather-matmul-scatter in torch (a few large operations per layer,
and a backward of its own that keeps only the layer's input), which is deterministic and takes any
number of threads. The weights are spconv's own parameters (layout
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
    """Pairs (input row, output row) grouped by kernel offset, each offset padded to whole chunks of `chunk`
    pairs, so that one batched matmul does every offset (or, for wide layers, one matmul per offset).

    inputs, outputs: (M,) int64, M a multiple of chunk; padding pairs are (num_in, num_out), a zero row and
    a spare row. offsets: (M // chunk,) int64, the kernel offset of each chunk; sizes: rows per offset
    (K ints, multiples of chunk). centre: the offset whose pairs are (n, n) for every site (a submanifold's
    centre: a plain matmul, not in the pairs), or None.
    """

    inputs: torch.Tensor
    outputs: torch.Tensor
    offsets: torch.Tensor
    num_in: int
    num_out: int
    chunk: int
    sizes: list[int]
    centre: int | None = None


def _chunked(inputs, outputs, offsets, kernel_size, num_in, num_out, centre=None) -> Rulebook:
    """The Rulebook of pairs sorted by offset (offsets: (P,) the offset of each pair).

    Chunks of a power of two rows near an eighth of the pairs per offset, 8 to 128: few large matmuls where
    the pairs are many, little padding where they are few (the coarse, wide layers)."""
    counts = torch.bincount(offsets, minlength=kernel_size)
    chunk = 2 ** min(7, max(3, (len(offsets) // (8 * kernel_size)).bit_length() - 1))
    chunks = (counts + chunk - 1) // chunk
    start = torch.cumsum(chunks * chunk, 0) - chunks * chunk
    first = torch.cumsum(counts, 0) - counts
    position = start[offsets] + torch.arange(len(offsets), device=offsets.device) - first[offsets]
    size = int(chunks.sum()) * chunk
    padded_in = torch.full((size,), num_in, dtype=torch.long, device=offsets.device)
    padded_out = torch.full((size,), num_out, dtype=torch.long, device=offsets.device)
    padded_in[position], padded_out[position] = inputs, outputs
    chunk_offsets = torch.repeat_interleave(torch.arange(kernel_size, device=offsets.device), chunks)
    return Rulebook(padded_in, padded_out, chunk_offsets, num_in, num_out, chunk, (chunks * chunk).tolist(), centre)


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


def _keys(coords: torch.Tensor, margin: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique int64 keys of (batch, x, y, z) rows, linear in x, y, z with room for shifts up to margin
    cells; returns (keys, strides of x, y, z), so that key(p + d) = key(p) + d . strides."""
    xyz = coords[:, 1:] - coords[:, 1:].min(dim=0).values + margin
    size = xyz.max(dim=0).values + margin + 1
    strides = torch.stack([size[1] * size[2], size[2], torch.ones_like(size[2])])
    return coords[:, 0] * size[0] * strides[0] + xyz @ strides, strides


def submanifold_rulebook(coords: torch.Tensor, kernel: int) -> Rulebook:
    """Output sites = input sites; offset k = (a, b, c) links output p to input p + (a, b, c) - kernel // 2.

    One search for the offsets before the centre: if p + d is found, output p + d has input p at offset -d,
    which is offset K - 1 - k; the centre pairs each site with itself."""
    n, count = len(coords), kernel ** 3
    empty = coords.new_zeros(0)
    if n == 0:
        return _chunked(empty, empty, empty, count, 0, 0, count // 2)
    keys, strides = _keys(coords, kernel // 2)
    sorted_keys, order = torch.sort(keys)
    span = torch.arange(kernel, device=coords.device) - kernel // 2
    shifts = torch.cartesian_prod(span, span, span)[: count // 2] @ strides  # (K // 2,) key shifts
    query = (keys[None, :] + shifts[:, None]).reshape(-1)
    position = torch.searchsorted(sorted_keys, query).clamp_(max=n - 1)
    found = torch.nonzero(sorted_keys[position] == query).squeeze(1)  # sorted by offset
    offset, site, neighbour = found // n, found % n, order[position[found]]
    # The mirrored pairs, flipped so that all pairs stay sorted by offset.
    inputs = torch.cat([neighbour, site.flip(0)])
    outputs = torch.cat([site, neighbour.flip(0)])
    return _chunked(inputs, outputs, torch.cat([offset, count - 1 - offset.flip(0)]), count, n, n, count // 2)


def downsample_rulebook(coords: torch.Tensor) -> tuple[torch.Tensor, Rulebook]:
    """Kernel 2, stride 2: site p goes to p // 2 through offset p % 2. Returns (coarse coords, rulebook)."""
    if not len(coords):
        empty = coords.new_zeros(0)
        return coords.clone(), _chunked(empty, empty, empty, 8, 0, 0)
    coarse = coords.clone()
    coarse[:, 1:] = torch.div(coords[:, 1:], 2, rounding_mode="floor")
    keys, _ = _keys(coarse, 0)
    # Unique rows through one int64 key per row (torch.unique over rows is far slower).
    _, inverse = torch.unique(keys, return_inverse=True)
    unique = coarse.new_empty(int(inverse.max()) + 1, 4)
    unique[inverse] = coarse
    remainder = coords[:, 1:] - 2 * coarse[:, 1:]
    offset = remainder[:, 0] * 4 + remainder[:, 1] * 2 + remainder[:, 2]
    rows = torch.argsort(offset, stable=True)
    return unique, _chunked(rows, inverse[rows], offset[rows], 8, len(coords), len(unique))


WIDE = 64 * 64  # C_in * C_out from which a matmul per offset beats one batched matmul over chunks


def _gather(features: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(M, C): features[rows], with row N a zero row."""
    padded = torch.cat([features, features.new_zeros(1, features.shape[1])])
    return padded.index_select(0, rows)


def _offset_products(rows: torch.Tensor, weight: torch.Tensor, rulebook: Rulebook) -> torch.Tensor:
    """(M, C_out): each row of rows (M, C_in) times the weight (K, C_in, C_out) of its pair's offset."""
    count, c_in, c_out = weight.shape
    if c_in * c_out >= WIDE:  # each offset's matmul is large; copies of the weight per chunk would cost more
        return torch.cat([part @ weight[k] for k, part in enumerate(rows.split(rulebook.sizes)) if len(part)])
    # index_select on the weight's transposed views is slow: copy the (small) weight to its layout first.
    per_chunk = weight.contiguous().index_select(0, rulebook.offsets)
    return torch.bmm(rows.view(-1, rulebook.chunk, c_in), per_chunk).view(-1, c_out)


def _weight_gradient(rows: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor, rulebook: Rulebook):
    """(K, C_in, C_out): sum over pairs of rows (M, C_in) outer grad (M, C_out), per offset."""
    count, c_in, c_out = weight.shape
    if c_in * c_out >= WIDE:
        parts = zip(rows.split(rulebook.sizes), grad.split(rulebook.sizes))
        return torch.stack([x.T @ g if len(x) else weight.new_zeros(c_in, c_out) for x, g in parts])
    per_chunk = torch.bmm(rows.view(-1, rulebook.chunk, c_in).transpose(1, 2), grad.view(-1, rulebook.chunk, c_out))
    return torch.zeros_like(weight).index_add_(0, rulebook.offsets, per_chunk)


def _convolve(features: torch.Tensor, weight: torch.Tensor, rulebook: Rulebook, transpose: bool) -> torch.Tensor:
    """out[o] = sum over pairs (i, o, k) of features[i] @ weight[k] (weight (K, C_in, C_out)); transpose
    runs the pairs backwards, (o, i, k). One gather, one batched matmul (or one per offset), one index_add."""
    sources, targets, size = rulebook.inputs, rulebook.outputs, rulebook.num_out
    if transpose:
        sources, targets, size = targets, sources, rulebook.num_in
    products = _offset_products(_gather(features, sources), weight, rulebook)
    out = features.new_zeros(size + 1, weight.shape[2])
    if rulebook.centre is not None:
        out[:size] = features @ weight[rulebook.centre]
    return out.index_add_(0, targets, products)[:size]


class _SparseConv(torch.autograd.Function):
    """_convolve saving only its inputs (and the rulebook): backward recomputes the gathers."""

    @staticmethod
    def forward(ctx, features, weight, rulebook, transpose):
        ctx.save_for_backward(features, weight)
        ctx.rulebook, ctx.transpose = rulebook, transpose
        return _convolve(features, weight, rulebook, transpose)

    @staticmethod
    def backward(ctx, grad):
        features, weight = ctx.saved_tensors
        rulebook, transpose = ctx.rulebook, ctx.transpose
        grad_features = grad_weight = None
        if ctx.needs_input_grad[0]:  # the adjoint: the same pairs backwards, weights transposed
            grad_features = _convolve(grad, weight.transpose(1, 2), rulebook, not transpose)
        if ctx.needs_input_grad[1]:
            sources, targets = rulebook.inputs, rulebook.outputs
            if transpose:
                sources, targets = targets, sources
            grad_weight = _weight_gradient(_gather(features, sources), _gather(grad, targets), weight, rulebook)
            if rulebook.centre is not None:
                grad_weight[rulebook.centre] += features.T @ grad
        return grad_features, grad_weight, None, None


def _apply(features: torch.Tensor, weight: torch.Tensor, rulebook: Rulebook, transpose: bool = False) -> torch.Tensor:
    """weight: spconv layout (C_out, k, k, k, C_in)."""
    per_offset = weight.reshape(weight.shape[0], -1, weight.shape[-1]).permute(1, 2, 0)  # (K, C_in, C_out)
    return _SparseConv.apply(features, per_offset, rulebook, transpose)


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
