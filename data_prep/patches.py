"""Cut patches out of images: random training patches (with the near-empty rule) and a regular tiling.

Near-empty rule: a training patch candidate is rejected when cells cover less than ``min_cell_fraction``
of it. The default, 0.02 of a 128 x 128 patch (328 px), is about the area of one synthetic nucleus of
radius 10 px (314 px): a patch must hold at least one nucleus' worth of cell pixels. Tiled val/test
patches keep every tile, so evaluation sees images as they are.
"""

import numpy as np

from cellfcn.errors import InputError

MIN_CELL_FRACTION = 0.02


def tile_origins(shape, size):
    """Top-left corners (y, x) of the non-overlapping ``size`` x ``size`` tiles that fit in ``shape``,
    row by row from the top-left corner; a remainder narrower than a tile at the bottom/right is left out.

    Returns
    -------
    (N, 2) int32
    """
    height, width = shape[:2]
    ys = np.arange(0, height - size + 1, size)
    xs = np.arange(0, width - size + 1, size)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([yy.ravel(), xx.ravel()], axis=1).astype(np.int32)


def extract_patches(array, origins, size):
    """Stack ``array[y:y+size, x:x+size]`` for each origin: (N, size, size), same dtype."""
    out = np.empty((len(origins), size, size), dtype=array.dtype)
    for i, (y, x) in enumerate(origins):
        out[i] = array[y:y + size, x:x + size]
    return out


def sample_patches(masks, n, size, rng, min_cell_fraction=MIN_CELL_FRACTION, overlap=True,
                   tries=500):
    """Choose ``n`` random patch positions spread over several images.

    Images are visited in a seeded random order, round-robin, one patch per visit, so patches spread
    evenly across the images. In each visit random positions are drawn until one passes the near-empty
    rule (and, with ``overlap=False``, does not overlap a patch already taken from that image); an image
    where ``tries`` draws all fail is dropped from the rotation.

    Parameters
    ----------
    masks : sequence of (H, W) bool arrays
    n : int
        Number of patches.
    size : int
        Patch side.
    rng : numpy.random.Generator
    min_cell_fraction : float
        Near-empty rule threshold; 0 accepts every position.
    overlap : bool
        Whether patches from the same image may overlap.
    tries : int
        Draws per visit before giving up on an image.

    Returns
    -------
    source_index : (n,) int32
    origin : (n, 2) int32
        (y, x) top-left corners.

    Raises
    ------
    InputError
        If fewer than ``n`` acceptable patches exist.
    """
    usable = [i for i, m in enumerate(masks) if m.shape[0] >= size and m.shape[1] >= size]
    if not usable:
        raise InputError(f"no image is at least {size}x{size} pixels")
    # Integral images make each near-empty test O(1).
    integrals = {i: np.pad(masks[i].astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0))) for i in usable}
    need = min_cell_fraction * size * size
    taken = {i: [] for i in usable}
    order = [usable[j] for j in rng.permutation(len(usable))]
    picks = []
    while len(picks) < n:
        if not order:
            raise InputError(f"only {len(picks)} of {n} training patches of {size}x{size} found with cell "
                             f"fraction >= {min_cell_fraction:g}" + ("" if overlap else " and no overlap"))
        for i in list(order):
            if len(picks) == n:
                break
            height, width = masks[i].shape
            s = integrals[i]
            for _ in range(tries):
                y = int(rng.integers(0, height - size + 1))
                x = int(rng.integers(0, width - size + 1))
                if not overlap and any(abs(y - ty) < size and abs(x - tx) < size for ty, tx in taken[i]):
                    continue
                cells = s[y + size, x + size] - s[y, x + size] - s[y + size, x] + s[y, x]
                if cells >= need:
                    taken[i].append((y, x))
                    picks.append((i, y, x))
                    break
            else:
                order.remove(i)
    picks = np.asarray(picks, dtype=np.int32).reshape(-1, 3)
    return picks[:, 0].copy(), picks[:, 1:].copy()


def cell_fraction(masks):
    """Fraction of cell pixels over a set of masks (any shapes)."""
    total = sum(int(np.count_nonzero(m)) for m in masks)
    pixels = sum(int(np.size(m)) for m in masks)
    return total / pixels if pixels else 0.0
