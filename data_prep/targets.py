"""Instance-aware training targets: background, nucleus interior and nucleus contour (3 classes), and
micronucleus (a 4th class).

The two-class target paints touching nuclei as one region, so a net trained on it cannot learn where one
nucleus ends and the next begins. The 3-class target (the DSB2018 winners' contour class, U-Net's idea of
separation borders) marks the outer ``width`` pixels of every nucleus as contour: between two touching nuclei
lie two contour bands, so their interiors never touch. The targets are made on whole images, before patches
are cut and augmented, so every patch and every dihedral transform of it carries the same targets as its image.

The 4-class target adds the micronuclei (small DNA bodies beside a nucleus, not nuclei) that mnfinder annotates
in a mask of their own. In the 3-class target they are background, a few pixels among thousands, and the
trained nets still call some of them nuclei; a class of their own gives the net a name for "bright, small,
not a nucleus".
"""
import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import disk

BACKGROUND, INTERIOR, CONTOUR, MICRONUCLEUS = 0, 1, 2, 3
#: Contour width in pixels at the net's scale (nuclei of about 20 px diameter keep a 16 px interior).
CONTOUR_WIDTH = 2


def contour_targets(labels, width=CONTOUR_WIDTH):
    """The 3-class target of an instance label image.

    A nucleus pixel is interior when every pixel within ``width`` (a disk) belongs to the same nucleus, else
    contour. The image edge is not a contour: a nucleus cut by it keeps its interior up to the edge.

    Parameters
    ----------
    labels : (H, W) array_like of int
        Instance labels, 0 background.
    width : int, >= 1
        Contour width in pixels.

    Returns
    -------
    (H, W) ndarray of uint8
        ``BACKGROUND`` (0), ``INTERIOR`` (1) or ``CONTOUR`` (2); ``target > 0`` equals ``labels > 0``.

    Raises
    ------
    ValueError
        Not a 2-D integer array, negative labels, or a width below 1.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 2-D integer array, got {labels.dtype} of shape {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError("labels must not be negative")
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
        raise ValueError(f"width must be an integer >= 1, got {width!r}")
    footprint = disk(int(width), dtype=bool)
    same = (ndi.minimum_filter(labels, footprint=footprint, mode="nearest")
            == ndi.maximum_filter(labels, footprint=footprint, mode="nearest"))
    target = np.where(labels > 0, CONTOUR, BACKGROUND).astype(np.uint8)
    target[same & (labels > 0)] = INTERIOR
    return target


def micronucleus_targets(targets, micronuclei):
    """The 4-class target: a 3-class target with the micronucleus pixels that are background in it marked
    ``MICRONUCLEUS``.

    Parameters
    ----------
    targets : (H, W) array_like of uint8
        :func:`contour_targets`.
    micronuclei : (H, W) array_like of bool, or None
        Micronucleus mask; None when the data have no micronucleus annotation (the target stays 3-class).

    Returns
    -------
    (H, W) ndarray of uint8
        A new array; nucleus pixels keep their class where a micronucleus mask overlaps them.

    Raises
    ------
    ValueError
        Shapes differ.
    """
    out = np.array(targets, dtype=np.uint8)
    if micronuclei is None:
        return out
    micronuclei = np.asarray(micronuclei, dtype=bool)
    if micronuclei.shape != out.shape:
        raise ValueError(f"micronucleus mask {micronuclei.shape} and targets {out.shape} differ in shape")
    out[micronuclei & (out == BACKGROUND)] = MICRONUCLEUS
    return out
