"""The one inference path: a trained net loaded once with checked weights, patches in batches, whole images
in tiles.

Every stage that runs the network goes through here: ``make evaluate`` (Table 1, whole-image
segmentations), ``tools.segment`` (image folders) and ``bench.segment`` (the speed benchmark times this very
code). Whole images of any size are padded by reflection at the bottom and right to a multiple of 8 (three
2x2 poolings) and cut into windows of at most ``tile`` pixels whose cores (``tile - 2 * margin``) tile the
image; each window's core is kept. Windows start on multiples of 8 and the margin covers the receptive field,
so the stitched map equals the one-piece forward pass (up to float rounding) while memory stays bounded by
the tile size.
"""
import sys

import numpy as np

from cellfcn import caffe_env, scale
from cellfcn import objects as O
from cellfcn.constants import STRIDE
from cellfcn.images import resize_normalized
from prototxt import net as netspec

# FCRN-A's output sees 66 px (38 at conv4, widened by the upsampling path). Measured with random weights:
# a 32 px margin already stitches exactly (24 does not); 40 keeps a safety step of 8.
MARGIN = 40
TILE = 512


def deploy_for(model):
    """The committed deploy prototxt of the variant a ``.caffemodel`` names (``prototxt.net.variant_of``)."""
    return netspec.deploy_path(netspec.variant_of(caffe_env.model_name(model)))


def load_model(model, deploy=None, gpu=None):
    """The deploy net with ``model``'s weights; every learnable layer must get its weights from the file.

    Parameters
    ----------
    model : path
        ``.caffemodel``.
    deploy : path, optional
        Deploy prototxt (Input ``data`` -> ``prob`` with 2 channels); default: :func:`deploy_for` the model.
    gpu : int or None
        CUDA device id, or None for CPU.

    Returns
    -------
    caffe.Net

    Raises
    ------
    cellfcn.errors.InputError
        Missing files, or weights of another net (the message names the layer).
    """
    return caffe_env.load_net(deploy_for(model) if deploy is None else deploy, model, gpu)


def class_maps(prob):
    """The maps a net's class probabilities give, for one image.

    Parameters
    ----------
    prob : (C, H, W) array_like of float
        Softmax output: C = 2 (background, nucleus), C = 3 (background, nucleus interior, contour: the
        ``contour`` nets of :mod:`prototxt.net`) or C = 4 (and micronucleus).

    Returns
    -------
    ndarray of float32
        C = 2: the (H, W) nucleus probability. C = 3 or 4: (2, H, W), the nucleus probability (interior or
        contour: :func:`nucleus_of_classes`) and the interior probability, what
        :func:`cellfcn.objects.instances_from_maps` cuts into nuclei.
    """
    prob = np.asarray(prob, dtype=np.float32)
    if prob.ndim != 3 or prob.shape[0] not in (2, 3, 4):
        raise ValueError(f"expected (C, H, W) probabilities of 2, 3 or 4 classes, got shape {prob.shape}")
    if prob.shape[0] == 2:
        return prob[1].copy()
    return np.stack([nucleus_of_classes(prob[None])[0], prob[1]])


def nucleus_of_classes(prob):
    """The nucleus probability of (N, C, H, W) class probabilities: class 1 of 2; of 3 or 4 classes
    ``1 - p_background - p_micronucleus`` (interior or contour). (N, H, W) float32."""
    prob = np.asarray(prob, dtype=np.float32)
    if prob.shape[1] == 2:
        return prob[:, 1].copy()
    return 1 - prob[:, 0] - prob[:, 3:].sum(axis=1)


def nucleus_probability(maps):
    """The (H, W) nucleus probability of one image's maps (:func:`class_maps`)."""
    maps = np.asarray(maps)
    return maps if maps.ndim == 2 else maps[0]


def predict(net, data, batch=16, desc="forward"):
    """Probability of the cell class for every pixel of a stack of patches, by batched forward passes.

    With 3 or 4 classes the cell class is nucleus interior or contour (:func:`nucleus_of_classes`).

    Parameters
    ----------
    net : caffe.Net
        From :func:`load_model`.
    data : ndarray of float32, shape (N, 1, H, W)
        Images in [0, 1]; H and W multiples of 8.
    batch : int
        Patches per forward pass (the last batch may be smaller).
    desc : str
        Label of the progress bar.

    Returns
    -------
    ndarray of float32, shape (N, H, W)
    """
    from tqdm import tqdm

    if batch < 1:
        raise ValueError(f"batch must be positive, got {batch}")
    n, _, h, w = data.shape
    if h % STRIDE or w % STRIDE:
        raise ValueError(f"patch sides must be multiples of {STRIDE}, got {h}x{w}")
    prob = np.empty((n, h, w), np.float32)
    for start in tqdm(range(0, n, batch), desc=desc, unit="batch", file=sys.stderr, leave=False):
        chunk = data[start:start + batch]
        if net.blobs["data"].data.shape != chunk.shape:
            net.blobs["data"].reshape(*chunk.shape)
            net.reshape()
        net.blobs["data"].data[...] = chunk
        net.forward()
        out = net.blobs["prob"].data
        prob[start:start + len(chunk)] = nucleus_of_classes(out)
    return prob


def pad_to_multiple(image, multiple=STRIDE):
    """Pad a 2-D image at the bottom and right by reflection to a multiple of ``multiple``.

    Returns
    -------
    ndarray
        The padded image; crop back with ``[:H, :W]``.
    """
    h, w = image.shape
    # 'symmetric' also works for images smaller than the pad, where 'reflect' would need repeats.
    return np.pad(image, ((0, -h % multiple), (0, -w % multiple)), mode="symmetric")


