"""Per-image robust intensity normalisation to float32 in [0, 1]."""

import numpy as np

from cellfcn.constants import PCT_HIGH, PCT_LOW
from cellfcn.errors import InputError


def normalize_percentile(image, low=PCT_LOW, high=PCT_HIGH, name="image"):
    """Map the ``low`` and ``high`` intensity percentiles of an image to 0 and 1, clipping outside.

    Percentiles rather than min/max make the result insensitive to a few hot or dead pixels, and
    per-image scaling removes exposure and bit-depth differences (8-bit, 12-bit in 16-bit...) between
    sources. If the two percentiles coincide (a nearly flat image with a few bright objects), min and
    max are used instead.

    Parameters
    ----------
    image : (H, W) array of any real dtype
    low, high : float
        Percentiles, ``0 <= low < high <= 100``.
    name : str
        Used in error messages.

    Returns
    -------
    (H, W) float32 in [0, 1]

    Raises
    ------
    InputError
        NaN or infinite values, or a constant image.
    """
    if not 0 <= low < high <= 100:
        raise InputError(f"percentiles must satisfy 0 <= low < high <= 100, got {low}, {high}")
    x = np.asarray(image, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise InputError(f"{name}: image contains NaN or infinite values")
    lo, hi = np.percentile(x, [low, high])
    if hi <= lo:
        lo, hi = x.min(), x.max()
    if hi <= lo:
        raise InputError(f"{name}: constant image (every pixel is {lo:g})")
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
