"""The object-level table of `make evaluate` (:mod:`tools.evaluate`): nuclei found and counted, beside Table 1.

Nuclei are cut out of a probability map by :func:`cellfcn.objects.instances_from_probs` (threshold, opening,
removal of small objects, marker-based watershed on the distance transform). Its parameters are chosen per model
on the whole training and validation images (``train_full.h5``, ``val_full.h5``) by
:func:`cellfcn.objects.choose_instance_params` (pooled F1 at IoU 0.5 over a small grid), never on test; the
validation images alone give each model's val F1 (no net trained on them). The chosen setting is then scored on
the whole test images (``test_full.h5``) against their ground-truth instance labels (``labels/<i>``, written by
``data_prep``): per image and pooled, precision, recall and F1 at IoU 0.5 (one-to-one Hungarian matching), the
DSB2018 score and the count errors.

Models: ``before`` and ``after`` fine-tuning (probability maps of the whole images, tiled by
:func:`tools.infer.segment_image`), ``contour``, the instance-aware 3-class net after fine-tuning (its nuclei
come from :func:`cellfcn.objects.instances_from_contour`: markers from its interior map, the marker threshold
chosen the same way), and ``otsu``, the classical baseline: Otsu's threshold per whole image, then the
same distance-transform watershed as the two-class nets, its opening and minimum area chosen the same way.

The nets' rows are then scored with every image at its own scale (:func:`own_scale_row`,
:func:`tools.infer.own_scale_maps`: a second pass of the net with the image resized so that its nuclei, as the
first pass found them, have the model's working diameter), the working diameter chosen on the same images
after the parameters, the parameters then chosen again on those images at that diameter (the maps they will
cut); the one-pass parameters and scores stay in the row (``dataset_scale``).

The nets' nuclei grow to the model's validation pixel threshold (Table 1's MCC-optimal one,
``extent_threshold``) wherever the grid's threshold is higher: the high threshold parts touching nuclei, the
pixel-optimal one draws their outlines. On the fine-tuned FCRN-A's own-scale maps (SEED=0, parameters as
chosen before) growing from 0.7 to its 0.43 moved the DSB score from 0.577 to 0.677 on the validation images and
0.546 to 0.619 on the test images, F1 unchanged (0.920 and 0.901).

Writes ``objects.json`` (``schema_version``, one row per model: chosen ``params``, the images they were chosen
on and their F1/DSB there, validation F1/DSB, for the nets the working diameter and the one-pass scores,
``pooled`` scores, per-image ``images``, and for the nets ``model_path`` and ``model_sha256``; undefined
ratios are ``null``) and ``objects.md``. :mod:`tools.evaluate` also writes each net's chosen parameters beside
its model (:mod:`tools.model_params`), where ``make segment`` finds them.
"""
import math
import sys

import h5py
import numpy as np

from cellfcn import files, scale, schema
from cellfcn import objects as O
from cellfcn.errors import InputError
from tools import infer

OBJECTS_SCHEMA = 4
# The parameter grids searched on the training and validation images (kept small: each setting is a watershed
# per image); make evaluate adds each model's Table 1 validation threshold to the thresholds.
NET_GRID = {"thresholds": (0.3, 0.5, 0.7), "opening_radii": (0, 1), "min_areas": (10, 30)}
# The contour net's interior map is confident even on the narrow bridges between touching nuclei: on the
# validation images only markers at 0.9-0.98 separated them (F1 0.85 at 0.7, 0.92 at 0.97, 0.89 at 0.98).
CONTOUR_GRID = {**NET_GRID, "marker_thresholds": (0.5, 0.7, 0.8, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)}
OTSU_GRID = {"thresholds": (0.5,), "opening_radii": (0, 1, 2), "min_areas": (10, 30)}  # maps are 0/1
NAMES = {"before": "ours: before fine-tuning", "after": "ours: after fine-tuning",
         "contour": "ours: 3 classes (contour), skips, after fine-tuning", "otsu": "Otsu per image + watershed"}
POOLED = ("n_images", "n_gt", "n_pred", "precision", "recall", "f1", "dsb_score", "mean_image_dsb_score",
          "mean_abs_count_error", "mean_rel_count_error")
