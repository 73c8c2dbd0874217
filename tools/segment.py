"""Segment and count nuclei in whole microscopy images of any size (``make segment IN=<folder>``).

Every TIFF/PNG image of the input folders (or the files named) is prepared like the training data
(``data_prep``: one channel, percentile normalisation, the dataset's resize factor, read from its
``--manifest``; the maps are resized back), run through the net in tiles by :mod:`tools.infer` (whose weight
check refuses a model of another net) and cut into nuclei by :func:`tools.objects.instances_from_probs`
with the parameters ``make evaluate`` chose on the validation images (``--params``: its ``objects.json``),
or with explicit ``--threshold``, ``--opening`` and ``--min-area`` (pixels at the net's scale, like the
dataset's), at the net's scale; maps and labels are then resized back to the file's size. Per image it writes ``<stem>_prob.tif``
(float32), ``<stem>_labels.tif`` (int32 instances), ``<stem>_overlay.png`` (instance outlines in red) and
``<stem>.json`` (its record), and for the whole run one ``counts.csv`` (file, cells, areas, status, error).

- One image that fails (unreadable file, no usable channel) is recorded in ``counts.csv`` with its error and
  the rest go on; the exit status is then 1 with a one-line summary.
- A rerun skips every image whose record holds the same digest of model, deploy net, parameters,
  preprocessing and image file, and whose outputs exist.
- Serially in this process (``--workers 0``), or on Dask's distributed scheduler: a ``LocalCluster`` of
  ``--workers`` processes (default: one per core), or an existing cluster (``--scheduler tcp://host:8786``;
  its workers must see the same paths). Each worker process loads the net once and writes its images' files
  itself (atomically); the per-image function is the same in both paths, and so are the outputs, byte for
  byte: every process runs BLAS with one thread (``WORKER_ENV``; the cores are shared out by processes), as
  OpenBLAS's float sums depend on its thread count in the last bits. Memory: every process holds its own
  net, measured at about 7 GB resident with ``--tile 512`` on 576 x 652 images; a smaller ``--tile`` or
  fewer ``--workers`` where memory is short.
"""
import argparse
import csv
import io
import os
import sys
import time
from pathlib import Path

import numpy as np

from cellfcn import cli, files
from cellfcn.constants import PCT_HIGH, PCT_LOW, STRIDE
from cellfcn.errors import CellfcnError, InputError
from tools import infer
from tools import objects as O

REPO = Path(__file__).resolve().parent.parent
IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
PARAM_KEYS = ("threshold", "opening_radius", "min_area", "min_distance", "smooth_sigma", "min_dynamic")
CSV_FIELDS = ("file", "status", "cells", "mean_area_px", "median_area_px", "min_area_px", "max_area_px",
              "cell_fraction", "height", "width", "error")
# One BLAS thread per process: n processes on n cores, not n x n threads; also the serial path, for identical
# outputs (set before pycaffe loads libopenblas, which reads it once).
WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


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
    """``scale`` and ``percentiles`` a dataset was built with, from its ``manifest.json`` (data_prep).

    Every data_prep manifest records its percentiles; a missing one means the file is not such a manifest, not
    a default. Only a dataset built without resizing (synthetic) records no scale: it was built at 1.
    """
    params = files.read_json(manifest, "dataset manifest").get("parameters", {})
    if "percentiles" not in params:
        raise InputError(f"{manifest}: no parameters.percentiles (not a data_prep manifest?)")
    return float(params.get("scale", 1.0)), tuple(params["percentiles"])


def overlay(image, labels, truth=None):
    """RGB uint8 picture of ``image`` (in [0, 1]) with the outline of every instance of ``labels`` in red
    (touching nuclei show their shared border) and, optionally, those of the ``truth`` labels in green."""
    from skimage.segmentation import find_boundaries

    gray = (np.clip(np.asarray(image, dtype=np.float64), 0, 1) * 255).round().astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    if truth is not None:
        rgb[find_boundaries(np.asarray(truth), mode="inner")] = (0, 220, 0)
    rgb[find_boundaries(np.asarray(labels), mode="inner")] = (255, 40, 40)
    return rgb


