"""One SIMCEP simulation: place cells, texture them, then degrade the ideal image by the measurement model."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np

from . import measurement
from .params import SimcepParams
from .placement import frame_half, place_cells
from .shapes import frame_half_size
from .texture import perlin_texture, resize

# Independent random streams, so switching one stage (e.g. the simplex background or the target channel)
# leaves every other stage's draws unchanged.
_STREAMS = ("placement", "texture", "blur", "measurement", "simplex")
# Largest side of the grid on which the smooth background fields are computed.
BACKGROUND_SIDE = 128


@dataclass
class Simulation:
    """Result of :func:`simulate`.

    Attributes
    ----------
    image : (H, W) float32 in [0, 1]
        The simulated microscope image of the channel chosen by ``params.target``. With
        ``params.jpeg_output`` (the default, as SIMCEP) it is the decoded 8-bit JPEG divided by 255:
        every value is a multiple of 1/255 and ``np.round(image * 255).astype(np.uint8)`` is lossless.
        Otherwise it is the unquantised noisy image.
    mask : (H, W) bool
        Binary ground truth of the target (``nuclei_mask`` or ``cell_mask``).
    nuclei_mask, cell_mask : (H, W) bool
        Union of the nuclei, and of the whole cells (cytoplasm and nucleus).
    nuclei_labels, cell_labels : (H, W) int32
        Instance labels 1..n (0 background); an overlapped pixel belongs to the later-placed cell.
    features : list of dict
        One dict per placed cell: ``label``, ``centroid`` (row, col) and ``area`` (pixels) of the target
        object, the same for ``nucleus_*`` and ``cell_*``, ``cluster`` (-1 when placed uniformly) and
        the defocus ``sigma``. Areas and centroids are of each full shape inside the image, counting
        overlapped pixels for both objects. ``blur_group`` numbers the group of touching objects that
        shares one defocus depth, ``blur_spread`` is the standard deviation (px) of the blur kernel
        actually applied, at most the window's cap.
    objects : list of CellObject
        The placed cells with their full masks (for measuring overlaps).
    params : SimcepParams
    seed : int
    n_cells : int
        Cells requested; ``len(features)`` were placed.
    simplex_background : bool
    """

    image: np.ndarray
    mask: np.ndarray
    nuclei_mask: np.ndarray
    cell_mask: np.ndarray
    nuclei_labels: np.ndarray
    cell_labels: np.ndarray
    features: list
    objects: list = field(repr=False)
    params: SimcepParams
    seed: int
    n_cells: int
    simplex_background: bool

    @property
    def cell_fraction(self):
        """Fraction of image pixels in the target mask."""
        return float(self.mask.mean())


def check_inputs(shape, n_cells, seed):
    """Raise ``ValueError`` unless ``shape``, ``n_cells`` and ``seed`` are valid for :func:`simulate`."""
    if not (isinstance(shape, (tuple, list)) and len(shape) == 2
            and all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in shape)):
        raise ValueError(f"shape must be (height, width) integers, got {shape!r}")
    if not all(16 <= s <= 16384 for s in shape):
        raise ValueError(f"image sides must be in [16, 16384] px, got {tuple(shape)}")
    if not isinstance(n_cells, numbers.Integral) or isinstance(n_cells, bool) or n_cells < 0:
        raise ValueError(f"n_cells must be an integer >= 0, got {n_cells!r}")
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")


def _paste_labels(labels, masks, origins, offset):
    """Write instance labels 1..n into ``labels`` in order (later cells win overlapped pixels)."""
    for label, (mask, origin) in enumerate(zip(masks, origins), start=1):
        y, x = origin[0] + offset, origin[1] + offset
        window = labels[y:y + mask.shape[0], x:x + mask.shape[1]]
        window[mask] = label


def _crop_to_mask(mask):
    """Row and column slices of the bounding box of ``mask``."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _region_stats(mask, origin, shape):
    """Area and centroid of a frame mask clipped to an image of ``shape``."""
    y0, x0 = max(origin[0], 0), max(origin[1], 0)
    y1 = min(origin[0] + mask.shape[0], shape[0])
    x1 = min(origin[1] + mask.shape[1], shape[1])
    clipped = mask[y0 - origin[0]:y1 - origin[0], x0 - origin[1]:x1 - origin[1]]
    rows, cols = clipped.sum(axis=1), clipped.sum(axis=0)
    area = int(rows.sum())
    if area == 0:
        return 0, (float("nan"), float("nan"))
    return area, (float(rows @ np.arange(y0, y1)) / area, float(cols @ np.arange(x0, x1)) / area)


