"""Write a dataset folder: HDF5 and LMDB patch files, whole-image files, manifest; read it back.

Layout (the project's dataset-folder contract):

- ``<split>.h5`` with ``<split>.txt``, the HDF5Data list file. The list file holds the bare file name
  (``train.h5``), relative to the dataset folder, so ``caffe train`` runs with the dataset folder as its
  working directory (``tools/train.py`` does). Caffe reads list lines with ``>>`` (whitespace-split), so an
  absolute path would break under a folder with spaces, point a moved dataset at nothing and a copied one at
  the original's files; bare names make a dataset byte-identical wherever it is built and relocatable.
- ``<split>_data_lmdb/`` + ``<split>_label_lmdb/`` (two Data layers, same keys ``%08d``, same order);
- the 3-class targets (background / interior / contour, :mod:`data_prep.targets`) of the ``contour`` nets:
  ``<split>_3class.h5`` + ``<split>_3class.txt`` (the same ``data`` with ``label`` holding 0/1/2) and
  ``<split>_3class_label_lmdb/`` beside ``<split>_data_lmdb/``; the 4-class targets (3: micronucleus) the
  same way as ``<split>_4class*``. Separate files, so the two-class files and the models trained on them
  stay exactly as they were;
- ``<split>_full.h5``: the whole train/val/test images for whole-image evaluation (train: the choice of the
  instance parameters), with their masks and
  instance labels;
- ``manifest.json``: what was built from what, and the SHA-256 of every file above.

Writing never leaves a half-written dataset: everything goes into a staged folder beside the output
(:func:`cellfcn.files.staged_folder`) that replaces the output only when complete. HDF5 files are built in
memory (:func:`hdf5_bytes`) and written with a plain Python file write, so a full disk is an ``OSError``
in Python, never a failed write inside libhdf5 (which crashes h5py); the caller reports it as one line.

LMDB encoding: see :func:`cellfcn.caffe_env.encode_datum` (images as float32 ``float_data``, labels as uint8
bytes in ``data``).

Both formats are byte-reproducible: HDF5 datasets are written with ``track_times=False`` (no timestamps
in the object headers), and LMDB records are put in key order in one transaction. ``lock.mdb`` (run-time
reader table) is not part of the dataset and is not hashed.
"""

import io
import json
from pathlib import Path

import h5py
import lmdb
import numpy as np

from cellfcn.caffe_env import caffe_pb2, decode_datum, encode_datum
from cellfcn.constants import MANIFEST, TARGET_FILES
from cellfcn.errors import CaffeNotFound, CellfcnError, InputError
from cellfcn.files import check_writable, sha256_file, staged_folder

from .progress import progress_map


def hdf5_bytes(fill):
    """Build an HDF5 file in memory and return its bytes.

    h5py writes into an ``io.BytesIO`` (the same bytes as a file written directly, measured): unlike HDF5's
    ``core`` driver, which opens a file of the given name if one exists, it touches no file at all.

    Parameters
    ----------
    fill : callable
        ``fill(f)`` creates the file's content in the open ``h5py.File`` ``f``.

    Returns
    -------
    bytes
        The complete file, to be written with an ordinary file write.
    """
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        fill(f)
    return buffer.getvalue()


def write_hdf5(path, data, label, extra=None):
    """Write one HDF5Data file.

    Parameters
    ----------
    path : Path
    data : (N, P, P) float32 in [0, 1]
    label : (N, P, P) bool or integer class indices (0/1, or 0/1/2 for the 3-class targets)
    extra : dict of name -> array, optional
        More datasets (``source_index``, ``origin``), written unchunked.

    Notes
    -----
    ``data`` and ``label`` are (N, 1, P, P) float32 (what SoftmaxWithLoss expects for labels), chunked one
    patch per chunk.
    """
    n, p = data.shape[0], data.shape[-1]

    def fill(f):
        for key, array in (("data", data), ("label", label)):
            f.create_dataset(key, data=array.reshape(n, 1, p, p).astype(np.float32), chunks=(1, 1, p, p),
                             track_times=False)
        for key, value in (extra or {}).items():
            f.create_dataset(key, data=value, track_times=False)

    Path(path).write_bytes(hdf5_bytes(fill))


def write_full_images(path, images, masks, labels, names):
    """Whole images for whole-image evaluation: ``images/<i>`` float32, ``masks/<i>`` uint8 and ``labels/<i>``
    int32 (instance labels, 0 background, ``labels > 0`` = mask), each with the attribute ``name``."""
    def fill(f):
        for i, (image, mask, label, name) in enumerate(zip(images, masks, labels, names)):
            f.create_dataset(f"images/{i}", data=image.astype(np.float32), track_times=False)
            f.create_dataset(f"masks/{i}", data=mask.astype(np.uint8), track_times=False)
            f.create_dataset(f"labels/{i}", data=label.astype(np.int32), track_times=False)
            for group in ("images", "masks", "labels"):
                f[f"{group}/{i}"].attrs["name"] = name

    Path(path).write_bytes(hdf5_bytes(fill))


