"""The recorder as its own process: pairs recorded from DDS read back completely after SIGTERM, train a
student; SIGINT or SIGTERM while sensors still stream keeps every pair it wrote; a full disk (a file-size
limit) stops it cleanly with what was written still readable."""

import re
import signal

import numpy as np
import pytest
import torch

from clip2scene_core.calibration import frame_transforms, save_calibration
from clip2scene_core.data import open_source
from clip2scene_core.student.network import StudentConfig
from clip2scene_core.teacher import build_teacher
from clip2scene_core.train import Pretrainer, TrainConfig
from clip2scene_core.vocabulary import load_vocabulary
from ros_helpers import node_process, spin_until

pytestmark = [pytest.mark.ros, pytest.mark.slow]
SOURCE = "synthetic:frames=6,seed=11,cameras=2,width=128,height=72"
CAMERAS = "[/cam_front/image_raw/compressed,/cam_front_right/image_raw/compressed]"
# Discovery is per topic: the publisher starts once the recorder has matched all of these.
WAIT_FOR = "[/odom,/cam_front/image_raw/compressed,/cam_front_right/image_raw/compressed,/cam_front/camera_info," \
           "/cam_front_right/camera_info,/cam_front/labels,/cam_front_right/labels,/cam_front/instances," \
           "/cam_front_right/instances]"


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    path = tmp_path_factory.mktemp("calibration") / "calibration.yaml"
    return save_calibration(path, frame_transforms(open_source(SOURCE)[0]))


def diagnostics_value(messages, key: str) -> int:
    values = [int(kv.value) for message in messages for status in message.status
              if status.name.startswith("clip2scene_recorder") for kv in status.values if kv.key == key]
    return values[-1] if values else 0


