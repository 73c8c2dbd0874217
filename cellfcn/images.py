"""Read images and masks (TIFF or PNG, from a path or from bytes), turn masks into instance labels, pair files
by name.

What each channel of a file is comes from the file itself: a TIFF's photometric interpretation, samples per
pixel, extra samples (alpha or unspecified) and its series' axes (ImageJ/OME channels, pages), a PNG's mode.
:func:`read_array` records it on the array it returns (:class:`ImageArray`), and :func:`gray_channel` says
which channel it took. A two-sample TIFF is grey + alpha only when its extra sample says alpha; otherwise its
samples are two channels to choose from, like the channels of a hyperstack.
"""

import io as _io
import logging
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from skimage.measure import label as label_regions

from cellfcn.errors import InputError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
# A mask with more than two values must be piecewise constant (check_piecewise_constant). At most this share of
# neighbouring cell pixel pairs may differ (JPEG noise, steep gradients);
MAX_CHANGING_SHARE = 0.1
# at most this share of the runs of equal cell pixels along rows and columns may be steps of a graded edge (1-2
# px, between its neighbours' values: anti-aliasing, blur) or of a ramp (between two cell runs, each at most two
# quanta away: a gradient). Shares of runs hold for any object size and slope: instance labels measured 0-6%
# (mnfinder's 48 masks, dense discs, Voronoi tissue), the soft edges and gradients tried 30-100%;
MAX_GRADED_SHARE = 0.25
# at most this share of a grey mask's values may mark several separate regions (a gradient over a binary mask,
# whose every level crosses many nuclei; a class map). Colour masks may reuse colours: mnfinder's do.
MAX_SPLIT_SHARE = 0.25
# A TIFF's series axes that name channels to choose from: samples, channels, and pages of unknown meaning.
_CHANNEL_AXES = {"S": "sample", "C": "channel", "Q": "page", "I": "page"}