def windows(length, tile=TILE, margin=MARGIN):
    """Split ``[0, length)`` into (window start, window end, core start, core end) tuples.

    Cores of ``tile - 2 * margin`` partition the axis; each window is its core plus ``margin`` on both
    sides, clipped to the axis. With ``length``, ``tile`` and ``margin`` multiples of 8, every window
    starts and ends on a multiple of 8.
    """
    if tile % STRIDE or margin % STRIDE or margin < 0 or tile <= 2 * margin:
        raise ValueError(f"tile ({tile}) and margin ({margin}) must be multiples of {STRIDE} "
                         f"with tile > 2 * margin")
    if length <= tile:
        return [(0, length, 0, length)]
    core = tile - 2 * margin
    return [(max(0, c0 - margin), min(length, c0 + core + margin), c0, min(c0 + core, length))
            for c0 in range(0, length, core)]


def tile_plan(shape, tile=TILE, margin=MARGIN):
    """Windows of a padded image of ``shape``: list of (window slices, core slices in the window, core slices
    in the image)."""
    plan = []
    for y0, y1, cy0, cy1 in windows(shape[0], tile, margin):
        for x0, x1, cx0, cx1 in windows(shape[1], tile, margin):
            plan.append(((slice(y0, y1), slice(x0, x1)),
                         (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0)),
                         (slice(cy0, cy1), slice(cx0, cx1))))
    return plan


def forward_image(net, image):
    """The maps (:func:`class_maps`) of one 2-D float32 image whose sides are multiples of 8 (one forward
    pass)."""
    h, w = image.shape
    net.blobs["data"].reshape(1, 1, h, w)
    net.reshape()
    net.blobs["data"].data[0, 0] = image
    net.forward()
    return class_maps(net.blobs["prob"].data[0])


def segment_image(net, image, tile=TILE, margin=MARGIN, forward=forward_image, progress=False):
    """The maps of a normalised 2-D image of any size: the nucleus probability of every pixel (H, W), or for a
    3-class net its (2, H, W) nucleus and interior probabilities (:func:`class_maps`).

    Parameters
    ----------
    net : caffe.Net or object
        Passed to ``forward``.
    image : (H, W) array_like of float
        Intensities in [0, 1], normalised like the training data.
    tile : int
        Largest window side passed to the net at once (multiple of 8, larger than ``2 * margin``).
    margin : int
        Context kept around each window's core (multiple of 8), at least the receptive-field radius.
    forward : callable
        ``forward(net, window) -> maps`` of a window, (h, w) or (K, h, w); Caffe's by default (the benchmark
        passes PyTorch's, so both frameworks run the same tiles).
    progress : bool
        Show a progress bar over the windows.

    Returns
    -------
    (H, W) or (K, H, W) ndarray of float32 in [0, 1]
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2 or min(image.shape) < 1:
        raise ValueError(f"image must be a non-empty 2-D array, got shape {image.shape}")
    if not np.all(np.isfinite(image)):
        raise ValueError("image contains NaN or infinite values")
    h, w = image.shape
    padded = pad_to_multiple(image)
    plan = tile_plan(padded.shape, tile, margin)
    if progress and len(plan) > 1:
        from tqdm import tqdm

        plan = tqdm(plan, desc="tiles", unit="tile", leave=False, file=sys.stderr)
    maps = None
    for window, core, target in plan:
        out = forward(net, padded[window])
        if maps is None:
            maps = np.empty(out.shape[:-2] + padded.shape, dtype=np.float32)
        maps[(Ellipsis, *target)] = out[(Ellipsis, *core)]
    return maps[..., :h, :w]


def own_scale_maps(net, image, params, working_diameter, tile=TILE, forward=forward_image, first=None):
    """The maps of an image resized so that its nuclei have the model's working diameter (:mod:`cellfcn.scale`).

    A first pass cuts the image's nuclei with ``params`` and measures their median diameter; unless that is
    within :data:`cellfcn.scale.TOLERANCE` of ``working_diameter``, the image resized by
    :func:`cellfcn.scale.own_factor` goes through the net again and its maps are resized back (bilinear) to the
    image's shape, where ``params`` cut them as they cut the first pass's.

    Parameters
    ----------
    net, tile, forward
        As in :func:`segment_image`.
    image : (H, W) array_like of float
        Normalised, at the run's factor.
    params : dict
        Keyword arguments of :func:`cellfcn.objects.instances_from_maps` (the model's own).
    working_diameter : float
        Pixels at the net's scale.
    first : ndarray, optional
        The first pass's maps, when already computed (:func:`segment_image` of ``image``).

    Returns
    -------
    maps : (H, W) or (2, H, W) float32 in [0, 1]
    factor : float
        The image's own factor relative to ``image`` (1: the first pass stands).
    diameter : float
        The median diameter the first pass measured (NaN with too few nuclei).
    """
    from skimage.transform import resize

    maps = segment_image(net, image, tile=tile, forward=forward) if first is None else first
    diameter = scale.median_diameter(O.instances_from_maps(maps, **params))
    factor = scale.own_factor(diameter, working_diameter)
    if factor != 1:
        second = segment_image(net, resize_normalized(image, factor), tile=tile, forward=forward)
        maps = np.clip(resize(second, second.shape[:-2] + np.shape(image), order=1, preserve_range=True,
                              anti_aliasing=False), 0, 1).astype(np.float32)
    return maps, factor, diameter
