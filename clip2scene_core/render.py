"""Pictures for people: points drawn over camera images, coloured by depth or by label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .frame import Camera, Frame
from .geometry import project

UNLABELLED_COLOR = (0, 0, 0)


def depth_colors(depth: np.ndarray, near_m: float = 2.0, far_m: float = 60.0) -> np.ndarray:
    """(N,) metres -> (N, 3) uint8, near red through yellow and green to far blue (log scale)."""
    t = np.clip((np.log(np.maximum(depth, near_m)) - np.log(near_m)) / (np.log(far_m) - np.log(near_m)), 0, 1)
    # A four-stop ramp: red (0) -> yellow (1/3) -> green (2/3) -> blue (1).
    stops = np.array([[230, 30, 30], [240, 220, 40], [40, 200, 80], [40, 90, 230]], dtype=np.float64)
    position = t * (len(stops) - 1)
    low = np.minimum(position.astype(int), len(stops) - 2)
    fraction = (position - low)[:, None]
    return (stops[low] * (1 - fraction) + stops[low + 1] * fraction).astype(np.uint8)


def palette_colors(values: np.ndarray, palette: dict[int, tuple[int, int, int]]) -> np.ndarray:
    """(N,) integer values -> (N, 3) uint8 through palette; values missing from it get a stable
    pseudo-random colour so that distinct ids stay distinguishable."""
    values = np.asarray(values, dtype=np.int64)
    unique, inverse = np.unique(values, return_inverse=True)
    table = np.empty((len(unique), 3), dtype=np.uint8)
    for i, value in enumerate(unique):
        if int(value) in palette:
            table[i] = palette[int(value)]
        else:
            table[i] = np.random.default_rng(int(value) % (2**32)).integers(40, 256, 3)
    return table[inverse.ravel()]


def draw_points(image: np.ndarray, uv: np.ndarray, colors: np.ndarray, radius: int = 1) -> np.ndarray:
    """A copy of image (H, W, 3) uint8 with square dots of side 2 * radius + 1 at uv (N, 2)."""
    canvas = image.copy()
    height, width = canvas.shape[:2]
    cols = np.floor(uv[:, 0] + 0.5).astype(np.int64)
    rows = np.floor(uv[:, 1] + 0.5).astype(np.int64)
    for dr in range(-radius, radius + 1):
        for dc in range(-radius, radius + 1):
            r, c = rows + dr, cols + dc
            inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
            canvas[r[inside], c[inside]] = colors[inside]
    return canvas


def overlay(camera: Camera, points: np.ndarray, colors: np.ndarray | None = None, radius: int = 1) -> np.ndarray:
    """The camera image with the points that project into it; colored by depth unless colors (N, 3) given."""
    projection = project(points, camera)
    valid = projection.valid
    # Far points first, so near ones stay visible on top.
    order = np.argsort(-projection.depth[valid])
    uv = projection.uv[valid][order]
    chosen = depth_colors(projection.depth[valid]) if colors is None else colors[valid]
    return draw_points(camera.image, uv, chosen[order], radius=radius)


def mosaic(images: list[np.ndarray], columns: int = 3, width: int = 640) -> np.ndarray:
    """Tile images (each scaled to `width` pixels wide) in rows of `columns`."""
    if not images:
        raise ValueError("mosaic needs at least one image")
    scaled = [np.asarray(Image.fromarray(img).resize((width, max(1, round(img.shape[0] * width / img.shape[1])))))
              for img in images]
    cell_height = max(img.shape[0] for img in scaled)
    columns = min(columns, len(scaled))
    rows = (len(scaled) + columns - 1) // columns
    canvas = np.zeros((rows * cell_height, columns * width, 3), dtype=np.uint8)
    for i, img in enumerate(scaled):
        r, c = divmod(i, columns)
        canvas[r * cell_height:r * cell_height + img.shape[0], c * width:(c + 1) * width] = img
    return canvas


def render_frame(frame: Frame, color_by: str = "depth", palette: dict[int, tuple[int, int, int]] | None = None,
                 values: np.ndarray | None = None, radius: int = 1) -> np.ndarray:
    """One picture of a frame: its points over every camera image.

    color_by: "depth", or "label" (the frame's raw labels, or `values` (N,) when given, through palette).
    A frame without cameras is drawn from above (bird's eye view).
    """
    if color_by not in ("depth", "label"):
        raise ValueError(f"color_by must be 'depth' or 'label', got {color_by!r}")
    colors = None
    if color_by == "label":
        labels = values if values is not None else frame.labels
        if labels is None:
            raise ValueError(f"frame {frame.name!r} has no labels to colour by; use color_by='depth'")
        colors = palette_colors(labels, palette or {})
    if not frame.cameras:
        return birds_eye_view(frame.points, colors)
    return mosaic([overlay(camera, frame.points, colors, radius) for camera in frame.cameras])


def birds_eye_view(points: np.ndarray, colors: np.ndarray | None = None, range_m: float = 50.0,
                   size_px: int = 800) -> np.ndarray:
    """Top-down picture of (N, 3) points within range_m of the origin, x up, y left."""
    canvas = np.full((size_px, size_px, 3), 20, dtype=np.uint8)
    scale = size_px / (2 * range_m)
    if colors is None:
        colors = depth_colors(np.linalg.norm(points[:, :2], axis=1))
    uv = np.stack([size_px / 2 - points[:, 1] * scale, size_px / 2 - points[:, 0] * scale], axis=1)
    return draw_points(canvas, uv, colors, radius=0)


def save_png(path: str | Path, image: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path
