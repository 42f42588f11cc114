"""Pretraining the student from a teacher (CLIP2Scene): read top to bottom.

For every scan: aggregate its sweeps into the keyframe's LiDAR frame with ego poses, project all
points into the keyframe's cameras, take the teacher's pseudo label and pixel feature for every
paired point, augment, voxelise each sweep, run the student, and apply
    semantic consistency (Eq. 1) + lambda * spatial-temporal consistency (Eq. 2-4),
with the pseudo labels switched at random to the student's own predictions once self-training
starts. SGD with a cosine schedule; a checkpoint per epoch; seeded so that a resumed run ends
exactly where an unbroken one does; several processes through torch.distributed (torchrun).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from .data import FrameSource
from .frame import Frame
from .geometry import aggregate_sweeps, voxelize
from .student.checkpoint import read_checkpoint, save_checkpoint, load_weights
from .student.losses import semantic_cross_entropy, semantic_infonce, spatial_temporal
from .student.network import Student, StudentConfig, make_batch
from .teacher import Teacher, predict_points
from .vocabulary import IGNORE

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Pretraining options (paper values in comments).

    batch_size: scans per optimiser step over all processes (must divide by the number of processes).
    sweeps: sweeps per sample, the keyframe included (paper 3; 1 = no temporal aggregation).
    semantic_loss: "infonce" (paper Eq. 1) or "cross_entropy" (what the released code trains with).
    st_grid_m: edge of the regular grid grouping points for the spatial-temporal loss.
    self_training_start: fraction of the epochs after which pseudo labels switch (paper: half-way).
    """

    epochs: int = 20
    batch_size: int = 2
    optimizer: str = "sgd"              # paper SGD; "adamw" converges in far fewer steps (small CPU runs)
    lr: float = 0.1                     # paper 0.1
    momentum: float = 0.9               # paper 0.9
    weight_decay: float = 1e-4          # paper 1e-4
    schedule: str = "cosine"            # cosine or constant
    seed: int = 0
    sweeps: int = 3
    semantic_loss: str = "infonce"
    tau: float = 0.5                    # paper 0.5
    normalize: bool = True              # cosine similarity in the semantic loss (False: the paper's raw dot product)
    spatial_temporal: bool = True
    st_weight: float = 1.0              # lambda, paper 1
    st_grid_m: float = 0.1
    attention_tau: float = 1.0
    self_training: bool = True
    self_training_start: float = 0.5
    self_training_probability: float = 0.5
    augment: bool = True
    max_paired: int = 0                 # at most this many paired points per scan enter the losses (0: all)

    def __post_init__(self) -> None:
        if self.semantic_loss not in ("infonce", "cross_entropy"):
            raise ValueError(f"train.semantic_loss must be infonce or cross_entropy, got {self.semantic_loss!r}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"train.optimizer must be sgd or adamw, got {self.optimizer!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"train.schedule must be cosine or constant, got {self.schedule!r}")
        if self.sweeps < 1 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError("train.sweeps, train.epochs and train.batch_size must be at least 1")


@dataclass
class Sample:
    """One scan ready for the student.

    points / intensity: per sweep, (N_k, 3) float32 in the (augmented) keyframe LiDAR frame.
    pseudo: (sum N_k,) int64 teacher pseudo labels over the concatenated sweeps, IGNORE where unpaired.
    paired: (M,) indices of the paired points used in the losses; pixel_features: (M, D); groups: (M,) grid
        cell per pair.
    truth: (N_0,) raw labels of the keyframe points when the source has them (monitoring only).
    """

    points: list[np.ndarray]
    intensity: list[np.ndarray | None]
    pseudo: np.ndarray
    paired: np.ndarray
    pixel_features: torch.Tensor
    groups: np.ndarray
    truth: np.ndarray | None


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in keys])


def _augmentation(rng: np.random.Generator) -> np.ndarray:
    """A random (3, 3) rotation about z, flip of y and scale, as used for LiDAR pretraining."""
    angle = rng.uniform(0, 2 * np.pi)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    flip = np.diag([1.0, -1.0 if rng.random() < 0.5 else 1.0, 1.0])
    return rotation @ flip * rng.uniform(0.95, 1.05)


