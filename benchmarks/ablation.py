"""The paper's Table 3 in miniature, on the synthetic world with the CLIP-like proxy teacher, several seeds per row.

Rows: two teacher baselines (no training), then students pretrained from scratch on the same training drives,
each evaluated zero-shot after every epoch on the same two held-out sets (seeds 100.. and 200..), over all points
and over points some camera sees; each student row adds one component to the row before it:
  teacher projection          the teacher's pixels carried onto points (in view; all points counts the rest wrong)
  teacher + neighbour fill    each point no camera labels takes the vote of its labelled neighbours (all points)
  semantic, 1 sweep           semantic consistency only
  semantic, 3 sweeps          3 aggregated sweeps, still no spatial-temporal loss
  + spatial-temporal, 3 sweeps
  + self-training             mean teacher, per-class thresholds, points outside the cameras
  + consolidation             pseudo labels voted across each drive's frames in a world voxel map
  + distillation              1 - cos(point feature, pixel feature)
  MCFA, 1 sweep               (not cumulative: the first student row + MCFA's local and global alignment)
Per row and seed: the learning curve (every epoch's checkpoint on both held-out sets), plotted to
results/ablation_curves.png; per row the per-seed paired difference of its final scores to the row before it.
    python benchmarks/ablation.py [--train-drives 24] [--frames 2] [--seeds 3] [--epochs 6] [--rows 1,2]
Finished (row, seed) runs are kept in build/ablation/runs.json: an interrupted run picks up where it stopped.
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
from clip2scene_core.student.checkpoint import load_student  # noqa: E402
from clip2scene_core.student.network import StudentConfig  # noqa: E402
from clip2scene_core.teacher import build_teacher  # noqa: E402
from clip2scene_core.train import Pretrainer, TrainConfig  # noqa: E402
from clip2scene_core.vocabulary import load_vocabulary  # noqa: E402

BASE = dict(sweeps=1, spatial_temporal=False, self_training=False, consolidate=False, distill_weight=0.0)
# (name, change to the row before, the row it is compared with: None for the row before)
ROWS = [
    ("semantic, 1 sweep", {}, None),
    ("semantic, 3 sweeps", dict(sweeps=3), None),
    ("+ spatial-temporal, 3 sweeps", dict(spatial_temporal=True), None),
    ("+ self-training", dict(self_training=True), None),
    ("+ consolidation", dict(consolidate=True), None),
    ("+ distillation", dict(distill_weight=1.0), None),
    # MCFA (Wang et al. 2023): the first row (output-level alignment) + local position alignment (1 - cos to the
    # pixel feature) + global semantic alignment (camera-pooled points against the image embedding), weights 1.
    ("MCFA (semantic + local + global), 1 sweep", dict(BASE, distill_weight=1.0, global_weight=1.0),
     "semantic, 1 sweep"),
]
HELD_OUT_SEEDS = (100, 200)   # the first seed of each held-out set


def row_settings(number: int) -> dict:
    """Row `number` (0-based) of ROWS: the base with every change up to and including it."""
    settings = dict(BASE)
    for _, change, _ in ROWS[:number + 1]:
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


def scores(evaluation) -> dict:
    """mIoU (percent) over all points and in view, and the neighbour-filled all-points mIoU where evaluated; with
    the per-class IoU of each."""
    report = evaluation.to_dict()
    result = {}
    for key, name in (("all_points", "all"), ("in_view", "in_view"), ("filled_all_points", "filled")):
        if key in report:
            result[f"miou_{name}"] = 100 * (report[key]["miou"] or 0.0)
            result[f"per_class_{name}"] = {c: None if v is None else round(100 * v, 1)
                                           for c, v in report[key]["iou"].items()}
    return result


def evaluate_sets(sets: dict, segmenter) -> dict:
    """scores() of a segmenter on each held-out set."""
    return {name: scores(evaluate_source(frames, segmenter, progress=False)[0]) for name, frames in sets.items()}


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


def record(ledger: Path, settings: dict, key: str | None = None, run: dict | None = None) -> dict:
    """The finished runs of these settings, with `run` added under `key`; read and written under a lock, so that
    several processes (one per seed) can share one ledger."""
    with open(ledger.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = json.loads(ledger.read_text()) if ledger.exists() else {}
        if done.get("settings") != settings:
            done = {"settings": settings, "runs": {}}
        if key is not None:
            done["runs"][key] = run
            temporary = ledger.with_suffix(".tmp")
            temporary.write_text(json.dumps(done, indent=1))
            temporary.replace(ledger)
    return done


def about_world(args, train: list, test, vocabulary) -> dict:
    """What a results file says of the teacher, the drives and their class mix (test: one held-out set's frames, or
    a dict of sets)."""
    sets = test if isinstance(test, dict) else {"held_out": test}
    firsts = HELD_OUT_SEEDS if isinstance(test, dict) else HELD_OUT_SEEDS[:1]
    return {"teacher": f"{args.teacher} (hash text embeddings)",
            "class_mix_percent": {"train": class_mix([f for t in train for f in t], vocabulary),
                                  **{name: class_mix(frames, vocabulary) for name, frames in sets.items()}},
            "world": f"synthetic, {args.sensors}, 6 cameras; train seeds 0..{args.train_drives - 1}, held-out sets "
                     f"of {args.test_drives} drives from seeds {', '.join(str(s) for s in firsts)}, frames "
                     f"{args.step * 0.1:.1f} s apart"}


def world_arguments(parser: argparse.ArgumentParser, train_drives: int, frames: int, epochs: int) -> None:
    """The drives, teacher, student and budget options both ablations (this one and seen_unseen.py) take."""
    parser.add_argument("--train-drives", type=int, default=train_drives)
    parser.add_argument("--test-drives", type=int, default=3, help="drives per held-out set")
    parser.add_argument("--frames", type=int, default=frames, help="frames per training drive")
    parser.add_argument("--test-frames", type=int, default=4, help="frames per held-out drive")
    parser.add_argument("--step", type=int, default=8, help="frames are step x 0.1 s apart (8: 6.4 m at 8 m/s)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--teacher", default="cliplike", help="cliplike[:KEY=VALUE,...] or noisy:RATE")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--voxel", type=float, default=0.2, help="voxel edge in metres (0.2: the synthetic world's "
                        "objects are large, and it halves the CPU cost of 0.1)")
    parser.add_argument("--max-paired", type=int, default=0, help="loss points per sweep and kind (0: all)")
    parser.add_argument("--sensors", default="width=200,height=112,beams=16", help="synthetic camera and LiDAR options")


def paired_differences(runs: dict, seeds: int) -> dict:
    """Per trained row, per seed: its final scores minus those of the row it is compared with (the row before it;
    the teacher + neighbour fill baseline for the first), per held-out set and metric."""
    result = {}
    for number, (name, _, against) in enumerate(ROWS):
        before = against or (ROWS[number - 1][0] if number else None)
        per_seed = []
        for seed in range(seeds):
            mine = runs.get(f"{name}|{seed}")
            theirs = runs.get(f"{before}|{seed}") if before else runs.get("teacher")
            if mine is None or theirs is None:
                continue
            per_seed.append({held_out: {metric: round(mine["final"][held_out][metric] -
                                                      theirs["final"][held_out][compared], 2)
                                        for metric, compared in (("miou_all", "miou_all" if before else "miou_filled"),
                                                                 ("miou_in_view", "miou_in_view"))}
                             for held_out in mine["final"]})
        result[name] = {"against": before or "teacher + neighbour fill", "per_seed": per_seed}
    return result


def plot_curves(runs: dict, seeds: int, teacher: dict, path: Path) -> None:
    """Mean learning curve (all-points mIoU per epoch) of each trained row on each held-out set, with the teacher
    baselines as lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(teacher)
    figure, axes = plt.subplots(1, len(sets), figsize=(6 * len(sets), 4.5), squeeze=False)
    for axis, held_out in zip(axes[0], sets):
        for name, _, _ in ROWS:
            curves = [runs[f"{name}|{s}"]["curve"] for s in range(seeds) if f"{name}|{s}" in runs]
            if curves:
                epochs = range(1, min(len(c) for c in curves) + 1)
                axis.plot(epochs, [statistics.fmean(c[e - 1][held_out]["miou_all"] for c in curves) for e in epochs],
                          marker="o", label=name)
        axis.axhline(teacher[held_out]["miou_filled"], color="k", linestyle="--", label="teacher + neighbour fill")
        axis.axhline(teacher[held_out]["miou_in_view"], color="grey", linestyle=":", label="teacher in view")
        axis.set_title(f"held-out set {held_out}")
        axis.set_xlabel("epoch")
        axis.set_ylabel("student mIoU, all points")
        axis.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def train_row(number: int, seed: int, args, train, teacher, vocabulary, sets: dict, work: Path, overrides) -> dict:
    """One (row, seed): pretrain, then every epoch's checkpoint on every held-out set."""
    begun = time.perf_counter()
    config = TrainConfig(**{**dict(epochs=args.epochs, batch_size=1, max_paired=args.max_paired, seed=seed),
                            **row_settings(number), **overrides})
    out = work / f"row{number + 1}_seed{seed}"
    trainer = Pretrainer(train, teacher, StudentConfig(preset=args.preset, voxel_size_m=args.voxel), config, out,
                         torch.device("cpu"), progress=False)
    history = trainer.run()
    trained_s = time.perf_counter() - begun
    curve = []
    for epoch in range(1, args.epochs + 1):
        model, _ = load_student(out / "checkpoints" / f"epoch_{epoch:03d}.pt", vocabulary=vocabulary,
                                text_encoder=teacher.text_encoder)
        curve.append(evaluate_sets(sets, Segmenter(vocabulary, "student", student=model)))
    return {"final": curve[-1], "curve": [{h: {k: v for k, v in c[h].items() if not k.startswith("per_class")}
                                           for h in c} for c in curve],
            "loss": [r["loss"] for r in history], "self_training_from": trainer.self_training_from,
            "train_s": trained_s, "evaluate_s": time.perf_counter() - begun - trained_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    world_arguments(parser, train_drives=24, frames=2, epochs=6)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a train option for every row, e.g. --set lr=0.005 (YAML values)")
    parser.add_argument("--rows", help="comma-separated row numbers of the trained rows to run, 1-based (default all)")
    parser.add_argument("--only-seeds", help="comma-separated seeds to train in this process (default all): run one "
                        "process per seed with OMP_NUM_THREADS=1 to use every core; a run without it summarises")
    parser.add_argument("--out", default="build/ablation", help="working folder (checkpoints, finished runs)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 drives of 2 frames, 1 seed, 1 epoch")
    args = parser.parse_args()
    if args.quick:
        args.train_drives, args.test_drives, args.frames, args.test_frames, args.seeds, args.epochs = 2, 1, 1, 1, 1, 1
    overrides = {key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in args.set)}
    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("rows", "out", "only_seeds")}
    ledger = work / "runs.json"
    done = record(ledger, settings)

    started = time.perf_counter()
    train = [FrameList(drive(seed, args.frames, args.step, 2, args.sensors)) for seed in range(args.train_drives)]
    sets = {str(first): FrameList([f for seed in range(first, first + args.test_drives)
                                   for f in drive(seed, args.test_frames, args.step, 0, args.sensors)])
            for first in HELD_OUT_SEEDS}
    print(f"rendered {sum(len(t) for t in train)} training frames ({args.train_drives} drives) and "
          f"{sum(len(s) for s in sets.values())} held-out frames in {time.perf_counter() - started:.0f} s", flush=True)
    vocabulary = load_vocabulary("nuscenes")
    teacher = build_teacher(args.teacher, vocabulary, text_encoder="hash")
    if "teacher" not in done["runs"]:
        final = evaluate_sets(sets, Segmenter(vocabulary, "teacher", teacher=teacher))
        done = record(ledger, settings, "teacher", {"final": final})
    chosen = [int(i) - 1 for i in args.rows.split(",")] if args.rows else range(len(ROWS))
    seeds = [int(i) for i in args.only_seeds.split(",")] if args.only_seeds else range(args.seeds)
    for number in chosen:
        for seed in seeds:
            key = f"{ROWS[number][0]}|{seed}"
            if key in done["runs"]:
                continue
            run = train_row(number, seed, args, train, teacher, vocabulary, sets, work, overrides)
            done = record(ledger, settings, key, run)
            print(f"{key}: " + "; ".join(f"set {h}: mIoU {v['miou_all']:.1f} all / {v['miou_in_view']:.1f} in view"
                                         for h, v in run["final"].items()) + f", {run['train_s']:.0f} s", flush=True)
    runs = done["runs"]
    missing = [f"{ROWS[n][0]}|{seed}" for n in chosen for seed in range(args.seeds)
               if f"{ROWS[n][0]}|{seed}" not in runs]
    if missing:
        print(f"not summarised: {len(missing)} runs still missing ({', '.join(missing)})")
        return
    teacher_final = runs["teacher"]["final"]
    rows = []
    for held_out, scores_ in teacher_final.items():
        rows.append({"row": "teacher projection", "held_out": held_out, "seeds": 1, "miou_all": scores_["miou_all"],
                     "miou_in_view": scores_["miou_in_view"]})
        rows.append({"row": "teacher + neighbour fill", "held_out": held_out, "seeds": 1,
                     "miou_all": scores_["miou_filled"], "miou_in_view": scores_["miou_in_view"]})
    differences = paired_differences(runs, args.seeds)
    for number in chosen:
        name = ROWS[number][0]
        mine = [runs[f"{name}|{seed}"] for seed in range(args.seeds)]
        for held_out in teacher_final:
            row = summarise(name, [{**r["final"][held_out], "train_s": r["train_s"]} for r in mine])
            gaps = [d[held_out]["miou_all"] for d in differences[name]["per_seed"]]
            row.update(held_out=held_out, diff_all_per_seed=gaps, diff_all_ge_0=f"{sum(g >= 0 for g in gaps)}/"
                       f"{len(gaps)}", best_epoch=1 + max(range(args.epochs), key=lambda e: statistics.fmean(
                           r["curve"][e][held_out]["miou_all"] for r in mine)))
            rows.append(row)
    results = work if args.quick else RESULTS
    plot_curves(runs, args.seeds, teacher_final, results / "ablation_curves.png")
    per_class = {"teacher projection (in view)": {h: v["per_class_in_view"] for h, v in teacher_final.items()},
                 "teacher + neighbour fill": {h: v["per_class_filled"] for h, v in teacher_final.items()}}
    for number in chosen:
        name = ROWS[number][0]
        per_class[name] = {h: {c: mean_or_none([runs[f"{name}|{s}"]["final"][h]["per_class_all"][c]
                                                for s in range(args.seeds)]) for c in vocabulary.names}
                           for h in teacher_final}
    write("ablation", rows, {"settings": settings, "paired_differences": differences,
                             "per_class_iou_all_points": per_class,
                             "curves": {k: r["curve"] for k, r in runs.items() if "curve" in r},
                             **about_world(args, train, sets, vocabulary)}, out=results)


if __name__ == "__main__":
    main()
