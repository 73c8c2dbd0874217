"""Segment and count nuclei in whole microscopy images of any size and magnification (``make segment IN=<folder>``).

Every TIFF/PNG image of the input folders (or the files named) is prepared like the training data
(``data_prep``: one channel, percentile normalisation, a resize factor), run through the net in tiles by
:mod:`tools.infer` (whose weight check refuses a model of another net) and cut into nuclei by
:func:`cellfcn.objects.instances_from_maps` at the net's scale; maps and labels are then resized back to the
file's size.

- **The model's own parameters.** The instance parameters and the dataset's preprocessing (resize factor,
  percentiles, median nucleus diameter) come from ``<model>.params.json``, which ``make evaluate`` writes for
  the model it chose them for (:mod:`tools.model_params`, checked against the model's SHA-256). A model
  without that file is refused unless ``--threshold``, ``--opening`` and ``--min-area`` (and for a 3- or
  4-class net ``--marker-threshold``; optionally ``--extent-threshold``) are given, with ``--manifest`` naming its
  dataset. Without ``--model``, the model of ``--objects`` (``make evaluate``'s ``objects.json``) with the
  highest validation F1.
- **Without Caffe** (``--engine onnx``): ``--model`` is a package of ``make export`` (``.bioimageio.zip``, its
  folder, or a bare ``.onnx``), run by onnxruntime (:mod:`tools.onnx_engine`) through the same tiling; pycaffe
  is never imported. Parameters and preprocessing come from the package's ``config.cellfcn``; a package
  exported before ``make evaluate`` chose instance parameters needs the explicit ones (a bare ``.onnx`` also
  ``--manifest``). The engine is part of the settings digest: a rerun with the other engine segments again.
- **Any magnification** (:mod:`cellfcn.scale`). ``--diameter auto`` (default): every image's nucleus size is
  measured first (a classical segmentation, no net) and the run's resize factor is the median of the images'
  estimates, the dataset's own factor when that is within 15% of it (images like the training data);
  ``--diameter <px>``: the typical nucleus diameter of the images in their own pixels sets the factor (the
  dataset's diameter / px); ``--scale <f>``: the factor itself. With ``--diameter auto`` and the model's own
  parameters, each image then goes through the net a second time at its own scale, its nuclei resized to the
  model's working diameter as the net's first pass measured them (:func:`tools.infer.own_scale_maps`, as
  ``make evaluate`` scored the model). Every record and ``counts.csv`` give the run's factor, whether it was
  estimated, the image's own classical estimate and ``image_factor``, the factor its nuclei were cut at.
- Per image: ``<stem>_prob.tif`` (float32 nucleus probability), ``<stem>_labels.tif`` (int32 instances),
  ``<stem>_overlay.png`` (instance outlines in red) and ``<stem>.json`` (its record); for the run
  ``counts.csv`` (file, cells, areas, channel, factor, status, error); for the folder ``manifest.json`` (every
  image it holds: source, settings digest, the SHA-256 of each output).
- **One run per output folder** (a lock: a second run into it refuses in one line); a folder that no segment
  run wrote, an input inside the output folder, or a stem whose outputs there came from another image is
  refused before any work.
- One image that fails (unreadable file, no usable channel) is recorded in ``counts.csv`` with its error and
  the rest go on (its earlier outputs, if any, stay as they were); the exit status is then 1 with a one-line
  summary. A rerun skips every image whose record holds the same digest of model, deploy net, parameters,
  preprocessing, resize factor and image file, and whose outputs still have the SHA-256 it recorded.
- Serially in this process (``--workers 0``), or on Dask's distributed scheduler: a ``LocalCluster`` of
  ``--workers`` processes (default: one per core), or an existing cluster (``--scheduler tcp://host:8786``;
  its workers must see the same paths). Each worker process loads the net once and writes its images' files
  itself (atomically); the per-image function is the same in both paths, and so are the outputs, byte for
  byte: every process runs BLAS with one thread (``WORKER_ENV``; the cores are shared out by processes), as
  OpenBLAS's float sums depend on its thread count in the last bits. Memory: every process holds its own net
  and tiles of at most ``--tile`` pixels; a smaller ``--tile`` or fewer ``--workers`` where memory is short.
"""
import argparse
import contextlib
import csv
import io
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from cellfcn import cli, files, pictures, scale, schema
from cellfcn import objects as O
from cellfcn.constants import PCT_HIGH, PCT_LOW, STRIDE
from cellfcn.errors import CellfcnError, InputError
from cellfcn.machine import thread_env
from tools import infer, model_params, onnx_engine

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
CSV_FIELDS = ("file", "status", "cells", "mean_area_px", "median_area_px", "min_area_px", "max_area_px",
              "median_diameter_px", "cell_fraction", "height", "width", "channel", "factor", "factor_estimated",
              "image_estimate", "image_factor", "error")
