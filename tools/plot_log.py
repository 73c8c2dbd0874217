"""Plot Caffe training logs like the paper's Figure 7: loss, test accuracy and learning rate.

Several logs (pretrain, then fine-tune) share one figure: each stage continues on the x axis where the
previous one ended, in iterations (left column) and in epochs (right column, when every stage's iterations
per epoch are known: ``run.json`` key ``iters_per_epoch`` next to the log, or ``--iters-per-epoch``).
"""
import argparse
import math
import sys
from pathlib import Path

import numpy as np

from cellfcn import cli, files
from cellfcn.parse_log import read_log
from cellfcn.plotting import pyplot, save_figure

_STAGE_SHADES = ("#f2f2f2", "#ffffff")


def iters_per_epoch_of(log_path):
    """``iters_per_epoch`` from the ``run.json`` beside ``log_path``, or None if absent."""
    run_json = Path(log_path).with_name("run.json")
    if not run_json.is_file():
        return None
    value = files.read_json(run_json, "run record").get("iters_per_epoch")
    return float(value) if value else None


def load_stages(log_paths, iters_per_epoch=None, labels=None):
    """Parse logs into the stage dicts :func:`plot_stages` draws.

    Parameters
    ----------
    log_paths : list of path
        Training logs in stage order.
    iters_per_epoch : list of float or None, optional
        Per log; None entries (or no list) are read from ``run.json`` beside the log.
    labels : list of str, optional
        Stage names; default: the log's folder name (``runs/pretrain/train.log`` -> ``pretrain``).

    Returns
    -------
    list of dict
        ``label``, ``train``, ``test`` (as from :func:`cellfcn.parse_log.parse_log`), ``iters_per_epoch``.
    """
    stages = []
    for i, path in enumerate(log_paths):
        train, test = read_log(path)
        ipe = iters_per_epoch[i] if iters_per_epoch and iters_per_epoch[i] else iters_per_epoch_of(path)
        label = labels[i] if labels else Path(path).resolve().parent.name
        stages.append({"label": label, "train": train, "test": test, "iters_per_epoch": ipe})
    return stages


def plot_stages(stages, out, title="Training logs"):
    """Draw loss, test accuracy and learning rate of consecutive training stages into a PNG.

    Parameters
    ----------
    stages : list of dict
        From :func:`load_stages`.
    out : path
        PNG to write (atomically).
    title : str
        Figure title.
    """
    plt = pyplot()
    by_epoch = all(s["iters_per_epoch"] for s in stages)
    units = [("iteration", 1.0)] + ([("epoch", None)] if by_epoch else [])
    fig, axes = plt.subplots(3, len(units), figsize=(6.5 * len(units), 9.5), squeeze=False, sharex="col")
    for col, (unit, _) in enumerate(units):
        start = 0.0
        ax_loss, ax_acc, ax_lr = axes[:, col]
        for k, stage in enumerate(stages):
            scale = 1.0 if unit == "iteration" else 1.0 / stage["iters_per_epoch"]
            train, test = stage["train"], stage["test"]
            last = max(np.max(train["iteration"], initial=0), np.max(test["iteration"], initial=0))
            end = start + last * scale
            first = k == 0
            for ax in (ax_loss, ax_acc, ax_lr):
                ax.axvspan(start, max(end, start + 1e-9), color=_STAGE_SHADES[k % 2], zorder=0)
            ax_loss.text((start + end) / 2, 1.0, stage["label"], transform=ax_loss.get_xaxis_transform(),
                         ha="center", va="bottom", fontsize=9)
            x_train = start + train["iteration"] * scale
            x_test = start + test["iteration"] * scale
            ax_loss.plot(x_train, train["loss"], color="tab:blue", lw=1, label="train loss" if first else None)
            if "loss" in test:
                ax_loss.plot(x_test, test["loss"], "o-", color="tab:orange", ms=3, lw=1.2,
                             label="test loss" if first else None)
            if "accuracy" in test:
                ax_acc.plot(x_test, test["accuracy"], "o-", color="tab:green", ms=3, lw=1.2,
                            label="test accuracy" if first else None)
            lr = train["lr"]
            keep = np.isfinite(lr) & (lr > 0)
            if keep.any():  # hold the last rate to the end of the stage
                ax_lr.step(np.append(x_train[keep], end), np.append(lr[keep], lr[keep][-1]), where="post",
                           color="tab:purple", lw=1.2, label="learning rate" if first else None)
            start = end
        ax_loss.set_ylabel("loss")
        ax_acc.set_ylabel("test accuracy (pixels)")
        ax_lr.set_ylabel("learning rate")
        if np.any([np.any(s["train"]["lr"] > 0) for s in stages]):
            ax_lr.set_yscale("log")
        ax_lr.set_xlabel(f"{unit}s" + (" (each stage continues the previous one)" if len(stages) > 1 else ""))
        for ax in (ax_loss, ax_acc, ax_lr):
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="best", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, out, dpi=100)


def _main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tools.plot_log", description=__doc__.splitlines()[0])
    parser.add_argument("--log", action="append", required=True,
                        help="training log, once per stage in order (e.g. runs/pretrain/train.log)")
    parser.add_argument("--label", action="append", help="stage name per --log (default: the log's folder)")
    parser.add_argument("--iters-per-epoch", action="append", type=float,
                        help="per --log (default: iters_per_epoch in run.json beside the log)")
    parser.add_argument("--title", default="Training logs")
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args(argv)
    for name, values in (("--label", args.label), ("--iters-per-epoch", args.iters_per_epoch)):
        if values and len(values) != len(args.log):
            parser.error(f"give {name} once per --log ({len(args.log)} times)")
    if args.iters_per_epoch and not all(v > 0 and math.isfinite(v) for v in args.iters_per_epoch):
        parser.error("--iters-per-epoch must be positive")
    plot_stages(load_stages(args.log, args.iters_per_epoch, args.label), args.out, title=args.title)
    print(f"wrote {args.out}")


def main(argv=None):
    """Run the command; return its exit status (see cellfcn.cli)."""
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
