"""Object benchmarks: box quality on the synthetic world against its ground-truth objects (precision and recall
per thing class at 3D IoU 0.5, and for comparison bird's-eye-view IoU 0.5, 3D IoU 0.25 and nuScenes' 2 m centre
distance) for the ground-truth labels, teacher, student and fusion modes; and clustering plus box fitting time
per sweep against point count.

Box quality runs on the demo's held-out drive (seed 1, six 320x180 cameras) with the demo's simulated CLIP
teacher (noisy:0.3) and, for student and fusion, the demo's student (`make demo` writes it; --checkpoint to
choose another). Ground truth: every part of a world object whose label maps to a thing class and that at least
objects_min_points LiDAR points hit (fewer cannot be found by the clustering).
    python benchmarks/objects.py [--quick] [--frames N] [--checkpoint PATH]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table, timed, write  # noqa: E402
from student import scan_of  # noqa: E402

from clip2scene_core.box_metrics import MatchCounts, match  # noqa: E402
from clip2scene_core.data.synthetic import SyntheticWorld  # noqa: E402
from clip2scene_core.objects import ObjectConfig, cluster, detect_objects, thing_mask  # noqa: E402
from clip2scene_core.segmenter import Segmenter  # noqa: E402
from clip2scene_core.student.checkpoint import load_student  # noqa: E402
from clip2scene_core.teacher import build_teacher  # noqa: E402
from clip2scene_core.vocabulary import IGNORE, load_vocabulary  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO_CHECKPOINT = ROOT / "out" / "demo" / "student" / "checkpoints" / "last.pt"
TEACHER = "noisy:0.3"
IOU = 0.5


def quality_rows(frames: int, checkpoint: Path, config: ObjectConfig) -> tuple[list[dict], list[str]]:
    vocabulary = load_vocabulary("nuscenes")
    things = thing_mask(vocabulary)
    world = SyntheticWorld(frames=frames, seed=1, cameras=6, width=320, height=180)
    teacher = build_teacher(TEACHER, vocabulary, text_encoder="hash")
    segmenters = {"teacher": Segmenter(vocabulary, "teacher", teacher=teacher)}
    notes = []
    if checkpoint.is_file():
        student, _ = load_student(checkpoint, "cpu", vocabulary)
        segmenters["student"] = Segmenter(vocabulary, "student", student=student)
        segmenters["fusion"] = Segmenter(vocabulary, "fusion", teacher=teacher, student=student)
    else:
        notes.append(f"no student checkpoint at {checkpoint} (run make demo): student and fusion rows skipped")
    modes = ["ground-truth labels", *segmenters]
    # match() arguments: the 3D IoU 0.5, the same in the ground plane, a looser 3D 0.25 (a box fitted to
    # a partial view is often that close), and nuScenes' 2 m centre distance (found where it is, whatever its size).
    criteria = {"": {"threshold": IOU}, "_bev": {"threshold": IOU, "bev": True}, "_iou25": {"threshold": 0.25},
                "_2m": {"center_distance_m": 2.0}}
    counts = {(mode, c, key): MatchCounts() for mode in modes for c in np.flatnonzero(things) for key in criteria}
    for index in range(frames):
        frame, truth = world[index], world.objects(index)
        truth_classes = vocabulary.raw_to_class(truth.labels)
        wanted = (truth_classes != IGNORE) & (truth.num_points >= config.min_points)
        wanted[wanted] &= things[truth_classes[wanted]]
        gt_labels = vocabulary.raw_to_class(frame.labels)
        for mode in modes:
            if mode == "ground-truth labels":
                labels, scores = gt_labels, np.ones(len(frame), np.float32)
            else:
                result = segmenters[mode].segment(frame)
                labels, scores = result.labels, result.scores
            found = detect_objects(frame.points, labels, scores, things, config)
            for c in np.flatnonzero(things):
                detections = [(o.box, o.score) for o in found.objects if o.class_index == c]
                boxes = [truth.boxes[k] for k in np.flatnonzero(wanted & (truth_classes == c))]
                for key, arguments in criteria.items():
                    counts[(mode, c, key)].add(match(detections, boxes, **arguments))
    rows = []
    for mode in modes:
        for c in [*np.flatnonzero(things), None]:  # None: all thing classes together
            row = {"mode": mode, "class": "all things" if c is None else vocabulary.names[c]}
            for key in criteria:
                total = MatchCounts()
                for cls in (np.flatnonzero(things) if c is None else [c]):
                    total.add(counts[(mode, cls, key)])
                row.update({"ground_truth": total.ground_truth, "detections": total.detections,
                            f"precision{key}": total.precision, f"recall{key}": total.recall})
            rows.append(row)
    return rows, notes


def timing_rows(counts: list[int], config: ObjectConfig, repeats: int) -> list[dict]:
    """Clustering alone and clustering + boxes on synthetic sweeps tiled to the point count, with their
    ground-truth labels (the class mix of a street)."""
    vocabulary = load_vocabulary("nuscenes")
    things = thing_mask(vocabulary)
    frame = SyntheticWorld(frames=1, seed=0, cameras=0)[0]
    labels = vocabulary.raw_to_class(frame.labels)
    rows = []
    for count in counts:
        points = scan_of(count, frame.points)
        copies = int(np.ceil(count / len(frame)))
        point_labels = np.tile(labels, copies)[:count]
        scores = np.ones(count, np.float32)
        classes = np.where((point_labels >= 0) & things[np.maximum(point_labels, 0)], point_labels, -1)
        clustering = timed(lambda: cluster(points, classes, config.distance_m, config.min_points), repeats)
        detecting = timed(lambda: detect_objects(points, point_labels, scores, things, config), repeats)
        found = detect_objects(points, point_labels, scores, things, config)
        rows.append({"points": count, "thing_points": int((classes >= 0).sum()), "objects": len(found.objects),
                     "cluster_p50_ms": clustering["p50_ms"], "cluster_and_boxes_p50_ms": detecting["p50_ms"],
                     "cluster_and_boxes_p95_ms": detecting["p95_ms"]})
    return rows


def recall_table(rows: list[dict]) -> list[dict]:
    """One row per class, one precision/recall column per mode (3D IoU 0.5)."""
    by_class = {}
    for row in rows:
        cell = f"{row['precision']:.2f} / {row['recall']:.2f}" if row["detections"] and row["ground_truth"] else \
            f"- / {row['recall']:.2f}" if row["ground_truth"] else "-"
        by_class.setdefault(row["class"], {"class": row["class"], "objects": row["ground_truth"]})[row["mode"]] = cell
    return list(by_class.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 frames, fewer repeats")
    parser.add_argument("--frames", type=int, default=8, help="frames of the held-out drive (default 8)")
    parser.add_argument("--checkpoint", type=Path, default=DEMO_CHECKPOINT, help="student checkpoint")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    config = ObjectConfig()
    started = time.monotonic()
    frames = 2 if args.quick else args.frames
    quality, notes = quality_rows(frames, args.checkpoint, config)
    write("objects_quality", quality, {"frames": frames, "teacher": TEACHER, "checkpoint": str(args.checkpoint),
                                       "iou": IOU, "objects": vars(config), "notes": notes})
    print("\nprecision / recall at 3D IoU 0.5:")
    print(table(recall_table(quality)))
    write("objects_timing", timing_rows([35_000, 120_000], config, 3 if args.quick else 10),
          {"objects": vars(config), "note": "numpy on one CPU thread; cluster_and_boxes includes the box fits"})
    print(f"took {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
