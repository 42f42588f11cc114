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


def _config(args):
    """The config file's values with the command line's on top."""
    from .config import load_config, merge

    config = load_config(getattr(args, "config", None))
    overrides = {}
    if getattr(args, "device", None):
        overrides["device"] = args.device
    if getattr(args, "vocabulary", None):
        overrides["vocabulary"] = args.vocabulary
    if getattr(args, "teacher", None):
        overrides["teacher"] = {"name": args.teacher}
    return merge(config, overrides)


def _segmenter(args, config):
    from .segmenter import Segmenter, resolve_device
    from .teacher import build_teacher
    from .vocabulary import load_vocabulary

    vocabulary = load_vocabulary(config.vocabulary)
    device = resolve_device(config.device)
    teacher = None
    if args.mode in ("teacher", "fusion"):
        teacher = build_teacher(config.teacher.name, vocabulary, config.clip, config.teacher.text_encoder, device,
                                config.teacher.seed, config.teacher.text_cache_dir)
    return Segmenter(vocabulary, args.mode, teacher=teacher)


def _segment(args) -> int:
    from .evaluate import segment_source

    config = _config(args)
    summary = segment_source(open_source(args.data), _segmenter(args, config), Path(args.out),
                             pictures=not args.no_pictures)
    print(f"{len(summary['frames'])} frames segmented ({args.mode}) into {args.out}")
    for name, count in summary["points_per_class"].items():
        print(f"  {name:<24} {count:>10}")
    return 0


def _evaluate(args) -> int:
    from .evaluate import evaluate_source

    config = _config(args)
    evaluation, timings = evaluate_source(open_source(args.data), _segmenter(args, config))
    print(evaluation.table())
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        report = {"mode": args.mode, "source": args.data, **evaluation.to_dict(), "mean_timings_ms": timings}
        (out / "evaluation.json").write_text(json.dumps(report, indent=2))
        print(f"written to {out / 'evaluation.json'}")
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

    def model_options(command):
        command.add_argument("--mode", choices=["teacher", "student", "fusion"], default="teacher",
                             help="teacher: CLIP's pixels projected onto points (no training); student: the LiDAR "
                                  "network; fusion: both")
        command.add_argument("--data", required=True, help=sources_help)
        command.add_argument("--vocabulary", help="vocabulary YAML, or a shipped one: nuscenes, semantickitti, scannet")
        command.add_argument("--teacher", help="maskclip, labels[:NAME] or noisy:RATE (default: the config's)")
        command.add_argument("--config", help="YAML config; command-line options override it")
        command.add_argument("--device", help="auto, cpu or cuda")

    segment = commands.add_parser("segment", help="label every point of a source; writes labels and pictures")
    model_options(segment)
    segment.add_argument("--out", required=True, help="output folder")
    segment.add_argument("--no-pictures", action="store_true", help="skip the per-frame pictures")
    segment.set_defaults(run=_segment)

    evaluate = commands.add_parser("evaluate", help="per-class IoU and mIoU against the source's labels")
    model_options(evaluate)
    evaluate.add_argument("--out", help="folder for evaluation.json")
    evaluate.set_defaults(run=_evaluate)

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
    except (SourceError, FileExistsError, FileNotFoundError, ValueError) as error:
        print(f"clip2scene {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
