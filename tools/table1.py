"""Table 1 of the paper for our run: before and after fine-tuning, beside the report's rows (`make evaluate`).

Evaluates ``RUNS/pretrain/final.caffemodel`` (before) and ``RUNS/finetune/final.caffemodel`` (after) with
the deploy net on the real test split ``DATA/real/test.h5``, in two protocols:

- ``test-optimal``: the threshold that maximises MCC on the test set itself (the paper's protocol);
- ``val-threshold``: the MCC-optimal threshold of the validation split ``DATA/real/val.h5``, applied to the
  test set (an honest estimate: the threshold is not tuned on the data it is scored on).

Every row carries 95% percentile bootstrap intervals that resample whole test images (``source_index``);
the test-optimal rows re-select the threshold in each replicate. A classical baseline, Otsu's threshold per
whole test image (``DATA/real/test_full.h5``), is scored on exactly the test patch pixels, and the
pretrained model is also scored on the synthetic test split (``DATA/synthetic/test.h5``).

Writes to ``--out``: ``table1.md``, ``table1.json``, ``roc.png`` (before and after, Otsu and the paper's
operating points), ``probs_before.npy`` / ``probs_after.npy`` (float32 (N, P, P), real test patches in
file order) and ``probs_before_synthetic.npy``, and one folder of evaluate.py outputs per model
(``before/``, ``after/``, ``before_synthetic/``). Prints Table 1.
"""
import argparse
import json
import sys
from pathlib import Path

import h5py
import numpy as np

if __package__ in (None, ""):  # run as a script: make `tools` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tools import caffe_env  # noqa: E402
from tools import evaluate as E  # noqa: E402
from tools import metrics as M  # noqa: E402

# The report's Table 1 (Marzo & La Rosa 2016), each at its MCC-optimal threshold on the test set.
PAPER = [
    {"name": "paper: before fine-tuning", "protocol": "test-optimal", "threshold": 0.25, "specificity": 0.96,
     "precision": 0.58, "recall": 0.52, "accuracy": 0.91, "f_score": 0.55, "mcc": 0.50, "auc": None},
    {"name": "paper: after fine-tuning", "protocol": "test-optimal", "threshold": 0.67, "specificity": 0.98,
     "precision": 0.81, "recall": 0.73, "accuracy": 0.95, "f_score": 0.77, "mcc": 0.74, "auc": None},
]
COLUMNS = ["row", "threshold", *(E.LABELS[k] for k in M.METRICS), "AUC"]


def load_full_masks(path, indices):
    """Otsu masks of the whole images ``indices`` of a ``<split>_full.h5`` file.

    Parameters
    ----------
    path : Path
        File with ``images/<i>`` (H, W) float32 in [0, 1] and ``masks/<i>``.
    indices : iterable of int
        Images to threshold.

    Returns
    -------
    masks : dict of int -> ndarray of bool
        ``image > threshold_otsu(image)`` (cells are bright).
    thresholds : dict of int -> float
    truth : dict of int -> ndarray of bool
        The ground-truth masks, to check that patches and whole images line up.
    """
    from skimage.filters import threshold_otsu

    if not path.is_file():
        raise E.InputError(f"whole-image file not found: {path}")
    masks, thresholds, truth = {}, {}, {}
    with h5py.File(path, "r") as f:
        for i in sorted(set(int(i) for i in indices)):
            if f"images/{i}" not in f or f"masks/{i}" not in f:
                raise E.InputError(f"{path}: images/{i} or masks/{i} missing")
            image = f[f"images/{i}"][...].astype(np.float32)
            if image.ndim != 2 or f[f"masks/{i}"].shape != image.shape:
                raise E.InputError(f"{path}: images/{i} and masks/{i} must be 2-D of the same shape")
            t = float(threshold_otsu(image)) if np.ptp(image) > 0 else float(image.max())
            thresholds[i] = t
            masks[i] = image > t
            truth[i] = f[f"masks/{i}"][...] != 0
    return masks, thresholds, truth


