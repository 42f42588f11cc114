"""CLIP2Scene's losses (paper Eq. 1-4), the released code's cross-entropy variant, OpenScene-style feature
distillation (MCFA's local position alignment), MCFA's global semantic alignment, and Lovasz-softmax.

Features are L2-normalised by default, so the paper's D(a, b) (a dot product) is a cosine similarity
and a logit is bounded by 1 / tau: the temperature must be small (CLIP's 0.07) for a softmax over
classes or points to become confident.

Point features are HeadFeatures (head.py: a head's output kept factored, as training passes them) or a plain
(M, D) matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import DivergedError
from .head import EPS, HeadFeatures


def _factored(features) -> HeadFeatures:
    return features if isinstance(features, HeadFeatures) else HeadFeatures.of(features)


def semantic_infonce(features, labels: torch.Tensor, text: torch.Tensor, tau: float) -> torch.Tensor:
    """Semantic consistency (Eq. 1): each class's text embedding t_c is the anchor; the points whose pseudo
    label is c are its positives, every other paired point a negative:

        L = mean over classes c present of  -log( sum_{i: y_i = c} exp(t_c . p_i / tau)
                                                   / sum_{all paired i} exp(t_c . p_i / tau) )

    features: (M, D) point features; labels: (M,) pseudo labels in [0, C); text: (C, D); tau: temperature.
    The denominator holds the positives as well as the negatives (the usual InfoNCE form; the paper's
    extracted equation is ambiguous there), which keeps the loss >= 0.
    """
    features = _factored(features)
    if len(labels) == 0:
        return features.zero()
    present = torch.unique(labels)
    logits = features.dot(text[present]) / tau                           # (M, classes present)
    positive = labels[:, None] == present[None, :]
    log_all = torch.logsumexp(logits, dim=0)
    log_positive = torch.logsumexp(logits.masked_fill(~positive, float("-inf")), dim=0)
    return (log_all - log_positive).mean()


def semantic_cross_entropy(features, labels: torch.Tensor, text: torch.Tensor, tau: float) -> torch.Tensor:
    """Per-point softmax over the classes' text embeddings (what the released code trains with)."""
    features = _factored(features)
    if len(labels) == 0:
        return features.zero()
    return F.cross_entropy(features.dot(text) / tau, labels)


def semantic_symmetric(features, labels: torch.Tensor, text: torch.Tensor, tau: float) -> torch.Tensor:
    """Both directions of the contrast, as CLIP trains its two towers: the mean of the class-wise InfoNCE
    (Eq. 1, a class against the points) and the per-point cross-entropy (a point against the classes).
    Eq. 1 alone ranks the points for each class but never asks a point to prefer its own class, which is
    what its zero-shot label is."""
    return 0.5 * (semantic_infonce(features, labels, text, tau) + semantic_cross_entropy(features, labels, text, tau))


SEMANTIC_LOSSES = {"infonce": semantic_infonce, "cross_entropy": semantic_cross_entropy,
                   "symmetric": semantic_symmetric}


def spatial_temporal(point_features, pixel_features: torch.Tensor, labels: torch.Tensor, text: torch.Tensor,
                     groups: torch.Tensor, attention_tau: float = 1.0) -> torch.Tensor:
    """Spatial-temporal consistency (Eq. 2-4).

    Paired points of several sweeps, brought into one frame, are grouped by a regular grid (groups:
    (M,) group index). Within a group n, the pixel features x_i and point features p_i are fused by
    attention against the text embedding t_i of each pair's pseudo label, one softmax over all 2|g_n|
    entries:  f_n = sum_i a_i x_i + b_i p_i,  a_i ~ exp(x_i . t_i / lambda),  b_i ~ exp(p_i . t_i / lambda).
    Every point is then pulled towards its group's fused feature:  L = mean_i (1 - cos(p_i, f_{g(i)})).

    The paper writes the pull as 1 - sigmoid(p . f); on unit vectors that is about 0.5 - 0.23 cos, a
    quarter-weight cosine that never reaches zero, so we use the cosine itself.

    point_features, pixel_features: (M, D); labels: (M,) each pair's pseudo label, t_i = text[labels[i]];
    lambda = attention_tau (paper 1).
    """
    point_features = _factored(point_features)
    if len(groups) == 0:
        return point_features.zero()
    num_groups = int(groups.max()) + 1
    pixel_score = (pixel_features @ text.T).gather(1, labels[:, None])[:, 0] / attention_tau
    point_score = point_features.dot_rows(text, labels) / attention_tau
    # Softmax within each group, shifted by the group's largest score for numerical safety.
    highest = torch.full((num_groups,), float("-inf"), device=groups.device, dtype=point_score.dtype)
    highest = highest.scatter_reduce(0, groups, torch.maximum(pixel_score, point_score).detach(), reduce="amax")
    pixel_weight = torch.exp(pixel_score - highest[groups])
    point_weight = torch.exp(point_score - highest[groups])
    fused = point_features.sum_by(groups, num_groups, point_weight)
    for rows in torch.arange(len(groups), device=groups.device).split(16384):  # no (M, D) product at once
        fused = fused.index_add(0, groups[rows], pixel_weight[rows, None] * pixel_features[rows])
    # The softmax's denominator is a positive scale per group: the cosine below does not depend on it.
    unit = fused / fused.norm(dim=1, keepdim=True).clamp_min(EPS)
    cosine = point_features.dot_rows(unit, groups) / point_features.norms().clamp_min(EPS)
    return (1 - cosine).mean()