OUTPUT_ENDS = ("_prob.tif", "_labels.tif", "_overlay.png")
FOLDER_MANIFEST = "manifest.json"
FOLDER_SCHEMA = 1
#: What an output folder's ``manifest.json`` holds: the record of each image's outputs, by stem.
FOLDER = schema.Schema("segment output manifest", FOLDER_SCHEMA, "make segment", {"images": schema.Mapping(dict)},
                       remedy="it was not written by this version of make segment: choose another OUT folder")
LOCK = ".segment.lock"
# One BLAS thread per process: n processes on n cores, not n x n threads; also the serial path, for identical
# outputs (set before pycaffe loads libopenblas, which reads it once).
WORKER_ENV = thread_env(1)


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
        Resize factor before the net.
    percentiles : (float, float)
        Normalisation percentiles of the model's dataset.

    Returns
    -------
    image : (H, W) float32 in [0, 1]
        Normalised at the file's own size (what outputs are written at).
    net_input : (h, w) float32 in [0, 1]
        Normalised, then resized by ``scale`` (``data_prep.real.prepare_pair``: the same function that made
        the training patches).
    """
    from cellfcn.images import to_gray
    from data_prep.normalize import normalize_percentile
    from data_prep.real import prepare_pair

    gray = to_gray(raw, channel=channel, name=name)
    image = normalize_percentile(gray, *percentiles, name=name)
    if scale == 1:
        return image, image
    net_input = prepare_pair(gray, np.zeros(gray.shape, np.uint8), name, scale=scale, pct=tuple(percentiles))[0]
    return image, net_input


def save_outputs(out, stem, image, prob, labels, truth=None):
    """Write ``<stem>_prob.tif``, ``<stem>_labels.tif`` and ``<stem>_overlay.png`` into ``out``: all three or
    none (each goes to a temporary name; they replace the old files only once all are written).

    Returns
    -------
    dict
        ``prob``, ``labels``, ``overlay``: the file names written.
    """
    import tifffile
    from PIL import Image

    names = dict(zip(("prob", "labels", "overlay"), (f"{stem}{end}" for end in OUTPUT_ENDS)))
    with contextlib.ExitStack() as stack:
        tmp = {key: stack.enter_context(files.atomic_file(Path(out) / name)) for key, name in names.items()}
        tifffile.imwrite(tmp["prob"], np.asarray(prob, dtype=np.float32), photometric="minisblack")
        tifffile.imwrite(tmp["labels"], np.asarray(labels, dtype=np.int32), photometric="minisblack")
        Image.fromarray(pictures.overlay_outlines(image, labels, truth)).save(tmp["overlay"], format="PNG")
    return names


def area_stats(labels):
    """Count and size of the nuclei of an instance label image (areas and diameters in pixels of the written
    image; the median diameter as :func:`cellfcn.scale.median_diameter` measures it)."""
    labels = np.asarray(labels)
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    stats = {"cells": int(areas.size), "cell_fraction": round(float((labels > 0).mean()), 6)}
    for key, fn in (("mean_area_px", np.mean), ("median_area_px", np.median), ("min_area_px", np.min),
                    ("max_area_px", np.max)):
        stats[key] = round(float(fn(areas)), 2) if areas.size else None
    diameter = scale.median_diameter(labels, min_nuclei=1)
    stats["median_diameter_px"] = round(diameter, 2) if math.isfinite(diameter) else None
    return stats


def segment_prepared(net, image, net_input, params, tile=infer.TILE, forward=infer.forward_image,
                     working_diameter=None):
    """Nucleus probability and instance labels of one prepared image, both at the size of ``image``.

    The nuclei are cut out at the net's scale, where ``make evaluate`` chose ``params`` (areas and distances
    in pixels of the dataset's scale); then the map is resized back bilinearly and the labels by nearest
    neighbour. With ``working_diameter`` the maps are those of the image at its own scale
    (:func:`tools.infer.own_scale_maps`).

    Parameters
    ----------
    net : caffe.Net or onnxruntime.InferenceSession
    image : (H, W) float32 in [0, 1]
        The image at its own size (what the outputs are written at).
    net_input : (h, w) float32 in [0, 1]
        What the net sees (:func:`prepare`).
    params : dict
        Keyword arguments of :func:`cellfcn.objects.instances_from_maps`.
    tile : int
    forward : callable
        ``forward(net, window)`` (:func:`tools.infer.segment_image`): Caffe's, or
        :func:`tools.onnx_engine.forward` for a session.
    working_diameter : float, optional
        The model's working diameter (pixels at the net's scale); None: one pass at ``net_input``'s scale.

    Returns
    -------
    prob : (H, W) float32
        The nucleus probability (:func:`tools.infer.nucleus_probability` of the net's maps).
    labels : (H, W) int32
        Nuclei 1..n in raster order.
    own_factor : float
        The second pass's factor relative to ``net_input`` (1: none).
    """
    from cellfcn.images import relabel_raster_order

    if working_diameter is None:
        maps, own_factor = infer.segment_image(net, net_input, tile=tile, forward=forward), 1.0
    else:
        maps, own_factor, _ = infer.own_scale_maps(net, net_input, params, working_diameter, tile, forward)
    labels = O.instances_from_maps(maps, **params)
    prob = infer.nucleus_probability(maps)
    if prob.shape != np.shape(image):
        from skimage.transform import resize

        prob = np.clip(resize(prob, np.shape(image), order=1, preserve_range=True), 0, 1).astype(np.float32)
        labels = relabel_raster_order(np.rint(resize(labels, np.shape(image), order=0, preserve_range=True,
                                                     anti_aliasing=False)).astype(np.int64))
    return prob, labels, own_factor


def estimate_raw(raw, name, settings):
    """The image's own resize factor (:func:`cellfcn.scale.estimate_factor` with
    :func:`cellfcn.scale.classical_diameter`, no net), from the ``dataset``'s factor and nucleus diameter.

    Parameters
    ----------
    raw : ndarray
        The decoded file.
    name : str
        For error messages.
    settings : dict
        ``dataset`` (``scale``, ``percentiles``, ``nucleus_diameter_px``) and ``channel``.

    Returns
    -------
    dict
        :func:`cellfcn.scale.estimate_factor`'s result.
    """
    dataset = settings["dataset"]

    def measure(factor):
        return scale.classical_diameter(prepare(raw, settings["channel"], name, factor, dataset["percentiles"])[1])

    return scale.estimate_factor(measure, dataset["scale"], dataset["nucleus_diameter_px"])


# ----------------------------------------------------------------------------------------- one image, anywhere
_NETS = {}  # this process's (net, forward), loaded once per (engine, model digest, deploy, gpu): one per Dask worker


def load_net(engine, model, deploy=None, gpu=None):
    """A run's net and its forward function (:func:`tools.infer.segment_image`'s ``forward``).

    Parameters
    ----------
    engine : {"caffe", "onnx"}
    model : path
        ``.caffemodel`` (caffe), or a ``make export`` package or ``.onnx`` (onnx).
    deploy : path, optional
        Caffe's deploy prototxt (default: the model's net's).
    gpu : int, optional
        CUDA device id (caffe).

    Returns
    -------
    (net, forward)
        A ``caffe.Net`` (strict weight check: :func:`tools.infer.load_model`) and
        :func:`tools.infer.forward_image`, or an onnxruntime session with one thread (as ``WORKER_ENV`` gives
        Caffe) and :func:`tools.onnx_engine.forward`; the onnx engine never imports pycaffe.
    """
    if engine == "onnx":
        return onnx_engine.load_session(model, threads=1), onnx_engine.forward
    return infer.load_model(model, deploy, gpu), infer.forward_image


def _net_key(settings):
    return settings["engine"], settings["model_sha256"], settings["deploy"], settings["gpu"]


def _net(settings):
    key = _net_key(settings)
    if key not in _NETS:
        _NETS.clear()  # one model at a time
        _NETS[key] = load_net(settings["engine"], settings["model"], settings["deploy"], settings["gpu"])
    return _NETS[key]


def code_digest():
    """Digest of the code that makes the outputs."""
    import cellfcn
    import tools

    return files.code_digest(cellfcn, tools)


def run_digest(settings):
    """Digest of everything that decides one image's outputs except the image: engine, model, net,
    parameters, the preprocessing, the resize factor, the working diameter and the code."""
    keys = ("engine", "model_sha256", "deploy_sha256", "params", "dataset", "factor", "working_diameter_px",
            "channel", "tile")
    return files.digest({k: settings[k] for k in keys}, settings["code"])


def estimate_digest(settings):
    """Digest of what decides an image's own factor estimate except the image."""
    return files.digest({k: settings[k] for k in ("dataset", "channel")}, settings["code"])


