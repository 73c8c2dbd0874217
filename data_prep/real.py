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
from .targets import contour_targets


def prepare_pair(raw_image, raw_mask, name, channel=None, scale=1.0, pct=(PCT_LOW, PCT_HIGH)):
    """Turn a decoded image/mask pair into a normalised float32 image, a boolean mask and instance labels.

    The image is reduced to one channel, normalised per image (:func:`normalize_percentile`), then
    image and mask are resized by ``scale`` (bilinear with anti-aliasing when shrinking; the mask is
    resized as a 0/1 float image and thresholded at 0.5, so object areas scale by ``scale**2``). The
    instance labels (:func:`cellfcn.images.mask_labels`) are resized to cover exactly that mask
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
        mask = resize(mask.astype(np.float32), image.shape, order=1, anti_aliasing=scale < 1) >= 0.5
        labels = resize_labels(labels, mask)
    return image, mask, labels


def train_split(images, masks, targets, n, size, rng, min_cell_fraction):
    """``n`` non-overlapping random patches passing the near-empty rule, each under all 8 dihedral
    transforms (8n patches), in a seeded random order (Caffe's LMDB Data layer does not shuffle).

    Returns
    -------
    dict
        ``data`` (8n, P, P) float32, ``label`` (8n, P, P) bool, ``label3`` (8n, P, P) uint8 (the 3-class
        targets, :func:`data_prep.targets.contour_targets` of the whole image, under the same transform),
        ``source_index`` (8n,), ``origin`` (8n, 2) and ``transform`` (8n,) (dihedral index, see
        :func:`data_prep.augment.dihedral`).
    """
    index, origin = sample_patches(masks, n, size, rng, min_cell_fraction, overlap=False)
    data = np.stack([images[i][y:y + size, x:x + size] for i, (y, x) in zip(index, origin)])
    label = np.stack([masks[i][y:y + size, x:x + size] for i, (y, x) in zip(index, origin)])
    label3 = np.stack([targets[i][y:y + size, x:x + size] for i, (y, x) in zip(index, origin)])
    data, label, transform = augment_dihedral(data, label)
    label3 = augment_dihedral(label3, label3)[1]
    order = rng.permutation(len(data))
    return {"data": data[order], "label": label[order], "label3": label3[order],
            "source_index": np.repeat(index, 8)[order], "origin": np.repeat(origin, 8, axis=0)[order],
            "transform": transform[order]}


def tile_split(images, masks, targets, size):
    """Every non-overlapping ``size`` tile of every image, in image then raster order, no augmentation.

    Returns
    -------
    dict
        ``data``, ``label``, ``label3`` (3-class targets), ``source_index`` (N,), ``origin`` (N, 2) (y, x of
        the tile in its image).
    """
    data, label, label3, index, origin = [], [], [], [], []
    for i, (image, mask, target) in enumerate(zip(images, masks, targets)):
        corners = tile_origins(image.shape, size)
        data.append(extract_patches(image, corners, size))
        label.append(extract_patches(mask, corners, size))
        label3.append(extract_patches(target, corners, size))
        index.append(np.full(len(corners), i, dtype=np.int32))
        origin.append(corners)
    if not sum(len(o) for o in origin):
        raise InputError(f"no image is at least {size}x{size} pixels: cannot tile")
    return {"data": np.concatenate(data), "label": np.concatenate(label), "label3": np.concatenate(label3),
            "source_index": np.concatenate(index), "origin": np.concatenate(origin)}


def build_real_splits(train, val, test, n_train, size, rng, min_cell_fraction):
    """Assemble the train/val/test splits of a real dataset.

    Parameters
    ----------
    train, val, test : list of (name, image, mask, labels)
        Prepared pairs (see :func:`prepare_pair`); the three lists hold different images.
    n_train : int
        Training patches before the x8 augmentation.
    size : int
        Patch side.
    rng : numpy.random.Generator
    min_cell_fraction : float
        Near-empty rule for training patches (see :mod:`data_prep.patches`).

    Returns
    -------
    splits : dict of name -> arrays (see :func:`train_split`, :func:`tile_split`)
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
        targets = [contour_targets(label) for label in labels]
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
