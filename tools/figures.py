"""Figures like the paper's 8, 9 and 11: input, ground truth and network output, best and worst cases.

- ``fig8_synthetic.png``: synthetic test patches, pretrained model;
- ``fig9_real_best.png`` / ``fig11_real_worst.png``: real test patches, fine-tuned model (and the pretrained
  model's output beside it).

Cases are ranked by per-patch MCC at the model's MCC-optimal threshold on the test set (the ``test-optimal``
rows of ``RUNS/eval/table1.json``). Only patches whose ground truth covers at least ``--min-cell-fraction``
of the pixels are ranked: on a patch without cells MCC is 0 whatever the output, and a sliver of cell at the
border makes it noise. Everything shown comes from ``make evaluate`` (``table1.json``, ``probs_*.npy``):
this module never runs the network, and a missing or stale input is an error.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

from cellfcn import cli, schema
from cellfcn.errors import InputError
from cellfcn.metrics import scores
from cellfcn.plotting import pyplot, save_figure
from tools import evaluate
from tools import score as E

# Error-map colours: true positive, false positive, false negative (true negative stays black).
TP, FP, FN = (255, 255, 255), (230, 40, 40), (40, 160, 255)


def per_patch_mcc(prob, label, threshold):
    """MCC of ``prob >= threshold`` against ``label`` for every patch.

    Parameters
    ----------
    prob : (N, H, W) array_like of float
    label : (N, H, W) array_like of bool
    threshold : float

    Returns
    -------
    (N,) ndarray of float64
        NaN where MCC is undefined (no cell or no background in the truth or the prediction).
    """
    pred = np.asarray(prob) >= threshold
    label = np.asarray(label, dtype=bool)
    if pred.shape != label.shape or pred.ndim != 3:
        raise ValueError(f"prob {pred.shape} and label {label.shape} must both have shape (N, H, W)")
    axes = (1, 2)
    tp = np.count_nonzero(pred & label, axis=axes)
    fp = np.count_nonzero(pred & ~label, axis=axes)
    fn = np.count_nonzero(~pred & label, axis=axes)
    tn = label[0].size - tp - fp - fn
    return scores(tp, fp, tn, fn)["mcc"]


def select_cases(mcc, label, k=4, min_cell_fraction=0.02):
    """Indices of the ``k`` best and ``k`` worst patches by MCC among those with enough cell pixels.

    Ties keep the lower index (stable sort), so the choice is deterministic. An undefined (NaN) MCC ranks as
    0, chance: a patch whose cells the model missed entirely is among the worst, not left out.

    Returns
    -------
    best, worst : ndarray of int64
        Best first; worst first. With fewer than ``2 k`` qualifying patches they are split between the two
        (the extra one to ``best``); a patch is never in both.
    """
    label = np.asarray(label, dtype=bool)
    fraction = label.reshape(len(label), -1).mean(axis=1)
    eligible = np.flatnonzero(fraction >= min_cell_fraction)
    rank = np.nan_to_num(np.asarray(mcc, dtype=np.float64), nan=0.0)
    order = eligible[np.argsort(-rank[eligible], kind="stable")]
    best = order[:min(k, (len(order) + 1) // 2)]
    worst = order[::-1][:min(k, len(order) - len(best))]
    return best.astype(np.int64), worst.astype(np.int64)


def error_map(pred, label):
    """RGB uint8 map of a binary prediction against the truth: TP white, FP red, FN blue, TN black."""
    pred = np.asarray(pred, dtype=bool)
    label = np.asarray(label, dtype=bool)
    rgb = np.zeros(pred.shape + (3,), np.uint8)
    rgb[pred & label] = TP
    rgb[pred & ~label] = FP
    rgb[~pred & label] = FN
    return rgb


def case_grid(path, data, label, outputs, threshold, rows, title):
    """Write a PNG grid: per row one patch; columns input, ground truth, each output, errors of the last.

    Parameters
    ----------
    path : path
        PNG to write (atomically).
    data : (N, H, W) float array in [0, 1]
    label : (N, H, W) bool array
    outputs : list of (str, (N, H, W) float array)
        Named probability maps; the last one is thresholded for the error column.
    threshold : float
        Threshold of the last output.
    rows : list of (int, str)
        Patch index and row label, top to bottom.
    title : str
    """
    plt = pyplot()
    if not rows:
        raise ValueError(f"no patch to show in {path} (no test patch has enough cell pixels)")
    headers = ["input", "ground truth", *(name for name, _ in outputs), f"errors (t = {threshold:.2f})"]
    ncols = len(headers)
    height = 1.95 * len(rows) + 0.9
    fig, axes = plt.subplots(len(rows), ncols, figsize=(1.9 * ncols + 1.4, height), squeeze=False)
    for r, (i, text) in enumerate(rows):
        panels = [(data[i], "gray"), (label[i], "gray"), *((prob[i], "gray") for _, prob in outputs),
                  (error_map(outputs[-1][1][i] >= threshold, label[i]), None)]
        for c, (img, cmap) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(headers[c], fontsize=9)
        axes[r, 0].set_ylabel(text, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.text(0.5, 0.05 / height, "errors: white = true positive, red = false positive, blue = false negative",
             ha="center", va="bottom", fontsize=8)
    fig.tight_layout(rect=(0, 0.25 / height, 1, 1 - 0.3 / height))
    save_figure(fig, path, dpi=90)


def _labelled_rows(best, worst, mcc, split):
    """Row labels: rank, patch index (and source image and origin when the split records them), MCC."""
    def text(rank, i):
        lines = [f"{rank}: MCC " + ("undefined" if np.isnan(mcc[i]) else f"{mcc[i]:.3f}"), f"patch {i}"]
        if "source_index" in split and "origin" in split:
            y, x = split["origin"][i]
            lines[1] += f", image {split['source_index'][i]}"
            lines.append(f"at y={y}, x={x}")
        return "\n".join(lines)

    rows = [(int(i), text(f"best {n + 1}", i)) for n, i in enumerate(best)]
    rows += [(int(i), text(f"worst {n + 1}", i)) for n, i in enumerate(worst)]
    return rows


def load_probs(eval_dir, name, shape):
    """Class-1 probabilities (N, H, W) that ``make evaluate`` wrote as ``probs_<name>.npy``.

    Raises
    ------
    InputError
        The file is missing or does not match the split (``make evaluate`` is older than the data).
    """
    path = Path(eval_dir) / f"probs_{name}.npy"
    if not path.is_file():
        raise InputError(f"missing {path} (run `make evaluate`)")
    prob = np.load(path)
    if prob.shape != tuple(shape):
        raise InputError(f"{path} has shape {prob.shape}, the split {tuple(shape)}: run `make evaluate` again")
    return prob.astype(np.float32, copy=False)


def _threshold(table, model, split):
    """The test-optimal threshold of a Table 1 row; an undefined one (NaN) is an error, not a figure."""
    t = evaluate.find_row(table, model, split, "test-optimal")["threshold"]
    if t is None or t != t:
        raise InputError(f"Table 1's {model} model has no threshold on {split} (its MCC is undefined at every "
                         "threshold): no best and worst cases to show")
    return t


def _cases(mcc, label, k, min_cell_fraction):
    """:func:`select_cases`, falling back to every patch when none has enough cell pixels."""
    best, worst = select_cases(mcc, label, k, min_cell_fraction)
    if len(best):
        return best, worst, min_cell_fraction
    return (*select_cases(mcc, label, k, 0.0), 0.0)


def make_figures(runs, data_dir, out, k=4, min_cell_fraction=0.02):
    """Write the three figures into ``out``; return ``{file name: caption}``."""
    runs, data_dir, out = Path(runs), Path(data_dir), Path(out)
    eval_dir = runs / "eval"
    table = schema.load(eval_dir / "table1.json", schema.TABLE1)
    captions = {}

    syn = E.load_split(data_dir / "synthetic" / "test.h5")
    prob = load_probs(eval_dir, "before_synthetic", syn["label"].shape)
    t = _threshold(table, "before", "synthetic_test")
    mcc = per_patch_mcc(prob, syn["label"], t)
    best, worst, _ = _cases(mcc, syn["label"], k, min_cell_fraction)
    case_grid(out / "fig8_synthetic.png", syn["data"][:, 0], syn["label"], [("output (pretrained)", prob)], t,
              _labelled_rows(best, worst, mcc, syn), "Synthetic test patches, pretrained model (cf. Figure 8)")
    captions["fig8_synthetic.png"] = (
        f"Synthetic test patches with the pretrained model: the {len(best)} best and {len(worst)} worst of "
        f"{len(mcc)} by per-patch MCC at t = {t:.3f}.")

    real = E.load_split(data_dir / "real" / "test.h5")
    after = load_probs(eval_dir, "after", real["label"].shape)
    before = load_probs(eval_dir, "before", real["label"].shape)
    t = _threshold(table, "after", "real_test")
    mcc = per_patch_mcc(after, real["label"], t)
    best, worst, fraction = _cases(mcc, real["label"], k, min_cell_fraction)
    outputs = [("before fine-tuning", before), ("after fine-tuning", after)]
    rows = _labelled_rows(best, worst, mcc, real)
    n_ranked = int(np.count_nonzero(real["label"].reshape(len(mcc), -1).mean(1) >= fraction))
    for name, which, shown, title in (
            ("fig9_real_best.png", "best", rows[:len(best)], "classified well by the fine-tuned model (cf. Figure 9)"),
            ("fig11_real_worst.png", "worst", rows[len(best):],
             "classified badly by the fine-tuned model (cf. Figure 11)")):
        if not shown:  # a single rankable patch is only shown among the best
            continue
        case_grid(out / name, real["data"][:, 0], real["label"], outputs, t, shown, f"Real test patches {title}")
        captions[name] = (f"Real test patches: the {which} of {n_ranked} (with at least {fraction:.0%} "
                          f"cell pixels) by per-patch MCC of the fine-tuned model at t = {t:.3f}; errors are "
                          f"the fine-tuned model's.")
    return captions


def _main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tools.figures", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs", help="runs folder (with eval/ from make evaluate)")
    parser.add_argument("--data", help="data folder with synthetic/ and real/ (default: RUNS/data)")
    parser.add_argument("--out", required=True, help="output folder for the PNGs")
    parser.add_argument("-k", type=int, default=4, help="best and worst cases per figure (default: %(default)s)")
    parser.add_argument("--min-cell-fraction", type=float, default=0.02,
                        help="rank only patches with at least this fraction of cell pixels (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.k < 1 or not 0 <= args.min_cell_fraction < 1:
        parser.error("-k must be positive and --min-cell-fraction in [0, 1)")
    out = Path(args.out)
    captions = make_figures(args.runs, args.data or Path(args.runs) / "data", out, args.k, args.min_cell_fraction)
    for name, caption in captions.items():
        print(f"{out / name}: {caption}")


def main(argv=None):
    """Run the command; return its exit status (see cellfcn.cli)."""
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
