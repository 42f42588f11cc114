"""Pretraining the student from a teacher (CLIP2Scene): read top to bottom.

Every scan becomes a Sample (samples.py: sweeps aggregated with ego poses, paired with the teacher's
pixels in the keyframe's cameras, optionally with consolidated labels, the loss points chosen, augmented);
the student runs on its sweeps and the losses are
    semantic consistency (Eq. 1) + lambda * spatial-temporal consistency (Eq. 2-4)
    [+ feature distillation (OpenScene; MCFA's local position alignment)] [+ MCFA's global semantic alignment],
with pseudo labels taken from a mean teacher (an EMA of the student) where it is confident, once
self-training starts. A checkpoint per epoch, with BatchNorm statistics recomputed for the weights
it holds; seeded so that a resumed run ends exactly where an unbroken one does; several processes
through torch.distributed (torchrun).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from .consolidation import LabelMap, drive_of
from .data import FrameSource, SourceError
from .errors import UsageError
from .geometry import transform_points
from .samples import Pairing, PairingCache, Sample, pair_frame, prepare_sample, seeded_rng
from .self_training import MeanTeacher, confident
from .student.checkpoint import CheckpointError, load_weights, read_checkpoint, save_checkpoint
from .student.head import HeadFeatures
from .student.losses import SEMANTIC_LOSSES, check_finite, feature_distillation, global_alignment, spatial_temporal
from .student.network import Student, StudentConfig, VoxelBatch, make_batch, recalibrate_batchnorm
from .teacher import Teacher
from .vocabulary import IGNORE, class_mask

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Pretraining options (the paper's values in comments; see the README for why ours differ).

    batch_size: scans per optimiser step over all processes (must divide by the number of processes).
    sweeps: sweeps per sample, the keyframe included (paper 3; 1 = no temporal aggregation).
    semantic_loss: "infonce" (paper Eq. 1), "cross_entropy" (what the released code trains with) or
        "symmetric" (their mean: both directions, as CLIP trains).
    tau: temperature of the semantic loss. Features are unit vectors (normalize), so a logit is at most
        1 / tau: CLIP's 0.07 lets a softmax become confident; the paper's 0.5 is for raw dot products
        (normalize: false), and on unit vectors caps every logit at 2.
    max_paired: loss points per sweep and kind (paired, consolidated, self-training candidates); 0: all.
    st_grid_m: edge of the regular grid grouping points for the spatial-temporal loss (>= the voxel).
    occlusion_tolerance: an older sweep's point is unpaired when a keyframe point nearer by this fraction
        of its depth covers its pixel (None: no test).
    distill_weight: weight of the feature distillation 1 - cos(point, pixel feature) (0: off); this is MCFA's
        local position alignment.
    global_weight: weight of MCFA's global semantic alignment (0: off): per camera, the pooled features of the
        points it sees against the teacher's image embedding of the view, a contrast over the batch's cameras at
        temperature global_tau; cameras seeing fewer than global_min_points loss points take no part.
    seen_classes: vocabulary names trained from ground truth (MCFA's seen/unseen setting; () = none, no ground
        truth is read); the other classes learn from the teacher's best unseen class at each paired point.
    consolidate: vote pseudo labels across the frames of each drive in a world voxel map first.
    self_training: targets from a mean teacher (EMA, ema_decay per step) where its confidence is in the top
        self_training_share of its class, for paired points with probability self_training_probability and
        for unlabelled points always; from self_training_start of the epochs on, and only once the student
        agrees with the teacher on held-out paired points at least self_training_agreement.
    bn_recalibration: batches of each epoch's end over which BatchNorm statistics are recomputed (0: off).
    checkpoint_stages: activation checkpointing per U-Net stage on the CPU path (same gradients, less memory).
    pairing_cache_mb: megabytes of pairings (the teacher's predictions at every point, after projection and the
        occlusion test) kept in memory across epochs (their features in float16); 0: pair every scan every epoch.
    """

    epochs: int = 20
    batch_size: int = 2
    optimizer: str = "adamw"            # paper SGD (lr 0.1, momentum 0.9, weight decay 1e-4)
    lr: float = 2e-3                    # paper 0.1 with SGD
    momentum: float = 0.9               # paper 0.9 (SGD)
    weight_decay: float = 1e-4          # paper 1e-4
    schedule: str = "cosine"            # cosine or constant
    seed: int = 0
    sweeps: int = 3                     # paper 3
    semantic_loss: str = "symmetric"    # paper: infonce
    tau: float = 0.07                   # paper 0.5 (on raw dot products)
    normalize: bool = True              # cosine similarity in the semantic loss (False: the paper's raw dot product)
    spatial_temporal: bool = True
    st_weight: float = 1.0              # lambda, paper 1
    st_grid_m: float = 0.5
    attention_tau: float = 1.0          # paper 1
    occlusion_tolerance: float | None = 0.3
    distill_weight: float = 0.0         # MCFA local position alignment; MCFA's weight: see the README
    global_weight: float = 0.0          # MCFA global semantic alignment
    global_tau: float = 0.07            # CLIP's temperature (MCFA: see the README)
    global_min_points: int = 16
    seen_classes: tuple[str, ...] = ()
    consolidate: bool = False           # helps dense recordings, hurt the ablation (README)
    consolidation_voxel_m: float = 0.5
    consolidation_min_views: int = 2
    self_training: bool = False         # measured to cost mIoU here (README, ablation)
    self_training_start: float = 0.5    # paper: half-way
    self_training_agreement: float = 0.5
    self_training_probability: float = 0.5   # paper 0.5
    self_training_share: float = 0.5
    ema_decay: float = 0.99
    bn_recalibration: int = 4
    checkpoint_stages: bool = False
    augment: bool = False               # measured to cost mIoU at the budgets here (README)
    rotation_deg: float = 180.0
    max_paired: int = 0
    pairing_cache_mb: float = 2048.0

    def __post_init__(self) -> None:
        choices = {"semantic_loss": tuple(SEMANTIC_LOSSES), "optimizer": ("sgd", "adamw"),
                   "schedule": ("cosine", "constant")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"train.{key} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}")
        if self.sweeps < 1 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError("train.sweeps, train.epochs and train.batch_size must be at least 1")
        for key in ("tau", "st_grid_m", "consolidation_voxel_m", "attention_tau", "lr", "global_tau"):
            if not getattr(self, key) > 0:  # NaN fails too
                raise ValueError(f"train.{key} must be positive, got {getattr(self, key)}")
        for key in ("momentum", "weight_decay", "st_weight", "distill_weight", "max_paired", "bn_recalibration",
                    "rotation_deg", "occlusion_tolerance", "global_weight", "global_min_points", "pairing_cache_mb"):
            if getattr(self, key) is not None and not getattr(self, key) >= 0:
                raise ValueError(f"train.{key} must not be negative, got {getattr(self, key)}")
        if self.self_training and self.seen_classes:
            raise ValueError("train.self_training with train.seen_classes would replace seen classes' ground truth "
                             "with the mean teacher's labels; switch one of them off")
        if self.consolidation_min_views < 1:
            raise ValueError(f"train.consolidation_min_views must be at least 1, got {self.consolidation_min_views}")
        for key in ("self_training_share", "self_training_probability", "ema_decay", "self_training_start"):
            if not 0 <= getattr(self, key) <= 1:
                raise ValueError(f"train.{key} must be between 0 and 1, got {getattr(self, key)}")


