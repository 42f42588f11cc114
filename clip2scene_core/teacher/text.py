"""Text embeddings of a vocabulary's classes: CLIP's text tower over 85 prompt templates, cached on disk.

Each prompt of a class goes through every template; the class embedding is the L2-normalised mean
of the normalised template embeddings. Embeddings are cached per class, keyed by model, weights,
templates and prompts, so changing a vocabulary only embeds the classes that changed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from ..vocabulary import Vocabulary

# The 80 ImageNet prompt templates of CLIP's zero-shot evaluation.
IMAGENET_TEMPLATES = [
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
]
# MaskCLIP's five scene templates, which CLIP2Scene adds: 85 in all.
SCENE_TEMPLATES = [
    "there is a {} in the scene.", "there is the {} in the scene.", "this is a {} in the scene.",
    "this is the {} in the scene.", "this is one {} in the scene.",
]
TEMPLATES = IMAGENET_TEMPLATES + SCENE_TEMPLATES


def default_cache_dir() -> Path:
    return Path(os.environ.get("CLIP2SCENE_CACHE", Path.home() / ".cache" / "clip2scene")) / "text"


class TextEncoder:
    """Turns a vocabulary into (C, D) unit-norm class embeddings. `identity` names the embedding space:
    a student trained against one space must be evaluated in the same one."""

    identity: str = ""
    dim: int = 0

    def embed(self, vocabulary: Vocabulary) -> torch.Tensor:
        raise NotImplementedError


class ClipTextEncoder(TextEncoder):
    """CLIP's text tower with prompt ensembling over TEMPLATES, cached on disk per class."""

    def __init__(self, model, model_name: str, weights_id: str, cache_dir: str | Path | None = None,
                 templates: list[str] | None = None, batch_size: int = 256):
        import open_clip

        self.model = model
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.templates = list(templates or TEMPLATES)
        self.batch_size = batch_size
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.dim = int(model.text_projection.shape[-1] if model.text_projection is not None
                       else model.token_embedding.weight.shape[1])
        templates_hash = hashlib.sha256("\n".join(self.templates).encode()).hexdigest()[:12]
        self.identity = f"clip:{model_name}:{weights_id}:templates-{templates_hash}"
        self.embedded_classes = 0  # how many classes were run through the text tower (not from the cache)

    def _key(self, prompts: list[str]) -> str:
        return hashlib.sha256("\n".join([self.identity, *prompts]).encode()).hexdigest()

    @torch.no_grad()
    def _embed_prompts(self, prompts: list[str]) -> torch.Tensor:
        texts = [template.format(prompt) for prompt in prompts for template in self.templates]
        device = next(self.model.parameters()).device
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(texts[start:start + self.batch_size]).to(device)
            chunks.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1))
        return F.normalize(torch.cat(chunks).mean(dim=0), dim=-1).cpu()

    def embed(self, vocabulary: Vocabulary) -> torch.Tensor:
        rows = []
        for cls in vocabulary.classes:
            path = self.cache_dir / f"{self._key(cls.prompts)}.pt"
            embedding = None
            if path.is_file():
                try:
                    embedding = torch.load(path, map_location="cpu", weights_only=True)
                except Exception:  # a damaged cache entry is recomputed, not fatal
                    embedding = None
            if embedding is None or embedding.shape != (self.dim,):
                embedding = self._embed_prompts(cls.prompts)
                self.embedded_classes += 1
                path.parent.mkdir(parents=True, exist_ok=True)
                temporary = path.with_suffix(f".{os.getpid()}.tmp")
                torch.save(embedding, temporary)
                temporary.replace(path)  # atomic: concurrent processes never read half a file
            rows.append(embedding)
        return torch.stack(rows)


class HashTextEncoder(TextEncoder):
    """Stand-in when no CLIP weights are available: each prompt gets a fixed pseudo-random unit vector
    derived from its text (SHA-256 seeded), and a class the normalised mean of its prompts'.

    Different names are near-orthogonal; there is no semantics (a "truck" is not near a "lorry").
    The label and noisy teachers, the synthetic world, tests and the demo use it; with real CLIP
    weights use ClipTextEncoder for open-vocabulary behaviour.
    """

    def __init__(self, dim: int = 512):
        self.dim = dim
        self.identity = f"hash:{dim}"

    def _prompt(self, prompt: str) -> torch.Tensor:
        seed = int.from_bytes(hashlib.sha256(prompt.strip().lower().encode()).digest()[:8], "little")
        generator = torch.Generator().manual_seed(seed)
        return F.normalize(torch.randn(self.dim, generator=generator), dim=0)

    def embed(self, vocabulary: Vocabulary) -> torch.Tensor:
        return torch.stack([F.normalize(torch.stack([self._prompt(p) for p in c.prompts]).mean(0), dim=0)
                            for c in vocabulary.classes])