def _read_record(path):
    """An image's record, or None when it is missing or unreadable (then the image is segmented again)."""
    try:
        record = files.read_json(path)
    except CellfcnError:
        return None
    return record if isinstance(record, dict) else None


def outputs_intact(out, record):
    """True when every output file the record lists still has the SHA-256 it was written with."""
    outputs = record.get("outputs")
    if not isinstance(outputs, dict) or sorted(outputs) != sorted(f"{record.get('stem')}{e}" for e in OUTPUT_ENDS):
        return False
    for name, sha in outputs.items():
        path = Path(out) / name
        if not path.is_file() or files.sha256_file(path) != sha:
            return False
    return True


def _failed(path, err):
    return {"file": str(path), "status": "failed", "error": str(err).splitlines()[0] if str(err) else
            type(err).__name__}


def estimate_file(path, stem, settings, _=None):
    """One image's own factor estimate (``--diameter auto``'s first phase, no net), reused from its record when
    the image and the estimate's settings are unchanged.

    Returns
    -------
    dict
        ``file``, ``status`` ('done' or 'failed'), ``key``, and :func:`estimate_raw`'s ``factor``,
        ``estimated``, ``converged``, ``diameter_px`` (None when unmeasured) and ``passes``; or ``error``.
    """
    from cellfcn.images import read_array

    try:
        key = files.digest(settings["estimate_digest"], files.sha256_file(path))
        old = (_read_record(Path(settings["out"]) / f"{stem}.json") or {}).get("estimate")
        if isinstance(old, dict) and old.get("key") == key:
            return {**old, "file": str(path)}
        found = estimate_raw(read_array(path), str(path), settings)
        return {"file": str(path), "status": "done", "key": key, **found,
                "diameter_px": found["diameter_px"] if math.isfinite(found["diameter_px"]) else None,
                "passes": [[f, d if math.isfinite(d) else None] for f, d in found["passes"]]}
    except (CellfcnError, ValueError, OSError) as err:
        return _failed(path, err)


