import pytest

from clip2scene_core.sync import Synchronizer

MS = 1_000_000


def test_pairs_nearest_image_once_decided():
    sync = Synchronizer(["front", "left"], slop_ns=30 * MS)
    assert sync.add_camera("front", 95 * MS, "f95", now_ns=95 * MS) == []
    assert sync.add_lidar(100 * MS, "L100", now_ns=101 * MS) == []        # no image >= 100 yet: a nearer one may come
    assert sync.add_camera("front", 104 * MS, "f104", now_ns=105 * MS) == []  # left still undecided
    (group,) = sync.add_camera("left", 120 * MS, "l120", now_ns=121 * MS)
    assert group.lidar == "L100" and not group.timed_out and not group.missing
    assert group.cameras == {"front": "f104", "left": "l120"}
    assert group.camera_stamps_ns == {"front": 104 * MS, "left": 120 * MS}


def test_outside_slop_is_missing():
    sync = Synchronizer(["front"], slop_ns=10 * MS)
    sync.add_lidar(100 * MS, "L", now_ns=100 * MS)
    (group,) = sync.add_camera("front", 150 * MS, "late", now_ns=150 * MS)
    assert group.missing == ["front"] and group.cameras == {}
    assert sync.stats.partial == 1


def test_offsets_correct_a_camera_clock():
    sync = Synchronizer(["front"], slop_ns=5 * MS, offsets_ns={"front": -200 * MS})
    sync.add_lidar(100 * MS, "L", now_ns=100 * MS)
    (group,) = sync.add_camera("front", 301 * MS, "img", now_ns=101 * MS)
    assert group.cameras == {"front": "img"} and group.camera_stamps_ns["front"] == 301 * MS
    with pytest.raises(ValueError, match="unknown cameras"):
        Synchronizer(["front"], slop_ns=1, offsets_ns={"back": 1})


def test_timeout_releases_with_the_cameras_that_arrived():
    sync = Synchronizer(["front", "dead"], slop_ns=20 * MS, timeout_ns=50 * MS)
    sync.add_camera("front", 98 * MS, "f", now_ns=98 * MS)
    sync.add_camera("front", 101 * MS, "f2", now_ns=101 * MS)
    assert sync.add_lidar(100 * MS, "L", now_ns=102 * MS) == []
    assert sync.poll(now_ns=140 * MS) == []
    (group,) = sync.poll(now_ns=152 * MS)
    assert group.timed_out and group.cameras == {"front": "f2"} and group.missing == ["dead"]


def test_release_keeps_arrival_order_and_images_pair_twice():
    sync = Synchronizer(["front"], slop_ns=60 * MS)
    sync.add_lidar(100 * MS, "L1", now_ns=100 * MS)
    sync.add_lidar(150 * MS, "L2", now_ns=150 * MS)
    groups = sync.add_camera("front", 160 * MS, "img", now_ns=160 * MS)
    assert [g.lidar for g in groups] == ["L1", "L2"]
    assert all(g.cameras == {"front": "img"} for g in groups)


def test_no_cameras_releases_immediately():
    sync = Synchronizer([], slop_ns=0)
    (group,) = sync.add_lidar(5, "L", now_ns=5)
    assert group.cameras == {} and group.missing == [] and not group.timed_out


def test_time_going_backwards_starts_afresh():
    sync = Synchronizer(["front"], slop_ns=20 * MS)
    sync.add_camera("front", 1000 * MS, "old", now_ns=0)
    sync.add_lidar(1010 * MS, "L-old", now_ns=1)
    released = sync.add_lidar(5 * MS, "L-new", now_ns=2)  # the bag looped
    assert [g.lidar for g in released] == ["L-old"] and sync.stats.resets == 1
    (group,) = sync.add_camera("front", 6 * MS, "new", now_ns=3)
    assert group.lidar == "L-new" and group.cameras == {"front": "new"}


def test_flush_and_bounded_queues():
    sync = Synchronizer(["front"], slop_ns=10 * MS, queue_size=3)
    for i in range(5):
        sync.add_camera("front", i * MS, i, now_ns=i)
    assert len(sync.images["front"]) <= 3 and sync.stats.dropped_images == 2
    released = []
    for i in range(5):
        released += sync.add_lidar((100 + i) * MS, f"L{i}", now_ns=i)
    assert [g.lidar for g in released] == ["L0", "L1"]  # pushed out by the queue bound, as partial
    rest = sync.flush()
    assert [g.lidar for g in rest] == ["L2", "L3", "L4"] and all(g.timed_out for g in rest)
    with pytest.raises(KeyError, match="unknown camera"):
        sync.add_camera("back", 0, None, 0)
