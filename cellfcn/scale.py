"""Nucleus size and the resize factor before the net, for images taken at any magnification.

The net learned nuclei of one size: the training dataset's median nucleus diameter at the dataset's scale,
``nucleus_diameter_px`` (D) in its manifest and in a model's ``<model>.params.json``. An image whose nuclei
have a typical diameter of d pixels is resized by ``D / d`` before the net (:func:`factor_for_diameter`), so
that the net sees them at the size it was trained on. Diameters are equivalent diameters, ``2 sqrt(area /
pi)``, of the nuclei not cut by the image border: the measure of D.

``--diameter auto`` (:func:`estimate_factor`, :func:`run_factor`) finds the factor from the images themselves,
Cellpose's two-pass idea as a fixed point: resize by the dataset's factor, measure the median nucleus
diameter, move the factor by D / measured and measure again, until the factor changes by less than
``TOLERANCE``. The measure is a classical segmentation (:func:`classical_diameter`: Otsu's threshold and the
distance-transform watershed of :mod:`cellfcn.objects`), not the net: a net trained on one nucleus size
segments other sizes toward it, so its own nuclei hardly tell the scale (on the magnification test the
net-based two-pass estimate reached a median 0.60-0.88 of the true factor), while Otsu's mask scales with the
image. A run takes the median of its images' estimates (the images of one folder come from one microscope;
one image's estimate can fail, as Otsu's threshold does on a few images, the median of a folder's rarely
does), kept at the dataset's factor when within ``KEEP`` of it, so images like the training data are
segmented exactly as the evaluation did. ``make evaluate``'s magnification test (:mod:`tools.magnification`)
measures how well this works.

Then each image's own scale (:func:`own_factor`, :func:`tools.infer.own_scale_maps`): the net's own nuclei at
the run's factor give the image's median diameter, which measures well once the image is near the net's scale
(on the 48 whole images of the dataset, nuclei of 17-36 px: 47 within 15% of the truth, median 0.97; the
classical measure: 32, median 0.88), and a second pass resizes the image so that its nuclei have the model's
*working diameter*, a ratio of D chosen with its instance parameters on the training and validation images
(:data:`WORKING_RATIOS`). One microscope's folder can hold nuclei of several sizes (the test images of 20x and
40x lie at 21-36 px), which one factor per folder cannot serve.
"""
import math

import numpy as np

from cellfcn import objects

#: The fixed point stops when a measurement moves the factor by less than this (relatively).
TOLERANCE = 0.03
#: Measurements per image at most.
MAX_PASSES = 6
#: A run's estimate this close (relatively) to the dataset's factor keeps the dataset's factor.
KEEP = 0.15
#: Run factors are rounded to steps of this ratio around the dataset's factor, so that one more image in a folder
#: does not move every image's factor by a hair (and make a rerun segment them all again).
STEP = 1.02
#: Fewest nuclei whose median diameter is trusted.
MIN_NUCLEI = 3
#: Smallest nucleus of the classical measurement, in pixels at the net's scale (specks are not nuclei).
MIN_AREA = 10
#: The estimate stays within this ratio of the dataset's factor: nuclei up to 4 times smaller or larger than the
#: training data's (beyond, give their diameter); a first pass that found only specks cannot blow an image up.
ESTIMATE_RANGE = 4.0
#: Range of resize factors (``data_prep``'s ``--scale`` range).
FACTOR_RANGE = (1 / 64, 16.0)
#: The working diameters ``make evaluate`` tries for a model, as ratios of the dataset's diameter: the size at which
#: its instance cut counts best (a distance-transform watershed with fixed pixel settings splits touching nuclei
#: better when they are larger than the training nuclei).
WORKING_RATIOS = (1.0, 1.25, 1.5, 1.75, 2.0)


