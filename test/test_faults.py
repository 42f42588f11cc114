"""The fault and bad-input suite: what the field feeds the node and the CLI. Each case expects a clear
error or a skipped message, a live process, and nothing lost (good input after bad is still served).
The README's table "Faults and bad input" lists these cases and their outcomes."""

import json
import os
import pickle
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from clip2scene_core import messages as conv
from clip2scene_core.calibration import frame_transforms, save_calibration
from clip2scene_core.cli import main
from clip2scene_core.data import open_source
from ros_helpers import ROOT, node_process, spin_until

pytestmark = [pytest.mark.ros, pytest.mark.slow]
SOURCE = "synthetic:frames=2,seed=9,cameras=2,width=96,height=64"


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_student):
    """(folder with calibration.yaml, the checkpoint, frames)."""
    folder = tmp_path_factory.mktemp("faults")
    frames = list(open_source(SOURCE))
    save_calibration(folder / "calibration.yaml", frame_transforms(frames[0]))
    return folder, tiny_student, frames


class Harness:
    """Publishes clouds and images to the node and waits, bounded, for its answer or its diagnostics."""

    def __init__(self, node, frame, process):
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

        from clip2scene_ros.msg import SegmentationInfo

        self.node, self.frame, self.process = node, frame, process
        self.infos, self.counters = [], {}
        node.create_subscription(SegmentationInfo, "segmentation/info", self.infos.append, 50)
        node.create_subscription(DiagnosticArray, "/diagnostics", self.on_diagnostics, 50)
        self.cloud = node.create_publisher(PointCloud2, "/lidar/points", 10)
        self.raw = node.create_publisher(Image, "/cam_front/image_raw", 10)
        self.compressed = node.create_publisher(CompressedImage, "/cam_front_right/image_raw/compressed", 10)
        self.info_front = node.create_publisher(CameraInfo, "/cam_front/camera_info", 10)
        self.info_right = node.create_publisher(CameraInfo, "/cam_front_right/camera_info", 10)
        self.stamp = 10**18

    def on_diagnostics(self, message) -> None:
        for status in message.status:
            if status.name.startswith("clip2scene_segmenter"):
                self.counters = {kv.key: kv.value for kv in status.values}

    def counter(self, key: str) -> int:
        return int(self.counters.get(key, 0))

    def ready(self) -> None:
        spin_until(self.node, lambda: self.cloud.get_subscription_count() > 0 and self.raw.get_subscription_count() > 0
                   and self.node.count_publishers("segmentation/info") > 0 and bool(self.counters), 60,
                   "the segmentation node", [self.process])

    def camera_info(self, camera, K=None):
        from clip2scene_ros import conversions
        header = conversions.header(self.stamp, camera.optical_frame)
        info = conversions.camera_info_msg(camera, header)
        if K is not None:
            info.k = K
        return info

    def cloud_message(self, points=None, **changes):
        from clip2scene_ros import conversions
        points = self.frame.points if points is None else points
        message = conversions.cloud_msg(conv.encode_cloud(points), conversions.header(self.stamp, "lidar"))
        for key, value in changes.items():
            setattr(message, key, value)
        return message

    def send(self, cloud, images=(), expect: str = "segmented", infos=True, timeout: float = 60) -> None:
        """Publish a cloud (and images with its stamp); expect 'segmented' (an info with this stamp comes
        back) or a counter name that must grow (e.g. 'skipped_clouds')."""
        before = self.counter(expect) if expect != "segmented" else None
        if infos:
            self.info_front.publish(self.camera_info(self.frame.cameras[0]))
            self.info_right.publish(self.camera_info(self.frame.cameras[1]))
        self.cloud.publish(cloud)
        for publisher, image in images:
            publisher.publish(image)
        stamp = self.stamp
        self.stamp += 1_000_000_000
        if expect == "segmented":
            spin_until(self.node, lambda: any(conv.stamp_to_ns(i.header.stamp) == stamp for i in self.infos), timeout,
                       f"the segmentation of the sweep at {stamp}", [self.process])
        else:
            spin_until(self.node, lambda: self.counter(expect) > before, 30, f"{expect} to count it", [self.process])
        assert self.process.poll() is None

    def image(self, encoding: str, camera_index: int = 0, array=None):
        from sensor_msgs.msg import Image

        from clip2scene_ros import conversions
        camera = self.frame.cameras[camera_index]
        rgb = camera.image if array is None else array
        height, width = rgb.shape[:2]
        if encoding == "rgb8":
            data, step = rgb, width * 3
        elif encoding == "bgr8":
            data, step = rgb[:, :, ::-1], width * 3
        elif encoding == "mono8":
            data, step = rgb[:, :, 0], width
        elif encoding == "mono16":
            data, step = (rgb[:, :, 0].astype(np.uint16) * 257).astype("<u2"), width * 2
        elif encoding == "bayer_rggb8":
            data, step = rgb[:, :, 1], width
        else:
            data, step = rgb, width * 3
        return Image(header=conversions.header(self.stamp, camera.optical_frame), height=height, width=width,
                     encoding=encoding, is_bigendian=0, step=step, data=np.ascontiguousarray(data).tobytes())

    def compressed_image(self, fmt: str, data=None):
        import io

        from PIL import Image as PILImage
        from sensor_msgs.msg import CompressedImage

        from clip2scene_ros import conversions
        camera = self.frame.cameras[1]
        if data is None:
            buffer = io.BytesIO()
            PILImage.fromarray(camera.image).save(buffer, format=fmt.upper())
            data = buffer.getvalue()
        return CompressedImage(header=conversions.header(self.stamp, camera.optical_frame), format=fmt, data=data)


