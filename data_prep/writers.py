"""Write a dataset folder: HDF5 and LMDB patch files, whole-image files, manifest; read it back.

Layout (the project's dataset-folder contract): ``<split>.h5`` + ``<split>.txt`` (HDF5Data list file
holding the absolute path of the ``.h5``), ``<split>_data_lmdb/`` + ``<split>_label_lmdb/``, ``<split>_full.h5`` and
``manifest.json``. Everything is written into a temporary folder next to the output and renamed into place
only when complete.

LMDB encoding: image Datums carry ``float_data`` (float32 in [0, 1]) because normalised intensities need
float precision and Caffe's Data layer then needs no ``transform_param`` scaling; label Datums carry the
0/1 mask as uint8 bytes in ``data``, which Caffe converts to float exactly and which is 4x smaller.

Both formats are byte-reproducible: HDF5 datasets are written with ``track_times=False`` (no timestamps
in the object headers), and LMDB records are put in key order in one transaction. ``lock.mdb`` (run-time
reader table) is not part of the dataset and is not hashed.
"""

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path

import h5py
import lmdb
import numpy as np

from .errors import DataPrepError
from .progress import progress_map

FORMATS = ("hdf5", "lmdb")
MANIFEST = "manifest.json"


def sha256_file(path, block=1 << 20):
    """SHA-256 hex digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def write_hdf5(path, data, label, extra=None):
    """Write one HDF5Data file.

    Parameters
    ----------
    path : Path
    data : (N, P, P) float32 in [0, 1]
    label : (N, P, P) bool or {0, 1}
    extra : dict of name -> array, optional
        More datasets (``source_index``, ``origin``), written unchunked.

    Notes
    -----
    ``data`` and ``label`` are (N, 1, P, P) float32 (what SoftmaxWithLoss expects for labels), chunked one
    patch per chunk.
    """
    n, p = data.shape[0], data.shape[-1]
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=data.reshape(n, 1, p, p).astype(np.float32), chunks=(1, 1, p, p),
                         track_times=False)
        f.create_dataset("label", data=label.reshape(n, 1, p, p).astype(np.float32), chunks=(1, 1, p, p),
                         track_times=False)
        for key, value in (extra or {}).items():
            f.create_dataset(key, data=value, track_times=False)


def write_lmdb_pair(data_dir, label_dir, data, label):
    """Write the image and label LMDBs (keys ``%08d``, same order) that two Data layers read."""
    caffe_pb2 = _caffe_pb2()
    n, p = data.shape[0], data.shape[-1]
    for directory, arrays, to_datum in ((data_dir, data, _float_datum), (label_dir, label, _byte_datum)):
        map_size = n * (p * p * 4 + 4096) * 2 + (64 << 20)
        env = lmdb.open(str(directory), map_size=map_size, subdir=True, meminit=True, map_async=False)
        try:
            with env.begin(write=True) as txn:
                for i in range(n):
                    txn.put(b"%08d" % i, to_datum(caffe_pb2.Datum(), arrays[i]).SerializeToString())
            env.sync(True)
        finally:
            env.close()


def _caffe_pb2():
    """Caffe's protobuf module, from the pycaffe that ``tools.caffe_env`` resolves (only LMDB needs it)."""
    from tools import caffe_env  # noqa: PLC0415

    try:
        caffe_env.import_caffe()
    except caffe_env.CaffeNotFound as err:
        raise DataPrepError(f"LMDB output needs pycaffe: {err}") from None
    from caffe.proto import caffe_pb2  # noqa: PLC0415

    return caffe_pb2


def _float_datum(datum, patch):
    datum.channels, datum.height, datum.width = 1, patch.shape[0], patch.shape[1]
    datum.float_data.extend(np.asarray(patch, dtype=np.float32).ravel().tolist())
    return datum


def _byte_datum(datum, patch):
    datum.channels, datum.height, datum.width = 1, patch.shape[0], patch.shape[1]
    datum.data = np.asarray(patch, dtype=np.uint8).tobytes()
    return datum


def write_full_images(path, images, masks, names):
    """Whole images for whole-image evaluation: ``images/<i>`` float32, ``masks/<i>`` uint8, attr ``name``."""
    with h5py.File(path, "w") as f:
        for i, (image, mask, name) in enumerate(zip(images, masks, names)):
            f.create_dataset(f"images/{i}", data=image.astype(np.float32), track_times=False)
            f.create_dataset(f"masks/{i}", data=mask.astype(np.uint8), track_times=False)
            f[f"images/{i}"].attrs["name"] = name
            f[f"masks/{i}"].attrs["name"] = name


