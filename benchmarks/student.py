"""Student benchmarks: inference latency against point count (with the fitted scaling exponent), and
training throughput and peak memory per preset. CPU always; CUDA (fp32 and fp16) when present. First,
the segmenter's old full inference path against the fast one (per voxel, folded head) on the CPU.

Scans are synthetic-world sweeps tiled to the wanted point count (real LiDAR-like density).
    python benchmarks/student.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import in_fresh_process, peak_memory_mb, reset_peak_memory, timed, write  # noqa: E402
from reference_sparse import reference_path  # noqa: E402

from clip2scene_core.data import open_source  # noqa: E402
from clip2scene_core.student import sparse  # noqa: E402
from clip2scene_core.student.network import Student, StudentConfig, make_batch  # noqa: E402
from clip2scene_core.teacher import build_teacher  # noqa: E402
from clip2scene_core.train import Pretrainer, TrainConfig  # noqa: E402
from clip2scene_core.vocabulary import load_vocabulary  # noqa: E402


def scan_of(points: int, base: np.ndarray) -> np.ndarray:
    """A scan of `points` points: the base sweep, repeated and shifted to new ground if needed."""
    copies = [base + np.array([150.0 * k, 0.0, 0.0]) for k in range(int(np.ceil(points / len(base))))]
    return np.concatenate(copies)[:points].astype(np.float32)


def inference_rows(counts: list[int], preset: str, repeats: int) -> list[dict]:
    """The segmenter's student step (StudentModel.infer: voxelise, U-Net, folded head, each point's label and
    score back on the CPU), at torch's default thread count."""
    from clip2scene_core.frame import Frame
    from clip2scene_core.student.checkpoint import StudentModel
    from clip2scene_core.teacher.text import HashTextEncoder

    base = open_source("synthetic:frames=1,seed=0,cameras=1,width=64,height=48")[0].points
    rows = []
    devices = [("cpu", False)]
    if torch.cuda.is_available():
        devices += [("cuda", False), ("cuda", True)]
    for device, half in devices:
        model = StudentModel(Student(StudentConfig(preset=preset)), load_vocabulary("nuscenes"), HashTextEncoder(512),
                             device, half=half)
        for count in counts:
            frame = Frame(points=scan_of(count, base), stamp_ns=0)
            reset_peak_memory(device)
            result = timed(lambda: model.infer(frame), repeats=repeats, synchronize=device == "cuda")
            rows.append({"device": device, "precision": "fp16" if half else "fp32", "threads": torch.get_num_threads(),
                         "preset": preset, "points": count, "p50_ms": result["p50_ms"], "p95_ms": result["p95_ms"],
                         "peak_mb": peak_memory_mb(device)})
    return rows


def matmul_peak_gflops(size: int = 1024, repeats: int = 5) -> float:
    """This run's fp32 matmul rate on the CPU (best of repeats of a size^3 product), GFLOP/s."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(timed(lambda: a @ b, repeats=1, warmup=0)["p50_ms"] for _ in range(repeats))
    return 2 * size ** 3 / (best / 1e3) / 1e9


def interleaved(paths: dict, repeats: int) -> dict[str, list[float]]:
    """Milliseconds of each path's function, one warm-up each, then repeats rounds of one run per path."""
    samples = {name: [] for name in paths}
    for function in paths.values():
        function()
    for _ in range(repeats):
        for name, function in paths.items():
            samples[name].append(timed(function, repeats=1, warmup=0)["p50_ms"])
    return samples


def fast_path_rows(counts: list[int], preset: str, repeats: int, peak_gflops: float) -> list[dict]:
    """The segmenter's student inference on the CPU, the old full path (per point, both heads, then
    classify) and the fast one (per voxel, folded head), interleaved. Against peak_gflops (this run's fp32
    matmul rate): peak_gflop = the work a peak-rate matmul does in the row's median time; head_gflop = the
    row's head and classification matmul work; head_peak_fraction = head_gflop / peak_gflop."""
    from clip2scene_core.frame import Frame
    from clip2scene_core.student.checkpoint import StudentModel
    from clip2scene_core.teacher.text import HashTextEncoder

    base = open_source("synthetic:frames=1,seed=0,cameras=1,width=64,height=48")[0].points
    torch.manual_seed(0)
    model = StudentModel(Student(StudentConfig(preset=preset)), load_vocabulary("nuscenes"), HashTextEncoder(512))
    rows = []
    for count in counts:
        frame = Frame(points=scan_of(count, base), stamp_ns=0)
        paths = {"old": lambda: model.classify(model.features(frame)), "fast": lambda: model.infer(frame)}
        samples = interleaved(paths, repeats)
        labels_equal = bool(np.array_equal(paths["old"]()[0], paths["fast"]()[0]))
        old_median = float(np.median(samples["old"]))
        voxels = len(model.voxel_features(frame)[0])
        width, embed, classes = model.network.semantic_head.in_features, model.network.config.embed_dim, \
            len(model.vocabulary.names)
        head_gflop = {"old": 2 * count * embed * (2 * width + classes) / 1e9,
                      "fast": 2 * voxels * (width + 1) * (width + 1 + classes) / 1e9}
        for name in paths:
            median, least = float(np.median(samples[name])), float(np.min(samples[name]))
            peak_gflop = median / 1e3 * peak_gflops
            rows.append({"path": name, "preset": preset, "points": count, "voxels": voxels, "min_ms": least,
                         "median_ms": median, "ratio_to_old": median / old_median, "peak_gflop": peak_gflop,
                         "head_gflop": head_gflop[name], "head_peak_fraction": head_gflop[name] / peak_gflop,
                         "labels_equal": labels_equal})
    return rows


