"""tools.infer (tiles), tools.segment, tools.figures and tools.report with random-weight FCRN-A models on tiny
datasets; the report reads the outputs of a real tools.evaluate run."""
import json
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import dataset_manifest

from cellfcn import caffe_env, scale
from cellfcn.images import mask_labels
from cellfcn.metrics import binary_scores
from prototxt.net import DEPLOY
from tools import figures, infer, segment

REPO = Path(__file__).resolve().parent.parent
FIXTURE_LOG = REPO / "tests" / "data" / "caffe_train.log"
P = 128


@pytest.fixture(scope="module")
def caffe():
    return caffe_env.import_caffe()


@pytest.fixture(scope="module")
def net(caffe):
    """The deploy net with seeded Xavier weights and random biases (so outputs vary with the input)."""
    caffe.set_random_seed(0)
    n = caffe.Net(str(DEPLOY), caffe.TEST)
    rng = np.random.default_rng(0)
    for name, params in n.params.items():
        if len(params) > 1:
            params[1].data[...] = rng.normal(0, 0.1, params[1].data.shape)
    return n


@pytest.fixture(scope="module")
def model(net, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "random.caffemodel"
    net.save(str(path))
    return path


def blobs(shape, rng, n=6, radius=(4, 12)):
    """A noisy image of bright discs in [0, 1] and its mask."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    mask = np.zeros(shape, bool)
    for _ in range(n):
        cy, cx, r = rng.integers(0, shape[0]), rng.integers(0, shape[1]), rng.integers(*radius)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    image = np.clip(0.15 + 0.6 * mask + rng.normal(0, 0.05, shape), 0, 1).astype(np.float32)
    return image, mask


# ------------------------------------------------------------------------------------------------- segment
def test_odd_size_is_padded_and_cropped(net):
    rng = np.random.default_rng(1)
    image, _ = blobs((100, 130), rng)
    prob = infer.segment_image(net, image)
    assert prob.shape == (100, 130) and prob.dtype == np.float32
    assert np.all((prob >= 0) & (prob <= 1))
    padded = infer.pad_to_multiple(image)
    assert padded.shape == (104, 136)
    np.testing.assert_array_equal(padded[100:, :130], image[99:95:-1])  # mirrored rows below the image
    np.testing.assert_array_equal(prob, infer.forward_image(net, padded)[:100, :130])
    assert prob.std() > 1e-4  # a net whose output ignored the input would make this test meaningless


def test_tiny_image(net):
    prob = infer.segment_image(net, np.full((3, 5), 0.5, np.float32))
    assert prob.shape == (3, 5)


def test_tiling_equals_one_pass(net):
    rng = np.random.default_rng(2)
    image, _ = blobs((203, 261), rng, n=12)
    whole = infer.segment_image(net, image, tile=1024)
    tiled = infer.segment_image(net, image, tile=160)  # cores of 80 px: 3 x 4 windows
    assert len(infer.windows(208, 160)) == 3 and len(infer.windows(264, 160)) == 4
    np.testing.assert_allclose(tiled, whole, atol=1e-5, rtol=0)
    # The margin is what makes it exact: without enough context the seams differ.
    seams = infer.segment_image(net, image, tile=160, margin=16)
    assert np.abs(seams - whole).max() > 1e-4


def test_default_tile_splits_a_large_image(net):
    rng = np.random.default_rng(3)
    image, _ = blobs((530, 36), rng)
    assert len(infer.windows(536, infer.TILE)) == 2
    np.testing.assert_allclose(infer.segment_image(net, image), infer.segment_image(net, image, tile=1024), atol=1e-5)


def test_windows_partition_the_axis():
    for length in (8, 512, 520, 1000, 2048):
        cores = infer.windows(length, 512, 40)
        covered = np.zeros(length, int)
        for w0, w1, c0, c1 in cores:
            assert w0 % 8 == 0 and w1 % 8 == 0 and w0 <= c0 < c1 <= w1 and w1 - w0 <= 512
            assert c0 - w0 >= min(40, c0) and w1 - c1 >= min(40, length - c1)
            covered[c0:c1] += 1
        assert np.all(covered == 1)


def test_bad_arguments(net):
    with pytest.raises(ValueError):
        infer.segment_image(net, np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError):
        infer.segment_image(net, np.full((8, 8), np.nan, np.float32))
    with pytest.raises(ValueError):
        infer.segment_image(net, np.zeros((8, 8), np.float32), tile=100)


def _write_png(path, array):
    from PIL import Image

    Image.fromarray(array).save(path)


def test_prepare_matches_data_prep():
    from data_prep.normalize import normalize_percentile
    from data_prep.real import prepare_pair

    raw = np.random.default_rng(7).integers(0, 4096, (90, 70)).astype(np.uint16)
    image, net_input = segment.prepare(raw, scale=0.75, percentiles=(2.0, 99.0))
    np.testing.assert_array_equal(image, normalize_percentile(raw, 2.0, 99.0))
    expected = prepare_pair(raw, np.zeros(raw.shape, np.uint8), "x", scale=0.75, pct=(2.0, 99.0))[0]
    np.testing.assert_array_equal(net_input, expected)
    assert net_input.shape == expected.shape != raw.shape
    same, also_same = segment.prepare(raw)
    assert same is also_same


PARAMS = ["--threshold", "0.5", "--opening", "1", "--min-area", "15"]


def write_manifest(path, scale=1.0):
    """A dataset manifest with what tools.segment reads: its preprocessing and median nucleus diameter."""
    path.write_text(json.dumps(dataset_manifest("real", parameters={"scale": scale, "percentiles": [1, 99.5]})))
    return path


def test_nuclei_are_cut_at_the_net_scale(net):
    from skimage.transform import resize

    from cellfcn import objects as O

    image, _ = blobs((100, 130), np.random.default_rng(9))
    net_input = resize(image, (75, 98), order=1, preserve_range=True).astype(np.float32)
    params = dict(threshold=0.5, opening_radius=0, min_area=5, min_distance=5, smooth_sigma=1.0, min_dynamic=2.0)
    prob, labels, own_factor = segment.segment_prepared(net, image, net_input, params)
    small = O.instances_from_probs(infer.segment_image(net, net_input), **params)
    assert prob.shape == labels.shape == (100, 130) and labels.max() == small.max() and own_factor == 1
    np.testing.assert_array_equal(labels[::4, ::4] > 0, small[(np.arange(0, 100, 4) * 0.75).astype(int)][
        :, (np.arange(0, 130, 4) * 98 / 130).astype(int)] > 0)


def test_own_scale_cuts_nuclei_of_the_working_diameter():
    """segment_prepared with a working diameter, through a transparent "net" (its map is its input): discs of
    radius 6 (diameter about 12) are seen a second time at twice the size, and cut back at the image's size."""
    from cellfcn import objects as O

    yy, xx = np.mgrid[:120, :150]
    truth = np.zeros((120, 150), np.int32)
    for k, (cy, cx) in enumerate([(20, 20), (20, 60), (60, 40), (60, 100), (100, 70), (95, 130)], 1):
        truth[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = k
    image = np.where(truth > 0, 0.9, 0.1).astype(np.float32)
    params = dict(threshold=0.5, opening_radius=0, min_area=5)
    sizes = []

    def forward(net, window):
        sizes.append(window.shape)
        return window

    prob, labels, own_factor = segment.segment_prepared(None, image, image, params, forward=forward,
                                                        working_diameter=24.0)
    assert own_factor == pytest.approx(24 / scale.median_diameter(truth))
    assert max(h for h, _ in sizes) >= 240 and max(w for _, w in sizes) >= 296  # the second pass, at 2x
    assert prob.shape == labels.shape == image.shape
    assert O.object_scores(truth, labels)["f1"] == 1.0


def test_cli_scale_from_manifest(model, tmp_path):
    import tifffile

    rng = np.random.default_rng(8)
    image, _ = blobs((100, 130), rng)
    tifffile.imwrite(tmp_path / "cells.tif", (image * 4000).astype(np.uint16))
    manifest = write_manifest(tmp_path / "manifest.json", scale=0.5)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "tools.segment", "--model", str(model),
                           str(tmp_path / "cells.tif"), "--manifest", str(manifest), "--diameter", "20",
                           "--out", str(out), "--workers", "0", *PARAMS], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # the net saw 50 x 65 (the manifest's diameter over --diameter's), the maps are back to the file's size
    assert tifffile.imread(out / "cells_prob.tif").shape == tifffile.imread(out / "cells_labels.tif").shape == (
        100, 130)
    # a model without its own parameters file and no manifest: the preprocessing is not guessed, not even with
    # --scale (the percentiles would be)
    for extra in ((), ("--scale", "0.5")):
        done = subprocess.run([sys.executable, "-m", "tools.segment", "--model", str(model),
                               str(tmp_path / "cells.tif"), "--out", str(tmp_path / "o2"), "--workers", "0", *PARAMS,
                               *extra], capture_output=True, text=True)
        assert done.returncode == 1 and done.stderr.startswith("error: no preprocessing") and "--manifest" in done.stderr


def test_cli_writes_maps_labels_and_counts(model, tmp_path):
    import csv

    import tifffile
    from PIL import Image

    from cellfcn import objects as O

    rng = np.random.default_rng(4)
    image, _ = blobs((100, 130), rng)
    _write_png(tmp_path / "cells.png", (image * 255).astype(np.uint8))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "tools.segment", "--model", str(model), "--deploy", str(DEPLOY),
           str(tmp_path / "cells.png"), "--out", str(out), "--scale", "1", "--workers", "0", *PARAMS,
           "--manifest", str(write_manifest(tmp_path / "manifest.json"))]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    prob = tifffile.imread(out / "cells_prob.tif")
    assert prob.shape == (100, 130) and prob.dtype == np.float32
    labels = tifffile.imread(out / "cells_labels.tif")
    assert labels.dtype == np.int32
    expected = O.instances_from_probs(prob, 0.5, opening_radius=1, min_area=15)
    np.testing.assert_array_equal(labels, expected)
    (row,) = list(csv.DictReader((out / "counts.csv").open()))
    areas = np.bincount(expected.ravel())[1:]
    assert row["status"] == "done" and int(row["cells"]) == expected.max() and row["error"] == ""
    assert float(row["mean_area_px"]) == pytest.approx(areas.mean(), abs=0.01)
    assert (int(row["height"]), int(row["width"])) == (100, 130)
    assert np.array(Image.open(out / "cells_overlay.png")).shape == (100, 130, 3)
    assert f"{expected.max()} cells" in done.stdout
    assert not list(out.glob(".*"))


