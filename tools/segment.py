"""Segment whole microscopy images of any size with the deploy net; write probability, mask, overlay, count.

An image file is prepared like the training data (``data_prep``: one channel, percentile normalisation, and
the dataset's resize factor, read from its ``--manifest``; the maps are resized back) and run through the net
in tiles by :mod:`tools.infer`, whose weight check refuses a model of another net. Two inputs that would
write the same output names are refused.

Optional post-processing, as the paper suggests for small false positives: a morphological opening with a
disk of radius ``--opening`` and the removal of objects smaller than ``--min-area`` pixels. Cells are
counted as 8-connected components. ``--evaluate`` scores the mask before and after post-processing against
ground truth (``--truth`` masks, or the ``masks/<i>`` of a whole-image HDF5 file).
"""
import argparse
import sys
from pathlib import Path

import numpy as np

from cellfcn import cli, files
from cellfcn.constants import PCT_HIGH, PCT_LOW, STRIDE
from cellfcn.errors import InputError
from tools import infer


def prepare(raw, channel=None, name="image", scale=1.0, percentiles=(PCT_LOW, PCT_HIGH)):
    """Turn a decoded image file into what the net sees, exactly as data_prep prepares real images.

    Parameters
    ----------
    raw : ndarray
        Decoded file (gray, or colour with ``channel``).
    channel : int, optional
    name : str
        Used in error messages.
    scale : float
        Resize factor of the dataset the model was trained on (``parameters.scale`` in its manifest).
    percentiles : (float, float)
        Normalisation percentiles of that dataset (``parameters.percentiles``).

    Returns
    -------
    image : (H, W) float32 in [0, 1]
        Normalised at the file's own size (what outputs are written at).
    net_input : (h, w) float32 in [0, 1]
        Normalised, then resized by ``scale`` (``data_prep.real.prepare_pair``: the same function that made
        the training patches).
    """
    from data_prep.io import to_gray
    from data_prep.normalize import normalize_percentile
    from data_prep.real import prepare_pair

    gray = to_gray(raw, channel=channel, name=name)
    image = normalize_percentile(gray, *percentiles, name=name)
    if scale == 1:
        return image, image
    net_input = prepare_pair(gray, np.zeros(gray.shape, np.uint8), name, scale=scale, pct=tuple(percentiles))[0]
    return image, net_input


def dataset_preprocessing(manifest):
    """``scale`` and ``percentiles`` a dataset was built with, from its ``manifest.json`` (data_prep)."""
    params = files.read_json(manifest, "dataset manifest").get("parameters", {})
    return float(params.get("scale") or 1.0), tuple(params.get("percentiles") or (PCT_LOW, PCT_HIGH))


def _disk(radius):
    y, x = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return x * x + y * y <= radius * radius


def postprocess(mask, opening=0, min_area=0):
    """Remove small false positives from a binary mask.

    Parameters
    ----------
    mask : (H, W) array_like of bool
    opening : int
        Radius in pixels of the disk of a morphological opening (0: none). The image border is extended
        by replication so objects touching it are not eroded from outside.
    min_area : int
        Objects (8-connected) with fewer pixels are removed (0: none).

    Returns
    -------
    (H, W) ndarray of bool
    """
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    if opening < 0 or min_area < 0:
        raise ValueError("opening and min_area must be >= 0")
    if opening:
        padded = np.pad(mask, opening, mode="edge")
        mask = ndimage.binary_opening(padded, structure=_disk(opening))[opening:-opening, opening:-opening]
    if min_area:
        labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
        areas = np.bincount(labels.ravel(), minlength=n + 1)
        keep = areas >= min_area
        keep[0] = False
        mask = keep[labels]
    return mask


def count_cells(mask):
    """Number of 8-connected foreground components of a binary mask."""
    from scipy import ndimage

    return int(ndimage.label(np.asarray(mask, dtype=bool), structure=np.ones((3, 3), dtype=bool))[1])


def overlay(image, mask, truth=None):
    """RGB uint8 picture of ``image`` (in [0, 1]) with the mask outline in red and the truth's in green."""
    from skimage.segmentation import find_boundaries

    gray = (np.clip(np.asarray(image, dtype=np.float64), 0, 1) * 255).round().astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    if truth is not None:
        rgb[find_boundaries(np.asarray(truth, dtype=bool), mode="inner")] = (0, 220, 0)
    rgb[find_boundaries(np.asarray(mask, dtype=bool), mode="inner")] = (255, 40, 40)
    return rgb


