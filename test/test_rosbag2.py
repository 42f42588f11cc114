"""rosbag2 round trips and topic detection, on real rosbag2 files written and read back."""

import numpy as np
import pytest

from clip2scene_core import messages as conv
from clip2scene_core.data import SourceError, open_source
from clip2scene_core.data.rosbag2 import (CAMERA_INFO, IMAGE, POINTCLOUD2, TYPESTORE, BagLayout, BagSource, BagWriter,
                                          _header, cloud_message, header_of, write_bag)
from frames import make_frames


def assert_same_frames(read, written, jpeg: bool):
    assert len(read) == len(written)
    for got, want in zip(read, written):
        assert np.array_equal(got.points, want.points)
        assert np.array_equal(got.labels, want.labels)
        for name in ("intensity", "ring", "time"):
            assert np.array_equal(got.fields[name], want.fields[name])
        assert got.stamp_ns == want.stamp_ns
        assert np.allclose(got.ego_pose, want.ego_pose, atol=1e-9)
        assert np.allclose(got.lidar_to_ego, want.lidar_to_ego, atol=1e-9)
        assert [c.name for c in got.cameras] == [c.name.lower() for c in want.cameras]
        for got_camera, want_camera in zip(got.cameras, want.cameras):
            assert np.allclose(got_camera.lidar_to_camera, want_camera.lidar_to_camera, atol=1e-9)
            assert np.allclose(got_camera.intrinsics, want_camera.intrinsics)
            assert np.array_equal(got_camera.label_image, want_camera.label_image)
            assert np.array_equal(got_camera.instance_image, want_camera.instance_image)
            difference = np.abs(got_camera.image.astype(int) - want_camera.image).mean()
            assert difference < 3 if jpeg else difference == 0


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("compressed", [True, False])
def test_frames_bag_frames_round_trip(tmp_path, storage, compressed):
    frames = make_frames(4, cameras=2)
    rng = np.random.default_rng(1)
    for frame in frames[:-1]:  # surface ids past 16 bits (32SC1) at <namespace>/instances; the last frame has none
        for camera in frame.cameras:
            camera.instance_image = rng.integers(0, 2**31, camera.image.shape[:2])
    path = write_bag(frames, tmp_path / "bag", storage, BagLayout(compressed=compressed))
    source = open_source(f"bag:{path}")
    assert isinstance(source, BagSource) and source.sync_stats.complete == 4
    assert source.camera_topics == [BagLayout(compressed=compressed).camera_topic(f"cam_{c}") for c in (0, 1)]
    assert_same_frames(list(source), frames, jpeg=compressed)


def test_cameras_at_other_times_keep_exact_extrinsics(tmp_path):
    # Cameras fire 20 ms after the sweep while the ego moves: lidar_to_camera then differs from the
    # static extrinsic, and must come back exactly through /tf_static and the ego poses on /tf.
    frames = make_frames(3, cameras=1)
    for frame in frames:
        camera = frame.cameras[0]
        camera.stamp_ns = frame.stamp_ns + 20_000_000
        motion = frame.ego_pose.copy()
        motion[0, 3] += 0.3
        camera.ego_pose = motion
        camera.lidar_to_camera = camera.lidar_to_camera @ np.linalg.inv(frame.lidar_to_ego) @ \
            np.linalg.inv(motion) @ frame.ego_pose @ frame.lidar_to_ego
    source = open_source(f"bag:{write_bag(frames, tmp_path / 'bag')}")
    for got, want in zip(source, frames):
        assert np.allclose(got.cameras[0].lidar_to_camera, want.cameras[0].lidar_to_camera, atol=1e-6)


def test_sweeps_come_from_earlier_messages(tmp_path):
    frames = make_frames(4)
    source = open_source(f"bag:{write_bag(frames, tmp_path / 'bag')}?sweeps=2")
    assert [len(f.sweeps) for f in source] == [0, 1, 2, 2]
    last = source[3]
    assert [s.stamp_ns for s in last.sweeps] == [frames[2].stamp_ns, frames[1].stamp_ns]
    assert np.allclose(last.sweeps[0].ego_pose, frames[2].ego_pose)


def test_messages_serialised_by_rclpy_read_back(tmp_path):
    rclpy_conversions = pytest.importorskip("clip2scene_ros.conversions", reason="rclpy not installed")
    from rclpy.serialization import serialize_message
    frames = make_frames(2, cameras=1)
    with BagWriter(tmp_path / "bag") as writer:
        writer.add_topic("/points", POINTCLOUD2)
        writer.add_topic("/cam/image_raw", IMAGE)
        writer.add_topic("/cam/camera_info", CAMERA_INFO)
        for frame in frames:
            layout = conv.encode_cloud(frame.points, frame.fields, frame.labels)
            cloud = rclpy_conversions.cloud_msg(layout, rclpy_conversions.header(frame.stamp_ns, "lidar"))
            writer.write_raw("/points", frame.stamp_ns, serialize_message(cloud))
            camera = frame.cameras[0]
            header = rclpy_conversions.header(camera.stamp_ns, "cam")
            writer.write_raw("/cam/image_raw", camera.stamp_ns,
                             serialize_message(rclpy_conversions.image_msg(camera.image, header)))
            writer.write_raw("/cam/camera_info", camera.stamp_ns,
                             serialize_message(rclpy_conversions.camera_info_msg(camera, header)))
    source = BagSource(str(tmp_path / "bag"))
    frame = source[1]
    assert np.array_equal(frame.points, frames[1].points) and np.array_equal(frame.labels, frames[1].labels)
    # No /tf_static for "cam": the camera cannot be placed, so it is left out rather than guessed.
    assert frame.cameras == [] and source.camera_topics == ["/cam/image_raw"]


