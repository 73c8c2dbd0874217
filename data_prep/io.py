"""Read images and masks (TIFF or PNG, from a path or from bytes), turn masks into instance labels, pair files
by name."""

import io as _io
import logging
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from skimage.measure import label as label_regions

from cellfcn.errors import InputError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
# Masks with more than two values: at most this share of neighbouring cell pixel pairs may differ.
MAX_CHANGING_SHARE = 0.1


def read_array(source, name=None):
    """Decode one TIFF or PNG file into a numpy array with the file's own dtype.

    Parameters
    ----------
    source : str, Path or bytes
        The file, or its content.
    name : str, optional
        Name used for the format (by suffix) and in error messages; defaults to ``source``.

    Returns
    -------
    ndarray
        (H, W), (H, W, C) or, for multi-page TIFF, (P, H, W). Palette PNGs are expanded to RGBA.

    Raises
    ------
    InputError
        Unknown suffix, or a file that cannot be decoded (missing, truncated, not an image).
    """
    name = str(source if name is None else name)
    suffix = Path(name).suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(f"{name}: unsupported file type (expected one of {', '.join(IMAGE_SUFFIXES)})")
    handle = _io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        if suffix == ".png":
            with Image.open(handle) as img:
                img.load()  # decode now: a truncated file fails here, not later
                if img.mode == "P":
                    img = img.convert("RGBA")
                array = np.array(img)
        else:
            tiff_log = logging.getLogger("tifffile")
            level = tiff_log.level
            tiff_log.setLevel(logging.CRITICAL)  # a broken file is the InputError below, not a log line too
            try:
                array = tifffile.imread(handle)
            finally:
                tiff_log.setLevel(level)
    except Exception as err:  # every decoder failure is a bad input file
        raise InputError(f"cannot read {name}: {type(err).__name__}: {err}") from None
    if array.size == 0:
        raise InputError(f"cannot read {name}: empty image")
    return array


def read_mask(source, name=None):
    """Decode a mask file (see :func:`read_array`) into int32 instance labels (:func:`mask_labels`), so that a
    refused mask is named by its own file. ``labels > 0`` is the boolean cell mask of :func:`to_binary_mask`."""
    name = str(source if name is None else name)
    return mask_labels(read_array(source, name), name)


def _channels_last(array):
    """Move a planar (C, H, W) colour axis of a TIFF to the end."""
    if array.ndim == 3 and array.shape[0] in (2, 3, 4) and array.shape[-1] not in (2, 3, 4):
        return np.moveaxis(array, 0, -1)
    return array


def to_gray(array, channel=None, name="image"):
    """Return a 2-D intensity image: the array itself, or one channel of a colour image.

    Parameters
    ----------
    array : ndarray
        (H, W), or (H, W, C) with C in 2..4 (gray+alpha, RGB, RGBA).
    channel : int, optional
        Channel to take from a colour image. Without it a colour image is accepted only when its colour
        channels are identical (a gray image saved as RGB).
    name : str
        Used in error messages.

    Raises
    ------
    InputError
        Not 2-D and not a colour image, channel out of range, or a colour image without ``channel``.
    """
    array = _channels_last(np.asarray(array))
    if array.ndim == 2:
        return array
    if array.ndim != 3 or array.shape[-1] not in (2, 3, 4):
        raise InputError(f"{name}: expected a 2-D gray or RGB image, got shape {array.shape}")
    colour = array[..., :1] if array.shape[-1] == 2 else array[..., :3]
    if channel is not None:
        if not 0 <= channel < colour.shape[-1]:
            raise InputError(f"{name}: channel {channel} out of range (image has {colour.shape[-1]})")
        return colour[..., channel]
    if np.all(colour == colour[..., :1]):
        return colour[..., 0]
    raise InputError(f"{name}: colour image; choose the channel to use with --channel")


