"""cellfcn/metrics.py against scikit-learn and direct computation; undefined scores and rows."""
import json

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, matthews_corrcoef, roc_auc_score

from cellfcn import metrics as M
from cellfcn.constants import METRICS
from tools import score as E


def _data(seed, n=20000, pos_fraction=0.2, shape=None):
    rng = np.random.default_rng(seed)
    label = rng.random(n) < pos_fraction
    prob = np.clip(rng.normal(0.35 + 0.3 * label, 0.2), 0, 1).astype(np.float32)
    if shape is not None:
        label, prob = label.reshape(shape), prob.reshape(shape)
    return prob, label


def _sklearn_scores(label, pred):
    """scikit-learn's scores, with its zero_division=0 (and MCC 0) turned into ours: NaN, undefined."""
    tn, fp, fn, tp = confusion_matrix(label.ravel(), pred.ravel(), labels=[0, 1]).ravel()
    div = lambda a, b: a / b if b else np.nan  # noqa: E731
    mcc_defined = min(tp + fp, tp + fn, tn + fp, tn + fn) > 0
    return {"specificity": div(tn, tn + fp), "precision": div(tp, tp + fp), "recall": div(tp, tp + fn),
            "accuracy": div(tp + tn, tp + tn + fp + fn), "f_score": div(2 * tp, 2 * tp + fp + fn),
            "mcc": matthews_corrcoef(label.ravel(), pred.ravel()) if mcc_defined else np.nan}


def test_counts_match_direct_computation():
    prob, label = _data(0, shape=(5, 1, 40, 100))
    # Put probabilities exactly on, just above and just below thresholds: the boundary cases.
    grid = M.thresholds_grid(1001)
    prob.ravel()[:300] = grid[::10][:101].repeat(3)[:300].astype(np.float32)
    prob.ravel()[300:400] = np.nextafter(grid[500:600].astype(np.float32), np.float32(0))
    counts = M.confusion_counts(prob, label, 1001)
    assert counts["thresholds"].shape == (1001,) and counts["thresholds"].dtype == np.float64
    assert counts["thresholds"][0] == 0 and counts["thresholds"][-1] == 1
    pred = prob.ravel()[None, :] >= counts["thresholds"][:, None]
    lab = label.ravel()[None, :]
    expected = {"tp": (pred & lab).sum(1), "fp": (pred & ~lab).sum(1),
                "tn": (~pred & ~lab).sum(1), "fn": (~pred & lab).sum(1)}
    for key, value in expected.items():
        assert counts[key].dtype == np.int64
        np.testing.assert_array_equal(counts[key], value, err_msg=key)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_counts_any_float_dtype(dtype):
    prob, label = _data(1, n=3000)
    prob = prob.astype(dtype)
    counts = M.confusion_counts(prob, label.astype(np.uint8), 101)
    for i, t in enumerate(counts["thresholds"]):
        assert counts["tp"][i] == np.count_nonzero((prob >= t) & label)
        assert counts["fp"][i] == np.count_nonzero((prob >= t) & ~label)


@pytest.mark.parametrize("threshold_index", [0, 137, 250, 500, 670, 900, 1000])
def test_scores_match_sklearn(threshold_index):
    prob, label = _data(2)
    counts = M.confusion_counts(prob, label)
    t = counts["thresholds"][threshold_index]
    ours = M.scores(*(counts[k] for k in ("tp", "fp", "tn", "fn")))
    ref = _sklearn_scores(label, prob >= t)
    for key in METRICS:
        assert ours[key].shape == (1001,)
        assert ours[key][threshold_index] == pytest.approx(ref[key], abs=1e-12, nan_ok=True), key
    assert M.binary_scores(prob >= t, label) == pytest.approx(ref, abs=1e-12, nan_ok=True)


def test_best_threshold_maximises_sklearn_mcc():
    prob, label = _data(3)
    counts = M.confusion_counts(prob, label, 201)
    t, i = M.best_threshold(counts)
    assert t == counts["thresholds"][i]
    best = matthews_corrcoef(label, prob >= t)
    assert all(matthews_corrcoef(label, prob >= s) <= best + 1e-12 for s in counts["thresholds"][::5])
    assert best > 0.4


