"""Sparse 3D convolutions over voxels: spconv on GPU, compiled kernels of our own on CPU.

spconv's CPU build has a racy scatter-add (wrong sums with more than one thread), every spconv build fails in
backward on a machine without CUDA (ENVIRONMENT.md), and its CPU forward is slower than ours. So on CPU the layers
run through rulebooks and a gather-multiply-scatter kernel in sparse_kernels.cpp (built with the package, loaded
here with ctypes): each layer is one call that multiplies register tiles of gathered rows by the offset's weight
and adds them into the output rows, near the machine's matmul rate on wide layers. Its results are the same for
any number of threads (torch.get_num_threads()). Backward keeps only the layer's input: the input gradient is
the same kernel over the pairs reversed, the weight gradient a matmul per offset. The weights are spconv's own parameters (layout
(C_out, k, k, k, C_in)) in both paths, so a checkpoint trained on one runs on the other; tests check both
against dense conv3d and against each other.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from pathlib import Path

import spconv.pytorch as spconv
import torch
import torch.nn as nn

from ..errors import UserError


class KernelsMissing(UserError, RuntimeError):
    """The compiled CPU kernels are not there (the package was installed without building them)."""


# Widest first, with their vector bytes: AVX-512F + FMA, AVX2 + FMA, any CPU.
VARIANTS = {"v4": 64, "v3": 32, "base": 16}


class Kernels:
    """sparse_kernels.cpp as built for one variant (default: the widest this CPU runs)."""

    FOLDER = Path(__file__).resolve().parent

    def __init__(self, variant: str | None = None):
        available = self.available()
        variant = variant or available[0]
        if variant not in available:
            raise ValueError(f"kernel variant {variant!r} is not one of those built here that this CPU runs "
                             f"({', '.join(available)})")
        library = ctypes.CDLL(str(self._find(variant)))
        pointer, size = ctypes.c_void_p, ctypes.c_int64
        for name in ("c2s_convolve_f32", "c2s_convolve_f64"):
            getattr(library, name).argtypes = [pointer, size, pointer, size, pointer, pointer, pointer, size, pointer,
                                               ctypes.c_int]
        library.c2s_submanifold_neighbours.argtypes = [pointer, size, size, pointer, pointer]
        library.c2s_pairs_of_neighbours.argtypes = [pointer, size, size, pointer, pointer]
        library.c2s_downsample.argtypes = [pointer, size, pointer, pointer, pointer, pointer]
        library.c2s_downsample.restype = size
        self.library, self.variant = library, variant
        self.convolve = {torch.float32: library.c2s_convolve_f32, torch.float64: library.c2s_convolve_f64}

    @classmethod
    def available(cls) -> list[str]:
        """The variants built here that this CPU runs, widest first (the build for any CPU tells)."""
        base = ctypes.CDLL(str(cls._find("base")))
        return [variant for variant, vector_bytes in VARIANTS.items()
                if cls._find(variant, required=False) and base.c2s_cpu_runs(vector_bytes)]

    @classmethod
    def _find(cls, variant: str, required: bool = True) -> Path | None:
        found = sorted(cls.FOLDER.glob(f"_sparse_kernels_{variant}*.so"))
        if not found and required:
            raise KernelsMissing(f"the CPU sparse-convolution kernels are not built (no _sparse_kernels_{variant}*.so "
                                 f"in {cls.FOLDER}): install the package with a C++ compiler present (`make setup`, "
                                 f"`pip install -e .` or `colcon build`); on a GPU, spconv's kernels run instead")
        return found[0] if found else None

    def describe(self) -> str:
        """e.g. "v4 (64-byte vectors)"."""
        return f"{self.variant} ({self.library.c2s_vector_bytes()}-byte vectors)"


_loaded: Kernels | None = None


def kernels() -> Kernels:
    """The kernels this process runs (loaded on first use)."""
    global _loaded
    if _loaded is None:
        _loaded = Kernels()
    return _loaded


@dataclass
class Rulebook:
    """Pairs (input row, output row) grouped by kernel offset: pairs starts[k]:starts[k + 1] belong to offset k.
    No output row appears twice within one offset (nor does an input row)."""

    inputs: torch.Tensor
    outputs: torch.Tensor
    starts: torch.Tensor  # (K + 1,) int64
    num_in: int
    num_out: int


def submanifold_rulebook(coords: torch.Tensor, kernel: int) -> Rulebook:
    """Output sites = input sites; offset k = (a, b, c) (x-major) links output p to input p + (a, b, c) - kernel // 2
    of the same scan. Within an offset, outputs ascend."""
    coords = coords.contiguous()
    n, count = len(coords), kernel ** 3
    neighbours = coords.new_empty(count, n)
    counts = coords.new_empty(count)
    library = kernels().library
    library.c2s_submanifold_neighbours(coords.data_ptr(), n, kernel, neighbours.data_ptr(), counts.data_ptr())
    total = int(counts.sum())
    inputs, outputs = coords.new_empty(total), coords.new_empty(total)
    library.c2s_pairs_of_neighbours(neighbours.data_ptr(), count, n, inputs.data_ptr(), outputs.data_ptr())
    return Rulebook(inputs, outputs, torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)]), n, n)


def downsample_rulebook(coords: torch.Tensor) -> tuple[torch.Tensor, Rulebook]:
    """Kernel 2, stride 2: site p goes to p // 2 through offset p % 2 (x-major). Returns (coarse coords in order of
    first appearance, rulebook)."""
    coords = coords.contiguous()
    n = len(coords)
    coarse, inputs, outputs, starts = coords.new_empty(n, 4), coords.new_empty(n), coords.new_empty(n), \
        coords.new_empty(9)
    unique = kernels().library.c2s_downsample(coords.data_ptr(), n, coarse.data_ptr(), inputs.data_ptr(),
                                              outputs.data_ptr(), starts.data_ptr())
    return coarse[:unique].clone(), Rulebook(inputs, outputs, starts, n, unique)


def convolve(features: torch.Tensor, weight: torch.Tensor, rulebook: Rulebook, transpose: bool = False,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """out[o] += sum over pairs (i, o, k) of features[i] @ weight[k] (weight (K, C_in, C_out)); transpose runs the
    pairs backwards, (o, i, k). out: the starting values (default zeros), written in place."""
    sources, targets, size = rulebook.inputs, rulebook.outputs, rulebook.num_out
    if transpose:
        sources, targets, size = targets, sources, rulebook.num_in
    count, c_in, c_out = weight.shape
    if features.device.type != "cpu" or features.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"the CPU sparse convolution takes float32 or float64 CPU tensors, got {features.dtype} on "
                        f"{features.device}")
    if len(rulebook.starts) != count + 1 or features.shape != (len(features), c_in):
        raise ValueError(f"features {tuple(features.shape)} and weight {tuple(weight.shape)} do not fit a rulebook of "
                         f"{len(rulebook.starts) - 1} offsets")
    features, weight = features.contiguous(), weight.to(features.dtype).contiguous()
    if out is None:
        out = features.new_zeros(size, c_out)
    if out.shape != (size, c_out) or out.dtype != features.dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {features.dtype} tensor of shape {(size, c_out)}")
    kernels().convolve[features.dtype](features.data_ptr(), c_in, weight.data_ptr(), c_out, sources.data_ptr(),
                                       targets.data_ptr(), rulebook.starts.data_ptr(), count, out.data_ptr(),
                                       torch.get_num_threads())
    return out


def _weight_gradient(features: torch.Tensor, grad: torch.Tensor, rulebook: Rulebook, transpose: bool,
                     shape: torch.Size) -> torch.Tensor:
    """(K, C_in, C_out): per offset, the gathered inputs transposed times the gathered output gradients."""
    sources, targets = (rulebook.outputs, rulebook.inputs) if transpose else (rulebook.inputs, rulebook.outputs)
    result = features.new_zeros(shape)
    bounds = rulebook.starts.tolist()
    for k, (begin, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        if end > begin:
            torch.mm(features.index_select(0, sources[begin:end]).T, grad.index_select(0, targets[begin:end]),
                     out=result[k])
    return result


class _SparseConv(torch.autograd.Function):
    """convolve() saving only its input and weight (and the rulebook)."""

    @staticmethod
    def forward(ctx, features, weight, rulebook, transpose):
        ctx.save_for_backward(features, weight)
        ctx.rulebook, ctx.transpose = rulebook, transpose
        return convolve(features, weight, rulebook, transpose)

    @staticmethod
    def backward(ctx, grad):
        features, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_features = grad_weight = None
        if ctx.needs_input_grad[0]:  # the adjoint: the same pairs backwards, weights transposed
            grad_features = convolve(grad, weight.transpose(1, 2), ctx.rulebook, not ctx.transpose)
        if ctx.needs_input_grad[1]:
            grad_weight = _weight_gradient(features, grad, ctx.rulebook, ctx.transpose, weight.shape)
        return grad_features, grad_weight, None, None


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


class _SparseLayer(nn.Module):
    """A spconv layer whose weight the CPU path runs through the kernels.

    run(features, rulebook): conv(features) through autograd. With affine = (scale, shift) (inference, no autograd):
    conv(features) * scale + shift [+ residual] in one pass (a BatchNorm with running statistics folded in); the
    weight times scale is kept for as long as neither changes."""

    conv: nn.Module
    transpose = False

    def run(self, features, rulebook, affine=None, residual=None) -> torch.Tensor:
        weight = self.conv.weight
        per_offset = weight.reshape(weight.shape[0], -1, weight.shape[-1]).permute(1, 2, 0)  # (K, C_in, C_out)
        if affine is None:
            return _SparseConv.apply(features, per_offset, rulebook, self.transpose)
        scale, shift = affine
        cached = getattr(self, "_scaled", None)
        key = (weight.data_ptr(), weight._version)
        if cached is None or cached[0] != key or not torch.equal(cached[1], scale):
            cached = (key, scale.clone(), (per_offset.detach() * scale).contiguous())
            self._scaled = cached
        size = rulebook.num_in if self.transpose else rulebook.num_out
        start = shift.expand(size, -1).contiguous() if residual is None else residual + shift
        return convolve(features, cached[2], rulebook, self.transpose, out=start)


class SubMConv(_SparseLayer):
    """Submanifold convolution (outputs only at active sites), kernel k, stride 1."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, key: str = "subm"):
        super().__init__()
        self.kernel, self.key = kernel, key
        self.conv = spconv.SubMConv3d(c_in, c_out, kernel, bias=False, indice_key=key)

    def forward(self, x, affine=None, residual=None):
        if isinstance(x, spconv.SparseConvTensor):
            return self.conv(x)
        name = f"subm{self.kernel}:{len(x.coords)}:{self.key}"
        if name not in x.rulebooks:
            x.rulebooks[name] = submanifold_rulebook(x.coords, self.kernel)
        return x.replace_feature(self.run(x.features, x.rulebooks[name], affine, residual))


