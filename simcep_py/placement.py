"""Cell placement: clustered or uniform positions, rejected when they overlap existing cells too much."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .shapes import frame_half_size, solid_shape, random_knots, spline_curve


@dataclass
class CellObject:
    """One placed cell, both of its masks drawn in the same square frame.

    Attributes
    ----------
    label : int
        Instance label (1-based, placement order).
    center : (float, float)
        Row, column of the cell centre in image coordinates.
    origin : (int, int)
        Image coordinates of the frame's top-left pixel (may lie outside the image).
    nucleus, cell : bool ndarray
        Nucleus mask and whole-cell mask (cytoplasm plus nucleus) in the frame.
    cluster : int
        Index of the cluster the cell was drawn around, -1 for a uniformly placed cell.
    """

    label: int
    center: tuple
    origin: tuple
    nucleus: np.ndarray
    cell: np.ndarray
    cluster: int


def intersection(mask_a, origin_a, mask_b, origin_b):
    """Number of pixels where two frame masks at image origins overlap."""
    y0 = max(origin_a[0], origin_b[0])
    x0 = max(origin_a[1], origin_b[1])
    y1 = min(origin_a[0] + mask_a.shape[0], origin_b[0] + mask_b.shape[0])
    x1 = min(origin_a[1] + mask_a.shape[1], origin_b[1] + mask_b.shape[1])
    if y1 <= y0 or x1 <= x0:
        return 0
    a = mask_a[y0 - origin_a[0]:y1 - origin_a[0], x0 - origin_a[1]:x1 - origin_a[1]]
    b = mask_b[y0 - origin_b[0]:y1 - origin_b[0], x0 - origin_b[1]:x1 - origin_b[1]]
    return int(np.count_nonzero(a & b))


def overlap_fraction(mask_a, origin_a, mask_b, origin_b):
    """Largest of the two overlap fractions ``|A & B| / |A|`` and ``|A & B| / |B|``."""
    inter = intersection(mask_a, origin_a, mask_b, origin_b)
    if inter == 0:
        return 0.0
    return max(inter / np.count_nonzero(mask_a), inter / np.count_nonzero(mask_b))


def frame_half(params):
    """Half-size of the square frame holding both masks of any cell under ``params``."""
    return max(frame_half_size(params.cytoplasm_radius, params.cytoplasm_shape[0]),
               frame_half_size(params.nucleus_radius, params.nucleus_shape[0]))


def _candidates(shape, params, rng, block=32):
    """Endless stream of candidate cells ``(centre, cluster, cell_curve, nucleus_curve, reach)``.

    Draws are made ``block`` candidates at a time (vectorised); the stream depends only on ``rng``.
    Curves are offsets from the centre, shape ``(2, n_samples)``.
    """
    height, width = shape
    cluster_centres = rng.uniform((0.0, 0.0), (height, width), size=(params.clust, 2))
    spread = params.spatvar * np.array([height, width], dtype=float)
    while True:
        clustered = rng.random(block) < params.clustprob
        cluster = np.where(clustered, rng.integers(params.clust, size=block), -1)
        near_cluster = cluster_centres[np.maximum(cluster, 0)] + spread * rng.standard_normal((block, 2))
        uniform = rng.uniform((0.0, 0.0), (height, width), size=(block, 2))
        centres = np.where(clustered[:, None], near_cluster, uniform)
        cell_curves = spline_curve(random_knots(*params.cytoplasm_shape, rng, n=block), params.cytoplasm_radius)
        nucleus_curves = spline_curve(random_knots(*params.nucleus_shape, rng, n=block), params.nucleus_radius)
        # Distance from the centre beyond which neither mask has a pixel.
        reach = np.sqrt(np.maximum(np.max(np.sum(cell_curves ** 2, axis=1), axis=1),
                                   np.max(np.sum(nucleus_curves ** 2, axis=1), axis=1))) + 1.0
        yield from zip(centres, cluster.tolist(), cell_curves, nucleus_curves, reach.tolist())


def _exceeds(mask, origin, others, overlap):
    """True when ``mask`` overlaps any ``(mask, origin)`` in ``others`` by more than ``overlap``."""
    return any(overlap_fraction(mask, origin, other, other_origin) > overlap for other, other_origin in others)


def place_cells(shape, n_cells, params, rng):
    """Place up to ``n_cells`` cells in an image of ``shape``.

    Each cell is near one of ``params.clust`` uniformly drawn cluster centres with probability
    ``params.clustprob`` (Gaussian spread ``params.spatvar`` x image size), otherwise uniform in the
    image. A candidate whose centre falls outside the image, or whose target object (nucleus or whole
    cell, per ``params.target``) overlaps an existing one by more than ``params.overlap`` (measured
    both ways), is drawn again; after ``params.max_tries`` failed attempts the cell is dropped.

    Returns
    -------
    cells : list of CellObject
    """
    height, width = shape
    half = frame_half(params)
    size = 2 * half + 1
    candidates = _candidates(shape, params, rng)
    by_nuclei = params.target == "nuclei"
    placed = []
    # Centres and largest curve radii as arrays: only cells whose discs meet are compared pixel-wise.
    centres = np.empty((n_cells, 2))
    reach = np.empty(n_cells)
    for _ in range(n_cells):
        for _attempt in range(params.max_tries):
            center, cluster, cell_curve, nucleus_curve, radius = next(candidates)
            if not (0 <= center[0] < height and 0 <= center[1] < width):
                continue
            origin = (int(np.floor(center[0])) - half, int(np.floor(center[1])) - half)
            local = center - origin
            near = [placed[i] for i in np.flatnonzero(
                np.hypot(*(centres[:len(placed)] - center).T) < reach[:len(placed)] + radius)]
            nucleus = solid_shape(nucleus_curve[0] + local[0], nucleus_curve[1] + local[1], (size, size))
            if by_nuclei and _exceeds(nucleus, origin, [(c.nucleus, c.origin) for c in near], params.overlap):
                continue
            cell = solid_shape(cell_curve[0] + local[0], cell_curve[1] + local[1], (size, size)) | nucleus
            if not by_nuclei and _exceeds(cell, origin, [(c.cell, c.origin) for c in near], params.overlap):
                continue
            centres[len(placed)] = center
            reach[len(placed)] = radius
            placed.append(CellObject(label=len(placed) + 1, center=(float(center[0]), float(center[1])),
                                     origin=origin, nucleus=nucleus, cell=cell, cluster=cluster))
            break
    return placed
