"""tools.score and tools.evaluate end to end on a tiny dataset with random-weight models."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from sklearn.metrics import matthews_corrcoef

from conftest import dataset_manifest

from cellfcn import metrics as M
from cellfcn import scale
from cellfcn.constants import METRICS
from cellfcn.images import mask_labels
from tools import evaluate as T
from tools import infer, model_params
from tools import score as E

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "prototxt" / "deploy.prototxt"
P = 16  # patch size: a multiple of 8, small enough for fast CPU forwards


def _images(n, shape, seed):
    """Smooth random images in [0, 1] with 'bright = cell' masks, as whole-image files hold them."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    images, masks = [], []
    for _ in range(n):
        img = gaussian_filter(rng.random(shape), 2.5, mode="wrap")
        img = ((img - img.min()) / np.ptp(img)).astype(np.float32)
        images.append(img)
        masks.append((img > 0.6).astype(np.uint8))
    return images, masks


def _write_split(folder, split, images, masks, with_full):
    data, label, source, origin = [], [], [], []
    for i, (img, mask) in enumerate(zip(images, masks)):
        for y in range(0, img.shape[0] - P + 1, P):
            for x in range(0, img.shape[1] - P + 1, P):
                data.append(img[None, y:y + P, x:x + P])
                label.append(mask[None, y:y + P, x:x + P])
                source.append(i)
                origin.append((y, x))
    with h5py.File(folder / f"{split}.h5", "w") as f:
        f["data"] = np.asarray(data, np.float32)
        f["label"] = np.asarray(label, np.float32)
        f["source_index"] = np.asarray(source, np.int32)
        f["origin"] = np.asarray(origin, np.int32)
    if with_full:
        with h5py.File(folder / f"{split}_full.h5", "w") as f:
            for i, (img, mask) in enumerate(zip(images, masks)):
                f[f"images/{i}"] = img
                f[f"masks/{i}"] = mask
                f[f"labels/{i}"] = mask_labels(mask != 0)  # instance labels, as data_prep writes them
                f[f"images/{i}"].attrs["name"] = f"img{i}.tif"
                f[f"masks/{i}"].attrs["name"] = f"img{i}.tif"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, caffe):
    """runs/ with random-weight pretrain/finetune models and data/ with real and synthetic splits."""
    root = tmp_path_factory.mktemp("eval")
    real, syn = root / "data" / "real", root / "data" / "synthetic"
    real.mkdir(parents=True)
    syn.mkdir(parents=True)
    _write_split(real, "test", *_images(3, (32, 48), 1), with_full=True)  # 3 images x 6 patches
    _write_split(real, "val", *_images(2, (32, 32), 2), with_full=True)
    _write_split(real, "train", *_images(2, (32, 32), 4), with_full=True)  # its whole images: the choice
    _write_split(syn, "test", *_images(2, (16, 48), 3), with_full=False)
    # What make evaluate records beside each model (its dataset's preprocessing and nucleus size).
    (real / "manifest.json").write_text(json.dumps(dataset_manifest("real", nucleus_diameter_px=12.0)))
    for seed, stage in ((1, "pretrain"), (2, "finetune")):
        (root / "runs" / stage).mkdir(parents=True)
        caffe.set_random_seed(seed)
        caffe.Net(str(DEPLOY), caffe.TEST).save(str(root / "runs" / stage / "final.caffemodel"))
    return root


