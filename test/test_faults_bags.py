"""Faults of the bag and recording families: recordings cut off by a kill, damaged or odd bags, the recorder
with an output folder it cannot use or shares. The reader and the CLI give a clear error (or a counted skip),
never a traceback; a killed recording reads back, after `clip2scene reindex`, every pair flushed before the kill."""

import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clip2scene_core import messages as conv
from clip2scene_core.cli import main as cli
from clip2scene_core.data import SourceError, open_source
from clip2scene_core.data.reindex import RecordingLock, RecordingLocked, reindex
from clip2scene_core.data.rosbag2 import POINTCLOUD2, BagWriter, cloud_message
from frames import make_frames

ROOT = Path(__file__).resolve().parents[1]
SOURCE = "synthetic:frames=4,seed=3,cameras=2,width=96,height=64,beams=16"

# Writes the frames of SOURCE into a bag, flushing after the first `flushed` of them, and dies by SIGKILL.
KILLED_WRITER = """
import os, signal, sys
from clip2scene_core.data import open_source
from clip2scene_core.data.reindex import RecordingLock
from clip2scene_core.data.rosbag2 import BagWriter
out, flushed = sys.argv[1], int(sys.argv[2])
os.makedirs(out, exist_ok=True)
lock = RecordingLock(out)
writer = BagWriter(os.path.join(out, "part_0000"))
for i, frame in enumerate(open_source(sys.argv[3])):
    writer.write_frame(frame)
    if i < flushed:
        writer.flush()
os.kill(os.getpid(), signal.SIGKILL)
"""


