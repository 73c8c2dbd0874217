"""The magnification test: does ``make segment`` find the net's scale in images taken at another magnification?

The real test images (the mnfinder wheel's ``test-data``, the duplicate left out: :mod:`data_prep.mnfinder`)
and their instance labels are resized by 0.5, 0.67, 1.5 and 2, as if taken at those magnifications (the raw
image bilinearly, with anti-aliasing when shrinking; the labels as ``data_prep`` resizes them). The images of
each magnification are segmented as ``make segment`` segments a folder (:mod:`tools.segment`: the model's own
parameters), twice: with ``--diameter auto`` (the run's factor from the images' own estimates, then each image
at its own scale for the model's working diameter, :mod:`cellfcn.scale`) and with the known factor, the
dataset's scale divided by the magnification, in one pass; magnification 1 with ``--diameter auto`` is the
native reference. Per magnification: the run's factor and the images' own estimates against the true factor,
the factors the images were cut at against their ideal ones, and object F1 at IoU 0.5 and the DSB score pooled
over the images, with the estimate and with the known factor. Each image's ``ideal_factor``, the dataset's
diameter over the median diameter of its true nuclei, shows how far its nuclei differ from the training
data's.

Writes ``<out>/magnification.json`` and ``magnification.md``; a rerun with the same model, parameters, images
and code finds them up to date.
"""
import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from cellfcn import cli, files, schema
from cellfcn import objects as O
from cellfcn import scale
from cellfcn.errors import CellfcnError, InputError
from tools import object_table, infer, model_params, segment

MAGNIFICATIONS = (0.5, 0.67, 1.5, 2.0)
SCHEMA = 2
#: The issue's goals: estimated factor within 15% of the true one, F1 within 0.03 of native.
FACTOR_GOAL = 0.15
F1_GOAL = 0.03


def magnify(gray, labels, magnification, name="image"):
    """An image and its instance labels as if taken at ``magnification`` times the original's.

    Parameters
    ----------
    gray : (H, W) array_like
        The raw single-channel image.
    labels : (H, W) array_like of int
        Its instance labels.
    magnification : float
    name : str
        For error messages.

    Returns
    -------
    image : (h, w) float32
        Raw intensities resized (bilinear, anti-aliased when shrinking), ``h = round(H * magnification)``.
    labels : (h, w) int32
        The labels resized as ``data_prep`` resizes masks (:func:`data_prep.real.prepare_pair`).
    """
    from skimage.transform import resize

    from data_prep.real import prepare_pair

    gray = np.asarray(gray, dtype=np.float32)
    if magnification == 1:
        return gray, np.asarray(labels, dtype=np.int32)
    resized_labels = prepare_pair(gray, labels, name, scale=magnification)[2]
    image = resize(gray, resized_labels.shape, order=1, anti_aliasing=magnification < 1, preserve_range=True)
    return image.astype(np.float32), resized_labels


def ideal_factor(labels, dataset_diameter):
    """The factor that would bring an image's true nuclei (median diameter) to the training data's; NaN when it
    has too few."""
    diameter = scale.median_diameter(labels)
    return dataset_diameter / diameter if np.isfinite(diameter) else float("nan")


def wheel_test_images(wheel, max_images=None):
    """(name, raw gray image, instance labels) of the wheel's test pairs, in name order."""
    from data_prep import mnfinder
    from cellfcn.images import to_gray

    pairs = mnfinder.list_pairs(mnfinder.check_wheel(wheel))["test"][:max_images]
    return [(name, to_gray(image, name=name), labels)
            for name, image, labels, _, _ in mnfinder.read_pairs(wheel, pairs, "reading test images")]


def _pooled(scores):
    pooled = O.pooled_object_scores(scores)
    return {k: object_table.number(pooled[k]) for k in ("n_gt", "n_pred", "f1", "dsb_score", "mean_rel_count_error")}


