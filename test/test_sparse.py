"""Sparse convolutions against dense conv3d in float64 (forward and gradients, several threads), and
against spconv's own forward, which the GPU path runs."""

import pytest
import spconv.pytorch as spconv
import torch
import torch.nn.functional as F
from spconv.core import ConvAlgo

from clip2scene_core.student import sparse
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
        ours = student.voxel_features(batch, backend="cpu")
        theirs = student.voxel_features(batch, backend="spconv")
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


def pair_set(rulebook):
    """{(input row, output row, offset)} of a Rulebook."""
    offsets = torch.repeat_interleave(torch.arange(len(rulebook.starts) - 1), rulebook.starts.diff())
    return set(zip(rulebook.inputs.tolist(), rulebook.outputs.tolist(), offsets.tolist()))


def brute_force_submanifold(coords):
    """Every (input q, output p, offset of q - p) with q - p in {-1, 0, 1}^3 and the same scan."""
    delta = coords[None, :, :] - coords[:, None, :]  # [p, q] = q - p
    near = (delta[..., 0] == 0) & (delta[..., 1:].abs() <= 1).all(-1)
    p, q = torch.nonzero(near, as_tuple=True)
    offset = ((delta[p, q, 1] + 1) * 9 + (delta[p, q, 2] + 1) * 3 + delta[p, q, 3] + 1)
    return set(zip(q.tolist(), p.tolist(), offset.tolist()))


def assert_rows_unique_per_offset(rulebook):
    """What lets the kernel share an offset's pairs among threads: no row twice within one offset."""
    bounds = rulebook.starts.tolist()
    for begin, end in zip(bounds[:-1], bounds[1:]):
        for rows in (rulebook.inputs[begin:end], rulebook.outputs[begin:end]):
            assert len(torch.unique(rows)) == end - begin


