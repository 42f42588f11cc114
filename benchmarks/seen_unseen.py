"""MCFA's seen/unseen setting on the synthetic world: seen classes from ground truth, unseen ones from the noisy
teacher, and what each of MCFA's feature alignments adds; seen mIoU, unseen mIoU and hIoU, several seeds per row.

Rows (each a student pretrained from scratch on the same training drives, evaluated on the same held-out drives):
  teacher projection      the noisy teacher's pixels carried onto points (no training, no labels)
  teacher + neighbour fill  the same, each point no camera labels given the majority label of its 5 nearest
                          labelled points within 2 m (all points only: the fair all-points baseline)
  baseline                semantic loss only (output-level alignment): seen classes' ground truth, elsewhere the
                          teacher's best unseen class
  + local                 + local position alignment, 1 - cos(point feature, its pixel feature)
  + global                + global semantic alignment, camera-pooled points against the view's image embedding
  + local + global        both (MCFA)
The unseen classes are the standard nuScenes 4-class split (config/vocabularies/splits/zero_shot.yaml); the
synthetic world is labelled in nuScenes' classes.
    OMP_NUM_THREADS=1 python benchmarks/seen_unseen.py [--train-drives 6] [--frames 3] [--epochs 5] [--seeds 3]
Finished (row, seed) runs are kept in build/seen_unseen/runs.json: an interrupted run picks up where it stopped;
seeds are the outer loop, so a stopped run has whole seeds of every row.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation import about_world, drive, mean_or_none, record, summarise, world_arguments  # noqa: E402
from common import write  # noqa: E402

from clip2scene_core.data import FrameList  # noqa: E402
from clip2scene_core.evaluate import evaluate_source  # noqa: E402
from clip2scene_core.segmenter import Segmenter  # noqa: E402
from clip2scene_core.student.checkpoint import StudentModel  # noqa: E402
from clip2scene_core.student.network import StudentConfig  # noqa: E402
from clip2scene_core.teacher import build_teacher  # noqa: E402
from clip2scene_core.train import Pretrainer, TrainConfig  # noqa: E402
from clip2scene_core.vocabulary import load_vocabulary, split_unseen  # noqa: E402

BASE = dict(sweeps=1, spatial_temporal=False, self_training=False, consolidate=False, distill_weight=0.0,
            global_weight=0.0)
ROWS = [
    ("baseline (semantic)", {}),
    ("+ local", dict(distill_weight=1.0)),
    ("+ global", dict(global_weight=1.0)),
    ("+ local + global", dict(distill_weight=1.0, global_weight=1.0)),
]
METRICS = ("miou", "seen_miou", "unseen_miou", "hiou")


def _percent(value):
    return None if value is None else 100 * value


def filled_row(evaluation) -> dict:
    """The teacher's neighbour-filled scores over all points as a row (no in-view figures: the fill is an
    all-points baseline)."""
    report = evaluation.to_dict()["filled_all_points"]
    return {"row": "teacher + neighbour fill", "seeds": 1,
            **{k: v for key in METRICS for k, v in ((f"{key}_all", _percent(report[key])), (f"{key}_all_std", 0.0))},
            "train_s": 0.0}


def scores(evaluation) -> dict:
    report = evaluation.to_dict()
    result = {f"{key}_all": 100 * report["all_points"][key] for key in METRICS}
    result.update({f"{key}_in_view": 100 * report["in_view"][key] for key in METRICS})
    result["per_class_all"] = {name: None if iou is None else round(100 * iou, 1)
                               for name, iou in report["all_points"]["iou"].items()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    world_arguments(parser, train_drives=6, frames=3, epochs=5)
    parser.add_argument("--split", default="unseen4", help="zero-shot split of the nuScenes vocabulary")
    parser.add_argument("--out", default="build/seen_unseen", help="working folder (checkpoints, finished runs)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 drives of 2 frames, 1 seed, 1 epoch")
    args = parser.parse_args()
    if args.quick:
        args.train_drives, args.test_drives, args.frames, args.test_frames, args.seeds, args.epochs = 2, 1, 2, 2, 1, 1
    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    ledger = work / "runs.json"
    done = record(ledger, settings)

    started = time.perf_counter()
    train = [FrameList(drive(seed, args.frames, args.step, 0, args.sensors)) for seed in range(args.train_drives)]
    test = FrameList([f for seed in range(100, 100 + args.test_drives)
                      for f in drive(seed, args.test_frames, args.step, 0, args.sensors)])
    print(f"rendered {sum(len(t) for t in train)} training frames ({args.train_drives} drives) and {len(test)} "
          f"held-out frames in {time.perf_counter() - started:.0f} s", flush=True)
    vocabulary = load_vocabulary("nuscenes")
    unseen = split_unseen(vocabulary, args.split)
    seen = [name for name in vocabulary.names if name not in unseen]
    teacher = build_teacher(args.teacher, vocabulary, text_encoder="hash")
    evaluation, _ = evaluate_source(test, Segmenter(vocabulary, "teacher", teacher=teacher), progress=False,
                                    seen=seen)
    teacher_scores = scores(evaluation)
    rows = [{"row": "teacher projection", "seeds": 1,
             **{k: v for key, value in teacher_scores.items() if key != "per_class_all"
                for k, v in ((key, value), (key + "_std", 0.0))}, "train_s": 0.0}, filled_row(evaluation)]
    per_class = {"teacher projection": teacher_scores["per_class_all"],
                 "teacher + neighbour fill": {name: None if iou is None else round(100 * iou, 1) for name, iou
                                              in evaluation.to_dict()["filled_all_points"]["iou"].items()}}
    for seed in range(args.seeds):
        for name, change in ROWS:
            key = f"{name}|{seed}"
            if key in done["runs"]:
                continue
            begun = time.perf_counter()
            config = TrainConfig(**{**BASE, **change}, epochs=args.epochs, batch_size=1, max_paired=args.max_paired,
                                 seed=seed, seen_classes=tuple(seen))
            trainer = Pretrainer(train, teacher, StudentConfig(preset=args.preset, voxel_size_m=args.voxel), config,
                                 work / f"{name.replace(' ', '_').replace('+', 'p')}_seed{seed}",
                                 torch.device("cpu"), progress=False)
            history = trainer.run()
            model = StudentModel(trainer.student, vocabulary, teacher.text_encoder)
            evaluation, _ = evaluate_source(test, Segmenter(vocabulary, "student", student=model), progress=False,
                                            seen=seen)
            run = {**scores(evaluation), "final_loss": history[-1]["loss"], "train_s": time.perf_counter() - begun}
            done = record(ledger, settings, key, run)
            print(f"{key}: mIoU {run['miou_all']:.1f}, seen {run['seen_miou_all']:.1f}, unseen "
                  f"{run['unseen_miou_all']:.1f}, hIoU {run['hiou_all']:.1f} (all points), {run['train_s']:.0f} s",
                  flush=True)
    for name, _ in ROWS:
        runs = [done["runs"][f"{name}|{seed}"] for seed in range(args.seeds)]
        rows.append(summarise(name, runs, [f"{m}_{where}" for where in ("all", "in_view") for m in METRICS]))
        per_class[name] = {c: mean_or_none([r["per_class_all"][c] for r in runs]) for c in vocabulary.names}
    write("seen_unseen", rows, {"settings": settings, "seen_classes": seen, "unseen_classes": unseen,
                                "per_class_iou_all_points": per_class,
                                "runs": {k: {m: v for m, v in r.items() if m != "per_class_all"}
                                         for k, r in done["runs"].items()},
                                **about_world(args, train, test, vocabulary)},
          out=work if args.quick else None)


if __name__ == "__main__":
    main()