def prepare_sample(frame: Frame, teacher: Teacher, config: TrainConfig, rng: np.random.Generator) -> Sample:
    """Pair the frame's (aggregated) points with the teacher's pixels, then augment (see module docstring)."""
    aggregate = aggregate_sweeps(frame, config.sweeps)
    sweeps = ([frame] + list(frame.sweeps))[:config.sweeps]
    counts = np.bincount(aggregate.sweep_index, minlength=len(sweeps))
    points, sweep_index = aggregate.points, aggregate.sweep_index
    intensity_all = np.concatenate([s.fields.get("intensity", np.zeros(len(s), np.float32)).astype(np.float32)
                                    for s in sweeps])
    truth = frame.labels
    if frame.cameras:
        pairs = predict_points(teacher.predict(frame.cameras), points, frame.cameras, with_features=True)
        pseudo, pixel_features = pairs.labels, pairs.features
    else:
        pseudo, pixel_features = np.full(len(points), IGNORE, np.int64), torch.zeros(len(points), 1)
    paired = np.flatnonzero(pseudo != IGNORE)
    if config.max_paired and len(paired) > config.max_paired:
        # Fewer points in the losses, never in the network's input: thinning the input would starve the
        # sparse convolutions of neighbours and train on scans unlike those seen at inference.
        paired = np.sort(rng.choice(paired, config.max_paired, replace=False))
    if config.augment:
        points = (points @ _augmentation(rng).T).astype(np.float32)
    groups = np.zeros(0, np.int64)
    if len(paired):
        groups = voxelize(points[paired], config.st_grid_m).point_to_voxel.numpy()
    split = np.cumsum(np.bincount(sweep_index, minlength=len(counts)))[:-1]
    return Sample(points=np.split(points, split), intensity=np.split(intensity_all, split), pseudo=pseudo,
                  paired=paired, pixel_features=pixel_features[torch.from_numpy(paired)], groups=groups, truth=truth)