def _features(cells, sigmas, groups, spreads, shape, target):
    features = []
    for cell, sigma, group, spread in zip(cells, sigmas, groups, spreads):
        n_area, n_centroid = _region_stats(cell.nucleus, cell.origin, shape)
        c_area, c_centroid = _region_stats(cell.cell, cell.origin, shape)
        area, centroid = (n_area, n_centroid) if target == "nuclei" else (c_area, c_centroid)
        features.append({"label": cell.label, "centroid": centroid, "area": area,
                         "nucleus_centroid": n_centroid, "nucleus_area": n_area,
                         "cell_centroid": c_centroid, "cell_area": c_area,
                         "cluster": cell.cluster, "sigma": float(sigma), "blur_group": int(group),
                         "blur_spread": spread})
    return features


def _object_textures(cells, params, rng):
    """Per-object textures of the target channel, sized to the object.

    Returns the textures, padded to the object's own frame (``frame_half_size``), and that frame's
    half-size. The octave grids span the object's nominal extent ``2 r (1 + alpha)``, as the texture is
    "interpolated to the object's size"; the rest of the frame (rarely inside an object) is filled by
    reflection.
    """
    if params.target == "nuclei":
        radius, (alpha, _), texture = params.nucleus_radius, params.nucleus_shape, params.nucleus_texture
    else:
        radius, (alpha, _), texture = params.cytoplasm_radius, params.cytoplasm_shape, params.cytoplasm_texture
    extent = int(np.ceil(radius * (1 + alpha)))
    textures = perlin_texture((2 * extent + 1, 2 * extent + 1), *texture, rng, n=len(cells))
    half = frame_half_size(radius, alpha)
    return np.pad(textures, ((0, 0), (half - extent, half - extent), (half - extent, half - extent)),
                  mode="reflect"), half


def _render_channel(cells, masks, params, shape, half, rng):
    """Sharp textured objects, intensity divided by the overlap count, each blurred by its group's sigma.

    Returns
    -------
    layer : (H, W) float32
        The blurred objects.
    sharp_energy : float
        Sum of squares of the objects before the blur.
    sigmas : (n,) float64
        Blur sigma per object.
    groups : (n,) intp
        Defocus group per object.
    spreads : list of float
        Standard deviation of each object's blur kernel (its effective sigma).
    """
    height, width = shape
    window = params.blur_window
    offset = half + measurement.blur_pad(params.blur_sigma_range[1], window)
    canvas = np.zeros((height + 2 * offset, width + 2 * offset), dtype=np.float32)
    sharp = np.zeros_like(canvas)
    count = np.zeros(canvas.shape, dtype=np.int32)
    origins = [(cell.origin[0] + offset, cell.origin[1] + offset) for cell in cells]
    for (y, x), mask in zip(origins, masks):
        count[y:y + mask.shape[0], x:x + mask.shape[1]] += mask
    groups = (measurement.depth_groups(count > 0, masks, origins) if params.blur_per_group
              else np.arange(len(cells)))
    sigmas = measurement.depth_sigmas(groups, params.blur_depth_std, params.blur_sigma_range,
                                      params.blur_relative_depth, rng["blur"])
    textures, texture_half = _object_textures(cells, params, rng["texture"])
    shift = half - texture_half  # frame of the masks -> frame of the textures (same centre)
    kernels = [measurement.gaussian_kernel(sigma, window) for sigma in sigmas]
    for (y, x), mask, texture, kernel in zip(origins, masks, textures, kernels):
        rows, cols = _crop_to_mask(mask)
        y, x = y + rows.start, x + cols.start
        sub = mask[rows, cols]
        overlaps = count[y:y + sub.shape[0], x:x + sub.shape[1]]
        tex = texture[rows.start - shift:rows.stop - shift, cols.start - shift:cols.stop - shift]
        patch = np.where(sub, tex / np.maximum(overlaps, 1), 0.0)
        sharp[y:y + sub.shape[0], x:x + sub.shape[1]] += patch
        measurement.add_blurred(canvas, patch, (y, x), kernel)
    inside = (slice(offset, offset + height), slice(offset, offset + width))
    sharp_energy = float(np.sum(np.square(sharp[inside], dtype=np.float64)))
    return canvas[inside], sharp_energy, sigmas, groups, [measurement.kernel_spread(k) for k in kernels]


