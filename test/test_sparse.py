"""Sparse convolutions against dense conv3d in float64 (forward and gradients, several threads), and
against spconv's own forward, which the GPU path runs."""

import pytest
import spconv.pytorch as spconv
import torch
import torch.nn.functional as F
from spconv.core import ConvAlgo

from clip2scene_core.student.sparse import DownConv, SparseVoxels, SubMConv, UpConv

SIZE = 8


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def two_threads():
    torch.set_num_threads(2)


def random_sites(seed: int, batch: int = 2, count: int = 120):
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for b in range(batch):
        xyz = torch.unique(torch.randint(0, SIZE, (count, 3), generator=generator), dim=0)
        rows.append(torch.cat([torch.full((len(xyz), 1), b), xyz], dim=1))
    return torch.cat(rows)


def to_dense(features: torch.Tensor, coords: torch.Tensor, batch: int, size: int) -> torch.Tensor:
    dense = features.new_zeros(batch, features.shape[1], size, size, size)
    dense[coords[:, 0], :, coords[:, 1], coords[:, 2], coords[:, 3]] = features
    return dense


def at_sites(dense: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    return dense[coords[:, 0], :, coords[:, 1], coords[:, 2], coords[:, 3]]


def dense_reference(features, coords, subm, down, up):
    """The same three layers as dense convolutions, with outputs masked to the sparse sites."""
    batch = int(coords[:, 0].max()) + 1
    x = to_dense(features, coords, batch, SIZE)
    mask = to_dense(torch.ones(len(coords), 1, dtype=features.dtype), coords, batch, SIZE)
    y = F.conv3d(x, subm.conv.weight.permute(0, 4, 1, 2, 3), padding=1) * mask
    coarse_mask = (F.max_pool3d(mask, 2) > 0).to(features.dtype)
    z = F.conv3d(y, down.conv.weight.permute(0, 4, 1, 2, 3), stride=2) * coarse_mask
    w = F.conv_transpose3d(z, up.conv.weight.permute(4, 0, 1, 2, 3), stride=2)
    return at_sites(y, coords), z, at_sites(w, coords)


def test_forward_and_gradients_match_dense_convolution(two_threads):
    torch.manual_seed(0)
    coords = random_sites(1)
    subm, down, up = SubMConv(3, 4).double(), DownConv(4, 5, "d").double(), UpConv(5, 2, "d").double()
    features = torch.randn(len(coords), 3, dtype=torch.float64, requires_grad=True)
    y = subm(SparseVoxels(features, coords, 2))
    z = down(y)
    w = up(z)
    reference_features = features.detach().clone().requires_grad_(True)
    y_ref, z_ref, w_ref = dense_reference(reference_features, coords, subm, down, up)
    assert torch.allclose(y.features, y_ref, atol=1e-12)
    assert torch.allclose(z.features, at_sites(z_ref, z.coords), atol=1e-12)
    assert torch.allclose(w.features, w_ref, atol=1e-12)
    upstream = torch.randn_like(w.features)
    (w.features * upstream).sum().backward()
    (w_ref * upstream).sum().backward()
    assert torch.allclose(features.grad, reference_features.grad, atol=1e-12)
    for layer in (subm, down, up):  # weight gradients flow through the same spconv parameters
        assert layer.conv.weight.grad is not None and torch.isfinite(layer.conv.weight.grad).all()


def test_weight_gradients_match_dense(two_threads):
    torch.manual_seed(1)
    coords = random_sites(2, batch=1)
    subm = SubMConv(2, 3).double()
    features = torch.randn(len(coords), 2, dtype=torch.float64)
    (subm(SparseVoxels(features, coords, 1)).features ** 2).sum().backward()
    sparse_grad = subm.conv.weight.grad.clone()
    subm.conv.weight.grad = None
    dense = to_dense(features, coords, 1, SIZE)
    mask = to_dense(torch.ones(len(coords), 1, dtype=torch.float64), coords, 1, SIZE)
    (((F.conv3d(dense, subm.conv.weight.permute(0, 4, 1, 2, 3), padding=1) * mask) ** 2).sum()).backward()
    assert torch.allclose(sparse_grad, subm.conv.weight.grad, atol=1e-10)


def test_deterministic_across_runs_and_thread_counts():
    torch.manual_seed(2)
    coords = random_sites(3)
    layer = SubMConv(8, 8)
    features = torch.randn(len(coords), 8)
    results = []
    for threads in (1, 2, 2):
        torch.set_num_threads(threads)
        results.append(layer(SparseVoxels(features, coords, 2)).features)
    assert torch.equal(results[1], results[2]) and torch.allclose(results[0], results[1], atol=1e-6)


def test_same_weights_give_spconvs_forward():
    """spconv's forward (CPU, native algorithm) is what the GPU path runs: same weights, same numbers."""
    torch.manual_seed(3)
    coords = random_sites(4)
    features = torch.randn(len(coords), 3)
    subm, down, up = SubMConv(3, 4), DownConv(4, 5, "d"), UpConv(5, 2, "d")
    ours = up(down(subm(SparseVoxels(features, coords, 2))))
    native = [spconv.SubMConv3d(3, 4, 3, bias=False, indice_key="s", algo=ConvAlgo.Native),
              spconv.SparseConv3d(4, 5, 2, stride=2, bias=False, indice_key="d", algo=ConvAlgo.Native),
              spconv.SparseInverseConv3d(5, 2, 2, bias=False, indice_key="d", algo=ConvAlgo.Native)]
    for reference, layer in zip(native, (subm, down, up)):
        reference.weight.data.copy_(layer.conv.weight.data)
    torch.set_num_threads(1)
    x = spconv.SparseConvTensor(features, coords.int(), [SIZE] * 3, 2)
    out = native[2](native[1](native[0](x)))
    order = {tuple(row.tolist()): i for i, row in enumerate(out.indices.long())}
    matched = torch.stack([out.features[order[tuple(row.tolist())]] for row in ours.coords])
    assert torch.allclose(matched, ours.features, atol=1e-5)


def test_the_whole_student_gives_the_same_features_through_spconv():
    """The GPU path runs the network through spconv's own tensors, keys and inverse convolutions; on the CPU,
    with spconv's native algorithm, it must give what the torch path gives."""
    from clip2scene_core.data import open_source
    from clip2scene_core.student.network import Student, StudentConfig, make_batch

    torch.manual_seed(4)
    torch.set_num_threads(1)
    student = Student(StudentConfig(preset="tiny")).eval()
    for module in student.modules():
        if isinstance(module, spconv.SparseModule) and hasattr(module, "algo"):
            module.algo = ConvAlgo.Native
    frame = open_source("synthetic:frames=1,seed=3,cameras=0")[0]
    batch = make_batch([(frame.points, frame.fields["intensity"]), (frame.points[::2], None)], 0.2)
    with torch.no_grad():
        ours = student.voxel_features(batch, backend="torch")
        theirs = student.voxel_features(batch, backend="spconv")
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
