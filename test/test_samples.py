"""Training samples: spatial-temporal groups formed over all pairs before sampling, whole groups sampled with a
budget per sweep, older-sweep points the keyframe hides left unpaired."""

import numpy as np
import pytest
import torch

from clip2scene_core.data import open_source
from clip2scene_core.frame import Camera, Frame
from clip2scene_core.geometry import voxelize
from clip2scene_core.samples import PairingCache, occluded_in_keyframe, pair_frame, prepare_sample, sample_groups
from clip2scene_core.teacher import build_teacher
from clip2scene_core.train import TrainConfig
from clip2scene_core.vocabulary import IGNORE, load_vocabulary
from frames import CAMERA_TO_LIDAR


def test_sample_groups_keeps_whole_groups_within_a_budget_per_sweep():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 300, 5000)
    sweeps = rng.integers(0, 3, 5000)
    keep = sample_groups(groups, sweeps, 400, np.random.default_rng(1))
    for sweep in range(3):
        assert 300 < (keep & (sweeps == sweep)).sum() <= 400
    for group in np.unique(groups):
        assert keep[groups == group].all() or not keep[groups == group].any()  # never split
    assert sample_groups(groups, sweeps, 0, np.random.default_rng(1)).all()
    assert np.array_equal(keep, sample_groups(groups, sweeps, 400, np.random.default_rng(1)))


@pytest.fixture(scope="module")
def frame():
    return open_source("synthetic:frames=1,seed=3,cameras=2,width=128,height=72,sweeps=2,beams=16")[0]


def test_groups_are_formed_over_all_pairs_of_all_sweeps_then_sampled_whole(frame):
    teacher = build_teacher("noisy:0.0", load_vocabulary("nuscenes"), text_encoder="hash")
    config = TrainConfig(sweeps=3, max_paired=600, st_grid_m=0.5, augment=False)
    sample = prepare_sample(frame, teacher, config, np.random.default_rng(0))
    pairing = pair_frame(frame, teacher, 3, config.occlusion_tolerance)
    all_pairs = np.flatnonzero(pairing.paired)
    cells = voxelize(pairing.points[all_pairs], config.st_grid_m).point_to_voxel.numpy()
    chosen = sample.index[sample.paired]
    cell_of = dict(zip(all_pairs.tolist(), cells.tolist()))
    chosen_cells = {cell_of[i] for i in chosen.tolist()}
    # Every pair of every chosen cell is in the sample: groups are whole, so they hold several points each.
    assert len(chosen) == np.isin(cells, list(chosen_cells)).sum()
    sizes = np.bincount(sample.groups[sample.paired])
    assert (sizes[sizes > 0] == 1).mean() < 0.5
    # Each sweep has its own budget, the keyframe's nearly used up; older sweeps do not take its share.
    per_sweep = np.bincount(pairing.sweep_index[chosen], minlength=3)
    assert (per_sweep <= 600).all() and per_sweep[0] > 450 and per_sweep[1:].min() > 0, per_sweep
    # The chosen pairs keep their teacher labels and pixel features.
    assert np.array_equal(sample.labels[sample.paired], pairing.labels[chosen])
    assert np.allclose(sample.pixel_features[sample.paired].numpy(), pairing.features[chosen].numpy())


def wall_camera(width=80, height=60):
    K = [[40, 0, width / 2 - 0.5], [0, 40, height / 2 - 0.5], [0, 0, 1]]
    return Camera("front", np.zeros((height, width, 3), np.uint8), K, np.linalg.inv(CAMERA_TO_LIDAR),
                  label_image=np.full((height, width), 17))


def grid(x, y0, y1, z0, z1, step=0.05):
    y, z = np.meshgrid(np.arange(y0, y1, step), np.arange(z0, z1, step))
    return np.stack([np.full(y.size, x), y.ravel(), z.ravel()], axis=1).astype(np.float32)


def test_older_sweep_points_behind_keyframe_points_are_occluded():
    camera = wall_camera()
    wall = grid(5.0, -1.0, 1.0, -0.5, 0.5)                      # the keyframe sees a wall 5 m ahead
    behind = grid(10.0, -1.5, 1.5, -0.9, 0.9, step=0.3)          # an older sweep saw what the wall now hides
    on_wall = grid(5.05, -0.8, 0.8, -0.4, 0.4, step=0.2)         # ... and the wall itself
    aside = grid(10.0, 4.0, 6.0, -0.5, 0.5, step=0.3)            # ... and places no keyframe point covers
    points = np.concatenate([wall, behind, on_wall, aside])
    sweep_index = np.concatenate([np.zeros(len(wall)), np.ones(len(behind) + len(on_wall) + len(aside))]).astype(int)
    hidden = occluded_in_keyframe(points, sweep_index, np.zeros(len(points), int), [camera], 0.3)
    parts = np.split(hidden, np.cumsum([len(wall), len(behind), len(on_wall)]))
    assert not parts[0].any() and not parts[2].any() and not parts[3].any()
    # Behind the wall's image (|y| < 2 and |z| < 1 at 10 m) hidden; beyond its edges, seen past it.
    inside = (np.abs(behind[:, 1]) < 1.9) & (np.abs(behind[:, 2]) < 0.9)
    assert parts[1][inside].all() and parts[1].any()
    assert not occluded_in_keyframe(points, sweep_index, np.full(len(points), -1), [camera], 0.3).any()


def test_pairing_leaves_occluded_older_points_unpaired():
    camera = wall_camera()
    wall, behind = grid(5.0, -1.0, 1.0, -0.5, 0.5), grid(10.0, -1.0, 1.0, -0.5, 0.5, step=0.2)
    vocabulary = load_vocabulary("nuscenes")
    teacher = build_teacher("labels", vocabulary, text_encoder="hash")
    older = Frame(points=behind, stamp_ns=0, name="drive/0")
    frame = Frame(points=wall, stamp_ns=100, cameras=[camera], sweeps=[older], name="drive/1")
    tested = pair_frame(frame, teacher, 2, 0.3)
    assert (tested.labels[tested.sweep_index == 0] != IGNORE).all()
    assert (tested.labels[tested.sweep_index == 1] == IGNORE).all()
    untested = pair_frame(frame, teacher, 2, None)
    assert (untested.labels != IGNORE).all()


def test_the_pairing_cache_pairs_each_scan_once_and_keeps_within_its_budget(frame):
    teacher = build_teacher("cliplike", load_vocabulary("nuscenes"), text_encoder="hash")
    calls = []

    def make():
        calls.append(1)
        return pair_frame(frame, teacher, 1, 0.3)

    fresh = make()
    cache = PairingCache(1024)
    first, again = cache.get(7, make), cache.get(7, make)
    assert len(calls) == 2                                  # the fresh one above, and one for the cache
    for pairing in (first, again):
        assert np.array_equal(pairing.labels, fresh.labels) and np.array_equal(pairing.points, fresh.points)
        paired = fresh.labels != IGNORE
        # Paired rows' features round-trip through float16; unpaired rows (never read) are zero.
        assert torch.allclose(pairing.features[paired], fresh.features[paired], atol=1e-3)
        assert not pairing.features[~paired].any()
    assert torch.equal(first.features, again.features)
    tiny = PairingCache(0.001)                              # 1 kB: nothing fits, so every call pairs again
    a, b = tiny.get(7, make), tiny.get(7, make)
    assert len(calls) == 4 and not tiny.items and torch.equal(a.features, b.features)
    assert torch.equal(a.features, first.features)          # kept or not, the same numbers