def test_stopping_leaves_a_complete_split_recording_that_trains_a_student(ros_node, calibration, tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray

    statuses = []
    ros_node.create_subscription(DiagnosticArray, "/diagnostics", statuses.append, 50)
    output = tmp_path / "recording"
    parameters = {"output_dir": str(output), "camera_topics": CAMERAS, "calibration_file": str(calibration),
                  "odometry_topic": "/odom", "record_label_images": True, "qos_reliability": "reliable",
                  "qos_durability": "transient_local",
                  "split_size_mb": 2.0,  # about two pairs per part: the recording is split
                  # The publisher jpeg-encodes a frame's images after sending its cloud; under load its first
                  # frame's images came 560 ms after the cloud, past the default 300 ms, and that pair was dropped.
                  "sync_timeout_ms": 3000.0}
    with node_process("clip2scene_ros.record_node", "config/record_node.yaml", parameters,
                      tmp_path / "recorder.log") as recorder:
        # Under load the recorder's readers can match after the publisher has sent (discovery is not
        # symmetric): transient_local on both sides delivers those messages too. The publisher stays up
        # until all is written, as a sensor driver would.
        with node_process("clip2scene_ros.sensor_publisher_node", "config/sensor_publisher.yaml",
                          {"source": SOURCE, "rate_hz": 5.0, "wait_for_subscribers": 1, "restamp": False,
                           "wait_for_topics": WAIT_FOR, "exit_when_done": False,
                           "durability": "transient_local"}, tmp_path / "publisher.log") \
                as publisher:
            spin_until(ros_node, lambda: diagnostics_value(statuses, "written_pairs") == 6
                       and diagnostics_value(statuses, "odometry") == 6, 120,
                       lambda: "every pair and pose written (recorder diagnostics: "
                       f"{diagnostics_value(statuses, 'written_pairs')} pairs, "
                       f"{diagnostics_value(statuses, 'odometry')} poses)", [recorder, publisher])
        recorder.send_signal(signal.SIGTERM)
        assert recorder.wait(timeout=30) == 0
    written = diagnostics_value(statuses, "written_pairs")
    assert len(list(output.glob("part_*/metadata.yaml"))) >= 2
    recorded = open_source(f"bag:{output}?sweeps=1")
    assert len(recorded) == written == 6  # every sweep of the drive, none dropped
    truth = {frame.stamp_ns: frame for frame in open_source(SOURCE)}
    for frame in recorded:
        original = truth[frame.stamp_ns]
        assert np.array_equal(frame.points, original.points) and np.array_equal(frame.labels, original.labels)
        assert [c.name for c in frame.cameras] == ["cam_front", "cam_front_right"]
        for got, want in zip(frame.cameras, original.cameras):
            assert np.allclose(got.lidar_to_camera, want.lidar_to_camera, atol=1e-6)
            assert np.array_equal(got.label_image, want.label_image)
            assert np.array_equal(got.instance_image, want.instance_image)
        assert np.allclose(frame.ego_pose, original.ego_pose, atol=1e-6)  # odometry, written as /tf
    assert len(recorded[len(recorded) - 1].sweeps) == 1

    vocabulary = load_vocabulary("nuscenes")
    teacher = build_teacher("noisy:0.1", vocabulary, text_encoder="hash")
    trainer = Pretrainer([recorded], teacher, StudentConfig(preset="tiny"),
                         TrainConfig(epochs=1, batch_size=2, sweeps=2, max_paired=2000, optimizer="adamw", lr=1e-3),
                         tmp_path / "student", torch.device("cpu"), progress=False)
    history = trainer.run()
    assert (tmp_path / "student" / "checkpoints" / "last.pt").is_file() and np.isfinite(history[0]["loss"])


@pytest.mark.parametrize("stop_signal, split", [(signal.SIGINT, {"split_size_mb": 2.0}),
                                                (signal.SIGTERM, {"split_duration_s": 0.25})],
                         ids=["SIGINT", "SIGTERM"])
def test_a_stop_while_sensors_stream_keeps_every_written_pair(ros_node, calibration, tmp_path, stop_signal, split):
    from diagnostic_msgs.msg import DiagnosticArray

    statuses = []
    ros_node.create_subscription(DiagnosticArray, "/diagnostics", statuses.append, 50)
    output = tmp_path / "recording"
    parameters = {"output_dir": str(output), "camera_topics": CAMERAS, "calibration_file": str(calibration),
                  "qos_reliability": "reliable", "qos_durability": "transient_local", **split}
    with node_process("clip2scene_ros.record_node", "config/record_node.yaml", parameters,
                      tmp_path / "recorder.log") as recorder:
        with node_process("clip2scene_ros.sensor_publisher_node", "config/sensor_publisher.yaml",
                          {"source": SOURCE, "rate_hz": 10.0, "loop": True, "wait_for_subscribers": 1,
                           "wait_for_topics": CAMERAS, "durability": "transient_local"}, tmp_path / "publisher.log"):
            spin_until(ros_node, lambda: diagnostics_value(statuses, "written_pairs") >= 3, 120,
                       "a few pairs written", [recorder])
            recorder.send_signal(stop_signal)  # the sensors go on streaming
            assert recorder.wait(timeout=30) == 0
    closed = re.search(r"closed .*: (\d+) pairs written", (tmp_path / "recorder.log").read_text())
    assert closed, "the recorder did not log how many pairs it closed the recording with"
    assert len(list(output.glob("part_*/metadata.yaml"))) >= 2  # split by size or by duration
    recorded = open_source(f"bag:{output}")
    assert len(recorded) == int(closed.group(1)) >= 3  # every pair it wrote reads back
    drive = [frame.points for frame in open_source(SOURCE)]
    for frame in recorded:
        assert len(frame.cameras) == 2 and any(np.array_equal(frame.points, points) for points in drive)


def test_a_full_disk_stops_cleanly_and_keeps_what_was_written(ros_node, calibration, tmp_path):
    output = tmp_path / "recording"
    parameters = {"output_dir": str(output), "camera_topics": CAMERAS, "calibration_file": str(calibration),
                  "qos_reliability": "reliable", "qos_durability": "transient_local", "reserve_mb": 1.0}
    # Each pair is about 0.9 MB: a 3.5 MB file-size limit holds a couple of pairs plus the reserve.
    with node_process("clip2scene_ros.record_node", "config/record_node.yaml", parameters, tmp_path / "recorder.log",
                      file_size_limit=3_500_000) as recorder:
        with node_process("clip2scene_ros.sensor_publisher_node", "config/sensor_publisher.yaml",
                          {"source": SOURCE, "rate_hz": 5.0, "wait_for_subscribers": 1, "restamp": False,
                           "wait_for_topics": CAMERAS, "durability": "transient_local"}):
            spin_until(ros_node, lambda: recorder.poll() is not None, 120, "the recorder to stop",
                       [])
    assert recorder.returncode == 1
    log = (tmp_path / "recorder.log").read_text()
    assert "recording stopped: file-size limit nearly full" in log
    recorded = open_source(f"bag:{output}")
    assert 1 <= len(recorded) < 6
    assert all(len(frame.cameras) == 2 for frame in recorded)
