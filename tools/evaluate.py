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

This is the only stage that runs the network on the evaluation data: it also counts cells, the object-level
companion table (:mod:`tools.object_table`: instance parameters chosen on the whole training and validation
images, scored on the whole test images with each image at its own scale, for both models, the
instance-aware 3-class ``contour`` net of ``--contour-runs`` and an Otsu + watershed baseline), writes each
net's chosen parameters and working diameter beside its model
(``<model>.params.json``, :mod:`tools.model_params`: what ``make segment`` uses), and writes the nuclei of the
first ``--images`` whole test images found by the fine-tuned model (overlays) for the report to show.

Writes to ``--out``: ``table1.md`` (Table 1, then the object-level table), ``table1.json`` (the
contract with figures and report: rows keyed by ``model``, ``split`` and ``protocol``, ``schema_version``,
and the ``inputs_sha256`` that lets an unchanged rerun return at once), ``roc.png`` (before and after, Otsu
and the paper's operating points), ``probs_before.npy`` / ``probs_after.npy`` (float32 (N, P, P), real test
patches in file order), ``probs_before_synthetic.npy``, one folder of evaluate outputs per model
(``before/``, ``after/``, ``before_synthetic/``), ``objects.json`` / ``objects.md`` (the object-level
table) and ``segment/`` (overlays and ``segment.json``). Prints Table 1 and the object-level table.
"""
import argparse
import sys
from pathlib import Path

import h5py
import numpy as np

import cellfcn
from cellfcn import cli, files, schema
from cellfcn import metrics as M
from cellfcn import objects as O
from cellfcn.constants import METRICS, TABLE1_SCHEMA
from cellfcn.errors import InputError
from cellfcn.plotting import save_figure
import tools
from tools import infer
from tools import object_table, model_params, segment
from tools import score as E

# The report's Table 1 (Marzo & La Rosa 2016), each at its MCC-optimal threshold on the test set.
PAPER = [
    {"name": "paper: before fine-tuning", "model": "before", "split": "paper_test", "protocol": "test-optimal",
     "threshold": 0.25, "specificity": 0.96, "precision": 0.58, "recall": 0.52, "accuracy": 0.91,
     "f_score": 0.55, "mcc": 0.50, "auc": None},
    {"name": "paper: after fine-tuning", "model": "after", "split": "paper_test", "protocol": "test-optimal",
     "threshold": 0.67, "specificity": 0.98, "precision": 0.81, "recall": 0.73, "accuracy": 0.95,
     "f_score": 0.77, "mcc": 0.74, "auc": None},
]
MODELS = {"before": "pretrain", "after": "finetune"}  # row model -> the training stage that made it


def load_table(path):
    """Read ``table1.json`` and check it is of this version's schema.

    Raises
    ------
    InputError
        Missing file, malformed JSON, another schema version, or rows that are not Table 1's
        (:data:`cellfcn.schema.TABLE1`; the message says to run make evaluate).
    """
    return schema.load(path, schema.TABLE1)


def find_row(table, model, split, protocol):
    """The one row of ``table`` with these keys (``model``: before/after/otsu; ``split``: real_test,
    synthetic_test; ``protocol``: test-optimal, val-threshold, otsu-per-image).

    Raises
    ------
    InputError
        No such row.
    """
    for row in table.get("rows", []):
        if (row.get("model"), row.get("split"), row.get("protocol")) == (model, split, protocol):
            return row
    raise InputError(f"Table 1 has no row for model={model}, split={split}, protocol={protocol}: "
                     f"run `make evaluate` again")


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
    if not path.is_file():
        raise InputError(f"whole-image file not found: {path}")
    masks, thresholds, truth = {}, {}, {}
    with h5py.File(path, "r") as f:
        for i in sorted(set(int(i) for i in indices)):
            if f"images/{i}" not in f or f"masks/{i}" not in f:
                raise InputError(f"{path}: images/{i} or masks/{i} missing")
            image = f[f"images/{i}"][...].astype(np.float32)
            if image.ndim != 2 or f[f"masks/{i}"].shape != image.shape:
                raise InputError(f"{path}: images/{i} and masks/{i} must be 2-D of the same shape")
            t = O.otsu_threshold(image)
            thresholds[i] = t
            masks[i] = image > t
            truth[i] = f[f"masks/{i}"][...] != 0
    return masks, thresholds, truth


def otsu_patches(split, full_path):
    """Per-image Otsu masks cut to the test patches (same pixels as the network is scored on).

    Parameters
    ----------
    split : dict
        From :func:`tools.score.load_split`, with ``source_index`` and ``origin``.
    full_path : Path
        The matching ``<split>_full.h5``.

    Returns
    -------
    pred : ndarray of bool, shape (N, P, P)
    thresholds : dict of int -> float
        Otsu threshold of every image used.
    """
    if "source_index" not in split or "origin" not in split:
        raise InputError("the real test split needs source_index and origin for the Otsu baseline")
    masks, thresholds, truth = load_full_masks(full_path, split["source_index"])
    n, p, q = split["label"].shape
    pred = np.empty((n, p, q), bool)
    for k, (i, (y, x)) in enumerate(zip(split["source_index"], split["origin"])):
        h, w = masks[i].shape
        if y < 0 or x < 0 or y + p > h or x + q > w:
            raise InputError(f"test patch {k}: origin ({y}, {x}) + {p}x{q} lies outside image {i} ({h}x{w})")
        if not np.array_equal(truth[i][y:y + p, x:x + q], split["label"][k]):
            raise InputError(f"test patch {k}: label differs from masks/{i} at origin ({y}, {x})")
        pred[k] = masks[i][y:y + p, x:x + q]
    return pred, thresholds


def row(name, keys, record, ci, **extra):
    """A table1.json row: its keys (model, split, protocol), metrics at the threshold, AUC, counts and
    bootstrap intervals."""
    model, split, protocol = keys
    out = {"name": name, "model": model, "split": split, "protocol": protocol, "threshold": record["threshold"]}
    out.update({k: record[k] for k in METRICS})
    out["auc"] = record.get("auc")
    out.update({k: record[k] for k in ("tp", "fp", "tn", "fn")})
    out["ci"] = {k: list(v) for k, v in ci.items()}
    out.update(extra)
    return out


def markdown(rows, paper):
    """Table 1 in Markdown: the paper's rows, then ours with 95% intervals."""
    return E.markdown_table(*E.table_cells([*paper, *rows]))


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--runs", required=True, help="runs folder with pretrain/ and finetune/ final.caffemodel")
    p.add_argument("--contour-runs", help="runs folder of the 3-class contour net (its finetune/final.caffemodel) "
                                          "for the object-level table")
    p.add_argument("--data", required=True, help="data folder with real/ and synthetic/")
    p.add_argument("--out", required=True, help="output folder (e.g. RUNS/eval)")
    p.add_argument("--deploy", help="deploy prototxt (default: the committed one of the net the model names)")
    p.add_argument("--gpu", type=int, default=None, help="CUDA device id (default: CPU)")
    p.add_argument("--batch", type=int, default=16, help="patches per forward pass (default: %(default)s)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default: %(default)s)")
    p.add_argument("--thresholds", type=int, default=1001, help="thresholds on the curves (default: %(default)s)")
    p.add_argument("--images", type=int, default=2, help="whole test images to segment (default: %(default)s)")
    p.add_argument("--train-images", type=int, default=None,
                   help="whole training images (the first n of train_full.h5) that join the validation images "
                        "in the choice of the object parameters; 0: the validation images alone (default: all)")
    p.add_argument("--force", action="store_true", help="recompute even if the inputs are unchanged")
    args = p.parse_args(argv)
    if min(args.bootstrap, args.batch) < 1 or args.thresholds < 2 or min(args.images, args.train_images or 0) < 0:
        p.error("--bootstrap and --batch must be positive, --thresholds at least 2, --images and --train-images "
                ">= 0")
    return args


