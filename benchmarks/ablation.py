"""The paper's Table 3 in miniature, on the synthetic world with the noisy teacher.

Rows (each a student pretrained from scratch on the same training drives, evaluated zero-shot on
held-out drives, over all points and over points some camera sees):
  teacher projection   the noisy teacher's pixels carried onto points (no training)
  semantic, 1 sweep    semantic consistency only
  + spatial-temporal, 1 sweep
  + spatial-temporal, 3 sweeps
  + self-training      (3 sweeps, switching from half-way)
    python benchmarks/ablation.py [--train-drives 2] [--frames 30] [--epochs 30] [--noise 0.3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402

from clip2scene_core.data import FrameList, open_source  # noqa: E402
from clip2scene_core.evaluate import evaluate_source  # noqa: E402
from clip2scene_core.segmenter import Segmenter  # noqa: E402
from clip2scene_core.student.checkpoint import StudentModel  # noqa: E402
from clip2scene_core.student.network import StudentConfig  # noqa: E402
from clip2scene_core.teacher import build_teacher  # noqa: E402
from clip2scene_core.train import Pretrainer, TrainConfig  # noqa: E402
from clip2scene_core.vocabulary import load_vocabulary  # noqa: E402

ROWS = [
    ("semantic, 1 sweep", dict(sweeps=1, spatial_temporal=False, self_training=False)),
    ("+ spatial-temporal, 1 sweep", dict(sweeps=1, spatial_temporal=True, self_training=False)),
    ("+ spatial-temporal, 3 sweeps", dict(sweeps=3, spatial_temporal=True, self_training=False)),
    ("+ self-training", dict(sweeps=3, spatial_temporal=True, self_training=True)),
]


def drive(seed: int, frames: int, sweeps: int, size: str) -> list:
    rendered = list(open_source(f"synthetic:frames={frames},seed={seed},cameras=6,{size},sweeps={sweeps}"))
    for frame in rendered:  # sweeps are paired with the keyframe's images: their own are not needed
        for sweep in frame.sweeps:
            sweep.cameras = []
    return rendered


def per_class_iou(evaluation, vocabulary) -> dict[str, float | None]:
    """IoU (%) per class over all points (None where a class is absent from both truth and prediction)."""
    return {name: None if np.isnan(iou) else round(100 * float(iou), 1)
            for name, iou in zip(vocabulary.names, evaluation.all_points.iou())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-drives", type=int, default=2)
    parser.add_argument("--test-drives", type=int, default=2)
    parser.add_argument("--frames", type=int, default=30, help="frames per drive")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--noise", type=float, default=0.3, help="noisy teacher rate")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--voxel", type=float, default=0.2, help="voxel edge in metres (0.2: the synthetic world's "
                        "objects are large, and it halves the CPU cost of 0.1)")
    parser.add_argument("--max-paired", type=int, default=4000, help="paired points per scan in the losses")
    parser.add_argument("--rows", help="comma-separated row numbers to run (default all)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 drive of 6 frames, 2 epochs")
    args = parser.parse_args()
    if args.quick:
        args.train_drives, args.test_drives, args.frames, args.epochs = 1, 1, 6, 2
    torch.set_num_threads(max(1, torch.get_num_threads()))
    size = "width=200,height=112"
    started = time.perf_counter()
    train = FrameList([f for seed in range(args.train_drives) for f in drive(seed, args.frames, 2, size)])
    test = FrameList([f for seed in range(100, 100 + args.test_drives) for f in drive(seed, args.frames // 2, 0, size)])
    print(f"rendered {len(train)} training and {len(test)} held-out frames in {time.perf_counter() - started:.0f} s")
    vocabulary = load_vocabulary("nuscenes")
    teacher = build_teacher(f"noisy:{args.noise}", vocabulary, text_encoder="hash")
    evaluation, _ = evaluate_source(test, Segmenter(vocabulary, "teacher", teacher=teacher), progress=False)
    rows = [{"row": "teacher projection", "miou_all": 100 * evaluation.all_points.miou(),
             "miou_in_view": 100 * evaluation.in_view.miou(), "train_s": 0.0}]
    per_class = {"teacher projection": per_class_iou(evaluation, vocabulary)}
    print(rows[-1])
    chosen = [ROWS[int(i)] for i in args.rows.split(",")] if args.rows else ROWS
    for name, settings in chosen:
        started = time.perf_counter()
        config = TrainConfig(epochs=args.epochs, batch_size=2, optimizer="adamw", lr=2e-3,
                             max_paired=args.max_paired, seed=0, **settings)
        trainer = Pretrainer([train], teacher, StudentConfig(preset=args.preset, voxel_size_m=args.voxel), config,
                             Path("build/ablation") / name.replace(" ", "_").replace(",", ""), torch.device("cpu"),
                             progress=False)
        history = trainer.run()
        model = StudentModel(trainer.student, vocabulary, teacher.text_encoder)
        evaluation, _ = evaluate_source(test, Segmenter(vocabulary, "student", student=model), progress=False)
        rows.append({"row": name, "miou_all": 100 * evaluation.all_points.miou(),
                     "miou_in_view": 100 * evaluation.in_view.miou(), "final_loss": history[-1]["loss"],
                     "train_s": time.perf_counter() - started})
        per_class[name] = per_class_iou(evaluation, vocabulary)
        print(rows[-1], flush=True)
    write("ablation", rows, {"settings": vars(args), "per_class_iou_all_points": per_class,
                             "teacher": f"noisy:{args.noise} (hash text embeddings)",
                             "world": f"synthetic, {size}, 6 cameras; train seeds 0..{args.train_drives - 1}, "
                                      f"held-out seeds 100..{99 + args.test_drives}"})


if __name__ == "__main__":
    main()
