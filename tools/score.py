"""Score a trained model on a dataset split: cell probabilities, thresholded metrics, ROC, PR.

Runs the deploy net with pycaffe on ``<data>/<split>.h5`` in batches, takes the probability of class 1
(cell), and computes confusion counts at 1001 thresholds with histograms (cellfcn/metrics.py). Writes to
``--out``: ``metrics.json`` (the six metrics at the MCC-optimal threshold, or at ``--threshold``; AUC;
counts), ``curve.csv`` (every threshold), ``table.md``, and PNGs ``roc.png`` (TPR against FPR, one point
per threshold, like the paper's Figure 10), ``mcc.png`` (MCC against threshold) and ``pr.png``.

Example::

    python -m tools.score --model runs/finetune/final.caffemodel --data runs/data/real --split test \\
        --out runs/eval/after
"""
import argparse
import csv
import io
import sys
from pathlib import Path

import h5py
import numpy as np

from cellfcn import cli, files
from cellfcn import metrics as M
from cellfcn.constants import LABELS, METRICS, STRIDE
from cellfcn.errors import InputError
from cellfcn.plotting import save_figure, score_axes
from tools import infer

COLUMNS = ["row", "threshold", *(LABELS[k] for k in METRICS), "AUC"]


def load_split(path):
    """Read a split file of the dataset contract.

    Parameters
    ----------
    path : str or Path
        ``<split>.h5`` with ``data`` (N, 1, P, P) float32 in [0, 1] and ``label`` (N, 1, P, P) in {0, 1};
        optionally ``source_index`` (N,) and ``origin`` (N, 2).

    Returns
    -------
    dict
        ``data`` float32 (N, 1, P, P), ``label`` bool (N, P, P), and ``source_index`` / ``origin``
        (int64) when present.

    Raises
    ------
    InputError
        Missing file or datasets, wrong shapes or values.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"data file not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("data", "label") if k not in f]
            if missing:
                raise InputError(f"{path}: missing dataset(s) {', '.join(missing)}")
            out = {"data": f["data"][...].astype(np.float32, copy=False), "label": f["label"][...]}
            for key in ("source_index", "origin"):
                if key in f:
                    out[key] = f[key][...].astype(np.int64)
    except OSError as err:
        raise InputError(f"cannot read {path}: {err}") from None
    data, label = out["data"], out["label"]
    if data.ndim != 4 or data.shape[1] != 1 or data.shape[0] == 0:
        raise InputError(f"{path}: data must have shape (N, 1, H, W) with N > 0, got {data.shape}")
    if label.shape != data.shape:
        raise InputError(f"{path}: label shape {label.shape} differs from data shape {data.shape}")
    if data.shape[2] % STRIDE or data.shape[3] % STRIDE:
        raise InputError(f"{path}: patch size {data.shape[2:]} must be a multiple of {STRIDE}")
    if not (np.all(data >= 0) and np.all(data <= 1)):
        raise InputError(f"{path}: data must lie in [0, 1]")
    if not np.all((label == 0) | (label == 1)):
        raise InputError(f"{path}: label must hold only 0 and 1")
    out["label"] = label[:, 0] != 0
    n = data.shape[0]
    if "source_index" in out and out["source_index"].shape != (n,):
        raise InputError(f"{path}: source_index must have shape ({n},)")
    if "origin" in out and out["origin"].shape != (n, 2):
        raise InputError(f"{path}: origin must have shape ({n}, 2)")
    return out


# ---------------------------------------------------------------------------------------- evaluation
def evaluate_arrays(prob, label, threshold=None, groups=None, n_thresholds=1001):
    """Metrics of probabilities against labels at the MCC-optimal or a given threshold.

    Parameters
    ----------
    prob : ndarray of float, shape (N, ...)
        Probability of the cell class, in [0, 1].
    label : ndarray of bool, same shape
        Ground truth.
    threshold : float, optional
        Fixed threshold; None picks the one that maximises MCC. NaN (a threshold that could not be
        chosen, e.g. on a validation split without positive pixels) gives an undefined result.
    groups : ndarray of int, shape (N,) or the shape of ``prob``, optional
        Resampling unit (source image) of each item, for bootstrap intervals; default one per item.
    n_thresholds : int
        Number of thresholds of the curves.

    Returns
    -------
    dict
        ``threshold``, ``threshold_index`` (nearest grid index), ``protocol``, ``metrics`` (six floats at
        the threshold), ``auc``, ``confusion`` (tp, fp, tn, fn at the threshold), ``curve`` (counts at
        every threshold), ``pos`` / ``neg`` (per-group histograms), ``n_pixels``, ``n_positive``. Undefined
        (no threshold chosen, see :func:`cellfcn.metrics.best_threshold`): ``threshold`` and every metric NaN,
        ``threshold_index`` and the confusion counts None.
    """
    # Consecutive group ids, so that every bootstrap item holds pixels.
    groups = (np.arange(len(prob)) if groups is None
              else np.unique(groups, return_inverse=True)[1].reshape(np.shape(groups)))
    pos, neg = M.histograms(prob, label, n_thresholds, groups=groups)
    curve = M.counts_from_histograms(pos.sum(0), neg.sum(0))
    protocol = "mcc-optimal" if threshold is None else "fixed"
    if threshold is None:
        threshold, index = M.best_threshold(curve)
    else:
        threshold = float(threshold)
        if not (0 <= threshold <= 1 or np.isnan(threshold)):
            raise ValueError(f"threshold must lie in [0, 1] (or be NaN: undefined), got {threshold}")
    if np.isnan(threshold):
        return {"threshold": float("nan"), "threshold_index": None, "protocol": protocol,
                "metrics": {k: float("nan") for k in METRICS}, "auc": M.roc_auc(curve),
                "confusion": {k: None for k in ("tp", "fp", "tn", "fn")}, "curve": curve, "pos": pos,
                "neg": neg, "n_pixels": int(np.size(prob)), "n_positive": int(pos.sum())}
    if protocol == "mcc-optimal":
        confusion = {k: int(curve[k][index]) for k in ("tp", "fp", "tn", "fn")}
    else:
        index = int(np.argmin(np.abs(curve["thresholds"] - threshold)))
        # Exact counts at the given threshold, even between grid points.
        pred, lab = np.asarray(prob) >= threshold, np.asarray(label, bool)
        tp, fp = int(np.count_nonzero(pred & lab)), int(np.count_nonzero(pred & ~lab))
        n_pos = int(np.count_nonzero(lab))
        confusion = {"tp": tp, "fp": fp, "tn": lab.size - n_pos - fp, "fn": n_pos - tp}
    return {"threshold": float(threshold), "threshold_index": index, "protocol": protocol,
            "metrics": M.scores(**confusion), "auc": M.roc_auc(curve), "confusion": confusion,
            "curve": curve, "pos": pos, "neg": neg, "n_pixels": int(np.size(prob)),
            "n_positive": int(pos.sum())}


def metrics_record(result, **extra):
    """The JSON-ready summary of :func:`evaluate_arrays`' result (no arrays).

    An undefined value stays NaN (written as JSON ``NaN``, which Python's json reads back), apart from
    ``null``, which means "not applicable" (the AUC of a binary baseline, the threshold of a per-image one).
    """
    record = dict(extra)
    record.update(threshold=result["threshold"], protocol=result["protocol"], **result["metrics"],
                  auc=result["auc"], **result["confusion"], n_pixels=result["n_pixels"],
                  n_positive=result["n_positive"])
    return record


def curve_csv(result):
    """CSV text: one row per threshold with counts, the six metrics, FPR and TPR."""
    curve = result["curve"]
    s = M.scores(curve["tp"], curve["fp"], curve["tn"], curve["fn"])
    fpr, tpr = (r[1:-1][::-1] for r in M.roc_curve(curve))  # back to threshold order, without the ends
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["threshold", "tp", "fp", "tn", "fn", *METRICS, "fpr", "tpr"])
    for i, t in enumerate(curve["thresholds"]):
        writer.writerow([f"{t:.6g}", *(int(curve[k][i]) for k in ("tp", "fp", "tn", "fn")),
                         *(f"{s[k][i]:.6f}" for k in METRICS), f"{fpr[i]:.6f}", f"{tpr[i]:.6f}"])
    return buf.getvalue()


def table_cells(rows):
    """The cells of a Table-1-style table (the one rendering of it, for Markdown and the HTML report).

    Parameters
    ----------
    rows : list of dict
        ``name``, ``threshold`` (None: "per image"), the six metrics and ``auc`` (None: "–", not
        applicable), optionally ``ci`` (metric -> [low, high]) shown as a 95% interval. A NaN (an
        undefined value: no threshold could be chosen, an AUC without positive pixels) shows "undefined".

    Returns
    -------
    header : list of str
    body : list of list of str
    """
    def number(value):
        return "undefined" if value != value else f"{value:.3f}"  # NaN != NaN

    def cell(r, key):
        value = r.get(key)
        if value is None:
            return "–"
        text = number(value)
        if value == value and key in (r.get("ci") or {}):
            lo, hi = r["ci"][key]
            text += f" [{number(lo)}, {number(hi)}]" if lo == lo and hi == hi else " [interval undefined]"
        return text

    body = [[r["name"], "per image" if r["threshold"] is None else number(r["threshold"]),
             *(cell(r, k) for k in (*METRICS, "auc"))] for r in rows]
    return COLUMNS, body


def markdown_table(header, body):
    """A Markdown table from a header and rows of cell strings."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- figures
def plot_roc(curves, title="ROC", points=()):
    """ROC figure: TPR against FPR, one marker per threshold (Figure 10 of the paper).

    Parameters
    ----------
    curves : list of (label, result)
        Results of :func:`evaluate_arrays`; the threshold of each is marked with a star.
    title : str
    points : list of (label, fpr, tpr, marker, color)
        Single operating points (binary baselines, the paper's values), drawn hollow.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, ax = score_axes(title, "FPR (1 − specificity)", "TPR (recall)")
    ax.plot([0, 1], [0, 1], ls=":", color="0.6", lw=1)
    for i, (label, res) in enumerate(curves):
        fpr, tpr = M.roc_curve(res["curve"])
        color = f"C{i}"
        ax.plot(fpr, tpr, "-", color=color, lw=0.8, alpha=0.6)
        auc = "undefined" if np.isnan(res["auc"]) else f"{res['auc']:.3f}"
        ax.plot(fpr[1:-1], tpr[1:-1], ".", color=color, ms=2.5, label=f"{label} (AUC {auc})")
        if res["threshold_index"] is None:
            ax.plot([], [], "*", color=color, ms=13, mec="k", mew=0.6, label="threshold undefined")
            continue
        j = len(fpr) - 2 - res["threshold_index"]  # roc_curve runs from the highest threshold down
        ax.plot(fpr[j], tpr[j], "*", color=color, ms=13, mec="k", mew=0.6,
                label=f"t = {res['threshold']:.3f}: MCC {res['metrics']['mcc']:.3f}")
    for label, fpr, tpr, marker, color in points:
        ax.plot(fpr, tpr, marker, color=color, ms=9, mfc="none", mew=1.5, label=label)
    ax.legend(loc="lower right", fontsize=7)
    return fig


def plot_mcc(result, title="MCC against threshold"):
    """MCC (and F-score) against threshold, the chosen threshold marked."""
    fig, ax = score_axes(title, "threshold", "score")
    curve = result["curve"]
    s = M.scores(curve["tp"], curve["fp"], curve["tn"], curve["fn"])
    lowest = np.nanmin(s["mcc"]) if np.isfinite(s["mcc"]).any() else 0.0
    ax.set_ylim(min(-0.02, float(lowest) - 0.02), 1.02)  # MCC can be negative; gaps where undefined
    ax.plot(curve["thresholds"], s["mcc"], color="C0", label="MCC")
    ax.plot(curve["thresholds"], s["f_score"], color="C1", lw=0.8, label="F-score")
    if np.isnan(result["threshold"]):
        ax.set_title(f"{title}: MCC undefined at every threshold", fontsize=9)
    else:
        ax.axvline(result["threshold"], color="k", ls="--", lw=0.8)
        ax.plot(result["threshold"], result["metrics"]["mcc"], "*", color="C0", ms=13, mec="k", mew=0.6,
                label=f"t = {result['threshold']:.3f}: MCC {result['metrics']['mcc']:.3f}")
    ax.legend(loc="best", fontsize=8)
    return fig


def plot_pr(result, title="Precision–recall"):
    """Precision against recall, one point per threshold, the chosen threshold marked."""
    fig, ax = score_axes(title, "recall", "precision")
    precision, recall = M.pr_curve(result["curve"])
    keep = (result["curve"]["tp"] + result["curve"]["fp"]) > 0  # precision undefined with no predictions
    ax.plot(recall[keep], precision[keep], ".-", color="C0", ms=2.5, lw=0.8)
    if not np.isnan(result["threshold"]):
        ax.plot(result["metrics"]["recall"], result["metrics"]["precision"], "*", color="C0", ms=13, mec="k",
                mew=0.6, label=f"t = {result['threshold']:.3f}: F-score {result['metrics']['f_score']:.3f}")
        ax.legend(loc="lower left", fontsize=8)
    return fig


def write_outputs(result, out, title="", **extra):
    """Write metrics.json, curve.csv, table.md, roc.png, mcc.png and pr.png for one evaluation.

    Parameters
    ----------
    result : dict
        From :func:`evaluate_arrays`.
    out : str or Path
        Output folder (created).
    title : str
        Name shown in the table and the figure titles.
    **extra
        Additional JSON fields (model, data, split...).

    Returns
    -------
    dict
        The record written to metrics.json.
    """
    out = Path(out)
    record = metrics_record(result, **extra)
    files.write_json(out / "metrics.json", record)
    files.write_text(out / "curve.csv", curve_csv(result))
    files.write_text(out / "table.md", markdown_table(*table_cells([dict(record, name=title or "model")])))
    prefix = f"{title}: " if title else ""
    save_figure(plot_roc([(title or "model", result)], title=f"{prefix}ROC"), out / "roc.png")
    save_figure(plot_mcc(result, title=f"{prefix}MCC against threshold"), out / "mcc.png")
    save_figure(plot_pr(result, title=f"{prefix}precision–recall"), out / "pr.png")
    return record


# ----------------------------------------------------------------------------------------------- CLI
def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.score", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", required=True, help=".caffemodel with the trained weights")
    p.add_argument("--deploy", help="deploy prototxt (default: the committed one of the net the model names)")
    p.add_argument("--data", required=True, help="dataset folder holding <split>.h5")
    p.add_argument("--split", default="test", help="split to evaluate (default: %(default)s)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--gpu", type=int, default=None, help="CUDA device id (default: CPU)")
    p.add_argument("--batch", type=int, default=16, help="images per forward pass (default: %(default)s)")
    p.add_argument("--threshold", type=float, default=None,
                   help="fixed threshold in [0, 1] (default: the one that maximises MCC)")
    p.add_argument("--thresholds", type=int, default=1001, help="thresholds on the curves (default: %(default)s)")
    args = p.parse_args(argv)
    if args.batch < 1:
        p.error(f"--batch must be positive, got {args.batch}")
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        p.error(f"--threshold must lie in [0, 1], got {args.threshold}")
    if args.thresholds < 2:
        p.error(f"--thresholds must be at least 2, got {args.thresholds}")
    return args


def _main(argv=None):
    args = parse_args(argv)
    split = load_split(Path(args.data) / f"{args.split}.h5")
    net = infer.load_model(args.model, args.deploy, args.gpu)
    prob = infer.predict(net, split["data"], args.batch, desc=f"{args.split}")
    result = evaluate_arrays(prob, split["label"], args.threshold, groups=split.get("source_index"),
                             n_thresholds=args.thresholds)
    record = write_outputs(result, args.out, title=Path(args.model).stem, model=str(args.model),
                           data=str(Path(args.data) / f"{args.split}.h5"), split=args.split)
    print(markdown_table(*table_cells([dict(record, name=Path(args.model).stem)])), end="")


def main(argv=None):
    """Run the command; return its exit status (see cellfcn.cli)."""
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
