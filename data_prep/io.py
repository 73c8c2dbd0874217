"""Read images and masks (TIFF or PNG, from a path or from bytes) and pair them by name."""

import io as _io
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

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
            array = tifffile.imread(handle)
    except Exception as err:  # every decoder failure is a bad input file
        raise InputError(f"cannot read {name}: {type(err).__name__}: {err}") from None
    if array.size == 0:
        raise InputError(f"cannot read {name}: empty image")
    return array


def read_mask(source, name=None):
    """Decode a mask file (see :func:`read_array`) into a boolean cell mask (:func:`to_binary_mask`), so that
    a refused mask is named by its own file."""
    name = str(source if name is None else name)
    return to_binary_mask(read_array(source, name), name)


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
