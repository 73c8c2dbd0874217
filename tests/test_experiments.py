"""Table 2 (`make experiments`): the plan, the paired bootstrap, row 5's post-processing, bad arguments (the
whole quick set runs in tests/test_reproduce.py, after `make reproduce QUICK=1`, for the report)."""
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from tools import experiments as X
from tools import metrics as M


def test_default_plan_has_every_row_of_the_issue():
    datasets, runs, rows = X.plan("default")
    by_id = {r["id"]: r for r in runs}
    keys = {r["key"]: r for r in rows}
    for key in ("synthetic", "pretrained", "xavier", "pretrained-post"):  # the starred rows (and row 5)
        assert sorted(keys[key]["runs"]) == [0, 1, 2]
    assert {r["row"] for r in rows} == set(range(1, 8))
    assert {r["net"] for r in rows if r["row"] == 6} == {"k5", "pool2", "wide"}
    assert sorted(r["n_real"] for r in rows if r["row"] == 7) == [5, 5, 14, 14, 28, 28]
    for run in runs:
        assert run["data"] in datasets
        if run["weights"]:  # fine-tuning starts from the pretraining of the same net and seed
            pre = by_id[run["weights"]]
            assert (pre["stage"], pre["net"], pre["seed"]) == ("pretrain", run["net"], run["seed"])
    equal = by_id[keys["xavier-equal"]["runs"][0]]
    s = X.SETS["default"]
    assert equal["weights"] is None and equal["iterations"] == s["pretrain"] + s["finetune"]
    assert keys["pretrained-post"]["runs"] == keys["pretrained"]["runs"]  # same models, post-processed
    for k in s["sizes"]:  # every training-set size gets the same iterations
        assert by_id[keys[f"xavier-n{k}"]["runs"][0]]["iterations"] == s["finetune"]
        assert datasets[by_id[keys[f"xavier-n{k}"]["runs"][0]]["data"]]["n_train"] == k
    assert len(runs) == len(by_id)  # a model shared by rows is trained once


def test_image_counts_match_per_image_scores():
    rng = np.random.default_rng(0)
    label = rng.random((6, 8, 8)) > 0.7
    pred = rng.random((6, 8, 8)) > 0.5
    groups = np.array([3, 3, 7, 7, 7, 9])
    counts = X.image_counts(pred, label, groups)
    for row, g in zip(counts, (3, 7, 9)):
        sel = groups == g
        tp = np.count_nonzero(pred[sel] & label[sel])
        fp = np.count_nonzero(pred[sel] & ~label[sel])
        fn = np.count_nonzero(~pred[sel] & label[sel])
        assert row.tolist() == [tp, fp, sel.sum() * 64 - tp - fp - fn, fn]


def _counts(rng, n_images, quality):
    """Per-image counts of a model that finds ``quality`` of 1000 cell pixels and errs on 1000 - that."""
    tp = rng.integers(int(900 * quality), int(1000 * quality), n_images)
    fp = 1000 - tp
    return np.stack([tp, fp, np.full(n_images, 10000), 1000 - tp], axis=1)


def test_paired_difference():
    rng = np.random.default_rng(1)
    good = {sd: _counts(rng, 12, 0.9) for sd in (0, 1, 2)}
    poor = {sd: _counts(rng, 12, 0.6) for sd in (0, 1, 2)}
    d = X.paired_difference(poor, good, n_boot=500)
    expected = np.mean([M.scores(*poor[sd].sum(0))["mcc"] - M.scores(*good[sd].sum(0))["mcc"] for sd in (0, 1, 2)])
    assert d["diff"] == pytest.approx(expected) and d["diff"] < 0
    assert d["ci"][0] < d["diff"] < d["ci"][1] < 0 and d["seeds"] == [0, 1, 2]
    same = X.paired_difference(good, good, n_boot=200)
    assert same["diff"] == 0 and same["ci"] == [0, 0]  # pairing: a row against itself never differs
    one = X.paired_difference({0: poor[0]}, good, n_boot=200)  # only the shared seed is compared
    assert one["seeds"] == [0]
    with pytest.raises(ValueError, match="share no seed"):
        X.paired_difference({5: poor[0]}, good)


def test_postprocessing_is_chosen_on_validation_and_removes_specks():
    label = np.zeros((4, 32, 32), bool)
    label[:, 8:20, 8:20] = True
    prob = np.where(label, 0.9, 0.1).astype(np.float32)
    prob[:, 26, 26] = prob[:, 2, 28] = 0.95  # single-pixel false positives
    chosen = X.choose_postprocess(prob, label, 0.5)
    assert chosen["val_mcc"] == pytest.approx(1.0)
    assert chosen["opening_radius"] > 0 or chosen["min_area"] > 1
    cleaned = X.postprocess(prob, 0.5, chosen["opening_radius"], chosen["min_area"])
    np.testing.assert_array_equal(cleaned, label)


def test_bad_arguments_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tools.experiments", "--set", "huge", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr and "Traceback" not in proc.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = subprocess.run([sys.executable, "-m", "tools.experiments", "--set", "quick", "--out", str(blocker / "x")],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.startswith("error:") and "Traceback" not in proc.stderr
