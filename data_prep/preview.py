"""A PNG grid of random patches with their mask outlines, to look at a dataset."""

import numpy as np

from cellfcn.pictures import preview_grid, write_png


def write_preview(path, data, label, seed, n=24, columns=6, scale=2):
    """Write a grid (:func:`cellfcn.pictures.preview_grid`) of ``n`` random patches with their mask outlines to
    ``path`` (PNG), upscaled ``scale`` x (nearest).

    Parameters
    ----------
    data : (N, P, P) float in [0, 1]
    label : (N, P, P) {0, 1}
    seed : int
        Picks the patches.
    """
    pick = np.sort(np.random.default_rng(seed).choice(len(data), size=min(n, len(data)), replace=False))
    grid = preview_grid(data[pick], label[pick] > 0, columns=columns)
    write_png(path, np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1))
