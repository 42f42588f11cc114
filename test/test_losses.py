"""The losses against values computed by hand on tiny inputs."""

import math

import pytest
import torch
import torch.nn.functional as F

from clip2scene_core.student.head import HeadFeatures
from clip2scene_core.student.losses import (feature_distillation, global_alignment, lovasz_softmax, pool_by_camera,
                                            semantic_cross_entropy, semantic_infonce, semantic_symmetric,
                                            spatial_temporal)
from clip2scene_core.train import TrainConfig

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
    text, labels = torch.tensor([[1.0, 0.0]]), torch.tensor([0, 0])
    scores = [1.0, 0.0, 0.6, 0.8]                 # x0.t, x1.t, p0.t, p1.t with lambda = 1
    weights = [math.exp(s) for s in scores]
    total = sum(weights)
    fused = (weights[0] * x[0] + weights[1] * x[1] + weights[2] * p[0] + weights[3] * p[1]) / total
    expected = sum(1 - F.cosine_similarity(p[i], fused, dim=0) for i in range(2)) / 2
    loss = spatial_temporal(p, x, labels, text, torch.tensor([0, 0]))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_spatial_temporal_keeps_groups_apart():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text, labels = torch.eye(2), torch.tensor([0, 1])
    together = spatial_temporal(p, x, labels, text, torch.tensor([0, 0]))
    apart = spatial_temporal(p, x, labels, text, torch.tensor([0, 1]))
    # Alone in its group with a pixel feature equal to it, each point is its fused feature: nothing to pull.
    # (The paper's 1 - sigmoid(p . f) would still be 1 - sigmoid(1) = 0.27 there.)
    assert apart.item() == pytest.approx(0.0, abs=1e-6)
    assert together > apart
    p.requires_grad_(True)
    spatial_temporal(p, x, labels, text, torch.tensor([0, 0])).backward()
    assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_spatial_temporal_pull_is_a_cosine():
    # A point alone with its pixel, at angle theta: fused = (a x + b p) / (a + b), and the loss is 1 - cos(p, fused).
    x, text = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    losses = []
    for theta in (0.2, 0.6, 1.2):
        p = torch.tensor([[math.cos(theta), math.sin(theta)]])
        a, b = math.exp(1.0), math.exp(math.cos(theta))
        fused = (a * x[0] + b * p[0]) / (a + b)
        expected = 1 - (p[0] @ fused).item() / fused.norm().item()
        losses.append(spatial_temporal(p, x, torch.tensor([0]), text, torch.tensor([0])).item())
        assert losses[-1] == pytest.approx(expected, rel=1e-5)
    assert losses == sorted(losses)  # the further the point from its pixel, the stronger the pull


def test_feature_distillation_is_one_minus_cosine():
    points = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    pixels = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert feature_distillation(points, pixels).item() == pytest.approx(0.5)  # (0 + 1) / 2
    feature_distillation(points, pixels).backward()
    assert points.grad[0].abs().sum() == 0 and points.grad[1].abs().sum() > 0
    assert feature_distillation(points[:0], pixels[:0]).item() == 0.0


def test_the_default_temperature_lets_unit_features_fit_their_labels():
    # 16 classes with orthogonal embeddings, every point exactly on its class: the loss must be near zero.
    # At the paper's 0.5 on unit vectors a logit is at most 2 and the loss cannot fall below about 1.
    text = torch.eye(16, 32)
    labels = torch.arange(16).repeat(20)
    features = text[labels]
    tau = TrainConfig().tau
    for loss in (semantic_cross_entropy, semantic_symmetric):
        assert loss(features, labels, text, tau).item() < 0.01, loss
        assert loss(features, labels, text, 0.5).item() > 0.5, loss
    assert semantic_infonce(features, labels, text, tau).item() < 0.01
    assert semantic_symmetric(features, labels, text, tau) == pytest.approx(
        (semantic_infonce(features, labels, text, tau) + semantic_cross_entropy(features, labels, text, tau)) / 2)


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


# Global alignment: three cameras with orthogonal image embeddings; each camera sees a few points.
IMAGES = torch.eye(3, 4)
CAMERA = torch.tensor([0, 0, 1, 1, 1, 2])


def test_global_alignment_by_hand():
    """Each camera's points pool exactly onto its own image embedding: the logits are I / tau and each row's and
    column's cross-entropy is log(1 + 2 exp(-1 / tau))."""
    tau = 0.5
    points = IMAGES[CAMERA] * torch.tensor([[1.0], [2.0], [0.5], [1.0], [3.0], [1.0]])
    expected = math.log(1 + 2 * math.exp(-1 / tau))
    assert global_alignment(points, CAMERA, IMAGES, tau).item() == pytest.approx(expected, rel=1e-6)
    swapped = IMAGES[torch.tensor([1, 0, 2])]               # cameras 0 and 1 get each other's image: worse
    assert global_alignment(points, CAMERA, swapped, tau) > global_alignment(points, CAMERA, IMAGES, tau) + 1


def test_global_alignment_pools_unit_features_per_camera():
    points = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 5.0]])
    pooled, counts = pool_by_camera(points, torch.tensor([0, 0, 1]), 3)
    assert torch.allclose(pooled, torch.tensor([[2 ** -0.5, 2 ** -0.5], [0.0, 1.0], [0.0, 0.0]]))
    assert counts.tolist() == [2, 1, 0]