def feature_distillation(point_features, pixel_features: torch.Tensor) -> torch.Tensor:
    """OpenScene's distillation, which is also MCFA's local position alignment: mean over pairs of
    1 - cos(point feature, the dense CLIP feature of the pixel it projects to)."""
    point_features = _factored(point_features)
    if len(point_features) == 0:
        return point_features.zero()
    lengths = point_features.norms() * pixel_features.norm(dim=1)
    return (1 - point_features.dot_rows(pixel_features) / lengths.clamp_min(EPS)).mean()


def pool_by_camera(point_features, camera: torch.Tensor, cameras: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cameras, D) unit mean of the unit point features each camera sees, and (cameras,) how many it sees.

    point_features: (M, D); camera: (M,) index in [0, cameras) of the camera each point is paired with."""
    point_features = _factored(point_features)
    pooled = point_features.sum_by(camera, cameras, 1.0 / point_features.norms().clamp_min(EPS))
    counts = torch.bincount(camera, minlength=cameras)
    return F.normalize(pooled, dim=1), counts


def global_alignment(point_features, camera: torch.Tensor, image_embeddings: torch.Tensor,
                     tau: float, min_points: int = 1) -> torch.Tensor:
    """MCFA's global semantic alignment: the point features a camera sees, pooled, against the teacher's
    image-level embedding of that camera's view, contrasted across the batch's cameras (both directions,
    as CLIP trains: a view's points must pick out its image among the others', and the image its points).

    point_features: (M, D); camera: (M,) camera index of each paired point; image_embeddings: (K, D), one per
    camera of the batch; tau: temperature. Cameras with fewer than min_points points take no part; with fewer
    than two cameras left there is nothing to contrast, and the loss is 0.
    """
    point_features = _factored(point_features)
    pooled, counts = pool_by_camera(point_features, camera, len(image_embeddings))
    used = counts >= max(min_points, 1)
    if int(used.sum()) < 2:
        return point_features.zero()
    logits = pooled[used] @ F.normalize(image_embeddings[used].to(pooled.dtype), dim=1).T / tau
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def lovasz_softmax(probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Lovasz-softmax (Berman et al. 2018): a convex surrogate of per-class IoU, averaged over the
    classes present. probabilities: (M, C) softmax outputs; labels: (M,) in [0, C)."""
    losses = []
    for c in torch.unique(labels):
        foreground = (labels == c).float()
        errors = (foreground - probabilities[:, c]).abs()
        errors_sorted, order = torch.sort(errors, descending=True)
        sorted_foreground = foreground[order]
        intersection = sorted_foreground.sum() - sorted_foreground.cumsum(0)
        union = sorted_foreground.sum() + (1 - sorted_foreground).cumsum(0)
        jaccard = 1 - intersection / union
        gradient = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
        losses.append(torch.dot(errors_sorted, gradient))
    return torch.stack(losses).mean() if losses else probabilities.sum() * 0.0


def check_finite(losses: dict[str, torch.Tensor], where: str, lr_key: str, lr: float) -> None:
    """Stop a run whose loss is NaN or infinite, naming the term (a diverged run must not finish with exit 0)."""
    bad = [name for name, value in losses.items() if not bool(torch.isfinite(value.detach()).all())]
    if bad:
        terms = [name if name != "loss" else "total" for name in bad]
        raise DivergedError(f"{where}: the {' and '.join(terms)} loss is {float(losses[bad[0]].detach())}; the run "
                            f"diverged (learning rate {lr_key} {lr:g}: try a smaller one) or an input holds NaN "
                            f"values (check the source's points and the teacher's features)")
