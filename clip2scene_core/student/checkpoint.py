"""Student checkpoints: weights plus everything needed to use them (architecture, vocabulary, text space).

Loaded with torch.load(weights_only=True): a checkpoint holds only tensors and plain containers,
so opening one never runs code. Loading into another architecture is an error that names the
difference, never a silent partial load.
"""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..frame import Frame
from ..vocabulary import Vocabulary
from .network import Classifier, Student, StudentConfig, make_batch
from .sparse import kernels

FORMAT = "clip2scene-student-1"


class CheckpointError(UserError, ValueError):
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
    if path.is_dir():
        example = path / "checkpoints" / "last.pt"
        raise CheckpointError(f"checkpoint {path} is a folder; give the .pt file (e.g. {example})")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist" if not path.exists() else
                              f"checkpoint {path} is not a regular file; give the .pt file")
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
    check_payload(payload, path)
    return payload


def check_payload(payload: dict, path: str | Path) -> None:
    """Every entry a checkpoint is used through, present and of the right kind: one CheckpointError naming the
    file and the entry (a checkpoint edited by hand, written by another tool or by a run that diverged)."""
    def fail(entry: str, problem: str):
        raise CheckpointError(f"checkpoint {path}: {entry} {problem}; it is damaged or was not written by "
                              f"clip2scene (use another checkpoint, e.g. an earlier epoch's)")

    for entry, kind in (("architecture", dict), ("state_dict", dict)):
        if entry not in payload:
            fail(f"entry {entry!r}", "is missing")
        if not isinstance(payload[entry], kind):
            fail(f"entry {entry!r}", f"is a {type(payload[entry]).__name__}, not a {kind.__name__}")
    architecture = payload["architecture"]
    for key in ("channels", "blocks", "voxel_size_m", "embed_dim"):
        if key not in architecture:
            fail(f"architecture.{key}", "is missing")
    try:
        config_from_checkpoint(payload)
    except (TypeError, ValueError) as error:
        fail("architecture", f"cannot be used ({error})")
    if not payload["state_dict"]:
        fail("state_dict", "is empty")
    for name, value in payload["state_dict"].items():
        _check_tensor(value, f"state_dict[{name!r}]", fail)
    for name in ("text_encoder", "teacher"):
        if name in payload and not isinstance(payload[name], str):
            fail(f"entry {name!r}", f"is a {type(payload[name]).__name__}, not a string")
    seen = payload.get("seen_classes", [])
    if not isinstance(seen, (list, tuple)) or not all(isinstance(name, str) for name in seen):
        fail("entry 'seen_classes'", "is not a list of class names")
    identity = payload.get("text_encoder", "")
    if not (identity.startswith("clip:") or (identity.startswith("hash:") and identity[5:].isdigit())):
        fail("entry 'text_encoder'", f"is {identity!r}, expected hash:DIMENSIONS (e.g. hash:512) or clip:MODEL")
    if "text_embeddings" in payload:
        _check_tensor(payload["text_embeddings"], "text_embeddings", fail, dims=2)
    if "classifier" in payload:
        classifier = payload["classifier"]
        if not isinstance(classifier, dict):
            fail("entry 'classifier'", f"is a {type(classifier).__name__}, not a dict")
        for key in ("weight", "bias", "scale", "classes"):
            if key not in classifier:
                fail(f"classifier.{key}", "is missing")
        _check_tensor(classifier["weight"], "classifier.weight", fail, dims=2)
        _check_tensor(classifier["bias"], "classifier.bias", fail, dims=1)
        scale = classifier["scale"]
        if isinstance(scale, torch.Tensor):
            scale = float(scale) if scale.numel() == 1 else None
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            fail("classifier.scale", f"is {classifier['scale']!r}, not a finite number")
        classes = classifier["classes"]
        if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes):
            fail("classifier.classes", "is not a list of class names")
        if not len(classes) == len(classifier["weight"]) == len(classifier["bias"]):
            fail("classifier", f"has {len(classes)} classes for {len(classifier['weight'])} weight rows and "
                               f"{len(classifier['bias'])} biases")


def _check_tensor(value, entry: str, fail, dims: int | None = None) -> None:
    if not isinstance(value, torch.Tensor):
        fail(entry, f"is a {type(value).__name__}, not a tensor")
    if dims is not None and value.dim() != dims:
        fail(entry, f"has {value.dim()} dimensions, expected {dims}")
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        fail(entry, "holds NaN or infinite values (the run that wrote it diverged)")