class ImageArray(np.ndarray):
    """An image as :func:`read_array` decoded it: channels last, each named from the file's own metadata.

    Attributes
    ----------
    channels : tuple of str
        One name per channel (``gray``; ``red``, ``green``, ``blue``, ``alpha``; ``channel 0``...) of a
        (H, W, C) array, or ``("gray",)`` for (H, W). An array derived from this one (a slice, a sum) has
        ``None``: what its channels are is no longer known.
    layout : str
        What the file said, for messages ("TIFF, photometric RGB, 4 samples, extra sample unassociated alpha").
    """

    def __new__(cls, array, channels, layout):
        obj = np.asarray(array).view(cls)
        obj.channels, obj.layout = tuple(channels), layout
        return obj

    def __array_finalize__(self, obj):
        self.channels = self.layout = None


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
    ImageArray
        (H, W) or (H, W, C) with the file's dtype, channels named from the file's metadata. Palette images are
        expanded to RGB(A), MINISWHITE TIFFs inverted; planar samples and channel or page axes go last.

    Raises
    ------
    InputError
        Unknown suffix, a file that cannot be decoded (missing, truncated, not an image), or a layout that is
        not one 2-D image (a Z-stack, a time series, CMYK).
    """
    name = str(source if name is None else name)
    suffix = Path(name).suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(f"{name}: unsupported file type (expected one of {', '.join(IMAGE_SUFFIXES)})")
    handle = _io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        if suffix == ".png":
            array, channels, layout = _read_png(handle)
        else:
            tiff_log = logging.getLogger("tifffile")
            level = tiff_log.level
            tiff_log.setLevel(logging.CRITICAL)  # a broken file is the InputError below, not a log line too
            try:
                with tifffile.TiffFile(handle) as tif:
                    array, channels, layout = _read_tiff(tif, name)
            finally:
                tiff_log.setLevel(level)
    except InputError:
        raise
    except Exception as err:  # every decoder failure is a bad input file
        raise InputError(f"cannot read {name}: {type(err).__name__}: {err}") from None
    if array.size == 0:
        raise InputError(f"cannot read {name}: empty image")
    return ImageArray(array, channels, layout)


_PNG_CHANNELS = {"LA": ("gray", "alpha"), "RGB": ("red", "green", "blue"), "RGBA": ("red", "green", "blue", "alpha")}


def _read_png(handle):
    """(array, channel names, layout text) of a PNG, from its mode (palettes expanded to RGBA)."""
    with Image.open(handle) as img:
        img.load()  # decode now: a truncated file fails here, not later
        mode = img.mode
        if mode in ("P", "PA"):
            img = img.convert("RGBA")
        array = np.array(img)
        if img.mode in _PNG_CHANNELS:
            return array, _PNG_CHANNELS[img.mode], f"PNG, mode {mode}"
        if array.ndim == 2:  # 1, L, I, I;16...: one grey channel at the file's depth
            return array, ("gray",), f"PNG, mode {mode}"
        return np.array(img.convert("RGB")), _PNG_CHANNELS["RGB"], f"PNG, mode {mode} as RGB"


def _read_tiff(tif, name):
    """(array, channel names, layout text) of a TIFF's first series, from its tags and axes."""
    series = tif.series[0]
    page = series.keyframe
    photometric = page.photometric.name
    layout = f"TIFF, photometric {photometric}, {page.samplesperpixel} sample(s)"
    if page.extrasamples:
        layout += ", extra sample(s) " + ", ".join(e.name.lower() for e in page.extrasamples)
    array, axes = series.asarray(), series.axes
    keep = [i for i, a in enumerate(axes) if a in "YX" or array.shape[i] > 1]
    array, axes = array.reshape([array.shape[i] for i in keep]), "".join(axes[i] for i in keep)
    others = [a for a in axes if a not in "YX"]
    if len(others) > 1 or (others and (others[0] not in _CHANNEL_AXES or photometric == "PALETTE")) \
            or "Y" not in axes or "X" not in axes:
        raise InputError(f"{name}: a {'x'.join(map(str, array.shape))} image with axes {axes} ({layout}), not one "
                         "2-D image: save the plane to use (or its channels, with --channel)")
    if others:
        array = np.moveaxis(array, axes.index(others[0]), -1)
    if photometric == "PALETTE":  # indices into a 16-bit colour map
        return np.moveaxis(page.colormap[:, array], 0, -1), ("red", "green", "blue"), layout
    if photometric == "MINISWHITE":
        if array.dtype.kind not in "ub":
            raise InputError(f"{name}: inverted grey (MINISWHITE) {array.dtype} TIFF: save it as MINISBLACK")
        return ~array, ("gray",), layout + ", inverted"
    if photometric not in ("MINISBLACK", "RGB"):
        raise InputError(f"{name}: unsupported TIFF colour space {photometric}: save it as grey or RGB")
    if not others:
        return array, ("gray",), layout
    n = array.shape[-1]
    if others[0] != "S":  # hyperstack channels or pages: separate images, none of them alpha
        return array, tuple(f"{_CHANNEL_AXES[others[0]]} {i}" for i in range(n)), layout
    colour = ["red", "green", "blue"] if photometric == "RGB" else ["gray"]
    extra = [("alpha" if e.name in ("ASSOCALPHA", "UNASSALPHA") else None) for e in page.extrasamples]
    if photometric == "MINISBLACK" and None in extra:  # unspecified extra samples: channels of equal standing
        return array, tuple(f"channel {i}" for i in range(n)), layout
    names = colour + [e or f"channel {len(colour) + i}" for i, e in enumerate(extra)]
    if len(names) != n:
        raise InputError(f"{name}: {n} samples per pixel do not match the TIFF's tags ({layout})")
    return array, tuple(names), layout


def read_mask(source, name=None):
    """Decode a mask file (see :func:`read_array`) into int32 instance labels (:func:`mask_labels`), so that a
    refused mask is named by its own file. ``labels > 0`` is the boolean cell mask of :func:`to_binary_mask`."""
    name = str(source if name is None else name)
    return mask_labels(read_array(source, name), name)