def segment_file(path, stem, settings, estimate=None):
    """Segment one image file and write its outputs: the per-image step of the serial and the Dask path.

    Parameters
    ----------
    path : str
        TIFF/PNG image.
    stem : str
        Output names: ``<stem>_prob.tif``, ``<stem>_labels.tif``, ``<stem>_overlay.png``, ``<stem>.json``.
    settings : dict
        From :func:`make_settings` with the run's ``factor`` (picklable; the net itself is loaded once per
        process).
    estimate : dict, optional
        The image's own :func:`estimate_file` (``--diameter auto``), kept in its record.

    Returns
    -------
    dict
        The ``counts.csv`` row: ``file``, ``status`` ('done', 'skipped' (done before with the same digest,
        outputs intact) or 'failed'), the :func:`area_stats`, ``height``, ``width``, ``channel`` (which channel
        of the file was segmented, :func:`cellfcn.images.gray_channel`), ``factor``,
        ``factor_estimated``, ``image_estimate``, ``error``. A bad image gives a 'failed' row, never an
        exception.
    """
    from cellfcn.images import gray_channel, read_array

    out = Path(settings["out"])
    record_path = out / f"{stem}.json"
    try:
        source_sha256 = files.sha256_file(path)
        key = files.digest(settings["digest"], source_sha256)
        old = _read_record(record_path)
        if old is not None and old.get("digest") == key and outputs_intact(out, old):
            return {**old["row"], "status": "skipped"}
        gray, channel = gray_channel(read_array(path), settings["channel"], str(path))
        image, net_input = prepare(gray, None, str(path), settings["factor"], settings["dataset"]["percentiles"])
        net, forward = _net(settings)
        prob, labels, own_factor = segment_prepared(net, image, net_input, settings["params"], settings["tile"],
                                                    forward, settings["working_diameter_px"])
        names = save_outputs(out, stem, image, prob, labels)
        own = estimate.get("factor") if estimate and estimate.get("estimated") else None
        row = {"file": str(path), "status": "done", **area_stats(labels), "height": int(image.shape[0]),
               "width": int(image.shape[1]), "channel": channel, "factor": round(settings["factor"], 6),
               "factor_estimated": settings["factor_estimated"],
               "image_estimate": None if own is None else round(own, 6),
               "image_factor": round(settings["factor"] * own_factor, 6), "error": ""}
        files.write_json(record_path, {"digest": key, "stem": stem, "source": str(Path(path).absolute()),
                                       "source_sha256": source_sha256, "row": row,
                                       "factor_from": settings["factor_from"], "estimate": estimate,
                                       "outputs": {n: files.sha256_file(out / n) for n in names.values()}})
        return row
    except (CellfcnError, ValueError, OSError) as err:
        return _failed(path, err)


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
        A missing input, a folder without images, two inputs that would write the same output names, or an
        image whose record would be the output folder's manifest.
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
        if f"{path.stem}.json" == FOLDER_MANIFEST:
            raise InputError(f"{path}: its record would be the output folder's {FOLDER_MANIFEST}: rename the image")
        seen[path.stem] = path
    return [(path, path.stem) for path in found]


def check_out_apart(out, inputs):
    """Refuse an output folder that is an input folder or holds an input file: its outputs would be read as
    images on the next run."""
    out = Path(out).resolve()
    for item in map(Path, inputs):
        where = item.resolve() if item.is_dir() else item.resolve().parent
        if where == out:
            raise InputError(f"--out {out} is where the input {item} lies: the next run would segment its "
                             "outputs; choose another output folder")


