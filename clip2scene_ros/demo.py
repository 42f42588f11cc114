"""`make demo`: the whole loop on the embedded synthetic world, as separate ROS 2 processes over DDS.

1. a sensor publisher plays a synthetic drive on topics; the recorder records aligned pairs;
2. a student is pretrained from that recording (the CLIP-like proxy teacher by default; MaskCLIP with
   --clip-weights FILE);
3. the segmentation node runs live on a held-out drive with the new checkpoint;
4. the replay evaluates teacher and student on the held-out drive's recording;
then a results table and pictures under --out.
    python -m clip2scene_ros.demo [--out out/demo] [--frames 24] [--epochs 6]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def start(module: str, params_file: str, parameters: dict, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", module, "--ros-args", "--params-file", str(ROOT / params_file)]
    for name, value in parameters.items():
        command += ["-p", f"{name}:={value}"]
    return subprocess.Popen(command, cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen, timeout: float = 30) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def spin_until(node, condition, timeout: float, processes: list[subprocess.Popen], what: str) -> None:
    """Spin the demo's node until condition() holds; stop the demo, naming `what` and the logs, when the
    timeout passes or one of processes ends first."""
    import rclpy

    deadline = time.monotonic() + timeout
    while not condition():
        ended = [p for p in processes if p.poll() is not None]
        if ended or time.monotonic() > deadline:
            why = (f"{' '.join(ended[0].args[2:3])} ended with status {ended[0].returncode}" if ended
                   else f"nothing for {timeout:.0f} s")
            for process in processes:
                stop(process)
            raise SystemExit(f"demo: {what} did not happen ({why}); see the logs in the output folder")
        rclpy.spin_once(node, timeout_sec=0.1)


def clip2scene(*arguments: str) -> None:
    from clip2scene_core.cli import main
    status = main(list(arguments))
    if status:
        raise SystemExit(f"demo: clip2scene {arguments[0]} failed")


def run(out: Path, frames: int, epochs: int, teacher: str, clip_weights: str | None) -> dict:
    import rclpy

    from clip2scene_core.calibration import frame_transforms, save_calibration
    from clip2scene_core.data import open_source

    if out.exists():
        shutil.rmtree(out)
    (out / "logs").mkdir(parents=True)
    os.environ.setdefault("ROS_DOMAIN_ID", str(60 + os.getpid() % 40))
    os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "SHM")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    size = "width=320,height=180"
    train_drive = f"synthetic:frames={frames},seed=0,cameras=6,{size}"
    test_drive = f"synthetic:frames=8,seed=1,cameras=6,{size}"
    names = ("front", "front_right", "front_left", "back", "back_left", "back_right")
    cameras = "[" + ",".join(f"/cam_{n}/image_raw/compressed" for n in names) + "]"
    # Discovery is per topic: the publisher starts once its consumer has matched every topic it reads.
    segmenter_topics = [f"/cam_{n}/image_raw/compressed" for n in names] + [f"/cam_{n}/camera_info" for n in names]
    recorder_topics = segmenter_topics + [f"/cam_{n}/{kind}" for kind in ("labels", "instances") for n in names] + \
        ["/odom"]
    calibration = save_calibration(out / "calibration.yaml", frame_transforms(open_source(train_drive)[0]))
    config = out / "config.yaml"
    config.write_text((ROOT / "config" / "demo.yaml").read_text() +
                      (f"clip: {{pretrained: {clip_weights}}}\n" if clip_weights else ""))
    timings = {}

    rclpy.init()
    node = rclpy.create_node("clip2scene_demo")
    from diagnostic_msgs.msg import DiagnosticArray

    from clip2scene_ros.msg import SegmentationInfo
    counts = {"clip2scene_recorder": {}, "clip2scene_segmenter": {}}  # the latest diagnostics of each node

    def on_diagnostics(message) -> None:
        for status in message.status:
            node_name = status.name.split(":")[0]
            if node_name in counts:
                counts[node_name].update({kv.key: kv.value for kv in status.values})
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 50)
    recorder_counts, segmenter_counts = counts["clip2scene_recorder"], counts["clip2scene_segmenter"]
    infos = []
    node.create_subscription(SegmentationInfo, "segmentation/info", infos.append, 50)
    # Transient-local on both sides: what a publisher sends before a reader has matched it still arrives.
    # Long sync timeouts and a deep input queue: the demo is not real time, and a loaded machine must not
    # drop its pairs or sweeps.
    # Each publisher stays up, as a sensor driver would, until its consumer has taken every frame.
    consumer_qos = {"qos_reliability": "reliable", "qos_durability": "transient_local"}
    player = {"wait_for_subscribers": 1, "exit_when_done": "false", "durability": "transient_local"}

    step(f"1/4 recording a {frames}-frame synthetic drive played over ROS 2 (publisher -> recorder)")
    started = time.monotonic()
    recorder = start("clip2scene_ros.record_node", "config/record_node.yaml",
                     {"output_dir": str(out / "recording"), "camera_topics": cameras,
                      "calibration_file": str(calibration), "odometry_topic": "/odom",
                      "record_label_images": "true", "sync_timeout_ms": 3000.0, **consumer_qos},
                     out / "logs" / "recorder.log")
    publisher = start("clip2scene_ros.sensor_publisher_node", "config/sensor_publisher.yaml",
                      {"source": train_drive, "rate_hz": 5.0, **player,
                       "wait_for_topics": "[" + ",".join(recorder_topics) + "]"},
                      out / "logs" / "publisher.log")
    # Every frame accounted for (written or dropped) and every ego pose written: odometry is its own topic.
    spin_until(node, lambda: sum(int(recorder_counts.get(k, 0)) for k in ("written_pairs", "dropped_pairs"))
               >= frames and int(recorder_counts.get("odometry", 0)) >= frames, 600, [recorder, publisher],
               "recording every played frame and pose")
    stop(publisher)
    if stop(recorder):
        raise SystemExit("demo: the recorder failed; see logs/recorder.log")
    recorded = open_source(f"bag:{out / 'recording'}")
    print(f"recorded {len(recorded)} aligned sweep-image pairs into {out / 'recording'}")
    timings["record_s"] = time.monotonic() - started

    step(f"2/4 pretraining the LiDAR student from the recording (teacher {teacher}, {epochs} epochs)")
    started = time.monotonic()
    clip2scene("pretrain", "--data", f"bag:{out / 'recording'}", "--teacher", teacher, "--vocabulary", "nuscenes",
               "--config", str(config), "--epochs", str(epochs), "--out", str(out / "student"))
    checkpoint = out / "student" / "checkpoints" / "last.pt"
    timings["pretrain_s"] = time.monotonic() - started

    step("3/4 the segmentation node live on a held-out drive (student mode)")
    started = time.monotonic()
    segmenter = start("clip2scene_ros.segment_node", "config/segment_node.yaml",
                      {"mode": "student", "checkpoint": str(checkpoint), "calibration_file": str(calibration),
                       "camera_topics": cameras, "sync_timeout_ms": 2000.0, "qos_depth": 20, **consumer_qos},
                      out / "logs" / "segmenter.log")
    spin_until(node, lambda: node.count_publishers("segmentation/info") > 0, 120, [segmenter],
               "the segmentation node coming up")
    publisher = start("clip2scene_ros.sensor_publisher_node", "config/sensor_publisher.yaml",
                      {"source": test_drive, "rate_hz": 2.0, **player,
                       "wait_for_topics": "[" + ",".join(segmenter_topics) + "]"},
                      out / "logs" / "publisher_live.log")
    # The node segments only the newest sweep: those that arrive while it is busy are dropped and counted.
    spin_until(node, lambda: sum(int(segmenter_counts.get(k, 0)) for k in ("processed", "dropped_clouds",
                                                                            "stale_clouds", "failed_clouds",
                                                                            "skipped_clouds"))
               >= 8 and len(infos) >= int(segmenter_counts["processed"]), 300, [segmenter, publisher],
               "every one of the 8 held-out sweeps segmented or dropped live")
    stop(publisher)
    stop(segmenter)
    node.destroy_node()
    rclpy.shutdown()
    live_latency = [info.total_latency_ms for info in infos]
    dropped = int(segmenter_counts["dropped_clouds"])
    print(f"{len(infos)} sweeps segmented live, {dropped} dropped for a newer one; in-node latency p50 "
          f"{np.median(live_latency):.0f} ms")
    timings["live_s"] = time.monotonic() - started

    step("4/4 replaying the held-out drive's recording: teacher against student")
    started = time.monotonic()
    clip2scene("export", test_drive, str(out / "heldout"), "--quiet")
    clip2scene("replay", str(out / "heldout"), "--teacher", teacher, "--vocabulary", "nuscenes", "--config",
               str(config), "--out", str(out / "replay_teacher"))
    clip2scene("replay", str(out / "heldout"), "--checkpoint", str(checkpoint), "--out", str(out / "replay_student"),
               "--out-bag", str(out / "heldout_labelled"))
    clip2scene("evaluate", "--checkpoint", str(checkpoint), "--data", f"bag:{out / 'heldout'}", "--out",
               str(out / "evaluation"))
    timings["replay_s"] = time.monotonic() - started

    teacher_report = json.loads((out / "replay_teacher" / "replay.json").read_text())
    student_report = json.loads((out / "replay_student" / "replay.json").read_text())
    summary = {"teacher": teacher, "recorded_pairs": len(recorded), "live_sweeps": len(infos),
               "live_dropped": dropped,
               "live_latency_ms_p50": float(np.median(live_latency)),
               "teacher_miou_all": teacher_report["all_points"]["miou"],
               "teacher_miou_in_view": teacher_report["in_view"]["miou"],
               # the fair all-points baseline: unlabelled points filled from their labelled neighbours
               "teacher_miou_filled_all": teacher_report.get("filled_all_points", {}).get("miou"),
               "neighbour_fill": teacher_report.get("neighbour_fill"),
               "student_miou_all": student_report["all_points"]["miou"],
               "student_miou_in_view": student_report["in_view"]["miou"],
               "per_class_iou": {row: report.get(section, {}).get("iou") for row, report, section in (
                   ("teacher_in_view", teacher_report, "in_view"),
                   ("teacher_filled_all", teacher_report, "filled_all_points"),
                   ("student_all", student_report, "all_points"), ("student_in_view", student_report, "in_view"))},
               "student_latency_ms_p50": student_report["latency_ms"]["student"]["p50"], **timings}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def table(summary: dict) -> str:
    """The fair comparison: the teacher's projection in view and, over all points, filled from labelled neighbours
    (bare projection counts every point no camera sees as wrong; it is the footnote); the student both ways."""
    def pct(value):
        return "-" if value is None else f"{100 * value:.1f}"
    from clip2scene_core.metrics import FILL_K, FILL_RADIUS_M

    fill = summary.get("neighbour_fill") or {"k": FILL_K, "radius_m": FILL_RADIUS_M}
    rows = [(f"teacher ({summary['teacher']}), projection", None, summary["teacher_miou_in_view"]),
            ("teacher + neighbour fill", summary.get("teacher_miou_filled_all"), None),
            ("student (pretrained here)", summary["student_miou_all"], summary["student_miou_in_view"])]
    return "\n".join([
        "",
        f"{'':<34} {'mIoU all points':>16} {'mIoU in view':>14}",
        *[f"{name:<34} {pct(every):>16} {pct(view):>14}" for name, every, view in rows],
        f"(neighbour fill: a point the projection leaves unlabelled takes the majority label of its {fill['k']}",
        f" nearest labelled points within {fill['radius_m']:g} m; bare projection over all points, unlabelled "
        f"counted wrong: {pct(summary['teacher_miou_all'])})",
        "",
        f"student inference p50 {summary['student_latency_ms_p50']:.0f} ms per sweep; live in-node p50 "
        f"{summary['live_latency_ms_p50']:.0f} ms (stamp to output) over {summary['live_sweeps']} sweeps "
        f"({summary['live_dropped']} dropped for a newer one)",
        f"times: record {summary['record_s']:.0f} s, pretrain {summary['pretrain_s']:.0f} s, live "
        f"{summary['live_s']:.0f} s, replay {summary['replay_s']:.0f} s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/demo")
    parser.add_argument("--frames", type=int, default=24, help="frames of the recorded drive")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--teacher", default="cliplike", help="cliplike[:KEY=VALUE,...] (the CLIP-like proxy), "
                        "noisy:RATE, labels, or maskclip (needs CLIP weights)")
    parser.add_argument("--clip-weights", help="a CLIP checkpoint file: use MaskCLIP as the teacher")
    args = parser.parse_args()
    teacher = "maskclip" if args.clip_weights else args.teacher
    out = Path(args.out)
    summary = run(out, args.frames, args.epochs, teacher, args.clip_weights)
    print(table(summary))
    print(f"\npictures: {out / 'evaluation'} (confusion matrices, per-class IoU, a labelled frame), "
          f"{out / 'student' / 'losses.png'}; labelled clouds: {out / 'heldout_labelled'}")


if __name__ == "__main__":
    main()