def _channels_last(array):
    """Move a planar (C, H, W) colour axis of an array not read by :func:`read_array` to the end."""
    if array.ndim == 3 and array.shape[0] in (2, 3, 4) and array.shape[-1] not in (2, 3, 4):
        return np.moveaxis(array, 0, -1)
    return array


def image_channels(array, name="image"):
    """The array channels last and the name of each channel: the file's (an :class:`ImageArray`), else
    guessed from the shape (2-D grey; 2, 3, 4 channels: grey + alpha, RGB, RGBA).

    Raises
    ------
    InputError
        Neither 2-D nor channels last.
    """
    channels = getattr(array, "channels", None)
    if channels is None:
        array = _channels_last(np.asarray(array))
        if array.ndim == 2:
            channels = ("gray",)
        elif array.ndim == 3 and array.shape[-1] in (2, 3, 4):
            channels = (("gray", "alpha"), ("red", "green", "blue"), ("red", "green", "blue", "alpha"))[
                array.shape[-1] - 2]
        else:
            raise InputError(f"{name}: expected a 2-D gray or RGB image, got shape {array.shape}")
    array = np.asarray(array)
    if array.shape[2:] != ((len(channels),) if len(channels) > 1 else ()):
        raise InputError(f"{name}: {len(channels)} channel name(s) for an array of shape {array.shape}")
    return array, channels


def gray_channel(array, channel=None, name="image"):
    """The 2-D intensity image to segment, and which channel of the file it is.

    Parameters
    ----------
    array : ndarray
        As :func:`read_array` returns it (channel names from the file), or a plain (H, W) / (H, W, C) array
        (channels guessed by :func:`image_channels`).
    channel : int, optional
        Channel to take, counting every channel but alpha. Without it an image with several such channels is
        accepted only when they are identical (a grey image saved as RGB); with it, a grey image is an error.
    name : str
        Used in messages.

    Returns
    -------
    gray : (H, W) ndarray
    used : str
        Which channel was taken and why ("channel 1 (green) of TIFF, photometric RGB, 3 sample(s)").

    Raises
    ------
    InputError
        A grey image given ``channel``, ``channel`` out of range, or several differing channels without it.
    """
    layout = getattr(array, "layout", None) or "the array"
    array, channels = image_channels(array, name)
    usable = [i for i, c in enumerate(channels) if c != "alpha"]
    if len(usable) == 1:
        if channel is not None:
            raise InputError(f"{name}: --channel {channel} given, but the image is grey (one channel: {layout})")
        gray = array if array.ndim == 2 else array[..., usable[0]]
        return gray, f"{channels[usable[0]]} of {layout}"
    described = ", ".join(f"{k} = {channels[i]}" for k, i in enumerate(usable))
    if channel is not None:
        if not 0 <= channel < len(usable):
            raise InputError(f"{name}: channel {channel} out of range: the image has {len(usable)} ({described}; "
                             f"{layout})")
        return array[..., usable[channel]], f"channel {channel} ({channels[usable[channel]]}) of {layout}"
    first = array[..., usable[0]]
    if all(np.array_equal(first, array[..., i]) for i in usable[1:]):
        return first, f"{channels[usable[0]]} of {layout}, all {len(usable)} channels equal"
    raise InputError(f"{name}: {len(usable)} differing channels ({described}; {layout}): choose the one to use "
                     "with --channel")


def to_gray(array, channel=None, name="image"):
    """Return a 2-D intensity image: :func:`gray_channel` without saying which channel it took."""
    return gray_channel(array, channel, name)[0]


def _mask_channels(array, name):
    """A mask's array channels last, and the index of its alpha channel (None without one)."""
    layout = getattr(array, "layout", None) or "the array"
    array, channels = image_channels(array, name)
    if any(c not in ("gray", "red", "green", "blue", "alpha") for c in channels):
        raise InputError(f"{name}: a mask with {len(channels)} separate channels ({', '.join(channels)}; {layout}): "
                         "expected one mask")
    return array, (channels.index("alpha") if "alpha" in channels else None)