class DownConv(_SparseLayer):
    """Kernel 2, stride 2 sparse convolution; its key lets the matching UpConv invert it."""

    def __init__(self, c_in: int, c_out: int, key: str):
        super().__init__()
        self.key = key
        self.conv = spconv.SparseConv3d(c_in, c_out, 2, stride=2, bias=False, indice_key=key)

    def forward(self, x, affine=None, residual=None):
        if isinstance(x, spconv.SparseConvTensor):
            return self.conv(x)
        coarse, rulebook = downsample_rulebook(x.coords)
        x.rulebooks[f"down:{self.key}"] = (x.coords, rulebook)
        return SparseVoxels(self.run(x.features, rulebook, affine, residual), coarse, x.batch_size, x.rulebooks)


class UpConv(_SparseLayer):
    """The transpose of the DownConv with the same key: back to that layer's input sites, in its order."""

    transpose = True

    def __init__(self, c_in: int, c_out: int, key: str):
        super().__init__()
        self.key = key
        self.conv = spconv.SparseInverseConv3d(c_in, c_out, 2, bias=False, indice_key=key)

    def forward(self, x, affine=None, residual=None):
        if isinstance(x, spconv.SparseConvTensor):
            return self.conv(x)
        fine, rulebook = x.rulebooks[f"down:{self.key}"]
        return SparseVoxels(self.run(x.features, rulebook, affine, residual), fine, x.batch_size, x.rulebooks)
