"""A tiny CLIP built from a custom open_clip config, loaded through the project's real loading code."""

import json
from pathlib import Path

import open_clip
import torch

TINY_MODEL = "clip2scene-tiny-test"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def write_tiny_clip(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """(config folder, checkpoint file) of a randomly initialised tiny CLIP."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{TINY_MODEL}.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(folder)
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_MODEL, pretrained=None)
    checkpoint = folder / "tiny.pt"
    torch.save(model.state_dict(), checkpoint)
    return folder, checkpoint
