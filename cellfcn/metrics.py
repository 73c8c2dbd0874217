"""Pixel-wise binary segmentation metrics from thresholded probabilities (pure numpy).

Confusion counts at every threshold come from histograms: each pixel's probability is quantised to the
index of the highest threshold it reaches, positive and negative pixels are counted per bin with
``np.bincount``, and a reverse cumulative sum gives the counts for ``prob >= threshold`` at all thresholds
at once. Per-item histograms (one row per image or patch) make bootstrap replicates a weighted sum of rows.

Undefined ratios (no positives, no predictions, empty input) are NaN, never 0, as in :mod:`cellfcn.objects`:
a 0 would read as a result (scikit-learn's ``zero_division=0`` made a model whose MCC is undefined at every
threshold look like one optimal at threshold 0.0, every pixel a cell). Where no threshold has a defined MCC
(no positive or no negative pixel, or all probabilities equal), no threshold is chosen: NaN. The AUC is NaN
when either class is absent.
"""
import numpy as np


def thresholds_grid(n_thresholds=1001):
    """Return ``n_thresholds`` evenly spaced thresholds from 0 to 1 (float64).

    Parameters
    ----------
    n_thresholds : int
        Number of thresholds, at least 2.

    Returns
    -------
    ndarray of float64, shape (n_thresholds,)
    """
    n_thresholds = int(n_thresholds)
    if n_thresholds < 2:
        raise ValueError(f"n_thresholds must be at least 2, got {n_thresholds}")
    return np.linspace(0.0, 1.0, n_thresholds)


def _check_pair(prob, label):
    prob = np.asarray(prob)
    label = np.asarray(label)
    if prob.shape != label.shape:
        raise ValueError(f"prob shape {prob.shape} does not match label shape {label.shape}")
    if not np.issubdtype(prob.dtype, np.floating):
        raise ValueError(f"prob must be a float array, got {prob.dtype}")
    if prob.size and not (np.all(prob >= 0) and np.all(prob <= 1)):  # also rejects NaN
        raise ValueError("prob must lie in [0, 1] (and not be NaN)")
    if label.dtype != bool:
        if label.size and not np.all((label == 0) | (label == 1)):
            raise ValueError("label must be boolean or hold only 0 and 1")
        label = label != 0
    return prob, label


def _bin_index(prob, thresholds):
    """Index of the highest threshold <= prob, exactly as the ``prob >= threshold`` comparison decides.

    Scaling gives the index up to float rounding; one comparison each way against the actual thresholds
    fixes the off-by-one cases (same result as ``np.searchsorted(..., side='right') - 1``, faster).
    """
    last = thresholds.size - 1
    k = (prob * np.float64(last)).astype(np.int64)
    np.minimum(k, last, out=k)
    k -= thresholds[k] > prob
    up = np.minimum(k + 1, last)
    k += (up > k) & (thresholds[up] <= prob)
    return k


