"""Node benchmarks.

1. overhead per message in the segmentation node's own work besides the model: decode the cloud,
   synchronise, encode the labelled cloud (35k and 100k points; target on CPU: at most 3 ms per
   100k-point cloud);
2. end-to-end latency across processes, per mode: the sensor publisher stamps a sweep, the segmentation
   node segments it, this process receives SegmentationInfo (p50/p95/p99), and the node's memory;
3. recorder throughput at 20 Hz with six cameras: pairs/s, MB/s, drops;
4. get_parameters during inference: how long the segmentation node's parameter service takes to answer
   while its worker segments a slow sweep (asked once /diagnostics shows the worker busy).
    python benchmarks/node.py [--quick] [--only overhead|end_to_end|recorder|parameters]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import timed, write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "SHM")
os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 50))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def overhead_rows(repeats: int) -> list[dict]:
    from clip2scene_core import messages as conv
    from clip2scene_core.sync import Synchronizer
    from clip2scene_ros import conversions

    rows = []
    rng = np.random.default_rng(0)
    for count in (35_000, 100_000):
        points = rng.normal(size=(count, 3)).astype(np.float32) * 20
        fields = {"intensity": rng.random(count).astype(np.float32),
                  "ring": rng.integers(0, 32, count).astype(np.uint16),
                  "time": rng.random(count).astype(np.float32) * 0.1}
        message = conversions.cloud_msg(conv.encode_cloud(points, fields), conversions.header(1, "lidar"))
        labels = rng.integers(0, 16, count).astype(np.uint16)
        scores = rng.random(count).astype(np.float32)
        sync = Synchronizer(["front"], 50_000_000, timeout_ns=100_000_000)
        stamp = [0]

        def decode():
            conv.decode_cloud(message)

        def synchronise():
            stamp[0] += 100_000_000
            sync.add_camera("front", stamp[0], None, stamp[0])
            sync.add_lidar(stamp[0], None, stamp[0])

        def encode():
            conversions.cloud_msg(conv.encode_cloud(points, {"intensity": fields["intensity"]},
                                                    extra={"label": labels, "score": scores}),
                                  conversions.header(1, "lidar"))

        stages = {name: timed(f, repeats=repeats)["p50_ms"] for name, f in
                  (("decode", decode), ("sync", synchronise), ("encode", encode))}
        rows.append({"points": count, **{f"{k}_ms": v for k, v in stages.items()},
                     "total_ms": sum(stages.values())})
    return rows


NAMES = ("front", "front_right", "front_left", "back", "back_left", "back_right")


def camera_topics(with_labels: bool) -> str:
    """The topics a consumer of six cameras subscribes besides the LiDAR (the publisher waits for them)."""
    topics = [f"/cam_{n}/image_raw/compressed" for n in NAMES] + [f"/cam_{n}/camera_info" for n in NAMES]
    return "[" + ",".join(topics + ([f"/cam_{n}/labels" for n in NAMES] if with_labels else [])) + "]"


def start(module: str, params_file: str, parameters: dict, log) -> subprocess.Popen:
    command = [sys.executable, "-m", module, "--ros-args", "--params-file", str(ROOT / params_file)]
    for name, value in parameters.items():
        command += ["-p", f"{name}:={value}"]
    return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def spin_while(node, condition, seconds: float) -> None:
    import rclpy

    deadline = time.monotonic() + seconds
    while condition() and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


WARMUP = 2


def percentiles(samples: list[float]) -> dict:
    return {f"p{q}_ms": float(np.percentile(samples, q)) if samples else None for q in (50, 95, 99)}


def end_to_end_rows(workdir: Path, frames: int, quick: bool) -> list[dict]:
    """Publish (the sweep's stamp) to the labelled cloud received here, per mode, over DDS."""
    import rclpy
    import torch
    from sensor_msgs.msg import PointCloud2

    from clip2scene_core.messages import stamp_to_ns

    from clip2scene_core.calibration import frame_transforms, save_calibration
    from clip2scene_core.data import open_source
    from clip2scene_core.student.network import StudentConfig
    from clip2scene_core.teacher import build_teacher
    from clip2scene_core.train import Pretrainer, TrainConfig
    from clip2scene_core.vocabulary import load_vocabulary
    from clip2scene_ros.msg import SegmentationInfo

    source = f"synthetic:frames={frames},seed=3,cameras=6,width=400,height=224"
    calibration = save_calibration(workdir / "calibration.yaml", frame_transforms(open_source(source)[0]))
    vocabulary = load_vocabulary("nuscenes")
    # Latency does not depend on what the weights learned: one epoch on two frames gives a checkpoint.
    Pretrainer([list(open_source("synthetic:frames=2,seed=1,cameras=1,width=64,height=48"))],
               build_teacher("noisy:0.0", vocabulary, text_encoder="hash"), StudentConfig(preset="small"),
               TrainConfig(epochs=1, batch_size=2, sweeps=1, max_paired=2000), workdir / "student",
               torch.device("cpu"), progress=False).run()
    (workdir / "config.yaml").write_text("teacher: {text_encoder: hash}\n")
    cameras = "[" + ",".join(f"/cam_{n}/image_raw/compressed" for n in NAMES) + "]"
    rclpy.init()
    node = rclpy.create_node("clip2scene_bench")
    rows = []
    modes = ["student"] if quick else ["student", "teacher", "fusion"]
    # Transient-local on both sides, as in the tests: a reader that matches late still gets every sweep.
    qos = {"qos_reliability": "reliable", "qos_durability": "transient_local"}
    for mode in modes:
        infos, received = [], []

        def on_points(message):
            # The publisher stamps each sweep with its clock as it sends it (restamp), on this machine.
            received.append((time.time_ns() - stamp_to_ns(message.header.stamp)) * 1e-6)

        subscriptions = [node.create_subscription(SegmentationInfo, "segmentation/info", infos.append, 100),
                         node.create_subscription(PointCloud2, "segmentation/points", on_points, 100)]
        with open(workdir / f"segmenter_{mode}.log", "w") as log:
            segmenter = start("clip2scene_ros.segment_node", "config/segment_node.yaml",
                              {"mode": mode, "checkpoint": str(workdir / "student" / "checkpoints" / "last.pt"),
                               "teacher": "labels", "config_file": str(workdir / "config.yaml"),
                               "calibration_file": str(calibration), "camera_topics": cameras,
                               "sync_timeout_ms": 200.0, **qos}, log)
            spin_while(node, lambda: any(node.count_publishers(t) == 0 for t in
                                         ("segmentation/info", "segmentation/points")), 120)
            publisher = start("clip2scene_ros.sensor_publisher_node", "config/sensor_publisher.yaml",
                              {"source": source, "rate_hz": 2.0, "wait_for_subscribers": 1,
                               "durability": "transient_local", "exit_when_done": "false",
                               "wait_for_topics": camera_topics(with_labels=mode != "student")}, log)
            def settled() -> bool:
                """Every sweep segmented (its labelled cloud received here) or dropped for a newer one while the
                worker was busy. The newest sweep is always segmented, so its info has the final counts."""
                return bool(infos) and len(received) >= len(infos) and \
                    len(infos) + infos[-1].dropped_clouds + infos[-1].stale_clouds >= frames

            spin_while(node, lambda: not settled() and segmenter.poll() is None, 600)
            memory = rss_mb(segmenter.pid) if segmenter.poll() is None else float("nan")
            stop(publisher)
            stop(segmenter)
        for subscription in subscriptions:
            node.destroy_subscription(subscription)
        dropped = infos[-1].dropped_clouds if infos else None
        # The first sweeps carry one-off costs (allocations, caches): left out of the percentiles.
        latency, infos = received[WARMUP:], infos[WARMUP:]
        stages = {}
        for info in infos:
            for name, value in zip(info.stage_names, info.stage_latencies_ms):
                stages.setdefault(name, []).append(value)
        rows.append({"mode": mode, "points": infos[0].num_points if infos else 0, "cameras": 6,
                     "published": frames, "sweeps": len(latency), "dropped": dropped, **percentiles(latency),
                     "in_node_p50_ms": float(np.median([i.total_latency_ms for i in infos])) if infos else None,
                     **{f"{name}_p50_ms": float(np.median(v)) for name, v in stages.items()},
                     "node_rss_mb": memory})
    node.destroy_node()
    rclpy.shutdown()
    return rows


def recorder_rows(workdir: Path, seconds: float) -> list[dict]:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray

    from clip2scene_core.calibration import frame_transforms, save_calibration
    from clip2scene_core.data import open_source

    frames = int(seconds * 20)
    source = f"synthetic:frames={frames},seed=4,cameras=6,width=400,height=224"
    calibration = save_calibration(workdir / "calibration_rec.yaml", frame_transforms(open_source(source)[0]))
    cameras = "[" + ",".join(f"/cam_{n}/image_raw/compressed" for n in NAMES) + "]"
    rclpy.init()
    node = rclpy.create_node("clip2scene_bench_recorder")
    counts = {}

    def on_diagnostics(message):
        counts.update({kv.key: kv.value for s in message.status if s.name.startswith("clip2scene_recorder")
                       for kv in s.values})

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 100)
    output = workdir / "recording"
    with open(workdir / "recorder.log", "w") as log:
        recorder = start("clip2scene_ros.record_node", "config/record_node.yaml",
                         {"output_dir": str(output), "camera_topics": cameras, "calibration_file": str(calibration),
                          "qos_reliability": "reliable", "qos_durability": "transient_local", "qos_depth": 100}, log)
        publisher = start("clip2scene_ros.sensor_publisher_node", "config/sensor_publisher.yaml",
                          {"source": source, "rate_hz": 20.0, "wait_for_subscribers": 1,
                           "durability": "transient_local", "exit_when_done": "false",
                           "wait_for_topics": camera_topics(with_labels=False)}, log)
        # Until the recorder has accounted for every published sweep (written or dropped), or gives up.
        spin_while(node, lambda: sum(int(counts.get(k, 0)) for k in ("written_pairs", "dropped_pairs")) < frames
                   and recorder.poll() is None, seconds + 120)
        stop(publisher)
        stop(recorder)
    node.destroy_node()
    rclpy.shutdown()
    size = sum(f.stat().st_size for f in output.rglob("*") if f.is_file())
    written = int(counts.get("written_pairs", 0))
    return [{"rate_hz": 20, "cameras": 6, "published": frames, "written_pairs": written,
             "dropped_pairs": int(counts.get("dropped_pairs", 0)), "missed": frames - written,
             "pairs_per_s": written / seconds, "mb_per_s": size / 1e6 / seconds}]


