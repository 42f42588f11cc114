"""Recording durability costs: mcap write throughput without flushing, with a flush per pair (what the
recorder does: survives SIGKILL) and with an fsync per pair (survives a power cut), and how fast
`clip2scene reindex` repairs a part its writer left unfinished.

A pair is one ~1 MB cloud and six ~30 kB jpeg images (random bytes of those sizes: the writer never
decodes them), like the recorder benchmark's 20 Hz, six-camera input.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402

from clip2scene_core.data.reindex import reindex  # noqa: E402
from clip2scene_core.data.rosbag2 import COMPRESSED_IMAGE, POINTCLOUD2, BagWriter  # noqa: E402

CLOUD_BYTES, IMAGE_BYTES, CAMERAS = 1_000_000, 30_000, 6


def write_pairs(path: Path, pairs: int, mode: str, close: bool = True) -> float:
    """Seconds to write `pairs` pairs into a new part; mode: none, flush or fsync after each pair."""
    rng = os.urandom
    cloud, images = rng(CLOUD_BYTES), [rng(IMAGE_BYTES) for _ in range(CAMERAS)]
    writer = BagWriter(path)
    writer.add_topic("/lidar/points", POINTCLOUD2)
    for camera in range(CAMERAS):
        writer.add_topic(f"/cam_{camera}/image_raw/compressed", COMPRESSED_IMAGE)
    start = time.perf_counter()
    for pair in range(pairs):
        stamp = 10**18 + pair * 50_000_000
        for camera, image in enumerate(images):
            writer.write_raw(f"/cam_{camera}/image_raw/compressed", stamp, image)
        writer.write_raw("/lidar/points", stamp, cloud)
        if mode != "none":
            writer.flush(to_disk=mode == "fsync")
    seconds = time.perf_counter() - start
    if close:
        writer.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="50 pairs")
    args = parser.parse_args()
    if args.quick:
        args.pairs = 50
    pair_mb = (CLOUD_BYTES + CAMERAS * IMAGE_BYTES) / 1e6
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for mode in ("none", "flush", "fsync"):
            seconds = write_pairs(Path(folder) / f"write_{mode}", args.pairs, mode)
            rows.append({"what": f"write, {mode} per pair", "pairs": args.pairs, "seconds": round(seconds, 3),
                         "pairs_per_s": round(args.pairs / seconds, 1),
                         "mb_per_s": round(args.pairs * pair_mb / seconds, 1)})
        # A part as a killed recorder leaves it: flushed pairs, never closed (no index, footer or metadata).
        part = Path(folder) / "killed" / "part_0000"
        write_pairs(part, args.pairs, "flush", close=False)
        size_mb = (part / "part_0000.mcap").stat().st_size / 1e6
        start = time.perf_counter()
        (report,) = reindex(part.parent)
        seconds = time.perf_counter() - start
        rows.append({"what": "reindex an unfinished part", "pairs": report.clouds, "seconds": round(seconds, 3),
                     "pairs_per_s": round(report.clouds / seconds, 1), "mb_per_s": round(size_mb / seconds, 1)})
    write("recording", rows, {"note": f"pairs of one {CLOUD_BYTES / 1e6:.1f} MB cloud and {CAMERAS} "
                                      f"{IMAGE_BYTES / 1e3:.0f} kB images into mcap in a temporary folder"})


if __name__ == "__main__":
    main()
