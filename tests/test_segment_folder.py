"""``make segment``: a folder of images -> maps, instance labels, overlays and counts.csv, serially and on a real
Dask LocalCluster (identical outputs), with failures recorded and unchanged images skipped."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

from cellfcn import caffe_env
from prototxt.net import DEPLOY
from tools import count, infer, segment

OUTPUTS = ("_prob.tif", "_labels.tif", "_overlay.png", ".json")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The deploy net with seeded weights and random biases, saved."""
    caffe = caffe_env.import_caffe()
    caffe.set_random_seed(0)
    net = caffe.Net(str(DEPLOY), caffe.TEST)
    rng = np.random.default_rng(0)
    for params in net.params.values():
        if len(params) > 1:
            params[1].data[...] = rng.normal(0, 0.1, params[1].data.shape)
    path = tmp_path_factory.mktemp("model") / "random.caffemodel"
    net.save(str(path))
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Four small images of bright discs (PNG 8-bit, TIFF 16-bit, sizes not multiples of 8) and one broken file."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(3)
    for i, shape in enumerate([(70, 90), (64, 64), (83, 61), (96, 120)]):
        yy, xx = np.mgrid[:shape[0], :shape[1]]
        mask = np.zeros(shape, bool)
        for cy, cx in rng.integers(0, shape, size=(5, 2)):
            mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < 64
        image = np.clip(0.15 + 0.6 * mask + rng.normal(0, 0.05, shape), 0, 1)
        if i % 2:
            tifffile.imwrite(root / f"img{i}.tif", (image * 4000).astype(np.uint16))
        else:
            Image.fromarray((image * 255).astype(np.uint8)).save(root / f"img{i}.png")
    (root / "broken.tif").write_bytes(b"II*\x00 not a tiff")
    return root


def _segment(folder, model, out, *extra):
    return subprocess.run([sys.executable, "-m", "tools.segment", str(folder), "--model", str(model), "--out", str(out),
                           "--scale", "0.75", *extra], capture_output=True, text=True)


def _rows(out):
    return list(csv.DictReader((out / "counts.csv").open()))


def _objects_json(path, threshold):
    """An objects.json as make evaluate writes it, with the 'after' row's chosen parameters."""
    params = {"threshold": threshold, "opening_radius": 1, "min_area": 10, "min_distance": 5,
              "smooth_sigma": 1.0, "min_dynamic": 2.0}
    path.write_text(json.dumps({"schema_version": count.OBJECTS_SCHEMA,
                                "rows": [{"model": "after", "params": params}]}))
    return params


def test_serial_and_local_cluster_give_identical_outputs(folder, model, tmp_path):
    params = _objects_json(tmp_path / "objects.json", 0.5)
    serial, parallel = tmp_path / "serial", tmp_path / "dask"
    done = _segment(folder, model, serial, "--workers", "0", "--params", tmp_path / "objects.json")
    # One broken image: recorded, the rest done, exit status 1 with a one-line summary.
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("error: 1 of 5 images failed")
    assert "broken.tif" in done.stderr
    rows = _rows(serial)
    assert [r["file"].rsplit("/", 1)[-1] for r in rows] == ["broken.tif", "img0.png", "img1.tif", "img2.png",
                                                            "img3.tif"]
    assert rows[0]["status"] == "failed" and "broken.tif" in rows[0]["error"] and rows[0]["cells"] == ""
    assert all(r["status"] == "done" and r["error"] == "" for r in rows[1:])
    for r in rows[1:]:  # counts.csv agrees with the labels written, made with objects.json's parameters
        stem = r["file"].rsplit("/", 1)[-1].rsplit(".", 1)[0]
        labels = tifffile.imread(serial / f"{stem}_labels.tif")
        prob = tifffile.imread(serial / f"{stem}_prob.tif")
        # nuclei cut at the net's scale (0.75), the labels resized back by nearest neighbour
        assert int(r["cells"]) == labels.max() == len(np.unique(labels[labels > 0]))
        assert labels.shape == prob.shape == (int(r["height"]), int(r["width"]))
        assert ((labels > 0) == (prob >= params["threshold"])).mean() > 0.9
    assert not (serial / "broken_prob.tif").exists()

    done = _segment(folder, model, parallel, "--workers", "2", "--params", tmp_path / "objects.json")
    assert done.returncode == 1 and "1 of 5 images failed" in done.stderr
    written = sorted(p.name for p in serial.iterdir())
    assert written == sorted(p.name for p in parallel.iterdir())
    assert len(written) == 4 * len(OUTPUTS) + 1 and not [n for n in written if n.startswith(".")]
    for name in written:
        if name != "counts.csv":
            assert (serial / name).read_bytes() == (parallel / name).read_bytes(), name
    # counts.csv names its inputs by path: identical too (same inputs)
    assert (serial / "counts.csv").read_bytes() == (parallel / "counts.csv").read_bytes()


def test_existing_scheduler(folder, model, tmp_path):
    from dask.distributed import LocalCluster

    args = ("--threshold", "0.5", "--opening", "1", "--min-area", "10")
    assert _segment(folder, model, tmp_path / "serial", "--workers", "0", *args).returncode == 1
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      env=segment.WORKER_ENV) as cluster:
        done = _segment(folder, model, tmp_path / "remote", "--scheduler", cluster.scheduler_address, *args)
    assert done.returncode == 1 and "1 of 5 images failed" in done.stderr
    for path in (tmp_path / "serial").iterdir():
        assert path.read_bytes() == (tmp_path / "remote" / path.name).read_bytes(), path.name


def test_rerun_skips_unchanged_images_and_redoes_changed_ones(folder, model, tmp_path):
    out = tmp_path / "out"
    args = ("--workers", "0", "--threshold", "0.5", "--opening", "1", "--min-area", "10")
    assert _segment(folder, model, out, *args).returncode == 1
    first = _rows(out)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "counts.csv"}
    again = _segment(folder, model, out, *args)
    assert again.returncode == 1 and "(4 unchanged, skipped)" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "counts.csv"} == stamps
    rows = _rows(out)
    assert [r["status"] for r in rows] == ["failed"] + ["skipped"] * 4
    assert [{k: v for k, v in r.items() if k != "status"} for r in rows] == \
        [{k: v for k, v in r.items() if k != "status"} for r in first]
    # Other parameters: every image is segmented again.
    other = _segment(folder, model, out, "--workers", "0", "--threshold", "0.6", "--opening", "1", "--min-area",
                     "10")
    assert "(0 unchanged, skipped)" in other.stdout
    assert all(r["status"] in ("done", "failed") for r in _rows(out))


def test_refusals(folder, model, tmp_path):
    done = _segment(tmp_path / "nowhere", model, tmp_path / "o", "--workers", "0")
    assert done.returncode == 1 and done.stderr.startswith("error:") and "nowhere" in done.stderr
    done = _segment(folder, model, tmp_path / "o", "--workers", "0", "--threshold", "0.5")
    assert done.returncode == 1 and "--opening" in done.stderr and not (tmp_path / "o").exists()
    done = _segment(folder, model, tmp_path / "o", "--workers", "-1")
    assert done.returncode == 2