def to_binary_mask(array, name="mask"):
    """Turn a binary, instance-label or colour-coded mask into a boolean cell mask, refusing anything else.

    - 2-D with at most two values: binary, the larger value is cell (0/1, 0/255, False/True, ...);
    - 2-D with more values: instance labels (0 background, one integer per object), accepted only when
      integer-valued and piecewise constant (:func:`check_piecewise_constant`);
    - RGB / RGBA colour-coded (one colour per object): cell where the alpha channel is non-zero when the
      alpha varies (transparent background), otherwise where any colour channel is non-zero (black
      background); the colours must be piecewise constant too. Gray + alpha: the same with one colour.
      Channels come from the file (:func:`image_channels`): a mask with separate channels is refused.

    A gradient, a JPEG-compressed or anti-aliased mask would otherwise be thresholded at > 0 without a word,
    turning every faint edge or compression artefact into cell.

    Raises
    ------
    InputError
        Not 2-D and not an image with grey or colour channels, NaN values, non-integer values beyond two, or
        values that are not piecewise constant (the message says which and why).
    """
    array, alpha = _mask_channels(array, name)
    if array.ndim == 2:
        return _gray_mask(array, name)
    if alpha is not None and array[..., alpha].min() != array[..., alpha].max():
        cell = array[..., alpha] != 0
    else:
        colour = array if alpha is None else np.delete(array, alpha, axis=-1)
        cell = np.any(colour != 0, axis=-1)
    check_piecewise_constant(array, cell, name, "colour-coded mask")
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
    check_piecewise_constant(array, cell, name, f"mask with {len(values)} values")
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
    array, alpha = _mask_channels(array, name)
    if array.ndim == 3 and array.shape[-1] in (3, 4) and array.dtype == np.uint8 and alpha in (None, 3):
        return instance_labels_from_rgba(array)
    if array.ndim == 2 and len(np.unique(array)) > 2:
        dense = np.unique(array, return_inverse=True)[1].reshape(array.shape) + 1  # any dtype and sign
        return relabel_raster_order(np.where(cell, dense, 0))
    return label_regions(cell, background=0, connectivity=2).astype(np.int32)


def resize_normalized(image, scale):
    """A normalised image resized by ``scale`` as the training data were (bilinear, anti-aliased when shrinking,
    sides ``round(side * scale)``, at least 1), float32 clipped to [0, 1]."""
    from skimage.transform import resize

    image = np.asarray(image, dtype=np.float32)
    if scale == 1:
        return image
    shape = tuple(max(1, int(round(s * scale))) for s in image.shape)
    out = resize(image, shape, order=1, anti_aliasing=scale < 1, preserve_range=True)
    return np.clip(out, 0, 1).astype(np.float32)


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


