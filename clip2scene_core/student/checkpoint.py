"""Student checkpoints: weights plus everything needed to use them (architecture, vocabulary, text space).

Loaded with torch.load(weights_only=True): a checkpoint holds only tensors and plain containers,
so opening one never runs code. Loading into another architecture is an error that names the
difference, never a silent partial load.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from ..frame import Frame
from ..vocabulary import Vocabulary
from .network import Classifier, Student, StudentConfig, make_batch

FORMAT = "clip2scene-student-1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message names the file and the mismatch."""


def save_checkpoint(path: str | Path, student: Student, **extra) -> Path:
    """Write weights, architecture and extra entries (vocabulary, text_encoder, teacher, optimizer, ...).

    Written to a temporary file first, so an interrupted save never leaves a truncated checkpoint.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "architecture": student.config.to_dict(), "state_dict": student.state_dict(),
               **extra}
    temporary = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, temporary)
    temporary.replace(path)
    return path


def read_checkpoint(path: str | Path, device="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # truncated zip, foreign pickle (refused by weights_only), not a torch file
        raise CheckpointError(f"checkpoint {path} cannot be read safely ({type(error).__name__}: "
                              f"{str(error).splitlines()[0][:300]}); it is damaged or not a clip2scene checkpoint") \
            from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a clip2scene student checkpoint (format "
                              f"{payload.get('format') if isinstance(payload, dict) else type(payload).__name__!r}, "
                              f"expected {FORMAT!r})")
    return payload


def config_from_checkpoint(payload: dict) -> StudentConfig:
    known = {f.name for f in fields(StudentConfig)}
    architecture = {k: v for k, v in payload["architecture"].items() if k in known}
    architecture["channels"] = tuple(architecture["channels"])
    return StudentConfig(**architecture)


def load_weights(student: Student, payload: dict, path: str | Path) -> None:
    """Load payload's weights into student, which must have the same architecture."""
    mine = student.config.to_dict()
    theirs = payload["architecture"]
    differences = [f"{key}: checkpoint {theirs.get(key)!r}, model {mine[key]!r}" for key in
                   ("channels", "blocks", "embed_dim") if theirs.get(key) != mine[key]]
    state = payload["state_dict"]
    own = student.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if differences or missing or unexpected or shapes:
        details = differences + [f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}"] * bool(missing) + \
            [f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"] * bool(unexpected) + shapes[:5]
        raise CheckpointError(f"checkpoint {path} does not fit this student architecture: " + "; ".join(details))
    student.load_state_dict(state, strict=True)


class StudentModel:
    """A trained student ready to segment frames (the Segmenter's `student`).

    Zero-shot: labels = argmax over the vocabulary's text embeddings. A fine-tuned checkpoint also
    carries a classifier for the classes it was fine-tuned on; it is used while the vocabulary has
    exactly those classes, and the text embeddings take over for any other vocabulary.
    """

    def __init__(self, student: Student, vocabulary: Vocabulary, text_encoder, device="cpu",
                 logit_scale: float = 100.0, classifier=None, half: bool | None = None):
        self.network = student.to(device).eval()
        self.device = torch.device(device)
        self.half = self.device.type == "cuda" if half is None else half  # fp16 inference on GPU
        self.text_encoder = text_encoder
        self.logit_scale = logit_scale
        self.trained_classifier = classifier.to(self.device).eval() if classifier is not None else None
        self.set_vocabulary(vocabulary)

    def set_vocabulary(self, vocabulary: Vocabulary) -> None:
        self.vocabulary = vocabulary
        self.network.set_text_embeddings(self.text_encoder.embed(vocabulary).to(self.device))
        fits = self.trained_classifier is not None and self.trained_classifier.classes == vocabulary.names
        self.classifier = self.trained_classifier if fits else None

    @torch.no_grad()
    def features(self, frame: Frame) -> torch.Tensor:
        """(N, D) semantic point features of the frame's points."""
        batch = make_batch([(frame.points, frame.fields.get("intensity"))], self.network.config.voxel_size_m)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.half and self.device.type == "cuda"):
            semantic, _ = self.network(batch.to(self.device))
        return semantic.float()

    @torch.no_grad()
    def predict(self, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
        """(labels (N,) int64, scores (N,) float32): argmax over the vocabulary's text embeddings."""
        if len(frame) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        return self.classify(self.features(frame))

    @torch.no_grad()
    def classify(self, features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """predict's (labels, scores) from point features (N, D)."""
        if self.classifier is not None:
            probabilities = torch.softmax(self.classifier(features), dim=1)
        else:
            probabilities = torch.softmax(self.logit_scale * features @ self.network.text_embeddings.T, dim=1)
        scores, labels = probabilities.max(dim=1)
        return labels.cpu().numpy().astype(np.int64), scores.float().cpu().numpy()


def load_student(path: str | Path, device="cpu", vocabulary: Vocabulary | None = None,
                 text_encoder=None) -> tuple[StudentModel, dict]:
    """A StudentModel from a checkpoint, with the checkpoint's vocabulary unless another is given.

    The text encoder must be the one the student was trained against; when not given it is rebuilt
    from the checkpoint's record (hash embeddings need nothing; CLIP needs its weights).
    """
    payload = read_checkpoint(path, device)
    student = Student(config_from_checkpoint(payload))
    load_weights(student, payload, path)
    vocabulary = vocabulary or Vocabulary.from_dict(payload["vocabulary"], f"vocabulary in {path}")
    if text_encoder is None:
        text_encoder = text_encoder_from_identity(payload.get("text_encoder", ""), payload, device)
    if text_encoder.identity != payload.get("text_encoder"):
        raise CheckpointError(f"checkpoint {path} was trained against text embeddings {payload.get('text_encoder')!r}, "
                              f"not {text_encoder.identity!r}; zero-shot labels need the same text encoder")
    classifier = None
    if "classifier" in payload:
        stored = payload["classifier"]
        classifier = Classifier(stored["weight"], stored["scale"])
        classifier.bias.data.copy_(stored["bias"])
        classifier.classes = list(stored["classes"])
    return StudentModel(student, vocabulary, text_encoder, device, classifier=classifier), payload


def text_encoder_from_identity(identity: str, payload: dict, device="cpu"):
    """Rebuild the text encoder a checkpoint names (hash:D, or clip with the checkpoint's CLIP config)."""
    from ..teacher.clip_model import ClipConfig, load_clip
    from ..teacher.text import ClipTextEncoder, HashTextEncoder

    if identity.startswith("hash:"):
        return HashTextEncoder(int(identity.split(":")[1]))
    if identity.startswith("clip:"):
        clip = ClipConfig(**payload["clip"])
        model, _, _ = load_clip(clip, device)
        return ClipTextEncoder(model, clip.model, clip.weights_id)
    raise CheckpointError(f"unknown text encoder {identity!r} in checkpoint")
