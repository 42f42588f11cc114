"""Self-training from a mean teacher: an exponential moving average of the student (Tarvainen and
Valpola 2017) labels the points, where it is confident for its class.

The paper switches a paired point's pseudo label, at random, to the student's own argmax of the same
forward pass; that only sharpens the student's current guesses and never reaches a point no camera
sees. Here the targets come from a slowly moving copy of the student, which averages out the noise
of single steps; a prediction counts only where its confidence is in the top share of its class in
the batch (per-class thresholds, so rare and hard classes are not crowded out by easy ones); and
points outside every camera get targets too.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist

from .student.network import Student, VoxelBatch


class MeanTeacher:
    """An EMA copy of the student. decay: per optimiser step, warmed up as min(decay, (1 + t) / (10 + t))."""

    def __init__(self, student: Student, decay: float):
        self.model = copy.deepcopy(student)
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.decay = decay
        self.steps = 0

    @torch.no_grad()
    def update(self, student: Student) -> None:
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for mine, theirs in zip(self.model.parameters(), student.parameters()):
            mine.mul_(decay).add_(theirs.detach(), alpha=1 - decay)
        for mine, theirs in zip(self.model.buffers(), student.buffers()):
            mine.copy_(theirs)
        self.steps += 1

    @torch.no_grad()
    def predict(self, batch: VoxelBatch, points: torch.Tensor, text: torch.Tensor,
                tau: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(labels, confidence) of the given points: softmax over the classes at the training temperature.
        Batch statistics, as the student's own forward pass in training."""
        self.model.train()
        semantic, _ = self.model.head_features(batch, points)
        confidence, labels = torch.softmax(semantic.dot(text) / tau, dim=1).max(dim=1)
        return labels, confidence

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.steps = int(state["steps"])


def confident(labels: torch.Tensor, confidence: torch.Tensor, share: float, num_classes: int,
              bins: int = 1000) -> torch.Tensor:
    """(M,) bool: the predictions whose confidence is within the top `share` of the predictions of their class.

    Thresholds come from per-class histograms of the confidence, summed over processes when training
    distributed, so N processes choose exactly what one process would on their joint batch.
    """
    bin_of = (confidence.float().clamp(0, 1) * (bins - 1)).round().long()
    histogram = torch.zeros(num_classes, bins, device=labels.device).index_put_(
        (labels, bin_of), torch.ones(len(labels), device=labels.device), accumulate=True)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(histogram)
    at_or_above = histogram.flip(1).cumsum(1).flip(1)               # predictions of class c in bin >= b
    enough = at_or_above >= share * histogram.sum(1, keepdim=True) - 1e-6
    threshold = enough.long().cumsum(1).argmax(1)                   # the highest bin still keeping `share`
    return bin_of >= threshold[labels]