PER_IMAGE = ("n_gt", "n_pred", "precision", "recall", "f1", "dsb_score", "count_error", "rel_count_error")


def load_full(path):
    """Whole images and their instance labels from a ``<split>_full.h5`` file.

    Returns
    -------
    dict
        ``names`` (list of str), ``images`` (list of (H, W) float32 in [0, 1]), ``labels`` (list of (H, W)
        int32), in index order.

    Raises
    ------
    InputError
        Missing file, no instance labels (a dataset built before they existed: the connected components of
        its masks would merge touching nuclei in the truth, so it is refused), or shapes that differ.
    """
    if not path.is_file():
        raise InputError(f"whole-image file not found: {path} (run `make data`)")
    out = {"names": [], "images": [], "labels": []}
    with h5py.File(path, "r") as f:
        if "images" not in f or "labels" not in f:
            raise InputError(f"{path} has no instance labels (labels/<i>): a dataset of an older version; "
                             "rebuild it with `make data`")
        for key in sorted(f["images"], key=int):
            if key not in f["labels"]:
                raise InputError(f"{path}: images/{key} has no labels/{key}: rebuild it with `make data`")
            image, labels = f["images"][key][()].astype(np.float32), f["labels"][key][()]
            if image.ndim != 2 or labels.shape != image.shape or not np.issubdtype(labels.dtype, np.integer):
                raise InputError(f"{path}: images/{key} and labels/{key} must be 2-D of the same shape, the "
                                 "labels integers")
            name = f["images"][key].attrs.get("name", key)
            out["names"].append(name.decode() if isinstance(name, bytes) else str(name))
            out["images"].append(image)
            out["labels"].append(labels.astype(np.int32))
    return out


def whole_image_maps(net, images, desc):
    """The maps of whole images (tiled forward passes, :func:`tools.infer.segment_image`), with a progress
    bar."""
    from tqdm import tqdm

    return [infer.segment_image(net, image) for image in tqdm(images, desc=desc, unit="image", file=sys.stderr,
                                                                 leave=False)]


