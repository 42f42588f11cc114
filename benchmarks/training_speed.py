"""Training step time in the ablation's setting, today's path against the cached one, side by side in one process.

Each row pretrains the same student on the same short drives (3 sweeps, six 200x112 cameras, 16 beams, small
preset, 0.2 m voxels, batch 1, every paired point) and times its epochs: the first epoch pairs every scan (teacher,
projection, occlusion test); with the pairing cache (train.pairing_cache_mb, the default) later epochs reuse
those pairings. Rows: the old noisy teacher without the cache (the step as it was before the proxy and the
cache), the proxy without the cache, and the proxy with it.
    python benchmarks/training_speed.py [--drives 4] [--epochs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation import drive  # noqa: E402
from common import write  # noqa: E402

from clip2scene_core.data import FrameList  # noqa: E402
from clip2scene_core.student.network import StudentConfig  # noqa: E402
from clip2scene_core.teacher import build_teacher  # noqa: E402
from clip2scene_core.train import Pretrainer, TrainConfig  # noqa: E402
from clip2scene_core.vocabulary import load_vocabulary  # noqa: E402

ROWS = [("noisy:0.3, pairing every epoch (before)", "noisy:0.3", 0.0),
        ("cliplike, pairing every epoch", "cliplike", 0.0),
        ("cliplike, pairing cache", "cliplike", 2048.0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drives", type=int, default=4)
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 drive, 1 frame")
    args = parser.parse_args()
    if args.quick:
        args.drives, args.frames, args.epochs = 1, 1, 2
    torch.set_num_threads(1)
    train = [FrameList(drive(seed, args.frames, 8, 2, "width=200,height=112,beams=16")) for seed in range(args.drives)]
    vocabulary = load_vocabulary("nuscenes")
    rows = []
    for name, spec, cache in ROWS:
        teacher = build_teacher(spec, vocabulary, text_encoder="hash")
        config = TrainConfig(epochs=args.epochs, batch_size=1, sweeps=3, max_paired=0, seed=0, pairing_cache_mb=cache)
        with tempfile.TemporaryDirectory() as out:
            trainer = Pretrainer(train, teacher, StudentConfig(preset="small", voxel_size_m=0.2), config, Path(out),
                                 torch.device("cpu"), progress=False)
            started = time.perf_counter()
            history = trainer.run()
            total = time.perf_counter() - started
        step_s = [1 / r["scans_per_s"] for r in history]
        rows.append({"row": name, "first_epoch_step_s": step_s[0], "later_epochs_step_s": statistics.fmean(step_s[1:]),
                     "mean_step_s": statistics.fmean(step_s), "run_s": total})
        print(rows[-1], flush=True)
    before = rows[0]["later_epochs_step_s"]
    for row in rows:
        row["speed_up_later_epochs"] = before / row["later_epochs_step_s"]
    write("training_speed", rows, {"setting": vars(args), "threads": 1, "steps_per_epoch": args.drives * args.frames},
          out=Path(tempfile.mkdtemp()) if args.quick else None)


if __name__ == "__main__":
    main()
