"""`clip2scene_segmenter`: live open-vocabulary segmentation of a LiDAR topic (and cameras).

ROS I/O only: messages go into clip2scene_core.live.LivePipeline (the core's synchroniser and
Segmenter), results come back out as messages. Outputs, relative to the node's namespace:
  segmentation/points    PointCloud2: the input's finite points with every field they had (ring, time, ...),
                         then label (uint16, 65535 = unlabelled), score, and
                         query_similarity (float32 cosine, NaN: no feature) while the query parameter is set
  segmentation/colored   PointCloud2: x, y, z, rgb (RViz colours of the vocabulary)
  segmentation/info      clip2scene_ros/SegmentationInfo: classes, colours, counts, mode, model, stage timings,
                         latencies (from stamp, from arrival), dropped and stale sweep counts
  segmentation/overlay   sensor_msgs/Image: one camera with the labelled points drawn (publish_overlay)
  segmentation/objects, segmentation/label_info, segmentation/objects/markers, segmentation/query: the objects
                         of the thing classes and a text query's matches (see object_outputs)
  /diagnostics           diagnostic_msgs/DiagnosticArray: WARN/ERROR over budget or when inputs stop
Nothing is decoded or segmented while no output has a subscriber. Decoding and inference run in a worker
thread on the newest released sweep (older ones are dropped and counted), so subscriptions, timers and
parameter services answer while a sweep is segmented; SIGINT/SIGTERM end the node within about a second
whatever the worker is computing.
"""

from __future__ import annotations

import gc
import os
import re
import sys
import time

import numpy as np
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import ColorRGBA

from clip2scene_core import messages as conv
from clip2scene_core.calibration import load_calibration
from clip2scene_core.config import load_config
from clip2scene_core.data.rosbag2 import camera_name, camera_namespace, pixel_image_topics
from clip2scene_core.geometry import project
from clip2scene_core.live import LivePipeline, LiveResult
from clip2scene_core.render import draw_points, palette_colors
from clip2scene_core.segmenter import MODES, Segmenter, resolve_device
from clip2scene_core.threads import apply_threads
from clip2scene_core.teacher import label_images_name
from clip2scene_core.tf_tree import TransformTree, add_tf_message
from clip2scene_core.vocabulary import IGNORE, Vocabulary, VocabularyError, load_vocabulary

from . import conversions, object_outputs
from .msg import SegmentationInfo
from .debug_outputs import DebugOutputs
from .params import INPUT_DURABILITY, TF_QOS, TF_STATIC_QOS, Param, check_value, declare_all, qos_profile
from .runner import run
from .worker import LatestWorker

UNLABELLED = 65535


def vocabulary_from(file_or_name: str, names: list[str], prompts: list[str]) -> Vocabulary:
    """The vocabulary a user set: class_names (with prompts "a|b" per class) if given, else the file."""
    if not names:
        return load_vocabulary(file_or_name)
    if prompts and len(prompts) != len(names):
        raise VocabularyError(f"class_prompts has {len(prompts)} entries for {len(names)} class_names; give one "
                              f"'prompt|prompt' string per class or none")
    classes = []
    for index, name in enumerate(names):
        entry = {"name": name}
        if prompts and prompts[index].strip():
            entry["prompts"] = [p.strip() for p in prompts[index].split("|") if p.strip()]
        classes.append(entry)
    return Vocabulary.from_dict({"name": "parameters", "classes": classes}, "node parameters class_names")