def evaluate(net, images, settings, magnifications=MAGNIFICATIONS):
    """Segment every image at every magnification with the estimated and the known factor; score them.

    Parameters
    ----------
    net : caffe.Net
    images : list of (name, gray, labels)
        From :func:`wheel_test_images`.
    settings : dict
        ``params``, ``dataset``, ``channel``, ``tile``, ``working_diameter_px`` (:mod:`tools.segment`).
    magnifications : sequence of float

    Returns
    -------
    dict
        ``native``: the scores at magnification 1 with ``--diameter auto``; ``rows``: one per magnification
        (1 first): ``true_factor``, the run's estimated ``factor`` (:func:`cellfcn.scale.run_factor` of the images'
        own estimates, as ``make segment`` chooses it for a folder), the images' own estimates against the true
        factor, each image's ``image_factor`` (the run's factor times its own scale's, with a working diameter)
        against its ideal one (the working diameter over its true nuclei's median diameter), ``auto`` and
        ``known`` scores, and ``per_image`` records.
    """
    from tqdm import tqdm

    dataset, working = settings["dataset"], settings["working_diameter_px"]
    rows = []
    steps = tqdm(total=len(images) * (1 + len(magnifications)), desc="magnification", unit="image",
                 file=sys.stderr, disable=None)
    for magnification in (1.0, *magnifications):
        true = dataset["scale"] / magnification
        magnified = [(name, *magnify(gray, labels, magnification, name)) for name, gray, labels in images]
        own = [segment.estimate_raw(image, name, settings) for name, image, _ in magnified]
        factor, _ = scale.run_factor([e["factor"] if e["estimated"] else None for e in own], dataset["scale"])
        scores, per_image = {"auto": [], "known": []}, []
        for (name, image, truth), estimate in zip(magnified, own):
            record = {"image": name, "n_gt": int(len(np.unique(truth[truth > 0]))),
                      "own_factor": estimate["factor"] if estimate["estimated"] else None,
                      "ideal_factor": object_table.number(ideal_factor(truth, dataset["nucleus_diameter_px"]))}
            for key, used, diameter in (("auto", factor, working), ("known", true, None)):
                prepared = segment.prepare(image, None, name, used, dataset["percentiles"])
                _, found, own_factor = segment.segment_prepared(net, *prepared, settings["params"], settings["tile"],
                                                                working_diameter=diameter)
                result = O.object_scores(truth, found)
                scores[key].append(result)
                record[key] = {"f1": object_table.number(result["f1"]), "n_pred": result["n_pred"],
                               "factor": used * own_factor}
            record["image_factor"] = record["auto"]["factor"] if working else None
            record["ideal_image_factor"] = object_table.number(ideal_factor(truth, working)) if working else None
            per_image.append(record)
            steps.update()
        ratios = np.array([r["own_factor"] / true for r in per_image if r["own_factor"] is not None])
        image_ratios = np.array([r["image_factor"] / r["ideal_image_factor"] for r in per_image
                                 if r["image_factor"] and r["ideal_image_factor"]])
        rows.append({"magnification": magnification, "true_factor": true, "factor": factor,
                     "factor_ratio": factor / true,
                     "own_ratio_median": float(np.median(ratios)) if ratios.size else None,
                     "own_ratio_range": [float(ratios.min()), float(ratios.max())] if ratios.size else None,
                     "own_within_goal": int(np.sum(np.abs(ratios - 1) <= FACTOR_GOAL)),
                     "image_ratio_median": float(np.median(image_ratios)) if image_ratios.size else None,
                     "image_ratio_range": [float(image_ratios.min()), float(image_ratios.max())]
                     if image_ratios.size else None,
                     "image_within_goal": int(np.sum(np.abs(image_ratios - 1) <= FACTOR_GOAL)),
                     "auto": _pooled(scores["auto"]), "known": _pooled(scores["known"]), "per_image": per_image})
    steps.close()
    native = rows[0]["auto"]
    for row in rows:
        row["f1_auto_minus_native"] = None if None in (row["auto"]["f1"], native["f1"]) else \
            row["auto"]["f1"] - native["f1"]
    return {"native": native, "rows": rows}


def markdown(result):
    """The magnification table in Markdown, with its caption."""
    first = result["rows"][0]
    total = len(first["per_image"])
    lines = [f"Magnification test ({total} real test images, {first['auto']['n_gt']} nuclei at magnification 1; "
             f"model {Path(result['model']).name}; {result['machine']}): the images and their labels resized as "
             "if taken at another magnification, segmented with DIAMETER=auto (the run's factor for the "
             "images of one magnification: the median of their own classical estimates; then each image at its "
             "own scale, its nuclei as the net's first pass found them resized to the model's working diameter "
             f"{_diameter(result)}) and with the known factor (dataset scale / magnification, one pass). Own "
             "estimates: each image's classical one against the true factor; image factors: the factor each "
             "image's nuclei were cut at against its ideal one (working diameter / its true nuclei's median "
             f"diameter); median [min, max] and how many within {FACTOR_GOAL:.0%}. F1 at IoU 0.5 and DSB "
             "score pooled over the images; native: magnification 1 with DIAMETER=auto.", "",
             "| magnification | true factor | DIAMETER=auto factor (/ true) | own estimates / true | within 15% | "
             "image factors / ideal | within 15% | F1 auto | F1 known factor | F1 auto - native | DSB auto | "
             "DSB known factor |", "|" + "---|" * 12]

    def cell(value, signed=False):
        return "–" if value is None else (f"{value:+.3f}" if signed else f"{value:.3f}")

    def spread(median, interval):
        return "–" if interval is None else f"{median:.2f} [{interval[0]:.2f}, {interval[1]:.2f}]"

    for row in result["rows"]:
        lines.append(f"| {row['magnification']:g}{' (native)' if row['magnification'] == 1 else ''} | "
                     f"{row['true_factor']:.3f} | {row['factor']:.3f} ({row['factor_ratio']:.2f}) | "
                     f"{spread(row['own_ratio_median'], row['own_ratio_range'])} | "
                     f"{row['own_within_goal']} / {total} | "
                     f"{spread(row['image_ratio_median'], row['image_ratio_range'])} | "
                     f"{row['image_within_goal']} / {total} | "
                     f"{cell(row['auto']['f1'])} | {cell(row['known']['f1'])} | "
                     f"{cell(row['f1_auto_minus_native'], True)} | {cell(row['auto']['dsb_score'])} | "
                     f"{cell(row['known']['dsb_score'])} |")
    return "\n".join(lines) + "\n"