def check_grid(train: TrainConfig, student: StudentConfig) -> None:
    """The spatial-temporal grid must not be finer than the student's voxels (points in one voxel share one
    feature, so cells inside a voxel would group copies of the same feature)."""
    if train.spatial_temporal and train.st_grid_m < student.voxel_size_m:
        raise ValueError(f"train.st_grid_m ({train.st_grid_m}) is smaller than student.voxel_size_m "
                         f"({student.voxel_size_m}): set train.st_grid_m to at least the voxel size")


class Pretrainer:
    """Owns the loop: data order, batches, losses, optimiser, schedule, mean teacher, checkpoints and the log."""

    def __init__(self, sources: list[FrameSource], teacher: Teacher, student_config: StudentConfig,
                 config: TrainConfig, out: Path, device: torch.device, extra: dict | None = None,
                 progress: bool = True):
        check_grid(config, student_config)
        self.sources, self.teacher, self.config, self.out = sources, teacher, config, Path(out)
        self.device, self.extra, self.progress = device, dict(extra or {}), progress
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        if config.batch_size % self.world:
            raise UsageError(f"train.batch_size {config.batch_size} must divide by the {self.world} processes")
        self.index = [(s, i) for s, source in enumerate(sources) for i in range(len(source))]
        if not self.index:
            raise UsageError("the training sources hold no frames")
        self.text = teacher.text_embeddings.to(device)
        # The checkpoint names the seen classes, so that evaluate can report seen, unseen and harmonic mIoU.
        class_mask(teacher.vocabulary, config.seen_classes, "train.seen_classes")
        self.extra["seen_classes"] = list(config.seen_classes)
        student_config.embed_dim = int(self.text.shape[1])
        torch.manual_seed(config.seed)
        self.student = Student(student_config).to(device)
        self.student.checkpoint_stages = config.checkpoint_stages
        self.optimizer = make_optimizer(self.student.parameters(), config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.mean_teacher = MeanTeacher(self.student, config.ema_decay) if config.self_training else None
        self.self_training_from: int | None = None   # the epoch self-training started at
        self.label_maps: dict[tuple[int, str], LabelMap] = {}
        self.pairings = PairingCache(config.pairing_cache_mb) if config.pairing_cache_mb else None
        self.epoch = 0
        self.history: list[dict] = []

    def _lr_factor(self, epoch: int) -> float:
        if self.config.schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * epoch / self.config.epochs))

    # -- checkpoints ----------------------------------------------------------------------------

    def resume(self, path: Path) -> None:
        payload = read_checkpoint(path, self.device)
        state = resumable_state(payload, path, self.config)
        load_weights(self.student, payload, path)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"checkpoint {path}: its optimiser state does not fit this run ({error}); "
                                  f"start a new run without --resume") from None
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.self_training_from = state.get("self_training_from")
        if self.mean_teacher is not None and "mean_teacher" in state:
            self.mean_teacher.load_state_dict(state["mean_teacher"])
        log.info("resumed from %s at epoch %d", path, self.epoch)

    def _save(self) -> Path:
        training = {"epoch": self.epoch, "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "history": self.history,
                    "config": asdict(self.config), "self_training_from": self.self_training_from}
        if self.mean_teacher is not None:
            training["mean_teacher"] = self.mean_teacher.state_dict()
        path = save_checkpoint(self.out / "checkpoints" / f"epoch_{self.epoch:03d}.pt", self.student,
                               training=training, text_embeddings=self.text.cpu(),
                               teacher=self.teacher.identity, text_encoder=self.teacher.text_encoder.identity,
                               **self.extra)
        (self.out / "checkpoints" / "last.pt").write_bytes(path.read_bytes())
        return path

    # -- label consolidation --------------------------------------------------------------------

    def consolidate(self) -> None:
        """Vote every drive's pseudo labels into its world voxel map (once, before the first epoch)."""
        config = self.config
        for source_index, source in enumerate(self.sources):
            if not getattr(source, "has_poses", True):
                log.warning("source %d has no ego poses: its labels are not consolidated", source_index)
                continue
            first = self.index.index((source_index, 0)) if len(source) else 0
            for position, frame in enumerate(tqdm(source, desc=f"consolidating source {source_index + 1}/"
                                                  f"{len(self.sources)}", unit="frame",
                                                  disable=not self.progress or self.rank != 0), first):
                key = (source_index, drive_of(frame))
                if key not in self.label_maps:
                    self.label_maps[key] = LabelMap(config.consolidation_voxel_m, len(self.text),
                                                    config.consolidation_min_views)
                pairing = self._pairing(position, frame)
                self.label_maps[key].add(transform_points(frame.lidar_pose, pairing.points), pairing.labels)
        for label_map in self.label_maps.values():
            label_map.finish()

    # -- one step ---------------------------------------------------------------------------------

    def _pairing(self, position: int, frame) -> Pairing:
        config = self.config

        def make() -> Pairing:
            return pair_frame(frame, self.teacher, config.sweeps, config.occlusion_tolerance, config.global_weight > 0)
        return make() if self.pairings is None else self.pairings.get(position, make)

    def _samples(self, epoch: int, positions: list[int], candidates: bool) -> list[Sample]:
        samples = []
        for position in positions:
            source_index, frame_index = self.index[position]
            frame = self.sources[source_index][frame_index]
            if len(frame) == 0:
                raise SourceError(f"frame {frame_index} ({frame.name!r}) of training source {source_index + 1} has no "
                                  f"points; leave empty sweeps out of the source (start/stop/step)")
            samples.append(prepare_sample(frame, self.teacher, self.config, seeded_rng(self.config.seed, epoch,
                                          position, 1), self.label_maps.get((source_index, drive_of(frame))),
                                          candidates, self._pairing(position, frame)))
        return samples

    def _losses(self, samples: list[Sample], batch: VoxelBatch, epoch: int, positions: list[int],
                self_training: bool) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        config = self.config
        offsets = np.cumsum([0] + [sum(len(p) for p in sample.points) for sample in samples])
        index = torch.from_numpy(np.concatenate([sample.index + offset for sample, offset in zip(samples, offsets)]))
        index = index.to(self.device)
        semantic, local = self.student.head_features(batch, index, normalize=config.normalize)
        if self_training:
            ema_labels, ema_confidence = self.mean_teacher.predict(batch, index, self.text, config.tau)
            trusted = confident(ema_labels, ema_confidence, config.self_training_share, len(self.text))
        totals = {"semantic": [], "spatial_temporal": [], "distillation": []}
        views: list[tuple[HeadFeatures, torch.Tensor]] = []   # (point features, camera) of each sample
        cameras = 0
        counts = {"agree": 0, "held_out": 0, "self_trained": 0, "loss_points": 0}
        semantic_loss = SEMANTIC_LOSSES[config.semantic_loss]

        def device(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(array).to(self.device)

        start = 0
        for sample, position in zip(samples, positions):
            rows = slice(start, start + len(sample.index))
            start += len(sample.index)
            features = semantic[rows]
            labels = device(sample.labels)
            held_out, paired = device(sample.held_out), device(sample.paired)
            if held_out.any():
                with torch.no_grad():
                    guess = features[held_out].dot(self.text).argmax(1)
                counts["agree"] += int((guess == device(sample.teacher_labels)[held_out]).sum())
                counts["held_out"] += int(held_out.sum())
            if self_training:
                switch = device(seeded_rng(config.seed, epoch, position, 2).random(len(sample.index))
                                < config.self_training_probability) | (labels == IGNORE)
                switch &= trusted[rows] & ~held_out
                labels = torch.where(switch, ema_labels[rows], labels)
                counts["self_trained"] += int(switch.sum())
            train = ~held_out & (labels != IGNORE)
            counts["loss_points"] += int(train.sum())
            totals["semantic"].append(semantic_loss(features[train], labels[train], self.text, config.tau))
            train_paired = train & paired
            pixel_features = sample.pixel_features.to(self.device)
            if not bool(train_paired.all()):
                pixel_features = pixel_features[train_paired]
            if config.spatial_temporal:
                # Groups are renumbered: held-out points may have left some empty.
                groups = torch.unique(device(sample.groups)[train_paired], return_inverse=True)[1]
                totals["spatial_temporal"].append(spatial_temporal(
                    local[rows][train_paired], pixel_features, device(sample.labels)[train_paired], self.text,
                    groups, config.attention_tau))
            if config.distill_weight:
                totals["distillation"].append(feature_distillation(features[train_paired], pixel_features))
            if config.global_weight:
                views.append((features[train_paired], device(sample.camera)[train_paired] + cameras))
                cameras += len(sample.image_embeddings)
        if views:  # one contrast over all the batch's cameras
            embeddings = torch.cat([sample.image_embeddings for sample in samples]).to(self.device)
            totals["global"] = [global_alignment(HeadFeatures.cat([f for f, _ in views]),
                                                 torch.cat([c for _, c in views]), embeddings, config.global_tau,
                                                 config.global_min_points)]
        result = {name: torch.stack(values).mean() for name, values in totals.items() if values}
        result["loss"] = result["semantic"] + config.st_weight * result.get("spatial_temporal", 0.0) + \
            config.distill_weight * result.get("distillation", 0.0) + config.global_weight * result.get("global", 0.0)
        return result, counts

    def _average_gradients(self) -> None:
        if self.world > 1:
            for parameter in self.student.parameters():
                if parameter.grad is not None:
                    dist.all_reduce(parameter.grad)
                    parameter.grad /= self.world

    def _self_training(self, epoch: int) -> bool:
        """Self-training is on from the first epoch at or past self_training_start whose previous epoch's
        held-out agreement with the teacher reached self_training_agreement; once on, it stays on."""
        config = self.config
        if self.mean_teacher is None:
            return False
        if self.self_training_from is None and epoch >= config.self_training_start * config.epochs and \
                self.history and self.history[-1].get("agreement", 0.0) >= config.self_training_agreement:
            self.self_training_from = epoch
            log.info("self-training from epoch %d (held-out agreement with the teacher %.3f)", epoch + 1,
                     self.history[-1]["agreement"])
        return self.self_training_from is not None

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> list[dict]:
        config = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        if config.consolidate and not self.label_maps and self.epoch < config.epochs:
            self.consolidate()
        per_process = config.batch_size // self.world
        steps = max(1, len(self.index) // config.batch_size)
        while self.epoch < config.epochs:
            epoch = self.epoch
            self_training = self._self_training(epoch)
            self.student.train()
            order = seeded_rng(config.seed, epoch, 0, 0).permutation(len(self.index))
            sums: dict[str, float] = {}
            counts: dict[str, int] = {}
            recent: deque[VoxelBatch] = deque(maxlen=config.bn_recalibration)
            started = time.perf_counter()
            bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{config.epochs}", unit="step",
                       disable=not self.progress or self.rank != 0)
            for step in bar:
                chunk = order[step * config.batch_size:(step + 1) * config.batch_size].tolist()
                mine = chunk[self.rank * per_process:(self.rank + 1) * per_process]
                samples = self._samples(epoch, mine, candidates=self_training)
                scans = [(p, i) for sample in samples for p, i in zip(sample.points, sample.intensity)]
                batch = make_batch(scans, self.student.config.voxel_size_m).to(self.device)
                recent.append(batch)
                losses, step_counts = self._losses(samples, batch, epoch, mine, self_training)
                check_finite(losses, f"pretraining at epoch {epoch + 1}, step {step + 1}", "train.lr",
                             self.optimizer.param_groups[0]["lr"])
                self.optimizer.zero_grad(set_to_none=True)
                losses["loss"].backward()
                self._average_gradients()
                self.optimizer.step()
                if self.mean_teacher is not None:
                    self.mean_teacher.update(self.student)
                for name, value in losses.items():
                    sums[name] = sums.get(name, 0.0) + float(value.detach())
                for name, value in step_counts.items():
                    counts[name] = counts.get(name, 0) + value
                bar.set_postfix(loss=f"{float(losses['loss'].detach()):.4f}")
            elapsed = time.perf_counter() - started
            recalibrate_batchnorm(self.student, list(recent))
            names = sorted(sums)
            totals = torch.tensor([sums[name] / self.world for name in names] +
                                  [float(counts[name]) for name in sorted(counts)], dtype=torch.float64)
            if self.world > 1:  # every process logged its own scans: average the losses, sum the counts
                dist.all_reduce(totals)
            sums = dict(zip(names, totals[:len(names)].tolist()))
            counts = dict(zip(sorted(counts), totals[len(names):].tolist()))
            record = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"],
                      **{name: value / steps for name, value in sums.items()},
                      "agreement": counts["agree"] / max(counts["held_out"], 1),
                      "self_training": int(self_training),
                      "self_trained": counts["self_trained"] / max(counts["loss_points"], 1),
                      "scans_per_s": steps * config.batch_size / elapsed}
            self.scheduler.step()
            self.epoch += 1
            self.history.append(record)
            if self.rank == 0:
                self._save()
                write_log(self.out, self.history)
        return self.history