def _positive(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def nucleus_diameters(labels):
    """Equivalent-circle diameters ``2 sqrt(area / pi)`` (pixels) of the nuclei not cut by the image edge.

    Parameters
    ----------
    labels : (H, W) array_like of int
        Instance labels, 0 background.

    Returns
    -------
    ndarray of float64
        One per nucleus that touches no edge, in label order.
    """
    labels = np.asarray(labels)
    areas = np.bincount(labels.ravel())
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    keep = areas > 0
    keep[0] = False
    keep[edge] = False
    return 2 * np.sqrt(areas[keep] / np.pi)


def pooled_median_diameter(label_images):
    """Median equivalent diameter (pixels) of the nuclei of several label images (edge nuclei left out); None
    when there is no such nucleus."""
    diameters = np.concatenate([nucleus_diameters(labels) for labels in label_images] or [np.zeros(0)])
    return round(float(np.median(diameters)), 3) if diameters.size else None


def median_diameter(labels, min_nuclei=MIN_NUCLEI):
    """Typical nucleus diameter of a label image: the median equivalent diameter of the nuclei not cut by the
    image border (:func:`nucleus_diameters`, the measure of the dataset's diameter).

    Parameters
    ----------
    labels : (H, W) array_like of int
        Instance labels, 0 background.
    min_nuclei : int
        Fewer such nuclei than this give NaN: too few to say what is typical.

    Returns
    -------
    float
        Pixels of ``labels``; NaN with fewer than ``min_nuclei`` nuclei.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 2-D integer label image, got {labels.dtype} of shape {labels.shape}")
    diameters = nucleus_diameters(labels)
    return float(np.median(diameters)) if diameters.size >= max(1, min_nuclei) else float("nan")


def factor_for_diameter(dataset_diameter, diameter):
    """Resize factor that brings nuclei of ``diameter`` pixels to the training data's ``dataset_diameter``.

    Raises
    ------
    ValueError
        Non-positive or non-finite diameters, or a factor outside ``FACTOR_RANGE``.
    """
    factor = _positive(dataset_diameter, "dataset_diameter") / _positive(diameter, "diameter")
    if not FACTOR_RANGE[0] <= factor <= FACTOR_RANGE[1]:
        raise ValueError(f"a nucleus diameter of {diameter:g} px gives a resize factor of {factor:.3g}, outside "
                         f"[{FACTOR_RANGE[0]:.3g}, {FACTOR_RANGE[1]:g}] (the training nuclei are "
                         f"{dataset_diameter:g} px)")
    return factor


def classical_diameter(image, min_nuclei=MIN_NUCLEI):
    """Median nucleus diameter of a normalised image by a classical segmentation: Otsu's threshold
    (:func:`cellfcn.objects.otsu_maps`), then the distance-transform watershed of
    :func:`cellfcn.objects.instances_from_probs` without opening, nuclei of at least ``MIN_AREA`` pixels.

    Parameters
    ----------
    image : (H, W) array_like of float
        Normalised, at the scale to measure (resized by the factor under test).
    min_nuclei : int

    Returns
    -------
    float
        :func:`median_diameter` of the nuclei found, in pixels of ``image``; NaN with too few.
    """
    mask = objects.otsu_maps([np.asarray(image, dtype=np.float32)])[0]
    return median_diameter(objects.instances_from_probs(mask, 0.5, opening_radius=0, min_area=MIN_AREA), min_nuclei)


def estimate_factor(measure, start, dataset_diameter, *, tolerance=TOLERANCE, max_passes=MAX_PASSES):
    """The resize factor of one image, from the size of its own nuclei (see the module doc).

    Parameters
    ----------
    measure : callable
        ``measure(factor) -> float``: the median nucleus diameter of the image resized by ``factor``, in pixels
        of the resized image (:func:`classical_diameter`; NaN when too few nuclei).
    start : float
        The dataset's own factor (first measurement).
    dataset_diameter : float
        D, the training nuclei's median diameter at the dataset's scale.
    tolerance : float
        A measurement that moves the factor by less than this (relatively) confirms it.
    max_passes : int
        Measurements at most; the last one's factor is returned even if not confirmed.

    Returns
    -------
    dict
        ``factor``: the last factor ``measure`` found nuclei at (``start`` when none);
        ``estimated``: whether a measurement decided it (False: no pass found enough nuclei);
        ``converged``: whether a measurement confirmed ``factor`` (within ``tolerance``);
        ``diameter_px``: the median diameter measured at ``factor``, in pixels of the image before resizing
        (NaN when unmeasured); ``passes``: list of (factor, measured diameter).
    """
    start = _positive(start, "start")
    dataset_diameter = _positive(dataset_diameter, "dataset_diameter")
    tolerance = _positive(tolerance, "tolerance")
    if isinstance(max_passes, bool) or not isinstance(max_passes, (int, np.integer)) or max_passes < 1:
        raise ValueError(f"max_passes must be a positive integer, got {max_passes!r}")
    passes, factor, found = [], start, None
    while True:
        diameter = float(measure(factor))
        passes.append((factor, diameter))
        if not math.isfinite(diameter) or diameter <= 0:
            break
        found = (factor, diameter)
        proposed = factor * dataset_diameter / diameter
        proposed = min(max(proposed, start / ESTIMATE_RANGE, FACTOR_RANGE[0]), start * ESTIMATE_RANGE,
                       FACTOR_RANGE[1])
        if abs(proposed / factor - 1) <= tolerance or len(passes) == max_passes:
            break
        factor = proposed
    if found is None:
        return {"factor": start, "estimated": False, "converged": False, "diameter_px": float("nan"),
                "passes": passes}
    factor, diameter = found
    proposed = factor * dataset_diameter / diameter
    return {"factor": factor, "estimated": True, "converged": abs(proposed / factor - 1) <= tolerance,
            "diameter_px": diameter / factor, "passes": passes}


def run_factor(estimates, start, keep=KEEP):
    """The resize factor of a run of images: the median of their estimates.

    Parameters
    ----------
    estimates : sequence of float
        The images' own factors (:func:`estimate_factor`); NaN for an image without one.
    start : float
        The dataset's factor.
    keep : float
        A median this close (relatively) to ``start`` keeps ``start``.

    Returns
    -------
    factor : float
        ``start`` when kept or when no image has an estimate, else the median rounded to a power of ``STEP``
        times ``start``.
    estimated : bool
        Whether any image had an estimate.
    """
    start = _positive(start, "start")
    values = np.asarray([e for e in estimates if e is not None and math.isfinite(e)], dtype=np.float64)
    if values.size == 0:
        return start, False
    median = float(np.median(values))
    if abs(median / start - 1) <= keep:
        return start, True
    return start * STEP ** round(math.log(median / start) / math.log(STEP)), True


def own_factor(diameter, working_diameter, tolerance=TOLERANCE):
    """An image's own resize factor, relative to the scale its nuclei were measured at.

    Parameters
    ----------
    diameter : float
        Median diameter of the image's nuclei as the net found them (:func:`median_diameter` of its instances,
        NaN when too few), in pixels of the image as the net saw it.
    working_diameter : float
        The model's working diameter (pixels at the net's scale).
    tolerance : float
        A factor this close to 1 (relatively) is 1: the first pass stands.

    Returns
    -------
    float
        ``working_diameter / diameter``, within [1 / ``ESTIMATE_RANGE``, ``ESTIMATE_RANGE``]; 1 when unmeasured.
    """
    working_diameter = _positive(working_diameter, "working_diameter")
    tolerance = _positive(tolerance, "tolerance")
    diameter = float(diameter)
    if not math.isfinite(diameter) or diameter <= 0:
        return 1.0
    factor = min(max(working_diameter / diameter, 1 / ESTIMATE_RANGE), ESTIMATE_RANGE)
    return 1.0 if abs(factor - 1) <= tolerance else factor