def _runs(values, cell):
    """Runs of equal values along every row, then every column: (value, is cell, length, line) per run."""
    for v, c in ((values, cell), (values.transpose(1, 0, 2), cell.T)):
        start = np.ones(c.shape, dtype=bool)
        start[:, 1:] = np.any(v[:, 1:] != v[:, :-1], axis=-1)
        first = np.flatnonzero(start)
        yield (v.reshape(-1, v.shape[-1])[first], c.ravel()[first], np.diff(np.append(first, c.size)),
               first // c.shape[1])


def graded_shares(values, cell):
    """Shares of the runs of cell pixels (along rows and columns) that are steps of a grade, not objects.

    A run of equal cell values is a step when its value lies between those of the runs on either side of it
    (in every channel) and it is either 1-2 px long (a graded edge: anti-aliasing, blur) or between two cell
    runs, each at most two quanta away (a ramp: an intensity gradient; a channel's quantum is the smallest step
    between its values). Instance labels have few: a nucleus between two others whose values happen
    to lie on either side of its own.

    Parameters
    ----------
    values : (H, W) or (H, W, C) array
    cell : (H, W) bool

    Returns
    -------
    edge, ramp : float in [0, 1]
        Shares of the cell runs with a run on both sides (in the same row or column); 0 when there are none.
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[..., None] if values.ndim == 2 else values
    runs = list(_runs(values, np.asarray(cell, dtype=bool)))
    # Per channel; every value of the mask starts a run along its row.
    quantum = np.array([np.diff(np.unique(c)).min(initial=np.inf) for c in runs[0][0].T])
    quantum[~np.isfinite(quantum)] = 1.0
    counted = edges = ramps = 0
    for value, is_cell, length, line in runs:
        left, mid, right = value[:-2], value[1:-1], value[2:]
        inner = is_cell[1:-1] & (line[:-2] == line[1:-1]) & (line[1:-1] == line[2:])
        between = np.all((np.minimum(left, right) <= mid) & (mid <= np.maximum(left, right)), axis=-1)
        close = np.all((np.abs(mid - left) <= 2 * quantum) & (np.abs(right - mid) <= 2 * quantum), axis=-1)
        counted += int(inner.sum())
        edges += int((inner & between & (length[1:-1] <= 2)).sum())
        ramps += int((inner & between & is_cell[:-2] & is_cell[2:] & close).sum())
    return (edges / counted, ramps / counted) if counted else (0.0, 0.0)


def split_share(values, cell):
    """Share of the values of a grey mask's cells that mark more than one 8-connected region (0 without cells)."""
    cell = np.asarray(cell, dtype=bool)
    dense = np.zeros(cell.shape, dtype=np.int64)
    dense[cell] = np.unique(np.asarray(values)[cell], return_inverse=True)[1].ravel() + 1
    regions = label_regions(dense, background=0, connectivity=2)
    ids, first = np.unique(regions.ravel(), return_index=True)
    per_value = np.unique(dense.ravel()[first[ids != 0]], return_counts=True)[1]
    return float(np.mean(per_value > 1)) if per_value.size else 0.0


def check_piecewise_constant(values, cell, name, what):
    """Refuse a mask of more than two values that is not piecewise constant, whatever its object sizes and slopes.

    Raises
    ------
    InputError
        Too many neighbouring cell pixels differ (JPEG noise, steep gradients: :func:`changing_share`), too
        many runs are steps of a graded edge or of a ramp (:func:`graded_shares`), or, for a grey mask, too many
        values mark separate regions (:func:`split_share`).
    """
    values = np.asarray(values)
    share = changing_share(values, cell)
    edge, ramp = graded_shares(values, cell)
    split = split_share(values, cell) if values.ndim == 2 else 0.0
    if share >= MAX_CHANGING_SHARE:
        why = (f"{100 * share:.0f}% of neighbouring cell pixels differ, at most {100 * MAX_CHANGING_SHARE:.0f}% "
               "allowed: a gradient or lossy (JPEG) compression?")
    elif edge >= MAX_GRADED_SHARE:
        why = (f"{100 * edge:.0f}% of its runs of cell pixels are 1-2 px steps between their neighbours' values, "
               f"at most {100 * MAX_GRADED_SHARE:.0f}% allowed: anti-aliased or blurred edges?")
    elif ramp >= MAX_GRADED_SHARE:
        why = (f"{100 * ramp:.0f}% of its runs of cell pixels step evenly between their neighbours' values, at "
               f"most {100 * MAX_GRADED_SHARE:.0f}% allowed: an intensity gradient?")
    elif split >= MAX_SPLIT_SHARE:
        why = (f"{100 * split:.0f}% of its values mark several separate regions, at most "
               f"{100 * MAX_SPLIT_SHARE:.0f}% allowed: an intensity gradient over a binary mask, or a class map?")
    else:
        return
    raise InputError(f"{name}: {what} is not piecewise constant ({why}); expected a binary mask, instance labels "
                     "or one flat colour per object")


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