def test_auc_matches_sklearn():
    prob, label = _data(4)
    grid = M.thresholds_grid(1001)
    # Scores on the grid: no within-bin ties, so the trapezoid equals scikit-learn exactly.
    on_grid = grid[np.round(prob.astype(np.float64) * 1000).astype(int)]
    assert M.roc_auc(M.confusion_counts(on_grid, label)) == pytest.approx(roc_auc_score(label, on_grid),
                                                                          abs=1e-12)
    # Arbitrary scores: only quantisation to 1001 levels separates the two.
    assert M.roc_auc(M.confusion_counts(prob, label)) == pytest.approx(roc_auc_score(label, prob), abs=2e-3)
    fpr, tpr = M.roc_curve(M.confusion_counts(prob, label))
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


def test_auc_perfect_and_inverted():
    label = np.array([0, 0, 1, 1], bool)
    assert M.roc_auc(M.confusion_counts(np.array([0.1, 0.2, 0.8, 0.9]), label)) == 1.0
    assert M.roc_auc(M.confusion_counts(np.array([0.9, 0.8, 0.2, 0.1]), label)) == 0.0
    assert M.roc_auc(M.confusion_counts(np.full(4, 0.5), label)) == 0.5


@pytest.mark.filterwarnings("ignore:A single label was found")  # scikit-learn's, not ours
@pytest.mark.parametrize("case", ["no_positives", "all_positives", "empty"])
def test_degenerate_cases_are_undefined_not_zero(case):
    rng = np.random.default_rng(5)
    n = 0 if case == "empty" else 500
    prob = rng.random(n)
    label = np.full(n, case == "all_positives")
    counts = M.confusion_counts(prob, label)
    s = M.scores(*(counts[k] for k in ("tp", "fp", "tn", "fn")))
    for i in (0, 300, 1000):
        if n:
            ref = _sklearn_scores(label, prob >= counts["thresholds"][i])
            for key in METRICS:
                assert s[key][i] == pytest.approx(ref[key], abs=1e-12, nan_ok=True), (key, i)
    assert np.isnan(s["mcc"]).all()  # one class only: MCC undefined everywhere (scikit-learn says 0)
    assert np.isnan(M.roc_auc(counts))  # no ranking to judge, AUC undefined (not 0.000)
    assert M.best_threshold(counts)[1] is None and np.isnan(M.best_threshold(counts)[0])  # not 0.0


def test_all_equal_probabilities_choose_no_threshold():
    # Every pixel 0.37: at t <= 0.37 all are cells, above none; MCC is undefined at every threshold.
    # With undefined counted as 0 the argmax was threshold 0.0, "every pixel a cell", reported as a result.
    label = np.random.default_rng(8).random((4, 32, 32)) < 0.3
    counts = M.confusion_counts(np.full(label.shape, 0.37, np.float32), label)
    threshold, index = M.best_threshold(counts)
    assert np.isnan(threshold) and index is None


def test_undefined_ends_of_a_curve_are_skipped():
    prob, label = _data(9, n=4000)
    prob = np.minimum(prob, 0.9)  # nothing predicted above 0.9: MCC undefined there
    counts = M.confusion_counts(prob, label, 101)
    mcc = M.scores(*(counts[k] for k in ("tp", "fp", "tn", "fn")))["mcc"]
    assert np.isnan(mcc[0]) and np.isnan(mcc[-1])  # all cells at t = 0, none at t = 1
    threshold, index = M.best_threshold(counts)
    assert mcc[index] == np.nanmax(mcc) and 0 < threshold < 0.9


def test_no_predictions_and_scalar_scores():
    s = M.scores(0, 0, 90, 10)  # nothing predicted positive
    assert isinstance(s["precision"], float)
    assert {k: v for k, v in s.items() if k not in ("precision", "mcc")} == {
        "specificity": 1.0, "recall": 0.0, "accuracy": 0.9, "f_score": 0.0}
    assert np.isnan(s["precision"]) and np.isnan(s["mcc"])
    assert np.isnan(M.binary_scores(np.zeros((3, 3), bool), np.zeros((3, 3), bool))["mcc"])


def test_bootstrap_of_an_undefined_curve_is_undefined():
    label = np.random.default_rng(10).random((6, 16, 16)) < 0.3
    pos, neg = M.histograms(np.full(label.shape, 0.5), label, 101, groups=np.arange(6))
    ci = M.bootstrap(pos, neg, index=None, n_boot=50, seed=0)
    assert all(np.isnan(v).all() for k, v in ci.items() if k != "auc"), ci  # never threshold 0.0
    assert ci["auc"] == (0.5, 0.5)


