"""Real images with masks -> train (random patches, x8 dihedral augmentation), val and test (tiles) splits."""

import numpy as np
from skimage.transform import resize

from cellfcn.constants import PCT_HIGH, PCT_LOW
from cellfcn.errors import InputError
from cellfcn.images import mask_labels, resize_labels, resize_normalized, to_gray
from cellfcn.scale import pooled_median_diameter

from .augment import augment_dihedral
from .normalize import normalize_percentile
from .patches import cell_fraction, extract_patches, sample_patches, tile_origins
from .targets import contour_targets, micronucleus_targets


def prepare_pair(raw_image, raw_mask, name, channel=None, scale=1.0, pct=(PCT_LOW, PCT_HIGH)):
    """Turn a decoded image/mask pair into a normalised float32 image, a boolean mask and instance labels.

    The image is reduced to one channel, normalised per image (:func:`normalize_percentile`), then
    image and mask are resized by ``scale`` (bilinear with anti-aliasing when shrinking; the mask as by
    :func:`resize_mask`, so object areas scale by ``scale**2``). The instance labels
    (:func:`cellfcn.images.mask_labels`) are resized to cover exactly that mask
    (:func:`cellfcn.images.resize_labels`).

    Returns
    -------
    image : (H', W') float32 in [0, 1]
    mask : (H', W') bool
    labels : (H', W') int32
        Nuclei 1..n, 0 background; ``labels > 0`` equals ``mask``.

    Raises
    ------
    InputError
        Size mismatch, NaN/constant image, unusable channel layout.
    """
    image = to_gray(raw_image, channel, name)
    labels = mask_labels(raw_mask, name)
    mask = labels > 0
    if image.shape != mask.shape:
        raise InputError(f"{name}: image is {image.shape[1]}x{image.shape[0]} but its mask is "
                         f"{mask.shape[1]}x{mask.shape[0]}")
    image = normalize_percentile(image, *pct, name=name)
    if scale != 1:
        image = resize_normalized(image, scale)
        mask = resize_mask(mask, image.shape, scale)
        labels = resize_labels(labels, mask)
    return image, mask, labels


def resize_mask(mask, shape, scale):
    """A boolean mask resized to ``shape`` as a 0/1 float image (bilinear, anti-aliased when ``scale`` < 1)
    thresholded at 0.5."""
    return resize(np.asarray(mask, dtype=np.float32), shape, order=1, anti_aliasing=scale < 1) >= 0.5


