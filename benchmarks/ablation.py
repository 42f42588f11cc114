"""The paper's Table 3 in miniature, on the synthetic world with the noisy teacher, several seeds per row.

Rows (each a student pretrained from scratch on the same training drives, evaluated zero-shot on the
same held-out drives, over all points and over points some camera sees); each row adds one component:
  teacher projection   the noisy teacher's pixels carried onto points (no training)
  semantic, 1 sweep    semantic consistency only
  + spatial-temporal, 1 sweep
  + spatial-temporal, 3 sweeps
  + self-training      mean teacher, per-class thresholds, points outside the cameras
  + consolidation      pseudo labels voted across each drive's frames in a world voxel map
  + distillation       1 - cos(point feature, pixel feature)
  3 sweeps + ST + consolidation, no self-training   (not cumulative: the row above without two of its parts)
  MCFA alignment, 1 sweep   (not cumulative: the semantic row + MCFA's local and global alignment)
    python benchmarks/ablation.py [--train-drives 8] [--frames 4] [--seeds 3] [--epochs 6] [--rows 1,2]
Finished (row, seed) runs are kept in build/ablation/runs.json: an interrupted run picks up where it stopped.
Without a ledger, the runs of results/ablation.json (same settings) seed it, so a new row is merged into the
results without rerunning the others (their per-class IoU then comes from that file).
On 2 cores, run one process per seed with one thread each (two processes with two threads each thrash):
    for s in 0 1 2; do OMP_NUM_THREADS=1 python benchmarks/ablation.py --only-seeds $s & done; wait
    python benchmarks/ablation.py          # summarises the ledger into results/ablation.json
"""

from __future__ import annotations

import argparse
import fcntl
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write  # noqa: E402

from clip2scene_core.data import FrameList, open_source  # noqa: E402
from clip2scene_core.evaluate import evaluate_source  # noqa: E402
from clip2scene_core.segmenter import Segmenter  # noqa: E402
from clip2scene_core.student.checkpoint import StudentModel  # noqa: E402
from clip2scene_core.student.network import StudentConfig  # noqa: E402
from clip2scene_core.teacher import build_teacher  # noqa: E402
from clip2scene_core.train import Pretrainer, TrainConfig  # noqa: E402
from clip2scene_core.vocabulary import load_vocabulary  # noqa: E402

BASE = dict(sweeps=1, spatial_temporal=False, self_training=False, consolidate=False, distill_weight=0.0)
ROWS = [
    ("semantic, 1 sweep", {}),
    ("+ spatial-temporal, 1 sweep", dict(spatial_temporal=True)),
    ("+ spatial-temporal, 3 sweeps", dict(sweeps=3)),
    ("+ self-training", dict(self_training=True)),
    ("+ consolidation", dict(consolidate=True)),
    ("+ distillation", dict(distill_weight=1.0)),
    # Not a step of the paper's table: consolidation without self-training (which the rows above show hurts).
    ("3 sweeps + ST + consolidation, no self-training", dict(self_training=False, distill_weight=0.0)),
    # MCFA (Wang et al. 2023): the semantic row (output-level alignment) + local position alignment (1 - cos to the
    # pixel feature) + global semantic alignment (camera-pooled points against the image embedding), weights 1.
    ("MCFA alignment (semantic + local + global), 1 sweep",
     dict(sweeps=1, spatial_temporal=False, consolidate=False, distill_weight=1.0, global_weight=1.0)),
]


def row_settings(number: int) -> dict:
    """Row `number` (0-based) of ROWS: the base with every component up to and including it."""
    settings = dict(BASE)
    for _, change in ROWS[:number + 1]:
        settings.update(change)
    return settings


def drive(seed: int, frames: int, step: int, sweeps: int, sensors: str) -> list:
    """frames frames of drive `seed`, step * 0.1 s apart, each with sweeps older sweeps (their cameras dropped:
    sweeps are paired with the keyframe's images)."""
    rendered = list(open_source(f"synthetic:frames={frames * step},seed={seed},cameras=6,{sensors},sweeps={sweeps},"
                                f"step={step}"))
    for frame in rendered:
        for sweep in frame.sweeps:
            sweep.cameras = []
    return rendered


def class_mix(frames, vocabulary) -> dict[str, float]:
    counts = np.bincount(np.concatenate([vocabulary.raw_to_class(f.labels) for f in frames]) + 1,
                         minlength=len(vocabulary) + 1)[1:]
    return {name: round(100 * c / counts.sum(), 2) for name, c in zip(vocabulary.names, counts)}


