"""Perlin-style textures: octaves of smoothed random grids, weighted by persistence and summed."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage

# Octave grids up to this size are upsampled bilinearly, finer ones bicubically (cubic spline).
_BILINEAR_MAX_OCTAVE = 3


@lru_cache(maxsize=256)
def _cubic_matrix(n_in, n_out):
    """(n_out, n_in) matrix of ``scipy.ndimage.zoom(order=3, mode="reflect", grid_mode=True)`` along one
    axis. Spline interpolation is linear and separable, so two products with these matrices equal
    ``zoom`` of a whole batch, much faster than ``zoom`` itself on small 3-D arrays."""
    matrix = ndimage.zoom(np.eye(n_in), (n_out / n_in, 1.0), order=3, mode="reflect", grid_mode=True)
    matrix.setflags(write=False)
    return matrix


@lru_cache(maxsize=256)
def _linear_taps(n_in, n_out):
    """Left index, right index and right weight of pixel-area aligned linear interpolation."""
    x = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    left = np.floor(x).astype(np.intp)
    right = np.minimum(left + 1, n_in - 1)
    return left, right, x - left


def _linear_axis(array, n_out, axis):
    left, right, weight = _linear_taps(array.shape[axis], n_out)
    shape = [1] * array.ndim
    shape[axis] = n_out
    weight = weight.reshape(shape).astype(array.dtype if array.dtype.kind == "f" else np.float64)
    return np.take(array, left, axis=axis) * (1 - weight) + np.take(array, right, axis=axis) * weight


def resize(grids, shape, order):
    """Resize the last two axes of ``grids`` to ``shape`` with linear (``order=1``) or cubic-spline
    (``order=3``) interpolation, equal to ``scipy.ndimage.zoom(..., mode="reflect", grid_mode=True)``."""
    if grids.shape[-2:] == tuple(shape):
        return grids
    if order == 1:
        return _linear_axis(_linear_axis(grids, shape[0], grids.ndim - 2), shape[1], grids.ndim - 1)
    # einsum rather than matmul: these products are small, and a multi-threaded BLAS spends far longer
    # waking its threads than computing them (100x slower on a loaded 2-core machine).
    rows = _cubic_matrix(grids.shape[-2], shape[0])
    cols = _cubic_matrix(grids.shape[-1], shape[1])
    return np.einsum("...ik,jk->...ij", np.einsum("ik,...kj->...ij", rows, grids), cols)


def perlin_texture(shape, persistence, n1, n2, base, rng, n=None):
    """Textures in ``[base, 1]`` from octaves ``k = n1 .. n1 + n2 - 1``.

    Octave k is a ``2**k x 2**k`` grid of uniform random values, smoothed by a 3x3 mean filter,
    interpolated to ``shape`` and weighted by ``persistence**k``. The sum is normalised to [0, 1]
    per texture, then mapped to ``base + (1 - base) * t``. A grid is never made finer than
    ``shape`` itself: finer octaves would only be subsampled again.

    Parameters
    ----------
    shape : (int, int)
        Texture size (rows, columns).
    persistence : float
        Octave weight base p in (0, 1].
    n1, n2 : int
        First octave and number of octaves.
    base : float
        Lowest texture value b in [0, 1].
    rng : numpy.random.Generator
    n : int, optional
        Number of independent textures; ``None`` returns a single 2-D texture.

    Returns
    -------
    texture : float32 ndarray, ``shape`` or ``(n,) + shape``
    """
    count = 1 if n is None else n
    total = np.zeros((count,) + tuple(shape), dtype=np.float64)
    for k in range(n1, n1 + n2):
        grid_shape = tuple(min(2 ** k, s) for s in shape)
        grids = rng.random((count,) + grid_shape)
        grids = ndimage.uniform_filter(grids, size=(1, 3, 3), mode="reflect")
        total += persistence ** k * resize(grids, shape, 1 if k <= _BILINEAR_MAX_OCTAVE else 3)
    low = total.min(axis=(1, 2), keepdims=True)
    span = total.max(axis=(1, 2), keepdims=True) - low
    normalised = (total - low) / np.where(span > 0, span, 1.0)
    texture = (base + (1.0 - base) * normalised).astype(np.float32)
    return texture[0] if n is None else texture
