"""The `clip2scene` command. Each subcommand parses its arguments and calls the core; no logic here."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .data import SourceError, open_source


def _inspect(args) -> int:
    from .inspect_source import summarize
    from .render import render_frame, save_png

    source = open_source(args.source)
    summary = summarize(source, args.source, max_frames=args.max_frames)
    print(json.dumps(summary.to_dict(), indent=2) if args.json else summary.table())
    if args.render:
        frame = source[args.frame]
        color_by = args.color_by
        if color_by == "label" and frame.labels is None:
            print(f"frame {args.frame} has no labels; colouring by depth", file=sys.stderr)
            color_by = "depth"
        path = save_png(args.render, render_frame(frame, color_by=color_by))
        print(f"picture of frame {args.frame} ({frame.name}) written to {path}", file=sys.stderr)
    return 0


def _export(args) -> int:
    from tqdm import tqdm

    from .data.rosbag2 import BagLayout, write_bag

    source = open_source(args.source)
    layout = BagLayout(compressed=not args.raw_images)
    path = write_bag(tqdm(source, desc="export", unit="frame", disable=args.quiet), args.out, args.storage, layout)
    print(f"{len(source)} frames written to {path} ({args.storage})")
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    return run_demo(Path(args.out), frames=args.frames)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clip2scene", description="Open-vocabulary LiDAR segmentation (CLIP2Scene).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    commands = parser.add_subparsers(dest="command", required=True)

    sources_help = ("data source: nuscenes:ROOT?version=..&split=.., semantickitti:ROOT, scannet:ROOT, "
                    "bag:DIR?lidar=..&cameras=.., synthetic:frames=40,seed=0,cameras=6")
    inspect = commands.add_parser("inspect", help="summarise a data source; optionally draw one frame",
                                  description="Frames, points, cameras, labels and projection coverage of a source.")
    inspect.add_argument("source", help=sources_help)
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.add_argument("--render", metavar="FILE.png", help="draw one frame's points over its camera images")
    inspect.add_argument("--frame", type=int, default=0, help="which frame to draw (default 0)")
    inspect.add_argument("--color-by", choices=["depth", "label"], default="depth", help="point colours")
    inspect.add_argument("--max-frames", type=int, default=20, help="frames read for the summary, spread evenly")
    inspect.set_defaults(run=_inspect)

    export = commands.add_parser("export", help="write a source's frames into a rosbag2 recording",
                                 description="Frames -> rosbag2 (the layout `bag:` sources and the recorder use).")
    export.add_argument("source", help=sources_help)
    export.add_argument("out", help="new bag directory")
    export.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap")
    export.add_argument("--raw-images", action="store_true", help="rgb8 Image instead of jpeg CompressedImage")
    export.add_argument("--quiet", action="store_true", help="no progress bar")
    export.set_defaults(run=_export)

    demo = commands.add_parser("demo", help="the data layer's showcase on the synthetic world")
    demo.add_argument("--out", default="out/demo", help="folder for the bag, pictures and summaries")
    demo.add_argument("--frames", type=int, default=20)
    demo.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.run(args)
    except (SourceError, FileExistsError, FileNotFoundError) as error:
        print(f"clip2scene {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