def to_binary_mask(array, name="mask"):
    """Turn a binary, instance-label or colour-coded mask into a boolean cell mask, refusing anything else.

    - 2-D with at most two values: binary, the larger value is cell (0/1, 0/255, False/True, ...);
    - 2-D with more values: instance labels (0 background, one integer per object), accepted only when
      integer-valued and piecewise constant (:func:`changing_share` below :data:`MAX_CHANGING_SHARE`);
    - RGB / RGBA colour-coded (one colour per object): cell where the alpha channel is non-zero when the
      alpha varies (transparent background), otherwise where any colour channel is non-zero (black
      background); the colours must be piecewise constant too. Gray + alpha: the same with one colour.

    A gradient, a JPEG-compressed or anti-aliased mask would otherwise be thresholded at > 0 without a word,
    turning every faint edge or compression artefact into cell.

    Raises
    ------
    InputError
        Not 2-D and not an image with 2..4 channels, NaN values, non-integer values beyond two, or values
        that change between too many neighbouring cell pixels (the message says which and why).
    """
    array = _channels_last(np.asarray(array))
    if array.ndim == 2:
        return _gray_mask(array, name)
    if array.ndim != 3 or array.shape[-1] not in (2, 3, 4):
        raise InputError(f"{name}: expected a 2-D or colour-coded mask, got shape {array.shape}")
    if array.shape[-1] in (2, 4) and array[..., -1].min() != array[..., -1].max():
        cell = array[..., -1] != 0
    else:
        colour = array[..., :-1] if array.shape[-1] in (2, 4) else array
        cell = np.any(colour != 0, axis=-1)
    _check_piecewise_constant(array, cell, name, "colour-coded mask")
    return cell


def _gray_mask(array, name):
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise InputError(f"{name}: mask contains NaN or infinite values")
    values = np.unique(array)
    if len(values) == 1:
        return array != 0
    if len(values) == 2:
        return array == values[1]
    if array.dtype.kind == "f" and np.any(values != np.round(values)):
        raise InputError(f"{name}: mask has {len(values)} values, not all integers (a probability map or a "
                         "resized mask?); expected a binary mask (two values) or instance labels (0 background, "
                         "one integer per object)")
    cell = array != 0
    _check_piecewise_constant(array, cell, name, f"mask with {len(values)} values")
    return cell



def mask_labels(array, name="mask"):
    """Instance labels of a mask: one integer per nucleus, 0 background; ``labels > 0`` equals
    :func:`to_binary_mask` (which also validates the mask).

    - binary (2-D, at most two values): the 8-connected components of the cell pixels (touching nuclei
      become one object: a binary mask cannot tell them apart);
    - instance labels (2-D, more values): the labels as given, renumbered;
    - RGB / RGBA colour-coded, uint8: :func:`instance_labels_from_rgba`; other colour masks (gray + alpha,
      16-bit colour): the 8-connected components of the cell pixels.

    Returns
    -------
    (H, W) ndarray of int32
        Nuclei 1..n in the raster order of their first pixel.

    Raises
    ------
    InputError
        What :func:`to_binary_mask` refuses.
    """
    cell = to_binary_mask(array, name)
    array = _channels_last(np.asarray(array))
    if array.ndim == 3 and array.shape[-1] in (3, 4) and array.dtype == np.uint8:
        return instance_labels_from_rgba(array)
    if array.ndim == 2 and len(np.unique(array)) > 2:
        dense = np.unique(array, return_inverse=True)[1].reshape(array.shape) + 1  # any dtype and sign
        return relabel_raster_order(np.where(cell, dense, 0))
    return label_regions(cell, background=0, connectivity=2).astype(np.int32)