def otsu_patches(split, full_path):
    """Per-image Otsu masks cut to the test patches (same pixels as the network is scored on).

    Parameters
    ----------
    split : dict
        From :func:`tools.evaluate.load_split`, with ``source_index`` and ``origin``.
    full_path : Path
        The matching ``<split>_full.h5``.

    Returns
    -------
    pred : ndarray of bool, shape (N, P, P)
    thresholds : dict of int -> float
        Otsu threshold of every image used.
    """
    if "source_index" not in split or "origin" not in split:
        raise E.InputError("the real test split needs source_index and origin for the Otsu baseline")
    masks, thresholds, truth = load_full_masks(full_path, split["source_index"])
    n, p, q = split["label"].shape
    pred = np.empty((n, p, q), bool)
    for k, (i, (y, x)) in enumerate(zip(split["source_index"], split["origin"])):
        h, w = masks[i].shape
        if y < 0 or x < 0 or y + p > h or x + q > w:
            raise E.InputError(f"test patch {k}: origin ({y}, {x}) + {p}x{q} lies outside image {i} ({h}x{w})")
        if not np.array_equal(truth[i][y:y + p, x:x + q], split["label"][k]):
            raise E.InputError(f"test patch {k}: label differs from masks/{i} at origin ({y}, {x})")
        pred[k] = masks[i][y:y + p, x:x + q]
    return pred, thresholds


def row(name, protocol, record, ci, **extra):
    """A table1.json row: metrics at the threshold, AUC, counts and bootstrap intervals."""
    out = {"name": name, "protocol": protocol, "threshold": record["threshold"]}
    out.update({k: record[k] for k in M.METRICS})
    out["auc"] = record.get("auc")
    out.update({k: record[k] for k in ("tp", "fp", "tn", "fn")})
    out["ci"] = {k: list(v) for k, v in ci.items()}
    out.update(extra)
    return out