def test_undefined_row_is_visible_not_threshold_zero(tmp_path):
    # A validation split without a positive pixel: no threshold can be chosen there, so the test row that
    # applies it is undefined too, and the tables say so.
    rng = np.random.default_rng(11)
    val = E.evaluate_arrays(rng.random((3, 16, 16)).astype(np.float32), np.zeros((3, 16, 16), bool))
    assert np.isnan(val["threshold"]) and val["threshold_index"] is None
    assert all(np.isnan(v) for v in val["metrics"].values())
    prob, label = _data(12, n=3 * 256, shape=(3, 16, 16))
    test = E.evaluate_arrays(prob, label, threshold=val["threshold"])
    assert np.isnan(test["threshold"]) and all(np.isnan(v) for v in test["metrics"].values())
    assert 0.5 < test["auc"] < 1  # the ranking is still judged
    record = E.write_outputs(test, tmp_path, title="degenerate")
    back = json.loads((tmp_path / "metrics.json").read_text())
    assert np.isnan(back["threshold"]) and np.isnan(back["mcc"]) and back["tp"] is None
    table = (tmp_path / "table.md").read_text()
    assert "| degenerate | undefined | undefined |" in table and "0.000" not in table
    header, body = E.table_cells([dict(record, name="x", ci={"mcc": [np.nan, np.nan]}),
                                  {"name": "otsu", "threshold": None, **{k: 0.5 for k in METRICS}, "auc": None,
                                   "ci": {"mcc": [0.4, 0.6]}}])
    assert body[0][1:] == ["undefined"] * (len(header) - 2) + [f"{test['auc']:.3f}"]
    assert body[1][1] == "per image" and body[1][-1] == "–" and body[1][header.index("MCC")] == "0.500 [0.400, 0.600]"
    for name in ("roc.png", "mcc.png", "pr.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_grouped_histograms_sum_to_total():
    prob, label = _data(6, n=12 * 400, shape=(12, 20, 20))
    groups = np.arange(12) // 3  # four images, three patches each
    pos, neg = M.histograms(prob, label, 501, groups=groups)
    assert pos.shape == neg.shape == (4, 501)
    total_pos, total_neg = M.histograms(prob, label, 501)
    np.testing.assert_array_equal(pos.sum(0), total_pos)
    np.testing.assert_array_equal(neg.sum(0), total_neg)
    per_pixel = np.broadcast_to(groups[:, None, None], prob.shape)
    pos2, neg2 = M.histograms(prob, label, 501, groups=per_pixel)
    np.testing.assert_array_equal(pos, pos2)
    one = M.confusion_counts(prob[3:6], label[3:6], 501)
    np.testing.assert_array_equal(M.counts_from_histograms(pos[1], neg[1])["tp"], one["tp"])


def test_bootstrap_contains_point_estimate_and_is_seeded():
    prob, label = _data(7, n=40 * 500, shape=(40, 500))
    pos, neg = M.histograms(prob, label, 1001, groups=np.arange(40))
    counts = M.counts_from_histograms(pos.sum(0), neg.sum(0))
    t, i = M.best_threshold(counts)
    point = {k: v[i] for k, v in M.scores(*(counts[k] for k in ("tp", "fp", "tn", "fn"))).items()}
    point["auc"] = M.roc_auc(counts)
    for index in (i, None):
        ci = M.bootstrap(pos, neg, index=index, n_boot=300, seed=1)
        for key, value in point.items():
            lo, hi = ci[key]
            assert lo <= value <= hi, (key, index, lo, value, hi)
            assert 0 < hi - lo < (0.1 if index is not None else 0.25), key
    fixed = M.bootstrap(pos, neg, index=i, n_boot=300, seed=1)
    assert fixed["threshold"] == (t, t)
    assert fixed == M.bootstrap(pos, neg, index=i, n_boot=300, seed=1)
    assert fixed != M.bootstrap(pos, neg, index=i, n_boot=300, seed=2)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="shape"):
        M.confusion_counts(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.confusion_counts(np.array([0.5, 1.5]), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.confusion_counts(np.array([0.5, np.nan]), np.array([0, 1]))
    with pytest.raises(ValueError, match="0 and 1"):
        M.confusion_counts(np.array([0.5, 0.2]), np.array([0, 2]))
    with pytest.raises(ValueError, match="at least 2"):
        M.confusion_counts(np.array([0.5]), np.array([1]), n_thresholds=1)