def read_split(folder, split):
    """Read a split back as ``(data, label)`` (N, P, P) float32 arrays, from HDF5 if present, else LMDB."""
    folder = Path(folder)
    if (folder / f"{split}.h5").is_file():
        with h5py.File(folder / f"{split}.h5", "r") as f:
            return f["data"][:, 0], f["label"][:, 0]
    caffe_pb2 = _caffe_pb2()
    out = []
    for kind in ("data", "label"):
        env = lmdb.open(str(folder / f"{split}_{kind}_lmdb"), readonly=True, lock=False)
        arrays = []
        with env.begin() as txn:
            for _, value in txn.cursor():
                datum = caffe_pb2.Datum.FromString(value)
                shape = (datum.height, datum.width)
                if datum.float_data:
                    arrays.append(np.asarray(datum.float_data, dtype=np.float32).reshape(shape))
                else:
                    arrays.append(np.frombuffer(datum.data, dtype=np.uint8).reshape(shape).astype(np.float32))
        env.close()
        out.append(np.stack(arrays))
    return out[0], out[1]


def check_output_path(out):
    """Fail early (before any work) when ``out`` cannot become a dataset folder.

    Raises
    ------
    DataPrepError
        ``out`` is a file, an existing folder that is not a data_prep dataset, or below a file or a
        folder we may not write to.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataPrepError(f"output path is a file: {out}")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise DataPrepError(f"output folder exists and is not a data_prep dataset (no {MANIFEST}): {out}")
    _check_ancestor(out, "output folder")


def check_output_file(path):
    """Fail early when the file ``path`` (a preview PNG) could not be written."""
    path = Path(path)
    if path.is_dir():
        raise DataPrepError(f"preview path is a folder: {path}")
    _check_ancestor(path, "file")


def _check_ancestor(path, what):
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise DataPrepError(f"cannot write the {what} {path}: {ancestor} is not a writable folder")


def load_manifest(out):
    """The manifest of an existing dataset folder, or None."""
    path = Path(out) / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_up_to_date(out, build_key):
    """True when ``out`` holds a complete dataset built with ``build_key`` whose files are unchanged."""
    out = Path(out)
    manifest = load_manifest(out)
    if not manifest or manifest.get("build_key") != build_key:
        return False
    for rel, digest in manifest.get("files", {}).items():
        path = out / rel
        if not path.is_file() or sha256_file(path) != digest:
            return False
        # List files hold absolute paths: a moved folder must be rebuilt.
        if rel.endswith(".txt") and path.read_text().strip() != str((out / rel).with_suffix(".h5").resolve()):
            return False
    return True


@contextlib.contextmanager
def staged_folder(out):
    """Yield a fresh temporary folder next to ``out``; on success it replaces ``out``, on error it is removed
    (and so are parent folders this call created), leaving no output behind."""
    out = Path(out).absolute()
    created = []
    parent = out.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    try:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        except OSError as err:
            raise DataPrepError(f"cannot write the output folder {out}: {err.strerror}") from None
        yield tmp
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in created:  # innermost first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


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
    full : dict of split name -> (images, masks, names), optional
        Whole images, written as ``<split>_full.h5``.
    """
    out = Path(out).resolve()
    with staged_folder(out) as tmp:
        def write(step):
            name, fmt = step
            split = splits.get(name)
            if fmt == "hdf5":
                extra = {k: np.asarray(v, dtype=np.int32) for k, v in split.items() if k not in ("data", "label")}
                write_hdf5(tmp / f"{name}.h5", split["data"], split["label"], extra)
                # The list file names the final location, not the temporary one.
                (tmp / f"{name}.txt").write_text(f"{out / (name + '.h5')}\n")
            elif fmt == "lmdb":
                write_lmdb_pair(tmp / f"{name}_data_lmdb", tmp / f"{name}_label_lmdb", split["data"],
                                split["label"])
            else:
                write_full_images(tmp / f"{name}_full.h5", *full[name])

        steps = [(name, fmt) for name in splits for fmt in formats] + [(name, "full") for name in full or {}]
        progress_map(write, steps, f"writing {out.name}", unit="file")
        files = {}
        for path in sorted(p for p in tmp.rglob("*") if p.is_file() and p.name != "lock.mdb"):
            files[path.relative_to(tmp).as_posix()] = sha256_file(path)
        (tmp / MANIFEST).write_text(json.dumps({**manifest, "files": files}, indent=1) + "\n")
    return out