def resumable_state(payload: dict, path: Path, config: TrainConfig) -> dict:
    """The training state of a pretraining checkpoint that this run can continue; CheckpointError otherwise."""
    if "training" not in payload:
        kind = "a fine-tuned student" if "finetune" in payload else "a checkpoint without training state"
        raise CheckpointError(f"checkpoint {path} is {kind}; --resume continues a pretraining run from one of its "
                              f"checkpoints (OUT/checkpoints/last.pt); to train this student further use "
                              f"`clip2scene finetune --checkpoint {path}`")
    state = payload["training"]
    for key, kind in (("optimizer", dict), ("scheduler", dict), ("epoch", int), ("history", list), ("config", dict)):
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise CheckpointError(f"checkpoint {path}: training.{key} is missing or not a {kind.__name__}; "
                                  f"resume from another checkpoint or start a new run")
    theirs = state["config"].get("optimizer")
    if theirs != config.optimizer:  # the other optimiser's state would load silently and fail (or mislead) later
        raise CheckpointError(f"checkpoint {path} was trained with train.optimizer {theirs!r}, this run uses "
                              f"{config.optimizer!r}; resume with train.optimizer: {theirs} or start a new run "
                              f"without --resume")
    return state


def make_optimizer(parameters, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def write_log(out: Path, history: list[dict]) -> None:
    """log.csv with one row per epoch, and losses.png plotting it."""
    columns = sorted({key for record in history for key in record}, key=lambda k: (k != "epoch", k))
    with open(out / "log.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, columns)
        writer.writeheader()
        writer.writerows(history)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    epochs = [r["epoch"] for r in history]
    for name in ("loss", "semantic", "spatial_temporal", "distillation", "global"):
        if name in history[0]:
            axis.plot(epochs, [r[name] for r in history], marker="o", label=name)
    axis.set_xlabel("epoch")
    axis.set_ylabel("loss")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out / "losses.png", dpi=100)
    plt.close(figure)


def init_distributed() -> tuple[int, int]:
    """Join the process group torchrun describes (gloo on CPU, nccl on GPU); (rank, world size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def finish_distributed() -> None:
    """Leave the process group together: a process that exits while its peers still write (rank 0 saves the last
    checkpoint) can take gloo's threads down with it ("terminate called without an active exception", seen when
    the steps became fast)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def dump_config(out: Path, config) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(config), indent=2, default=str))
