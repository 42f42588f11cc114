"""Teacher benchmark: MaskCLIP dense-feature latency against number of cameras and crop size.

ViT-B-16 architecture with random weights (timing does not depend on the values), CPU fp32 always,
and CUDA fp16 when a GPU is present (target on an H100: six 224x416 crops in at most 15 ms).
    python benchmarks/teacher.py [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_memory_mb, reset_peak_memory, timed, write  # noqa: E402

from clip2scene_core.teacher.clip_model import DenseClipEncoder, load_clip, ClipConfig  # noqa: E402
from clip2scene_core.teacher.maskclip import preprocess  # noqa: E402


def run(repeats: int, quick: bool) -> list[dict]:
    rows = []
    devices = [("cpu", torch.float32)] + ([("cuda", torch.float16)] if torch.cuda.is_available() else [])
    crops = [(224, 416)] if quick else [(224, 416), (320, 576)]
    for device, dtype in devices:
        model, mean, std = load_clip(ClipConfig(model="ViT-B-16", pretrained=None), device)
        encoder = DenseClipEncoder(model.visual).to(device, dtype)
        for crop in crops:
            for cameras in (1, 6):
                images = [np.random.default_rng(i).integers(0, 255, (900, 1600, 3), np.uint8) for i in range(cameras)]

                def step():
                    with torch.no_grad():
                        x, _ = preprocess(images, crop, "stretch", mean, std, device)
                        encoder(x.to(dtype))

                reset_peak_memory(device)
                result = timed(step, repeats=repeats if device == "cuda" else max(1, repeats), warmup=1,
                               synchronize=device == "cuda")
                rows.append({"device": device, "precision": "fp16" if dtype == torch.float16 else "fp32",
                             "crop": f"{crop[0]}x{crop[1]}", "cameras": cameras, "p50_ms": result["p50_ms"],
                             "p95_ms": result["p95_ms"], "per_camera_ms": result["p50_ms"] / cameras,
                             "peak_mb": peak_memory_mb(device)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="only the 224x416 crop")
    args = parser.parse_args()
    note = "CUDA not available: GPU rows skipped" if not torch.cuda.is_available() else ""
    write("teacher", run(args.repeats, args.quick), {"note": note, "model": "ViT-B-16 (random weights)",
                                                     "input": "1600x900 RGB images, resize + dense forward"})


if __name__ == "__main__":
    main()
