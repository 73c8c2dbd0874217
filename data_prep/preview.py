"""A PNG grid of random patches with their mask outlines, to look at a dataset."""

import numpy as np
from PIL import Image
from skimage.segmentation import find_boundaries

from cellfcn.files import atomic_file

OUTLINE_RGB = (255, 60, 60)


def preview_grid(data, label, rng, n=24, columns=6, gap=4):
    """Tile ``n`` random patches (gray) into an RGB grid, cell outlines in red.

    Parameters
    ----------
    data : (N, P, P) float in [0, 1]
    label : (N, P, P) {0, 1}
    rng : numpy.random.Generator
    n, columns, gap : int
        Patches shown (at most N), patches per row, white gap in pixels.

    Returns
    -------
    (H, W, 3) uint8
    """
    pick = np.sort(rng.choice(len(data), size=min(n, len(data)), replace=False))
    p = data.shape[-1]
    rows = -(-len(pick) // columns)
    grid = np.full((rows * (p + gap) - gap, columns * (p + gap) - gap, 3), 255, dtype=np.uint8)
    for slot, i in enumerate(pick):
        gray = (np.clip(data[i], 0, 1) * 255).round().astype(np.uint8)
        rgb = np.repeat(gray[..., None], 3, axis=-1)
        rgb[find_boundaries(label[i] > 0, mode="inner")] = OUTLINE_RGB
        y, x = divmod(slot, columns)
        grid[y * (p + gap):y * (p + gap) + p, x * (p + gap):x * (p + gap) + p] = rgb
    return grid


def write_preview(path, data, label, seed, scale=2):
    """Write :func:`preview_grid` of ``data``/``label`` to ``path`` (PNG), upscaled ``scale`` x (nearest),
    atomically (:func:`cellfcn.files.atomic_file`)."""
    grid = preview_grid(data, label, np.random.default_rng(seed))
    grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
    with atomic_file(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