def write_lmdb(directory, patches, kind):
    """Write one LMDB for a Data layer: ``patches[i]`` as a Datum (:func:`cellfcn.caffe_env.encode_datum`
    of ``kind``) under key ``%08d``, in one transaction.

    Raises
    ------
    lmdb.Error
        The database could not be written (full disk, map full); :func:`write_dataset` names the path.
    """
    n, p = patches.shape[0], patches.shape[-1]
    env = lmdb.open(str(directory), map_size=n * (p * p * 4 + 4096) * 2 + (64 << 20), subdir=True,
                    meminit=True, map_async=False)
    try:
        with env.begin(write=True) as txn:
            for i, patch in enumerate(patches):
                txn.put(b"%08d" % i, encode_datum(patch, kind))
        env.sync(True)
    finally:
        env.close()


def check_formats(formats):
    """Fail before any work when a format's prerequisite is missing (LMDB records need pycaffe's protobuf).

    Raises
    ------
    CaffeNotFound
    """
    if "lmdb" in formats:
        try:
            caffe_pb2()
        except CaffeNotFound as err:
            raise CaffeNotFound(f"LMDB output needs pycaffe (or use --format hdf5): {err}") from None


def read_split(folder, split):
    """Read a split back as ``(data, label)`` (N, P, P) float32 arrays, from HDF5 if present, else LMDB."""
    folder = Path(folder)
    if (folder / f"{split}.h5").is_file():
        with h5py.File(folder / f"{split}.h5", "r") as f:
            return f["data"][:, 0], f["label"][:, 0]
    out = []
    for kind in ("data", "label"):
        env = lmdb.open(str(folder / f"{split}_{kind}_lmdb"), readonly=True, lock=False)
        try:
            with env.begin() as txn:
                out.append(np.stack([decode_datum(value) for _, value in txn.cursor()]))
        finally:
            env.close()
    return out[0], out[1]


def check_output_path(out):
    """Fail early (before any work) when ``out`` cannot become a dataset folder.

    Raises
    ------
    InputError
        ``out`` is a file or an existing folder that is not a data_prep dataset.
    CellfcnError
        ``out`` lies below a file or a folder this process may not write to.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"output path is a file: {out}")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise InputError(f"output folder exists and is not a data_prep dataset (no {MANIFEST}): {out}")
    check_writable(out, "output folder")


def load_manifest(out):
    """The manifest of an existing dataset folder, or None."""
    path = Path(out) / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_up_to_date(out, build_key):
    """True when ``out`` holds a complete dataset built with ``build_key`` whose files are unchanged.

    The manifest's per-file hashes decide; the list files hold bare names, so a moved or copied dataset
    stays up to date.
    """
    out = Path(out)
    manifest = load_manifest(out)
    if not manifest or manifest.get("build_key") != build_key or not manifest.get("files"):
        return False
    return all((out / rel).is_file() and sha256_file(out / rel) == digest
               for rel, digest in manifest["files"].items())


def write_dataset(out, splits, formats, manifest, full=None):
    """Write a complete dataset folder atomically.

    Parameters
    ----------
    out : Path
        Final folder (replaced if it exists).
    splits : dict of split name -> dict
        Each with ``data`` (N, P, P) float32, ``label`` (N, P, P) bool, and optional integer arrays
        (``source_index`` (N,), ``origin`` (N, 2), ``transform`` (N,)) stored as int32 in the HDF5 file.
    formats : sequence of {"hdf5", "lmdb"}
    manifest : dict
        Written as ``manifest.json`` with ``files`` (relative path -> SHA-256 of every output file) added.
    full : dict of split name -> (images, masks, labels, names), optional
        Whole images, written as ``<split>_full.h5`` (:func:`write_full_images`).

    Raises
    ------
    CellfcnError
        A write failed (full disk, LMDB map full...); ``out`` keeps its previous content and no temporary
        folder is left.
    """
    out = Path(out).absolute()
    with staged_folder(out) as tmp:
        def write(step):
            name, fmt = step
            split = splits.get(name)
            if fmt == "hdf5":
                extra = {k: np.asarray(v, dtype=np.int32) for k, v in split.items()
                         if k not in ("data", "label", *(key for _, key in TARGET_FILES.values()))}
                write_hdf5(tmp / f"{name}.h5", split["data"], split["label"], extra)
                (tmp / f"{name}.txt").write_text(f"{name}.h5\n")
                for suffix, key in TARGET_FILES.values():
                    write_hdf5(tmp / f"{name}_{suffix}.h5", split["data"], split[key])
                    (tmp / f"{name}_{suffix}.txt").write_text(f"{name}_{suffix}.h5\n")
            elif fmt == "lmdb":
                for kind, key in (("data", "data"), ("label", "label"),
                                  *((f"{suffix}_label", key) for suffix, key in TARGET_FILES.values())):
                    try:
                        write_lmdb(tmp / f"{name}_{kind}_lmdb", split[key], "data" if kind == "data" else "label")
                    except lmdb.Error as err:
                        raise CellfcnError(f"cannot write {out / f'{name}_{kind}_lmdb'}: {err}; the previous "
                                           "version (if any) is unchanged") from None
            else:
                write_full_images(tmp / f"{name}_full.h5", *full[name])

        steps = [(name, fmt) for name in splits for fmt in formats] + [(name, "full") for name in full or {}]
        progress_map(write, steps, f"writing {out.name}", unit="file")
        files = {path.relative_to(tmp).as_posix(): sha256_file(path)
                 for path in sorted(tmp.rglob("*")) if path.is_file() and path.name != "lock.mdb"}
        (tmp / MANIFEST).write_text(json.dumps({**manifest, "files": files}, indent=1) + "\n")
    return out
