"""Preview PNG: a grid of simulated images with the outlines of their ground-truth objects."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image
from skimage.segmentation import find_boundaries

from cellfcn import files

OUTLINE_RGB = (255, 64, 64)


def overlay_outlines(image, labels, color=OUTLINE_RGB):
    """Grey image in [0, 1] as RGB uint8 with the inner outlines of ``labels`` drawn in ``color``.

    Parameters
    ----------
    image : (H, W) float array in [0, 1]
    labels : (H, W) int or bool array
        Instance labels (0 background) or a binary mask.

    Returns
    -------
    rgb : (H, W, 3) uint8
    """
    grey = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    rgb[find_boundaries(np.asarray(labels, dtype=np.int32), mode="inner")] = color
    return rgb


def preview_grid(images, labels=None, columns=None, gap=4):
    """Tile images (with outlines when ``labels`` is given) into one RGB uint8 grid.

    Parameters
    ----------
    images : sequence of (H, W) float arrays in [0, 1], all the same shape
    labels : sequence of (H, W) label or mask arrays, optional
    columns : int, optional
        Default: ``ceil(sqrt(n))``.
    gap : int
        White pixels between tiles.
    """
    if len(images) == 0:
        raise ValueError("preview needs at least one image")
    height, width = images[0].shape
    columns = columns or int(math.ceil(math.sqrt(len(images))))
    rows = int(math.ceil(len(images) / columns))
    grid = np.full((rows * (height + gap) - gap, columns * (width + gap) - gap, 3), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        if labels is None:
            tile = np.repeat(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)[:, :, None], 3, axis=2)
        else:
            tile = overlay_outlines(image, labels[i])
        y, x = (i // columns) * (height + gap), (i % columns) * (width + gap)
        grid[y:y + height, x:x + width] = tile
    return grid


def save_png(path, rgb):
    """Write an RGB uint8 array to ``path`` atomically."""
    with files.atomic_file(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")
