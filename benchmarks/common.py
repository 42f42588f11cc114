"""Shared by the benchmarks: the machine's description, timing, JSON out, a table printed."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """CPU, cores, GPU and library versions, recorded with every result."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        import spconv
        info["spconv"] = spconv.__version__
    except ImportError:
        info["spconv"] = None
    return info


def timed(function, repeats: int, warmup: int = 1, synchronize: bool = False) -> dict:
    """Wall-clock milliseconds of function() over repeats runs after warmup runs: p50, p95, mean."""
    for _ in range(warmup):
        function()
    samples = []
    for _ in range(repeats):
        if synchronize:
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if synchronize:
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    return {"p50_ms": statistics.median(samples), "p95_ms": samples[min(len(samples) - 1, int(0.95 * len(samples)))],
            "mean_ms": statistics.fmean(samples), "runs": repeats}


def reset_peak_memory(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mb(device: str) -> float:
    """CUDA: the allocator's peak since reset_peak_memory; CPU: the process's peak resident memory so far
    (rows run smallest first, so each row's figure is the peak up to and including it).

    On Linux the CPU figure is VmHWM, the peak of this process's own memory: getrusage's ru_maxrss in a
    process started by spawn (in_fresh_process) begins at its parent's resident size when it forked."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_fresh_process(function, *args):
    """function(*args) in a new process (spawned), so that its peak memory is its own."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(function, args)


def write(name: str, rows: list[dict], extra: dict | None = None, out: Path | None = None) -> Path:
    """results/<name>.json with the machine and rows; prints the rows as a table."""
    path = (out or RESULTS) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), "date": time.strftime("%Y-%m-%d"),
                                **(extra or {}), "rows": rows}, indent=2))
    print(table(rows))
    print(f"written to {path}")
    return path


def table(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)"
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)