@contextlib.contextmanager
def folder_lock(out):
    """Hold the output folder's lock (``.segment.lock``, flock) for a run; a second run refuses in one line.

    The kernel releases the lock of a killed process; the file is removed when the run ends.

    Raises
    ------
    CellfcnError
        Another run holds the lock.
    """
    import fcntl

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise CellfcnError(f"{out} is being written by another segment run (pid {holder or '?'}): wait for "
                               "it to end, or choose another --out") from None
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:  # not a file the previous holder removed while we opened it
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def read_folder_manifest(out):
    """What an output folder holds, from its ``manifest.json`` (empty for a new or empty folder).

    Raises
    ------
    InputError
        A folder holding files without a manifest (not a segment output folder), or a manifest this version
        did not write.
    """
    out = Path(out)
    path = out / FOLDER_MANIFEST
    if not path.exists():
        visible = sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.is_dir() else []
        if visible:
            raise InputError(f"--out {out} holds files that no segment run wrote ({', '.join(visible[:3])}"
                             f"{', ...' if len(visible) > 3 else ''}; no {FOLDER_MANIFEST}): choose an empty or "
                             "new output folder")
        return {"schema_version": FOLDER_SCHEMA, "images": {}}
    return schema.load(path, FOLDER)


def check_sources(manifest, images, out):
    """Refuse a run whose image would replace the outputs another image (other path and content) made."""
    for path, stem in images:
        entry = manifest["images"].get(stem)
        if entry and entry.get("source") != str(path.absolute()) \
                and entry.get("source_sha256") != files.sha256_file(path):
            raise InputError(f"{Path(out) / stem}_* were made from {entry.get('source')}, not {path}: segment "
                             "into another --out")


def update_folder_manifest(out, manifest, images, rows, settings):
    """Record what the folder holds after a run: each image's source, settings digest and output digests
    (from its record), and this run's settings; images of earlier runs stay listed."""
    for (path, stem), row in zip(images, rows):
        record = _read_record(Path(out) / f"{stem}.json")
        entry = {"source": str(path.absolute()), "last_run": row["status"]}
        if record is not None and "outputs" in record:
            entry.update(source_sha256=record.get("source_sha256"), digest=record.get("digest"),
                         outputs=record["outputs"], made_from=record.get("source"))
        if row["status"] == "failed":
            entry["error"] = row["error"]  # any outputs listed are an earlier run's
        manifest["images"][stem] = entry
    manifest["last_run"] = {k: settings[k] for k in ("engine", "model", "model_sha256", "deploy", "params",
                                                       "dataset", "factor", "factor_estimated", "factor_from",
                                                       "working_diameter_px", "params_from", "digest")}
    files.write_json(Path(out) / FOLDER_MANIFEST, manifest)


def make_settings(args, model, params, dataset, params_from, working_diameter=None):
    """The picklable description of a run that every image's step needs; ``factor`` is the resize factor, or
    "auto" until :func:`choose_factor` sets it; ``working_diameter_px`` is the model's working diameter with
    ``--diameter auto`` (each image at its own scale), else None."""
    if args.engine == "onnx":
        model_sha256, deploy, deploy_sha256 = onnx_engine.weights_sha256(model), None, None
    else:
        model_sha256 = files.sha256_file(model)
        deploy, deploy_sha256 = str(Path(args.deploy).absolute()), files.sha256_file(args.deploy)
    settings = {"engine": args.engine, "model": str(Path(model).absolute()), "model_sha256": model_sha256,
                "deploy": deploy, "deploy_sha256": deploy_sha256, "gpu": args.gpu, "params": params,
                "params_from": params_from, "dataset": dataset,
                "factor": resolve_factor(args, dataset), "factor_estimated": False,
                "working_diameter_px": working_diameter if args.diameter in (None, "auto") and args.scale is None
                else None,
                "factor_from": (f"--scale {args.scale:g}" if args.scale is not None else "--diameter auto"
                                if args.diameter in (None, "auto") else f"--diameter {args.diameter:g} px"),
                "channel": args.channel, "tile": args.tile, "out": str(Path(args.out).absolute()),
                "code": code_digest()}
    settings["estimate_digest"] = estimate_digest(settings)
    return settings


def choose_factor(settings, estimates):
    """Set the run's factor from the images' own estimates (:func:`cellfcn.scale.run_factor`) and the digest."""
    factor, estimated = scale.run_factor([e["factor"] if e.get("estimated") else None for e in estimates],
                                         settings["dataset"]["scale"])
    n = sum(bool(e.get("estimated")) for e in estimates)
    if not estimated:
        how = "no image had nuclei to measure: the dataset's factor"
    elif factor == settings["dataset"]["scale"]:
        how = f"the median of {n} images' estimates is within {scale.KEEP:.0%} of the dataset's factor: kept"
    else:
        how = f"the median of {n} images' estimates"
    settings.update(factor=factor, factor_estimated=estimated, factor_from=f"--diameter auto ({how})")
    settings["digest"] = run_digest(settings)


