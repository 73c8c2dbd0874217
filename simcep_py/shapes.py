"""Object shapes: closed periodic cubic splines through 11 randomly perturbed points, filled."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import ndimage
from scipy.interpolate import CubicSpline

# Knots at t = 0, 0.1, ..., 1.0 x 2 pi: the 11th point (t = 2 pi) is the first again, closing the curve.
N_KNOTS = 10


@lru_cache(maxsize=32)
def _spline_matrix(n_samples):
    """(n_samples, N_KNOTS) matrix: a periodic cubic spline through equally spaced knots is linear in
    the knot values, so one matrix product evaluates any number of curves."""
    t = np.arange(N_KNOTS + 1) / N_KNOTS
    basis = np.vstack([np.eye(N_KNOTS), np.eye(N_KNOTS)[:1]])
    spline = CubicSpline(t, basis, bc_type="periodic")
    matrix = spline(np.arange(n_samples) / n_samples)
    matrix.setflags(write=False)
    return matrix


def random_knots(alpha, beta, rng, n=1):
    """Draw the spline knots of ``n`` unit-radius shapes.

    ``x = alpha * U(-1, 1) + sin(t + beta * U(-1, 1))`` and ``y = alpha * U(-1, 1) + cos(t + beta * U(-1, 1))``
    at ``t = 2 pi k / 10``, k = 0..9.

    Parameters
    ----------
    alpha, beta : float
        Radial (offset) and angular perturbation strengths.
    rng : numpy.random.Generator
    n : int

    Returns
    -------
    knots : (n, 2, 10) float64
        Row (y) and column (x) knot coordinates.
    """
    t = 2 * np.pi * np.arange(N_KNOTS) / N_KNOTS
    u = rng.uniform(-1.0, 1.0, size=(n, 4, N_KNOTS))
    x = alpha * u[:, 0] + np.sin(t + beta * u[:, 1])
    y = alpha * u[:, 2] + np.cos(t + beta * u[:, 3])
    return np.stack([y, x], axis=1)


def n_curve_samples(radius):
    """Curve samples for a shape of this radius: about one per pixel of perimeter, at least 40."""
    return max(40, int(math.ceil(2 * np.pi * radius)))


def spline_curve(knots, radius, n_samples=None):
    """Evaluate the closed splines through ``knots`` scaled by ``radius``.

    Parameters
    ----------
    knots : (n, 2, 10) array
    radius : float
    n_samples : int, optional
        Points per curve (default from :func:`n_curve_samples`).

    Returns
    -------
    curve : (n, 2, n_samples) float64
        Row and column offsets from the shape centre, in pixels.
    """
    n_samples = n_curve_samples(radius) if n_samples is None else n_samples
    return radius * np.einsum("sk,nck->ncs", _spline_matrix(n_samples), knots)


def frame_half_size(radius, alpha):
    """Half-size of a square frame that holds any shape of this radius and alpha.

    Knots lie within ``(1 + alpha) * sqrt(2)`` of the centre; the 5% covers spline overshoot.
    """
    return int(math.ceil(radius * (1 + alpha) * math.sqrt(2) * 1.05)) + 1


def _fill_box(rows, cols, shape):
    """Scanline fill of a closed polygon, computed on its bounding box within a frame of ``shape``.

    Returns
    -------
    box : bool ndarray
        The filled pixels of the box (empty array when no pixel centre is inside).
    top, left : int
        Frame coordinates of the box's first pixel.
    """
    height, width = shape
    y0, x0 = np.asarray(rows, dtype=np.float64), np.asarray(cols, dtype=np.float64)
    y1, x1 = np.concatenate((y0[1:], y0[:1])), np.concatenate((x0[1:], x0[:1]))
    left = max(0, int(math.ceil(x0.min())))
    box_width = min(width - 1, int(math.floor(x0.max()))) - left + 1
    # Edge e crosses the row centres r with min(y0, y1) <= r < max(y0, y1); edges are short, so
    # listing those (edge, row) pairs is linear in the number of vertices.
    first_row = np.ceil(np.minimum(y0, y1)).astype(np.intp)
    n_rows = np.ceil(np.maximum(y0, y1)).astype(np.intp) - first_row
    edge = np.repeat(np.arange(y0.size), n_rows)
    row = first_row[edge] + np.arange(edge.size) - np.repeat(np.cumsum(n_rows) - n_rows, n_rows)
    inside = (row >= 0) & (row < height)
    edge, row = edge[inside], row[inside]
    if edge.size == 0 or box_width <= 0:
        return np.zeros((0, 0), dtype=bool), 0, 0
    ya, yb, xa, xb = y0[edge], y1[edge], x0[edge], x1[edge]
    x_cross = xa + (row - ya) * (xb - xa) / (yb - ya)
    direction = np.where(yb > ya, 1.0, -1.0)
    top = int(row.min())
    n = int(row.max()) - top + 1
    # The crossing changes the winding of every pixel centre strictly to its right.
    first = np.minimum(np.maximum(np.floor(x_cross).astype(np.intp) + 1 - left, 0), box_width)
    steps = np.bincount((row - top) * (box_width + 1) + first, weights=direction, minlength=n * (box_width + 1))
    winding = np.cumsum(steps.reshape(n, box_width + 1)[:, :box_width], axis=1)
    return winding != 0, top, left


def fill_curve(rows, cols, shape):
    """Fill a closed curve (polygon vertices in pixel coordinates) in a frame of ``shape``.

    A pixel is inside when its centre has a non-zero winding number, so a rare self-intersecting
    curve still gives a solid region. Scanline rasterisation: each edge's crossings of the pixel-row
    centres are accumulated along the row, all in a few vectorised operations. This is the plain
    polygon fill; :func:`solid_shape` makes it one object.

    Returns
    -------
    mask : bool ndarray of ``shape``
    """
    box, top, left = _fill_box(rows, cols, shape)
    mask = np.zeros(shape, dtype=bool)
    mask[top:top + box.shape[0], left:left + box.shape[1]] = box
    return mask


def _single_run_per_row(mask):
    """True when every row holds one run of pixels overlapping the next row's run: then the region
    is 4-connected and has no holes (a cheap test that spares most shapes a labelling)."""
    runs = np.count_nonzero(mask[:, 1:] & ~mask[:, :-1], axis=1) + mask[:, 0]
    if not (runs == 1).all():
        return False
    first = mask.argmax(axis=1)
    last = mask.shape[1] - 1 - mask[:, ::-1].argmax(axis=1)
    return bool(((first[1:] <= last[:-1]) & (first[:-1] <= last[1:])).all())


def solid_shape(rows, cols, shape):
    """Filled curve reduced to its largest connected region.

    A twisted spline (about 2% of cytoplasm shapes with alpha 0.3) can leave an island of a few
    pixels where a thin cusp crosses pixel centres; an object is one region, so islands are dropped.
    """
    box, top, left = _fill_box(rows, cols, shape)
    if box.size and not _single_run_per_row(box):
        labels, n = ndimage.label(box)
        if n > 1:
            box = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    mask = np.zeros(shape, dtype=bool)
    mask[top:top + box.shape[0], left:left + box.shape[1]] = box
    return mask


def shape_mask(radius, alpha, beta, rng, half=None, center=None):
    """Draw one random filled shape centred in a square frame.

    Parameters
    ----------
    radius, alpha, beta : float
    rng : numpy.random.Generator
    half : int, optional
        Frame half-size; the frame is ``2 * half + 1`` pixels wide (default :func:`frame_half_size`).
    center : (float, float), optional
        Shape centre in frame coordinates (default: the frame's centre pixel).

    Returns
    -------
    mask : (2 * half + 1, 2 * half + 1) bool
    """
    half = frame_half_size(radius, alpha) if half is None else half
    center = (half, half) if center is None else center
    curve = spline_curve(random_knots(alpha, beta, rng), radius)[0]
    return solid_shape(curve[0] + center[0], curve[1] + center[1], (2 * half + 1, 2 * half + 1))