def prepare_micronuclei(labels, raw_shape, shape, name, scale=1.0):
    """The micronucleus mask of an image of ``raw_shape`` that :func:`prepare_pair` resized by ``scale`` to
    ``shape``, resized as its nucleus mask was.

    Parameters
    ----------
    labels : (H, W) array_like
        Decoded micronucleus labels (:func:`cellfcn.images.read_mask`); every non-zero pixel is micronucleus.

    Raises
    ------
    InputError
        The mask's size is not the image's.
    """
    mask = np.asarray(labels) > 0
    if mask.shape != tuple(raw_shape):
        raise InputError(f"{name}: the micronucleus mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                         f"{raw_shape[1]}x{raw_shape[0]}")
    return resize_mask(mask, shape, scale)


def train_split(images, masks, targets, n, size, rng, min_cell_fraction):
    """``n`` non-overlapping random patches passing the near-empty rule, each under all 8 dihedral
    transforms (8n patches), in a seeded random order (Caffe's LMDB Data layer does not shuffle).

    ``targets`` maps a key (``label3``, ``label4``) to one whole-image target per image
    (:mod:`data_prep.targets`); each is cut and transformed as its image.

    Returns
    -------
    dict
        ``data`` (8n, P, P) float32, ``label`` (8n, P, P) bool, every key of ``targets`` (8n, P, P) uint8,
        ``source_index`` (8n,), ``origin`` (8n, 2) and ``transform`` (8n,) (dihedral index, see
        :func:`data_prep.augment.dihedral`).
    """
    index, origin = sample_patches(masks, n, size, rng, min_cell_fraction, overlap=False)

    def cut(stack):
        return np.stack([stack[i][y:y + size, x:x + size] for i, (y, x) in zip(index, origin)])

    def augmented(whole):  # a target under the transforms of its image (the mask slot of augment_dihedral)
        patches = cut(whole)
        return augment_dihedral(patches, patches)[1]

    data, label, transform = augment_dihedral(cut(images), cut(masks))
    cut_targets = {key: augmented(whole) for key, whole in targets.items()}
    order = rng.permutation(len(data))
    return {"data": data[order], "label": label[order], **{k: v[order] for k, v in cut_targets.items()},
            "source_index": np.repeat(index, 8)[order], "origin": np.repeat(origin, 8, axis=0)[order],
            "transform": transform[order]}


def tile_split(images, masks, targets, size):
    """Every non-overlapping ``size`` tile of every image, in image then raster order, no augmentation.

    Returns
    -------
    dict
        ``data``, ``label``, every key of ``targets`` (see :func:`train_split`), ``source_index`` (N,),
        ``origin`` (N, 2) (y, x of the tile in its image).
    """
    stacks = {"data": images, "label": masks, **targets}
    tiles = {key: [] for key in stacks}
    index, origin = [], []
    for i, image in enumerate(images):
        corners = tile_origins(image.shape, size)
        for key, stack in stacks.items():
            tiles[key].append(extract_patches(stack[i], corners, size))
        index.append(np.full(len(corners), i, dtype=np.int32))
        origin.append(corners)
    if not sum(len(o) for o in origin):
        raise InputError(f"no image is at least {size}x{size} pixels: cannot tile")
    return {**{key: np.concatenate(parts) for key, parts in tiles.items()},
            "source_index": np.concatenate(index), "origin": np.concatenate(origin)}


def build_real_splits(train, val, test, n_train, size, rng, min_cell_fraction):
    """Assemble the train/val/test splits of a real dataset.

    Parameters
    ----------
    train, val, test : list of (name, image, mask, labels[, micronuclei])
        Prepared pairs (see :func:`prepare_pair`); the three lists hold different images. ``micronuclei``
        (:func:`prepare_micronuclei`), where given, makes the 4-class targets' micronucleus class.
    n_train : int
        Training patches before the x8 augmentation.
    size : int
        Patch side.
    rng : numpy.random.Generator
    min_cell_fraction : float
        Near-empty rule for training patches (see :mod:`data_prep.patches`).

    Returns
    -------
    splits : dict of name -> arrays (see :func:`train_split`, :func:`tile_split`), with ``label3`` and
        ``label4`` (:mod:`data_prep.targets`)
    info : dict of name -> manifest entry (counts, cell fractions, image names)
    full : dict of name -> (images, masks, labels, names) for train, val and test (whole images)
    diameter : float or None
        Median nucleus diameter of the training images (pixels, :func:`cellfcn.scale.pooled_median_diameter`).
    """
    if not any(item[2].any() for item in train + val + test):
        raise InputError("every mask is empty: no cell pixels to learn from")
    if not any(item[2].any() for item in train):
        raise InputError("every training mask is empty")
    splits, full, info = {}, {}, {}
    for name, items in (("train", train), ("val", val), ("test", test)):
        names, images, masks, labels = ([item[k] for item in items] for k in range(4))
        label3 = [contour_targets(label) for label in labels]
        label4 = [micronucleus_targets(t, item[4] if len(item) > 4 else None) for t, item in zip(label3, items)]
        targets = {"label3": label3, "label4": label4}
        if name == "train":
            split = train_split(images, masks, targets, n_train, size, rng, min_cell_fraction)
            info[name] = {"n_patches_before_augmentation": n_train, "augmentation": "8 dihedral transforms"}
        else:
            split = tile_split(images, masks, targets, size)
            info[name] = {"tiling": f"non-overlapping {size}x{size} from the top-left corner"}
        full[name] = (images, masks, labels, names)
        splits[name] = split
        info[name] = {"n": len(split["data"]), "cell_fraction": round(cell_fraction(split["label"]), 6),
                      "image_cell_fraction": round(cell_fraction(masks), 6), "n_images": len(items),
                      **info[name], "images": names}
    return splits, info, full, pooled_median_diameter(item[3] for item in train)