def _background(shape, cell_energy, params, rng):
    """Illumination bowl plus autofluorescence texture, energy-matched to the cells.

    Both are smooth, so they are computed on a grid of at most ``BACKGROUND_SIDE`` px a side (or the
    finest octave of the background texture, if finer) and the caller upsamples the sum once. Energies
    scale with the pixel count, so matching on the coarse grid uses the cell energy per pixel.
    """
    finest = 2 ** (params.background_texture[1] + params.background_texture[2] - 1)
    coarse = tuple(min(s, max(BACKGROUND_SIDE, finest)) for s in shape)
    reference = cell_energy * (coarse[0] * coarse[1]) / (shape[0] * shape[1])
    illum = measurement.illumination_field(coarse, params.illum_shift, rng)
    autofluor = measurement.autofluorescence(coarse, params.background_texture, rng)
    return (measurement.energy_matched(illum, reference, params.illumscale)
            + measurement.energy_matched(autofluor, reference, params.autofluorscale))


def simulate(shape, n_cells, seed, params=None, simplex_background=False):
    """Simulate one fluorescence microscope image of a cell population with its ground truth.

    Parameters
    ----------
    shape : (int, int)
        Image height and width in pixels.
    n_cells : int
        Cells to place; a cell that cannot be placed within ``params.max_tries`` attempts is dropped.
    seed : int
        Seed of every random draw; the same seed and parameters give identical arrays.
    params : SimcepParams, optional
        Defaults to ``SimcepParams()``.
    simplex_background : bool
        Add the report's simplex-noise background (non-uniform illumination). It has its own random
        stream: the masks and every other component of the image stay the same.

    Returns
    -------
    Simulation
    """
    check_inputs(shape, n_cells, seed)
    params = SimcepParams() if params is None else params
    if not isinstance(params, SimcepParams):
        raise ValueError(f"params must be a SimcepParams, got {type(params).__name__}")
    shape = (int(shape[0]), int(shape[1]))
    rng = dict(zip(_STREAMS, (np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(len(_STREAMS)))))

    cells = place_cells(shape, int(n_cells), params, rng["placement"])
    half = frame_half(params)
    target_masks = [c.nucleus if params.target == "nuclei" else c.cell for c in cells]
    cells_layer, sharp_energy, sigmas, groups, spreads = _render_channel(cells, target_masks, params, shape,
                                                                         half, rng)

    cell_energy = (sharp_energy if params.background_reference == "sharp"
                   else float(np.sum(np.square(cells_layer, dtype=np.float64))))
    background = _background(shape, cell_energy, params, rng["measurement"])
    offset = half
    nuclei_labels = np.zeros((shape[0] + 2 * offset, shape[1] + 2 * offset), dtype=np.int32)
    cell_labels = np.zeros_like(nuclei_labels)
    origins = [c.origin for c in cells]
    _paste_labels(nuclei_labels, [c.nucleus for c in cells], origins, offset)
    _paste_labels(cell_labels, [c.cell for c in cells], origins, offset)
    nuclei_labels = np.ascontiguousarray(nuclei_labels[offset:offset + shape[0], offset:offset + shape[1]])
    cell_labels = np.ascontiguousarray(cell_labels[offset:offset + shape[0], offset:offset + shape[1]])
    nuclei_mask, cell_mask = nuclei_labels > 0, cell_labels > 0
    mask = nuclei_mask if params.target == "nuclei" else cell_mask

    if simplex_background:
        level = float(cells_layer[mask].mean()) if mask.any() else 1.0
        background += params.simplex_strength * level * measurement.simplex_field(
            background.shape, params.simplex_scale, rng["simplex"])
    # SIMCEP sums cells, illumination and autofluorescence at their natural scale and lets the noisy
    # sum saturate at 1; the peak normalisation is the earlier simcep_py model.
    image = cells_layer + resize(background.astype(np.float32), shape, 1)
    peak = image.max()
    if params.peak_normalise and peak > 0:
        image = image / peak
    image = measurement.ccd_noise(image, params.noise_var, rng["measurement"])
    if params.jpeg_output:
        image = measurement.jpeg_artefacts(image, params.comp)

    return Simulation(image=image, mask=mask, nuclei_mask=nuclei_mask, cell_mask=cell_mask,
                      nuclei_labels=nuclei_labels, cell_labels=cell_labels,
                      features=_features(cells, sigmas, groups, spreads, shape, params.target),
                      objects=cells,
                      params=params, seed=int(seed), n_cells=int(n_cells),
                      simplex_background=bool(simplex_background))
