"""The `clip2scene` command. Each subcommand parses its arguments and calls the core; no logic here.

One error path for every command (main): a condition the user caused (a UserError, or an OSError on a
named path) prints one message naming the input and the fix and exits 2; --verbose adds the traceback;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
from pathlib import Path

from .data import MissingPosesError, open_source
from .errors import UsageError, UserError
from .files import describe_os_error, new_output, output_file, output_folder


def _inspect(args) -> int:
    from .inspect_source import summarize
    from .render import render_frame, save_png

    if args.max_frames < 1:
        raise UsageError(f"--max-frames {args.max_frames}: give at least 1")
    source = open_source(args.source)
    if args.render:  # checked before the summary's work
        if Path(args.render).suffix.lower() not in (".png", ".jpg", ".jpeg"):
            raise UsageError(f"--render {args.render}: give a .png (or .jpg) file name")
        output_file(args.render, "--render")
        _frame_index(source, args.frame, args.source)
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


def _frame_index(source, index: int, spec: str) -> int:
    """index, when source has that frame; a UsageError naming --frame and the valid range otherwise."""
    if not 0 <= index < len(source):
        held = f"frames 0 to {len(source) - 1}" if len(source) else "no frames"
        raise UsageError(f"--frame {index} is out of range: {spec} has {held}")
    return index


def _export(args) -> int:
    from tqdm import tqdm

    from .data.rosbag2 import BagLayout, write_bag

    new_output(args.out, "out")
    source = open_source(args.source)
    layout = BagLayout(compressed=not args.raw_images)
    path = write_bag(tqdm(source, desc="export", unit="frame", disable=args.quiet), args.out, args.storage, layout)
    print(f"{len(source)} frames written to {path} ({args.storage})")
    return 0


def _config(args):
    """The config file's values with the command line's on top."""
    from .config import load_config, merge

    config = load_config(getattr(args, "config", None))
    overrides: dict = {}
    for name in ("device", "vocabulary"):
        if getattr(args, name, None):
            overrides[name] = getattr(args, name)
    if getattr(args, "teacher", None):
        overrides["teacher"] = {"name": args.teacher}
    for section, options in (("train", ("epochs", "batch_size", "lr", "sweeps")), ("finetune", ("labels_fraction",))):
        values = {name: getattr(args, name) for name in options if getattr(args, name, None) is not None}
        if values:
            overrides[section] = values
    if getattr(args, "finetune_epochs", None) is not None:
        overrides.setdefault("finetune", {})["epochs"] = args.finetune_epochs
    return merge(config, overrides)


def _open_all(specs: list[str], teacher_name: str = "", **defaults):
    """Open sources; a labels:NAME teacher reads bag label images from <camera namespace>/NAME."""
    from .teacher import label_images_name

    return [open_source(spec, label_images=label_images_name(teacher_name), **defaults) for spec in specs]


def _teacher(config, vocabulary, device):
    from .teacher import build_teacher

    return build_teacher(config.teacher.name, vocabulary, config.clip, config.teacher.text_encoder, device,
                         config.teacher.seed, config.teacher.text_cache_dir)


def _segmenter(args, config):
    from .segmenter import Segmenter, resolve_device
    from .student.checkpoint import load_student
    from .vocabulary import load_vocabulary

    device = resolve_device(config.device)
    student, vocabulary = None, None
    if getattr(args, "vocabulary", None) or not getattr(args, "checkpoint", None):
        vocabulary = load_vocabulary(config.vocabulary)
    if args.mode in ("student", "fusion"):
        if not getattr(args, "checkpoint", None):
            raise UsageError(f"mode {args.mode} needs --checkpoint (a pretrained student)")
        student, _ = load_student(args.checkpoint, device, vocabulary)
        vocabulary = student.vocabulary
    teacher = _teacher(config, vocabulary, device) if args.mode in ("teacher", "fusion") else None
    return Segmenter(vocabulary, args.mode, teacher=teacher, student=student)


def _mode(args) -> None:
    if args.mode is None:
        args.mode = "student" if getattr(args, "checkpoint", None) else "teacher"


def _segment(args) -> int:
    from .evaluate import segment_source

    _mode(args)
    config = _config(args)
    output_folder(args.out, "--out")
    source = _open_all([args.data], config.teacher.name)[0]
    segmenter = _segmenter(args, config)
    segmenter.set_query(args.query or "")
    summary = segment_source(source, segmenter, Path(args.out), pictures=not args.no_pictures, objects=config.objects,
                             query_threshold=args.query_threshold)
    print(f"{len(summary['frames'])} frames segmented ({args.mode}) into {args.out}, "
          f"{sum(summary['objects_per_frame'])} objects")
    for name, count in summary["points_per_class"].items():
        print(f"  {name:<24} {count:>10}")
    if "query" in summary:
        print(f"  query {args.query!r}: {sum(summary['query']['points_per_frame'])} points above "
              f"{args.query_threshold}")
    return 0


def _evaluate(args) -> int:
    from .evaluate import evaluate_source, write_report

    _mode(args)
    config = _config(args)
    if args.out:
        output_folder(args.out, "--out")
    segmenter = _segmenter(args, config)
    source = _open_all([args.data], config.teacher.name)[0]
    seen = _seen_classes(args, segmenter.vocabulary)
    if seen is None and args.checkpoint:
        from .student.checkpoint import read_checkpoint

        seen = read_checkpoint(args.checkpoint).get("seen_classes") or None
    evaluation, timings = evaluate_source(source, segmenter, seen=seen)
    print(evaluation.table())
    if args.out:
        report = write_report(Path(args.out), evaluation, timings, source, segmenter,
                              {"mode": args.mode, "source": args.data, "checkpoint": args.checkpoint})
        print(f"report and pictures written to {report.parent}")
    return 0


def _seen_classes(args, vocabulary) -> list[str] | None:
    """The seen classes --seen-classes, --unseen-classes or --split name (None: no option given)."""
    from .vocabulary import class_mask, split_unseen

    given = [(flag, value) for flag, value in (("--seen-classes", args.seen_classes),
                                               ("--unseen-classes", args.unseen_classes), ("--split", args.split))
             if value]
    if len(given) > 1:
        raise UsageError(f"{given[0][0]} and {given[1][0]} both name the seen classes; give one of them")
    if not given:
        return None
    flag, value = given[0]
    names = split_unseen(vocabulary, value) if flag == "--split" else \
        [name.strip() for name in value.split(",") if name.strip()]
    mask = class_mask(vocabulary, names, flag)
    return [name for name, chosen in zip(vocabulary.names, mask) if chosen == (flag == "--seen-classes")]


def _pretrain(args) -> int:
    from .train import finish_distributed, init_distributed

    config = _config(args)
    output_folder(args.out, "--out")
    rank, world = init_distributed()
    code = _pretrain_in_group(args, config, rank, world)
    finish_distributed()  # after success only: a failed process ends at once, and torchrun stops the others
    return code


def _pretrain_in_group(args, config, rank: int, world: int) -> int:
    from .config import merge
    from .segmenter import resolve_device
    from .train import Pretrainer, dump_config
    from .vocabulary import load_vocabulary

    device = resolve_device(config.device)
    if device.type == "cuda" and world > 1:
        device = torch_device_for_rank()
    vocabulary = load_vocabulary(config.vocabulary)
    seen = _seen_classes(args, vocabulary)
    if seen is not None:
        config = merge(config, {"train": {"seen_classes": seen}})
    teacher = _teacher(config, vocabulary, device)
    try:
        sources = _open_all(args.data, config.teacher.name, sweeps=max(config.train.sweeps - 1, 0))
    except MissingPosesError as error:
        raise MissingPosesError(f"{str(error).split(';')[0]}; pretrain with --sweeps 1 (the keyframe alone), or "
                                f"record the vehicle's odometry on /tf") from None
    out = Path(args.out)
    if rank == 0:
        dump_config(out, config)
    extra = {"vocabulary": vocabulary.to_dict(), "clip": to_plain(config.clip), "sources": args.data}
    trainer = Pretrainer(sources, teacher, config.student, config.train, out, device, extra)
    if args.resume:
        trainer.resume(Path(args.resume) if args.resume != "last" else out / "checkpoints" / "last.pt")
    history = trainer.run()
    if rank == 0 and history:
        last = history[-1]
        print(f"pretrained {last['epoch']} epochs: loss {last['loss']:.4f}; checkpoints in {out / 'checkpoints'}")
    return 0


def _finetune(args) -> int:
    from .evaluate import evaluate_source, write_report
    from .finetune import finetune
    from .segmenter import Segmenter, resolve_device
    from .student.checkpoint import load_student
    from .vocabulary import load_vocabulary

    config = _config(args)
    output_folder(args.out, "--out")
    device = resolve_device(config.device)
    vocabulary = load_vocabulary(config.vocabulary) if args.vocabulary else None
    model, payload = load_student(args.checkpoint, device, vocabulary)
    vocabulary = model.vocabulary
    out = Path(args.out)
    extra = {key: payload[key] for key in ("teacher", "text_encoder", "clip", "text_embeddings") if key in payload}
    extra["vocabulary"] = vocabulary.to_dict()
    history = finetune(model, open_source(args.data), vocabulary, config.finetune, out, extra)
    print(f"fine-tuned {len(history)} epochs on {config.finetune.labels_fraction:.2%} of the scans: "
          f"loss {history[-1]['loss']:.4f}; checkpoint {out / 'finetuned.pt'}")
    if args.val:
        source = open_source(args.val)
        evaluation, timings = evaluate_source(source, Segmenter(vocabulary, "student", student=model))
        print(evaluation.table())
        write_report(out, evaluation, timings, source, Segmenter(vocabulary, "student", student=model),
                     {"mode": "student (fine-tuned)", "source": args.val, "checkpoint": str(out / "finetuned.pt")})
    return 0


def torch_device_for_rank():
    import torch
    return torch.device("cuda", torch.cuda.current_device())


def to_plain(dataclass_value) -> dict:
    from dataclasses import asdict
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(dataclass_value).items()}


def _replay(args) -> int:
    from .replay import replay
    from .teacher import label_images_name

    if args.slop_ms < 0:
        raise UsageError(f"--slop-ms {args.slop_ms}: give 0 or more milliseconds")
    _mode(args)
    config = _config(args)
    if args.out:
        output_folder(args.out, "--out")
    if args.out_bag:
        new_output(args.out_bag, "--out-bag")
    report = replay(args.bag, _segmenter(args, config), realtime=args.realtime, out_bag=args.out_bag,
                    slop_ms=args.slop_ms, label_images=label_images_name(config.teacher.name))
    print(report.table())
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        data = {"bag": args.bag, "mode": args.mode, "frames": report.frames, "latency_ms": report.percentiles(),
                "skipped_clouds": report.skipped_clouds,
                **(report.evaluation.to_dict() if report.evaluation is not None else {})}
        (out / "replay.json").write_text(json.dumps(data, indent=2))
        print(f"written to {out / 'replay.json'}")
    return 0


def _calibration(args) -> int:
    from .calibration import frame_transforms, save_calibration

    output_file(args.out, "--out")
    source = open_source(args.source)
    frame = source[_frame_index(source, args.frame, args.source)]
    path = save_calibration(args.out, frame_transforms(frame, args.ego_frame))
    print(f"static transforms of {frame.frame_id} and {len(frame.cameras)} cameras written to {path}")
    return 0


def _reindex(args) -> int:
    from .data.reindex import reindex

    reports = reindex(args.bag)
    if not reports:
        print(f"{args.bag}: every part is complete; nothing to reindex")
    for report in reports:
        print(f"{report.part}: {report.clouds} clouds ({report.total} messages) kept, {report.dropped_bytes} bytes of "
              f"a cut-off tail left out; the unfinished file is kept beside them as *.unfinished")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clip2scene", description="Open-vocabulary LiDAR segmentation (CLIP2Scene).")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log more, and show the traceback of an error (e.g. to report it)")
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

    def model_options(command, data_help=sources_help):
        command.add_argument("--mode", choices=["teacher", "student", "fusion"],
                             help="teacher: CLIP's pixels projected onto points (no training); student: the LiDAR "
                                  "network (default with --checkpoint); fusion: both")
        command.add_argument("--data", required=True, help=data_help)
        command.add_argument("--checkpoint", help="a pretrained student (.pt)")
        common(command)

    def common(command):
        command.add_argument("--vocabulary", help="vocabulary YAML, or a shipped one: nuscenes, semantickitti, scannet")
        command.add_argument("--teacher", help="maskclip, labels[:NAME], cliplike[:KEY=VALUE,...] or noisy:RATE (default: the config's)")
        command.add_argument("--config", help="YAML config; command-line options override it")
        command.add_argument("--device", help="auto, cpu or cuda")
        command.add_argument("--threads", type=int, default=0, metavar="N",
                             help="CPU threads for torch (default 0: the cores free, i.e. usable cores less the "
                                  "1-minute load average, at least 1)")

    def seen_options(command, purpose):
        command.add_argument("--seen-classes", dest="seen_classes", metavar="NAMES",
                             help=f"comma-separated vocabulary class names: {purpose}")
        command.add_argument("--unseen-classes", dest="unseen_classes", metavar="NAMES",
                             help="comma-separated names of the unseen classes; all others are seen")
        command.add_argument("--split", metavar="NAME", help="a shipped zero-shot split of the vocabulary "
                             "(config/vocabularies/splits/zero_shot.yaml), e.g. unseen4: its classes are unseen")

    segment = commands.add_parser("segment", help="label every point of a source; writes labels and pictures")
    model_options(segment)
    segment.add_argument("--out", required=True, help="output folder")
    segment.add_argument("--no-pictures", action="store_true", help="skip the per-frame pictures")
    segment.add_argument("--query", metavar="TEXT", help="also score every point against this text (any text, "
                         "through the class prompt templates): a per-point cosine similarity in the output")
    segment.add_argument("--query-threshold", type=float, default=0.25, dest="query_threshold",
                         help="cosine above which a point matches the query (default 0.25)")
    segment.set_defaults(run=_segment)

    evaluate = commands.add_parser("evaluate", help="per-class IoU and mIoU against the source's labels "
                                                    "(annotation-free: nothing is trained)")
    model_options(evaluate)
    evaluate.add_argument("--out", help="folder for evaluation.json and pictures")
    seen_options(evaluate, "report seen mIoU, unseen mIoU and hIoU with these seen classes (default: the "
                           "checkpoint's, when it was trained with seen classes)")
    evaluate.set_defaults(run=_evaluate)

    pretrain = commands.add_parser("pretrain", help="train the LiDAR student from a teacher (CLIP2Scene)")
    pretrain.add_argument("--data", action="append", required=True, help=f"repeatable; {sources_help}")
    pretrain.add_argument("--out", required=True, help="folder for checkpoints, log.csv and losses.png")
    pretrain.add_argument("--resume", nargs="?", const="last", help="continue from a checkpoint (default: OUT's last)")
    pretrain.add_argument("--epochs", type=int)
    pretrain.add_argument("--batch-size", type=int, dest="batch_size")
    pretrain.add_argument("--lr", type=float)
    pretrain.add_argument("--sweeps", type=int, help="sweeps per sample, the keyframe included")
    seen_options(pretrain, "train these classes from the source's ground truth and the others from the "
                           "teacher (MCFA's seen/unseen setting; sets train.seen_classes)")
    common(pretrain)
    pretrain.set_defaults(run=_pretrain)

    tune = commands.add_parser("finetune", help="fine-tune a pretrained student on a fraction of labelled scans")
    tune.add_argument("--checkpoint", required=True)
    tune.add_argument("--data", required=True, help="labelled training source")
    tune.add_argument("--labels-fraction", type=float, dest="labels_fraction", help="e.g. 0.01: every 100th scan")
    tune.add_argument("--epochs", type=int, dest="finetune_epochs")
    tune.add_argument("--val", help="labelled source to evaluate on afterwards")
    tune.add_argument("--out", required=True)
    common(tune)
    tune.set_defaults(run=_finetune)

    replay = commands.add_parser("replay", help="play a bag through the live node's pipeline: mIoU and latency")
    replay.add_argument("bag", help="rosbag2 recording (a bag directory or a folder of parts)")
    replay.add_argument("--mode", choices=["teacher", "student", "fusion"])
    replay.add_argument("--checkpoint", help="a pretrained student (.pt)")
    replay.add_argument("--realtime", action="store_true", help="at the recorded rate (default: as fast as possible)")
    replay.add_argument("--out-bag", dest="out_bag", help="new bag for the labelled clouds (/segmentation/points)")
    replay.add_argument("--slop-ms", dest="slop_ms", type=float, default=50.0)
    replay.add_argument("--out", help="folder for replay.json")
    common(replay)
    replay.set_defaults(run=_replay)

    calibration = commands.add_parser("calibration", help="write a source's sensor extrinsics as a calibration "
                                                          "file for the live nodes")
    calibration.add_argument("source", help=sources_help)
    calibration.add_argument("--out", required=True, help="calibration YAML to write")
    calibration.add_argument("--frame", type=int, default=0, help="which frame's calibration (default 0)")
    calibration.add_argument("--ego-frame", default="base_link", dest="ego_frame")
    calibration.set_defaults(run=_calibration)

    reindex = commands.add_parser("reindex", help="make a recording readable after its recorder was killed",
                                  description="Rebuild each unfinished part (no metadata.yaml, or an mcap file that "
                                              "was never closed) from its complete records.")
    reindex.add_argument("bag", help="a recording's folder of parts, or one bag directory")
    reindex.set_defaults(run=_reindex)

    for command in commands.choices.values():  # -v also after the command (SUPPRESS keeps a -v given before it)
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="log more, and show the traceback of an error")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        if hasattr(args, "threads"):
            from .threads import apply_threads

            print(f"clip2scene {args.command}: {apply_threads(args.threads)[1]}", file=sys.stderr)
        return args.run(args)
    except KeyboardInterrupt:
        if args.verbose:
            raise
        print(f"clip2scene {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        message = user_message(error)
        if message is None or args.verbose:
            raise
        print(f"clip2scene {args.command}: error: {message}", file=sys.stderr)
        return 2


_OS_HINTS = {errno.EACCES: "choose a path you may read or write", errno.EPERM: "choose a path you may read or write",
             errno.EROFS: "choose a folder on a writable disk", errno.ENOSPC: "free disk space or choose another disk",
             errno.EISDIR: "give a file, not a folder", errno.ENOTDIR: "a part of the path is a file, not a folder",
             errno.EEXIST: "choose a new path", errno.ENOENT: "check the path"}


def user_message(error: BaseException) -> str | None:
    """The message for a condition the user caused, or None for a bug (which keeps its traceback)."""
    from .messages import MessageError
    from .tf_tree import TransformError

    if isinstance(error, (UserError, MessageError, TransformError)):
        return str(error)
    if isinstance(error, OSError) and error.errno is None and error.filename is None and str(error):
        return str(error)  # raised with a message of ours (e.g. "... exists already; choose a new ...")
    if isinstance(error, OSError) and error.filename is not None:
        hint = _OS_HINTS.get(error.errno, "check the path and the disk")
        return f"{error.filename}: {describe_os_error(error)}; {hint}"
    return None


if __name__ == "__main__":
    sys.exit(main())