def _run(tool, *args):
    return subprocess.run([sys.executable, "-m", f"tools.{Path(tool).stem}", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO)


def test_predict_batches_match_single_forwards(workspace, caffe):
    split = E.load_split(workspace / "data" / "real" / "test.h5")
    net = infer.load_model(workspace / "runs" / "pretrain" / "final.caffemodel")
    prob = infer.predict(net, split["data"], batch=4)  # 18 patches: the last batch holds 2
    assert prob.shape == (18, P, P) and prob.dtype == np.float32
    for k in (0, 5, 17):
        net.blobs["data"].reshape(1, 1, P, P)
        net.reshape()
        net.blobs["data"].data[...] = split["data"][k:k + 1]
        net.forward()
        np.testing.assert_allclose(prob[k], net.blobs["prob"].data[0, 1], rtol=1e-5, atol=1e-6)
    assert np.all((prob >= 0) & (prob <= 1)) and prob.std() > 0


def test_evaluate_cli(workspace, tmp_path):
    model = workspace / "runs" / "finetune" / "final.caffemodel"
    data = workspace / "data" / "real"
    proc = _run("score", "--model", model, "--data", data, "--split", "test", "--out", tmp_path / "e",
                "--batch", "5")
    assert proc.returncode == 0, proc.stderr
    assert "| final |" in proc.stdout
    out = tmp_path / "e"
    assert sorted(p.name for p in out.iterdir()) == ["curve.csv", "mcc.png", "metrics.json", "pr.png",
                                                      "roc.png", "table.md"]
    for png in ("roc.png", "mcc.png", "pr.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rec = json.loads((out / "metrics.json").read_text())
    assert rec["protocol"] == "mcc-optimal" and rec["n_pixels"] == 18 * P * P

    # The written numbers agree with an independent computation from the network's output.
    split = E.load_split(data / "test.h5")
    prob = infer.predict(infer.load_model(model), split["data"], batch=18)
    label = split["label"]
    pred = prob >= rec["threshold"]
    assert rec["mcc"] == pytest.approx(matthews_corrcoef(label.ravel(), pred.ravel()), abs=1e-9)
    assert rec["tp"] == np.count_nonzero(pred & label) and rec["fp"] == np.count_nonzero(pred & ~label)
    counts = M.confusion_counts(prob, label)
    assert rec["mcc"] == pytest.approx(np.nanmax(M.scores(counts["tp"], counts["fp"], counts["tn"], counts["fn"])["mcc"]))
    rows = list(csv.DictReader((out / "curve.csv").open()))
    assert len(rows) == 1001
    assert [int(rows[i]["tp"]) for i in (0, 500, 1000)] == [int(counts["tp"][i]) for i in (0, 500, 1000)]
    assert float(rows[0]["fpr"]) == (1.0 if counts["fp"][0] else 0.0)

    # A fixed threshold is used as given (in-process: the same main() as the command line).
    assert E.main(["--model", str(model), "--data", str(data), "--out", str(tmp_path / "f"),
                            "--threshold", "0.4"]) == 0
    rec = json.loads((tmp_path / "f" / "metrics.json").read_text())
    assert rec["threshold"] == 0.4 and rec["protocol"] == "fixed"
    assert rec["tp"] == np.count_nonzero((prob >= 0.4) & label)


def test_evaluate_bad_input(workspace, tmp_path, caffe, capsys):
    model = workspace / "runs" / "pretrain" / "final.caffemodel"
    bad = tmp_path / "bad"
    bad.mkdir()
    with h5py.File(bad / "test.h5", "w") as f:  # 12 is not a multiple of 8
        f["data"] = np.zeros((2, 1, 12, 12), np.float32)
        f["label"] = np.zeros((2, 1, 12, 12), np.float32)
    with h5py.File(bad / "val.h5", "w") as f:
        f["data"] = np.zeros((2, 1, 16, 16), np.float32)
        f["label"] = np.zeros((2, 1, 8, 8), np.float32)
    garbage = tmp_path / "garbage.caffemodel"
    garbage.write_bytes(b"\xff" * 64)
    other = tmp_path / "other.caffemodel"  # a net whose conv1 has 16 filters, not the deploy net's 32
    narrow = tmp_path / "narrow.prototxt"
    narrow.write_text(DEPLOY.read_text().replace("num_output: 32", "num_output: 16", 1))
    caffe.Net(str(narrow), caffe.TEST).save(str(other))
    real = workspace / "data" / "real"
    cases = [
        (["--model", tmp_path / "missing.caffemodel", "--data", real], "model not found"),
        (["--model", garbage, "--data", real], "not a caffemodel"),
        (["--model", other, "--data", real], "layer 'conv1' blob 0 has shape (16, 1, 3, 3)"),
        (["--model", model, "--data", tmp_path / "nowhere"], "data file not found"),
        (["--model", model, "--data", bad], "multiple of 8"),
        (["--model", model, "--data", bad, "--split", "val"], "label shape"),
    ]
    for args, message in cases:
        assert E.main([*map(str, args), "--out", str(tmp_path / "out")]) == 1, args
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    with pytest.raises(SystemExit) as usage:  # a value out of range is a usage error
        E.main(["--model", str(model), "--data", str(real), "--threshold", "1.5", "--out", str(tmp_path / "out")])
    assert usage.value.code == 2 and "--threshold must lie in [0, 1]" in capsys.readouterr().err
    proc = _run("score", *cases[1][0], "--out", tmp_path / "out")  # the exit status of the command
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and "not a caffemodel" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_table1_end_to_end(workspace, tmp_path):
    args = ["--runs", workspace / "runs", "--data", workspace / "data", "--bootstrap", "200", "--batch", "8"]
    proc = _run("evaluate", *args, "--out", tmp_path / "a")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "a"
    table = json.loads((out / "table1.json").read_text())
    assert proc.stdout == (out / "table1.md").read_text()
    names = [r["name"] for r in table["rows"]]
    assert names == ["ours: before, t* on test", "ours: before, t from val", "ours: after, t* on test",
                     "ours: after, t from val", "Otsu per whole image", "ours: before, synthetic test"]
    assert [p["threshold"] for p in table["paper"]] == [0.25, 0.67]
    assert table["n_test_patches"] == 18 and table["n_test_images"] == 3
    for r in table["rows"]:
        for key in METRICS:
            if np.isnan(r[key]):  # random weights: a ratio may be undefined, and so its interval
                continue
            assert -1 <= r[key] <= 1
            lo, hi = r["ci"][key]
            assert lo <= hi
        assert r["name"] in proc.stdout
    by_name = dict(zip(names, table["rows"]))

    # Per-model folders agree with the table; saved probabilities reproduce the test-optimal row.
    before = json.loads((out / "before" / "metrics.json").read_text())
    assert before["mcc"] == by_name["ours: before, t* on test"]["mcc"]
    probs = np.load(out / "probs_before.npy")
    assert probs.shape == (18, P, P) and probs.dtype == np.float32
    label = E.load_split(workspace / "data" / "real" / "test.h5")["label"]
    assert by_name["ours: before, t* on test"]["tp"] == np.count_nonzero((probs >= before["threshold"]) & label)
    for name in ("after", "before_synthetic"):
        assert (out / name / "roc.png").is_file() and (out / f"probs_{name}.npy").is_file()
    assert (out / "roc.png").read_bytes()[:4] == b"\x89PNG"

    # The validation threshold is the MCC-optimal one of the val split, applied to the test set.
    val = E.load_split(workspace / "data" / "real" / "val.h5")
    net = infer.load_model(workspace / "runs" / "pretrain" / "final.caffemodel")
    t_val, _ = M.best_threshold(M.confusion_counts(infer.predict(net, val["data"]), val["label"]))
    assert by_name["ours: before, t from val"]["threshold"] == t_val

    # Otsu row: skimage's threshold per whole image, scored on the test patch pixels only.
    from skimage.filters import threshold_otsu

    pred = []
    with h5py.File(workspace / "data" / "real" / "test_full.h5") as f, \
            h5py.File(workspace / "data" / "real" / "test.h5") as g:
        for i, (y, x) in zip(g["source_index"][...], g["origin"][...]):
            img = f[f"images/{i}"][...]
            pred.append((img > threshold_otsu(img))[y:y + P, x:x + P])
    ref = M.binary_scores(np.array(pred), label)
    otsu = by_name["Otsu per whole image"]
    assert otsu["mcc"] == pytest.approx(ref["mcc"]) and otsu["threshold"] is None and otsu["auc"] is None
    assert otsu["ci"]["mcc"][0] <= otsu["mcc"] <= otsu["ci"]["mcc"][1]
    assert otsu["mcc"] > 0.5  # a sanity check of alignment: Otsu nearly recovers 'bright = cell'

    # Rows are keyed by model, split and protocol, which figures and report look up.
    assert T.find_row(table, "after", "real_test", "val-threshold") == by_name["ours: after, t from val"]
    assert table["schema_version"] == T.TABLE1_SCHEMA

    # The whole-image segmentations the report shows are made here, by the only stage that runs the net.
    seg = json.loads((out / "segment" / "segment.json").read_text())
    objects = json.loads((out / "objects.json").read_text())
    assert seg["params"] == next(r for r in objects["rows"] if r["model"] == "after")["params"]
    assert len(seg["images"]) == 2 and [r["model"] for r in objects["rows"]] == ["before", "after", "otsu"]
    # Parameters chosen on the whole training and validation images, val F1 on the latter alone.
    assert all(r["chosen_on"] == {"train": 2, "val": 2} for r in objects["rows"])
    assert objects["train_images"] == ["img0.tif", "img1.tif"]
    # The nets' rows are scored at each image's own scale, the working diameter chosen on the same images and
    # written beside the model with the parameters chosen again there; the first pass's parameters and scores
    # are kept. The nets' nuclei grow to their Table 1 validation threshold.
    val_threshold = {r["model"]: r["threshold"] for r in table["rows"] if r["protocol"] == "val-threshold"}
    for r in objects["rows"][:2]:
        assert r["working_ratio"] in scale.WORKING_RATIOS and r["working_diameter_px"] == r["working_ratio"] * 12.0
        assert [t["ratio"] for t in r["working_choice"]] == list(scale.WORKING_RATIOS)
        assert set(r["dataset_scale"]) == {"params", "f1", "dsb_score", "n_pred", "val_f1"}
        assert r["grid"]["extent_threshold"] == round(val_threshold[r["model"]], 4)
        for params in (r["params"], r["dataset_scale"]["params"]):
            assert params["extent_threshold"] == (r["grid"]["extent_threshold"]
                                                  if params["threshold"] > r["grid"]["extent_threshold"] else None)
        assert all(i["own_factor"] > 0 for i in r["images"])
        record = model_params.read_model_params(workspace / "runs" / T.MODELS[r["model"]] / "final.caffemodel")
        assert record["working_diameter_px"] == r["working_diameter_px"] and record["params"] == r["params"]
    assert "working_ratio" not in objects["rows"][2]  # Otsu's row: one pass
    for bad in ("-1", "x"):
        with pytest.raises(SystemExit):
            T.parse_args(["--runs", "r", "--data", "d", "--out", "o", "--train-images", bad])
    assert T.parse_args(["--runs", "r", "--data", "d", "--out", "o", "--train-images", "0"]).train_images == 0
    assert all((out / "segment" / r["files"]["overlay"]).is_file() for r in seg["images"])

    # Same inputs, same seed: identical outputs.
    assert T.main([*map(str, args), "--out", str(tmp_path / "b")]) == 0
    for name in ("table1.json", "table1.md", "probs_after.npy", "roc.png"):
        assert (out / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name

    # Unchanged inputs: the stage returns at once and rewrites nothing; a changed model recomputes.
    stamp = (out / "table1.json").stat().st_mtime_ns
    again = _run("evaluate", *args, "--out", out)
    assert again.returncode == 0 and "up to date" in again.stderr and again.stdout == proc.stdout
    assert (out / "table1.json").stat().st_mtime_ns == stamp


def test_table1_bad_input(workspace, tmp_path):
    runs = tmp_path / "runs"
    (runs / "pretrain").mkdir(parents=True)
    (runs / "pretrain" / "final.caffemodel").write_bytes((workspace / "runs" / "pretrain" / "final.caffemodel")
                                                         .read_bytes())
    proc = _run("evaluate", "--runs", runs, "--data", workspace / "data", "--out", tmp_path / "out")
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: model not found") and "finetune" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