def save_png(path, array):
    """Write a uint8 gray or RGB array as PNG, atomically."""
    from PIL import Image

    with files.atomic_file(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def save_tiff(path, array):
    """Write a gray array (float32 map, int32 labels) as TIFF in its own dtype, atomically."""
    import tifffile

    with files.atomic_file(path) as tmp:
        tifffile.imwrite(tmp, np.asarray(array), photometric="minisblack")


def save_outputs(out, stem, image, prob, labels, truth=None):
    """Write ``<stem>_prob.tif``, ``<stem>_labels.tif`` and ``<stem>_overlay.png`` into ``out``.

    Returns
    -------
    dict
        ``prob``, ``labels``, ``overlay``: the file names written.
    """
    names = {"prob": f"{stem}_prob.tif", "labels": f"{stem}_labels.tif", "overlay": f"{stem}_overlay.png"}
    save_tiff(Path(out) / names["prob"], np.asarray(prob, dtype=np.float32))
    save_tiff(Path(out) / names["labels"], np.asarray(labels, dtype=np.int32))
    save_png(Path(out) / names["overlay"], overlay(image, labels, truth))
    return names


def area_stats(labels):
    """Count and size of the nuclei of an instance label image (areas in pixels of the written image)."""
    labels = np.asarray(labels)
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    stats = {"cells": int(areas.size), "cell_fraction": round(float((labels > 0).mean()), 6)}
    for key, fn in (("mean_area_px", np.mean), ("median_area_px", np.median), ("min_area_px", np.min),
                    ("max_area_px", np.max)):
        stats[key] = round(float(fn(areas)), 2) if areas.size else None
    return stats


def segment_prepared(net, image, net_input, params, tile=infer.TILE):
    """Probability map and instance labels of one prepared image, both at the size of ``image``.

    The nuclei are cut out at the net's scale, where ``make evaluate`` chose ``params`` (areas and distances
    in pixels of the dataset's scale); then the map is resized back bilinearly and the labels by nearest
    neighbour.

    Parameters
    ----------
    net : caffe.Net
    image : (H, W) float32 in [0, 1]
        The image at its own size (what the outputs are written at).
    net_input : (h, w) float32 in [0, 1]
        What the net sees (:func:`prepare`).
    params : dict
        Keyword arguments of :func:`tools.objects.instances_from_probs` (``PARAM_KEYS``).
    tile : int

    Returns
    -------
    prob : (H, W) float32
    labels : (H, W) int32
        Nuclei 1..n in raster order.
    """
    from data_prep.io import relabel_raster_order

    prob = infer.segment_image(net, net_input, tile=tile)
    labels = O.instances_from_probs(prob, **params)
    if prob.shape != np.shape(image):
        from skimage.transform import resize

        prob = np.clip(resize(prob, np.shape(image), order=1, preserve_range=True), 0, 1).astype(np.float32)
        labels = relabel_raster_order(np.rint(resize(labels, np.shape(image), order=0, preserve_range=True,
                                                     anti_aliasing=False)).astype(np.int64))
    return prob, labels


# ----------------------------------------------------------------------------------------- one image, anywhere
_NETS = {}  # this process's nets, loaded once per (model digest, deploy, gpu): one per Dask worker


def _net_key(settings):
    return settings["model_sha256"], settings["deploy"], settings["gpu"]


def _net(settings):
    key = _net_key(settings)
    if key not in _NETS:
        _NETS.clear()  # one model at a time
        _NETS[key] = infer.load_model(settings["model"], settings["deploy"], settings["gpu"])
    return _NETS[key]


def run_digest(settings):
    """Digest of everything that decides one image's outputs except the image: model, net, parameters, the
    preprocessing and the code."""
    import data_prep
    import tools

    keys = ("model_sha256", "deploy_sha256", "params", "scale", "percentiles", "channel", "tile")
    return files.digest({k: settings[k] for k in keys}, files.code_digest(tools, data_prep))


def segment_file(path, stem, settings):
    """Segment one image file and write its outputs: the per-image step of the serial and the Dask path.

    Parameters
    ----------
    path : str
        TIFF/PNG image.
    stem : str
        Output names: ``<stem>_prob.tif``, ``<stem>_labels.tif``, ``<stem>_overlay.png``, ``<stem>.json``.
    settings : dict
        From :func:`make_settings` (picklable; the net itself is loaded once per process).

    Returns
    -------
    dict
        The ``counts.csv`` row: ``file``, ``status`` ('done', 'skipped' (done before with the same digest) or
        'failed'), the :func:`area_stats`, ``height``, ``width``, ``error``. A bad image gives a 'failed' row,
        never an exception.
    """
    from data_prep.io import read_array

    out = Path(settings["out"])
    record_path = out / f"{stem}.json"
    try:
        key = files.digest(settings["digest"], files.sha256_file(path))
        if record_path.is_file():
            old = files.read_json(record_path)
            if old.get("digest") == key and all((out / f"{stem}{end}").is_file() for end in
                                                ("_prob.tif", "_labels.tif", "_overlay.png")):
                return {**old["row"], "status": "skipped"}
        image, net_input = prepare(read_array(path), settings["channel"], str(path), settings["scale"],
                                   settings["percentiles"])
        prob, labels = segment_prepared(_net(settings), image, net_input, settings["params"], settings["tile"])
        save_outputs(out, stem, image, prob, labels)
        row = {"file": str(path), "status": "done", **area_stats(labels), "height": int(image.shape[0]),
               "width": int(image.shape[1]), "error": ""}
        files.write_json(record_path, {"digest": key, "row": row})
        return row
    except (CellfcnError, ValueError, OSError) as err:
        return {"file": str(path), "status": "failed", "error": str(err).splitlines()[0] if str(err) else
                type(err).__name__}


# ----------------------------------------------------------------------------------------------- a whole run
def find_images(inputs):
    """Image files of the inputs: files as named, folders' TIFF/PNG files (not hidden) in name order.

    Returns
    -------
    list of (Path, str)
        (file, output stem).

    Raises
    ------
    InputError
        A missing input, a folder without images, or two inputs that would write the same output names.
    """
    found = []
    for item in map(Path, inputs):
        if item.is_dir():
            images = sorted(p for p in item.iterdir() if p.is_file() and not p.name.startswith(".")
                            and p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise InputError(f"no TIFF/PNG images in {item}")
            found += images
        elif item.is_file():
            found.append(item)
        else:
            raise InputError(f"{item}: no such file or folder")
    seen = {}
    for path in found:
        if path.stem in seen:
            raise InputError(f"{seen[path.stem]} and {path} would both write {path.stem}_*: rename one, or "
                             f"segment them into different --out folders")
        seen[path.stem] = path
    return [(path, path.stem) for path in found]


def make_settings(args, params, scale, percentiles):
    """The picklable description of a run that every image's step needs."""
    settings = {"model": str(Path(args.model).absolute()), "model_sha256": files.sha256_file(args.model),
                "deploy": str(Path(args.deploy).absolute()), "deploy_sha256": files.sha256_file(args.deploy),
                "gpu": args.gpu, "params": params, "scale": scale, "percentiles": list(percentiles),
                "channel": args.channel, "tile": args.tile, "out": str(Path(args.out).absolute())}
    settings["digest"] = run_digest(settings)
    return settings


def _progress(total):
    from tqdm import tqdm

    return tqdm(total=total, desc="segment", unit="image", file=sys.stderr, disable=None)  # off unless a tty


def run_serial(images, settings):
    """Every image's :func:`segment_file` in this process; rows in input order."""
    rows = []
    with _progress(len(images)) as bar:
        for path, stem in images:
            rows.append(segment_file(str(path), stem, settings))
            bar.update()
    return rows


def run_dask(images, settings, scheduler=None, workers=None):
    """Every image's :func:`segment_file` on Dask's distributed scheduler; rows in input order.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (start its workers with ``WORKER_ENV`` set, e.g.
        ``OPENBLAS_NUM_THREADS=1 dask worker ...``); default: a ``LocalCluster`` of ``workers`` processes
        started with ``WORKER_ENV``.
    workers : int, optional
        Worker processes of the local cluster (default: one per core).
    """
    from dask.distributed import Client, LocalCluster, as_completed

    if scheduler:
        cluster, client = None, Client(scheduler)
    else:
        cluster = LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1, processes=True,
                               dashboard_address=None, env=WORKER_ENV)
        client = Client(cluster)
    try:
        futures = [client.submit(segment_file, str(path), stem, settings, pure=False)
                   for path, stem in images]
        with _progress(len(futures)) as bar:
            for _ in as_completed(futures):
                bar.update()
        rows = []
        for (path, _), future in zip(images, futures):
            try:
                rows.append(future.result())
            except Exception as err:  # a worker lost (killed, out of memory): that image failed, not the run
                rows.append({"file": str(path), "status": "failed", "error": f"{type(err).__name__}: {err}"})
        return rows
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def write_counts(path, rows):
    """Write ``counts.csv`` (one row per image, ``CSV_FIELDS``) atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_FIELDS})
    files.write_text(path, text.getvalue())


def resolve_params(args):
    """The instance parameters: explicit ``--threshold``/``--opening``/``--min-area``, else ``--params``."""
    from tools.count import chosen_params

    explicit = (args.threshold, args.opening, args.min_area)
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise InputError("give all of --threshold, --opening and --min-area, or none (then --params)")
        params = {"threshold": args.threshold, "opening_radius": args.opening, "min_area": args.min_area,
                  "min_distance": 5, "smooth_sigma": 1.0, "min_dynamic": O.MIN_DYNAMIC}
    elif args.params and Path(args.params).is_file():
        params = chosen_params(args.params)
    else:
        raise InputError(f"no instance parameters: {args.params or '--params'} not found (run `make evaluate`) "
                         "and no --threshold/--opening/--min-area given")
    O.instances_from_probs(np.zeros((1, 1), np.float32), **{k: params[k] for k in PARAM_KEYS})  # validates
    return {k: params[k] for k in PARAM_KEYS}


def resolve_preprocessing(args):
    """(scale, percentiles): ``--scale`` over the ``--manifest``'s; without either, refuse (no silent 1)."""
    if args.manifest and Path(args.manifest).is_file():
        scale, percentiles = dataset_preprocessing(args.manifest)
    elif args.scale is None:
        raise InputError(f"no preprocessing: {args.manifest or '--manifest'} not found (run `make data`) "
                         "and no --scale given")
    else:
        percentiles = (PCT_LOW, PCT_HIGH)
    return (args.scale if args.scale is not None else scale), percentiles


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.segment", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("inputs", nargs="+", metavar="IN", help="folder of TIFF/PNG images, or image files")
    p.add_argument("--model", default=str(REPO / "runs" / "finetune" / "final.caffemodel"),
                   help="trained weights (default: %(default)s)")
    p.add_argument("--deploy", help="deploy prototxt (default: the committed one of the net the model names)")
    p.add_argument("--out", default=str(REPO / "runs" / "segment"), help="output folder (default: %(default)s)")
    p.add_argument("--params", default=str(REPO / "runs" / "eval" / "objects.json"),
                   help="objects.json of make evaluate: its 'after' row's instance parameters (default: "
                        "%(default)s)")
    p.add_argument("--threshold", type=float, help="instead of --params: nucleus where prob >= T")
    p.add_argument("--opening", type=int, help="instead of --params: opening radius (px at the net's scale)")
    p.add_argument("--min-area", type=int, help="instead of --params: smallest nucleus (px at the net's scale)")
    p.add_argument("--manifest", default=str(REPO / "runs" / "data" / "real" / "manifest.json"),
                   help="manifest.json of the dataset the model was trained on: images are resized and "
                        "normalised like it (default: %(default)s)")
    p.add_argument("--scale", type=float, help="resize factor before the net (default: the --manifest's)")
    p.add_argument("--channel", type=int, help="channel of colour images to segment")
    p.add_argument("--tile", type=int, default=infer.TILE, help="largest window side (default: %(default)s)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="Dask LocalCluster worker processes (default: one per core, %(default)s); 0: serial, "
                        "in this process")
    p.add_argument("--scheduler", help="address of a running Dask scheduler (tcp://host:8786) instead")
    p.add_argument("--gpu", type=int, help="CUDA device id (default: CPU)")
    args = p.parse_args(argv)
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        p.error("--threshold must lie in [0, 1]")
    if (args.opening is not None and args.opening < 0) or (args.min_area is not None and args.min_area < 0):
        p.error("--opening and --min-area must be >= 0")
    if args.tile % STRIDE or args.tile <= 2 * infer.MARGIN:
        p.error(f"--tile must be a multiple of {STRIDE} larger than {2 * infer.MARGIN}")
    if args.scale is not None and not 0 < args.scale <= 16:
        p.error(f"--scale must be in (0, 16], got {args.scale}")
    if args.workers < 0:
        p.error("--workers must be >= 0")
    return args


def run(args):
    """Segment every image; write ``counts.csv``; return the rows."""
    # Before Caffe loads: OpenMP reads its thread count once (oneDNN's float sums depend on it).
    os.environ.update(WORKER_ENV)
    images = find_images(args.inputs)
    for path in (args.model, args.deploy or args.model):
        if not Path(path).is_file():
            raise InputError(f"{path}: no such file")
    args.deploy = args.deploy or str(infer.deploy_for(args.model))
    out = Path(args.out)
    files.check_writable(out / "counts.csv")
    net = infer.load_model(args.model, args.deploy, args.gpu)  # refuses a model of another net before any work
    settings = make_settings(args, resolve_params(args), *resolve_preprocessing(args))
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    if args.scheduler or args.workers > 0:
        del net  # the workers load their own
        rows = run_dask(images, settings, args.scheduler, args.workers)
    else:
        _NETS.clear()
        _NETS[_net_key(settings)] = net
        rows = run_serial(images, settings)
    write_counts(out / "counts.csv", rows)
    failed = [r for r in rows if r["status"] == "failed"]
    skipped = sum(r["status"] == "skipped" for r in rows)
    print(f"segment: {len(rows) - len(failed)} of {len(rows)} images ({skipped} unchanged, skipped), "
          f"{sum(r.get('cells') or 0 for r in rows)} cells, {time.monotonic() - started:.1f} s -> "
          f"{out / 'counts.csv'}")
    if failed:
        raise CellfcnError(f"{len(failed)} of {len(rows)} images failed (see {out / 'counts.csv'}); first: "
                           f"{failed[0]['file']}: {failed[0]['error']}")
    return rows


def _main(argv=None):
    run(parse_args(argv))


def main(argv=None):
    """Run the command; return its exit status (see cellfcn.cli)."""
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