class Pretrainer:
    """Owns the loop: data order, batches, losses, optimiser, schedule, checkpoints and the log."""

    def __init__(self, sources: list[FrameSource], teacher: Teacher, student_config: StudentConfig,
                 config: TrainConfig, out: Path, device: torch.device, extra: dict | None = None,
                 progress: bool = True):
        self.sources, self.teacher, self.config, self.out = sources, teacher, config, Path(out)
        self.device, self.extra, self.progress = device, extra or {}, progress
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        if config.batch_size % self.world:
            raise ValueError(f"train.batch_size {config.batch_size} must divide by the {self.world} processes")
        self.index = [(s, i) for s, source in enumerate(sources) for i in range(len(source))]
        if not self.index:
            raise ValueError("the training sources hold no frames")
        self.text = teacher.text_embeddings.to(device)
        student_config.embed_dim = int(self.text.shape[1])
        torch.manual_seed(config.seed)
        self.student = Student(student_config).to(device)
        self.optimizer = make_optimizer(self.student.parameters(), config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.epoch = 0
        self.history: list[dict] = []

    def _lr_factor(self, epoch: int) -> float:
        if self.config.schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * epoch / self.config.epochs))

    # -- checkpoints ----------------------------------------------------------------------------

    def resume(self, path: Path) -> None:
        payload = read_checkpoint(path, self.device)
        load_weights(self.student, payload, path)
        state = payload["training"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        log.info("resumed from %s at epoch %d", path, self.epoch)

    def _save(self) -> Path:
        training = {"epoch": self.epoch, "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "history": self.history,
                    "config": asdict(self.config)}
        path = save_checkpoint(self.out / "checkpoints" / f"epoch_{self.epoch:03d}.pt", self.student,
                               training=training, text_embeddings=self.text.cpu(),
                               teacher=self.teacher.identity, text_encoder=self.teacher.text_encoder.identity,
                               **self.extra)
        (self.out / "checkpoints" / "last.pt").write_bytes(path.read_bytes())
        return path

    # -- one step ---------------------------------------------------------------------------------

    def _samples(self, epoch: int, positions: list[int]) -> list[Sample]:
        samples = []
        for position in positions:
            source_index, frame_index = self.index[position]
            frame = self.sources[source_index][frame_index]
            samples.append(prepare_sample(frame, self.teacher, self.config,
                                          _rng(self.config.seed, epoch, position, 1)))
        return samples

    def _losses(self, samples: list[Sample], epoch: int, positions: list[int]) -> dict[str, torch.Tensor]:
        config = self.config
        scans = [(p, i) for sample in samples for p, i in zip(sample.points, sample.intensity)]
        batch = make_batch(scans, self.student.config.voxel_size_m).to(self.device)
        # Only paired points enter the losses: ask the student for those alone.
        offsets = np.cumsum([0] + [sum(len(p) for p in sample.points) for sample in samples])
        paired = torch.from_numpy(np.concatenate([sample.paired + offset for sample, offset in zip(samples, offsets)]))
        semantic, local = self.student(batch, paired.to(self.device), normalize=config.normalize)
        self_training = config.self_training and epoch >= config.self_training_start * config.epochs
        totals = {"semantic": [], "spatial_temporal": []}
        start = 0
        for sample, position in zip(samples, positions):
            rows = slice(start, start + len(sample.paired))
            features = semantic[rows]
            teacher_labels = torch.from_numpy(sample.pseudo[sample.paired]).to(self.device)
            labels = teacher_labels
            if self_training and len(sample.paired):
                own = (features.detach() @ self.text.T).argmax(1)
                switch = _rng(config.seed, epoch, position, 2).random(len(sample.paired)) \
                    < config.self_training_probability
                labels = torch.where(torch.from_numpy(switch).to(self.device), own, teacher_labels)
            loss = semantic_infonce if config.semantic_loss == "infonce" else semantic_cross_entropy
            totals["semantic"].append(loss(features, labels, self.text, config.tau))
            if config.spatial_temporal:
                totals["spatial_temporal"].append(spatial_temporal(
                    local[rows], sample.pixel_features.to(self.device), self.text[teacher_labels],
                    torch.from_numpy(sample.groups).to(self.device), config.attention_tau))
            start += len(sample.paired)
        result = {name: torch.stack(values).mean() for name, values in totals.items() if values}
        result["loss"] = result["semantic"] + config.st_weight * result.get("spatial_temporal", 0.0)
        return result

    def _average_gradients(self) -> None:
        if self.world > 1:
            for parameter in self.student.parameters():
                if parameter.grad is not None:
                    dist.all_reduce(parameter.grad)
                    parameter.grad /= self.world

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> list[dict]:
        config = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        per_process = config.batch_size // self.world
        steps = max(1, len(self.index) // config.batch_size)
        while self.epoch < config.epochs:
            epoch = self.epoch
            self.student.train()
            order = _rng(config.seed, epoch, 0, 0).permutation(len(self.index))
            sums: dict[str, float] = {}
            started = time.perf_counter()
            bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{config.epochs}", unit="step",
                       disable=not self.progress or self.rank != 0)
            for step in bar:
                chunk = order[step * config.batch_size:(step + 1) * config.batch_size].tolist()
                mine = chunk[self.rank * per_process:(self.rank + 1) * per_process]
                losses = self._losses(self._samples(epoch, mine), epoch, mine)
                self.optimizer.zero_grad(set_to_none=True)
                losses["loss"].backward()
                self._average_gradients()
                self.optimizer.step()
                for name, value in losses.items():
                    sums[name] = sums.get(name, 0.0) + float(value.detach())
                bar.set_postfix(loss=f"{float(losses['loss'].detach()):.4f}")
            elapsed = time.perf_counter() - started
            if self.world > 1:  # every process logged its own scans' losses: average them
                names = sorted(sums)
                totals = torch.tensor([sums[name] for name in names], dtype=torch.float64)
                dist.all_reduce(totals)
                sums = dict(zip(names, (totals / self.world).tolist()))
            record = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"],
                      **{name: value / steps for name, value in sums.items()},
                      "scans_per_s": steps * config.batch_size / elapsed}
            self.scheduler.step()
            self.epoch += 1
            self.history.append(record)
            if self.rank == 0:
                self._save()
                write_log(self.out, self.history)
        return self.history


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
    for name in ("loss", "semantic", "spatial_temporal"):
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


def dump_config(out: Path, config) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(config), indent=2, default=str))