def test_cli_bad_input(model, tmp_path):
    script = [sys.executable, "-m", "tools.segment", "--workers", "0", *PARAMS, "--scale", "1", "--manifest",
              str(write_manifest(tmp_path / "manifest.json"))]
    done = subprocess.run([*script, "--model", str(tmp_path / "none.caffemodel"), str(FIXTURE_LOG), "--out",
                           str(tmp_path / "o")], capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.startswith("error:") and "none.caffemodel" in done.stderr
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    done = subprocess.run([*script, "--model", str(model), "--deploy", str(DEPLOY), str(tmp_path / "broken.png"),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1 and "broken.png" in done.stderr
    done = subprocess.run([*script, "--model", str(model), str(tmp_path / "broken.png"), "--out",
                           str(tmp_path / "o"), "--tile", "100"], capture_output=True, text=True)
    assert done.returncode == 2 and "--tile" in done.stderr
    # no instance parameters: neither the model's own <model>.params.json nor the three flags (no silent default
    # threshold)
    done = subprocess.run([sys.executable, "-m", "tools.segment", "--workers", "0", "--scale", "1", "--model",
                           str(model), str(tmp_path / "broken.png"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.startswith("error: no instance parameters chosen for")


# ------------------------------------------------------------------------------------------------ figures
def test_per_patch_mcc_matches_binary_scores():
    rng = np.random.default_rng(5)
    prob = rng.random((5, 16, 16)).astype(np.float32)
    label = rng.random((5, 16, 16)) < 0.3
    label[3] = False  # undefined MCC is NaN
    mcc = figures.per_patch_mcc(prob, label, 0.6)
    expected = [binary_scores(prob[i] >= 0.6, label[i])["mcc"] for i in range(5)]
    np.testing.assert_allclose(mcc, expected)
    assert np.isnan(mcc[3])


def test_select_cases_skips_empty_patches():
    label = np.zeros((6, 10, 10), bool)
    label[[0, 1, 2, 4], :5, :5] = True  # 25% cells; patches 3 and 5 have none
    label[5, 0, 0] = True  # 1%: below a 2% minimum
    mcc = np.array([0.5, 0.9, 0.1, -1.0, 0.7, -0.5])
    best, worst = figures.select_cases(mcc, label, k=2, min_cell_fraction=0.02)
    assert best.tolist() == [1, 4] and worst.tolist() == [2, 0]
    best, worst = figures.select_cases(mcc, label, k=3, min_cell_fraction=0.02)
    assert best.tolist() == [1, 4] and worst.tolist() == [2, 0]  # too few for 3 + 3: shared, never both
    best, worst = figures.select_cases(mcc, label, k=3, min_cell_fraction=0.2)
    assert best.tolist() == [1, 4] and worst.tolist() == [2, 0]
    best, worst = figures.select_cases(mcc[:3], label[:3], k=3)
    assert best.tolist() == [1, 0] and worst.tolist() == [2]


def test_cases_fall_back_to_every_patch():
    label = np.zeros((3, 10, 10), bool)  # no cells anywhere: rank all patches rather than show nothing
    best, worst, fraction = figures._cases(np.array([0.0, 0.2, 0.1]), label, 4, 0.02)
    assert best.tolist() == [1, 2] and worst.tolist() == [0] and fraction == 0


# ------------------------------------------------------------------------------------------------- report
def _write_split(path, data, label, **extra):
    with h5py.File(path, "w") as f:
        f["data"] = data[:, None].astype(np.float32)
        f["label"] = label[:, None].astype(np.float32)
        for k, v in extra.items():
            f[k] = v


def fake_runs(root, model):
    """A RUNS tree in the contracts' formats: tiny datasets, random models, the fixture log, a table1.json."""
    rng = np.random.default_rng(6)
    runs = Path(root)
    syn = runs / "data" / "synthetic"
    real = runs / "data" / "real"
    syn.mkdir(parents=True)
    real.mkdir(parents=True)
    pairs = [blobs((P, P), rng) for _ in range(5)]
    _write_split(syn / "test.h5", np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]))
    # Two whole real images (sizes not multiples of 8), cut into non-overlapping test patches.
    images = [blobs((150, 270), rng, n=14), blobs((131, 140), rng, n=8)]
    data, label, index, origin = [], [], [], []
    for i, (image, mask) in enumerate(images):
        for y in range(0, image.shape[0] - P + 1, P):
            for x in range(0, image.shape[1] - P + 1, P):
                data.append(image[y:y + P, x:x + P])
                label.append(mask[y:y + P, x:x + P])
                index.append(i)
                origin.append((y, x))
    _write_split(real / "test.h5", np.stack(data), np.stack(label), source_index=np.array(index, np.int32),
                 origin=np.array(origin, np.int32))
    _write_split(real / "val.h5", np.stack(data[::-1]), np.stack(label[::-1]))
    for split, pairs in (("test", images), ("val", images[::-1]), ("train", images[1:])):
        with h5py.File(real / f"{split}_full.h5", "w") as f:
            for i, (image, mask) in enumerate(pairs):
                f[f"images/{i}"] = image
                f[f"masks/{i}"] = mask.astype(np.uint8)
                f[f"labels/{i}"] = mask_labels(mask)
                f[f"images/{i}"].attrs["name"] = f"{split}-data/img{i}.tif"
    for folder, kind, splits in ((syn, "synthetic", {"test": 5}), (real, "real", {"test": len(data)})):
        manifest = dataset_manifest(kind, patch_size=P, splits={s: {"n": n, "cell_fraction": 0.2}
                                                                for s, n in splits.items()},
                                    files={"test.h5": "ab" * 32}, nucleus_diameter_px=12.0)
        (folder / "manifest.json").write_text(json.dumps(manifest))
    for stage, ipe in (("pretrain", 4), ("finetune", 2)):
        d = runs / stage
        d.mkdir()
        (d / "train.log").write_text(FIXTURE_LOG.read_text())
        (d / "final.caffemodel").write_bytes(Path(model).read_bytes())
        (d / "run.json").write_text(json.dumps({"stage": stage, "iters_per_epoch": ipe, "epochs": 6, "seconds": 1.5}))
        (d / "solver.prototxt").write_text('base_lr: 0.01\nlr_policy: "step"\nrandom_seed: 0\n')
    # make evaluate's outputs, written by the real stage.
    done = subprocess.run([sys.executable, "-m", "tools.evaluate", "--runs", str(runs), "--data", str(runs / "data"),
                           "--out", str(runs / "eval"), "--bootstrap", "50"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return runs


def test_report_end_to_end(model, tmp_path):
    runs = fake_runs(tmp_path / "runs", model)
    out = runs / "report"
    done = subprocess.run([sys.executable, "-m", "tools.report", "--runs", str(runs), "--out", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    page = (out / "index.html").read_text()
    md = (out / "report.md").read_text()
    for name in ("fig7_training.png", "roc.png", "fig8_synthetic.png", "fig9_real_best.png",
                 "fig11_real_worst.png", "segment_00_overlay.png", "segment_01_overlay.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
        assert f"]({name})" in md
    # Self-contained: every image is inline, nothing is fetched.
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) >= 7 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "href=" not in page
    table = json.loads((runs / "eval" / "table1.json").read_text())
    after = next(r for r in table["rows"] if (r["model"], r["protocol"]) == ("after", "val-threshold"))
    mcc = f"{after['mcc']:.3f} [{after['ci']['mcc'][0]:.3f}, {after['ci']['mcc'][1]:.3f}]"
    for text in ("Table 1", "paper: after fine-tuning", "0.740", "ours: after, t from val", mcc,
                 "Otsu per whole image", "Counting cells (object level)", "Otsu per image + watershed",
                 "base_lr: 0.01", "Caffe version", "BLAS", "ab" * 32, "test-data/img0.tif"):
        assert text in page and text in md, text
    assert not [p for p in runs.iterdir() if p.name.startswith(".")]  # no temporary folder left
    # Unchanged inputs: nothing is rebuilt.
    stamp = (out / "index.html").stat().st_mtime_ns
    again = subprocess.run([sys.executable, "-m", "tools.report", "--runs", str(runs), "--out", str(out)],
                           capture_output=True, text=True)
    assert again.returncode == 0 and "up to date" in again.stdout
    assert (out / "index.html").stat().st_mtime_ns == stamp


def test_report_missing_input(model, tmp_path):
    runs = fake_runs(tmp_path / "runs", model)
    (runs / "eval" / "table1.json").unlink()
    out = runs / "report"
    done = subprocess.run([sys.executable, "-m", "tools.report", "--runs", str(runs), "--out", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: missing {runs / 'eval' / 'table1.json'} (run `make evaluate`)"
    assert not out.exists() and not [p for p in runs.iterdir() if p.name.startswith(".")]