def save_png(path, array):
    """Write a uint8 gray or RGB array as PNG, atomically."""
    from PIL import Image

    with files.atomic_file(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def save_prob(path, prob):
    """Write a float32 probability map as TIFF (``.tif``/``.tiff``) or ``.npy``, atomically."""
    prob = np.asarray(prob, dtype=np.float32)
    with files.atomic_file(path) as tmp:
        if Path(path).suffix == ".npy":
            np.save(tmp, prob)
        else:
            import tifffile

            tifffile.imwrite(tmp, prob, photometric="minisblack")


def segment_and_save(net, image, out, stem, threshold=0.5, opening=0, min_area=0, truth=None, tile=infer.TILE,
                     prob_format="tif", net_input=None):
    """Segment one normalised image and write ``<stem>_prob.<fmt>``, ``_mask.png`` and ``_overlay.png``.

    Parameters
    ----------
    net : caffe.Net
    image : (H, W) float32 in [0, 1]
        The image; every output has its size.
    net_input : (h, w) float32 in [0, 1], optional
        What the net sees when it differs from ``image`` (resized like the training data, see
        :func:`prepare`); its probability map is resized back to (H, W) bilinearly.
    out : path
        Existing output folder.
    stem : str
        File-name stem.
    threshold : float
        A pixel is a cell where its probability is >= ``threshold``.
    opening, min_area : int
        Post-processing (see :func:`postprocess`); the mask written is the post-processed one.
    truth : (H, W) array_like of bool, optional
        Ground truth: scores before and after post-processing, and the truth's outline in the overlay.
    tile : int
    prob_format : {'tif', 'npy'}

    Returns
    -------
    dict
        ``name``, ``shape``, ``threshold``, ``cells`` and ``cells_raw`` (counts after and before
        post-processing), the written ``files`` and, with ``truth``, ``scores``/``scores_raw``.
    """
    from tools.metrics import binary_scores

    out = Path(out)
    if truth is not None:
        truth = np.asarray(truth, dtype=bool)
        if truth.shape != np.shape(image):
            raise ValueError(f"{stem}: ground truth shape {truth.shape} differs from the image's {np.shape(image)}")
    prob = infer.segment_image(net, image if net_input is None else net_input, tile=tile, progress=True)
    if prob.shape != np.shape(image):
        from skimage.transform import resize

        prob = np.clip(resize(prob, np.shape(image), order=1, preserve_range=True), 0, 1).astype(np.float32)
    raw = prob >= threshold
    mask = postprocess(raw, opening, min_area)
    files = {"prob": f"{stem}_prob.{prob_format}", "mask": f"{stem}_mask.png", "overlay": f"{stem}_overlay.png"}
    save_prob(out / files["prob"], prob)
    save_png(out / files["mask"], mask.astype(np.uint8) * 255)
    save_png(out / files["overlay"], overlay(image, mask, truth))
    result = {"name": stem, "shape": list(image.shape), "threshold": float(threshold), "opening": int(opening),
              "min_area": int(min_area), "cells_raw": count_cells(raw), "cells": count_cells(mask),
              "files": files}
    if truth is not None:
        result["cells_true"] = count_cells(truth)
        result["scores_raw"] = binary_scores(raw, truth)
        result["scores"] = binary_scores(mask, truth)
    return result


def _inputs(paths, truths, channel, scale, percentiles):
    """Yield (stem, image, net input, truth or None) for image files and whole-image HDF5 files."""
    from data_prep.io import read_array, to_binary_mask

    truths = list(truths or [])
    files = [p for p in paths if Path(p).suffix.lower() not in (".h5", ".hdf5")]
    if truths and len(truths) != len(files):
        raise ValueError(f"got {len(truths)} --truth masks for {len(files)} image files; give one per image")
    truth_of = dict(zip(files, truths))
    for path in paths:
        if Path(path).suffix.lower() in (".h5", ".hdf5"):
            import h5py

            # Already prepared by data_prep (normalised and resized): used as they are.
            with h5py.File(path, "r") as f:
                if "images" not in f:
                    raise ValueError(f"{path}: no 'images' group (expected a whole-image file like test_full.h5)")
                for key in sorted(f["images"], key=int):
                    image = f["images"][key][()].astype(np.float32)
                    truth = f["masks"][key][()].astype(bool) if "masks" in f and key in f["masks"] else None
                    yield f"{Path(path).stem}_{int(key):03d}", image, image, truth
        else:
            image, net_input = prepare(read_array(path), channel, str(path), scale, percentiles)
            truth = to_binary_mask(read_array(truth_of[path]), name=str(truth_of[path])) if path in truth_of else None
            yield Path(path).stem, image, net_input, truth


def check_distinct_outputs(paths):
    """Refuse inputs that would write the same output files (``a.tif`` and ``a.png``, or two folders' ``a.tif``).

    Raises
    ------
    InputError
        Names both inputs.
    """
    import h5py

    seen = {}
    for path in paths:
        if Path(path).suffix.lower() in (".h5", ".hdf5"):
            try:
                with h5py.File(path, "r") as f:
                    stems = [f"{Path(path).stem}_{int(k):03d}" for k in f.get("images", {})]
            except OSError as err:
                raise InputError(f"cannot read {path}: {err}") from None
        else:
            stems = [Path(path).stem]
        for stem in stems:
            if stem in seen:
                raise InputError(f"{seen[stem]} and {path} would both write {stem}_*: rename one, or segment "
                                 f"them into different --out folders")
            seen[stem] = path


def _main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tools.segment", description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="TIFF/PNG image (normalised like the training data), or a whole-image HDF5 file "
                             "(images/<i>, masks/<i>, e.g. runs/data/real/test_full.h5)")
    parser.add_argument("--model", required=True, help="trained weights (.caffemodel)")
    parser.add_argument("--deploy", default=str(infer.DEPLOY), help="deploy net (default: %(default)s)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--threshold", type=float, default=0.5, help="cell where prob >= T (default: %(default)s)")
    parser.add_argument("--opening", type=int, default=0, help="opening with a disk of this radius (px)")
    parser.add_argument("--min-area", type=int, default=0, help="remove objects smaller than this (px)")
    parser.add_argument("--truth", action="append", help="ground-truth mask, once per TIFF/PNG IMAGE in order")
    parser.add_argument("--evaluate", action="store_true",
                        help="score masks with and without post-processing against the ground truth")
    parser.add_argument("--channel", type=int, help="channel of a colour image to segment")
    parser.add_argument("--manifest", help="manifest.json of the dataset the model was trained on: image files "
                                           "are resized and normalised like it (e.g. runs/data/real/manifest.json)")
    parser.add_argument("--scale", type=float, help="resize image files by this before the net (default: the "
                                                    "--manifest's scale, else 1); outputs keep the file's size")
    parser.add_argument("--tile", type=int, default=infer.TILE, help="largest window side (default: %(default)s)")
    parser.add_argument("--prob-format", choices=("tif", "npy"), default="tif")
    parser.add_argument("--gpu", type=int, help="CUDA device id (default: CPU)")
    args = parser.parse_args(argv)
    if not 0 <= args.threshold <= 1:
        parser.error("--threshold must lie in [0, 1]")
    if args.opening < 0 or args.min_area < 0:
        parser.error("--opening and --min-area must be >= 0")
    if args.tile % STRIDE or args.tile <= 2 * infer.MARGIN:
        parser.error(f"--tile must be a multiple of {STRIDE} larger than {2 * infer.MARGIN}")
    if args.scale is not None and not 0 < args.scale <= 16:
        parser.error(f"--scale must be in (0, 16], got {args.scale}")
    for path in [args.model, args.deploy, *args.images, *(args.truth or [])]:
        if not Path(path).is_file():
            raise InputError(f"{path}: no such file")
    check_distinct_outputs(args.images)
    scale, percentiles = dataset_preprocessing(args.manifest) if args.manifest else (1.0, (PCT_LOW, PCT_HIGH))
    scale = args.scale if args.scale is not None else scale
    out = Path(args.out)
    files.check_writable(out / "segment.json")
    net = infer.load_model(args.model, args.deploy, args.gpu)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for stem, image, net_input, truth in _inputs(args.images, args.truth, args.channel, scale, percentiles):
            if args.evaluate and truth is None:
                raise InputError(f"{stem}: --evaluate needs a ground-truth mask (--truth)")
            result = segment_and_save(net, image, out, stem, args.threshold, args.opening, args.min_area,
                                      truth if args.evaluate else None, args.tile, args.prob_format, net_input)
            results.append(result)
            line = f"{stem}: {result['cells']} cells ({result['cells_raw']} before post-processing)"
            if "scores" in result:
                line += f", MCC {result['scores_raw']['mcc']:.4f} -> {result['scores']['mcc']:.4f}"
            print(line)
    except (ValueError, KeyError) as err:
        raise InputError(str(err)) from None
    files.write_json(out / "segment.json", {"model": str(args.model), "deploy": str(args.deploy), "scale": scale,
                                            "percentiles": list(percentiles), "images": results})


def main(argv=None):
    """Run the command; return its exit status (see cellfcn.cli)."""
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
