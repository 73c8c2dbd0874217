"""Read images and masks (TIFF or PNG, from a path or from bytes) and pair them by name."""

import io as _io
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from .errors import DataPrepError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")


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
    DataPrepError
        Unknown suffix, or a file that cannot be decoded (missing, truncated, not an image).
    """
    name = str(source if name is None else name)
    suffix = Path(name).suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise DataPrepError(f"{name}: unsupported file type (expected one of {', '.join(IMAGE_SUFFIXES)})")
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
        raise DataPrepError(f"cannot read {name}: {type(err).__name__}: {err}") from None
    if array.size == 0:
        raise DataPrepError(f"cannot read {name}: empty image")
    return array


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
    DataPrepError
        Not 2-D and not a colour image, channel out of range, or a colour image without ``channel``.
    """
    array = _channels_last(np.asarray(array))
    if array.ndim == 2:
        return array
    if array.ndim != 3 or array.shape[-1] not in (2, 3, 4):
        raise DataPrepError(f"{name}: expected a 2-D gray or RGB image, got shape {array.shape}")
    colour = array[..., :1] if array.shape[-1] == 2 else array[..., :3]
    if channel is not None:
        if not 0 <= channel < colour.shape[-1]:
            raise DataPrepError(f"{name}: channel {channel} out of range (image has {colour.shape[-1]})")
        return colour[..., channel]
    if np.all(colour == colour[..., :1]):
        return colour[..., 0]
    raise DataPrepError(f"{name}: colour image; choose the channel to use with --channel")


def to_binary_mask(array, name="mask"):
    """Turn a binary, instance-label or colour-coded mask into a boolean cell mask.

    - 2-D (binary 0/1 or 0/255, or instance labels 0..K): cell where the value is non-zero;
    - RGB / RGBA colour-coded (one colour per object): cell where the alpha channel is non-zero when the
      alpha varies (transparent background), otherwise where any colour channel is non-zero
      (black background);
    - gray + alpha: the same rule with the gray value as colour.

    Raises
    ------
    DataPrepError
        If the array is neither 2-D nor an image with 2..4 channels.
    """
    array = _channels_last(np.asarray(array))
    if array.ndim == 2:
        return array != 0
    if array.ndim != 3 or array.shape[-1] not in (2, 3, 4):
        raise DataPrepError(f"{name}: expected a 2-D or colour-coded mask, got shape {array.shape}")
    if array.shape[-1] in (2, 4):
        alpha = array[..., -1]
        if alpha.min() != alpha.max():
            return alpha != 0
        return np.any(array[..., :-1] != 0, axis=-1)
    return np.any(array != 0, axis=-1)


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
    DataPrepError
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
        raise DataPrepError("unmatched image/mask pairs: " + "; ".join(parts))
    return [(stem, images[stem], masks[stem + mask_suffix]) for stem in sorted(images)]


def _index(folder, what):
    folder = Path(folder)
    if not folder.is_dir():
        raise DataPrepError(f"{what} folder not found: {folder}")
    files = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in files:
            raise DataPrepError(f"two {what} files named {path.stem!r} in {folder}: {files[path.stem].name}, "
                                f"{path.name}")
        files[path.stem] = path
    if not files:
        raise DataPrepError(f"no {what} files ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def _few(names, limit=5):
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
