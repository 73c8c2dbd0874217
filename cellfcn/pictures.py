"""Pictures of images with their nuclei outlined: one overlay and one grid for every preview and output PNG."""
import math

import numpy as np
from PIL import Image
from skimage.segmentation import find_boundaries

from cellfcn import files

#: Outline colours: what a method found, and the ground truth beside it.
FOUND_RGB = (255, 40, 40)
TRUTH_RGB = (0, 220, 0)


def overlay_outlines(image, labels, truth=None):
    """Grey image as RGB with the inner outline of every instance of ``labels`` in red and, optionally, of the
    ``truth`` labels in green (drawn first, so red wins where both lie).

    Parameters
    ----------
    image : (H, W) array_like of float in [0, 1]
    labels : (H, W) array_like of int or bool
        Instance labels (0 background; touching instances show their shared border) or a binary mask.
    truth : (H, W) array_like of int or bool, optional

    Returns
    -------
    (H, W, 3) ndarray of uint8
    """
    grey = np.round(np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0) * 255).astype(np.uint8)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    if truth is not None:
        rgb[find_boundaries(np.asarray(truth, dtype=np.int32), mode="inner")] = TRUTH_RGB
    rgb[find_boundaries(np.asarray(labels, dtype=np.int32), mode="inner")] = FOUND_RGB
    return rgb


def preview_grid(images, labels, columns=None, gap=4):
    """Tile images, each with its outlines (:func:`overlay_outlines`), into one RGB grid on white.

    Parameters
    ----------
    images : sequence of (H, W) float arrays in [0, 1], all the same shape
    labels : sequence of (H, W) label or mask arrays, one per image
    columns : int, optional
        Default: ``ceil(sqrt(n))``.
    gap : int
        White pixels between tiles.

    Returns
    -------
    (rows * (H + gap) - gap, columns * (W + gap) - gap, 3) ndarray of uint8
    """
    if len(images) == 0:
        raise ValueError("a preview needs at least one image")
    height, width = np.shape(images[0])
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    grid = np.full((rows * (height + gap) - gap, columns * (width + gap) - gap, 3), 255, dtype=np.uint8)
    for i, (image, label) in enumerate(zip(images, labels)):
        y, x = (i // columns) * (height + gap), (i % columns) * (width + gap)
        grid[y:y + height, x:x + width] = overlay_outlines(image, label)
    return grid


def write_png(path, rgb):
    """Write an RGB uint8 array to ``path`` as PNG, atomically (:func:`cellfcn.files.atomic_file`)."""
    with files.atomic_file(path) as tmp:
        Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(tmp, format="PNG")
