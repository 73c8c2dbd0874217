"""Evaluate a trained model on a dataset split: cell probabilities, thresholded metrics, ROC, PR.

Runs the deploy net with pycaffe on ``<data>/<split>.h5`` in batches, takes the probability of class 1
(cell), and computes confusion counts at 1001 thresholds with histograms (tools/metrics.py). Writes to
``--out``: ``metrics.json`` (the six metrics at the MCC-optimal threshold, or at ``--threshold``; AUC;
counts), ``curve.csv`` (every threshold), ``table.md``, and PNGs ``roc.png`` (TPR against FPR, one point
per threshold, like the paper's Figure 10), ``mcc.png`` (MCC against threshold) and ``pr.png``.

Example::

    python tools/evaluate.py --model runs/finetune/final.caffemodel --data runs/data/real --split test \\
        --out runs/eval/after
"""
import argparse
import contextlib
import csv
import io
import json
import os
import sys
from pathlib import Path

import h5py
import numpy as np

if __package__ in (None, ""):  # run as a script: make `tools` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tools import caffe_env  # noqa: E402
from tools import metrics as M  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DEPLOY = REPO / "prototxt" / "deploy.prototxt"
LABELS = {"specificity": "specificity", "precision": "precision", "recall": "recall",
          "accuracy": "accuracy", "f_score": "F-score", "mcc": "MCC"}


class InputError(ValueError):
    """Bad command-line input: reported as a one-line error."""


# ----------------------------------------------------------------------------------------------- I/O
@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; move it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path, text):
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_figure(fig, path):
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


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
    if data.shape[2] % 8 or data.shape[3] % 8:
        raise InputError(f"{path}: patch size {data.shape[2:]} must be a multiple of 8")
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


def load_net(model, deploy=DEFAULT_DEPLOY, gpu=None):
    """Load the deploy net with trained weights through pycaffe.

    Parameters
    ----------
    model : str or Path
        ``.caffemodel`` file.
    deploy : str or Path
        Deploy prototxt (Input ``data``, output ``prob``).
    gpu : int or None
        CUDA device id, or None for CPU.

    Returns
    -------
    caffe.Net
    """
    model, deploy = Path(model), Path(deploy)
    for kind, path in (("model", model), ("deploy prototxt", deploy)):
        if not path.is_file() or path.stat().st_size == 0:
            raise InputError(f"{kind} not found or empty: {path}")
    caffe = caffe_env.import_caffe(gpu)
    net = caffe.Net(str(deploy), caffe.TEST)
    if "data" not in net.blobs or "prob" not in net.blobs:
        raise InputError(f"{deploy}: the net needs an input blob 'data' and an output blob 'prob'")
    _check_weights(net, model)
    net.copy_from(str(model))
    return net


def _check_weights(net, model):
    """Check that ``model`` holds a weight of the right shape for every learnable blob of ``net``.

    Caffe aborts the process on a shape mismatch and silently keeps the random initialisation of layers
    the model lacks; both deserve a clear error instead.
    """
    from caffe.proto import caffe_pb2
    from google.protobuf.message import DecodeError

    param = caffe_pb2.NetParameter()
    try:
        param.ParseFromString(Path(model).read_bytes())
    except DecodeError:
        raise InputError(f"{model}: not a caffemodel (NetParameter) file") from None
    saved = {layer.name: layer.blobs for layer in param.layer if layer.blobs}
    for name, blobs in net.params.items():
        if name not in saved:
            raise InputError(f"{model}: no weights for layer '{name}' of the deploy net")
        if len(saved[name]) != len(blobs):
            raise InputError(f"{model}: layer '{name}' has {len(saved[name])} blobs, the deploy net {len(blobs)}")
        for i, (got, want) in enumerate(zip(saved[name], blobs)):
            shape = tuple(got.shape.dim) if got.HasField("shape") else (got.num, got.channels, got.height,
                                                                          got.width)
            if int(np.prod(shape)) != want.data.size or (got.HasField("shape") and shape != want.data.shape):
                raise InputError(f"{model}: layer '{name}' blob {i} has shape {shape}, the deploy net "
                                 f"{want.data.shape}")