def resize_labels(labels, mask):
    """Instance labels resized to the shape of ``mask``, the mask resized by :func:`data_prep.real.prepare_pair`.

    Nearest-neighbour resizing keeps touching nuclei apart, but its foreground differs from the bilinear
    mask at the outlines; so the labels are then made to cover exactly ``mask``: mask pixels take the label
    of the nearest labelled pixel, pixels outside it become background. A nucleus the resized mask drops
    (one smaller than a few pixels) is gone from the labels too.

    Parameters
    ----------
    labels : (H, W) array of int
    mask : (h, w) array of bool

    Returns
    -------
    (h, w) ndarray of int32
        ``labels > 0`` equals ``mask``; nuclei renumbered 1..n in raster order.
    """
    from scipy import ndimage as ndi
    from skimage.transform import resize

    mask = np.asarray(mask, dtype=bool)
    near = resize(np.asarray(labels), mask.shape, order=0, anti_aliasing=False, preserve_range=True)
    near = np.rint(near).astype(np.int64)
    if not near.any():
        return label_regions(mask, background=0, connectivity=2).astype(np.int32)
    if (mask & (near == 0)).any():
        nearest = ndi.distance_transform_edt(near == 0, return_distances=False, return_indices=True)
        near = near[tuple(nearest)]
    return relabel_raster_order(np.where(mask, near, 0))


def relabel_raster_order(labels):
    """Renumber the non-zero labels 1..n in the raster order of each label's first pixel (int32)."""
    ids, first = np.unique(labels.ravel(), return_index=True)
    keep = ids != 0
    ids, first = ids[keep], first[keep]
    lut = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.int32)
    lut[ids[np.argsort(first)]] = np.arange(1, ids.size + 1, dtype=np.int32)
    return lut[labels]



def instance_labels_from_rgba(rgba, *, min_fragment_area=20):
    """Ground-truth instances from a colour-coded mask (one colour per nucleus).

    The background is what :func:`to_binary_mask` calls background: transparent pixels
    (alpha 0) when the alpha channel varies, otherwise black pixels (all colour channels 0). Each
    8-connected region of one colour is one nucleus, so a colour reused for separate nuclei gives
    separate labels: mnfinder's masks do reuse colours (4 of the 17 checked, the 16 test masks and
    training RPE1/1, have a colour in two separate places). A part of a reused colour smaller than
    ``min_fragment_area`` pixels is taken for a painting slip, not a nucleus: it keeps the label of that
    colour's largest part (the label is then not connected; RPE1/1 has one, of 6 pixels, and so 82
    nuclei, not 83). Touching nuclei of different colours stay separate.

    Parameters
    ----------
    rgba : array_like of uint8, shape (H, W, 3) or (H, W, 4)
        RGB or RGBA image (an RGB image has a black background).
    min_fragment_area : int, >= 0
        Parts of a reused colour below this size join the colour's largest part; 0 = every part is its
        own nucleus.

    Returns
    -------
    ndarray of int32, shape (H, W)
        0 = background, nuclei 1..n in the raster order of their first pixel. Their union is the
        foreground.

    Raises
    ------
    ValueError
        Not an (H, W, 3|4) uint8 array, or ``min_fragment_area`` negative.
    """
    rgba = np.asarray(rgba)
    if rgba.ndim != 3 or rgba.shape[-1] not in (3, 4) or rgba.dtype != np.uint8:
        raise ValueError(f"rgba must be a uint8 array of shape (H, W, 3) or (H, W, 4), got {rgba.dtype} "
                         f"{rgba.shape}")
    if isinstance(min_fragment_area, bool) or not isinstance(min_fragment_area, (int, np.integer)) \
            or min_fragment_area < 0:
        raise ValueError(f"min_fragment_area must be an integer >= 0, got {min_fragment_area!r}")
    if rgba.shape[-1] == 4 and rgba[..., 3].min() != rgba[..., 3].max():
        foreground = rgba[..., 3] != 0
    else:
        foreground = np.any(rgba[..., :3] != 0, axis=-1)
    key = np.zeros(rgba.shape[:2], dtype=np.int64)
    for channel in range(rgba.shape[-1]):
        key = (key << 8) | rgba[..., channel]
    _, colour_index = np.unique(key[foreground], return_inverse=True)
    colours = np.zeros(key.shape, dtype=np.int64)
    colours[foreground] = colour_index.ravel() + 1
    regions = label_regions(colours, background=0, connectivity=2)
    n = int(regions.max())
    area = np.bincount(regions.ravel(), minlength=n + 1)
    colour_of = np.zeros(n + 1, dtype=np.int64)
    colour_of[regions.ravel()] = colours.ravel()
    # Largest part of each colour (ties: the first in raster order): first of its colour in this order.
    ids = np.arange(1, n + 1)
    order = ids[np.lexsort((ids, -area[1:], colour_of[1:]))]
    is_first = np.ones(order.size, dtype=bool)
    is_first[1:] = colour_of[order][1:] != colour_of[order][:-1]
    largest = np.zeros(int(colour_of.max(initial=0)) + 1, dtype=np.int64)
    largest[colour_of[order][is_first]] = order[is_first]
    target = np.arange(n + 1)
    slip = (area < min_fragment_area) & (target != largest[colour_of])
    slip[0] = False
    target[slip] = largest[colour_of[slip]]
    return relabel_raster_order(target[regions])