def markdown(rows, paper):
    """Table 1 in Markdown: the paper's rows, then ours with 95% intervals."""
    def cell(r, key, fmt):
        value = r.get(key)
        if value is None:
            return "–"
        text = format(value, fmt)
        if key in r.get("ci", {}):
            lo, hi = r["ci"][key]
            text += f" [{lo:{fmt}}, {hi:{fmt}}]"
        return text

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in [*paper, *rows]:
        threshold = "per image" if r["threshold"] is None else f"{r['threshold']:.3f}"
        cells = [r["name"], threshold, *(cell(r, k, ".3f") for k in M.METRICS), cell(r, "auc", ".3f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--runs", required=True, help="runs folder with pretrain/ and finetune/ final.caffemodel")
    p.add_argument("--data", required=True, help="data folder with real/ and synthetic/")
    p.add_argument("--out", required=True, help="output folder (e.g. RUNS/eval)")
    p.add_argument("--deploy", default=str(E.DEFAULT_DEPLOY), help="deploy prototxt (default: %(default)s)")
    p.add_argument("--gpu", type=int, default=None, help="CUDA device id (default: CPU)")
    p.add_argument("--batch", type=int, default=16, help="patches per forward pass (default: %(default)s)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default: %(default)s)")
    p.add_argument("--thresholds", type=int, default=1001, help="thresholds on the curves (default: %(default)s)")
    return p.parse_args(argv)


def model_rows(key, model, prob, val_prob, test, val, out, args):
    """The test-optimal and val-threshold rows of one model; writes its evaluate.py outputs."""
    boot = {"n_boot": args.bootstrap, "seed": args.seed}
    res = E.evaluate_arrays(prob, test["label"], groups=test["source_index"], n_thresholds=args.thresholds)
    record = E.write_outputs(res, out / key, title=f"{key} fine-tuning, real test", model=str(model),
                             data=str(Path(args.data) / "real" / "test.h5"), split="test")
    optimal = row(f"ours: {key}, t* on test", "test-optimal", record,
                  M.bootstrap(res["pos"], res["neg"], index=None, **boot))

    val_res = E.evaluate_arrays(val_prob, val["label"], groups=val.get("source_index"),
                                n_thresholds=args.thresholds)
    fixed = E.evaluate_arrays(prob, test["label"], threshold=val_res["threshold"], groups=test["source_index"],
                              n_thresholds=args.thresholds)
    ci = M.bootstrap(fixed["pos"], fixed["neg"], index=fixed["threshold_index"], **boot)
    ci.pop("threshold")  # fixed by the validation split
    honest = row(f"ours: {key}, t from val", "val-threshold", E.metrics_record(fixed), ci,
                 val_mcc=val_res["metrics"]["mcc"])
    return res, [optimal, honest]


def otsu_row(pred, thresholds, test, args):
    """The Otsu baseline row, with bootstrap intervals over the same test images."""
    groups = np.unique(test["source_index"], return_inverse=True)[1]
    # A binary mask as probabilities {0, 1} on a 2-threshold grid: bin 1 is the Otsu foreground.
    pos, neg = M.histograms(pred.astype(np.float32), test["label"], 2, groups=groups)
    ci = M.bootstrap(pos, neg, index=1, n_boot=args.bootstrap, seed=args.seed)
    for k in ("auc", "threshold"):
        ci.pop(k)
    counts = M.counts_from_histograms(pos.sum(0), neg.sum(0))
    record = {"threshold": None, "auc": None, **M.binary_scores(pred, test["label"]),
              **{k: int(counts[k][1]) for k in ("tp", "fp", "tn", "fn")}}
    return row("Otsu per whole image", "otsu-per-image", record, ci,
               otsu_thresholds={str(i): t for i, t in thresholds.items()})


def run(args):
    """Compute Table 1 and write every output; return the Markdown text."""
    runs, data, out = Path(args.runs), Path(args.data), Path(args.out)
    if args.bootstrap < 1 or args.batch < 1 or args.thresholds < 2:
        raise E.InputError("--bootstrap and --batch must be positive and --thresholds at least 2")
    models = {"before": runs / "pretrain" / "final.caffemodel", "after": runs / "finetune" / "final.caffemodel"}
    for path in models.values():
        if not path.is_file():
            raise E.InputError(f"model not found: {path} (train it first: make pretrain / make finetune)")
    paths = {"test": data / "real" / "test.h5", "val": data / "real" / "val.h5",
             "test_full": data / "real" / "test_full.h5", "synthetic_test": data / "synthetic" / "test.h5"}
    test, val, synthetic = (E.load_split(paths[k]) for k in ("test", "val", "synthetic_test"))
    otsu_pred, otsu_thresholds = otsu_patches(test, paths["test_full"])

    rows, curves, probs = [], [], {}
    for key, model in models.items():
        net = E.load_net(model, args.deploy, args.gpu)
        probs[key] = E.predict(net, test["data"], args.batch, desc=f"{key}: real test")
        val_prob = E.predict(net, val["data"], args.batch, desc=f"{key}: real val")
        if key == "before":
            probs["before_synthetic"] = E.predict(net, synthetic["data"], args.batch, desc="before: synthetic test")
        del net
        res, model_table = model_rows(key, model, probs[key], val_prob, test, val, out, args)
        rows += model_table
        curves.append((f"ours: {key}", res))
    rows.append(otsu_row(otsu_pred, otsu_thresholds, test, args))

    syn = E.evaluate_arrays(probs["before_synthetic"], synthetic["label"], n_thresholds=args.thresholds)
    record = E.write_outputs(syn, out / "before_synthetic", title="before fine-tuning, synthetic test",
                             model=str(models["before"]), data=str(paths["synthetic_test"]), split="test")
    rows.append(row("ours: before, synthetic test", "test-optimal", record,
                    M.bootstrap(syn["pos"], syn["neg"], index=None, n_boot=args.bootstrap, seed=args.seed)))

    for key, prob in probs.items():
        with E.atomic_path(out / f"probs_{key}.npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, prob)  # float32: recomputed metrics match the table exactly
    # The paper's operating points in the colour of our matching curve (before C0, after C1).
    otsu = rows[-2]
    points = [("Otsu per image", 1 - otsu["specificity"], otsu["recall"], "s", "k")]
    points += [(p["name"], 1 - p["specificity"], p["recall"], m, c) for p, m, c in zip(PAPER, "oD", ("C0", "C1"))]
    E.save_figure(E.plot_roc(curves, title="ROC on the real test set", points=points), out / "roc.png")

    n_images = int(len(np.unique(test["source_index"])))
    meta = {"models": {k: str(v) for k, v in models.items()}, "deploy": str(args.deploy),
            "data": {k: str(v) for k, v in paths.items()},
            "n_test_patches": int(len(test["label"])), "n_test_images": n_images,
            "bootstrap": {"replicates": args.bootstrap, "seed": args.seed, "unit": "test image",
                          "interval": "95% percentile"},
            "n_thresholds": args.thresholds}
    E.write_text(out / "table1.json", json.dumps({"rows": rows, "paper": PAPER, **meta}, indent=2) + "\n")
    text = ("Table 1: pixel-wise scores on the real test set. t* on test: MCC-optimal threshold on the test "
            "set (the paper's protocol); t from val: MCC-optimal threshold on the validation split. "
            f"[95% bootstrap intervals, {args.bootstrap} replicates, resampling the {n_images} "
            "test images (the synthetic row: its patches).]\n\n" + markdown(rows, PAPER))
    E.write_text(out / "table1.md", text)
    return text


def main(argv=None):
    args = parse_args(argv)
    try:
        table = run(args)
    except (E.InputError, ValueError, caffe_env.CaffeNotFound) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