@pytest.mark.parametrize("seed", [5, 6])
def test_rulebooks_hold_exactly_the_pairs_of_a_brute_force_search(seed):
    coords = random_sites(seed, batch=3, count=150)
    coords = torch.cat([coords, torch.tensor([[3, 0, 0, 0], [3, SIZE - 1, SIZE - 1, SIZE - 1], [3, 0, 0, 1]])])
    coords[:40, 1:] -= 5  # negative coordinates too
    rulebook = sparse.submanifold_rulebook(coords, 3)
    assert len(rulebook.starts) == 28 and int(rulebook.starts[-1]) == len(rulebook.inputs) == len(rulebook.outputs)
    assert pair_set(rulebook) == brute_force_submanifold(coords)  # scans 0-3 touch: no pair crosses them
    assert_rows_unique_per_offset(rulebook)
    coarse, down = sparse.downsample_rulebook(coords)
    parent = {tuple(row): n for n, row in enumerate(coarse.tolist())}
    expected = set()
    for i, (b, x, y, z) in enumerate(coords.tolist()):
        expected.add((i, parent[(b, x // 2, y // 2, z // 2)], (x % 2) * 4 + (y % 2) * 2 + z % 2))
    assert pair_set(down) == expected and len(parent) == len(coarse) and down.num_out == len(coarse)
    assert_rows_unique_per_offset(down)


def test_empty_input():
    coords = torch.zeros(0, 4, dtype=torch.long)
    subm, down = SubMConv(3, 4).double(), DownConv(4, 5, "d").double()
    up = UpConv(5, 2, "d").double()
    features = torch.zeros(0, 3, dtype=torch.float64, requires_grad=True)
    out = up(down(subm(SparseVoxels(features, coords, 1))))
    assert out.features.shape == (0, 2)
    out.features.sum().backward()
    assert features.grad.shape == (0, 3) and (subm.conv.weight.grad == 0).all()


def plain_convolve(features, weight, rulebook, transpose):
    """The convolution in differentiable torch operations (a gather, a matmul and an index_add per offset)."""
    sources, targets, size = rulebook.inputs, rulebook.outputs, rulebook.num_out
    if transpose:
        sources, targets, size = targets, sources, rulebook.num_in
    out = features.new_zeros(size, weight.shape[2])
    bounds = rulebook.starts.tolist()
    for k, (begin, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        out = out.index_add(0, targets[begin:end], features[sources[begin:end]] @ weight[k])
    return out


def rulebook_of(kind, coords):
    """(rulebook, kernel offsets, input rows, transpose) of a layer kind on coords."""
    if kind == "subm":
        return sparse.submanifold_rulebook(coords, 3), 27, len(coords), False
    coarse, rulebook = sparse.downsample_rulebook(coords)
    return rulebook, 8, len(coarse) if kind == "up" else len(coords), kind == "up"


@pytest.fixture(params=sparse.Kernels.available())
def variant(request, monkeypatch):
    """Each build of the kernels this machine has and runs (64-, 32- and 16-byte vectors on x86-64-v4)."""
    monkeypatch.setattr(sparse, "_loaded", sparse.Kernels(request.param))
    return request.param


@pytest.mark.parametrize("c_out", [3, 59])
@pytest.mark.parametrize("kind", ["subm", "down", "up"])
def test_backward_passes_gradcheck_in_every_build(kind, c_out, variant):
    """59 output columns: in every build, tiles of four (AVX-512), two and one vectors and of single columns."""
    torch.manual_seed(7)
    rulebook, count, rows, transpose = rulebook_of(kind, random_sites(8, batch=2, count=14))
    features = torch.randn(rows, 2, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(count, 2, c_out, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, w: sparse._SparseConv.apply(f, w, rulebook, transpose),
                                    (features, weight))


@pytest.mark.parametrize("kind", ["subm", "down", "up"])
def test_wide_layers_over_many_pairs_in_every_build_on_one_and_two_threads(kind, variant):
    """More input channels than one pass of the kernel takes (128), more pairs per offset than one block (96) and
    enough work for two threads: the plain gather-matmul-scatter's numbers in float64, and bit for bit the same
    numbers on one thread and on two, in float32."""
    torch.manual_seed(9)
    generator = torch.Generator().manual_seed(9)
    xyz = torch.unique(torch.randint(0, 24, (6000, 3), generator=generator), dim=0)
    coords = torch.cat([torch.zeros(len(xyz), 1, dtype=torch.long), xyz], dim=1)
    rulebook, count, rows, transpose = rulebook_of(kind, coords)
    features = torch.randn(rows, 130, dtype=torch.float64)
    weight = torch.randn(count, 130, 40, dtype=torch.float64)
    assert torch.allclose(sparse.convolve(features, weight, rulebook, transpose),
                          plain_convolve(features, weight, rulebook, transpose), atol=1e-9)
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        results.append(sparse.convolve(features.float(), weight.float(), rulebook, transpose))
    assert torch.equal(results[0], results[1])


def test_every_build_gives_the_same_student_features(monkeypatch):
    from clip2scene_core.data import open_source
    from clip2scene_core.student.network import Student, StudentConfig, make_batch

    builds = sparse.Kernels.available()
    torch.manual_seed(11)
    student = Student(StudentConfig(preset="small")).eval()
    frame = open_source("synthetic:frames=1,seed=3,cameras=0")[0]
    batch = make_batch([(frame.points, frame.fields["intensity"])], 0.1)
    results = []
    for build in builds:
        monkeypatch.setattr(sparse, "_loaded", sparse.Kernels(build))
        with torch.no_grad():
            results.append(student.voxel_features(batch))
    for features in results[1:]:
        assert torch.allclose(features, results[0], atol=1e-5)


def test_missing_kernels_are_named_with_the_way_to_build_them(tiny_student, tmp_path, monkeypatch, capsys):
    """An install without the compiled kernels: loading a student on the CPU is refused at once, and the CLI
    says what to do (exit 2, no traceback)."""
    from clip2scene_core.cli import main

    with pytest.raises(ValueError, match="variant 'v9' is not one of those built here"):
        sparse.Kernels("v9")
    monkeypatch.setattr(sparse.Kernels, "FOLDER", tmp_path)
    monkeypatch.setattr(sparse, "_loaded", None)
    with pytest.raises(sparse.KernelsMissing, match="not built.*make setup.*colcon build"):
        sparse.Kernels()
    threads = torch.get_num_threads()
    try:
        code = main(["segment", "--checkpoint", str(tiny_student), "--data", "synthetic:frames=1,cameras=0",
                     "--out", str(tmp_path / "out")])
    finally:
        torch.set_num_threads(threads)  # the CLI sets the thread count it chooses
    error = capsys.readouterr().err
    assert code == 2 and "CPU sparse-convolution kernels are not built" in error and "Traceback" not in error


def test_the_students_gradients_equal_plain_autograds_with_and_without_checkpointing(monkeypatch):
    """The whole tiny student, float64: the kernels' backward and stage checkpointing give plain autograd's
    gradients, and recomputation leaves BatchNorm's running statistics as one forward does."""
    from clip2scene_core.data import open_source
    from clip2scene_core.student.network import Student, StudentConfig, make_batch

    frame = open_source("synthetic:frames=1,seed=3,cameras=0")[0]
    batch = make_batch([(frame.points[::2], frame.fields["intensity"][::2]), (frame.points[::5], None)], 0.2)
    batch.features = batch.features.double()
    upstream = None
    results = []
    for plain, checkpointing in ((True, False), (False, False), (False, True)):
        torch.manual_seed(10)
        student = Student(StudentConfig(preset="tiny")).double().train()
        student.checkpoint_stages = checkpointing
        with monkeypatch.context() as patch:
            if plain:
                patch.setattr(sparse._SparseConv, "apply", plain_convolve)
            features = student.voxel_features(batch)
            upstream = torch.randn_like(features) if upstream is None else upstream
            (features * upstream).sum().backward()
        grads = torch.cat([p.grad.flatten() for p in student.parameters() if p.grad is not None])
        stats = torch.cat([torch.cat([m.running_mean, m.running_var, m.num_batches_tracked[None]])
                           for m in student.modules() if isinstance(m, torch.nn.BatchNorm1d)])
        results.append((features.detach(), grads, stats))
    for features, grads, stats in results[1:]:
        assert torch.allclose(features, results[0][0], atol=1e-12)
        assert torch.allclose(grads, results[0][1], atol=1e-10)
        assert torch.allclose(stats, results[0][2], atol=1e-12)
    # Checkpointing recomputes exactly, and the recomputation does not count its batch a second time.
    assert torch.equal(results[1][1], results[2][1]) and torch.equal(results[1][2], results[2][2])


def randomized_batchnorm(student):
    with torch.no_grad():
        for module in student.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 2.0)
                module.bias.normal_(0.0, 0.2)


def test_inference_folds_batchnorm_into_the_convolutions_and_follows_weight_changes():
    """Without autograd, eval-mode BatchNorm is folded into each convolution: the same features as with autograd
    on (BatchNorm after the convolution), also after the weights or the statistics are written in place."""
    from clip2scene_core.data import open_source
    from clip2scene_core.student.network import Student, StudentConfig, make_batch

    torch.manual_seed(12)
    student = Student(StudentConfig(preset="tiny")).double().eval()
    randomized_batchnorm(student)
    frame = open_source("synthetic:frames=1,seed=3,cameras=0")[0]
    batch = make_batch([(frame.points, frame.fields["intensity"])], 0.2)
    batch.features = batch.features.double()
    for change in (None, "weight", "statistics"):
        with torch.no_grad():
            if change == "weight":
                student.stem[1].conv.weight.mul_(-2.0)
            elif change == "statistics":
                student.stem_bn[1].running_var.mul_(3.0)
            folded = student.voxel_features(batch)
        with torch.enable_grad():
            unfolded = student.voxel_features(batch)
        assert torch.allclose(folded, unfolded.detach(), atol=1e-12), change
