"""Loading CLIP through open_clip (offline unless allowed), and its MaskCLIP dense image features.

Weights are found the way users have them: a local checkpoint file, or an open_clip pretrained tag
whose file is already in the Hugging Face cache (or open_clip's own cache). Nothing is downloaded
unless `allow_download` is true.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from ..errors import UsageError, UserError

# open_clip's file names for full-model weights on the Hugging Face hub, preferred first.
_HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class ClipWeightsError(UserError, FileNotFoundError):
    """CLIP weights that are not on this machine (and may not be downloaded)."""


@dataclass
class ClipConfig:
    """How to get CLIP and run its image encoder densely.

    model: open_clip model name (open_clip.list_models()).
    pretrained: an open_clip pretrained tag (e.g. "openai") or a path to a checkpoint file.
    quick_gelu: None takes the tag's setting (OpenAI weights use QuickGELU); set it for checkpoint files.
    cache_dir: where to look for (and, if allowed, put) downloaded weights; None = the Hugging Face default.
    allow_download: fetch missing weights from the hub.
    model_config_dir: a folder of extra open_clip model config JSON files (custom architectures).
    image_size: (height, width) the camera images are resized/cropped to; CLIP2Scene uses 224 x 416.
    resize: "stretch" (resize to image_size) or "crop" (keep aspect, scale to cover, centre crop).
    value_path: "residual" (MaskCLIP/CLIP2Scene: value -> out_proj, then residual and MLP) or "v_only".
    precision: "auto" (fp16 on CUDA, fp32 on CPU), "fp32" or "fp16".
    """

    model: str = "ViT-B-16"
    pretrained: str | None = "openai"
    quick_gelu: bool | None = None
    cache_dir: str | None = None
    allow_download: bool = False
    model_config_dir: str | None = None
    image_size: tuple[int, int] = (224, 416)
    resize: str = "stretch"
    value_path: str = "residual"
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.resize not in ("stretch", "crop"):
            raise ValueError(f"clip.resize must be 'stretch' or 'crop', got {self.resize!r}")
        if self.value_path not in ("residual", "v_only"):
            raise ValueError(f"clip.value_path must be 'residual' or 'v_only', got {self.value_path!r}")
        if self.precision not in ("auto", "fp32", "fp16"):
            raise ValueError(f"clip.precision must be auto, fp32 or fp16, got {self.precision!r}")
        self.image_size = tuple(int(v) for v in self.image_size)
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"clip.image_size must be [height, width] in pixels, got {list(self.image_size)}")

    @property
    def weights_id(self) -> str:
        """Identifies the weights for caches and checkpoints: the tag, or the file's name, size and a digest
        of its content (so the same file copied to another machine keeps its id, and two checkpoints that
        share a name and size do not share cached text embeddings)."""
        if self.pretrained and Path(self.pretrained).is_file():
            path = Path(self.pretrained)
            return f"file:{path.name}:{path.stat().st_size}:{_file_digest(path.resolve(), path.stat().st_mtime_ns)}"
        return f"tag:{self.pretrained}"


@functools.lru_cache(maxsize=16)
def _file_digest(path: Path, mtime_ns: int) -> str:
    """sha256 of a file's first and last MiB (weights differ throughout; hashing GBs at start-up would not
    pay), keyed by modification time so a rewritten file is hashed anew."""
    chunk = 1 << 20
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        digest.update(file.read(chunk))
        file.seek(max(0, path.stat().st_size - chunk))
        digest.update(file.read(chunk))
    return digest.hexdigest()[:16]


def _cached_weight_file(tag_cfg: dict, cache_dir: str | None) -> tuple[str | None, list[str]]:
    """The local file of a pretrained tag if already downloaded, and where we looked."""
    from huggingface_hub import try_to_load_from_cache

    looked = []
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        repo_id, filename = os.path.split(hub)
        for name in ([filename] if filename else list(_HF_WEIGHT_FILES)):
            found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
            looked.append(f"{repo_id}/{name} in the Hugging Face cache ({cache_dir or 'default location'})")
            if isinstance(found, str) and os.path.isfile(found):
                return found, looked
    url = tag_cfg.get("url", "")
    if url:
        path = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        looked.append(str(path))
        if path.is_file():
            return str(path), looked
    return None, looked


def resolve_weights(config: ClipConfig) -> tuple[str | None, dict]:
    """(checkpoint path or None for random weights, the tag's config). Raises ClipWeightsError."""
    if config.pretrained in (None, "", "none", "random"):
        return None, {}
    if Path(config.pretrained).expanduser().is_file():
        return str(Path(config.pretrained).expanduser()), {}
    name = config.model
    tag_cfg = open_clip.get_pretrained_cfg(name, config.pretrained)
    if not tag_cfg:
        if os.sep in config.pretrained or config.pretrained.endswith((".pt", ".bin", ".safetensors", ".pth")):
            raise ClipWeightsError(f"CLIP checkpoint file {config.pretrained} does not exist; set clip.pretrained "
                                   f"to an existing file or to a tag of {name}")
        raise ClipWeightsError(f"{config.pretrained!r} is neither a checkpoint file nor a pretrained tag of {name}; "
                               f"tags: {open_clip.list_pretrained_tags_by_model(name)}")
    path, looked = _cached_weight_file(tag_cfg, config.cache_dir)
    if path:
        return path, tag_cfg
    if not config.allow_download:
        raise ClipWeightsError(
            f"CLIP weights {name}/{config.pretrained} are not on this machine; looked for: " + "; ".join(looked) +
            ". Either set clip.allow_download: true once (on a machine with internet), copy the file into that "
            "cache, or set clip.pretrained to a local checkpoint file.")
    from open_clip.pretrained import download_pretrained
    return download_pretrained(tag_cfg, cache_dir=config.cache_dir), tag_cfg


def load_clip(config: ClipConfig, device: str | torch.device = "cpu"):
    """(open_clip model in eval mode on device, mean (3,), std (3,)) through open_clip's own loading code."""
    if config.model_config_dir:
        open_clip.add_model_config(config.model_config_dir)
    if open_clip.get_model_config(config.model) is None:
        raise UsageError(f"unknown CLIP model {config.model!r}; open_clip knows {len(open_clip.list_models())} models "
                         f"(open_clip.list_models()), plus configs in clip.model_config_dir")
    path, tag_cfg = resolve_weights(config)
    quick_gelu = tag_cfg.get("quick_gelu", False) if config.quick_gelu is None else config.quick_gelu
    model = open_clip.create_model(config.model, pretrained=path, force_quick_gelu=bool(quick_gelu), device=device,
                                   load_weights=path is not None)
    model.eval().requires_grad_(False)
    mean = tag_cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)
    std = tag_cfg.get("std", open_clip.OPENAI_DATASET_STD)
    return model, np.asarray(mean, np.float32), np.asarray(std, np.float32)