def _diameter(result):
    working = result.get("working_diameter_px")
    return f"({working:.1f} px)" if working else "(none: one pass at the run's factor)"


def _range(value):
    return None if value is None else schema.interval(0, math.inf)(value)


_F1_DSB = {"f1": schema.number(0, 1, null=True), "dsb_score": schema.number(0, 1, null=True)}
#: What ``magnification.json`` holds (:func:`load_result`), as :func:`markdown` reads it.
RESULT = schema.Schema("magnification test", SCHEMA, "make evaluate", {
    "model": str, "machine": str,
    "rows": [{"magnification": schema.positive(), "true_factor": schema.positive(), "factor": schema.positive(),
              "factor_ratio": schema.positive(), "own_ratio_median": schema.number(0, null=True),
              "own_ratio_range": _range, "own_within_goal": schema.integer(0),
              "image_ratio_median": schema.number(0, null=True), "image_ratio_range": _range,
              "image_within_goal": schema.integer(0),
              "auto": {**_F1_DSB, "n_gt": schema.integer(0)}, "known": _F1_DSB, "per_image": [dict],
              "f1_auto_minus_native": schema.number(-1, 1, null=True)}]},
    check=lambda result: None if result["rows"] else "rows is empty")


def load_result(path):
    """A magnification test's ``magnification.json``, checked (:data:`RESULT`)."""
    return schema.load(path, RESULT)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.magnification", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", help="trained weights with their <model>.params.json (default: the --objects model "
                                   "with the highest validation F1)")
    p.add_argument("--objects", help="objects.json of make evaluate, to choose the model when --model is not given")
    p.add_argument("--wheel", required=True, help="the mnfinder wheel (make data's cache holds it)")
    p.add_argument("--out", required=True, help="folder for magnification.json and magnification.md")
    p.add_argument("--max-images", type=int, help="only the first N test images (default: all)")
    p.add_argument("--machine", help="the machine, named in the table's caption (default: its core count)")
    p.add_argument("--tile", type=int, default=infer.TILE, help="largest window side (default: %(default)s)")
    p.add_argument("--gpu", type=int, help="CUDA device id (default: CPU)")
    p.add_argument("--force", action="store_true", help="recompute even if up to date")
    args = p.parse_args(argv)
    if not args.model and not args.objects:
        p.error("give --model, or --objects (make evaluate's objects.json) to take its best model")
    if args.max_images is not None and args.max_images < 1:
        p.error("--max-images must be positive")
    return args


def run(args):
    """Run the test, write its files and return the Markdown table (or the up-to-date one)."""
    import cellfcn
    import tools

    out = Path(args.out)
    files.check_writable(out / "magnification.json")
    model = Path(args.model) if args.model else segment.best_model(args.objects)[0]
    if not model.is_file():
        raise InputError(f"{model}: no such file (train it first)")
    if not Path(args.wheel).is_file():
        raise InputError(f"{args.wheel}: no such file (`make data` downloads it)")
    record = model_params.read_model_params(model)
    settings = {"params": record["params"], "dataset": record["dataset"], "channel": None, "tile": args.tile,
                "working_diameter_px": record["working_diameter_px"]}
    key = files.digest(record["model_sha256"], settings, files.sha256_file(args.wheel), args.max_images,
                       list(MAGNIFICATIONS), files.code_digest(cellfcn, tools))
    path = out / "magnification.json"
    if not args.force and path.is_file() and (out / "magnification.md").is_file():
        try:
            if files.read_json(path).get("key") == key:
                print(f"magnification: up to date ({path}; --force recomputes)", file=sys.stderr)
                return (out / "magnification.md").read_text()
        except CellfcnError:
            pass
    net = infer.load_model(model, None, args.gpu)
    started = time.monotonic()
    result = evaluate(net, wheel_test_images(args.wheel, args.max_images), settings)
    result.update(schema_version=SCHEMA, key=key, model=str(model.absolute()), model_sha256=record["model_sha256"],
                  params=record["params"], dataset=record["dataset"],
                  working_diameter_px=record["working_diameter_px"],
                  machine=args.machine or (f"{os.cpu_count()} CPU cores" if args.gpu is None else f"GPU {args.gpu}"),
                  estimate={k: getattr(scale, k) for k in ("TOLERANCE", "MAX_PASSES", "KEEP", "STEP", "MIN_AREA")},
                  goals={"factor_within": FACTOR_GOAL, "f1_within": F1_GOAL},
                  seconds=round(time.monotonic() - started, 1))
    text = markdown(result)
    files.write_json(path, result)
    files.write_text(out / "magnification.md", text)
    return text


def _main(argv=None):
    print(run(parse_args(argv)), end="")


def main(argv=None):
    """Run the command; return its exit status (see cellfcn.cli)."""
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
