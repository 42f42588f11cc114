"""`make bench`: every benchmark under benchmarks/, one JSON each in benchmarks/results/, and one
summary table. GPU rows appear when CUDA is present; otherwise each JSON says they were skipped.
    python benchmarks/run_all.py [--quick] [--skip ablation,...]
    python benchmarks/run_all.py --summary      # only the table (and results/summary.md) from the latest JSON
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["teacher", "teacher_proxy", "student", "training_speed", "node", "recording", "objects", "soak", "ablation",
              "seen_unseen"]


def load(name: str) -> dict:
    path = HERE / "results" / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def peak(row: dict) -> str:
    return f", {row['peak_mb']:.0f} MB peak" if row.get("peak_mb") is not None else ""


def summary() -> list[tuple[str, str, str]]:
    """(stage, figure, target) rows from the latest results."""
    rows = []
    teacher = load("teacher")
    for row in teacher.get("rows", []):
        if row["crop"] == "224x416":
            target = "H100 fp16, 6 cameras: <= 15 ms" if row["cameras"] == 6 else ""
            rows.append((f"teacher {row['cameras']} camera(s) {row['crop']} {row['device']} {row['precision']}",
                         f"{row['p50_ms']:.0f} ms{peak(row)}", target))
    inference = load("student_inference")
    for row in inference.get("rows", []):
        rows.append((f"student {row['preset']} {row['points'] // 1000}k points {row['device']} {row['precision']}",
                     f"{row['p50_ms']:.0f} ms{peak(row)}", "H100: <= 15 ms at 35k, <= 30 ms at 120k (end to end)"
                     if row["device"] == "cuda" and row["points"] in (35_000, 120_000) else ""))
    for key, exponent in inference.get("scaling_exponent", {}).items():
        rows.append((f"student scaling exponent {key}", f"{exponent:.2f}", "CPU: <= 1.1"))
    for row in load("student_fast_path").get("rows", []):
        rows.append((f"student inference, {row['path']} path, {row['preset']} {row['points'] // 1000}k points",
                     f"{row['median_ms']:.0f} ms median ({row['min_ms']:.0f} min), {row['ratio_to_old']:.2f} x old",
                     ""))
    convolution = load("student_convolution")
    for row in convolution.get("rows", []):
        if row["path"] != "reference":
            target = {"small": "small 35k: >= 4x or > 50 %", "paper": "paper 35k: >= 2x"}[row["preset"]] \
                if row["path"] == "kernels" and row["points"] == 35_000 else ""
            rows.append((f"student U-Net, {row['path']}, {row['preset']} {row['points'] // 1000}k points",
                         f"{row['median_ms']:.0f} ms median, {row['speedup_median']:.2f}x median / "
                         f"{row['speedup_min']:.2f}x min over the reference (1 thread), "
                         f"{100 * row['peak_fraction']:.0f} % of matmul peak", target))
    for variant, figures in load("training_memory").get("summary", {}).items():
        rows.append((f"training small cpu (2 scans x 3 sweeps), {variant}", f"{figures['peak_memory_mb']:.0f} MB "
                     f"peak, step {figures['step_ratio_median']:.2f}x the reference's (median)",
                     "" if variant == "reference" else "<= 3 GB"))
    for row in load("training").get("rows", []):
        rows.append((f"training {row['preset']} {row['device']}", f"{row['scans_per_s']:.2f} scans/s, "
                     f"{row['peak_memory_mb']:.0f} MB peak", ""))
    for row in load("node_overhead").get("rows", []):
        rows.append((f"node overhead {row['points'] // 1000}k points (decode+sync+encode)", f"{row['total_ms']:.2f} ms",
                     "CPU: <= 3 ms at 100k"))
    for row in load("node_end_to_end").get("rows", []):
        if row["p50_ms"] is not None:
            rows.append((f"node end to end, {row['mode']}, {row['points'] // 1000}k points, 6 cameras",
                         f"p50 {row['p50_ms']:.0f} / p95 {row['p95_ms']:.0f} / p99 {row['p99_ms']:.0f} ms, "
                         f"{row['node_rss_mb']:.0f} MB" + (f", {row['dropped']} of {row['published']} sweeps dropped"
                                                            if row.get("dropped") else ""), ""))
    for row in load("node_parameters_during_inference").get("rows", []):
        if row["p50_ms"] is not None:
            rows.append((f"node get_parameters during inference ({row['points'] // 1000}k-point sweep of "
                         f"{row['sweep_ms']:.0f} ms)", f"p50 {row['p50_ms']:.1f} / max {row['max_ms']:.1f} ms, "
                         f"{row['answers']} answers", "< 200 ms"))
    for row in load("objects_timing").get("rows", []):
        rows.append((f"objects: clustering + boxes, {row['points'] // 1000}k points ({row['objects']} objects)",
                     f"{row['cluster_and_boxes_p50_ms']:.0f} ms (clustering {row['cluster_p50_ms']:.0f} ms)", ""))
    for row in load("objects_quality").get("rows", []):
        if row["class"] == "all things":
            rows.append((f"objects: boxes from {row['mode']}, {row['ground_truth']} objects",
                         (f"P {row['precision']:.2f} / R {row['recall']:.2f} at 3D IoU 0.5 (2 m centre "
                          f"distance: P {row['precision_2m']:.2f} / R {row['recall_2m']:.2f})"), ""))
    for row in load("recorder").get("rows", []):
        rows.append(("recorder 20 Hz, 6 cameras", f"{row['pairs_per_s']:.1f} pairs/s, {row['mb_per_s']:.1f} MB/s, "
                     f"{row['missed']} missed of {row['published']}", "no drops"))
    for row in load("recording").get("rows", []):
        rows.append((f"recording: {row['what']}", f"{row['pairs_per_s']:.0f} pairs/s, {row['mb_per_s']:.0f} MB/s", ""))
    for row in load("soak").get("rows", []):
        rows.append((f"soak {row['messages']} messages at {row['rate_hz']} Hz",
                     f"RSS {row['rss_start_mb']:.0f} -> {row['rss_end_mb']:.0f} MB, slope "
                     f"{row['slope_mb_per_1000']:.2f} MB/1000 msgs", "flat"))
    for row in load("teacher_proxy").get("rows", []):
        rows.append((f"teacher {row['teacher']} on held-out drives", f"mIoU {row['miou_in_view']:.1f} in view / "
                     f"{row['miou_filled_all']:.1f} filled all, AUROC {row['auroc']:.2f}", "AUROC >= 0.75"))
    for row in load("training_speed").get("rows", []):
        rows.append((f"training step: {row['row']}", f"{row['later_epochs_step_s']:.2f} s/step, "
                     f"{row['speed_up_later_epochs']:.2f}x", ">= 4x"))
    for row in load("ablation").get("rows", []):
        seeds = row.get("seeds", 1)
        spread = f" +- {row['miou_all_std']:.1f}" if seeds > 1 else ""
        held_out = f", held-out set {row['held_out']}" if "held_out" in row else ""
        rows.append((f"ablation: {row['row']}{held_out}", f"mIoU {row['miou_all']:.1f}{spread} all / {row['miou_in_view']:.1f} "
                     f"in view" + (f", {seeds} seeds" if seeds > 1 else ""), ""))
    for row in load("seen_unseen").get("rows", []):
        seeds = row.get("seeds", 1)
        figure = ", ".join(f"{label} {row[key + '_all']:.1f}" + (f" +- {row[key + '_all_std']:.1f}" if seeds > 1
                                                                  else "")
                           for key, label in (("seen_miou", "seen"), ("unseen_miou", "unseen"), ("hiou", "hIoU")))
        rows.append((f"seen/unseen: {row['row']}",
                     figure + " (all points)" + (f", {seeds} seeds" if seeds > 1 else ""), ""))
    return rows


def markdown(rows) -> str:
    """The same rows as a Markdown table (results/summary.md, pasted into the README)."""
    lines = ["| stage | figure | target |", "|---|---|---|"]
    return "\n".join(lines + [f"| {stage} | {figure} | {target} |" for stage, figure, target in rows])


def machines() -> str:
    """Where the latest results ran, one line per distinct machine."""
    seen = {}
    for path in sorted((HERE / "results").glob("*.json")):
        result = json.loads(path.read_text())
        m = result.get("machine", {})
        key = (f"{m.get('cpu')}, {m.get('cores')} cores, GPU {m.get('gpu') or 'none'}, torch {m.get('torch')}, "
               f"spconv {m.get('spconv')}")
        seen.setdefault(key, []).append(f"{result['benchmark']} ({result.get('date', '?')})")
    return "\n".join(f"- {key}: {', '.join(names)}" for key, names in seen.items())


def table(rows) -> str:
    widths = [max(len(r[i]) for r in rows + [("stage", "figure", "target")]) for i in range(3)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(("stage", "figure", "target"), widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test of every benchmark)")
    parser.add_argument("--skip", default="", help="comma-separated benchmarks to leave out")
    parser.add_argument("--summary", action="store_true", help="run nothing: the table from the latest results")
    args = parser.parse_args()
    skipped = set(BENCHMARKS) if args.summary else set(filter(None, args.skip.split(",")))
    for name in BENCHMARKS:
        if name in skipped:
            continue
        started = time.monotonic()
        print(f"\n=== {name}", flush=True)
        command = [sys.executable, str(HERE / f"{name}.py")] + (["--quick"] if args.quick else [])
        if subprocess.run(command).returncode:
            raise SystemExit(f"benchmark {name} failed")
        print(f"=== {name} took {time.monotonic() - started:.0f} s", flush=True)
    rows = summary()
    (HERE / "results" / "summary.md").write_text(markdown(rows) + "\n\nMachines:\n" + machines() + "\n")
    print("\n" + table(rows))
    print("\nmachines:\n" + machines())


if __name__ == "__main__":
    main()