def test_global_alignment_gradients_and_invariances():
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(6, 4, generator=generator, requires_grad=True)
    images = F.normalize(torch.randn(3, 4, generator=generator), dim=1)
    loss = global_alignment(points, CAMERA, images, 0.1)
    loss.backward()
    assert points.grad is not None and points.grad.abs().sum() > 0 and torch.isfinite(points.grad).all()
    with torch.no_grad():
        order = torch.tensor([2, 0, 1])                     # camera k becomes camera order^-1[k]
        renamed = torch.argsort(order)[CAMERA]
        assert global_alignment(points, renamed, images[order], 0.1) == pytest.approx(loss.item(), rel=1e-6)
        shuffled = torch.randperm(6, generator=generator)   # the order of the points does not matter either
        assert global_alignment(points[shuffled], CAMERA[shuffled], images, 0.1) == pytest.approx(loss.item(),
                                                                                                  rel=1e-6)
        scaled = global_alignment(points * 7.0, CAMERA, images * 3.0, 0.1)   # features are normalised
        assert scaled == pytest.approx(loss.item(), rel=1e-6)


def test_global_alignment_needs_two_cameras_with_enough_points():
    points = torch.randn(6, 4, generator=torch.Generator().manual_seed(1), requires_grad=True)
    # min_points 3: only camera 1 (3 points) takes part, nothing to contrast it with
    loss = global_alignment(points, CAMERA, IMAGES, 0.5, min_points=3)
    assert loss.item() == 0.0 and loss.requires_grad
    two = global_alignment(points, CAMERA, IMAGES, 0.5, min_points=2)     # cameras 0 and 1
    rows = torch.tensor([0, 1, 2, 3, 4])
    assert two.item() == pytest.approx(global_alignment(points[rows], CAMERA[rows], IMAGES[:2], 0.5).item())


def test_alignment_options_are_checked_by_name():
    with pytest.raises(ValueError, match="train.global_tau must be positive"):
        TrainConfig(global_tau=0.0)
    with pytest.raises(ValueError, match="train.global_weight must not be negative"):
        TrainConfig(global_weight=-1.0)
    with pytest.raises(ValueError, match="train.self_training with train.seen_classes"):
        TrainConfig(self_training=True, seen_classes=("car",))


@pytest.mark.parametrize("normalize", [True, False])
def test_factored_head_features_give_the_dense_features_losses_and_gradients(normalize):
    """Training passes HeadFeatures (a head's output never built out): every loss, and its gradients with respect
    to the decoder features and the head, as on the (M, D) matrix F.normalize(head(f)) (or head(f))."""
    generator = torch.Generator().manual_seed(3)
    head = torch.nn.Linear(6, 10).double()
    decoder = torch.randn(40, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    text = F.normalize(torch.randn(4, 10, dtype=torch.float64, generator=generator), dim=1)
    labels = torch.randint(0, 4, (40,), generator=generator)
    pixels = torch.randn(40, 10, dtype=torch.float64, generator=generator)
    groups = torch.randint(0, 7, (40,), generator=generator)
    camera = torch.randint(0, 3, (40,), generator=generator)
    images = torch.randn(3, 10, dtype=torch.float64, generator=generator)
    losses = {"infonce": lambda f: semantic_infonce(f, labels, text, 0.1),
              "cross entropy": lambda f: semantic_cross_entropy(f, labels, text, 0.1),
              "spatial-temporal": lambda f: spatial_temporal(f, pixels, labels, text, groups),
              "distillation": lambda f: feature_distillation(f, pixels),
              "global": lambda f: global_alignment(f, camera, images, 0.1)}
    parameters = [decoder, head.weight, head.bias]
    for name, loss in losses.items():
        dense = head(decoder)
        expected = loss(F.normalize(dense, dim=1) if normalize else dense)
        expected_gradients = torch.autograd.grad(expected, parameters)
        factored = loss(HeadFeatures.from_linear(decoder, head, normalize))
        gradients = torch.autograd.grad(factored, parameters)
        assert factored.item() == pytest.approx(expected.item(), rel=1e-10), name
        for mine, theirs in zip(gradients, expected_gradients):
            assert torch.allclose(mine, theirs, atol=1e-10), name


def test_factored_rows_select_and_join_like_the_dense_matrix():
    generator = torch.Generator().manual_seed(4)
    head = torch.nn.Linear(5, 8).double()
    decoder = torch.randn(12, 5, dtype=torch.float64, generator=generator)
    features = HeadFeatures.from_linear(decoder, head, normalize=True)
    dense = F.normalize(head(decoder), dim=1)
    mask = torch.arange(12) % 3 != 0
    assert torch.allclose(features.dense(), dense)
    assert torch.allclose(features.norms(), torch.ones(12, dtype=torch.float64))
    assert torch.allclose(features[mask].dense(), dense[mask]) and torch.allclose(features[2:7].dense(), dense[2:7])
    joined = HeadFeatures.cat([features[mask], features[:2]])
    assert torch.allclose(joined.dense(), torch.cat([dense[mask], dense[:2]]))
    assert torch.allclose(features.sum_by(torch.tensor([0, 1] * 6), 2), torch.stack([dense[::2].sum(0),
                                                                                      dense[1::2].sum(0)]))
    assert torch.allclose(HeadFeatures.of(dense).dense(), dense)