def changing_share(values, cell):
    """Share of the 4-neighbour pairs of cell pixels whose values (or colours) differ.

    Instance labels change only where two objects touch (a few percent of the pairs); gradients, JPEG noise
    and anti-aliased edges change between most or many neighbours.

    Parameters
    ----------
    values : (H, W) or (H, W, C) array
    cell : (H, W) bool

    Returns
    -------
    float in [0, 1]
        0 when no two cell pixels are neighbours.
    """
    pairs = changes = 0
    for a, b in (((slice(1, None),), (slice(None, -1),)), ((slice(None), slice(1, None)),
                                                           (slice(None), slice(None, -1)))):
        both = cell[a] & cell[b]
        differ = values[a] != values[b]
        if differ.ndim == 3:
            differ = differ.any(axis=-1)
        pairs += int(both.sum())
        changes += int((both & differ).sum())
    return changes / pairs if pairs else 0.0


def _check_piecewise_constant(values, cell, name, what):
    share = changing_share(values, cell)
    if share >= MAX_CHANGING_SHARE:
        raise InputError(f"{name}: {what} is not piecewise constant ({100 * share:.0f}% of neighbouring cell "
                         f"pixels differ, at most {100 * MAX_CHANGING_SHARE:.0f}% allowed): a gradient, lossy "
                         "(JPEG) compression or anti-aliased edges? Expected a binary mask, instance labels or "
                         "one flat colour per object")


def find_pairs(image_dir, mask_dir, mask_suffix=""):
    """Match image files to mask files by name.

    An image ``a.tif`` pairs with the mask whose name without extension is ``a`` + ``mask_suffix``
    (``a.png``, ``a_mask.tif``...). Hidden files are ignored.

    Returns
    -------
    list of (str, Path, Path)
        (name, image path, mask path), sorted by name.

    Raises
    ------
    InputError
        A folder is missing or holds no image, two files share a name, or a file has no partner.
    """
    images = _index(image_dir, "image")
    masks = _index(mask_dir, "mask")
    wanted = {stem + mask_suffix: stem for stem in images}
    no_mask = sorted(stem for stem in images if stem + mask_suffix not in masks)
    no_image = sorted(stem for stem in masks if stem not in wanted)
    if no_mask or no_image:
        parts = []
        if no_mask:
            parts.append(f"images without a mask in {mask_dir}: {_few(no_mask)}")
        if no_image:
            parts.append(f"masks without an image in {image_dir}: {_few(no_image)}")
        raise InputError("unmatched image/mask pairs: " + "; ".join(parts))
    return [(stem, images[stem], masks[stem + mask_suffix]) for stem in sorted(images)]


def _index(folder, what):
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{what} folder not found: {folder}")
    files = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in files:
            raise InputError(f"two {what} files named {path.stem!r} in {folder}: {files[path.stem].name}, "
                             f"{path.name}")
        files[path.stem] = path
    if not files:
        raise InputError(f"no {what} files ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def _few(names, limit=5):
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