def model_rows(key, model, prob, val_prob, test, val, out, args):
    """The test-optimal and val-threshold rows of one model; writes its evaluate.py outputs."""
    boot = {"n_boot": args.bootstrap, "seed": args.seed}
    res = E.evaluate_arrays(prob, test["label"], groups=test["source_index"], n_thresholds=args.thresholds)
    record = E.write_outputs(res, out / key, title=f"{key} fine-tuning, real test", model=str(model),
                             data=str(Path(args.data) / "real" / "test.h5"), split="test")
    optimal = row(f"ours: {key}, t* on test", (key, "real_test", "test-optimal"), record,
                  M.bootstrap(res["pos"], res["neg"], index=None, **boot))

    val_res = E.evaluate_arrays(val_prob, val["label"], groups=val.get("source_index"),
                                n_thresholds=args.thresholds)
    fixed = E.evaluate_arrays(prob, test["label"], threshold=val_res["threshold"], groups=test["source_index"],
                              n_thresholds=args.thresholds)
    # An undefined validation threshold gives no interval (index None would re-select one on each replicate).
    ci = M.bootstrap(fixed["pos"], fixed["neg"], index=fixed["threshold_index"], **boot) \
        if fixed["threshold_index"] is not None else {}
    ci.pop("threshold", None)  # fixed by the validation split
    honest = row(f"ours: {key}, t from val", (key, "real_test", "val-threshold"), E.metrics_record(fixed), ci,
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
    return row("Otsu per whole image", ("otsu", "real_test", "otsu-per-image"), record, ci,
               otsu_thresholds={str(i): t for i, t in thresholds.items()})


def deploy_of(args, key, model):
    """The deploy net a model runs in: ``--deploy`` for Table 1's two models, else the one its net names."""
    return (args.deploy if key != "contour" else None) or infer.deploy_for(model)


def inputs(args):
    """Every input of the stage (paths) and the digest that identifies their content and the settings."""
    runs, data = Path(args.runs), Path(args.data)
    models = {k: runs / stage / "final.caffemodel" for k, stage in MODELS.items()}
    if args.contour_runs:
        models["contour"] = Path(args.contour_runs) / "finetune" / "final.caffemodel"
    for key, path in models.items():
        if not path.is_file():
            raise InputError(f"model not found: {path} (train it first: "
                             f"make {'instance' if key == 'contour' else MODELS[key]})")
    paths = {"test": data / "real" / "test.h5", "val": data / "real" / "val.h5",
             "test_full": data / "real" / "test_full.h5", "val_full": data / "real" / "val_full.h5",
             "train_full": data / "real" / "train_full.h5",
             "synthetic_test": data / "synthetic" / "test.h5", "manifest": data / "real" / "manifest.json"}
    for path in paths.values():
        if not path.is_file():
            raise InputError(f"data file not found: {path} (run `make data`)")
    settings = {k: v for k, v in vars(args).items() if k not in ("runs", "contour_runs", "data", "out", "gpu",
                                                                  "force")}
    deploys = {k: deploy_of(args, k, v) for k, v in models.items()}
    key = files.digest({k: files.sha256_file(v) for k, v in models.items()},
                       {k: files.sha256_file(v) for k, v in paths.items()},
                       {k: files.sha256_file(v) for k, v in deploys.items()},
                       settings, files.code_digest(cellfcn, tools))
    return models, paths, key


OUTPUTS = ("table1.md", "roc.png", "probs_before.npy", "probs_after.npy", "probs_before_synthetic.npy",
           "objects.json", "objects.md", "segment/segment.json")


def is_current(out, key):
    """True when ``out`` holds this stage's complete outputs for inputs with digest ``key``."""
    path = Path(out) / "table1.json"
    if not path.is_file() or not all((Path(out) / name).is_file() for name in OUTPUTS):
        return False
    try:
        return load_table(path).get("inputs_sha256") == key
    except InputError:
        return False


def segment_whole_images(out, test, probs, labels, row, n_images):
    """Write the nuclei the fine-tuned model finds in the first ``n_images`` whole test images (overlays with
    the truth's outlines) and ``segment.json``; return its records."""
    records = []
    for i, (name, image, gt) in enumerate(zip(test["names"], test["images"], test["labels"])):
        if i == n_images:
            break
        names = segment.save_outputs(out, f"segment_{i:02d}", image, probs[i], labels[i], gt)
        scores = O.object_scores(gt, labels[i])
        records.append({"image": name, "shape": list(image.shape), "cells_true": scores["n_gt"],
                        "cells": scores["n_pred"], **{k: object_table.number(scores[k]) for k in ("f1", "dsb_score")},
                        "files": names})
    files.write_json(out / "segment.json", {"model": "after", "params": row["params"], "images": records})
    return records


def contour_pixel_mcc(prob, val_prob, test, val, args):
    """MCC of the contour net's nucleus pixels on the test patches at its validation MCC-optimal threshold."""
    val_res = E.evaluate_arrays(val_prob, val["label"], groups=val.get("source_index"), n_thresholds=args.thresholds)
    fixed = E.evaluate_arrays(prob, test["label"], threshold=val_res["threshold"], groups=test["source_index"],
                              n_thresholds=args.thresholds)
    return val_res["threshold"], E.metrics_record(fixed)["mcc"]


def run(args):
    """Compute Table 1 and write every output; return the Markdown text."""
    out = Path(args.out)
    files.check_writable(out / "table1.json")
    models, paths, key = inputs(args)
    for model in models.values():
        files.check_writable(model_params.params_path(model), "model parameters")
    dataset = model_params.read_dataset_preprocessing(paths["manifest"])
    if not args.force and is_current(out, key) and all(model_params.params_path(m).is_file()
                                                       for m in models.values()):
        print(f"evaluate: up to date ({out / 'table1.json'}; --force recomputes)", file=sys.stderr)
        return (out / "table1.md").read_text()
    test, val, synthetic = (E.load_split(paths[k]) for k in ("test", "val", "synthetic_test"))
    full = {k: object_table.load_full(paths[f"{k}_full"]) for k in ("train", "val", "test")}
    full["train"] = {k: v[:args.train_images] for k, v in full["train"].items()}
    otsu_pred, otsu_thresholds = otsu_patches(test, paths["test_full"])

    rows, curves, probs, maps, pixel = [], [], {}, {}, {}
    for key_, model in models.items():
        net = infer.load_model(model, deploy_of(args, key_, model), args.gpu)
        prob = infer.predict(net, test["data"], args.batch, desc=f"{key_}: real test")
        val_prob = infer.predict(net, val["data"], args.batch, desc=f"{key_}: real val")
        if key_ == "before":
            probs["before_synthetic"] = infer.predict(net, synthetic["data"], args.batch,
                                                      desc="before: synthetic test")
        maps[key_] = {k: object_table.whole_image_maps(net, full[k]["images"], f"{key_}: whole {k} images")
                      for k in ("train", "val", "test")}
        del net
        if key_ == "contour":  # Table 1 is the report's two-class net; this one's pixels go to the object table
            pixel[key_] = contour_pixel_mcc(prob, val_prob, test, val, args)
            continue
        probs[key_] = prob
        res, model_table = model_rows(key_, model, prob, val_prob, test, val, out, args)
        rows += model_table
        curves.append((f"ours: {key_}", res))
    otsu = otsu_row(otsu_pred, otsu_thresholds, test, args)
    rows.append(otsu)

    syn = E.evaluate_arrays(probs["before_synthetic"], synthetic["label"], n_thresholds=args.thresholds)
    record = E.write_outputs(syn, out / "before_synthetic", title="before fine-tuning, synthetic test",
                             model=str(models["before"]), data=str(paths["synthetic_test"]), split="test")
    rows.append(row("ours: before, synthetic test", ("before", "synthetic_test", "test-optimal"), record,
                    M.bootstrap(syn["pos"], syn["neg"], index=None, n_boot=args.bootstrap, seed=args.seed)))

    for name, prob in probs.items():
        with files.atomic_file(out / f"probs_{name}.npy") as tmp:
            np.save(tmp, prob)  # float32: recomputed metrics match the table exactly
    # The paper's operating points in the colour of our matching curve (before C0, after C1).
    points = [("Otsu per image", 1 - otsu["specificity"], otsu["recall"], "s", "k")]
    points += [(p["name"], 1 - p["specificity"], p["recall"], m, c) for p, m, c in zip(PAPER, "oD", ("C0", "C1"))]
    save_figure(E.plot_roc(curves, title="ROC on the real test set", points=points), out / "roc.png")

    n_images = int(len(np.unique(test["source_index"])))
    text = ("Table 1: pixel-wise scores on the real test set. t* on test: MCC-optimal threshold on the test "
            "set (the paper's protocol); t from val: MCC-optimal threshold on the validation split. "
            f"[95% bootstrap intervals, {args.bootstrap} replicates, resampling the {n_images} "
            "test images (the synthetic row: its patches).]\n\n" + markdown(rows, PAPER))
    val_thresholds = {r["model"]: r["threshold"] for r in rows if r["protocol"] == "val-threshold"}
    val_thresholds.update({k: t for k, (t, _) in pixel.items()})
    val_thresholds = {k: t for k, t in val_thresholds.items() if t == t}  # an undefined (NaN) one adds nothing
    train = full["train"] if full["train"]["names"] else None
    object_rows, instances = object_table.evaluate_objects(maps, full["val"], full["test"], val_thresholds,
                                                           train=train)
    sets = {"val": full["val"], "test": full["test"], **({"train": train} if train else {})}
    for i, object_row in enumerate(object_rows):
        key_ = object_row["model"]
        if key_ in models:
            net = infer.load_model(models[key_], deploy_of(args, key_, models[key_]), args.gpu)
            object_rows[i], instances[key_], maps[key_]["test"] = object_table.own_scale_row(
                object_row, net, maps[key_], sets, dataset["nucleus_diameter_px"])
            del net
    chosen_on = (f"the first {len(train['names'])} images of {paths['train_full']} and " if train else "") \
        + str(paths["val_full"])
    mcc = {r["model"]: r["mcc"] for r in rows if r["protocol"] in ("val-threshold", "otsu-per-image")}
    mcc.update({k: m for k, (_, m) in pixel.items()})
    for object_row in object_rows:
        object_row["pixel_mcc"] = mcc.get(object_row["model"])
        model = models.get(object_row["model"])
        if model is not None:
            object_row.update(model_path=str(model.resolve()), model_sha256=files.sha256_file(model))
            model_params.write_model_params(model, object_row["params"], val=object_row["val"], dataset=dataset,
                                            chosen_on=chosen_on,
                                            working_diameter_px=object_row["working_diameter_px"])
    text += "\n" + object_table.write_outputs(out, object_rows, full["val"], full["test"], train)
    segment_whole_images(out / "segment", full["test"], maps["after"]["test"], instances["after"],
                         next(r for r in object_rows if r["model"] == "after"), args.images)
    files.write_text(out / "table1.md", text)
    meta = {"models": {k: str(v) for k, v in models.items()},
            "deploy": {k: str(deploy_of(args, k, v)) for k, v in models.items()},
            "data": {k: str(v) for k, v in paths.items()},
            "n_test_patches": int(len(test["label"])), "n_test_images": n_images,
            "bootstrap": {"replicates": args.bootstrap, "seed": args.seed, "unit": "test image",
                          "interval": "95% percentile"},
            "n_thresholds": args.thresholds}
    # Written last: its digest marks the stage complete.
    files.write_json(out / "table1.json", {"schema_version": TABLE1_SCHEMA, "inputs_sha256": key, "rows": rows,
                                           "paper": PAPER, **meta})
    return text


def _main(argv=None):
    print(run(parse_args(argv)), end="")


def main(argv=None):
    """Run the command; return its exit status (see cellfcn.cli)."""
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