def scores(evaluation, vocabulary) -> dict:
    return {"miou_all": 100 * evaluation.all_points.miou(), "miou_in_view": 100 * evaluation.in_view.miou(),
            "per_class_all": {name: None if np.isnan(iou) else round(100 * float(iou), 1)
                              for name, iou in zip(vocabulary.names, evaluation.all_points.iou())}}


def summarise(name: str, runs: list[dict], keys=("miou_all", "miou_in_view")) -> dict:
    """Mean and sample standard deviation of each key over the runs (seeds) of one row."""
    row = {"row": name, "seeds": len(runs)}
    for key in keys:
        values = [r[key] for r in runs]
        row[key] = statistics.fmean(values)
        row[key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    row["train_s"] = statistics.fmean(r.get("train_s", 0.0) for r in runs)
    return row


def mean_or_none(values: list) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.fmean(known), 1) if known else None


def previous_results(name: str, settings: dict) -> dict:
    """results/NAME.json when it was measured with these settings, else {}."""
    path = RESULTS / f"{name}.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    return previous if previous.get("settings") == settings else {}


def record(ledger: Path, settings: dict, key: str | None = None, run: dict | None = None,
           seed_from: str | None = None) -> dict:
    """The finished runs of these settings, with `run` added under `key`; read and written under a lock, so that
    several processes (one per seed) can share one ledger. Runs of results/SEED_FROM.json with the same settings
    that the ledger lacks are added to it (an earlier measurement merged, not rerun)."""
    with open(ledger.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = json.loads(ledger.read_text()) if ledger.exists() else {}
        if done.get("settings") != settings:
            done = {"settings": settings, "runs": {}}
        earlier = previous_results(seed_from, settings).get("runs", {}) if seed_from else {}
        merged = {name: value for name, value in earlier.items() if name not in done["runs"]}
        done["runs"].update(merged)
        if key is not None:
            done["runs"][key] = run
        if key is not None or merged:
            temporary = ledger.with_suffix(".tmp")
            temporary.write_text(json.dumps(done, indent=1))
            temporary.replace(ledger)
    return done


def about_world(args, train: list, test, vocabulary) -> dict:
    """What a results file says of the teacher, the drives and their class mix."""
    return {"teacher": f"noisy:{args.noise} (hash text embeddings)",
            "class_mix_percent": {"train": class_mix([f for t in train for f in t], vocabulary),
                                  "held_out": class_mix(test, vocabulary)},
            "world": f"synthetic, {args.sensors}, 6 cameras; train seeds 0..{args.train_drives - 1}, held-out seeds "
                     f"100..{99 + args.test_drives}, frames {args.step * 0.1:.1f} s apart"}


def world_arguments(parser: argparse.ArgumentParser, train_drives: int, frames: int, epochs: int) -> None:
    """The drives, teacher, student and budget options both ablations (this one and seen_unseen.py) take."""
    parser.add_argument("--train-drives", type=int, default=train_drives)
    parser.add_argument("--test-drives", type=int, default=3)
    parser.add_argument("--frames", type=int, default=frames, help="frames per training drive")
    parser.add_argument("--test-frames", type=int, default=6, help="frames per held-out drive")
    parser.add_argument("--step", type=int, default=8, help="frames are step x 0.1 s apart (8: 6.4 m at 8 m/s)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--noise", type=float, default=0.3, help="noisy teacher rate")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--voxel", type=float, default=0.2, help="voxel edge in metres (0.2: the synthetic world's "
                        "objects are large, and it halves the CPU cost of 0.1)")
    parser.add_argument("--max-paired", type=int, default=3000, help="loss points per sweep and kind")
    parser.add_argument("--sensors", default="width=200,height=112,beams=16", help="synthetic camera and LiDAR options")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    world_arguments(parser, train_drives=8, frames=4, epochs=6)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a train option for every row, e.g. --set lr=0.005 (YAML values)")
    parser.add_argument("--rows", help="comma-separated row numbers to run, 1-based (default all)")
    parser.add_argument("--only-seeds", help="comma-separated seeds to train in this process (default all): run one "
                        "process per seed with OMP_NUM_THREADS=1 to use every core; a run without it summarises")
    parser.add_argument("--out", default="build/ablation", help="working folder (checkpoints, finished runs)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 drives of 2 frames, 1 seed, 1 epoch")
    args = parser.parse_args()
    if args.quick:
        args.train_drives, args.test_drives, args.frames, args.test_frames, args.seeds, args.epochs = 2, 1, 2, 2, 1, 1
    overrides = {key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in args.set)}
    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("rows", "out", "only_seeds")}
    ledger = work / "runs.json"
    done = record(ledger, settings, seed_from="ablation")
    earlier_per_class = previous_results("ablation", settings).get("per_class_iou_all_points", {})

    started = time.perf_counter()
    train = [FrameList(drive(seed, args.frames, args.step, 2, args.sensors)) for seed in range(args.train_drives)]
    test = FrameList([f for seed in range(100, 100 + args.test_drives)
                      for f in drive(seed, args.test_frames, args.step, 0, args.sensors)])
    print(f"rendered {sum(len(t) for t in train)} training frames ({args.train_drives} drives) and {len(test)} "
          f"held-out frames in {time.perf_counter() - started:.0f} s", flush=True)
    vocabulary = load_vocabulary("nuscenes")
    teacher = build_teacher(f"noisy:{args.noise}", vocabulary, text_encoder="hash")
    evaluation, _ = evaluate_source(test, Segmenter(vocabulary, "teacher", teacher=teacher), progress=False)
    teacher_scores = scores(evaluation, vocabulary)
    rows = [{"row": "teacher projection", "seeds": 1, "miou_all": teacher_scores["miou_all"], "miou_all_std": 0.0,
             "miou_in_view": teacher_scores["miou_in_view"], "miou_in_view_std": 0.0, "train_s": 0.0}]
    per_class = {"teacher projection": teacher_scores["per_class_all"]}
    print(rows[-1], flush=True)
    chosen = [int(i) - 1 for i in args.rows.split(",")] if args.rows else range(len(ROWS))
    seeds = [int(i) for i in args.only_seeds.split(",")] if args.only_seeds else range(args.seeds)
    for number in chosen:
        name = ROWS[number][0]
        for seed in seeds:
            key = f"{name}|{seed}"
            if key in done["runs"]:
                continue
            begun = time.perf_counter()
            config = TrainConfig(**{**dict(epochs=args.epochs, batch_size=1, max_paired=args.max_paired, seed=seed),
                                    **row_settings(number), **overrides})
            trainer = Pretrainer(train, teacher, StudentConfig(preset=args.preset, voxel_size_m=args.voxel), config,
                                 work / f"row{number + 1}_seed{seed}", torch.device("cpu"), progress=False)
            history = trainer.run()
            model = StudentModel(trainer.student, vocabulary, teacher.text_encoder)
            evaluation, _ = evaluate_source(test, Segmenter(vocabulary, "student", student=model), progress=False)
            run = {**scores(evaluation, vocabulary), "final_loss": history[-1]["loss"],
                   "self_training_from": trainer.self_training_from, "train_s": time.perf_counter() - begun}
            done = record(ledger, settings, key, run)
            print(f"{key}: mIoU {run['miou_all']:.1f} all / {run['miou_in_view']:.1f} in view, "
                  f"{run['train_s']:.0f} s", flush=True)
    missing = [f"{ROWS[n][0]}|{seed}" for n in chosen for seed in range(args.seeds)
               if f"{ROWS[n][0]}|{seed}" not in done["runs"]]
    if missing:
        print(f"not summarised: {len(missing)} runs still missing ({', '.join(missing)})")
        return
    for number in chosen:
        name = ROWS[number][0]
        runs = [done["runs"][f"{name}|{seed}"] for seed in range(args.seeds)]
        rows.append(summarise(name, runs))
        if all("per_class_all" in r for r in runs):
            per_class[name] = {c: mean_or_none([r["per_class_all"][c] for r in runs]) for c in vocabulary.names}
        else:  # runs merged from an earlier results file keep its per-class means
            per_class[name] = earlier_per_class.get(name)
    write("ablation", rows, {"settings": settings, "per_class_iou_all_points": per_class,
                             "runs": {k: {m: v for m, v in r.items() if m != "per_class_all"}
                                      for k, r in done["runs"].items()},
                             **about_world(args, train, test, vocabulary)},
          out=work if args.quick else None)  # a smoke run leaves the measured results alone


if __name__ == "__main__":
    main()