def config_from_checkpoint(payload: dict) -> StudentConfig:
    known = {f.name for f in fields(StudentConfig)}
    architecture = {k: v for k, v in payload["architecture"].items() if k in known}
    if not isinstance(architecture["channels"], (list, tuple)):
        raise TypeError(f"channels is {architecture['channels']!r}, not a list")
    architecture["channels"] = tuple(architecture["channels"])
    for key, kind in (("blocks", int), ("embed_dim", int), ("voxel_size_m", (int, float))):
        value = architecture[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise TypeError(f"{key} is {value!r}, not a {'number' if key == 'voxel_size_m' else 'whole number'}")
    if not all(isinstance(c, int) and not isinstance(c, bool) for c in architecture["channels"]):
        raise TypeError(f"channels {list(architecture['channels'])} are not whole numbers")
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
        if self.device.type == "cpu":
            kernels()  # a missing build of the CPU kernels is an error now, not at the first frame
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
        self._fold, self._fold_key = None, None

    def _folded(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The semantic head folded into the vocabulary, for voxel features f and x = [f, 1]:
        head output h = x @ A^T with A = [W | b] (D, d4 + 1); logits before normalisation x @ (A^T T^T);
        |h| = |x @ R^T| with A = QR (Q's columns orthonormal), so no (D,)-wide vector per voxel is built.
        Returns (logit matrix (d4 + 1, C), R^T (d4 + 1, k), classifier bias or None); recomputed when the
        vocabulary changes or any weight it depends on is written (tensor versions)."""
        head = self.network.semantic_head
        classes = self.network.text_embeddings if self.classifier is None else self.classifier.weight
        tensors = [head.weight, head.bias, classes] + ([self.classifier.bias] if self.classifier is not None else [])
        key = tuple((id(t), t._version) for t in tensors)
        if self._fold_key != key:
            with torch.no_grad():
                augmented = torch.cat([head.weight, head.bias[:, None]], dim=1).double()  # (D, d4 + 1)
                logits = augmented.T @ classes.double().T  # (d4 + 1, C)
                r = torch.linalg.qr(augmented, mode="reduced").R
                bias = None if self.classifier is None else self.classifier.bias.detach().float()
            self._fold = (logits.float(), r.T.float(), bias)
            self._fold_key = key
        return self._fold

    @torch.no_grad()
    def voxel_features(self, frame: Frame) -> tuple[torch.Tensor, torch.Tensor]:
        """((V, d4 + 1) decoder features of the frame's voxels with a column of ones, (N,) voxel of each point)."""
        batch = make_batch([(frame.points, frame.fields.get("intensity"))], self.network.config.voxel_size_m)
        batch = batch.to(self.device)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.half and self.device.type == "cuda"):
            features = self.network.voxel_features(batch).float()
        return torch.cat([features, features.new_ones(len(features), 1)], dim=1), batch.point_to_voxel

    @torch.no_grad()
    def infer(self, frame: Frame, query: torch.Tensor | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(labels (N,), scores (N,), cosine with the unit vector query (N,) or None): what classify(features())
        gives (and the segmenter's cosine), computed per voxel (every point of a voxel has the voxel's feature)
        through the folded head, without the local head."""
        if len(frame) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32), None if query is None else np.zeros(0, np.float32)
        x, voxel_of_point = self.voxel_features(frame)
        logits, r_t, bias = self._folded()
        norm = (x @ r_t).norm(dim=1, keepdim=True).clamp_min(1e-12)  # as F.normalize
        cosines = (x @ logits) / norm
        if bias is None:
            probabilities = torch.softmax(self.logit_scale * cosines, dim=1)
        else:
            probabilities = torch.softmax(self.classifier.scale * (cosines + bias), dim=1)
        scores, labels = probabilities.max(dim=1)
        labels, scores = labels[voxel_of_point], scores[voxel_of_point]
        similarity = None
        if query is not None:
            head = self.network.semantic_head
            query = query.to(x.device).float()
            direction = torch.cat([head.weight.T @ query, (head.bias @ query)[None]])
            similarity = ((x @ direction) / norm[:, 0])[voxel_of_point].cpu().numpy().astype(np.float32)
        return labels.cpu().numpy().astype(np.int64), scores.float().cpu().numpy(), similarity

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
        labels, scores, _ = self.infer(frame)
        return labels, scores

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
    if vocabulary is None and "vocabulary" not in payload:
        raise CheckpointError(f"checkpoint {path} holds no vocabulary; give one with --vocabulary")
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
        dimensions = identity.split(":")[1]
        if not dimensions.isdigit() or int(dimensions) < 1:
            raise CheckpointError(f"checkpoint text_encoder {identity!r}: expected hash:DIMENSIONS, e.g. hash:512")
        return HashTextEncoder(int(dimensions))
    if identity.startswith("clip:"):
        if not isinstance(payload.get("clip"), dict):
            raise CheckpointError(f"checkpoint entry 'clip' (the CLIP model of text encoder {identity!r}) is missing")
        try:
            clip = ClipConfig(**payload["clip"])
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"checkpoint entry 'clip' cannot be used ({error})") from None
        model, _, _ = load_clip(clip, device)
        return ClipTextEncoder(model, clip.model, clip.weights_id)
    raise CheckpointError(f"unknown text encoder {identity!r} in checkpoint")
