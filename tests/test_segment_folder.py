"""``make segment``: a folder of images -> maps, instance labels, overlays, counts.csv and the folder's manifest,
serially and on a real Dask LocalCluster (identical outputs), with failures recorded, unchanged images skipped,
the model's own parameters, the resize factor recorded, and one run per output folder."""
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from cellfcn import caffe_env, files, scale
from conftest import dataset_manifest
from prototxt import net as netspec
from prototxt.net import DEPLOY
from tools import model_params, object_table, segment

OUTPUTS = ("_prob.tif", "_labels.tif", "_overlay.png", ".json")
PARAMS = {"threshold": 0.5, "opening_radius": 1, "min_area": 10}
DATASET = {"scale": 0.75, "percentiles": [1.0, 99.8], "nucleus_diameter_px": 20.0}
EXPLICIT = ("--threshold", "0.5", "--opening", "1", "--min-area", "10")


def random_model(path, seed, deploy=DEPLOY):
    """A deploy net with seeded weights and random biases, saved."""
    caffe = caffe_env.import_caffe()
    caffe.set_random_seed(seed)
    net = caffe.Net(str(deploy), caffe.TEST)
    rng = np.random.default_rng(seed)
    for params in net.params.values():
        if len(params) > 1:
            params[1].data[...] = rng.normal(0, 0.1, params[1].data.shape)
    net.save(str(path))
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A random-weight FCRN-A with its own chosen parameters (<model>.params.json)."""
    path = random_model(tmp_path_factory.mktemp("model") / "random.caffemodel", 0)
    model_params.write_model_params(path, PARAMS, val={"f1": 0.5, "dsb_score": 0.3}, dataset=DATASET,
                                    chosen_on="test")
    return path


@pytest.fixture(scope="module")
def bare_model(tmp_path_factory):
    """Another random-weight FCRN-A, without parameters of its own."""
    return random_model(tmp_path_factory.mktemp("bare") / "bare.caffemodel", 1)


def draw(shape, rng, radius=8, n=5):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    mask = np.zeros(shape, bool)
    for cy, cx in rng.integers(0, shape, size=(n, 2)):
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2
    return np.clip(0.15 + 0.6 * mask + rng.normal(0, 0.05, shape), 0, 1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Four small images of bright discs (PNG 8-bit, TIFF 16-bit, sizes not multiples of 8) and one broken file."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(3)
    for i, shape in enumerate([(70, 90), (64, 64), (83, 61), (96, 120)]):
        image = draw(shape, rng)
        if i % 2:
            tifffile.imwrite(root / f"img{i}.tif", (image * 4000).astype(np.uint16))
        else:
            Image.fromarray((image * 255).astype(np.uint8)).save(root / f"img{i}.png")
    (root / "broken.tif").write_bytes(b"II*\x00 not a tiff")
    return root


def _segment(folder, model, out, *extra):
    return subprocess.run([sys.executable, "-m", "tools.segment", str(folder), "--model", str(model), "--out", str(out),
                           *extra], capture_output=True, text=True)


def _rows(out):
    return list(csv.DictReader((out / "counts.csv").open()))


def _one_line_error(done, *words):
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1, done.stderr
    for word in words:
        assert word in done.stderr, (word, done.stderr)


def test_serial_and_local_cluster_give_identical_outputs(folder, model, tmp_path):
    serial, parallel = tmp_path / "serial", tmp_path / "dask"
    done = _segment(folder, model, serial, "--workers", "0", "--scale", "0.75")
    # One broken image: recorded, the rest done, exit status 1 with a one-line summary.
    _one_line_error(done, "error: 1 of 5 images failed", "broken.tif")
    rows = _rows(serial)
    assert [r["file"].rsplit("/", 1)[-1] for r in rows] == ["broken.tif", "img0.png", "img1.tif", "img2.png",
                                                            "img3.tif"]
    assert rows[0]["status"] == "failed" and "broken.tif" in rows[0]["error"] and rows[0]["cells"] == ""
    assert all(r["status"] == "done" and r["error"] == "" for r in rows[1:])
    for r in rows[1:]:  # counts.csv agrees with the labels written, made with the model's own parameters
        stem = r["file"].rsplit("/", 1)[-1].rsplit(".", 1)[0]
        labels = tifffile.imread(serial / f"{stem}_labels.tif")
        prob = tifffile.imread(serial / f"{stem}_prob.tif")
        # nuclei cut at the net's scale (0.75), the labels resized back by nearest neighbour
        assert int(r["cells"]) == labels.max() == len(np.unique(labels[labels > 0]))
        assert labels.shape == prob.shape == (int(r["height"]), int(r["width"]))
        assert ((labels > 0) == (prob >= PARAMS["threshold"])).mean() > 0.9
        assert (r["factor"], r["factor_estimated"]) == ("0.75", "False")
    assert not (serial / "broken_prob.tif").exists()
    # the folder's manifest lists every image with the digest of each output it holds
    manifest = json.loads((serial / "manifest.json").read_text())
    assert manifest["last_run"]["params"] == PARAMS and manifest["last_run"]["dataset"] == DATASET
    assert manifest["images"]["broken"]["last_run"] == "failed" and "outputs" not in manifest["images"]["broken"]
    for stem in ("img0", "img1", "img2", "img3"):
        entry = manifest["images"][stem]
        assert entry["last_run"] == "done" and entry["source"].endswith(stem + (".png" if stem in ("img0", "img2")
                                                                                else ".tif"))
        assert sorted(entry["outputs"]) == sorted(f"{stem}{end}" for end in OUTPUTS[:3])
        for name, sha in entry["outputs"].items():
            assert files.sha256_file(serial / name) == sha
    assert not (serial / segment.LOCK).exists()  # the lock goes with the run

    done = _segment(folder, model, parallel, "--workers", "2", "--scale", "0.75")
    assert done.returncode == 1 and "1 of 5 images failed" in done.stderr
    written = sorted(p.name for p in serial.iterdir())
    assert written == sorted(p.name for p in parallel.iterdir())
    assert len(written) == 4 * len(OUTPUTS) + 2 and not [n for n in written if n.startswith(".")]
    # counts.csv and the records name their inputs by path: identical too (same inputs)
    for name in written:
        assert (serial / name).read_bytes() == (parallel / name).read_bytes(), name


def test_existing_scheduler(folder, model, tmp_path):
    from dask.distributed import LocalCluster

    assert _segment(folder, model, tmp_path / "serial", "--workers", "0").returncode == 1
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      env=segment.WORKER_ENV) as cluster:
        done = _segment(folder, model, tmp_path / "remote", "--scheduler", cluster.scheduler_address)
    assert done.returncode == 1 and "1 of 5 images failed" in done.stderr
    for path in (tmp_path / "serial").iterdir():
        assert path.read_bytes() == (tmp_path / "remote" / path.name).read_bytes(), path.name


def test_rerun_skips_unchanged_images_and_redoes_changed_or_damaged_ones(folder, model, tmp_path):
    out = tmp_path / "out"
    args = ("--workers", "0", *EXPLICIT)
    assert _segment(folder, model, out, *args).returncode == 1
    first = _rows(out)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name not in ("counts.csv", "manifest.json")}
    again = _segment(folder, model, out, *args)
    assert again.returncode == 1 and "(4 unchanged, skipped)" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()
            if p.name not in ("counts.csv", "manifest.json")} == stamps
    rows = _rows(out)
    assert [r["status"] for r in rows] == ["failed"] + ["skipped"] * 4
    assert [{k: v for k, v in r.items() if k != "status"} for r in rows] == \
        [{k: v for k, v in r.items() if k != "status"} for r in first]
    # An output cut short by someone else, or a record gone: those images are segmented again, not skipped.
    labels = (out / "img1_labels.tif").read_bytes()
    (out / "img1_labels.tif").write_bytes(labels[:100])
    (out / "img2.json").unlink()
    again = _segment(folder, model, out, *args)
    assert "(2 unchanged, skipped)" in again.stdout
    assert [r["status"] for r in _rows(out)] == ["failed", "skipped", "done", "done", "skipped"]
    assert (out / "img1_labels.tif").read_bytes() == labels
    # Other parameters: every image is segmented again.
    other = _segment(folder, model, out, "--workers", "0", "--threshold", "0.6", "--opening", "1", "--min-area",
                     "10")
    assert "(0 unchanged, skipped)" in other.stdout
    assert all(r["status"] in ("done", "failed") for r in _rows(out))


def test_parameters_belong_to_the_model(folder, model, bare_model, tmp_path):
    # A model without its own parameters is refused in one line, before any output.
    done = _segment(folder, bare_model, tmp_path / "a", "--workers", "0")
    _one_line_error(done, "no instance parameters chosen for", "bare.caffemodel", "--threshold")
    assert not (tmp_path / "a").exists()
    # Another model's parameters file beside it is refused too, explicit parameters or not.
    shutil.copy(model_params.params_path(model), model_params.params_path(bare_model))
    try:
        for extra in ((), EXPLICIT):
            done = _segment(folder, bare_model, tmp_path / "a", "--workers", "0", *extra)
            _one_line_error(done, "chosen for another model")
    finally:
        model_params.params_path(bare_model).unlink()
    # Explicit parameters need the dataset's preprocessing: from the dataset's manifest, checked.
    done = _segment(folder, bare_model, tmp_path / "a", "--workers", "0", *EXPLICIT)
    _one_line_error(done, "no preprocessing", "--manifest")
    manifest = tmp_path / "manifest.json"
    for bad in ({"scale": -0.5}, {"scale": 0}, {"percentiles": [99, 1]}, {"nucleus_diameter_px": None}):
        parameters = {"scale": 0.5, "percentiles": [1, 99.5], **bad}
        diameter = parameters.pop("nucleus_diameter_px", 20.0)
        manifest.write_text(json.dumps(dataset_manifest("real", parameters=parameters, nucleus_diameter_px=diameter)))
        done = _segment(folder, bare_model, tmp_path / "a", "--workers", "0", *EXPLICIT, "--manifest", manifest)
        _one_line_error(done, str(manifest))
    assert not (tmp_path / "a").exists()
    manifest.write_text(json.dumps(dataset_manifest("real", parameters={"scale": 0.5, "percentiles": [1, 99.5]})))
    done = _segment(folder, bare_model, tmp_path / "a", "--workers", "0", *EXPLICIT, "--manifest", manifest)
    assert done.returncode == 1 and "1 of 5 images failed" in done.stderr  # the broken file only
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["last_run"]["dataset"]["scale"] == 0.5
    # The model's own file and a --manifest that says otherwise: refused, not silently one of them.
    done = _segment(folder, model, tmp_path / "b", "--workers", "0", "--manifest", manifest)
    _one_line_error(done, "leave out --manifest")
    # The old --params objects.json path is gone (it applied one model's row to any model).
    done = _segment(folder, model, tmp_path / "b", "--workers", "0", "--params", tmp_path / "objects.json")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1


def objects_json(out, models):
    """objects.json as make evaluate writes it (tools.object_table on a tiny drawn image), its network rows naming
    ``models``: model key -> (path, validation F1)."""
    labels = np.zeros((40, 40), np.int32)
    labels[5:15, 5:15], labels[20:32, 18:30] = 1, 2
    image = np.where(labels > 0, 0.8, 0.1).astype(np.float32)
    split = {"names": ["drawn"], "images": [image], "labels": [labels]}
    maps = {key: {"val": [image], "test": [image]} for key in models}
    rows, _ = object_table.evaluate_objects(maps, split, split)
    for row in rows:
        if row["model"] in models:
            path, f1 = models[row["model"]]
            row.update(model_path=str(path), val={"f1": f1, "dsb_score": 0.2})
    object_table.write_outputs(out, rows, split, split)
    return out / "objects.json"


def test_default_model_is_the_best_evaluated_one(folder, model, bare_model, tmp_path):
    objects = objects_json(tmp_path, {"before": (bare_model, 0.4), "after": (model, 0.6)})  # otsu: no model
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "tools.segment", str(folder / "img0.png"), "--objects", str(objects),
                           "--out", str(out), "--workers", "0"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"model {model}" in done.stderr and "validation F1 0.600" in done.stderr
    assert json.loads((out / "manifest.json").read_text())["last_run"]["model"] == str(model)
    objects = objects_json(tmp_path, {"before": (bare_model, None), "after": (model, None)})
    done = subprocess.run([sys.executable, "-m", "tools.segment", str(folder), "--objects", str(objects), "--out",
                           str(out), "--workers", "0"], capture_output=True, text=True)
    _one_line_error(done, "names no evaluated model")


def test_factor_from_a_diameter_or_estimated(folder, model, tmp_path):
    # --diameter 40: nuclei twice the training data's 20 px -> factor 0.5, recorded as set, not estimated
    out = tmp_path / "diameter"
    done = _segment(folder / "img3.tif", model, out, "--workers", "0", "--diameter", "40")
    assert done.returncode == 0, done.stderr
    (row,) = _rows(out)
    assert (row["factor"], row["factor_estimated"], row["image_estimate"]) == ("0.5", "False", "")
    assert tifffile.imread(out / "img3_labels.tif").shape == (96, 120)
    # auto (the default): a folder of images whose nuclei are like the training data's (24 px: within 15% of
    # 20 / 0.75) keeps the dataset's factor; the same scene at twice the magnification gets about half of it
    rng = np.random.default_rng(5)
    for magnification in (1, 2):
        images = tmp_path / f"x{magnification}"
        images.mkdir()
        for i in range(3):
            image = draw((200 * magnification,) * 2, rng, 12 * magnification, n=10)
            tifffile.imwrite(images / f"{i}.tif", (image * 4000).astype(np.uint16))
        done = _segment(images, model, tmp_path / f"auto{magnification}", "--workers", "0")
        assert done.returncode == 0, done.stderr
        rows = _rows(tmp_path / f"auto{magnification}")
        own = [float(r["image_estimate"]) for r in rows]
        assert all(abs(e * magnification * 24 / 20 - 1) <= 0.1 for e in own), own  # D / d, within 10%
        assert {(r["factor"], r["factor_estimated"]) for r in rows} == {(str(round(scale.run_factor(own, 0.75)[0], 6)),
                                                                         "True")}
        record = json.loads((tmp_path / f"auto{magnification}" / "0.json").read_text())
        assert record["factor_from"].startswith("--diameter auto") and record["estimate"]["passes"][0][0] == 0.75
    assert float(rows[0]["factor"]) == pytest.approx(20 / 48, rel=0.1) and float(_rows(tmp_path / "auto1")[0][
        "factor"]) == 0.75
    # a diameter that would need a factor far outside any magnification, or not a number: refused
    _one_line_error(_segment(images, model, tmp_path / "c", "--workers", "0", "--diameter", "0.5"), "outside")
    for bad in (("--diameter", "0"), ("--diameter", "big"), ("--diameter", "30", "--scale", "0.5")):
        done = _segment(images, model, tmp_path / "c", "--workers", "0", *bad)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "c").exists()


def test_working_diameter_of_the_model_sets_each_images_own_scale(folder, tmp_path):
    """A model whose parameters carry a working diameter: with --diameter auto every image may go through the net
    a second time (its own factor recorded); a factor the user gives is used as it is."""
    model = random_model(tmp_path / "working.caffemodel", 0)
    model_params.write_model_params(model, PARAMS, val={"f1": 0.5}, dataset=DATASET, chosen_on="test",
                                    working_diameter_px=30.0)
    for extra, working in (((), 30.0), (("--diameter", "40"), None)):
        out = tmp_path / f"out{len(extra)}"
        done = _segment(folder, model, out, "--workers", "0", *extra)
        assert done.returncode == 1 and "broken.tif" in done.stderr, done.stderr
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["last_run"]["working_diameter_px"] == working
        for row in _rows(out):
            if row["status"] == "done":
                record = json.loads((out / f"{Path(row['file']).stem}.json").read_text())
                assert record["row"]["image_factor"] == float(row["image_factor"])
                if working is None:
                    assert row["image_factor"] == row["factor"]


def test_one_run_per_output_folder(folder, model, tmp_path):
    out = tmp_path / "out"
    with segment.folder_lock(out):  # a run in progress (this process holds the lock)
        done = _segment(folder, model, out, "--workers", "0")
        _one_line_error(done, "being written by another segment run", "--out")
    assert sorted(p.name for p in out.iterdir()) == []
    assert _segment(folder, model, out, "--workers", "0").returncode == 1  # the broken image
    assert not (out / segment.LOCK).exists()


def test_outputs_never_mix_with_inputs_or_other_images(folder, model, tmp_path):
    # OUT = IN: refused (the next run would segment the outputs), and so is an input file inside OUT.
    images = tmp_path / "images"
    shutil.copytree(folder, images)
    _one_line_error(_segment(images, model, images, "--workers", "0"), "choose another output folder")
    _one_line_error(_segment(images / "img0.png", model, images, "--workers", "0"), "choose another output folder")
    assert sorted(p.name for p in images.iterdir()) == sorted(p.name for p in folder.iterdir())
    # A folder that no segment run wrote: refused, its files untouched.
    _one_line_error(_segment(folder / "img1.tif", model, images, "--workers", "0"), "no segment run wrote")
    # Another image with a stem whose outputs the folder already holds: refused, not silently replaced.
    out = tmp_path / "out"
    assert _segment(folder / "img0.png", model, out, "--workers", "0").returncode == 0
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray((draw((50, 50), np.random.default_rng(9)) * 255).astype(np.uint8)).save(other / "img0.png")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _one_line_error(_segment(other, model, out, "--workers", "0"), "made from", "another --out")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # An image whose record would be the folder's manifest: refused.
    shutil.copy(folder / "img0.png", other / "manifest.png")
    _one_line_error(_segment(other / "manifest.png", model, tmp_path / "m", "--workers", "0"), "rename the image")
    # More images later into the same folder: added, the earlier ones stay listed.
    assert _segment(folder / "img1.tif", model, out, "--workers", "0").returncode == 0
    assert sorted(json.loads((out / "manifest.json").read_text())["images"]) == ["img0", "img1"]


def test_three_class_net(folder, tmp_path):
    deploy = tmp_path / "deploy_contour.prototxt"
    netspec.write_prototxt(deploy, netspec.deploy_net(variant="contour"), "contour_deploy")
    model = random_model(tmp_path / "contour.caffemodel", 2, deploy)
    params = {"threshold": 0.5, "marker_threshold": 0.5, "opening_radius": 0, "min_area": 10}
    model_params.write_model_params(model, params, val={"f1": 0.5}, dataset=DATASET, chosen_on="test")
    out = tmp_path / "out"
    done = _segment(folder / "img3.tif", model, out, "--deploy", deploy, "--workers", "0", "--scale", "0.75")
    assert done.returncode == 0, done.stderr
    labels, prob = tifffile.imread(out / "img3_labels.tif"), tifffile.imread(out / "img3_prob.tif")
    assert labels.shape == prob.shape == (96, 120) and int(_rows(out)[0]["cells"]) == labels.max()
    # explicit parameters of a 3-class net include its marker threshold; a 2-class net has none
    done = _segment(folder / "img3.tif", model, tmp_path / "o", "--deploy", deploy, "--workers", "0", *EXPLICIT)
    _one_line_error(done, "--marker-threshold")
    done = _segment(folder / "img3.tif", model, tmp_path / "o", "--deploy", deploy, "--workers", "0", *EXPLICIT,
                    "--marker-threshold", "0.4")
    assert done.returncode == 0, done.stderr


def test_refusals(folder, model, tmp_path):
    done = _segment(tmp_path / "nowhere", model, tmp_path / "o", "--workers", "0")
    _one_line_error(done, "nowhere")
    done = _segment(folder, model, tmp_path / "o", "--workers", "0", "--threshold", "0.5")
    _one_line_error(done, "--opening")
    done = _segment(folder, model, tmp_path / "o", "--workers", "0", *EXPLICIT, "--marker-threshold", "0.5")
    _one_line_error(done, "3- or 4-class")
    done = _segment(folder, model, tmp_path / "o", "--workers", "0", "--extent-threshold", "0.3")
    _one_line_error(done, "--extent-threshold goes with", "--threshold")
    assert not (tmp_path / "o").exists()
    done = _segment(folder, model, tmp_path / "o", "--workers", "-1")
    assert done.returncode == 2
    done = _segment(folder, model, tmp_path / "o", "--workers", "0", *EXPLICIT, "--extent-threshold", "0.6")
    assert done.returncode == 2 and "must not exceed --threshold" in done.stderr


def test_explicit_extent_threshold_reaches_the_run(folder, model, tmp_path):
    out = tmp_path / "out"
    done = _segment(folder / "img3.tif", model, out, "--workers", "0", *EXPLICIT, "--extent-threshold", "0.3")
    assert done.returncode == 0, done.stderr
    params = json.loads((out / "manifest.json").read_text())["last_run"]["params"]
    assert params == {"threshold": 0.5, "opening_radius": 1, "min_area": 10, "extent_threshold": 0.3}


def test_channel_is_named_and_a_grey_image_refuses_one(folder, model, tmp_path):
    images = tmp_path / "rgb"
    images.mkdir()
    rgb = np.zeros((60, 70, 3), np.uint8)
    rgb[..., 1] = (draw((60, 70), np.random.default_rng(2)) * 255).astype(np.uint8)  # nuclei in green only
    Image.fromarray(rgb).save(images / "cells.png")
    out = tmp_path / "out"
    assert _segment(images, model, out, "--workers", "0", "--scale", "0.75", "--channel", "1").returncode == 0
    (row,) = _rows(out)
    assert row["channel"].startswith("channel 1 (green) of PNG")
    # --channel on a grey image is that image's error, not silently ignored
    done = _segment(folder / "img0.png", model, tmp_path / "grey", "--workers", "0", "--channel", "1")
    _one_line_error(done, "1 of 1 images failed", "grey")
    assert not (tmp_path / "grey" / "img0_labels.tif").exists()