PARAMETERS = [
    Param("mode", "student", f"segmentation mode: {', '.join(MODES)}", read_only=True),
    Param("checkpoint", "", "student checkpoint (.pt), needed by student and fusion modes", read_only=True),
    Param("config_file", "", "clip2scene YAML config (CLIP model and weights, teacher options)", read_only=True),
    Param("vocabulary", "nuscenes", "vocabulary YAML or shipped name; may change at run time"),
    Param("class_names", [], "class names overriding the vocabulary file (run time)"),
    Param("class_prompts", [], "per class 'prompt|prompt' for class_names (run time)"),
    Param("teacher", "maskclip", "teacher of teacher/fusion modes: maskclip, labels[:NAME], cliplike, noisy:RATE",
          read_only=True),
    Param("device", "auto", "auto, cuda or cpu", read_only=True),
    Param("threads", 0, "CPU threads for torch; 0: the cores free (usable cores less the 1-minute load average, at "
          "least 1)", 0, 1024, read_only=True),
    Param("lidar_topic", "/lidar/points", "PointCloud2 input", read_only=True),
    Param("camera_topics", [], "Image or CompressedImage topics (.../compressed), camera_info beside each",
          read_only=True),
    Param("calibration_file", "", "static transforms LiDAR/cameras (see config/calibration_example.yaml)",
          read_only=True),
    Param("sync_slop_ms", 50.0, "largest camera-LiDAR stamp difference that pairs", 0.0, 1000.0, read_only=True),
    Param("sync_timeout_ms", 100.0, "process a sweep this long after it arrived with the cameras that came; 0 "
          "waits for every camera", 0.0, 5000.0, read_only=True),
    Param("camera_offsets_ms", [], "per camera (same order), added to its stamps before pairing", read_only=True,
          item_type=float),
    Param("qos_reliability", "best_effort", "input QoS: best_effort (sensor data) or reliable", read_only=True),
    INPUT_DURABILITY,
    Param("qos_depth", 5, "input queue depth", 1, 100, read_only=True),
    Param("publish_colored", True, "publish segmentation/colored for RViz (run time)"),
    Param("publish_overlay", False, "publish segmentation/overlay, a camera image (run time)"),
    Param("overlay_camera", "", "camera drawn on the overlay, default the first (run time)"),
    Param("processing_budget_ms", 100.0, "diagnostics WARN above it, ERROR above twice it (run time)", 1.0, 10000.0),
    Param("input_timeout_s", 1.0, "diagnostics ERROR when no cloud arrives this long, WARN when a camera sends no "
          "image this long (run time)", 0.1, 60.0),
    Param("max_age_ms", 0.0, "a released sweep whose header stamp is older than this (node clock) when the worker "
          "takes it is dropped and counted as stale_clouds; 0: off (run time)", 0.0, 600000.0),
    Param("publish_debug", False, "publish each stage time on ~/debug/processing_time_ms/<stage> and the "
          "stamp-to-publish latency on ~/debug/pipeline_latency_ms, std_msgs/Float64 (run time)"),
    Param("tf_tolerance_ms", 0.0, "how far past the newest /tf sample (or before the oldest) an image or sweep "
          "stamp may still use it; beyond, that camera is left out with an error naming frames and times",
          0.0, 1000.0, read_only=True),
    Param("label_field", "label", "ground-truth label field of the input cloud, if any", read_only=True),
    *object_outputs.PARAMETERS,
]


