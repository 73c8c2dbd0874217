"""Shared fixtures: the real Caffe build and tiny datasets that Caffe's data layers read."""
import os
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest

from cellfcn import caffe_env

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def caffe():
    """pycaffe of the build under test, in CPU mode."""
    return caffe_env.import_caffe()


@pytest.fixture(scope="session")
def caffe_bin():
    return str(caffe_env.caffe_binary())


def run_caffe(args, cwd, check=True):
    """Run the caffe binary; return its combined log text."""
    proc = subprocess.run([str(caffe_env.caffe_binary()), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, "GLOG_logtostderr": "1"})  # no glog files in /tmp
    if check and proc.returncode != 0:
        raise AssertionError(f"caffe {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def toy_arrays(n=16, size=16, seed=0):
    """Cell-like toy images: bright smooth blobs (the label) on a dark background, plus noise, in [0,1]."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    field = gaussian_filter(rng.random((n, 1, size, size)), sigma=(0, 0, 3, 3), mode="wrap")
    lo, hi = field.min(axis=(2, 3), keepdims=True), field.max(axis=(2, 3), keepdims=True)
    label = ((field - lo) / (hi - lo) > 0.6).astype(np.float32)
    data = np.clip(0.15 + 0.6 * label + 0.1 * rng.standard_normal(label.shape), 0, 1).astype(np.float32)
    return data, label


def write_h5(folder, name, data, label):
    """Write an HDF5Data dataset and its list file (the dataset contract: the .h5 named relative to the
    folder, so Caffe runs there); return the list file."""
    folder = Path(folder)
    with h5py.File(folder / f"{name}.h5", "w") as f:
        f.create_dataset("data", data=data)
        f.create_dataset("label", data=label)
    listfile = folder / f"{name}.txt"
    listfile.write_text(f"{name}.h5\n")
    return listfile


def dataset_manifest(kind="real", **changes):
    """A complete data_prep manifest (what ``cellfcn.schema.DATASET`` requires), with top-level ``changes``."""
    from cellfcn.constants import MANIFEST_SCHEMA

    manifest = {"schema_version": MANIFEST_SCHEMA, "kind": kind, "command": "mnfinder" if kind == "real" else kind,
                "patch_size": 16, "seed": 0, "formats": ["hdf5"], "splits": {"train": {"n": 8, "cell_fraction": 0.2}},
                "parameters": {"percentiles": [1.0, 99.8], **({"scale": 1.0} if kind != "synthetic" else {})},
                "nucleus_diameter_px": 20.0, "files": {}, "build_key": "test"}
    return {**manifest, **changes}


def make_dataset(folder, kind="synthetic", n_train=8, n_test=4, size=16, seed=0, formats=("hdf5",)):
    """A tiny dataset folder in data_prep's contract format (manifest, HDF5 + list files, LMDBs)."""
    import json

    import lmdb

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    splits = {"train": n_train, ("test" if kind == "synthetic" else "val"): n_test}
    if kind == "real":
        splits["test"] = n_test
    manifest = dataset_manifest(kind, patch_size=size, seed=seed, formats=list(formats), splits={}, files={})
    for i, (split, n) in enumerate(splits.items()):
        data, label = toy_arrays(n, size, seed + i)
        if "hdf5" in formats:
            write_h5(folder, split, data, label)
        if "lmdb" in formats:
            from caffe.proto import caffe_pb2

            for name, arrays in (("data", data), ("label", label)):
                env = lmdb.open(str(folder / f"{split}_{name}_lmdb"), map_size=1 << 26)
                with env.begin(write=True) as txn:
                    for j, arr in enumerate(arrays):
                        d = caffe_pb2.Datum(channels=1, height=size, width=size)
                        if name == "data":
                            d.float_data.extend(arr.ravel().tolist())
                        else:
                            d.data = arr.astype(np.uint8).tobytes()
                        txn.put(b"%08d" % j, d.SerializeToString())
                env.close()
        manifest["splits"][split] = {"n": n, "cell_fraction": float(label.mean())}
        manifest["files"][f"{split}.h5"] = f"seed{seed}-{split}"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder
