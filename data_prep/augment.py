"""The 8 dihedral transforms of a square patch (rotations by 0/90/180/270 degrees, each with or without a
mirror), applied to image and mask together."""

import numpy as np

N_DIHEDRAL = 8


def dihedral(array, k):
    """Apply dihedral transform ``k`` to the last two axes.

    ``k % 4`` quarter turns counter-clockwise (``np.rot90``), followed by a left-right mirror when
    ``k >= 4``; k = 0 is the identity. The 8 values give the 8 distinct symmetries of a square.

    Parameters
    ----------
    array : ndarray, (..., H, W)
    k : int in 0..7

    Returns
    -------
    ndarray, contiguous copy, (..., W, H) for odd ``k % 4``
    """
    if not 0 <= k < N_DIHEDRAL:
        raise ValueError(f"dihedral transform index must be in 0..7, got {k}")
    out = np.rot90(array, k % 4, axes=(-2, -1))
    if k >= 4:
        out = np.flip(out, axis=-1)
    return np.ascontiguousarray(out)


def augment_dihedral(images, masks):
    """Expand patches x8 with every dihedral transform, the same one on each image and its mask.

    Parameters
    ----------
    images, masks : (N, P, P) arrays

    Returns
    -------
    images, masks : (8N, P, P) arrays
        Patch ``i`` under transform ``k`` is at index ``8 * i + k``.
    transform : (8N,) int32
        ``k`` of each output patch.
    """
    images, masks = np.asarray(images), np.asarray(masks)
    if images.shape != masks.shape or images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"expected matching (N, P, P) images and masks, got {images.shape}, {masks.shape}")
    out_images = np.stack([dihedral(images, k) for k in range(N_DIHEDRAL)], axis=1)
    out_masks = np.stack([dihedral(masks, k) for k in range(N_DIHEDRAL)], axis=1)
    n, p = images.shape[0], images.shape[1]
    transform = np.tile(np.arange(N_DIHEDRAL, dtype=np.int32), n)
    return out_images.reshape(n * N_DIHEDRAL, p, p), out_masks.reshape(n * N_DIHEDRAL, p, p), transform