def _progress(total, desc):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="image", file=sys.stderr, disable=None)  # off unless a tty


@contextlib.contextmanager
def image_map(scheduler=None, workers=0):
    """A ``map(fn, images, settings, extras, desc)`` that calls ``fn(path, stem, settings, extra)`` for every
    image and returns the results in input order: serially in this process (``workers`` 0, no scheduler), or on
    Dask's distributed scheduler, one client for the whole run.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (start its workers with ``WORKER_ENV`` set, e.g.
        ``OPENBLAS_NUM_THREADS=1 dask worker ...``); default: a ``LocalCluster`` of ``workers`` processes
        started with ``WORKER_ENV``.
    workers : int
        Worker processes of the local cluster; 0: serial.
    """
    if not scheduler and not workers:
        def serial(fn, images, settings, extras, desc):
            results = []
            with _progress(len(images), desc) as bar:
                for (path, stem), extra in zip(images, extras):
                    results.append(fn(str(path), stem, settings, extra))
                    bar.update()
            return results

        yield serial
        return
    from dask.distributed import Client, LocalCluster, as_completed

    if scheduler:
        cluster, client = None, Client(scheduler)
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               env=WORKER_ENV)
        client = Client(cluster)

    def distributed(fn, images, settings, extras, desc):
        futures = [client.submit(fn, str(path), stem, settings, extra, pure=False)
                   for (path, stem), extra in zip(images, extras)]
        with _progress(len(futures), desc) as bar:
            for _ in as_completed(futures):
                bar.update()
        results = []
        for (path, _), future in zip(images, futures):
            try:
                results.append(future.result())
            except Exception as err:  # a worker lost (killed, out of memory): that image failed, not the run
                results.append({"file": str(path), "status": "failed", "error": f"{type(err).__name__}: {err}"})
        return results

    try:
        yield distributed
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


def best_model(objects):
    """The evaluated model with the highest validation F1 among the rows of ``make evaluate``'s objects.json
    (ties: the higher validation DSB score, then the earlier row).

    Returns
    -------
    (Path, dict)
        The model and its row.

    Raises
    ------
    InputError
        A missing or malformed file, or no row that names a model with a validation F1.
    """
    from tools.object_table import load_objects

    def number(value):
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
            else -math.inf

    best = None
    for row in load_objects(objects).get("rows", []):
        val = row.get("val") if isinstance(row.get("val"), dict) else {}
        if row.get("model_path") and number(val.get("f1")) > -math.inf:
            key = (number(val.get("f1")), number(val.get("dsb_score")))
            if best is None or key > best[0]:
                best = (key, row)
    if best is None:
        raise InputError(f"{objects} names no evaluated model with a validation F1: run `make evaluate`, or give "
                         "--model")
    return Path(best[1]["model_path"]), best[1]


FLAGS = {"threshold": "--threshold", "opening_radius": "--opening", "min_area": "--min-area",
         "marker_threshold": "--marker-threshold"}


def package_record(package):
    """What an exported package recorded for segmentation (``config.cellfcn``, :mod:`tools.onnx_engine`), in
    the form of :func:`tools.model_params.read_model_params`: ``params`` (None when ``make evaluate`` had not
    chosen them), ``dataset`` and ``working_diameter_px``; None for a bare ``.onnx`` (nothing recorded).

    Raises
    ------
    InputError
        A package that ``tools.export`` did not write, or a preprocessing with bad values.
    """
    if Path(package).suffix == ".onnx":
        return None
    config = onnx_engine.package_config(package)
    dataset = {k: config.get(k) for k in model_params.DATASET}  # a model's preprocessing, as the manifest's
    schema.require(dataset, model_params.DATASET, f"{package}: config.cellfcn")
    return {"params": config.get("instance_parameters"), "dataset": dataset,
            "working_diameter_px": config.get("working_diameter_px")}