def test_header_is_read_without_deserialising():
    header = _header(1_234_000_000_567, "velodyne")
    raw = TYPESTORE.serialize_cdr(header, "std_msgs/msg/Header")
    assert header_of(raw) == (1_234_000_000_567, "velodyne")


def test_lidar_only_bag_and_nan_points(tmp_path):
    frame = make_frames(1, cameras=0)[0]
    frame.points[:10] = np.nan
    source = open_source(f"bag:{write_bag([frame], tmp_path / 'bag')}")
    got = source[0]
    assert got.cameras == [] and len(got) == len(frame) - 10
    assert np.array_equal(got.labels, frame.labels[10:])


def test_split_recording_reads_as_one_stream(tmp_path):
    frames = make_frames(5)
    write_bag(frames[:2], tmp_path / "run" / "part_000")
    write_bag(frames[2:], tmp_path / "run" / "part_001")
    source = open_source(f"bag:{tmp_path / 'run'}?sweeps=1")
    assert [f.stamp_ns for f in source] == [f.stamp_ns for f in frames]
    assert source[2].sweeps[0].stamp_ns == frames[1].stamp_ns  # across the part boundary


def test_topic_choice_errors_name_the_fix(tmp_path):
    frames = make_frames(2)
    with BagWriter(tmp_path / "two_clouds") as writer:
        writer.write_frame(frames[0])
        writer.layout = BagLayout(lidar_topic="/other/points")
        writer.write_frame(frames[1])
    with pytest.raises(SourceError, match=r"several PointCloud2 topics .*lidar=/points"):
        open_source(f"bag:{tmp_path / 'two_clouds'}")
    source = open_source(f"bag:{tmp_path / 'two_clouds'}?lidar=/other/points")
    assert len(source) == 1
    with pytest.raises(SourceError, match="not an Image or CompressedImage topic"):
        open_source(f"bag:{tmp_path / 'two_clouds'}?lidar=/other/points&cameras=/nope/image_raw")
    with pytest.raises(SourceError, match="does not exist"):
        open_source(f"bag:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no metadata.yaml"):
        open_source(f"bag:{tmp_path / 'empty'}")
    with pytest.raises(SourceError, match="unknown option 'lidr'"):
        open_source(f"bag:{tmp_path / 'two_clouds'}?lidr=/points")


def test_sweeps_need_ego_poses(tmp_path):
    frames = make_frames(2, cameras=0)
    with BagWriter(tmp_path / "bag") as writer:
        for frame in frames:
            msg = cloud_message(conv.encode_cloud(frame.points), frame.stamp_ns, "lidar")
            writer.write_message("/points", POINTCLOUD2, frame.stamp_ns, msg)
    assert len(open_source(f"bag:{tmp_path / 'bag'}")) == 2
    with pytest.raises(SourceError, match="need ego poses"):
        open_source(f"bag:{tmp_path / 'bag'}?sweeps=1")


def test_camera_outside_slop_leaves_a_lidar_only_frame(tmp_path):
    frames = make_frames(2, cameras=1)
    frames[1].cameras[0].stamp_ns += 200_000_000
    source = open_source(f"bag:{write_bag(frames, tmp_path / 'bag')}?slop_ms=50")
    assert len(source[0].cameras) == 1
    assert len(source) == 2 and source.sync_stats.partial >= 1


def test_clouds_before_the_first_ego_pose_are_left_out_and_counted(tmp_path, caplog):
    """A recorder that got clouds before the first odometry: those clouds cannot be placed; the rest is read."""
    frames = list(open_source("synthetic:frames=3,seed=1,cameras=1,width=64,height=48"))
    with BagWriter(tmp_path / "bag") as writer:
        early, stamp = frames[0], frames[0].stamp_ns - 2_000_000_000
        writer.write_message(writer.layout.lidar_topic, POINTCLOUD2, stamp, cloud_message(
            conv.encode_cloud(early.points, early.fields, early.labels), stamp, early.frame_id))
        for frame in frames:
            writer.write_frame(frame)
    source = open_source(f"bag:{tmp_path / 'bag'}")
    assert source.unposed_clouds == 1 and "1 cloud(s) on /lidar/points outside the ego poses" in caplog.text
    assert [frame.stamp_ns for frame in source] == [frame.stamp_ns for frame in frames]