def parameters_rows(workdir: Path, points: int, asks: int) -> list[dict]:
    """get_parameters round trips from this process while the node segments one slow sweep of `points`."""
    import rclpy
    import torch
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.parameter_client import AsyncParameterClient
    from sensor_msgs.msg import PointCloud2

    from clip2scene_core import messages as conv
    from clip2scene_core.data import open_source
    from clip2scene_core.student.network import StudentConfig
    from clip2scene_core.teacher import build_teacher
    from clip2scene_core.train import Pretrainer, TrainConfig
    from clip2scene_core.vocabulary import load_vocabulary
    from clip2scene_ros import conversions
    from clip2scene_ros.msg import SegmentationInfo

    Pretrainer([list(open_source("synthetic:frames=2,seed=1,cameras=1,width=64,height=48"))],
               build_teacher("noisy:0.0", load_vocabulary("nuscenes"), text_encoder="hash"),
               StudentConfig(preset="tiny"), TrainConfig(epochs=1, batch_size=2, sweeps=1, max_paired=2000),
               workdir / "tiny", torch.device("cpu"), progress=False).run()
    rclpy.init()
    node = rclpy.create_node("clip2scene_bench_parameters")
    infos, busy = [], []
    node.create_subscription(SegmentationInfo, "segmentation/info", infos.append, 10)
    node.create_subscription(DiagnosticArray, "/diagnostics", lambda d: busy.extend(
        kv.value for s in d.status for kv in s.values if kv.key == "segmenting_for_s" and float(kv.value) > 0), 10)
    publisher = node.create_publisher(PointCloud2, "/lidar/points", 10)
    client = AsyncParameterClient(node, "clip2scene_segmenter")
    # Spread at random over 100 x 100 x 5 m, every point fills a voxel: a sweep of seconds on one thread.
    cloud = (np.random.default_rng(0).random((points, 3)) * [100, 100, 5] - [50, 50, 2]).astype(np.float32)
    samples = []
    with open(workdir / "segmenter_parameters.log", "w") as log:
        segmenter = start("clip2scene_ros.segment_node", "config/segment_node.yaml",
                          {"checkpoint": str(workdir / "tiny" / "checkpoints" / "last.pt"), "threads": 1,
                           "qos_reliability": "reliable"}, log)
        spin_while(node, lambda: not (publisher.get_subscription_count() and client.services_are_ready()
                                      and node.count_publishers("segmentation/info")), 120)
        publisher.publish(conversions.cloud_msg(conv.encode_cloud(cloud), conversions.header(
            node.get_clock().now().nanoseconds, "lidar")))
        spin_while(node, lambda: not busy and not infos, 120)
        while not infos and len(samples) < asks:  # only answers that came while the sweep was still segmented
            started = time.perf_counter()
            future = client.get_parameters(["class_names", "processing_budget_ms"])
            spin_while(node, lambda: not future.done(), 30)
            if future.done() and not infos:
                samples.append((time.perf_counter() - started) * 1e3)
        spin_while(node, lambda: not infos, 300)
        stop(segmenter)
    node.destroy_node()
    rclpy.shutdown()
    return [{"case": "get_parameters during inference", "points": points, "answers": len(samples),
             "sweep_ms": infos[0].total_latency_ms if infos else None, **percentiles(samples),
             "max_ms": max(samples, default=None)}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=("overhead", "end_to_end", "recorder", "parameters"),
                        help="run this benchmark alone")
    args = parser.parse_args()

    def wanted(name: str) -> bool:
        return args.only in (None, name)

    if wanted("overhead"):
        write("node_overhead", overhead_rows(repeats=5 if args.quick else 20),
              {"note": "decode (PointCloud2 -> arrays), sync (one LiDAR + one camera), encode (labels -> "
                       "PointCloud2)"})
    with tempfile.TemporaryDirectory() as folder:
        if wanted("end_to_end"):
            write("node_end_to_end", end_to_end_rows(Path(folder), frames=6 if args.quick else 24, quick=args.quick),
                  {"note": "sweep stamped and published -> segmentation node -> labelled cloud received here, over "
                           "DDS (shared memory, reliable, transient local), first 2 sweeps left out; in_node = header "
                           "stamp of the sweep to output; 6 cameras 400x224 jpeg; student preset small; teacher = "
                           "label images (hash text)"})
        if wanted("recorder"):
            write("recorder", recorder_rows(Path(folder), seconds=3 if args.quick else 10),
                  {"note": "synthetic sweeps (~32k points) + six 400x224 jpeg cameras at 20 Hz, reliable QoS"})
        if wanted("parameters"):
            write("node_parameters_during_inference",
                  parameters_rows(Path(folder), points=200_000, asks=5 if args.quick else 20),
                  {"note": "get_parameters round trip from another process while the segmentation node's worker "
                           "segments one slow sweep (tiny student, 1 thread, random points), asked once "
                           "/diagnostics shows the worker busy; only answers received before the sweep's "
                           "SegmentationInfo count"})


if __name__ == "__main__":
    main()