def resolve_params(args, model, classes):
    """The instance parameters and the dataset preprocessing of a run.

    The model's own record gives both: ``<model>.params.json`` for a Caffe model, ``config.cellfcn`` for an
    exported package (``--engine onnx``). Explicit ``--threshold``/``--opening``/``--min-area`` (and
    ``--marker-threshold`` for a 3- or 4-class net) replace its parameters, and are needed for a model without them
    (with ``--manifest`` for the preprocessing where there is no record: a Caffe model without that file, a bare
    ``.onnx``).

    Returns
    -------
    params : dict
        Keyword arguments of :func:`cellfcn.objects.instances_from_maps`.
    dataset : dict
        ``scale``, ``percentiles``, ``nucleus_diameter_px``.
    params_from : str
        ``"explicit"``, the parameters file or the package.
    working_diameter : float or None
        The model's working diameter (:mod:`cellfcn.scale`) from its record; None with explicit parameters.

    Raises
    ------
    InputError
        No parameters (or parameters chosen for another model: :func:`tools.model_params.read_model_params`),
        some explicit parameters but not all, parameters of the other kind of net, no preprocessing, or a
        ``--manifest`` that contradicts the model's file.
    """
    explicit = {"threshold": args.threshold, "opening_radius": args.opening, "min_area": args.min_area}
    if classes > 2:
        explicit["marker_threshold"] = args.marker_threshold
    elif args.marker_threshold is not None:
        raise InputError(f"--marker-threshold is for a 3- or 4-class net; {model} has {classes} classes")
    given = any(v is not None for v in explicit.values())
    if given and any(v is None for v in explicit.values()):
        raise InputError(f"give all of {', '.join(FLAGS[k] for k in explicit)} or none (then the model's own "
                         "parameters)")
    if args.extent_threshold is not None:
        if not given:
            raise InputError(f"--extent-threshold goes with {', '.join(FLAGS[k] for k in explicit)} (the model's "
                             "own parameters carry their own)")
        explicit["extent_threshold"] = args.extent_threshold
    if args.engine == "onnx":
        record, source, lacks = package_record(model), f"config.cellfcn of {model}", "package (a bare .onnx)"
        if not given and (record or {}).get("params") is None:
            why = "a bare .onnx records none" if record is None else "exported before `make evaluate` chose them"
            raise InputError(f"{model} holds no instance parameters ({why}): give "
                             f"{', '.join(FLAGS[k] for k in explicit)}")
    else:
        source = model_params.params_path(model)
        record = model_params.read_model_params(model) if source.is_file() or not given else None
        lacks = source.name
    manifest = None
    if args.manifest:
        manifest = model_params.read_dataset_preprocessing(args.manifest)
    if record is not None:
        dataset = record["dataset"]
        if manifest is not None and manifest != dataset:
            raise InputError(f"{model} was trained on data prepared with {dataset} ({source}), not "
                             f"{manifest} ({args.manifest}): leave out --manifest")
    elif manifest is not None:
        dataset = manifest
    else:
        raise InputError(f"no preprocessing for {model}: it has no {lacks}; give --manifest <the "
                         "manifest.json of the dataset it was trained on>")
    params = explicit if given else dict(record["params"])
    try:  # the parameters must suit this net's maps: 2-D (2 classes) or (2, H, W) (3 or 4 classes)
        O.instances_from_maps(np.zeros((2, 1, 1) if classes > 2 else (1, 1), np.float32), **params)
    except ValueError as err:
        raise InputError(f"instance parameters {params} do not suit {model} ({classes} classes): {err}") from None
    working = None if given else record.get("working_diameter_px")
    return params, dataset, "explicit" if given else str(source), working


def resolve_factor(args, dataset):
    """The run's factor setting: ``--scale``'s factor, the factor ``--diameter <px>`` gives, or "auto"."""
    if args.scale is not None:
        return args.scale
    if args.diameter in (None, "auto"):
        return "auto"
    try:
        return scale.factor_for_diameter(dataset["nucleus_diameter_px"], args.diameter)
    except ValueError as err:
        raise InputError(f"--diameter {args.diameter:g}: {err}") from None