def start_segmenter(world, log, **extra):
    folder, checkpoint, _ = world
    parameters = {"mode": "student", "checkpoint": str(checkpoint),
                  "calibration_file": str(folder / "calibration.yaml"), "qos_reliability": "reliable",
                  "camera_topics": "[/cam_front/image_raw,/cam_front_right/image_raw/compressed]",
                  "sync_timeout_ms": 300.0, **extra}
    return node_process("clip2scene_ros.segment_node", "config/segment_node.yaml", parameters, log)


def test_clouds_images_and_time_the_field_sends(ros_node, world, tmp_path):
    frame = world[2][0]
    with start_segmenter(world, tmp_path / "segmenter.log") as process:
        h = Harness(ros_node, frame, process)
        h.ready()
        # Clouds.
        no_xyz = h.cloud_message()
        no_xyz.fields = [f for f in no_xyz.fields if f.name not in ("y", "z")]
        h.send(no_xyz, expect="skipped_clouds")
        h.send(h.cloud_message(point_step=8), expect="skipped_clouds")
        h.send(h.cloud_message(row_step=5), expect="skipped_clouds")
        truncated = h.cloud_message()
        truncated.data = bytes(truncated.data)[:-9]
        h.send(truncated, expect="skipped_clouds")
        big_endian = h.cloud_message()
        big_endian.is_bigendian = True
        big_endian.data = np.frombuffer(bytes(big_endian.data), "<f4").astype(">f4").tobytes()  # x, y, z swapped
        h.send(big_endian)
        bad_values = frame.points.copy()
        bad_values[:100] = np.nan
        bad_values[100:200] = np.inf
        h.send(h.cloud_message(bad_values))
        h.send(h.cloud_message(np.zeros((0, 3), np.float32)))
        h.send(h.cloud_message(np.concatenate([frame.points] * 3)))          # every point duplicated
        rng = np.random.default_rng(0)  # two million points, dense as a merged high-resolution scan (24 MB)
        huge = rng.uniform([-15, -15, -2], [15, 15, 0], size=(2_000_000, 3)).astype(np.float32)
        h.send(h.cloud_message(huge), timeout=180)
        # Images: every common encoding arrives and is used; bad ones skip their camera, not the sweep.
        for encoding in ("rgb8", "bgr8", "mono8", "mono16", "bayer_rggb8"):
            h.send(h.cloud_message(), [(h.raw, h.image(encoding)), (h.compressed, h.compressed_image("jpeg"))])
        h.send(h.cloud_message(), [(h.raw, h.image("rgb8")), (h.compressed, h.compressed_image("png"))])
        skipped = h.counter("skipped_images")
        h.send(h.cloud_message(), [(h.raw, h.image("rgb8")),
                                   (h.compressed, h.compressed_image("jpeg", data=b"\xff\xd8\xff\xe0garbage"))])
        spin_until(ros_node, lambda: h.counter("skipped_images") > skipped, 30, "the corrupt jpeg to be counted")
        skipped = h.counter("skipped_images")
        wrong_size = h.image("rgb8", array=np.zeros((32, 48, 3), np.uint8))
        h.send(h.cloud_message(), [(h.raw, wrong_size), (h.compressed, h.compressed_image("jpeg"))])
        spin_until(ros_node, lambda: h.counter("skipped_images") > skipped, 30, "the wrong-size image to be counted")
        h.send(h.cloud_message(), [(h.raw, h.image("yuv422")), (h.compressed, h.compressed_image("jpeg"))])
        rejected = h.counter("rejected_camera_infos")
        h.info_front.publish(h.camera_info(frame.cameras[0], K=[0.0] * 9))
        spin_until(ros_node, lambda: h.counter("rejected_camera_infos") > rejected, 30, "the zero K to be rejected")
        # Time: a camera far out of sync (the sweep goes without it after the timeout) and time going backwards.
        late = h.compressed_image("jpeg")
        late.header.stamp.sec -= 5
        h.send(h.cloud_message(), [(h.raw, h.image("rgb8")), (h.compressed, late)])
        h.stamp -= 100 * 10**9  # a bag looping back
        h.send(h.cloud_message(), [(h.raw, h.image("rgb8")), (h.compressed, h.compressed_image("jpeg"))])
        assert process.poll() is None
    log = (tmp_path / "segmenter.log").read_text()
    for text in ("no y/z field", "beyond point_step", "row_step", "truncated", "cannot decode compressed image",
                 "camera_info says", "unsupported image encoding 'yuv422'", "no valid focal length"):
        assert text in log, text


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with a one-row body (a decompression bomb's header)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def test_inputs_and_parameters_that_used_to_kill_the_node(ros_node, world, tmp_path):
    """Field counts, overlapping fields, NaN distortion, a PNG bomb, mistyped and atomic parameter sets,
    a FIFO as vocabulary: each refused or skipped and counted, the next good sweep served."""
    from rclpy.parameter import Parameter
    from rclpy.parameter_client import AsyncParameterClient

    from clip2scene_ros import conversions
    frame = world[2][0]
    intensity = {"intensity": frame.fields["intensity"]}
    pad = {"pad": np.zeros(len(frame.points), np.float32)}
    with start_segmenter(world, tmp_path / "segmenter.log") as process:
        h = Harness(ros_node, frame, process)
        h.ready()
        for name in ("z", "intensity"):  # x y z intensity pad: a count of 2 stays inside the point
            cloud = conversions.cloud_msg(conv.encode_cloud(frame.points, intensity, extra=pad),
                                          conversions.header(h.stamp, "lidar"))
            next(f for f in cloud.fields if f.name == name).count = 2
            h.send(cloud, expect="skipped_clouds")
        overlapping = h.cloud_message()
        next(f for f in overlapping.fields if f.name == "y").offset = 2  # y starts inside x
        h.send(overlapping, expect="skipped_clouds")
        nan_distortion = h.camera_info(frame.cameras[0])
        nan_distortion.distortion_model, nan_distortion.d = "plumb_bob", [0.1, float("nan"), 0.0, 0.0, 0.0]
        rejected = h.counter("rejected_camera_infos")
        h.info_front.publish(nan_distortion)
        spin_until(ros_node, lambda: h.counter("rejected_camera_infos") > rejected, 30, "the NaN distortion refused",
                   [process])
        for side in (8000, 30000):  # beyond our pixel budget; beyond PIL's bomb limit
            skipped = h.counter("skipped_images")
            h.send(h.cloud_message(), [(h.raw, h.image("rgb8")),
                                       (h.compressed, h.compressed_image("png", data=png_claiming(side, side)))])
            spin_until(ros_node, lambda before=skipped: h.counter("skipped_images") > before, 30,
                       f"the {side}^2 PNG skipped", [process])
        client = AsyncParameterClient(ros_node, "clip2scene_segmenter")
        spin_until(ros_node, client.services_are_ready, 30, "the parameter services", [process])

        def refused(*parameters, atomically=False) -> str:
            call = client.set_parameters_atomically if atomically else client.set_parameters
            future = call(list(parameters))
            spin_until(ros_node, future.done, 30, f"the answer to {parameters}", [process])
            results = [future.result().result] if atomically else future.result().results
            assert not any(r.successful for r in results), parameters
            return " ".join(r.reason for r in results)

        for parameter in (Parameter("class_names", Parameter.Type.INTEGER, 5),
                          Parameter("class_names", Parameter.Type.STRING, "road"),
                          Parameter("class_names", Parameter.Type.BOOL, True)):
            assert "must be a list of str" in refused(parameter)
        refused(Parameter("processing_budget_ms", Parameter.Type.STRING, "fast"))  # rclpy checks declared types
        assert "must be a list of str" in refused(Parameter("processing_budget_ms", Parameter.Type.DOUBLE, 50.0),
                                                  Parameter("class_names", Parameter.Type.INTEGER, 5), atomically=True)
        budget = client.get_parameters(["processing_budget_ms"])
        spin_until(ros_node, budget.done, 30, "processing_budget_ms", [process])
        assert budget.result().values[0].double_value == 100.0  # the refused atomic set changed nothing
        fifo = tmp_path / "vocabulary.fifo"
        os.mkfifo(fifo)
        assert "not a regular file" in refused(Parameter("vocabulary", Parameter.Type.STRING, str(fifo)))  # not opened
        h.send(h.cloud_message(), [(h.raw, h.image("rgb8")), (h.compressed, h.compressed_image("jpeg"))])
        assert process.poll() is None
    log = (tmp_path / "segmenter.log").read_text()
    for text in ("field 'z' has count 2", "field 'intensity' has count 2", "field 'y' starts at byte 2, inside "
                 "field 'x'", "holds NaN or inf", "8000x8000 pixels is outside", "parameter change refused"):
        assert text in log, text
    assert log.count("must be a list of str") == 1  # the same problem again within 5 s is counted, not logged
    assert "Traceback" not in log


def test_bad_start_up_parameters_end_the_node_with_an_error_not_a_traceback(tmp_path):
    fifo = tmp_path / "calibration.fifo"
    os.mkfifo(fifo)  # opening it would block the node forever
    for parameter, message in (("class_names:=road", "class_names must be a list of str"),
                               (f"calibration_file:={fifo}", "is not a regular file"),
                               ("calibration_file:=", "an empty value is written")):  # rcl cannot parse it
        result = subprocess.run([sys.executable, "-m", "clip2scene_ros.segment_node", "--ros-args", "-p",
                                 "mode:=teacher", "-p", "teacher:=labels", "-p", parameter], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        output = result.stdout + result.stderr
        assert result.returncode == 2 and message in output and "Traceback" not in output, output[-2000:]


def test_a_student_node_without_the_compiled_kernels_says_how_to_build_them(world, tmp_path):
    """An install whose C++ kernels were not built (no compiler): the student node ends at start-up with exit 2
    and the CLI's message, not a traceback. clip2scene_core is copied without its .so files into the folder the
    node runs in, where Python finds it before the installed one (a source tree: config/ beside it)."""
    import shutil

    shutil.copytree(ROOT / "clip2scene_core", tmp_path / "clip2scene_core",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    (tmp_path / "config").symlink_to(ROOT / "config")  # the shipped vocabularies, found beside the package
    result = subprocess.run([sys.executable, "-m", "clip2scene_ros.segment_node", "--ros-args", "-p", "mode:=student",
                             "-p", f"checkpoint:={world[1]}", "-p", "camera_topics:=[]"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "CPU sparse-convolution kernels are not built" in output, output[-2000:]
    assert "make setup" in output and "Traceback" not in output, output[-2000:]


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_a_signal_ends_the_node_during_a_long_inference(ros_node, world, tmp_path, signal_name):
    """1.5 million points: seconds of inference on the CPU. The signal comes while the worker computes; the
    process ends at once with exit 0 and no traceback (the inference is abandoned)."""
    import signal
    import time

    frame = world[2][0]
    rng = np.random.default_rng(1)
    huge = rng.uniform([-40, -40, -2], [40, 40, 2], size=(1_500_000, 3)).astype(np.float32)
    with start_segmenter(world, tmp_path / "segmenter.log", camera_topics="[]") as process:
        h = Harness(ros_node, frame, process)
        spin_until(ros_node, lambda: h.cloud.get_subscription_count() > 0 and bool(h.counters), 60, "the node",
                   [process])
        h.cloud.publish(h.cloud_message(huge))
        spin_until(ros_node, lambda: float(h.counters.get("segmenting_for_s", 0)) > 0, 60, "the inference to run",
                   [process])
        sent = time.monotonic()
        process.send_signal(getattr(signal, signal_name))
        code = process.wait(timeout=10)
        took = time.monotonic() - sent
    log = (tmp_path / "segmenter.log").read_text()
    print(f"{signal_name}: exited {code} after {took:.2f} s")
    assert code == 0 and "Traceback" not in log, log[-3000:]
    assert took < 3.0, f"{signal_name} took {took:.2f} s to end the node"


def test_use_sim_time_with_a_clock(ros_node, world, tmp_path):
    from rosgraph_msgs.msg import Clock

    from clip2scene_ros import conversions
    clock = ros_node.create_publisher(Clock, "/clock", 10)
    with start_segmenter(world, tmp_path / "segmenter.log", use_sim_time="true", camera_topics="[]") as process:
        h = Harness(ros_node, world[2][0], process)
        spin_until(ros_node, lambda: h.cloud.get_subscription_count() > 0
                   and ros_node.count_publishers("segmentation/info") > 0, 60, "the node", [process])
        h.stamp = 42 * 10**9
        for _ in range(3):
            clock.publish(Clock(clock=conversions.header(h.stamp, "").stamp))
            h.send(h.cloud_message(), infos=False)
    info = h.infos[-1]
    assert conv.stamp_to_ns(info.header.stamp) == 44 * 10**9 and 0 <= info.total_latency_ms < 60_000


def test_cli_refuses_bad_configs_and_checkpoints_with_clear_errors(world, tmp_path, capsys):
    checkpoint = world[1]

    def cli(*arguments):  # in this process (test_faults_cli runs the CLI's exits in a process of their own)
        threads = torch.get_num_threads()
        try:
            code = main(list(arguments))
        finally:
            torch.set_num_threads(threads)  # the CLI sets the thread count it chooses
        return SimpleNamespace(returncode=code, stderr=capsys.readouterr().err)

    data = ["--data", "synthetic:frames=1,cameras=1,width=64,height=48"]
    (tmp_path / "bad.yaml").write_text("train: {lr: fast}\n")
    result = cli("pretrain", *data, "--out", str(tmp_path / "x"), "--config", str(tmp_path / "bad.yaml"))
    assert result.returncode == 2 and "train.lr: expected float" in result.stderr
    (tmp_path / "dup.yaml").write_text("name: v\nclasses: [{name: car, ids: [1]}, {name: car, ids: [2]}]\n")
    result = cli("evaluate", "--mode", "teacher", "--teacher", "labels", *data, "--vocabulary",
                 str(tmp_path / "dup.yaml"))
    assert result.returncode == 2 and "class name 'car' appears twice" in result.stderr
    (tmp_path / "empty.yaml").write_text("name: v\nclasses: []\n")
    result = cli("evaluate", "--mode", "teacher", "--teacher", "labels", *data, "--vocabulary",
                 str(tmp_path / "empty.yaml"))
    assert result.returncode == 2 and "'classes' is empty" in result.stderr
    (tmp_path / "truncated.pt").write_bytes(checkpoint.read_bytes()[:4096])
    result = cli("evaluate", "--checkpoint", str(tmp_path / "truncated.pt"), *data)
    assert result.returncode == 2 and "cannot be read safely" in result.stderr
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "evil.pt", "wb") as file:
        pickle.dump({"format": "clip2scene-student-1", "payload": Exploit()}, file)
    result = cli("evaluate", "--checkpoint", str(tmp_path / "evil.pt"), *data)
    assert result.returncode == 2 and "cannot be read safely" in result.stderr and not marker.exists()
    payload = torch.load(checkpoint, weights_only=True)
    payload["architecture"]["channels"] = [c * 2 for c in payload["architecture"]["channels"]]
    torch.save(payload, tmp_path / "other.pt")
    result = cli("evaluate", "--checkpoint", str(tmp_path / "other.pt"), *data)
    assert result.returncode == 2 and "does not fit this student architecture" in result.stderr


def test_the_soak_slope_follows_the_floor_not_the_spikes(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from soak import retained_slope
    rng = np.random.default_rng(0)
    samples = [(i, 877.0 + (60.0 if rng.random() < 0.15 else 0.0)) for i in range(0, 5001, 100)]
    assert abs(retained_slope(samples)) < 0.5  # flat floor, in-flight spikes at random samples
    assert 9.0 < retained_slope([(i, m + 0.01 * i) for i, m in samples]) < 11.0  # 10 MB per 1000 leaked


@pytest.mark.timeout(1800)
def test_soak_memory_stays_flat(tmp_path):
    """The segmentation node fed 3,000 clouds at 50 Hz (60 s; it drops what it cannot keep up with); the slope of
    its memory's floor is reported (`python benchmarks/soak.py` runs 10,000). The floor in the second half was flat
    from the first few hundred messages on in a 5,000-message run."""
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--messages", "3000",
                             "--rate", "50", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                            timeout=1500)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    row = json.loads((tmp_path / "soak.json").read_text())["rows"][0]
    print(f"soak: RSS {row['rss_start_mb']:.0f} -> {row['rss_end_mb']:.0f} MB, slope "
          f"{row['slope_mb_per_1000']:.3f} MB per 1000 messages, {row['segmented']} segmented")
    # A leak grows (a falling RSS is no fault). The bound is 5 KB per message: a leaked cloud would be 160 KB;
    # on a quiet 2-core machine the slope is about 0.2, on one loaded by other work it reached 4.5.
    assert row["segmented"] > 0 and row["slope_mb_per_1000"] < 5.0
