"""Point features of a linear head, kept factored: training never builds the (M, D) matrix of a 512-wide head.

A head maps a point's d decoder features f to h = W f + b. With x = [f, 1] and A = [W | b] (D, d + 1), h = A x,
and everything the losses ask of the features is a product with A on one side:

    h_i . v        = x_i . (A^T v)
    sum_i w_i h_i  = A (sum_i w_i x_i)
    |h_i|^2        = x_i . (A^T A) x_i

so a training step works with (M, d + 1) and (D, d + 1) matrices, about ten times less memory and time than with
(M, D) ones at d = 48, D = 512 (an (M, D) float32 matrix is 0.3 GB at M = 150k points, and the losses made many).
"""

from __future__ import annotations

import torch
import torch.nn as nn

EPS = 1e-12  # as F.normalize


class HeadFeatures:
    """Rows scale_i A x_i (scale None: 1); differentiable in x and A.

    inputs: (M, d + 1), each row ending in 1 for a head with bias; head: (D, d + 1).
    """

    def __init__(self, inputs: torch.Tensor, head: torch.Tensor, scale: torch.Tensor | None = None):
        self.inputs, self.head, self.scale = inputs, head, scale
        self._raw_norms = None

    @classmethod
    def from_linear(cls, features: torch.Tensor, linear: nn.Linear, normalize: bool) -> HeadFeatures:
        """linear(features), or with normalize F.normalize(linear(features)); features (M, d)."""
        inputs = torch.cat([features, features.new_ones(len(features), 1)], dim=1)
        result = cls(inputs, torch.cat([linear.weight, linear.bias[:, None]], dim=1))
        if normalize:
            result.scale = 1.0 / result.raw_norms().clamp_min(EPS)
        return result

    @classmethod
    def of(cls, features: torch.Tensor) -> HeadFeatures:
        """Explicit (M, D) features (an identity head): lets the losses take a plain matrix."""
        size = features.shape[1]
        identity = torch.eye(size, size + 1, dtype=features.dtype, device=features.device)
        return cls(torch.cat([features, features.new_zeros(len(features), 1)], dim=1), identity)

    @classmethod
    def cat(cls, parts: list[HeadFeatures]) -> HeadFeatures:
        """The rows of parts of the same head, one after the other."""
        first = parts[0]
        scale = None if first.scale is None else torch.cat([part.scale for part in parts])
        return cls(torch.cat([part.inputs for part in parts]), first.head, scale)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, rows) -> HeadFeatures:
        """The rows selected by a slice, an index tensor or a boolean mask."""
        part = HeadFeatures(self.inputs[rows], self.head, None if self.scale is None else self.scale[rows])
        part._raw_norms = None if self._raw_norms is None else self._raw_norms[rows]
        return part

    def _scaled(self, values: torch.Tensor) -> torch.Tensor:
        return values if self.scale is None else values * (self.scale if values.dim() == 1 else self.scale[:, None])

    def raw_norms(self) -> torch.Tensor:
        """(M,) |A x_i|, from the Gram matrix in float64 (no cancellation worth the name)."""
        if self._raw_norms is None:
            inputs, head = self.inputs.double(), self.head.double()
            squared = ((inputs @ (head.T @ head)) * inputs).sum(1)
            self._raw_norms = squared.clamp_min(EPS ** 2).sqrt().to(self.inputs.dtype)
        return self._raw_norms

    def norms(self) -> torch.Tensor:
        """(M,) the length of each row (1 when normalised, unless |A x_i| < 1e-12)."""
        return self._scaled(self.raw_norms())

    def dot(self, vectors: torch.Tensor) -> torch.Tensor:
        """(M, K) = features @ vectors.T for vectors (K, D)."""
        return self._scaled(self.inputs @ (self.head.T @ vectors.T))

    def dot_rows(self, vectors: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """(M,): feature i . vectors[i] (vectors (M, D)), or feature i . vectors[index[i]] (vectors (N, D))."""
        table = vectors @ self.head  # (M or N, d + 1)
        if index is not None:
            table = table.index_select(0, index)
        return self._scaled((self.inputs * table).sum(1))

    def sum_by(self, index: torch.Tensor, count: int, weights: torch.Tensor | None = None) -> torch.Tensor:
        """(count, D): row g = sum over the features i with index[i] = g, each times weights[i] (default 1)."""
        factors = self.scale if weights is None else self._scaled(weights)
        rows = self.inputs if factors is None else self.inputs * factors[:, None]
        pooled = rows.new_zeros(count, rows.shape[1]).index_add(0, index, rows)
        return pooled @ self.head.T

    def dense(self) -> torch.Tensor:
        """(M, D) the features themselves."""
        features = self.inputs @ self.head.T
        # In place: a second (M, D) matrix is most of the time here (mm's backward does not need its output).
        return features if self.scale is None else features.mul_(self.scale[:, None])

    def zero(self) -> torch.Tensor:
        """0, connected to the graph (a loss over no rows)."""
        return (self.inputs.sum() + self.head.sum()) * 0.0