# ----------------------------------------------------------------------------------------- inference
def predict(net, data, batch=16, desc="forward"):
    """Probability of the cell class for every pixel, by batched forward passes.

    Parameters
    ----------
    net : caffe.Net
        Deploy net (``data`` -> ``prob`` with 2 channels).
    data : ndarray of float32, shape (N, 1, H, W)
        Images in [0, 1]; H and W multiples of 8.
    batch : int
        Images per forward pass (the input blob is reshaped to it; the last batch may be smaller).
    desc : str
        Label of the progress bar.

    Returns
    -------
    ndarray of float32, shape (N, H, W)
        Probability of class 1.
    """
    from tqdm import tqdm

    if batch < 1:
        raise ValueError(f"batch must be positive, got {batch}")
    n, _, h, w = data.shape
    prob = np.empty((n, h, w), np.float32)
    for start in tqdm(range(0, n, batch), desc=desc, unit="batch", file=sys.stderr, leave=False):
        chunk = data[start:start + batch]
        if net.blobs["data"].data.shape != chunk.shape:
            net.blobs["data"].reshape(*chunk.shape)
            net.reshape()
        net.blobs["data"].data[...] = chunk
        net.forward()
        prob[start:start + len(chunk)] = net.blobs["prob"].data[:, 1]
    return prob


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
        Fixed threshold; None picks the one that maximises MCC.
    groups : ndarray of int, shape (N,) or the shape of ``prob``, optional
        Resampling unit (source image) of each item, for bootstrap intervals; default one per item.
    n_thresholds : int
        Number of thresholds of the curves.

    Returns
    -------
    dict
        ``threshold``, ``threshold_index`` (nearest grid index), ``protocol``, ``metrics`` (six floats at
        the threshold), ``auc``, ``confusion`` (tp, fp, tn, fn at the threshold), ``curve`` (counts at
        every threshold), ``pos`` / ``neg`` (per-group histograms), ``n_pixels``, ``n_positive``.
    """
    # Consecutive group ids, so that every bootstrap item holds pixels.
    groups = (np.arange(len(prob)) if groups is None
              else np.unique(groups, return_inverse=True)[1].reshape(np.shape(groups)))
    pos, neg = M.histograms(prob, label, n_thresholds, groups=groups)
    curve = M.counts_from_histograms(pos.sum(0), neg.sum(0))
    if threshold is None:
        threshold, index = M.best_threshold(curve)
        confusion = {k: int(curve[k][index]) for k in ("tp", "fp", "tn", "fn")}
        protocol = "mcc-optimal"
    else:
        threshold = float(threshold)
        if not 0 <= threshold <= 1:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
        index = int(np.argmin(np.abs(curve["thresholds"] - threshold)))
        # Exact counts at the given threshold, even between grid points.
        pred, lab = np.asarray(prob) >= threshold, np.asarray(label, bool)
        tp, fp = int(np.count_nonzero(pred & lab)), int(np.count_nonzero(pred & ~lab))
        n_pos = int(np.count_nonzero(lab))
        confusion = {"tp": tp, "fp": fp, "tn": lab.size - n_pos - fp, "fn": n_pos - tp}
        protocol = "fixed"
    return {"threshold": float(threshold), "threshold_index": index, "protocol": protocol,
            "metrics": M.scores(**confusion), "auc": M.roc_auc(curve), "confusion": confusion,
            "curve": curve, "pos": pos, "neg": neg, "n_pixels": int(np.size(prob)),
            "n_positive": int(pos.sum())}


def metrics_record(result, **extra):
    """The JSON-ready summary of :func:`evaluate_arrays`' result (no arrays)."""
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
    writer.writerow(["threshold", "tp", "fp", "tn", "fn", *M.METRICS, "fpr", "tpr"])
    for i, t in enumerate(curve["thresholds"]):
        writer.writerow([f"{t:.6g}", *(int(curve[k][i]) for k in ("tp", "fp", "tn", "fn")),
                         *(f"{s[k][i]:.6f}" for k in M.METRICS), f"{fpr[i]:.6f}", f"{tpr[i]:.6f}"])
    return buf.getvalue()


