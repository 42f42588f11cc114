"""The CLIP-like proxy teacher on the ablation's held-out drives: projection quality, the fair baselines, and how
well its confidence ranks right above wrong points, against the older noisy teacher.

Per row: mIoU of the teacher's projection in view and over all points, of the projection with unlabelled points
filled from their labelled neighbours (all points), point accuracy, AUROC of the confidence for "the label is
right" (the issue asks >= 0.75), and the share of wrongly labelled in-view points whose surface is wrong in every
frame it is seen in (persistence: the noisy teacher redraws its errors per image).
    python benchmarks/teacher_proxy.py [--drives 3] [--frames 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation import HELD_OUT_SEEDS, drive  # noqa: E402
from common import write  # noqa: E402

from clip2scene_core.geometry import project  # noqa: E402
from clip2scene_core.metrics import Evaluation, auroc  # noqa: E402
from clip2scene_core.teacher import build_teacher, predict_points  # noqa: E402
from clip2scene_core.vocabulary import IGNORE, load_vocabulary  # noqa: E402

SPECS = ("cliplike:errors=0.5", "cliplike", "cliplike:errors=1.5", "noisy:0.3")


def persistence(wrong_by_surface: dict) -> float:
    """Share of the wrong point labels that fall on surfaces wrong in every frame they were seen wrong or right."""
    wrong = sum(sum(flags) for flags in wrong_by_surface.values())
    steady = sum(sum(flags) for flags in wrong_by_surface.values() if all(flags))
    return steady / max(wrong, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drives", type=int, default=3, help="drives per held-out set")
    parser.add_argument("--frames", type=int, default=4, help="frames per drive")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 drive, 1 frame")
    args = parser.parse_args()
    if args.quick:
        args.drives, args.frames = 1, 1
    frames = [f for first in HELD_OUT_SEEDS for seed in range(first, first + args.drives)
              for f in drive(seed, args.frames, 8, 0, "width=200,height=112,beams=16")]
    vocabulary = load_vocabulary("nuscenes")
    rows = []
    for spec in SPECS:
        teacher = build_teacher(spec, vocabulary, text_encoder="hash")
        evaluation = Evaluation.empty(vocabulary.names, fill=True)
        confidence, right, by_surface, seconds = [], [], {}, 0.0
        for frame in frames:
            started = time.perf_counter()
            points = predict_points(teacher.predict(frame.cameras), frame.points, frame.cameras)
            seconds += time.perf_counter() - started
            target = vocabulary.raw_to_class(frame.labels)
            evaluation.update(points.labels, target, points.in_view, frame.points)
            known = (points.labels != IGNORE) & (target != IGNORE)
            confidence.append(points.confidence[known])
            right.append(points.labels[known] == target[known])
            # The surface each labelled point's pixel shows: (drive, surface id) -> was it wrong, per frame.
            for index, camera in enumerate(frame.cameras):
                mine = np.flatnonzero(known & (points.camera == index))
                rows_, cols = project(frame.points[mine], camera).pixels.T
                ids = camera.instance_image[rows_, cols]
                for surface in np.unique(ids):
                    on = ids == surface
                    flags = by_surface.setdefault((frame.name.split("/")[0], int(surface)), {})
                    flags[frame.name] = bool((points.labels[mine][on] != target[mine][on]).mean() > 0.5)
        confidence, right = np.concatenate(confidence), np.concatenate(right)
        report = evaluation.to_dict()
        rows.append({"teacher": spec, "miou_in_view": 100 * report["in_view"]["miou"],
                     "miou_all": 100 * report["all_points"]["miou"],
                     "miou_filled_all": 100 * report["filled_all_points"]["miou"],
                     "accuracy": float(right.mean()), "auroc": auroc(confidence, right),
                     "persistent_errors": persistence({k: list(v.values()) for k, v in by_surface.items()}),
                     "teacher_s_per_frame": seconds / len(frames),
                     "per_class_in_view": {c: None if v is None else round(100 * v, 1)
                                           for c, v in report["in_view"]["iou"].items()}})
        print({k: v for k, v in rows[-1].items() if k != "per_class_in_view"}, flush=True)
    write("teacher_proxy", [{k: v for k, v in r.items() if k != "per_class_in_view"} for r in rows],
          {"per_class_in_view": {r["teacher"]: r["per_class_in_view"] for r in rows},
           "held_out": f"seeds {', '.join(f'{s}..{s + args.drives - 1}' for s in HELD_OUT_SEEDS)}, {args.frames} "
                       f"frames each, 0.8 s apart; 6 cameras 200x112, 16 beams; hash text embeddings"},
          out=Path(tempfile.mkdtemp()) if args.quick else None)   # a smoke run leaves the measured results alone


if __name__ == "__main__":
    main()