def resample_positional_embedding(positional: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1 + g*g, C) class + square-grid positions -> (1 + gh*gw, C) for another patch grid (bicubic)."""
    cls, spatial = positional[:1], positional[1:]
    side = int(round(len(spatial) ** 0.5))
    if side * side != len(spatial):
        raise ValueError(f"positional embedding of {len(spatial)} patches is not a square grid")
    if (side, side) == tuple(grid):
        return positional
    spatial = spatial.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    spatial = F.interpolate(spatial, size=grid, mode="bicubic", align_corners=False)
    return torch.cat([cls, spatial.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(positional.dtype)])


class DenseClipEncoder(torch.nn.Module):
    """CLIP's image tower run MaskCLIP-style: one D-dim feature per patch, in the joint image-text space.

    forward(images (B, 3, H, W), normalised) -> (B, D, H/p, W/p), L2-normalised along D.
    """

    def __init__(self, visual: torch.nn.Module, value_path: str = "residual"):
        super().__init__()
        blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
        if blocks is None or not isinstance(getattr(blocks[-1], "attn", None), torch.nn.MultiheadAttention):
            raise ValueError(f"dense features need an open_clip VisionTransformer with standard attention blocks; "
                             f"{type(visual).__name__} is not one")
        if getattr(visual, "attn_pool", None) is not None:
            raise ValueError("dense features are not defined for attention-pooled image towers (e.g. CoCa)")
        self.visual = visual
        self.value_path = value_path
        self.patch_size = tuple(visual.patch_size)
        self._positions: dict[tuple[int, int], torch.Tensor] = {}

    def _tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        visual = self.visual
        x = visual.conv1(images.to(visual.conv1.weight.dtype))
        grid = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        if grid not in self._positions:
            self._positions[grid] = resample_positional_embedding(visual.positional_embedding, grid)
        x = torch.cat([cls, x], dim=1) + self._positions[grid].to(x.dtype)
        return visual.ln_pre(visual.patch_dropout(x)), grid

    def _blocks(self, x: torch.Tensor, blocks) -> torch.Tensor:
        batch_first = getattr(self.visual.transformer, "batch_first", True)
        x = x if batch_first else x.transpose(0, 1)
        for block in blocks:
            x = block(x)
        return x if batch_first else x.transpose(0, 1)

    def _last_block_value_path(self, x: torch.Tensor) -> torch.Tensor:
        block = self.visual.transformer.resblocks[-1]
        attention = block.attn
        width = x.shape[-1]
        value = F.linear(block.ln_1(x), attention.in_proj_weight[2 * width:], attention.in_proj_bias[2 * width:])
        value = attention.out_proj(value)
        if self.value_path == "v_only":
            return value
        x = x + block.ls_1(value)
        return x + block.ls_2(block.mlp(block.ln_2(x)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.dense(*self.tokens(images))

    def tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """The tokens after every block but the last, and the patch grid: what dense() and pool() share."""
        x, grid = self._tokens(images)
        return self._blocks(x, self.visual.transformer.resblocks[:-1]), grid

    def dense(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """tokens() -> (B, D, gh, gw) unit dense features (the last block's value path)."""
        x = self._last_block_value_path(x)
        x = self.visual.ln_post(x[:, 1:]) @ self.visual.proj
        x = F.normalize(x.float(), dim=-1)
        return x.transpose(1, 2).reshape(x.shape[0], -1, *grid)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """tokens() -> (B, D) CLIP's image embedding, not normalised (the last block as trained)."""
        pooled, _ = self.visual._pool(self._blocks(x, self.visual.transformer.resblocks[-1:]))
        return pooled @ self.visual.proj

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """The ordinary CLIP image embedding (class token through every block), not normalised."""
        return self.pool(self.tokens(images)[0])