def _diameter(text):
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of pixels or 'auto', not {text!r}")
    return value


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.segment", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("inputs", nargs="+", metavar="IN", help="folder of TIFF/PNG images, or image files")
    p.add_argument("--model", help="trained weights, with their <model>.params.json (default: the --objects "
                                   "model with the highest validation F1); with --engine onnx, a package of make "
                                   "export (.bioimageio.zip, its folder, or .onnx)")
    p.add_argument("--engine", choices=("caffe", "onnx"), default="caffe",
                   help="run the net with Caffe (default) or an exported package with onnxruntime (no Caffe "
                        "needed)")
    p.add_argument("--objects", help="objects.json of make evaluate, to choose the model when --model is not given")
    p.add_argument("--deploy", help="deploy prototxt (default: the committed one of the net the model names)")
    p.add_argument("--out", required=True, help="output folder (one run at a time; not an input folder)")
    p.add_argument("--diameter", type=_diameter,
                   help="typical nucleus diameter in the images' own pixels, which sets the resize factor, or "
                        "'auto' (default): estimated per image")
    p.add_argument("--scale", type=float, help="resize factor before the net, instead of --diameter")
    p.add_argument("--threshold", type=float, help="instead of the model's own: nucleus where prob >= T")
    p.add_argument("--opening", type=int, help="instead of the model's own: opening radius (px at the net's scale)")
    p.add_argument("--min-area", type=int, help="instead of the model's own: smallest nucleus (px at the net's scale)")
    p.add_argument("--marker-threshold", type=float,
                   help="instead of the model's own, for a 3- or 4-class net: seed where interior prob >= T")
    p.add_argument("--extent-threshold", type=float,
                   help="with the parameters above, optional: nuclei then grow into prob >= T (T <= --threshold)")
    p.add_argument("--manifest", help="manifest.json of the dataset a model without <model>.params.json was "
                                      "trained on: its preprocessing")
    p.add_argument("--channel", type=int, help="channel of colour images to segment")
    p.add_argument("--tile", type=int, default=infer.TILE, help="largest window side (default: %(default)s)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="Dask LocalCluster worker processes (default: one per core, %(default)s); 0: serial, "
                        "in this process")
    p.add_argument("--scheduler", help="address of a running Dask scheduler (tcp://host:8786) instead")
    p.add_argument("--gpu", type=int, help="CUDA device id (default: CPU)")
    args = p.parse_args(argv)
    for flag in ("threshold", "marker_threshold", "extent_threshold"):
        value = getattr(args, flag)
        if value is not None and not 0 <= value <= 1:
            p.error(f"--{flag.replace('_', '-')} must lie in [0, 1]")
    if None not in (args.threshold, args.extent_threshold) and args.extent_threshold > args.threshold:
        p.error("--extent-threshold must not exceed --threshold")
    if (args.opening is not None and args.opening < 0) or (args.min_area is not None and args.min_area < 0):
        p.error("--opening and --min-area must be >= 0")
    if args.tile % STRIDE or args.tile <= 2 * infer.MARGIN:
        p.error(f"--tile must be a multiple of {STRIDE} larger than {2 * infer.MARGIN}")
    if args.scale is not None and not (math.isfinite(args.scale) and 0 < args.scale <= 16):
        p.error(f"--scale must be in (0, 16], got {args.scale}")
    if args.scale is not None and args.diameter is not None:
        p.error("give --scale or --diameter, not both")
    if args.workers < 0:
        p.error("--workers must be >= 0")
    if not args.model and not args.objects:
        p.error("give --model, or --objects (make evaluate's objects.json) to take its best model")
    if args.engine == "onnx":
        for flag in ("deploy", "gpu", "objects"):
            if getattr(args, flag) is not None:
                p.error(f"--{flag} is for --engine caffe; --engine onnx runs the package --model names, on the CPU")
    return args


def run(args):
    """Segment every image; write ``counts.csv`` and the folder's manifest; return the rows."""
    # Before Caffe loads: OpenMP reads its thread count once (oneDNN's float sums depend on it).
    os.environ.update(WORKER_ENV)
    images = find_images(args.inputs)
    check_out_apart(args.out, args.inputs)
    if args.model:
        model = Path(args.model)
    else:
        model, row = best_model(args.objects)
        print(f"segment: model {model} ({row.get('name', row.get('model'))}: validation F1 {row['val']['f1']:.3f}, "
              f"the best of {args.objects})", file=sys.stderr)
    if args.engine == "onnx":  # a package folder, its zip or a .onnx; no pycaffe on this path
        if not model.exists():
            raise InputError(f"{model}: no such file or folder")
    else:
        for path in (model, args.deploy or model):
            if not Path(path).is_file():
                raise InputError(f"{path}: no such file")
        args.deploy = args.deploy or str(infer.deploy_for(model))
    out = Path(args.out)
    files.check_writable(out / "counts.csv")
    net = load_net(args.engine, model, args.deploy, args.gpu)  # refuses a model of another net before any work
    classes = onnx_engine.classes(net[0]) if args.engine == "onnx" else int(net[0].blobs["prob"].data.shape[1])
    settings = make_settings(args, model, *resolve_params(args, model, classes))
    started = time.monotonic()
    with folder_lock(out):
        manifest = read_folder_manifest(out)
        check_sources(manifest, images, out)
        if args.scheduler or args.workers > 0:
            del net  # the workers load their own
        else:
            _NETS.clear()
            _NETS[_net_key(settings)] = net
        with image_map(args.scheduler, args.workers) as map_images:
            estimates = [None] * len(images)
            if settings["factor"] == "auto":
                estimates = map_images(estimate_file, images, settings, estimates, "nucleus size")
                choose_factor(settings, estimates)
            else:
                settings["digest"] = run_digest(settings)
            rows = map_images(segment_file, images, settings, estimates, "segment")
        write_counts(out / "counts.csv", rows)
        update_folder_manifest(out, manifest, images, rows, settings)
    failed = [r for r in rows if r["status"] == "failed"]
    skipped = sum(r["status"] == "skipped" for r in rows)
    earlier = len(manifest["images"]) - len(rows)
    print(f"segment: {len(rows) - len(failed)} of {len(rows)} images ({skipped} unchanged, skipped), "
          f"{sum(r.get('cells') or 0 for r in rows)} cells, resize factor {settings['factor']:.4g} "
          f"({settings['factor_from']}), {time.monotonic() - started:.1f} s -> {out / 'counts.csv'}"
          + (f" (the folder also holds {earlier} images of earlier runs: {FOLDER_MANIFEST})" if earlier else ""))
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