def histograms(prob, label, n_thresholds=1001, groups=None, n_groups=None):
    """Count positive and negative pixels per threshold bin, optionally per group.

    Bin ``j`` holds the pixels whose probability reaches threshold ``j`` but not threshold ``j + 1``.

    Parameters
    ----------
    prob : array_like of float
        Probabilities of the positive class, in [0, 1], any shape.
    label : array_like of bool or {0, 1}
        Ground truth, same shape as ``prob``.
    n_thresholds : int
        Number of thresholds (see :func:`thresholds_grid`).
    groups : array_like of int, optional
        Group (image, patch) of each pixel, values in ``[0, n_groups)``: the shape of ``prob``, or
        ``(len(prob),)`` for one group per item along the first axis.
    n_groups : int, optional
        Number of groups; defaults to ``groups.max() + 1``.

    Returns
    -------
    pos, neg : ndarray of int64
        Shape (n_thresholds,) without ``groups``, (n_groups, n_thresholds) with them.
    """
    prob, label = _check_pair(prob, label)
    thresholds = thresholds_grid(n_thresholds)
    bins = _bin_index(prob.ravel(), thresholds)
    label = label.ravel()
    size = thresholds.size
    if groups is not None:
        groups = np.asarray(groups)
        if not np.issubdtype(groups.dtype, np.integer) or groups.shape not in (prob.shape, prob.shape[:1]):
            raise ValueError(f"groups must be an integer array of shape {prob.shape} or {prob.shape[:1]}")
        groups = groups.astype(np.int64)
        if groups.shape != prob.shape:
            groups = np.repeat(groups, prob.size // max(len(groups), 1))
        groups = groups.ravel()
        if n_groups is None:
            n_groups = int(groups.max()) + 1 if groups.size else 0
        if groups.size and (groups.min() < 0 or groups.max() >= n_groups):
            raise ValueError(f"groups must lie in [0, {n_groups})")
        bins = groups * size + bins
        size = n_groups * size
    pos = np.bincount(bins[label], minlength=size).astype(np.int64)
    neg = np.bincount(bins[~label], minlength=size).astype(np.int64)
    if groups is not None:
        pos = pos.reshape(n_groups, thresholds.size)
        neg = neg.reshape(n_groups, thresholds.size)
    return pos, neg


def counts_from_histograms(pos, neg):
    """Turn bin histograms into confusion counts at every threshold.

    Parameters
    ----------
    pos, neg : array_like of int or float, shape (..., T)
        Positive and negative pixel counts per threshold bin (last axis), as from :func:`histograms`;
        leading axes (e.g. bootstrap replicates) are kept.

    Returns
    -------
    dict
        ``thresholds`` (float64, T), and ``tp``, ``fp``, ``tn``, ``fn`` with the shape of ``pos``
        (the dtype of ``pos``: int64 for integer histograms).
    """
    pos = np.asarray(pos)
    neg = np.asarray(neg)
    if pos.shape != neg.shape or pos.ndim < 1:
        raise ValueError(f"pos {pos.shape} and neg {neg.shape} must have the same non-empty shape")
    if np.issubdtype(pos.dtype, np.integer):
        pos, neg = pos.astype(np.int64), neg.astype(np.int64)
    # Predicted positive at threshold j: every bin >= j.
    tp = np.cumsum(pos[..., ::-1], axis=-1)[..., ::-1]
    fp = np.cumsum(neg[..., ::-1], axis=-1)[..., ::-1]
    n_pos = pos.sum(axis=-1, keepdims=True)
    n_neg = neg.sum(axis=-1, keepdims=True)
    return {"thresholds": thresholds_grid(pos.shape[-1]), "tp": tp, "fp": fp,
            "tn": n_neg - fp, "fn": n_pos - tp}


def confusion_counts(prob, label, n_thresholds=1001):
    """Confusion counts of ``prob >= threshold`` against ``label`` at evenly spaced thresholds.

    Parameters
    ----------
    prob : array_like of float
        Probabilities of the positive class, in [0, 1], any shape.
    label : array_like of bool or {0, 1}
        Ground truth, same shape as ``prob``.
    n_thresholds : int
        Number of thresholds from 0 to 1 inclusive.

    Returns
    -------
    dict
        ``thresholds`` (float64, T) and ``tp``, ``fp``, ``tn``, ``fn`` (int64, T).
    """
    return counts_from_histograms(*histograms(prob, label, n_thresholds))


def _ratio(num, den):
    """num / den as float64, NaN (undefined) where den is 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def scores(tp, fp, tn, fn):
    """Specificity, precision, recall, accuracy, F-score and MCC from confusion counts.

    Parameters
    ----------
    tp, fp, tn, fn : int or array_like
        Confusion counts (broadcastable).

    Returns
    -------
    dict
        Keys ``specificity``, ``precision``, ``recall``, ``accuracy``, ``f_score``, ``mcc``; float64
        arrays, or floats when every input is a scalar. Undefined ratios are NaN: MCC when any of the four
        margins (predicted or true positives or negatives) is empty, precision without predicted positives,
        and so on.
    """
    scalar = all(np.ndim(x) == 0 for x in (tp, fp, tn, fn))
    tp, fp, tn, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, tn, fn))
    # Four float64 factors: exact enough for counts far beyond any image set (no int64 overflow).
    den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    out = {
        "specificity": _ratio(tn, tn + fp),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "accuracy": _ratio(tp + tn, tp + fp + tn + fn),
        "f_score": _ratio(2 * tp, 2 * tp + fp + fn),
        "mcc": _ratio(tp * tn - fp * fn, den),
    }
    if scalar:
        return {k: float(v) for k, v in out.items()}
    return out


def binary_scores(pred, label):
    """The six metrics of a binary prediction.

    Parameters
    ----------
    pred, label : array_like of bool or {0, 1}
        Predicted and true masks of the same shape.

    Returns
    -------
    dict of float
        Same keys as :func:`scores`.
    """
    pred = np.asarray(pred)
    label = np.asarray(label)
    if pred.shape != label.shape:
        raise ValueError(f"pred shape {pred.shape} does not match label shape {label.shape}")
    pred = pred.astype(bool)
    label = label.astype(bool)
    tp = int(np.count_nonzero(pred & label))
    fp = int(np.count_nonzero(pred & ~label))
    fn = int(np.count_nonzero(~pred & label))
    tn = pred.size - tp - fp - fn
    return scores(tp, fp, tn, fn)


def best_threshold(counts):
    """The threshold that maximises MCC (the lowest one on ties), among those where MCC is defined.

    Parameters
    ----------
    counts : dict
        As returned by :func:`confusion_counts`.

    Returns
    -------
    threshold : float
        NaN when MCC is undefined at every threshold (no positive or no negative pixel, or all
        probabilities equal): then no threshold is better than another, and none is chosen.
    index : int or None
        Index into ``counts['thresholds']``; None with a NaN threshold.
    """
    mcc = scores(counts["tp"], counts["fp"], counts["tn"], counts["fn"])["mcc"]
    if np.ndim(mcc) != 1:
        raise ValueError(f"counts must hold one curve, got shape {np.shape(mcc)}")
    if not np.isfinite(mcc).any():
        return float("nan"), None
    index = int(np.nanargmax(mcc))
    return float(counts["thresholds"][index]), index


def roc_curve(counts):
    """ROC points from confusion counts, with the (0, 0) and (1, 1) ends.

    Parameters
    ----------
    counts : dict
        As returned by :func:`confusion_counts` (leading batch axes allowed).

    Returns
    -------
    fpr, tpr : ndarray of float64, shape (..., T + 2)
        In order of increasing FPR (decreasing threshold), starting at (0, 0) and ending at (1, 1).
        A rate with no pixels of its class is NaN.
    """
    tp, fp = np.asarray(counts["tp"]), np.asarray(counts["fp"])
    tpr = _ratio(tp, tp + np.asarray(counts["fn"]))[..., ::-1]
    fpr = _ratio(fp, fp + np.asarray(counts["tn"]))[..., ::-1]
    zeros = np.zeros(fpr.shape[:-1] + (1,))
    ones = np.ones(fpr.shape[:-1] + (1,))
    return (np.concatenate([zeros, fpr, ones], axis=-1), np.concatenate([zeros, tpr, ones], axis=-1))


def roc_auc(counts):
    """Area under the ROC curve by the trapezoid rule (ties within a bin count half, as in scikit-learn).

    Parameters
    ----------
    counts : dict
        As returned by :func:`confusion_counts` (leading batch axes allowed).

    Returns
    -------
    float or ndarray of float64
        The AUC; NaN (undefined) when there are no positive or no negative pixels, since no ranking can be
        judged then.
    """
    fpr, tpr = roc_curve(counts)
    auc = np.sum(np.diff(fpr, axis=-1) * (tpr[..., 1:] + tpr[..., :-1]) / 2, axis=-1)
    n_pos = np.asarray(counts["tp"])[..., 0] + np.asarray(counts["fn"])[..., 0]
    n_neg = np.asarray(counts["fp"])[..., 0] + np.asarray(counts["tn"])[..., 0]
    auc = np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)
    return float(auc) if auc.ndim == 0 else auc


def pr_curve(counts):
    """Precision and recall at every threshold.

    Parameters
    ----------
    counts : dict
        As returned by :func:`confusion_counts`.

    Returns
    -------
    precision, recall : ndarray of float64, shape (T,)
        Precision is NaN where nothing is predicted positive.
    """
    s = scores(counts["tp"], counts["fp"], counts["tn"], counts["fn"])
    return s["precision"], s["recall"]


def bootstrap(pos, neg, index=None, n_boot=1000, seed=0, alpha=0.05):
    """Percentile bootstrap intervals of the metrics, resampling items (images or patches).

    Each replicate draws ``n_items`` items with replacement and sums their histograms.

    Parameters
    ----------
    pos, neg : array_like of int, shape (n_items, T)
        Per-item histograms from :func:`histograms` with ``groups``.
    index : int, optional
        Threshold index at which the metrics are taken in every replicate (a threshold fixed beforehand,
        e.g. chosen on a validation split). None re-selects the MCC-optimal threshold in each replicate,
        so the interval includes the variability of choosing the threshold on the same data; a replicate
        whose MCC is undefined at every threshold then has undefined values.
    n_boot : int
        Number of replicates.
    seed : int
        Seed of the resampling (same seed, same intervals).
    alpha : float
        1 - confidence level (0.05 gives 95% intervals).

    Returns
    -------
    dict
        Metric name (the six of :func:`scores`, ``auc`` and ``threshold``) -> (low, high) floats, over the
        replicates where the value is defined; (NaN, NaN) when it is defined in none.
    """
    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    if pos.ndim != 2 or pos.shape != neg.shape or pos.shape[0] == 0:
        raise ValueError("pos and neg must be non-empty per-item histograms of shape (n_items, T)")
    if n_boot < 1:
        raise ValueError(f"n_boot must be positive, got {n_boot}")
    n_items = pos.shape[0]
    rng = np.random.default_rng(seed)
    # Multiplicity of every item in every replicate; float64 matmul is exact for these integer sums.
    weights = rng.multinomial(n_items, np.full(n_items, 1.0 / n_items), size=int(n_boot)).astype(np.float64)
    counts = counts_from_histograms(weights @ pos, weights @ neg)
    s = scores(counts["tp"], counts["fp"], counts["tn"], counts["fn"])
    rows = np.arange(int(n_boot))
    if index is None:
        defined = np.isfinite(s["mcc"])
        picked = np.argmax(np.where(defined, s["mcc"], -np.inf), axis=-1)  # the lowest on ties, as best_threshold
        chosen = defined.any(axis=-1)
    else:
        picked, chosen = np.full(int(n_boot), int(index)), np.ones(int(n_boot), bool)
    values = {k: np.where(chosen, v[rows, picked], np.nan) for k, v in s.items()}
    values["auc"] = roc_auc(counts)
    values["threshold"] = np.where(chosen, counts["thresholds"][picked], np.nan)
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    # A value undefined in a replicate (AUC without positive pixels, say) is left out of its interval.
    return {k: tuple(float(x) for x in (np.nanpercentile(v, q) if np.isfinite(v).any() else (np.nan, np.nan)))
            for k, v in values.items()}
