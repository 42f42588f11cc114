"""Soak: the segmentation node fed N clouds at a fixed rate; its resident memory is sampled and the slope
fitted (MB per 1000 messages; flat means no leak). The node keeps up or drops to its queue depth:
either way, memory must not grow.
    python benchmarks/soak.py [--messages 10000] [--rate 20] [--points 10000] [--quick] [--out DIR]
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
from common import RESULTS, write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "SHM")
os.environ.setdefault("ROS_DOMAIN_ID", str(200 + os.getpid() % 30))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"process {pid} has no VmRSS")


def soak(messages: int, rate_hz: float, points: int, workdir: Path) -> tuple[dict, list]:
    import rclpy
    import torch
    from sensor_msgs.msg import PointCloud2

    from clip2scene_core import messages as conv
    from clip2scene_core.data import open_source
    from clip2scene_core.student.network import StudentConfig
    from clip2scene_core.teacher import build_teacher
    from clip2scene_core.train import Pretrainer, TrainConfig
    from clip2scene_core.vocabulary import load_vocabulary
    from clip2scene_ros import conversions
    from clip2scene_ros.msg import SegmentationInfo

    vocabulary = load_vocabulary("nuscenes")
    frames = list(open_source("synthetic:frames=2,seed=1,cameras=1,width=64,height=48"))
    Pretrainer([frames], build_teacher("noisy:0.0", vocabulary, text_encoder="hash"), StudentConfig(preset="tiny"),
               TrainConfig(epochs=1, batch_size=2, sweeps=1, max_paired=2000), workdir / "student",
               torch.device("cpu"), progress=False).run()
    cloud_points = frames[0].points[:points]
    cloud = conv.encode_cloud(cloud_points, {"intensity": frames[0].fields["intensity"][:points]})
    rclpy.init()
    node = rclpy.create_node("clip2scene_soak")
    publisher = node.create_publisher(PointCloud2, "/lidar/points", 10)
    received = []
    node.create_subscription(SegmentationInfo, "segmentation/info", lambda m: received.append(1), 10)
    command = [sys.executable, "-m", "clip2scene_ros.segment_node", "--ros-args", "--params-file",
               str(ROOT / "config" / "segment_node.yaml"), "-p", "mode:=student", "-p",
               f"checkpoint:={workdir / 'student' / 'checkpoints' / 'last.pt'}", "-p", "qos_reliability:=reliable"]
    with open(workdir / "segmenter.log", "w") as log:
        segmenter = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while (publisher.get_subscription_count() == 0 or node.count_publishers("segmentation/info") == 0) \
                and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.1)
        samples, period = [], 1.0 / rate_hz
        started = time.monotonic()
        for index in range(messages):
            stamp = time.time_ns()
            publisher.publish(conversions.cloud_msg(cloud, conversions.header(stamp, "lidar")))
            if index % max(1, int(rate_hz * 5)) == 0:  # every 5 s of messages
                samples.append((index, rss_mb(segmenter.pid)))
            while True:  # pace to the rate while serving this node's subscription
                remaining = started + (index + 1) * period - time.monotonic()
                if remaining <= 0:
                    break
                rclpy.spin_once(node, timeout_sec=min(remaining, 0.01))
            if segmenter.poll() is not None:
                raise RuntimeError(f"the segmentation node exited ({segmenter.returncode}) during the soak")
        samples.append((messages, rss_mb(segmenter.pid)))
        elapsed = time.monotonic() - started
    finally:
        if segmenter.poll() is None:
            segmenter.send_signal(signal.SIGINT)
            segmenter.wait(timeout=30)
        node.destroy_node()
        rclpy.shutdown()
    slope = retained_slope(samples)
    row = {"messages": messages, "rate_hz": rate_hz, "points": len(cloud_points), "elapsed_s": elapsed,
           "segmented": len(received), "rss_start_mb": samples[0][1], "rss_end_mb": samples[-1][1],
           "rss_max_mb": max(m for _, m in samples), "slope_mb_per_1000": slope}
    return row, samples


def retained_slope(samples: list[tuple[int, float]], window: int = 5) -> float:
    """MB per 1000 messages of the memory the node keeps: the second half of the samples only (the first grows
    the allocator's pools and first-call caches, then levels off), each window of samples reduced to its lowest.
    A sample taken while a sweep is being segmented holds that sweep's working memory (tens of MB, given back
    after it); a leak raises the floor, so the floor is what is fitted."""
    steady = samples[len(samples) // 2:]
    floors = [min(steady[i:i + window], key=lambda s: s[1]) for i in range(0, len(steady), window)]
    if len(floors) < 2:
        return 0.0
    return float(np.polyfit([i for i, _ in floors], [m for _, m in floors], 1)[0] * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="600 messages")
    parser.add_argument("--out", help="results folder (default benchmarks/results)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        row, samples = soak(600 if args.quick else args.messages, args.rate, args.points, Path(folder))
    write("soak", [row], {"note": "segmentation node, student mode (tiny preset), LiDAR only; slope fitted to the "
                                  "lowest sample of each 5 in the second half",
                          "rss_samples": [[i, round(m, 1)] for i, m in samples]},
          out=Path(args.out) if args.out else RESULTS)


if __name__ == "__main__":
    main()
