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


def depth_groups(coverage, masks, origins):
    """Group index per object: objects whose pixels touch (8-connected) share a group.

    Parameters
    ----------
    coverage : (H, W) bool
        Union of the object masks on a canvas that holds every mask whole.
    masks : sequence of bool ndarray
        Object masks in their frames.
    origins : sequence of (int, int)
        Canvas coordinates of each frame's top-left pixel.

    Returns
    -------
    groups : (n,) intp
        Group indices 0..g-1.
    """
    labels, _ = ndimage.label(coverage, structure=np.ones((3, 3), dtype=bool))
    # An object is connected, so any one of its pixels names its component (0 for an empty mask).
    first = [divmod(int(np.argmax(m)), m.shape[1]) for m in masks]
    component = [labels[y + r, x + c] if m.any() else 0 for m, (y, x), (r, c) in zip(masks, origins, first)]
    return np.unique(np.asarray(component, dtype=np.intp), return_inverse=True)[1].reshape(-1)


def depth_sigmas(groups, depth_std, sigma_range, relative, rng):
    """Blur sigma per object from the focal depth ``|N(0, depth_std)|`` of its group.

    With ``relative`` the depths are divided by the largest one drawn (SIMCEP), so the deepest group
    gets ``sigma_range[1]``; otherwise depths beyond 1 are clipped to 1. Depth 0 maps to
    ``sigma_range[0]``, linearly in between.

    Parameters
    ----------
    groups : (n,) int array
        Group index of each object, 0..g-1 (``arange(n)`` for one depth per object).
    depth_std : float
    sigma_range : (float, float)
    relative : bool
    rng : numpy.random.Generator

    Returns
    -------
    sigmas : (n,) float64
    """
    groups = np.asarray(groups, dtype=np.intp)
    n_groups = int(groups.max()) + 1 if groups.size else 0
    depth = np.abs(rng.normal(0.0, depth_std, size=n_groups)) if depth_std > 0 else np.zeros(n_groups)
    if relative:
        deepest = depth.max(initial=0.0)
        depth = depth / deepest if deepest > 0 else depth
    else:
        depth = np.minimum(depth, 1.0)
    low, high = sigma_range
    return low + (high - low) * depth[groups]


def blur_pad(sigma, window=0):
    """Pixels a blur kernel spreads beyond an object's patch: half the window, or
    ``BLUR_TRUNCATE`` sigmas of a full Gaussian when ``window`` is 0."""
    return window // 2 if window else int(math.ceil(BLUR_TRUNCATE * sigma))


def gaussian_kernel(sigma, window=0):
    """Normalised 1-D Gaussian of ``sigma`` sampled on ``window`` pixels (odd), or cut at
    ``BLUR_TRUNCATE`` sigmas when ``window`` is 0. A window narrower than the Gaussian caps its spread.
    Sigma 0 gives the identity ``[1.0]``."""
    if sigma <= 0:
        return np.ones(1)
    pad = blur_pad(sigma, window)
    x = np.arange(-pad, pad + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def kernel_spread(kernel):
    """Standard deviation in pixels of a normalised, centred 1-D kernel: its effective sigma."""
    x = np.arange(kernel.size) - kernel.size // 2
    return float(np.sqrt(np.sum(kernel * x ** 2)))


def add_blurred(canvas, patch, origin, kernel):
    """Add ``patch`` blurred by its own separable ``kernel`` into ``canvas`` at ``origin`` (in place).

    Blurring each object's patch separately before the sum is the spatially varying blur: the sum of
    the blurred objects equals blurring the ideal image with each object's own kernel. ``kernel`` is
    1-D, odd-sized and applied along both axes (e.g. :func:`gaussian_kernel`); ``canvas`` must have room
    for half its size around the patch.
    """
    pad = kernel.size // 2
    padded = np.zeros((patch.shape[0] + 2 * pad, patch.shape[1] + 2 * pad), dtype=canvas.dtype)
    padded[pad:pad + patch.shape[0], pad:pad + patch.shape[1]] = patch
    if kernel.size > 1:
        padded = ndimage.correlate1d(padded, kernel, axis=0, mode="constant")
        padded = ndimage.correlate1d(padded, kernel, axis=1, mode="constant")
    y, x = origin[0] - pad, origin[1] - pad
    canvas[y:y + padded.shape[0], x:x + padded.shape[1]] += padded


def illumination_field(shape, max_shift, rng):
    """Radial bowl ``1 - (X^2 + Y^2) / max`` brightest at the image centre shifted at random by up to
    ``max_shift`` x size (0: centred, SIMCEP's default of no misalignment).

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
    """Round-trip an image in [0, 1] through 8-bit JPEG at quality ``round(100 * (1 - comp))``.

    Returns
    -------
    float32 ndarray in [0, 1], multiples of 1/255 (the decoded 8-bit values / 255)
    """
    quality = max(1, int(round(100 * (1 - comp))))
    buffer = io.BytesIO()
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return np.asarray(Image.open(buffer), dtype=np.float32) / np.float32(255.0)
