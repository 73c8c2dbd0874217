"""Measurement-system model: defocus blur, illumination, autofluorescence, simplex background, noise, JPEG."""

from __future__ import annotations

import io
import math

import numpy as np
import opensimplex
from PIL import Image
from scipy import ndimage

from .texture import perlin_texture, resize

# Gaussian kernels are cut at this many sigmas (0.3% of the mass lies beyond).
BLUR_TRUNCATE = 3.0


def depth_sigmas(n, depth_std, sigma_range, rng):
    """Blur sigma per object from its focal depth ``|N(0, depth_std)|``.

    Depth 0 maps to ``sigma_range[0]``, depth 1 and beyond to ``sigma_range[1]``, linearly in between.

    Returns
    -------
    sigmas : (n,) float64
    """
    depth = np.abs(rng.normal(0.0, depth_std, size=n)) if depth_std > 0 else np.zeros(n)
    low, high = sigma_range
    return low + (high - low) * np.minimum(depth, 1.0)


def blur_pad(sigma):
    """Pixels a Gaussian of this sigma spreads beyond an object's patch."""
    return int(math.ceil(BLUR_TRUNCATE * sigma))


def gaussian_kernel(sigma):
    """Normalised 1-D Gaussian of ``sigma`` cut at ``BLUR_TRUNCATE`` sigmas (odd length)."""
    pad = blur_pad(sigma)
    x = np.arange(-pad, pad + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def add_blurred(canvas, patch, origin, sigma):
    """Add ``patch`` blurred by its own Gaussian ``sigma`` into ``canvas`` at ``origin`` (in place).

    Blurring each object's patch separately before the sum is the spatially varying blur: the sum of
    the blurred objects equals blurring the ideal image with each object's own kernel. ``canvas`` must
    have room for ``blur_pad(sigma)`` pixels around the patch.
    """
    pad = blur_pad(sigma) if sigma > 0 else 0
    padded = np.zeros((patch.shape[0] + 2 * pad, patch.shape[1] + 2 * pad), dtype=canvas.dtype)
    padded[pad:pad + patch.shape[0], pad:pad + patch.shape[1]] = patch
    if sigma > 0:
        kernel = gaussian_kernel(sigma)
        padded = ndimage.correlate1d(padded, kernel, axis=0, mode="constant")
        padded = ndimage.correlate1d(padded, kernel, axis=1, mode="constant")
    y, x = origin[0] - pad, origin[1] - pad
    canvas[y:y + padded.shape[0], x:x + padded.shape[1]] += padded


def illumination_field(shape, max_shift, rng):
    """Radial bowl ``1 - (X^2 + Y^2) / max`` brightest at a centre shifted by up to ``max_shift`` x size.

    Returns
    -------
    field : float64 ndarray of ``shape`` in [0, 1]
    """
    height, width = shape
    centre = (np.array([height - 1, width - 1]) / 2.0
              + rng.uniform(-max_shift, max_shift, size=2) * np.array([height, width]))
    # Normalised coordinates keep the bowl round on non-square images.
    scale = max(height, width)
    y = ((np.arange(height) - centre[0]) / scale) ** 2
    x = ((np.arange(width) - centre[1]) / scale) ** 2
    r2 = y[:, None] + x[None, :]
    return 1.0 - r2 / r2.max()


def autofluorescence(shape, texture_params, rng):
    """Whole-image texture of the background autofluorescence, in [b, 1]."""
    return perlin_texture(shape, *texture_params, rng).astype(np.float64)


def energy_matched(field, reference_energy, scale):
    """``field`` scaled so its energy (sum of squares) is ``scale * reference_energy``."""
    energy = float(np.sum(np.square(field, dtype=np.float64)))
    if energy == 0.0 or reference_energy == 0.0 or scale == 0.0:
        return np.zeros_like(field, dtype=np.float64)
    return field * math.sqrt(scale * reference_energy / energy)


def simplex_field(shape, feature_fraction, rng, octaves=2, points_per_feature=3):
    """Smooth multi-octave OpenSimplex noise normalised to [0, 1].

    Octave k has feature length ``feature / 2**k`` and weight ``1 / 2**k``. Each octave is evaluated
    on its own coarse grid (``points_per_feature`` samples per feature length) and interpolated with
    cubic splines: pure-Python ``noise2array`` costs ~10 us a point, and the noise is smooth at that
    scale.

    Parameters
    ----------
    shape : (int, int)
    feature_fraction : float
        Feature length of the first octave as a fraction of the larger image side.
    rng : numpy.random.Generator
        Draws the OpenSimplex seed and the offset into the noise plane.
    """
    height, width = shape
    noise = opensimplex.OpenSimplex(seed=int(rng.integers(2 ** 31)))
    offset = rng.uniform(0.0, 1000.0, size=2)
    field = np.zeros(shape)
    for octave in range(octaves):
        feature = feature_fraction * max(height, width) / 2 ** octave
        rows = max(4, int(math.ceil(points_per_feature * (height - 1) / feature)) + 1)
        cols = max(4, int(math.ceil(points_per_feature * (width - 1) / feature)) + 1)
        # Sample at the centres of a rows x cols tiling of the image, as ``resize`` assumes.
        ys = ((np.arange(rows) + 0.5) * height / rows - 0.5) / feature + offset[0] * 2 ** octave
        xs = ((np.arange(cols) + 0.5) * width / cols - 0.5) / feature + offset[1] * 2 ** octave
        field += resize(noise.noise2array(xs, ys), shape, 3) / 2 ** octave
    low, high = field.min(), field.max()
    return (field - low) / (high - low) if high > low else np.zeros(shape)


def ccd_noise(image, variance, rng):
    """Add Gaussian noise of ``variance``; the result is clipped to [0, 1] (float32)."""
    image = image.astype(np.float32)
    if variance > 0:
        image += np.float32(math.sqrt(variance)) * rng.standard_normal(size=image.shape, dtype=np.float32)
    return np.clip(image, 0.0, 1.0, out=image)


def jpeg_artefacts(image, comp):
    """Round-trip an image in [0, 1] through 8-bit JPEG at quality ``round(100 * (1 - comp))``."""
    if comp <= 0:
        return image
    quality = max(1, int(round(100 * (1 - comp))))
    buffer = io.BytesIO()
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return np.asarray(Image.open(buffer), dtype=np.float32) / np.float32(255.0)