def conv_gflop(network: Student, batch) -> float:
    """The U-Net's useful convolution work for batch (the pairs of its rulebooks), GFLOP."""
    convolve, work = sparse.convolve, []

    def counting(features, weight, rulebook, transpose=False, out=None):
        work.append(2 * int(rulebook.starts[-1]) * weight.shape[1] * weight.shape[2])
        return convolve(features, weight, rulebook, transpose, out)

    sparse.convolve = counting
    try:
        with torch.no_grad():
            network.voxel_features(batch)
    finally:
        sparse.convolve = convolve
    return sum(work) / 1e9


def with_threads(function, threads: int):
    def run():
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return function()
        finally:
            torch.set_num_threads(before)
    return run


def convolution_rows(counts: list[int], presets: list[str], repeats: int, peaks: dict[int, float]) -> list[dict]:
    """The U-Net (voxel_features) on the CPU path: the reference convolution (benchmarks/reference_sparse.py,
    one search and one matmul per offset, BatchNorm its own pass) against the package's kernels, on one thread
    and on two, interleaved; with the segmenter's labels and scores through both. peak_fraction: useful
    convolution GFLOP/s over this run's matmul rate on as many threads (peaks: threads -> GFLOP/s)."""
    from clip2scene_core.frame import Frame
    from clip2scene_core.student.checkpoint import StudentModel
    from clip2scene_core.teacher.text import HashTextEncoder

    base = open_source("synthetic:frames=1,seed=0,cameras=1,width=64,height=48")[0].points
    rows = []
    for preset in presets:
        torch.manual_seed(0)
        network = Student(StudentConfig(preset=preset)).eval()
        model = StudentModel(network, load_vocabulary("nuscenes"), HashTextEncoder(512))
        for count in counts:
            frame = Frame(points=scan_of(count, base), stamp_ns=0)
            batch = make_batch([(frame.points, None)], network.config.voxel_size_m)

            def kernels():
                with torch.no_grad():
                    return network.voxel_features(batch)

            def reference():
                with torch.no_grad(), reference_path():
                    return network.voxel_features(batch)

            threads = {"reference": 1, "kernels": 1, "kernels, 2 threads": 2}
            paths = {"reference": with_threads(reference, 1), "kernels": with_threads(kernels, 1),
                     "kernels, 2 threads": with_threads(kernels, 2)}
            samples = interleaved(paths, repeats)
            labels, scores, _ = model.infer(frame)
            with reference_path():
                reference_labels, reference_scores, _ = model.infer(frame)
            gflop = conv_gflop(network, batch)
            for name in paths:
                least, median = float(np.min(samples[name])), float(np.median(samples[name]))
                rows.append({"path": name, "preset": preset, "points": count, "voxels": len(batch.coords),
                             "threads": threads[name], "min_ms": least, "median_ms": median,
                             "speedup_min": float(np.min(samples["reference"])) / least,
                             "speedup_median": float(np.median(samples["reference"])) / median,
                             "conv_gflop": gflop, "peak_fraction": gflop / (median / 1e3) / peaks[threads[name]],
                             "labels_equal": bool(np.array_equal(labels, reference_labels)),
                             "max_score_difference": float(np.abs(scores - reference_scores).max())})
    return rows


def scaling_exponent(rows: list[dict], device: str, precision: str) -> float:
    """Slope of log(latency) against log(points): 1.0 is linear."""
    chosen = [r for r in rows if r["device"] == device and r["precision"] == precision]
    return float(np.polyfit(np.log([r["points"] for r in chosen]), np.log([r["p50_ms"] for r in chosen]), 1)[0])