def number(value):
    """A float for JSON: NaN (an undefined ratio) becomes None."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def score_params(key, maps, sets, params):
    """Score fixed instance parameters: the validation images alone and every test image.

    Returns
    -------
    fields : dict
        ``model``, ``name``, ``params``, ``val`` (pooled F1 and DSB score of the validation images), ``pooled``
        and ``images`` (per test image) scores.
    predictions : list of (H, W) int32
        Instance labels of the test images.
    """
    val = O.pooled_object_scores(O.object_scores(gt, O.instances_from_maps(m, **params))
                                 for gt, m in zip(sets["val"]["labels"], maps["val"]))
    predictions = [O.instances_from_maps(m, **params) for m in maps["test"]]
    scores = [O.object_scores(gt, pred) for gt, pred in zip(sets["test"]["labels"], predictions)]
    pooled = O.pooled_object_scores(scores)
    at = O.DSB_IOU_THRESHOLDS.index(O.MATCH_IOU)
    return {"model": key, "name": NAMES[key], "params": dict(params),
            "val": {k: number(val[k]) for k in ("f1", "dsb_score")},
            "pooled": {**{k: number(pooled[k]) for k in POOLED},
                       **{k: pooled[k][at] for k in ("tp", "fp", "fn")}},
            "images": [{"image": name, **{k: number(s[k]) for k in PER_IMAGE}}
                       for name, s in zip(sets["test"]["names"], scores)]}, predictions


def model_row(key, maps, sets, grid):
    """Choose the instance parameters on the training and validation images, score them on the test images.

    Parameters
    ----------
    key : str
    maps : dict of split -> list of maps
        ``val`` and ``test``, and ``train`` when the choice uses the training images too.
    sets : dict of split -> :func:`load_full` dict
        The same splits.
    grid : dict
        Keyword arguments of :func:`cellfcn.objects.choose_instance_params`.

    Returns
    -------
    row : dict
        :func:`score_params`'s fields and ``grid``, ``chosen_on`` (images per split), ``choice`` (pooled F1 and
        DSB score of the chosen setting on those images).
    predictions : list of (H, W) int32
        Instance labels of the test images.
    """
    choice = [k for k in ("train", "val") if k in maps]
    chosen = O.choose_instance_params([m for k in choice for m in maps[k]],
                                      [g for k in choice for g in sets[k]["labels"]], **grid,
                                      progress=f"{key}: parameters")
    row, predictions = score_params(key, maps, sets, chosen["params"])
    row.update(grid=grid, chosen_on={k: len(maps[k]) for k in choice},
               choice={k: number(chosen["scores"][k]) for k in ("f1", "dsb_score")})
    return row, predictions


def own_scale_row(row, net, maps, sets, dataset_diameter, ratios=scale.WORKING_RATIOS, forward=infer.forward_image):
    """A net's row again, with every image at its own scale (:func:`tools.infer.own_scale_maps`).

    The working diameter is the ratio of ``dataset_diameter`` whose maps, cut with the row's parameters, score
    the best pooled F1 on the row's choice images (the smallest on a tie); the parameters are then chosen again
    (the row's grid) on those images at that diameter. The row's parameters and scores at the dataset's scale
    move to ``dataset_scale``.

    Parameters
    ----------
    row : dict
        From :func:`model_row`.
    net : caffe.Net
        The row's model.
    maps : dict of split -> list of maps
        The row's maps at the dataset's scale (the first pass).
    sets : dict of split -> :func:`load_full` dict
    dataset_diameter : float
        The training nuclei's median diameter at the dataset's scale.
    ratios : sequence of float
    forward : callable
        As in :func:`tools.infer.segment_image`.

    Returns
    -------
    row : dict
        ``row`` with ``working_ratio``, ``working_diameter_px``, ``working_choice`` (F1 on the choice images per
        ratio), ``params``, ``choice``, ``val``, ``pooled`` and ``images`` (with each test image's
        ``own_factor``) at the images' own scales, and ``dataset_scale`` (the parameters, pooled F1, DSB score,
        cells found and val F1 before).
    predictions : list of (H, W) int32
        Instance labels of the test images.
    test_maps : list of ndarray
        The test images' maps at their own scales.
    """
    from tqdm import tqdm

    choice = list(row["chosen_on"])

    def own(split, working, params):
        pairs = zip(sets[split]["images"], maps[split])
        return [infer.own_scale_maps(net, image, params, working, forward=forward, first=first)
                for image, first in tqdm(list(pairs), desc=f"{row['model']}: {split} at own scale", unit="image",
                                         file=sys.stderr, leave=False)]

    best = None
    tries = []
    for ratio in ratios:
        scaled = {k: [m for m, _, _ in own(k, ratio * dataset_diameter, row["params"])] for k in choice}
        scores = O.pooled_object_scores(O.object_scores(gt, O.instances_from_maps(m, **row["params"]))
                                        for k in choice for gt, m in zip(sets[k]["labels"], scaled[k]))
        tries.append({"ratio": ratio, "f1": number(scores["f1"]), "dsb_score": number(scores["dsb_score"])})
        if best is None or scores["f1"] > best[0]["f1"]:
            best = (scores, ratio, scaled)
    _, ratio, scaled = best
    # The parameters are chosen again on the maps they will cut: the same grid, the choice images' maps at
    # the working diameter. Those maps were measured with the first parameters; the validation and test
    # images' are measured again with the new ones, as make segment will.
    chosen = O.choose_instance_params([m for k in choice for m in scaled[k]],
                                      [g for k in choice for g in sets[k]["labels"]], **row["grid"],
                                      progress=f"{row['model']}: parameters at the working diameter")
    params, working = chosen["params"], ratio * dataset_diameter
    val = own("val", working, params) if params != row["params"] else [(m, None, None) for m in scaled["val"]]
    test = own("test", working, params)
    test_maps = [m for m, _, _ in test]
    fields, predictions = score_params(row["model"], {"val": [m for m, _, _ in val], "test": test_maps}, sets,
                                       params)
    for record, (_, factor, _) in zip(fields["images"], test):
        record["own_factor"] = factor
    before = {"params": row["params"], "f1": row["pooled"]["f1"], "dsb_score": row["pooled"]["dsb_score"],
              "n_pred": row["pooled"]["n_pred"], "val_f1": row["val"]["f1"]}
    return {**row, **fields, "working_ratio": ratio, "working_diameter_px": working, "working_choice": tries,
            "choice": {k: number(chosen["scores"][k]) for k in ("f1", "dsb_score")},
            "dataset_scale": before}, predictions, test_maps


def evaluate_objects(maps, val, test, val_thresholds=None, train=None):
    """Object-level rows of every model.

    Parameters
    ----------
    maps : dict of model key -> {"val": list of maps, "test": list of maps[, "train": list of maps]}
        Maps of the network models (``before``, ``after``, ``contour``; :func:`whole_image_maps`), in file
        order; ``train`` with ``train``.
    val, test : dict
        From :func:`load_full`.
    val_thresholds : dict of model key -> float, optional
        A threshold chosen on the validation data to add to that model's grid (``make evaluate`` adds Table
        1's MCC-optimal validation threshold: a model whose probabilities sit below the fixed grid, as a
        briefly trained one's may, still gets a threshold that finds its nuclei), and the ``extent_threshold``
        its nuclei grow to.
    train : dict, optional
        From :func:`load_full`: the whole training images, chosen on together with the validation images.
        Three validation images are too few: their best setting for the contour net (F1 0.92 there) split
        the test images' nuclei too often (0.86), the one of all 33 images carried over better (0.88).

    Returns
    -------
    rows : list of dict
        One per model (the networks', then ``otsu``), see :func:`model_row`.
    predictions : dict of model key -> list of instance label images of the test images
    """
    val_thresholds = val_thresholds or {}
    sets = {"val": val, "test": test, **({"train": train} if train is not None else {})}
    grids = {}
    for key in maps:
        grid = CONTOUR_GRID if np.ndim(maps[key]["val"][0]) == 3 else NET_GRID
        extra = [round(float(val_thresholds[key]), 4)] if key in val_thresholds else []
        grids[key] = {**grid, "thresholds": tuple(sorted({*grid["thresholds"], *extra})),
                      **({"extent_threshold": extra[0]} if extra else {})}
    grids["otsu"] = OTSU_GRID
    maps = {**maps, "otsu": {k: O.otsu_maps(sets[k]["images"]) for k in sets}}
    rows, predictions = [], {}
    for key, grid in grids.items():
        row, predictions[key] = model_row(key, {k: maps[key][k] for k in sets}, sets, grid)
        rows.append(row)
    return rows, predictions


def _cell(value, digits=3):
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(rows):
    """The object-level table in Markdown (threshold: of the nucleus map, then the contour net's marker
    threshold on its interior map, in parentheses the extent threshold the nuclei grow to)."""
    header = ["Model", "threshold", "opening", "min area", "precision", "recall", "F1", "DSB score",
              "mean image DSB", "cells (truth / found)", "mean abs count error", "mean rel count error",
              "val F1", "pixel MCC", "working diameter (px)", "F1 at the dataset's scale"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        p, s = row["params"], row["pooled"]
        threshold = "Otsu" if row["model"] == "otsu" else f"{p['threshold']:.2f}"
        if "marker_threshold" in p:
            threshold += f" / {p['marker_threshold']:.2f}"
        if p.get("extent_threshold") is not None:
            threshold += f" ({p['extent_threshold']:.2f})"
        cells = [row["name"], threshold, str(p["opening_radius"]), str(p["min_area"]),
                 *(_cell(s[k]) for k in ("precision", "recall", "f1", "dsb_score", "mean_image_dsb_score")),
                 f"{s['n_gt']} / {s['n_pred']}", _cell(s["mean_abs_count_error"], 1),
                 _cell(s["mean_rel_count_error"]), _cell(row["val"]["f1"]), _cell(row.get("pixel_mcc")),
                 _cell(row.get("working_diameter_px"), 1), _cell(row.get("dataset_scale", {}).get("f1"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def caption(n_images, n_val, n_train=0):
    """The text above the table."""
    chosen_on = f"the {n_train} training and {n_val} validation images" if n_train else f"the {n_val} validation images"
    return (f"Object-level results on the {n_images} whole real test images: nuclei from a threshold, an "
            "opening, the removal of small objects and a marker-based watershed on the distance transform (the "
            "contour net: markers from its interior map), then grown to the model's pixel threshold (in "
            f"parentheses), each model's parameters chosen on {chosen_on} (pooled F1; val F1: the validation "
            "images alone). Precision, recall "
            "and F1: unique one-to-one matching at IoU >= 0.5, pooled over the images; DSB score: mean over "
            "IoU 0.5-0.95 of TP / (TP + FP + FN), pooled (mean image DSB: its mean over images); count "
            "errors: |found - true| per image, absolute and relative to the true count; pixel MCC: the "
            "model's nucleus pixels on the test patches at its validation threshold (Table 1's protocol). The "
            "nets' images at their own scale (make segment's DIAMETER=auto): each resized so that its nuclei, as "
            "the net's first pass found them, have the model's working diameter, chosen with its parameters "
            f"from {', '.join(f'{r:g}' for r in scale.WORKING_RATIOS)} times the training nuclei's, the "
            "parameters then chosen again at that diameter; F1 at the dataset's scale: one pass at the "
            "dataset's factor with the parameters chosen there.\n\n")


def write_outputs(out, rows, val, test, train=None):
    """Write ``objects.json`` and ``objects.md`` into ``out``; return the Markdown text."""
    train_names = train["names"] if train is not None else []
    text = ("Counting cells (object level). " + caption(len(test["names"]), len(val["names"]), len(train_names))
            + markdown(rows))
    files.write_text(out / "objects.md", text)
    files.write_json(out / "objects.json", {"schema_version": OBJECTS_SCHEMA, "match_iou": O.MATCH_IOU,
                                            "dsb_iou_thresholds": list(O.DSB_IOU_THRESHOLDS),
                                            "train_images": train_names, "val_images": val["names"],
                                            "test_images": test["names"], "rows": rows})
    return text


_RATIO, _COUNT = schema.number(0, 1, null=True), schema.integer(0)  # null: undefined (number())


def _objects_rows(table):
    models = [r["model"] for r in table["rows"]]
    missing = next((m for m in ("before", "after", "otsu") if m not in models), None)
    if missing:
        return f"rows has no row for model={missing}"
    return next((f"row {r['model']} scores {len(r['images'])} images, not the {len(table['test_images'])} test "
                 "images" for r in table["rows"] if len(r["images"]) != len(table["test_images"])), None)


#: What ``objects.json`` holds (:func:`load_objects`).
OBJECTS = schema.Schema("object-level results", OBJECTS_SCHEMA, "make evaluate", {
    "train_images": [str], "val_images": [str], "test_images": [str],
    "rows": [{"model": str, "name": str,
              "params": {"threshold": schema.number(0, 1), "opening_radius": _COUNT, "min_area": _COUNT},
              "chosen_on": {"val": _COUNT}, "choice": {"f1": _RATIO, "dsb_score": _RATIO},
              "val": {"f1": _RATIO, "dsb_score": _RATIO},
              "pooled": {"n_images": _COUNT, "n_gt": _COUNT, "n_pred": _COUNT, "tp": _COUNT, "fp": _COUNT,
                         "fn": _COUNT, "precision": _RATIO, "recall": _RATIO, "f1": _RATIO, "dsb_score": _RATIO,
                         "mean_image_dsb_score": _RATIO, "mean_abs_count_error": schema.number(0, null=True),
                         "mean_rel_count_error": schema.number(0, null=True)},
              "images": [{"image": str, "n_gt": _COUNT, "n_pred": _COUNT, "precision": _RATIO, "recall": _RATIO,
                          "f1": _RATIO, "dsb_score": _RATIO, "count_error": schema.integer(-math.inf),
                          "rel_count_error": schema.number(0, null=True)}]}]}, check=_objects_rows)


def load_objects(path):
    """Read ``objects.json`` and check it against :data:`OBJECTS` (one line naming the first problem and `make
    evaluate`)."""
    return schema.load(path, OBJECTS)
