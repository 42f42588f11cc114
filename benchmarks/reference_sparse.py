"""The reference for the student benchmarks: the CPU sparse convolution as merged before issue 12's item 2
(commit c1dd485: one search per kernel offset for a rulebook, one matmul per offset between one gather and
one index_add, plain autograd; BatchNorm as its own pass). Not used by the package; `reference_path()` swaps it
into the layers."""

from __future__ import annotations

import contextlib

import torch

from clip2scene_core.student import sparse


def _keys(coords: torch.Tensor, extent: torch.Tensor) -> torch.Tensor:
    size = extent + 2
    return ((coords[:, 0] * size[0] + coords[:, 1] + 1) * size[1] + coords[:, 2] + 1) * size[2] + coords[:, 3] + 1


def submanifold_pairs(coords: torch.Tensor, kernel: int) -> tuple[list, list]:
    """Per offset: (input rows, output rows), one searchsorted per offset."""
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
    return in_index, out_index


def downsample_pairs(coords: torch.Tensor) -> tuple[torch.Tensor, list, list]:
    """(coarse coords, per offset input rows, per offset output rows) of the kernel 2, stride 2 convolution."""
    coarse = coords.clone()
    coarse[:, 1:] = torch.div(coords[:, 1:], 2, rounding_mode="floor")
    extent = coarse.max(dim=0).values + 1
    keys = ((coarse[:, 0] * extent[1] + coarse[:, 1]) * extent[2] + coarse[:, 2]) * extent[3] + coarse[:, 3]
    _, inverse = torch.unique(keys, return_inverse=True)
    unique = coarse.new_empty(int(inverse.max()) + 1, 4)
    unique[inverse] = coarse
    remainder = coords[:, 1:] - 2 * coarse[:, 1:]
    offset = remainder[:, 0] * 4 + remainder[:, 1] * 2 + remainder[:, 2]
    in_index = [torch.nonzero(offset == k).squeeze(1) for k in range(8)]
    return unique, in_index, [inverse[rows] for rows in in_index]


def apply(features, weight, sources, targets, size):
    c_out = weight.shape[0]
    per_offset = weight.reshape(c_out, -1, weight.shape[-1]).permute(1, 2, 0)
    used = [k for k, source in enumerate(sources) if len(source)]
    out = features.new_zeros(size, c_out)
    if not used:
        return out + 0 * per_offset.sum()
    gathered = features.index_select(0, torch.cat([sources[k] for k in used]))
    products = torch.cat([part @ per_offset[k] for k, part in
                          zip(used, torch.split(gathered, [len(sources[k]) for k in used]))])
    return out.index_add_(0, torch.cat([targets[k] for k in used]), products)


def _finish(features, affine, residual):
    """What the package's layers do with affine = (scale, shift) (a folded BatchNorm) and a residual."""
    if affine is None:
        return features
    features = features * affine[0] + affine[1]
    return features if residual is None else features + residual


def _subm(self, x, affine=None, residual=None):
    name = f"ref-subm{self.kernel}:{len(x.coords)}:{self.key}"
    if name not in x.rulebooks:
        x.rulebooks[name] = submanifold_pairs(x.coords, self.kernel)
    sources, targets = x.rulebooks[name]
    return x.replace_feature(_finish(apply(x.features, self.conv.weight, sources, targets, len(x.coords)), affine,
                                     residual))


def _down(self, x, affine=None, residual=None):
    coarse, sources, targets = downsample_pairs(x.coords)
    x.rulebooks[f"ref-down:{self.key}"] = (x.coords, sources, targets)
    return sparse.SparseVoxels(_finish(apply(x.features, self.conv.weight, sources, targets, len(coarse)), affine,
                                       residual), coarse, x.batch_size, x.rulebooks)


def _up(self, x, affine=None, residual=None):
    fine, sources, targets = x.rulebooks[f"ref-down:{self.key}"]
    return sparse.SparseVoxels(_finish(apply(x.features, self.conv.weight, targets, sources, len(fine)), affine,
                                       residual), fine, x.batch_size, x.rulebooks)


@contextlib.contextmanager
def reference_path():
    """Within: SubMConv, DownConv and UpConv run the reference on the CPU path."""
    layers = {sparse.SubMConv: _subm, sparse.DownConv: _down, sparse.UpConv: _up}
    saved = {layer: layer.forward for layer in layers}
    try:
        for layer, forward in layers.items():
            layer.forward = forward
        yield
    finally:
        for layer, forward in saved.items():
            layer.forward = forward
