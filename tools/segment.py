"""Segment whole microscopy images of any size with the deploy net; write probability, mask, overlay, count.

An image file is prepared like the training data (``data_prep``: one channel, percentile normalisation, and
the dataset's resize factor, read from its ``--manifest``; the maps are resized back), padded by
reflection at the bottom and right to a multiple of 8 (three 2x2 poolings), run through the net and cropped
back. Images larger than ``--tile`` are cut into windows of at most ``tile`` pixels whose cores
(``tile - 2 * margin``) tile the image; each window's core is kept. The windows start on multiples of 8 and
the margin covers the receptive field, so the stitched map equals the one-piece forward pass (up to float
rounding) while memory stays bounded by the tile size.

Optional post-processing, as the paper suggests for small false positives: a morphological opening with a
disk of radius ``--opening`` and the removal of objects smaller than ``--min-area`` pixels. Cells are
counted as 8-connected components. ``--evaluate`` scores the mask before and after post-processing against
ground truth (``--truth`` masks, or the ``masks/<i>`` of a whole-image HDF5 file).
"""
import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

STRIDE = 8  # three 2x2 max-poolings: window origins and sizes must be multiples of this
# FCRN-A's output sees 66 px (38 at conv4, widened by the upsampling path). Measured with random weights:
# a 32 px margin already stitches exactly (24 does not); 40 keeps a safety step of 8.
MARGIN = 40
TILE = 512


def pad_to_multiple(image, multiple=STRIDE):
    """Pad a 2-D image at the bottom and right by reflection to a multiple of ``multiple``.

    Returns
    -------
    ndarray
        The padded image; crop back with ``[:H, :W]``.
    """
    h, w = image.shape
    pad = ((0, -h % multiple), (0, -w % multiple))
    # 'symmetric' also works for images smaller than the pad, where 'reflect' would need repeats.
    return np.pad(image, pad, mode="symmetric")


def forward(net, image):
    """Class-1 probability of one 2-D float32 image whose sides are multiples of 8 (one forward pass)."""
    h, w = image.shape
    net.blobs["data"].reshape(1, 1, h, w)
    net.reshape()
    net.blobs["data"].data[0, 0] = image
    net.forward()
    return net.blobs["prob"].data[0, 1].copy()


def windows(length, tile=TILE, margin=MARGIN):
    """Split ``[0, length)`` into tiles: (window start, window end, core start, core end) tuples.

    Cores of ``tile - 2 * margin`` partition the axis; each window is its core plus ``margin`` on both
    sides, clipped to the axis. ``length``, ``tile`` and ``margin`` are multiples of 8, so every window
    starts and ends on a multiple of 8.
    """
    if length <= tile:
        return [(0, length, 0, length)]
    core = tile - 2 * margin
    out = []
    for c0 in range(0, length, core):
        c1 = min(c0 + core, length)
        out.append((max(0, c0 - margin), min(length, c1 + margin), c0, c1))
    return out


