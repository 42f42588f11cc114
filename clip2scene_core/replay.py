"""`clip2scene replay`: play a recording through the live node's pipeline, evaluate, time every stage.

Messages go in log-time order through the same LivePipeline the segmentation node runs (its
synchroniser, decoding, calibration from /tf_static, Segmenter), as fast as possible or at the
recorded rate. Against the cloud's label field when present: per-class IoU and mIoU. Optionally the
labelled clouds go into a new bag.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import messages as conv
from .data.rosbag2 import (POINTCLOUD2, TYPESTORE, BagSource, BagWriter, camera_namespace, cloud_message,
                           pixel_image_topics)
from .live import LivePipeline, LiveResult
from .metrics import Evaluation
from .segmenter import Segmenter
from .vocabulary import IGNORE

OUTPUT_TOPIC = "/segmentation/points"
UNLABELLED = 65535


@dataclass
class ReplayReport:
    frames: int
    evaluation: Evaluation | None
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    skipped_clouds: int = 0
    errors: list[str] = field(default_factory=list)

    def percentiles(self) -> dict[str, dict[str, float]]:
        return {stage: {f"p{q}": float(np.percentile(values, q)) for q in (50, 95, 99)}
                for stage, values in self.latencies_ms.items() if values}

    def table(self) -> str:
        lines = [f"frames segmented: {self.frames} (skipped malformed clouds: {self.skipped_clouds})", "",
                 f"{'stage':<14} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9}"]
        for stage, values in self.percentiles().items():
            lines.append(f"{stage:<14} {values['p50']:>9.1f} {values['p95']:>9.1f} {values['p99']:>9.1f}")
        if self.evaluation is not None:
            lines += ["", self.evaluation.table()]
        return "\n".join(lines)


def replay(path: str | Path, segmenter: Segmenter, realtime: bool = False, out_bag: str | Path | None = None,
           slop_ms: float = 50.0, lidar: str | None = None, cameras: list[str] | None = None,
           label_field: str = "label", label_images: str = "labels", progress: bool = True) -> ReplayReport:
    """Replay the recording at path through segmenter (see the module docstring); label_images: the label-image
    topic beside each camera_info (a labels:NAME teacher's NAME); `<namespace>/instances` goes in as well."""
    source = BagSource(str(path), lidar=lidar, cameras=cameras, label_field=label_field, label_images=label_images,
                       slop_ms=slop_ms)
    names = {topic: source.camera_names[topic] for topic in source.usable_cameras}
    info_topics = {f"{camera_namespace(t).rstrip('/')}/camera_info": name for t, name in names.items()}
    pixel_topics = {pixel_topic: (name, kind) for t, name in names.items()
                    for kind, pixel_topic in pixel_image_topics(t, source.label_images).items()}
    pipeline = LivePipeline(segmenter, list(names.values()), source.tree, slop_ms, timeout_ms=None,
                            label_field=label_field, rectified=[n for t, n in names.items() if conv.is_rectified(t)])
    vocabulary = segmenter.vocabulary
    # teacher mode: also the neighbour-filled row (replay.json "filled_all_points"), the fair all-points baseline
    evaluation = (Evaluation.empty(vocabulary.names, fill=segmenter.mode == "teacher") if vocabulary.covers_ids
                  else None)
    report = ReplayReport(0, None)
    writer = BagWriter(out_bag) if out_bag else None
    wanted = {source.lidar_topic, *names, *info_topics, *pixel_topics}
    started_wall, first_log = time.monotonic(), None
    bar = tqdm(total=len(source), desc="replay", unit="frame", disable=not progress)

    def consume(results: list[LiveResult]) -> None:
        for result in results:
            report.frames += 1
            bar.update(1)
            for stage, value in result.timings_ms.items():
                report.latencies_ms.setdefault(stage, []).append(value)
            frame, segmentation = result.frame, result.segmentation
            if evaluation is not None and frame.labels is not None:
                evaluation.update(segmentation.labels, vocabulary.raw_to_class(frame.labels), segmentation.seen,
                                  frame.points)
            if writer is not None:
                _write_labelled(writer, frame, segmentation)

    try:
        for reader in source._open():
            connections = [c for c in reader.connections if c.topic in wanted]
            for connection, log_time, raw in reader.messages(connections=connections):
                if realtime:
                    first_log = log_time if first_log is None else first_log
                    delay = (log_time - first_log) * 1e-9 - (time.monotonic() - started_wall)
                    if delay > 0:
                        time.sleep(delay)  # paced to the recording's own clock
                now = time.time_ns() if realtime else log_time
                msg = TYPESTORE.deserialize_cdr(raw, connection.msgtype)
                topic = connection.topic
                if topic == source.lidar_topic:
                    consume(pipeline.add_cloud(msg, now))
                elif topic in names:
                    consume(pipeline.add_image(names[topic], msg, now))
                elif topic in info_topics:
                    pipeline.add_camera_info(info_topics[topic], msg)
                elif topic in pixel_topics:
                    name, kind = pixel_topics[topic]
                    consume(pipeline.add_label_image(name, msg, now, kind))
        consume(pipeline.flush(time.time_ns() if realtime else 0))
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    report.evaluation = evaluation
    report.skipped_clouds = pipeline.stats.skipped_clouds
    report.errors = list(pipeline.stats.errors)
    return report


def _write_labelled(writer: BagWriter, frame, segmentation) -> None:
    labels = np.where(segmentation.labels == IGNORE, UNLABELLED, segmentation.labels).astype(np.uint16)
    intensity = {"intensity": frame.fields["intensity"]} if "intensity" in frame.fields else {}
    layout = conv.encode_cloud(frame.points, intensity, extra={"label": labels, "score": segmentation.scores})
    writer.write_message(OUTPUT_TOPIC, POINTCLOUD2, frame.stamp_ns, cloud_message(layout, frame.stamp_ns,
                                                                                  frame.frame_id))