def markdown_table(rows):
    """Markdown table of (name, record) pairs with the threshold, six metrics and AUC."""
    head = ["row", "threshold", *(LABELS[k] for k in M.METRICS), "AUC"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, rec in rows:
        cells = [name, f"{rec['threshold']:.3f}", *(f"{rec[k]:.3f}" for k in M.METRICS),
                 "–" if rec.get("auc") is None else f"{rec['auc']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- figures
def _axes(title, xlabel, ylabel):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel, xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    return fig, ax


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
    fig, ax = _axes(title, "FPR (1 − specificity)", "TPR (recall)")
    ax.plot([0, 1], [0, 1], ls=":", color="0.6", lw=1)
    for i, (label, res) in enumerate(curves):
        fpr, tpr = M.roc_curve(res["curve"])
        color = f"C{i}"
        ax.plot(fpr, tpr, "-", color=color, lw=0.8, alpha=0.6)
        ax.plot(fpr[1:-1], tpr[1:-1], ".", color=color, ms=2.5, label=f"{label} (AUC {res['auc']:.3f})")
        j = len(fpr) - 2 - res["threshold_index"]  # roc_curve runs from the highest threshold down
        ax.plot(fpr[j], tpr[j], "*", color=color, ms=13, mec="k", mew=0.6,
                label=f"t = {res['threshold']:.3f}: MCC {res['metrics']['mcc']:.3f}")
    for label, fpr, tpr, marker, color in points:
        ax.plot(fpr, tpr, marker, color=color, ms=9, mfc="none", mew=1.5, label=label)
    ax.legend(loc="lower right", fontsize=7)
    return fig


def plot_mcc(result, title="MCC against threshold"):
    """MCC (and F-score) against threshold, the chosen threshold marked."""
    fig, ax = _axes(title, "threshold", "score")
    curve = result["curve"]
    s = M.scores(curve["tp"], curve["fp"], curve["tn"], curve["fn"])
    ax.set_ylim(min(-0.02, float(s["mcc"].min()) - 0.02), 1.02)  # MCC can be negative
    ax.plot(curve["thresholds"], s["mcc"], color="C0", label="MCC")
    ax.plot(curve["thresholds"], s["f_score"], color="C1", lw=0.8, label="F-score")
    ax.axvline(result["threshold"], color="k", ls="--", lw=0.8)
    ax.plot(result["threshold"], result["metrics"]["mcc"], "*", color="C0", ms=13, mec="k", mew=0.6,
            label=f"t = {result['threshold']:.3f}: MCC {result['metrics']['mcc']:.3f}")
    ax.legend(loc="best", fontsize=8)
    return fig


def plot_pr(result, title="Precision–recall"):
    """Precision against recall, one point per threshold, the chosen threshold marked."""
    fig, ax = _axes(title, "recall", "precision")
    precision, recall = M.pr_curve(result["curve"])
    keep = (result["curve"]["tp"] + result["curve"]["fp"]) > 0  # precision undefined with no predictions
    ax.plot(recall[keep], precision[keep], ".-", color="C0", ms=2.5, lw=0.8)
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
    write_text(out / "metrics.json", json.dumps(record, indent=2) + "\n")
    write_text(out / "curve.csv", curve_csv(result))
    write_text(out / "table.md", markdown_table([(title or "model", record)]))
    prefix = f"{title}: " if title else ""
    save_figure(plot_roc([(title or "model", result)], title=f"{prefix}ROC"), out / "roc.png")
    save_figure(plot_mcc(result, title=f"{prefix}MCC against threshold"), out / "mcc.png")
    save_figure(plot_pr(result, title=f"{prefix}precision–recall"), out / "pr.png")
    return record


# ----------------------------------------------------------------------------------------------- CLI
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", required=True, help=".caffemodel with the trained weights")
    p.add_argument("--deploy", default=str(DEFAULT_DEPLOY), help="deploy prototxt (default: %(default)s)")
    p.add_argument("--data", required=True, help="dataset folder holding <split>.h5")
    p.add_argument("--split", default="test", help="split to evaluate (default: %(default)s)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--gpu", type=int, default=None, help="CUDA device id (default: CPU)")
    p.add_argument("--batch", type=int, default=16, help="images per forward pass (default: %(default)s)")
    p.add_argument("--threshold", type=float, default=None,
                   help="fixed threshold in [0, 1] (default: the one that maximises MCC)")
    p.add_argument("--thresholds", type=int, default=1001, help="thresholds on the curves (default: %(default)s)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.batch < 1:
            raise InputError(f"--batch must be positive, got {args.batch}")
        if args.threshold is not None and not 0 <= args.threshold <= 1:
            raise InputError(f"--threshold must lie in [0, 1], got {args.threshold}")
        if args.thresholds < 2:
            raise InputError(f"--thresholds must be at least 2, got {args.thresholds}")
        split = load_split(Path(args.data) / f"{args.split}.h5")
        net = load_net(args.model, args.deploy, args.gpu)
        prob = predict(net, split["data"], args.batch, desc=f"{args.split}")
        result = evaluate_arrays(prob, split["label"], args.threshold, groups=split.get("source_index"),
                                 n_thresholds=args.thresholds)
        record = write_outputs(result, args.out, title=Path(args.model).stem, model=str(args.model),
                               data=str(Path(args.data) / f"{args.split}.h5"), split=args.split)
    except (InputError, ValueError, caffe_env.CaffeNotFound) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(markdown_table([(Path(args.model).stem, record)]), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