def segment(net, image, tile=TILE, margin=MARGIN, progress=False):
    """Probability of the cell class for every pixel of a normalised 2-D image of any size.

    Parameters
    ----------
    net : caffe.Net
        The deploy net (input ``data``, output ``prob`` with 2 channels).
    image : (H, W) array_like of float
        Intensities in [0, 1], normalised like the training data (see :func:`prepare`).
    tile : int
        Largest window side passed to the net at once (multiple of 8, larger than ``2 * margin``).
    margin : int
        Context kept around each window's core (multiple of 8); at least the receptive-field radius
        for the stitched result to equal the one-piece forward pass.
    progress : bool
        Show a progress bar over the windows.

    Returns
    -------
    (H, W) ndarray of float32 in [0, 1]
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2 or min(image.shape) < 1:
        raise ValueError(f"image must be a non-empty 2-D array, got shape {image.shape}")
    if not np.all(np.isfinite(image)):
        raise ValueError("image contains NaN or infinite values")
    if tile % STRIDE or margin % STRIDE or margin < 0 or tile <= 2 * margin:
        raise ValueError(f"tile ({tile}) and margin ({margin}) must be multiples of {STRIDE} "
                         f"with tile > 2 * margin")
    h, w = image.shape
    padded = pad_to_multiple(image)
    rows, cols = windows(padded.shape[0], tile, margin), windows(padded.shape[1], tile, margin)
    prob = np.empty(padded.shape, dtype=np.float32)
    cells = [(r, c) for r in rows for c in cols]
    if progress and len(cells) > 1:
        from tqdm import tqdm

        cells = tqdm(cells, desc="tiles", unit="tile", leave=False)
    for (y0, y1, cy0, cy1), (x0, x1, cx0, cx1) in cells:
        out = forward(net, padded[y0:y1, x0:x1])
        prob[cy0:cy1, cx0:cx1] = out[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    return prob[:h, :w]


def prepare(raw, channel=None, name="image", scale=1.0, percentiles=(1.0, 99.8)):
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
    net_input, _ = prepare_pair(gray, np.zeros(gray.shape, np.uint8), name, scale=scale, pct=tuple(percentiles))
    return image, net_input


def dataset_preprocessing(manifest):
    """``scale`` and ``percentiles`` a dataset was built with, from its ``manifest.json`` (data_prep)."""
    params = json.loads(Path(manifest).read_text()).get("parameters", {})
    return float(params.get("scale") or 1.0), tuple(params.get("percentiles") or (1.0, 99.8))


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


def _atomic(path, write):
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_png(path, array):
    """Write a uint8 gray or RGB array as PNG, atomically."""
    from PIL import Image

    _atomic(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def save_prob(path, prob):
    """Write a float32 probability map as TIFF (``.tif``/``.tiff``) or ``.npy``, atomically."""
    prob = np.asarray(prob, dtype=np.float32)
    if Path(path).suffix == ".npy":
        _atomic(path, lambda tmp: np.save(tmp, prob))
    else:
        import tifffile

        _atomic(path, lambda tmp: tifffile.imwrite(tmp, prob, photometric="minisblack"))


def segment_and_save(net, image, out, stem, threshold=0.5, opening=0, min_area=0, truth=None, tile=TILE,
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
    prob = segment(net, image if net_input is None else net_input, tile=tile, progress=True)
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


def check_model(caffe, deploy, model):
    """Raise ValueError unless ``deploy`` parses as a net with a ``prob`` output and ``model`` as weights.

    Caffe aborts the whole process on an unreadable file; checking here turns that into an error message.
    """
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format

    try:
        net = text_format.Parse(Path(deploy).read_text(), caffe_pb2.NetParameter())
    except text_format.ParseError as err:
        raise ValueError(f"{deploy}: not a Caffe net prototxt ({err})") from None
    if not any("prob" in layer.top for layer in net.layer):
        raise ValueError(f"{deploy}: no layer writes the 'prob' blob (expected the deploy net)")
    weights = caffe_pb2.NetParameter()
    try:
        weights.ParseFromString(Path(model).read_bytes())
    except Exception as err:  # protobuf's DecodeError; the module path differs between versions
        raise ValueError(f"{model}: not a .caffemodel ({type(err).__name__})") from None
    if not weights.layer and not weights.layers:
        raise ValueError(f"{model}: not a .caffemodel (no layers)")


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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="TIFF/PNG image (normalised like the training data), or a whole-image HDF5 file "
                             "(images/<i>, masks/<i>, e.g. runs/data/real/test_full.h5)")
    parser.add_argument("--model", required=True, help="trained weights (.caffemodel)")
    parser.add_argument("--deploy", default=str(REPO / "prototxt" / "deploy.prototxt"),
                        help="deploy net (default: %(default)s)")
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
    parser.add_argument("--tile", type=int, default=TILE, help="largest window side (default: %(default)s)")
    parser.add_argument("--prob-format", choices=("tif", "npy"), default="tif")
    parser.add_argument("--gpu", type=int, help="CUDA device id (default: CPU)")
    args = parser.parse_args(argv)
    if not 0 <= args.threshold <= 1:
        parser.error("--threshold must lie in [0, 1]")
    if args.opening < 0 or args.min_area < 0:
        parser.error("--opening and --min-area must be >= 0")
    if args.tile % STRIDE or args.tile <= 2 * MARGIN:
        parser.error(f"--tile must be a multiple of {STRIDE} larger than {2 * MARGIN}")
    for path in [args.model, args.deploy, *args.images, *(args.truth or [])]:
        if not Path(path).is_file():
            print(f"error: {path}: no such file", file=sys.stderr)
            return 1
    from data_prep.errors import DataPrepError
    from tools import caffe_env

    try:
        scale, percentiles = dataset_preprocessing(args.manifest) if args.manifest else (1.0, (1.0, 99.8))
        scale = args.scale if args.scale is not None else scale
        if not 0 < scale <= 16:
            raise ValueError(f"--scale must be in (0, 16], got {scale}")
        caffe = caffe_env.import_caffe(args.gpu)
        check_model(caffe, args.deploy, args.model)
        net = caffe.Net(str(args.deploy), caffe.TEST, weights=str(args.model))
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        results = []
        for stem, image, net_input, truth in _inputs(args.images, args.truth, args.channel, scale, percentiles):
            if args.evaluate and truth is None:
                raise ValueError(f"{stem}: --evaluate needs a ground-truth mask (--truth)")
            result = segment_and_save(net, image, out, stem, args.threshold, args.opening, args.min_area,
                                      truth if args.evaluate else None, args.tile, args.prob_format, net_input)
            results.append(result)
            line = f"{stem}: {result['cells']} cells ({result['cells_raw']} before post-processing)"
            if "scores" in result:
                line += f", MCC {result['scores_raw']['mcc']:.4f} -> {result['scores']['mcc']:.4f}"
            print(line)
    except (OSError, ValueError, KeyError, json.JSONDecodeError, DataPrepError, caffe_env.CaffeNotFound) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    summary = {"model": str(args.model), "deploy": str(args.deploy), "scale": scale,
               "percentiles": list(percentiles), "images": results}
    _atomic(out / "segment.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=2) + "\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