def killed_recording(folder: Path, flushed: int, source: str = SOURCE) -> Path:
    """A recording folder whose writer was SIGKILLed with `flushed` frames flushed (and one more unflushed)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(folder), str(flushed), source], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == -signal.SIGKILL, result.stderr
    return folder


def rosbags_clouds(folder: Path) -> list[int]:
    """Header stamps of every PointCloud2 message, read by rosbags itself (not our reader)."""
    from rosbags.highlevel import AnyReader

    parts = sorted(p for p in folder.iterdir() if (p / "metadata.yaml").is_file())
    with AnyReader(parts) as reader:
        clouds = [c for c in reader.connections if c.msgtype == POINTCLOUD2]
        return [reader.deserialize(raw, POINTCLOUD2).header.stamp.sec * 10**9 +
                reader.deserialize(raw, POINTCLOUD2).header.stamp.nanosec
                for _, _, raw in reader.messages(connections=clouds)]


def run_cli(capsys, *arguments) -> tuple[int, str, str]:
    """The CLI in this process: an exception escaping main() would be the traceback a user sees."""
    code = cli(list(arguments))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_killed_recording_is_refused_with_the_fix_and_reads_back_after_reindex(tmp_path, capsys):
    recording = killed_recording(tmp_path / "run", flushed=3)
    with pytest.raises(SourceError, match=r"part\(s\) part_0000 were not closed .*clip2scene reindex"):
        open_source(f"bag:{recording}")
    code, _, err = run_cli(capsys, "inspect", f"bag:{recording}")
    assert code == 2 and "clip2scene reindex" in err

    code, out, _ = run_cli(capsys, "reindex", str(recording))
    assert code == 0 and "3 clouds" in out
    truth = list(open_source(SOURCE))
    recorded = open_source(f"bag:{recording}")
    assert len(recorded) == 3  # the three flushed frames; the fourth was still in memory
    for got, want in zip(recorded, truth):
        assert got.stamp_ns == want.stamp_ns and np.array_equal(got.points, want.points)
        assert [c.name for c in got.cameras] == ["cam_front", "cam_front_right"]
    assert rosbags_clouds(recording) == [frame.stamp_ns for frame in truth[:3]]
    assert (recording / "part_0000" / "part_0000.mcap.unfinished").is_file()  # nothing deleted
    code, out, _ = run_cli(capsys, "reindex", str(recording))
    assert code == 0 and "nothing to reindex" in out


@pytest.mark.parametrize("cut", [0.35, 0.7, 0.95, -20], ids=["35%", "70%", "95%", "in-footer"])
def test_a_part_cut_anywhere_keeps_every_complete_frame(tmp_path, cut):
    frames = make_frames(6, points=3000, cameras=2)
    with BagWriter(tmp_path / "bag") as writer:
        for frame in frames:
            writer.write_frame(frame)
            writer.flush()
    mcap = tmp_path / "bag" / "bag.mcap"
    data = mcap.read_bytes()
    mcap.write_bytes(data[:int(len(data) * cut) if cut > 0 else len(data) + cut])  # metadata.yaml stays
    with pytest.raises(SourceError, match="clip2scene reindex"):
        open_source(f"bag:{tmp_path / 'bag'}")
    (report,) = reindex(tmp_path / "bag")
    recorded = open_source(f"bag:{tmp_path / 'bag'}")
    assert report.clouds == len(recorded) >= (1 if cut > 0 else 6)
    assert 0 < report.dropped_bytes < len(data)
    for got, want in zip(recorded, frames):  # a prefix of what was written, every frame whole
        assert got.stamp_ns == want.stamp_ns and np.array_equal(got.points, want.points)
        assert len(got.cameras) == 2


def test_a_live_recording_is_read_without_its_open_part_and_reindex_waits_for_it(tmp_path, caplog):
    recording = killed_recording(tmp_path / "run", flushed=2)
    (recording / "part_0000").rename(recording / "part_0001")
    earlier = open_source(SOURCE)[0]
    for stamped in [earlier, *earlier.cameras]:
        stamped.stamp_ns -= 10**9
    with BagWriter(recording / "part_0000") as writer:  # a closed part, a second before the open one
        writer.write_frame(earlier)
    lock = RecordingLock(recording)  # as a running recorder holds it
    try:
        with pytest.raises(RecordingLocked, match=r"another process \(pid \d+\) is recording into it"):
            RecordingLock(recording)
        with pytest.raises(RecordingLocked, match="is recording into it"):
            reindex(recording)
        with caplog.at_level(logging.WARNING):
            assert len(open_source(f"bag:{recording}")) == 1
        assert "is being recorded: its open part(s) part_0001 are left out" in caplog.text
    finally:
        lock.release()
    reindex(recording)
    assert len(open_source(f"bag:{recording}")) == 3


def test_the_lock_dies_with_its_owner(tmp_path):
    code = "import os, signal, sys; from clip2scene_core.data.reindex import RecordingLock; " \
           "lock = RecordingLock(sys.argv[1]); print('locked', flush=True); os.kill(os.getpid(), signal.SIGKILL)"
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == -signal.SIGKILL and "locked" in result.stdout
    RecordingLock(tmp_path).release()  # free again: the kernel dropped the dead owner's flock


def write_lidar_bag(path: Path, stamps_ns: list[int], statics=()) -> Path:
    """A LiDAR-only bag with clouds stamped stamps_ns, logged 100 ms apart in that order."""
    frames = make_frames(len(stamps_ns), points=200, cameras=0)
    with BagWriter(path) as writer:
        if statics:
            writer.write_static_transforms(list(statics), stamps_ns[0])
        for i, (frame, stamp) in enumerate(zip(frames, stamps_ns)):
            cloud = cloud_message(conv.encode_cloud(frame.points, frame.fields, frame.labels), stamp, "lidar")
            writer.write_message("/lidar/points", POINTCLOUD2, 10**9 + i * 10**8, cloud)
    return path


def test_a_static_transform_cycle_is_named(tmp_path, capsys):
    T = np.eye(4)
    bag = write_lidar_bag(tmp_path / "bag", [10**9, 2 * 10**9], statics=[("base_link", "lidar", T),
                                                                      ("lidar", "base_link", T)])
    with pytest.raises(SourceError, match=r"transforms form a cycle through .* each frame needs one parent"):
        open_source(f"bag:{bag}")
    code, _, err = run_cli(capsys, "inspect", f"bag:{bag}")
    assert code == 2 and "cycle" in err
    code, _, err = run_cli(capsys, "calibration", f"bag:{bag}", "--out", str(tmp_path / "calibration.yaml"))
    assert code == 2 and "cycle" in err


def test_cloud_stamps_that_go_backwards_are_counted_and_skipped(tmp_path, capsys, caplog):
    stamps = [10**9, 11 * 10**8, 12 * 10**8, 5 * 10**8, 12 * 10**8, 13 * 10**8]  # a clock reset, a repeat
    bag = write_lidar_bag(tmp_path / "bag", stamps)
    with caplog.at_level(logging.WARNING):
        source = open_source(f"bag:{bag}?sweeps=0")
    assert source.skipped_clouds == 2 and [f.stamp_ns for f in source] == [10**9, 11 * 10**8, 12 * 10**8, 13 * 10**8]
    assert "2 cloud(s) on /lidar/points skipped whose stamps are not after the previous cloud's" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        code, out, _ = run_cli(capsys, "inspect", f"bag:{bag}")
    assert code == 0 and "4" in out and "2 cloud(s) on /lidar/points skipped" in caplog.text


def damaged(kind: str, path: Path) -> Path:
    """A bag directory damaged in one way the field produces."""
    if kind == "empty folder":
        path.mkdir()
        return path
    if kind == "no messages":
        with BagWriter(path) as writer:
            writer.add_topic("/lidar/points", POINTCLOUD2)
        return path
    if kind == "only an unknown type":
        with BagWriter(path) as writer:
            writer.add_topic("/thing", "acme_msgs/msg/Thing", msgdef="int32 value\n", rihs01="RIHS01_" + "0" * 64)
            writer.write_raw("/thing", 10**9, b"\x00\x01\x00\x00\x07\x00\x00\x00")
        return path
    write_lidar_bag(path, [10**9, 2 * 10**9])
    if kind == "metadata is not YAML":
        (path / "metadata.yaml").write_text("rosbag2_bagfile_information: [unclosed\n")
    elif kind == "metadata without its keys":
        (path / "metadata.yaml").write_text("rosbag2_bagfile_information: {version: 9}\n")
    elif kind == "storage file missing":
        (path / "bag.mcap").unlink()
    elif kind == "not an mcap file":
        (path / "bag.mcap").write_bytes(b"PK\x03\x04 this is a zip archive" * 10)
    elif kind == "metadata missing":
        (path / "metadata.yaml").unlink()
    return path


KINDS = ["empty folder", "no messages", "only an unknown type", "metadata is not YAML", "metadata without its keys",
         "storage file missing", "not an mcap file", "metadata missing"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_bag_is_a_clear_error_from_reader_and_cli(tmp_path, capsys, kind):
    bag = damaged(kind, tmp_path / "bag")
    with pytest.raises(SourceError) as error:
        open_source(f"bag:{bag}")
    assert str(bag) in str(error.value)
    code, _, err = run_cli(capsys, "inspect", f"bag:{bag}")
    assert code == 2 and err.startswith("clip2scene inspect: error:") and str(bag) in err


@pytest.mark.parametrize("kind", ["empty folder", "not an mcap file", "a file"])
def test_reindex_refuses_what_it_cannot_repair(tmp_path, capsys, kind):
    if kind == "a file":
        target = tmp_path / "bag.mcap"
        target.write_bytes(b"x")
    else:
        target = damaged(kind, tmp_path / "bag")
        if kind == "not an mcap file":
            (target / "metadata.yaml").unlink()
    code, _, err = run_cli(capsys, "reindex", str(target))
    assert code == 2 and err.startswith("clip2scene reindex: error:") and str(target) in err


def test_an_unfinished_sqlite3_part_names_the_storage_to_use(tmp_path, capsys):
    bag = tmp_path / "run" / "part_0000"
    writer = BagWriter(bag, storage="sqlite3")
    writer.add_topic("/lidar/points", POINTCLOUD2)
    writer.writer.storage.conn.commit()  # as a killed writer leaves it: the database, no metadata.yaml
    code, _, err = run_cli(capsys, "reindex", str(tmp_path / "run"))
    assert code == 2 and "record with storage mcap" in err
    writer.close()


def test_recorded_tf_qos_lets_tf2_listeners_match(tmp_path):
    from rosbags.highlevel import AnyReader
    from rosbags.interfaces import QosDurability, QosReliability

    frames = make_frames(2, cameras=1)
    with BagWriter(tmp_path / "bag") as writer:
        for frame in frames:
            writer.write_frame(frame)
    with AnyReader([tmp_path / "bag"]) as reader:
        qos = {c.topic: c.ext.offered_qos_profiles[0] for c in reader.connections}
    assert qos["/tf"].reliability == QosReliability.RELIABLE
    assert (qos["/tf_static"].reliability, qos["/tf_static"].durability) == (QosReliability.RELIABLE,
                                                                              QosDurability.TRANSIENT_LOCAL)
    assert re.search("BEST_EFFORT", qos["/lidar/points"].reliability.name)  # sensor data stays sensor data


# -- the recorder node as a process ---------------------------------------------------------------------

RECORDED = "synthetic:frames=6,seed=11,cameras=2,width=128,height=72"
CAMERAS = "[/cam_front/image_raw/compressed,/cam_front_right/image_raw/compressed]"


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    from clip2scene_core.calibration import frame_transforms, save_calibration

    path = tmp_path_factory.mktemp("calibration") / "calibration.yaml"
    return save_calibration(path, frame_transforms(open_source(RECORDED)[0]))


def recorder_value(messages, key: str) -> int:
    values = [int(kv.value) for message in messages for status in message.status
              if status.name.startswith("clip2scene_recorder") for kv in status.values if kv.key == key]
    return values[-1] if values else 0


@pytest.mark.ros
@pytest.mark.slow
def test_a_sigkilled_recorder_leaves_every_flushed_pair_readable(ros_node, calibration, tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray
    from ros_helpers import node_process, spin_until
    from rosbags.highlevel import AnyReader
    from rosbags.interfaces import QosDurability, QosReliability

    statuses = []
    ros_node.create_subscription(DiagnosticArray, "/diagnostics", statuses.append, 50)
    output = tmp_path / "recording"
    parameters = {"output_dir": str(output), "camera_topics": CAMERAS, "calibration_file": str(calibration),
                  "odometry_topic": "/odom", "qos_reliability": "reliable", "qos_durability": "transient_local"}
    with node_process("clip2scene_ros.record_node", "config/record_node.yaml", parameters,
                      tmp_path / "recorder.log") as recorder:
        with node_process("clip2scene_ros.sensor_publisher_node", "config/sensor_publisher.yaml",
                          {"source": RECORDED, "rate_hz": 10.0, "loop": True, "wait_for_subscribers": 1,
                           "wait_for_topics": CAMERAS, "durability": "transient_local"}, tmp_path / "publisher.log"):
            spin_until(ros_node, lambda: recorder_value(statuses, "flushed_pairs") >= 4, 120,
                       "four pairs flushed", [recorder])
            # A second recorder on the same folder is refused while the first holds it.
            with node_process("clip2scene_ros.record_node", "config/record_node.yaml",
                              {**parameters, "camera_topics": "[]"}, tmp_path / "second.log") as second:
                assert second.wait(timeout=60) == 2
            flushed = recorder_value(statuses, "flushed_pairs")
            recorder.send_signal(signal.SIGKILL)  # the sensors go on streaming
            assert recorder.wait(timeout=30) == -signal.SIGKILL
    second_log = (tmp_path / "second.log").read_text()
    assert "is recording into it" in second_log and "Traceback" not in second_log

    with pytest.raises(SourceError, match="clip2scene reindex"):
        open_source(f"bag:{output}")
    reports = reindex(output)
    assert len(reports) == 1 and reports[0].clouds >= flushed  # the 60 s part was open; all it flushed is back
    recorded = open_source(f"bag:{output}")
    assert len(recorded) >= flushed
    drive = [frame.points for frame in open_source(RECORDED)]  # the publisher loops it, restamped
    for frame in recorded:
        assert len(frame.cameras) == 2 and any(np.array_equal(frame.points, points) for points in drive)
    parts = sorted(p for p in output.iterdir() if (p / "metadata.yaml").is_file())
    with AnyReader(parts) as reader:  # rosbags itself reads the repaired recording
        counts = {c.topic: c.msgcount for c in reader.connections}
        qos = {c.topic: c.ext.offered_qos_profiles[0] for c in reader.connections}
        assert sum(1 for _ in reader.messages([c for c in reader.connections if c.topic == "/lidar/points"])) \
            == counts["/lidar/points"] >= flushed
    assert counts["/tf"] >= 1 and counts["/tf_static"] >= 1
    assert qos["/tf"].reliability == QosReliability.RELIABLE
    assert (qos["/tf_static"].reliability, qos["/tf_static"].durability) == (QosReliability.RELIABLE,
                                                                              QosDurability.TRANSIENT_LOCAL)


def _unusable_output(kind: str, tmp_path: Path) -> Path:
    if kind == "a file":
        (tmp_path / "run").write_text("not a folder")
        return tmp_path / "run"
    if kind == "inside a file":
        (tmp_path / "file").write_text("not a folder")
        return tmp_path / "file" / "run"
    if kind == "not empty":
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "notes.txt").write_text("someone else's")
        return tmp_path / "run"
    if os.geteuid() == 0:
        pytest.skip("root writes into a read-only (0555) folder anyway")
    (tmp_path / "ro").mkdir(mode=0o555)
    return tmp_path / "ro" / "run"


@pytest.mark.ros
@pytest.mark.parametrize("kind, message", [("a file", "is a file, not a folder"),
                                           ("inside a file", "cannot create or write into"),
                                           ("not empty", "exists and is not empty"),
                                           ("read-only", "cannot create or write into")])
def test_an_unusable_output_dir_is_one_clear_error_and_exit_2(tmp_path, kind, message):
    from ros_helpers import node_process

    output = _unusable_output(kind, tmp_path)
    with node_process("clip2scene_ros.record_node", "config/record_node.yaml", {"output_dir": str(output)},
                      tmp_path / "recorder.log") as recorder:
        assert recorder.wait(timeout=60) == 2
    log = (tmp_path / "recorder.log").read_text()
    assert "parameter output_dir: " in log and message in log and "Traceback" not in log


@pytest.mark.ros
@pytest.mark.slow
def test_the_vehicles_own_tf_is_recorded_with_tf_source_topics(ros_node, tmp_path):
    tf2_msgs = pytest.importorskip("tf2_msgs.msg", reason="tf2_msgs is not installed (every ROS 2 install has it; "
                                                          "here it builds from ../shared/ros2-jazzy/tf2_msgs)")
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import TransformStamped
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from ros_helpers import node_process, spin_until
    from rosbags.highlevel import AnyReader
    from sensor_msgs.msg import PointCloud2

    from clip2scene_ros import conversions

    def transform(parent: str, child: str, stamp_ns: int, x: float) -> TransformStamped:
        t = TransformStamped(header=conversions.header(stamp_ns, parent), child_frame_id=child)
        t.transform.translation.x, t.transform.rotation.w = x, 1.0
        return t

    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    static_pub = ros_node.create_publisher(tf2_msgs.TFMessage, "/tf_static", latched)
    tf_pub = ros_node.create_publisher(tf2_msgs.TFMessage, "/tf", reliable)
    cloud_pub = ros_node.create_publisher(PointCloud2, "/lidar/points", reliable)
    static_pub.publish(tf2_msgs.TFMessage(transforms=[transform("base_link", "lidar", 0, 0.9)]))
    statuses = []
    ros_node.create_subscription(DiagnosticArray, "/diagnostics", statuses.append, 50)
    output = tmp_path / "recording"
    with node_process("clip2scene_ros.record_node", "config/record_node.yaml",
                      {"output_dir": str(output), "tf_source": "topics", "qos_reliability": "reliable"},
                      tmp_path / "recorder.log") as recorder:
        spin_until(ros_node, lambda: cloud_pub.get_subscription_count() and tf_pub.get_subscription_count()
                   and static_pub.get_subscription_count(), 60, "the recorder's subscriptions", [recorder])
        frames = make_frames(3, points=200, cameras=0)
        sent = 0

        def send_next() -> bool:
            nonlocal sent
            if sent < len(frames) and recorder_value(statuses, "written_pairs") >= sent:
                frame = frames[sent]
                tf_pub.publish(tf2_msgs.TFMessage(transforms=[transform("map", "base_link", frame.stamp_ns, sent)]))
                cloud_pub.publish(conversions.cloud_msg(conv.encode_cloud(frame.points, frame.fields, frame.labels),
                                                        conversions.header(frame.stamp_ns, "lidar")))
                sent += 1
            return recorder_value(statuses, "written_pairs") >= len(frames)

        spin_until(ros_node, send_next, 60, "three clouds written", [recorder])
        recorder.send_signal(signal.SIGTERM)
        assert recorder.wait(timeout=30) == 0
    with AnyReader(sorted(output.glob("part_*"))) as reader:
        connections = {c.topic: c for c in reader.connections}
        statics = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages([connections["/tf_static"]])]
        poses = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages([connections["/tf"]])]
    assert [(t.header.frame_id, t.child_frame_id, t.transform.translation.x) for m in statics for t in m.transforms] \
        == [("base_link", "lidar", 0.9)]
    assert len(poses) >= 1 and all(m.transforms[0].child_frame_id == "base_link" for m in poses)
    assert len(open_source(f"bag:{output}")) == 3
