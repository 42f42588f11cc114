"""The losses against values computed by hand on tiny inputs."""

import math

import pytest
import torch
import torch.nn.functional as F

from clip2scene_core.student.losses import lovasz_softmax, semantic_cross_entropy, semantic_infonce, spatial_temporal

# Two classes with orthogonal text embeddings, three points.
TEXT = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
POINTS = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
LABELS = torch.tensor([0, 0, 1])


def test_semantic_infonce_by_hand():
    tau = 0.5
    # class 0: positives points 0 and 1 (similarities 1.0, 0.6), all three points in the denominator (1, .6, 0)
    class0 = -math.log((math.exp(1 / tau) + math.exp(0.6 / tau)) / (math.exp(1 / tau) + math.exp(0.6 / tau) + 1))
    # class 1: positive point 2 (similarity 1), denominator similarities (0, .8, 1)
    class1 = -math.log(math.exp(1 / tau) / (1 + math.exp(0.8 / tau) + math.exp(1 / tau)))
    assert semantic_infonce(POINTS, LABELS, TEXT, tau).item() == pytest.approx((class0 + class1) / 2, rel=1e-6)


def test_semantic_infonce_prefers_the_right_class_and_ignores_absent_classes():
    text = torch.cat([TEXT, torch.tensor([[-1.0, 0.0]])])  # a third class no point carries
    assert semantic_infonce(POINTS, LABELS, text, 0.5) == pytest.approx(semantic_infonce(POINTS, LABELS, TEXT, 0.5))
    wrong = torch.tensor([1, 1, 0])
    assert semantic_infonce(POINTS, wrong, TEXT, 0.5) > semantic_infonce(POINTS, LABELS, TEXT, 0.5)
    assert semantic_infonce(POINTS[:0], LABELS[:0], TEXT, 0.5).item() == 0.0


def test_semantic_cross_entropy_by_hand():
    tau = 0.5
    logits = POINTS @ TEXT.T / tau
    expected = sum(-F.log_softmax(logits[i], 0)[LABELS[i]] for i in range(3)) / 3
    assert semantic_cross_entropy(POINTS, LABELS, TEXT, tau).item() == pytest.approx(expected.item(), rel=1e-6)


def test_spatial_temporal_by_hand():
    # One group of two pairs: pixels x, points p, both pairs labelled class 0 (t = [1, 0]).
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    scores = [1.0, 0.0, 0.6, 0.8]                 # x0.t, x1.t, p0.t, p1.t with lambda = 1
    weights = [math.exp(s) for s in scores]
    total = sum(weights)
    fused = (weights[0] * x[0] + weights[1] * x[1] + weights[2] * p[0] + weights[3] * p[1]) / total
    expected = sum(1 - torch.sigmoid(p[i] @ fused) for i in range(2)) / 2
    loss = spatial_temporal(p, x, t, torch.tensor([0, 0]))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_spatial_temporal_keeps_groups_apart():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    together = spatial_temporal(p, x, t, torch.tensor([0, 0]))
    apart = spatial_temporal(p, x, t, torch.tensor([0, 1]))
    # Alone in its group each point matches its fused feature exactly: 1 - sigmoid(1).
    assert apart.item() == pytest.approx(1 - 1 / (1 + math.exp(-1)), rel=1e-6)
    assert together > apart
    p.requires_grad_(True)
    spatial_temporal(p, x, t, torch.tensor([0, 0])).backward()
    assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def lovasz_extension(foreground: list[int], errors: list[float]) -> float:
    """The Lovasz extension of 1 - IoU for one class, errors already sorted in decreasing order."""
    total, previous, value = sum(foreground), 0.0, 0.0
    for i in range(len(errors)):
        intersection = total - sum(foreground[:i + 1])
        union = total + sum(1 - f for f in foreground[:i + 1])
        jaccard = 1 - intersection / union
        value += errors[i] * (jaccard - previous)
        previous = jaccard
    return value


def test_lovasz_softmax_by_hand():
    labels = torch.tensor([0, 0, 1])
    assert lovasz_softmax(F.one_hot(labels, 2).float(), labels).item() == pytest.approx(0.0)  # perfect: no cost
    probabilities = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7]])
    # class 0 errors |1-.9|, |1-.4|, |0-.3| sorted: .6 (foreground), .3 (background), .1 (foreground)
    class0 = lovasz_extension([1, 0, 1], [0.6, 0.3, 0.1])
    # class 1 errors |0-.1|, |0-.6|, |1-.7| sorted: .6 (background), .3 (foreground), .1 (background)
    class1 = lovasz_extension([0, 1, 0], [0.6, 0.3, 0.1])
    assert lovasz_softmax(probabilities, labels).item() == pytest.approx((class0 + class1) / 2, rel=1e-6)
