"""Label-efficient fine-tuning of a pretrained student on a deterministic fraction of labelled scans.

The classifier is initialised from the vocabulary's text embeddings (so fine-tuning starts from the
zero-shot predictions) and trained with its own learning rate next to the backbone's; the loss is
cross-entropy plus Lovasz-softmax. The paper's 1% is every 100th scan: fraction f takes every
round(1/f)-th scan, starting from the first.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .data import FrameSource, SourceError
from .samples import augmentation, seeded_rng
from .student.checkpoint import StudentModel, save_checkpoint
from .student.losses import check_finite, lovasz_softmax
from .student.network import Classifier, make_batch, recalibrate_batchnorm
from .vocabulary import IGNORE, Vocabulary, no_matching_labels

log = logging.getLogger(__name__)


@dataclass
class FinetuneConfig:
    labels_fraction: float = 0.01
    epochs: int = 10
    batch_size: int = 2
    optimizer: str = "adamw"    # or sgd (momentum 0.9)
    lr: float = 2e-3            # backbone
    head_lr: float = 2e-2       # classifier (paper-style fine-tuning trains the new head faster)
    weight_decay: float = 1e-4
    lovasz_weight: float = 1.0
    seed: int = 0
    augment: bool = False       # measured to keep a scan from being fitted in 40 epochs (README)
    rotation_deg: float = 180.0
    bn_recalibration: int = 8   # last batches over which BatchNorm statistics are recomputed (0: off)

    def __post_init__(self) -> None:
        if not 0 < self.labels_fraction <= 1:
            raise ValueError(f"finetune.labels_fraction must be in (0, 1], got {self.labels_fraction}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"finetune.optimizer must be adamw or sgd, got {self.optimizer!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"finetune.epochs and finetune.batch_size must be at least 1, got {self.epochs} and "
                             f"{self.batch_size}")
        for key in ("lr", "head_lr", "weight_decay", "lovasz_weight", "bn_recalibration", "rotation_deg"):
            if not getattr(self, key) >= 0:  # NaN fails too; a learning rate of 0 freezes that part
                raise ValueError(f"finetune.{key} must not be negative, got {getattr(self, key)}")


def labelled_subset(length: int, fraction: float) -> list[int]:
    """Every round(1/fraction)-th scan index: the paper's deterministic label-efficient subset."""
    step = max(1, round(1 / fraction))
    return list(range(0, length, step))


def finetune(model: StudentModel, source: FrameSource, vocabulary: Vocabulary, config: FinetuneConfig,
             out: Path, checkpoint_extra: dict, progress: bool = True) -> list[dict]:
    """Fine-tune model.network in place on the labelled subset of source; writes out/finetuned.pt."""
    device = model.device
    if len(source) == 0:
        raise SourceError("the fine-tuning source holds no frames; check its path and its start/stop/step options")
    indices = labelled_subset(len(source), config.labels_fraction)
    frames = [source[i] for i in indices]
    empty = [frame.name for frame in frames if len(frame) == 0]
    if empty:
        raise SourceError(f"scan {empty[0]!r} has no points ({len(empty)} such scans); leave empty sweeps out of "
                          f"the fine-tuning source (start/stop/step) or record without LiDAR dropouts")
    if any(frame.labels is None for frame in frames):
        raise SourceError("fine-tuning needs per-point labels in every selected scan; this source has none")
    targets = [vocabulary.raw_to_class(frame.labels) for frame in frames]
    if not any((target != IGNORE).any() for target in targets):
        raise SourceError(no_matching_labels(np.concatenate([f.labels for f in frames]), vocabulary, "fine-tune on"))
    model.set_vocabulary(vocabulary)  # one vocabulary for the classifier's rows and the targets
    network = model.network.train()
    classifier = Classifier(network.text_embeddings.to(device)).to(device)
    groups = [{"params": network.parameters(), "lr": config.lr},
              {"params": classifier.parameters(), "lr": config.head_lr}]
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay) if config.optimizer == "adamw" else \
        torch.optim.SGD(groups, momentum=0.9, weight_decay=config.weight_decay)
    steps = max(1, len(frames) // config.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps)
    torch.manual_seed(config.seed)
    history = []
    recent: deque = deque(maxlen=config.bn_recalibration)
    for epoch in range(config.epochs):
        order = seeded_rng(config.seed, epoch, 0, 3).permutation(len(frames))
        total = 0.0
        for step in tqdm(range(steps), desc=f"finetune {epoch + 1}/{config.epochs}", disable=not progress):
            chosen = order[step * config.batch_size:(step + 1) * config.batch_size]
            scans, labels = [], []
            for position in chosen:
                points = frames[position].points
                if config.augment:
                    turn = augmentation(seeded_rng(config.seed, epoch, int(position), 4), config.rotation_deg)
                    points = (points @ turn.T).astype(np.float32)
                scans.append((points, frames[position].fields.get("intensity")))
                labels.append(targets[position])
            batch = make_batch(scans, network.config.voxel_size_m).to(device)
            recent.append(batch)
            target = torch.from_numpy(np.concatenate(labels)).to(device)
            keep = target != IGNORE
            if not keep.any():  # scans whose points are all of classes outside the vocabulary teach nothing
                continue
            semantic, _ = network.head_features(batch, torch.nonzero(keep).squeeze(1))
            logits = classifier(semantic)
            loss = F.cross_entropy(logits, target[keep]) + \
                config.lovasz_weight * lovasz_softmax(torch.softmax(logits, dim=1), target[keep])
            check_finite({"loss": loss}, f"fine-tuning at epoch {epoch + 1}, step {step + 1}", "finetune.lr",
                         config.lr)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach())
        history.append({"epoch": epoch + 1, "loss": total / steps})
        log.info("fine-tune epoch %d: loss %.4f", epoch + 1, total / steps)
    recalibrate_batchnorm(network, list(recent))
    network.eval()
    save_checkpoint(Path(out) / "finetuned.pt", network, classifier={"weight": classifier.weight.detach().cpu(),
                                                                      "bias": classifier.bias.detach().cpu(),
                                                                      "scale": classifier.scale,
                                                                      "classes": vocabulary.names},
                    finetune={"labelled_scans": indices, "history": history}, **checkpoint_extra)
    classifier.classes = vocabulary.names
    model.trained_classifier = classifier.eval()
    model.set_vocabulary(vocabulary)  # now with the trained classifier
    return history