class SegmentationMixin:
    """The segmenter's work, shared by SegmentNode and the lifecycle SegmentLifecycleNode (both rclpy Nodes):
    _configure loads the model and creates the outputs, _start_inputs/_stop_inputs subscribe and unsubscribe
    the sensors, _release frees everything _configure made."""

    abandoned = False  # set when shutdown left the worker computing: main() then exits without waiting
    worker: LatestWorker | None = None
    publishing = False  # outputs are published while the inputs run (a sweep in flight when they stop is not)

    def _configure(self, v) -> None:
        """Model, vocabulary, synchroniser, worker and outputs from the parameter values v (declare_all)."""
        self.mode, self.vocabulary_file = v.mode, v.vocabulary
        self.class_names, self.class_prompts = v.class_names, v.class_prompts
        self.publish_colored, self.publish_overlay, self.overlay_camera = v.publish_colored, v.publish_overlay, \
            v.overlay_camera
        self.budget_ms, self.input_timeout_s = v.processing_budget_ms, v.input_timeout_s
        self.max_age_ms, self.stale = v.max_age_ms, 0
        checkpoint, config_file, teacher_name = v.checkpoint, v.config_file, v.teacher
        camera_topics, offsets = v.camera_topics, v.camera_offsets_ms
        self._base_publishers = set(self.publishers)  # the node's own (lifecycle events): _release keeps them

        config = load_config(config_file or None)
        self.device = resolve_device(v.device)
        self.get_logger().info(apply_threads(v.threads)[1])
        self.vocabulary = vocabulary_from(self.vocabulary_file, self.class_names, self.class_prompts)
        student = teacher = None
        if self.mode not in MODES:
            raise ValueError(f"parameter mode: {self.mode!r} is not one of {MODES}")
        if self.mode in ("student", "fusion"):
            from clip2scene_core.student.checkpoint import load_student
            if not checkpoint:
                raise ValueError(f"parameter checkpoint is empty, but mode {self.mode} needs a student checkpoint")
            student, payload = load_student(checkpoint, self.device, self.vocabulary)
            self.model_id = f"{checkpoint} ({payload.get('text_encoder', '')})"
        if self.mode in ("teacher", "fusion"):
            from clip2scene_core.teacher import build_teacher
            # strict=False: live, a label image may miss a sweep; its camera then just adds no labels.
            teacher = build_teacher(teacher_name, self.vocabulary, config.clip, config.teacher.text_encoder,
                                    self.device, config.teacher.seed, config.teacher.text_cache_dir, strict=False)
            if self.mode == "teacher":
                self.model_id = teacher.identity
        self.segmenter = Segmenter(self.vocabulary, self.mode, teacher=teacher, student=student)
        self.segmenter.set_query(v.query)
        # The label-image teachers read a 2D segmenter's class-id images beside each camera (and the cliplike
        # proxy the synthetic world's surface ids at <namespace>/instances too).
        self.label_images = label_images_name(teacher_name) if teacher is not None and teacher.name in (
            "labels", "noisy", "cliplike") else None

        calibration = load_calibration(v.calibration_file)[0] if v.calibration_file else None
        self.tf = self._tf_tree(v.tf_tolerance_ms) if camera_topics else None
        if camera_topics and calibration is None and self.tf is None:
            self.get_logger().warning("camera_topics given without calibration_file (and without tf2_msgs for "
                                      "/tf_static): cameras cannot be placed and are ignored")
        self.cameras = {topic: camera_name(topic) for topic in camera_topics}
        if offsets and len(offsets) != len(camera_topics):
            raise ValueError(f"parameter camera_offsets_ms has {len(offsets)} values for {len(camera_topics)} cameras")
        offsets_by_camera = dict(zip(self.cameras.values(), offsets))
        self.pipeline = LivePipeline(self.segmenter, list(self.cameras.values()), calibration, v.sync_slop_ms,
                                     offsets_by_camera, v.sync_timeout_ms if v.sync_timeout_ms > 0 else None,
                                     v.label_field, defer=True,
                                     rectified=[n for t, n in self.cameras.items() if conv.is_rectified(t)],
                                     tf=self.tf)
        self.next_vocabulary: Vocabulary | None = None  # validated by on_parameters, applied by the worker
        self.next_query: str | None = None  # the same: its text embedding is computed on the worker thread

        out = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self.points_pub = self.create_publisher(PointCloud2, "segmentation/points", out)
        self.colored_pub = self.create_publisher(PointCloud2, "segmentation/colored", out)
        self.info_pub = self.create_publisher(SegmentationInfo, "segmentation/info", out)
        self.overlay_pub = self.create_publisher(Image, "segmentation/overlay", out)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.objects_out = object_outputs.ObjectOutputs(self, v)
        self.debug_out = DebugOutputs(self, v.publish_debug)
        self.objects_out.check(self.vocabulary)  # thing_classes must name classes of the vocabulary
        self.objects_out.publish_label_info(self.vocabulary, conversions.header(self._now(), ""))
        self.worker = LatestWorker(self._segment, "clip2scene segmentation")
        self.last_latency_ms = self.last_arrival_latency_ms = 0.0
        self.warned: dict[str, float] = {}
        self.get_logger().info(f"{self.mode} mode on {v.lidar_topic} with {len(self.cameras)} cameras, vocabulary "
                               f"{self.vocabulary.name} ({len(self.vocabulary)} classes)")

    def _start_inputs(self, v) -> None:
        """Subscribe the LiDAR, cameras (and their camera_info, label and instance images) and TF; start the
        timers."""
        qos = qos_profile(v, "qos_", v.qos_depth)
        inputs = [self.create_subscription(PointCloud2, v.lidar_topic, self.on_cloud, qos)]
        for topic, name in self.cameras.items():
            kind = CompressedImage if topic.rstrip("/").endswith("/compressed") else Image
            inputs.append(self.create_subscription(kind, topic, lambda msg, n=name: self.on_image(n, msg), qos))
            namespace = camera_namespace(topic).rstrip("/")
            inputs.append(self.create_subscription(CameraInfo, f"{namespace}/camera_info",
                                                   lambda msg, n=name: self.pipeline.add_camera_info(n, msg), qos))
            if self.label_images:
                for kind, pixel_topic in pixel_image_topics(topic, self.label_images).items():
                    inputs.append(self.create_subscription(
                        Image, pixel_topic, lambda msg, n=name, k=kind: self.on_label_image(n, msg, k), qos))
        if self.tf is not None:
            inputs += self._subscribe_tf(self.tf)
        self.inputs = inputs
        self.input_timers = [self.create_timer(0.01, self.on_poll), self.create_timer(1.0, self.publish_diagnostics)]
        self.last_cloud = time.monotonic()
        self.last_image = {name: self.last_cloud for name in self.cameras.values()}
        self.publishing = True

    def _stop_inputs(self) -> None:
        """Unsubscribe every input and stop the timers; a sweep being segmented now is not published."""
        self.publishing = False
        for subscription in getattr(self, "inputs", ()):
            self.destroy_subscription(subscription)
        for timer in getattr(self, "input_timers", ()):
            self.destroy_timer(timer)
        self.inputs, self.input_timers = [], []

    def _release(self) -> None:
        """Stop the worker, destroy the outputs and drop the model (and what CUDA cached for it)."""
        self.close()
        self.worker = None
        base = getattr(self, "_base_publishers", set(self.publishers))
        for publisher in [p for p in self.publishers if p not in base]:
            self.destroy_publisher(publisher)
        self.segmenter = self.pipeline = self.tf = None
        gc.collect()
        if getattr(self, "device", None) is not None and self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- inputs -----------------------------------------------------------------------------------

    def _now(self) -> int:
        return self.get_clock().now().nanoseconds

    def _wanted(self) -> bool:
        return any(pub.get_subscription_count() for pub in (self.points_pub, self.colored_pub, self.info_pub,
                                                            self.overlay_pub)) or self.objects_out.wanted() \
            or self.debug_out.wanted()

    def on_cloud(self, msg: PointCloud2) -> None:
        self.last_cloud = time.monotonic()
        if not self._wanted():
            return
        self._submit(self.pipeline.add_cloud(msg, self._now()))

    def on_image(self, name: str, msg) -> None:
        self.last_image[name] = time.monotonic()
        if self._wanted():
            self._submit(self.pipeline.add_image(name, msg, self._now()))

    def on_label_image(self, name: str, msg: Image, kind: str = "label_image") -> None:
        if self._wanted():
            self._submit(self.pipeline.add_label_image(name, msg, self._now(), kind))

    def on_poll(self) -> None:
        self._submit(self.pipeline.poll(self._now()))
        while self.pipeline.stats.errors:
            self._warn(self.pipeline.stats.errors.popleft())
        while self.pipeline.stats.notices:
            self.get_logger().info(self.pipeline.stats.notices.popleft())

    def _tf_tree(self, tolerance_ms: float) -> TransformTree | None:
        """A 10 s buffer for the vehicle's /tf_static (mounts, from its URDF) and /tf (odom -> base_link);
        None where tf2_msgs is missing (the calibration file alone is used)."""
        try:
            import tf2_msgs.msg  # noqa: F401
        except ImportError:
            self.get_logger().info("tf2_msgs is not installed: extrinsics from calibration_file only, no ego motion")
            return None
        return TransformTree(tolerance_ns=int(tolerance_ms * 1e6), buffer_ns=10_000_000_000)

    def _subscribe_tf(self, tree: TransformTree) -> list:
        """/tf and /tf_static into tree, subscribed as tf2's listeners subscribe."""
        from tf2_msgs.msg import TFMessage

        def add(msg, static: bool) -> None:
            try:
                add_tf_message(tree, msg, static)
            except ValueError as error:  # a NaN transform or quaternion
                self._warn(f"{'/tf_static' if static else '/tf'}: {error}; transform ignored")
        return [self.create_subscription(TFMessage, "/tf", lambda msg: add(msg, False), TF_QOS),
                self.create_subscription(TFMessage, "/tf_static", lambda msg: add(msg, True), TF_STATIC_QOS)]

    def _submit(self, released: list) -> None:
        """Hand released sweeps to the worker: only the newest of them waits there (the rest are dropped)."""
        for job in released:
            self.worker.submit(job)

    def _segment(self, job) -> None:
        """Worker thread: one released sweep decoded, segmented and published."""
        if self.next_vocabulary is not None:
            vocabulary, self.next_vocabulary = self.next_vocabulary, None
            self.segmenter.set_vocabulary(vocabulary)  # recomputes the text embeddings
            self.vocabulary = vocabulary
            self.objects_out.publish_label_info(vocabulary, conversions.header(self._now(), ""))
            self.get_logger().info(f"vocabulary now {vocabulary.name}: {', '.join(vocabulary.names)}")
        if self.next_query is not None:
            query, self.next_query = self.next_query, None
            self.segmenter.set_query(query)
            self.get_logger().info(f"query now {query!r}")
        group, released_ns = job
        age_ms = (self._now() - group.stamp_ns) * 1e-6
        if self.max_age_ms > 0 and age_ms > self.max_age_ms:
            self.stale += 1
            self._warn(f"sweep at t={group.stamp_ns * 1e-9:.3f} s is {age_ms:.0f} ms old (max_age_ms "
                       f"{self.max_age_ms:.0f}); dropped as stale")
            return
        result = self.pipeline.process(group, released_ns)
        if result is not None and self.publishing and not self.worker.stopping:
            self._publish(result)

    def _warn(self, text: str) -> None:
        # Throttled per kind of problem: the text with its numbers (stamps, sizes) taken out, so a bad stream
        # logs each of its problems once every 5 s, not once a message.
        kind = re.sub(r"[0-9.]+", "#", text)[:100]
        now = time.monotonic()
        if now - self.warned.get(kind, -1e9) > 5.0:
            self.warned[kind] = now
            self.get_logger().warning(text)

    def on_parameters(self, parameters) -> SetParametersResult:
        """Every value checked before any is applied: a refused set (atomic or not) changes nothing."""
        declared = {param.name: param for param in PARAMETERS}
        try:
            updates = {p.name: check_value(declared[p.name], p.value) for p in parameters if p.name in declared}
            vocabulary = None
            if {"vocabulary", "class_names", "class_prompts"} & set(updates):
                file = updates.get("vocabulary", self.vocabulary_file)
                if "vocabulary" in updates:  # a FIFO or folder is refused without being opened
                    load_vocabulary(file)  # a bad file is refused even while class_names override it
                vocabulary = vocabulary_from(file, updates.get("class_names", self.class_names),
                                             updates.get("class_prompts", self.class_prompts))
                self.objects_out.check(vocabulary)  # thing_classes must still name classes
        except (VocabularyError, ValueError, OSError) as error:
            self._warn(f"parameter change refused: {error}")
            return SetParametersResult(successful=False, reason=str(error))
        simple = {"publish_colored": "publish_colored", "publish_overlay": "publish_overlay",
                  "overlay_camera": "overlay_camera", "processing_budget_ms": "budget_ms",
                  "input_timeout_s": "input_timeout_s", "max_age_ms": "max_age_ms", "vocabulary": "vocabulary_file",
                  "class_names": "class_names", "class_prompts": "class_prompts"}
        refused = self.objects_out.update(updates, vocabulary or self.vocabulary)
        if refused:
            return SetParametersResult(successful=False, reason=refused)
        for name in set(updates) & set(simple):
            setattr(self, simple[name], updates[name])
        if "publish_debug" in updates:
            self.debug_out.enable(updates["publish_debug"])
        if "query" in updates:
            self.next_query = updates["query"]  # the worker switches before its next sweep
        if vocabulary is not None:
            self.next_vocabulary = vocabulary  # the worker switches before its next sweep
        return SetParametersResult(successful=True)

    def close(self) -> None:
        """Stop the worker; one still inside a long inference is abandoned (see main)."""
        if self.worker is not None and not self.worker.stop(timeout_s=1.0):
            SegmentationMixin.abandoned = True
            self.get_logger().warning("shutting down while a sweep is still being segmented; it is abandoned")

    # -- outputs ----------------------------------------------------------------------------------

    def _publish(self, result: LiveResult) -> None:
        started = time.perf_counter()
        frame, segmentation = result.frame, result.segmentation
        header = conversions.header(frame.stamp_ns, frame.frame_id)
        labels = np.where(segmentation.labels == IGNORE, UNLABELLED, segmentation.labels).astype(np.uint16)
        extra = {"label": labels, "score": segmentation.scores.astype(np.float32)}
        if segmentation.similarity is not None:
            extra["query_similarity"] = segmentation.similarity
        if self.points_pub.get_subscription_count():  # the input's fields (ring, time, ...) with the labels
            layout = conv.encode_beside_input(conv.input_records(result.cloud_msg), extra)
            self.points_pub.publish(conversions.cloud_msg(layout, header))
        palette = {**self.vocabulary.palette, IGNORE: (0, 0, 0)}
        colors = palette_colors(segmentation.labels, palette)
        if self.publish_colored and self.colored_pub.get_subscription_count():
            packed = (colors[:, 0].astype(np.uint32) << 16) | (colors[:, 1].astype(np.uint32) << 8) | colors[:, 2]
            self.colored_pub.publish(conversions.cloud_msg(
                conv.encode_cloud(frame.points, extra={"rgb": packed.view(np.float32)}), header))
        if self.publish_overlay and frame.cameras and self.overlay_pub.get_subscription_count():
            camera = next((c for c in frame.cameras if c.name == self.overlay_camera), frame.cameras[0])
            projection = project(frame.points, camera)
            image = draw_points(camera.image, projection.uv[projection.valid], colors[projection.valid])
            self.overlay_pub.publish(conversions.image_msg(image, conversions.header(camera.stamp_ns,
                                                                                     camera.frame_id)))
        timings = dict(result.timings_ms)
        timings["encode"] = (time.perf_counter() - started) * 1e3
        timings.update(self.objects_out.publish(header, frame.points, segmentation, self.vocabulary))
        now = self._now()
        total = (now - frame.stamp_ns) * 1e-6  # from the sweep's header stamp to publishing
        self.last_latency_ms, self.last_arrival_latency_ms = total, (now - result.arrival_ns) * 1e-6
        self.info_pub.publish(self._info(header, segmentation, timings, total))
        self.debug_out.publish(timings, total)

    def _info(self, header, segmentation, timings: dict, total_ms: float) -> SegmentationInfo:
        counts = segmentation.counts(len(self.vocabulary))
        return SegmentationInfo(
            header=header, vocabulary=self.vocabulary.name, class_names=self.vocabulary.names,
            class_colors=[ColorRGBA(r=c[0] / 255, g=c[1] / 255, b=c[2] / 255, a=1.0) for c in
                          self.vocabulary.colors.tolist()],
            class_point_counts=[int(c) for c in counts], num_points=len(segmentation.labels),
            num_unlabelled=int((segmentation.labels == IGNORE).sum()), mode=self.mode, model=self.model_id,
            stage_names=list(timings), stage_latencies_ms=[float(v) for v in timings.values()],
            total_latency_ms=float(total_ms), arrival_latency_ms=float(self.last_arrival_latency_ms),
            dropped_clouds=self.worker.dropped, stale_clouds=self.stale)

    def publish_diagnostics(self) -> None:
        stats = self.pipeline.stats
        now = time.monotonic()
        silent = now - self.last_cloud
        problems = []  # (level, what): the status takes the worst level and names every problem
        if silent > self.input_timeout_s:
            problems.append((DiagnosticStatus.ERROR, f"no cloud for {silent:.1f} s"))
        elif self.last_arrival_latency_ms > 2 * self.budget_ms:
            problems.append((DiagnosticStatus.ERROR, f"latency {self.last_arrival_latency_ms:.0f} ms > 2 x budget"))
        elif self.last_arrival_latency_ms > self.budget_ms:
            problems.append((DiagnosticStatus.WARN, f"latency {self.last_arrival_latency_ms:.0f} ms > budget"))
        for name, last in self.last_image.items():
            if now - last > self.input_timeout_s:
                problems.append((DiagnosticStatus.WARN, f"no image from {name} for {now - last:.1f} s"))
        level = max((p[0] for p in problems), default=DiagnosticStatus.OK)
        message = "; ".join(p[1] for p in problems) or "ok"
        busy = self.worker.busy_since
        values = {"mode": self.mode, "latency_ms": f"{self.last_latency_ms:.1f}",
                  "arrival_latency_ms": f"{self.last_arrival_latency_ms:.1f}", "budget_ms": f"{self.budget_ms:.1f}",
                  "clouds": stats.clouds, "processed": stats.processed, "skipped_clouds": stats.skipped_clouds,
                  "skipped_images": stats.skipped_images, "rejected_camera_infos": stats.rejected_infos,
                  "dropped_clouds": self.worker.dropped, "stale_clouds": self.stale, "failed_clouds": stats.failed,
                  "segmenting_for_s": f"{0.0 if busy is None else now - busy:.2f}",
                  "seconds_since_cloud": f"{silent:.2f}", "objects_ms": f"{self.objects_out.last_ms:.1f}"}
        status = DiagnosticStatus(level=level, name="clip2scene_segmenter: processing", message=message,
                                  hardware_id=self.get_fully_qualified_name(),
                                  values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
        self.diagnostics_pub.publish(DiagnosticArray(header=conversions.header(self._now(), ""), status=[status]))


class SegmentNode(SegmentationMixin, Node):
    """The segmenter as a plain node: configured and running from construction."""

    def __init__(self):
        super().__init__("clip2scene_segmenter")
        v = declare_all(self, PARAMETERS)
        self._configure(v)
        self.add_on_set_parameters_callback(self.on_parameters)
        self._start_inputs(v)


def main(args=None, node_class=SegmentNode) -> None:
    code = run(node_class, args)
    if SegmentationMixin.abandoned:
        # The worker is inside an inference that may take many seconds more: end without waiting for it
        # (and without interpreter teardown racing the thread). Everything published is already sent.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