def training_row(preset: str, steps: int, variant: str = "kernels") -> dict:
    """variant: "reference" (the reference convolution, plain autograd), "kernels" (the package's convolution
    and its backward) or "checkpointing" (kernels, with activation checkpointing per U-Net stage)."""
    vocabulary = load_vocabulary("nuscenes")
    frames = list(open_source("synthetic:frames=4,seed=0,cameras=6,width=200,height=112,sweeps=2"))
    teacher = build_teacher("noisy:0.3", vocabulary, text_encoder="hash")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = TrainConfig(epochs=1, batch_size=2, sweeps=3, max_paired=0, optimizer="adamw", lr=1e-3,
                         checkpoint_stages=variant == "checkpointing")
    trainer = Pretrainer([frames], teacher, StudentConfig(preset=preset), config, Path("build/bench_train"), device,
                         progress=False)
    reset_peak_memory(device.type)

    def step(positions):
        with reference_path() if variant == "reference" else contextlib.nullcontext():
            samples = trainer._samples(0, positions, candidates=False)
            scans = [(p, i) for sample in samples for p, i in zip(sample.points, sample.intensity)]
            batch = make_batch(scans, trainer.student.config.voxel_size_m).to(device)
            loss = trainer._losses(samples, batch, 0, positions, False)[0]["loss"]
            trainer.optimizer.zero_grad()
            loss.backward()
        trainer.optimizer.step()

    step([0, 1])  # warm-up
    seconds = [timed(lambda: step([(2 * k) % 4, (2 * k + 1) % 4]), repeats=1, warmup=0,
                     synchronize=device.type == "cuda")["p50_ms"] / 1e3 for k in range(steps)]
    peak = peak_memory_mb(device.type)
    return {"device": device.type, "preset": preset, "variant": variant, "min_step_s": float(np.min(seconds)),
            "median_step_s": float(np.median(seconds)), "points_per_scan": int(np.mean([len(f) for f in frames])),
            "sweeps": 3, "scans_per_s": 2 / float(np.median(seconds)), "peak_memory_mb": peak,
            "parameters_m": sum(p.numel() for p in trainer.student.parameters()) / 1e6}


SECTIONS = ("convolution", "fast_path", "inference", "training")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, small preset only")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run, of {', '.join(SECTIONS)} (default all): convolution "
                             f"writes student_convolution.json and training_memory.json, fast_path student_fast_path."
                             f"json, inference student_inference.json, training training.json")
    args = parser.parse_args()
    sections = set(args.only.split(","))
    if not sections <= set(SECTIONS):
        parser.error(f"--only: unknown section(s) {', '.join(sorted(sections - set(SECTIONS)))}")
    quick = args.quick
    peaks = {threads: with_threads(lambda: matmul_peak_gflops(1024), threads)() for threads in (1, 2)}
    peak = peaks[1]
    if "convolution" in sections:
        write("student_convolution", convolution_rows([5_000, 35_000], ["small", "paper"], 3 if quick else 5, peaks),
              {"matmul_peak_gflops": peak, "matmul_peak_gflops_2_threads": peaks[2],
               "matmul": "fp32 1024^3, best of 5, CPU", "kernels": sparse.kernels().describe(),
               "note": "U-Net forward (voxel_features), reference and kernels interleaved in one process"})
        # Peak memory of a fresh process per training row.
        variants = ["reference", "kernels", "checkpointing"]
        training = [in_fresh_process(training_row, "small", 2 if quick else 3, variant) for variant in variants]
        summary = {}
        for variant in variants:
            rows = [row for row in training if row["variant"] == variant]
            reference = [row for row in training if row["variant"] == "reference"]
            summary[variant] = {
                "peak_memory_mb": max(row["peak_memory_mb"] for row in rows),
                "step_ratio_min": min(r["min_step_s"] for r in rows) / min(r["min_step_s"] for r in reference),
                "step_ratio_median": float(np.median([r["median_step_s"] for r in rows])
                                           / np.median([r["median_step_s"] for r in reference]))}
        write("training_memory", training, {"summary": summary, "note": "small preset, 2 scans x 3 sweeps, noisy "
                                            "teacher, 6 cameras, AdamW; CPU peak = the fresh process's peak RSS"})
    if "fast_path" in sections:
        counts = [5_000, 35_000] if quick else [5_000, 35_000, 120_000]
        write("student_fast_path", with_threads(lambda: fast_path_rows(counts, "small", 3 if quick else 7, peak), 1)(),
              {"matmul_peak_gflops": peak, "matmul": "fp32 1024^3, best of 5, CPU, 1 thread",
               "note": "old: features() + classify() (per point, both heads); fast: infer() (per voxel, folded head)"})
    if "inference" in sections:
        counts = [5_000, 35_000, 120_000, 250_000]
        # Each preset (and each training run) in a fresh process: its peak memory is its own.
        inference = in_fresh_process(inference_rows, counts, "small", 2 if quick else 9)
        if not quick:
            inference += in_fresh_process(inference_rows, counts, "paper", 5)
        exponents = {f"{r['device']}/{r['precision']}/{r['preset']}": None for r in inference}
        for key in exponents:
            device, precision, preset = key.split("/")
            rows = [r for r in inference if r["preset"] == preset]
            exponents[key] = scaling_exponent(rows, device, precision)
        write("student_inference", inference, {"scaling_exponent": exponents, "kernels": sparse.kernels().describe(),
                                               "note": "" if torch.cuda.is_available() else "CUDA not available"})
    if "training" in sections:
        write("training", [in_fresh_process(training_row, preset, 2 if quick else 4)
                           for preset in (["small"] if quick else ["small", "paper"])],
              {"note": "noisy teacher, 6 cameras, batch 2, 3 sweeps per sample, AdamW"})


if __name__ == "__main__":
    main()
