"""Table 2: the report's claim and its section 7.3 suggestions, tested with several seeds (`make experiments`).

Rows (``*``: every seed of the set; the others on the first seed(s) only):

1. * synthetic only: the pretrained model (Table 1's "before");
2. * pretrained on synthetic, then fine-tuned on the real patches (the report's method);
3. * real patches only, from Xavier initialisation, with the fine-tuning schedule;
4.   real patches only, as many iterations as pretraining and fine-tuning together (equal compute);
5.   row 2, then the report's post-processing: opening and minimum object area, chosen on validation;
6.   rows 2 and 3 for each net variant of ``prototxt.net.VARIANTS`` (k5, pool2, wide);
7.   rows 2 and 3 with fewer real training patches (x8 augmentation each), same number of iterations.

Every model is scored like Table 1's honest protocol: the threshold that maximises MCC on its seed's
validation patches, applied to the real test patches (the same 15 images for every seed). Differences to row
2 carry 95% percentile bootstrap intervals paired over seeds and test images: each replicate resamples the
shared seeds and the test images, and both rows are scored on the same draw.

Everything lives under ``--out``: ``data/`` (one dataset per seed and training-set size, built by
``python -m data_prep``), ``runs/<run>/`` (``python -m tools.train``: resumes an interrupted run, skips a
finished one; ``score.json`` is cached by the digest of model, data and code), ``table2.json``,
``table2.md``, ``data_efficiency.png`` and ``finetune_curves.png``. Progress lines say which run of how many
is going and estimate the time left from the iterations done so far.
"""
import argparse
import inspect
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import cellfcn
import prototxt
from cellfcn import cli, files
from cellfcn.errors import CellfcnError, InputError
from prototxt import net
from tools import evaluate as E
from tools import infer
from tools import metrics as M
from tools import objects as O
from tools import parse_log
from tools.plotting import save_figure, score_axes

SCHEMA = 1
VARIANTS = tuple(v for v in net.VARIANTS if v != net.DEFAULT)
# Iteration counts are batches of 8. default: 6 synthetic epochs (200 patches) and 3 real epochs (440
# patches), chosen so that the whole set fits in 2 hours on 2 CPU cores; full: the lengths of `make
# reproduce` (20 and 12 epochs) and more seeds.
SETS = {
    "default": dict(seeds=(0, 1, 2), single=(0,), pretrain=150, finetune=165, real=55, sizes=(5, 14, 28),
                    synthetic_args=(), real_args=()),
    "full": dict(seeds=(0, 1, 2, 3, 4), single=(0, 1, 2), pretrain=500, finetune=660, real=55,
                 sizes=(5, 14, 28), synthetic_args=(), real_args=()),
    # A smoke run of every step on tiny data (QUICK=1, the tests).
    "quick": dict(seeds=(0, 1, 2), single=(0,), pretrain=2, finetune=2, real=4, sizes=(2,),
                  synthetic_args=("--n-images", "4", "--image-size", "128", "--n-train", "16", "--n-test", "8"),
                  real_args=("--n-val-images", "1", "--max-test-images", "1")),
}
BATCH = 8
# Opening radii and minimum areas (pixels) searched on the validation patches for row 5.
POST_GRID = dict(opening_radii=(0, 1, 2, 3), min_areas=(0, 10, 20, 40, 80))


class ExperimentError(CellfcnError):
    """A one-line reason the experiments cannot go on."""


# ------------------------------------------------------------------------------------------------ plan
def plan(name):
    """The datasets, runs and rows of an experiment set.

    Returns
    -------
    datasets : dict of key -> dict(kind, seed, n_train)
    runs : list of dict
        In execution order: ``id``, ``net``, ``stage``, ``data`` (dataset key), ``seed``, ``iterations``,
        ``weights`` (the id of the run whose model it starts from, or None).
    rows : list of dict
        ``row`` (1-7), ``key``, ``name``, ``runs`` (seed -> run id), ``post`` (row 5), ``n_real``, ``net``,
        ``init`` ('synthetic only', 'pretrained', 'xavier').
    """
    s = SETS[name]
    datasets, runs, rows = {}, {}, []

    def dataset(kind, seed, n_train=None):
        key = f"synthetic-s{seed}" if kind == "synthetic" else f"real-n{n_train}-s{seed}"
        datasets[key] = dict(kind=kind, seed=seed, n_train=n_train)
        return key

    def run(variant, stage, seed, n_real=None, iterations=None, weights=None):
        dataset("real", seed, s["real"])  # every model is scored on its seed's val and test splits
        data = dataset("synthetic", seed) if stage == "pretrain" else dataset("real", seed, n_real)
        init = "pre" if weights else "xavier"
        rid = (f"{variant}-pretrain-s{seed}" if stage == "pretrain" else
               f"{variant}-{init}-n{n_real}-i{iterations}-s{seed}")
        runs.setdefault(rid, dict(id=rid, net=variant, stage=stage, data=data, seed=seed, weights=weights,
                                  iterations=iterations or s["pretrain"]))
        return rid

    def method(variant, seed, n_real, pretrained, iterations=None):
        if pretrained:
            pre = run(variant, "pretrain", seed)
            return run(variant, "finetune", seed, n_real, s["finetune"], weights=pre)
        return run(variant, "finetune", seed, n_real, iterations or s["finetune"])

    def add(row, key, name, seeds, make, n_real=s["real"], variant=net.DEFAULT, init="pretrained", post=False):
        rows.append(dict(row=row, key=key, name=name, runs={sd: make(sd) for sd in seeds}, n_real=n_real,
                         net=variant, init=init, post=post))

    seeds, single, n = s["seeds"], s["single"], s["real"]
    for seed in seeds:  # the starred rows first, seed by seed: a stopped set already answers the main question
        method(net.DEFAULT, seed, n, True), method(net.DEFAULT, seed, n, False)
    add(1, "synthetic", "synthetic only (Table 1's before)", seeds, lambda sd: run(net.DEFAULT, "pretrain", sd),
        n_real=0, init="synthetic only")
    add(2, "pretrained", "pretrained, then fine-tuned (the report's method)", seeds,
        lambda sd: method(net.DEFAULT, sd, n, True))
    add(3, "xavier", "real only, Xavier initialisation, fine-tuning schedule", seeds,
        lambda sd: method(net.DEFAULT, sd, n, False), init="xavier")
    add(4, "xavier-equal", f"real only, equal compute ({s['pretrain'] + s['finetune']} iterations)", single,
        lambda sd: method(net.DEFAULT, sd, n, False, s["pretrain"] + s["finetune"]), init="xavier")
    add(5, "pretrained-post", "row 2 + opening and minimum area (chosen on validation)", seeds,
        lambda sd: method(net.DEFAULT, sd, n, True), post=True)
    for k in s["sizes"]:
        add(7, f"pretrained-n{k}", f"pretrained, fine-tuned on {k} real patches", single,
            lambda sd, k=k: method(net.DEFAULT, sd, k, True), n_real=k)
        add(7, f"xavier-n{k}", f"real only, {k} real patches", single,
            lambda sd, k=k: method(net.DEFAULT, sd, k, False), n_real=k, init="xavier")
    for v in VARIANTS:
        add(6, f"{v}-pretrained", f"{v}: pretrained, then fine-tuned", single, lambda sd, v=v: method(v, sd, n, True),
            variant=v)
        add(6, f"{v}-xavier", f"{v}: real only", single, lambda sd, v=v: method(v, sd, n, False), variant=v,
            init="xavier")
    rows.sort(key=lambda r: r["row"])
    return datasets, list(runs.values()), rows


# ----------------------------------------------------------------------------------------------- steps
def _call(cmd, what):
    proc = subprocess.run(cmd)
    if proc.returncode == 130:
        raise KeyboardInterrupt
    if proc.returncode != 0:
        raise ExperimentError(f"{what} failed (exit {proc.returncode}); run `make experiments` again to resume")


def build_dataset(out, key, spec, settings):
    """``python -m data_prep`` for one dataset (it skips a dataset that is up to date)."""
    folder = Path(out) / "data" / key
    if spec["kind"] == "synthetic":
        cmd = ["synthetic", *settings["synthetic_args"]]
    else:
        cmd = ["mnfinder", "--n-train", str(spec["n_train"]), *settings["real_args"]]
    _call([sys.executable, "-m", "data_prep", *cmd, "--out", str(folder), "--seed", str(spec["seed"]),
           "--format", "hdf5"], f"data_prep {key}")
    return folder


def train_run(out, run, gpu):
    """``python -m tools.train`` for one run; return its run.json."""
    folder = Path(out) / "runs" / run["id"]
    cmd = [sys.executable, "-m", "tools.train", "--stage", run["stage"], "--data", str(Path(out) / "data" / run["data"]),
           "--out", str(folder), "--format", "hdf5", "--batch", str(BATCH), "--seed", str(run["seed"]),
           "--net", run["net"], "--iterations", str(run["iterations"])]
    if run["weights"]:
        cmd += ["--weights", str(Path(out) / "runs" / run["weights"] / "final.caffemodel")]
    if gpu is not None:
        cmd += ["--gpu", str(gpu)]
    _call(cmd, f"training {run['id']}")
    return files.read_json(folder / "run.json", "run record")


def image_counts(pred, label, groups):
    """Confusion counts (tp, fp, tn, fn) per test image: int64 array (G, 4), images in ``np.unique`` order."""
    ids = np.unique(groups, return_inverse=True)[1]
    pred, label = pred.reshape(len(pred), -1), label.reshape(len(label), -1)
    tp = np.bincount(ids, (pred & label).sum(1), minlength=ids.max() + 1)
    fp = np.bincount(ids, (pred & ~label).sum(1), minlength=ids.max() + 1)
    pos = np.bincount(ids, label.sum(1), minlength=ids.max() + 1)
    total = np.bincount(ids, np.full(len(ids), label.shape[1]), minlength=ids.max() + 1)
    return np.stack([tp, fp, total - pos - fp, pos - tp], axis=1).astype(np.int64)


def postprocess(prob, threshold, opening_radius, min_area):
    """Threshold each patch, open it with a disk and remove smaller components (``tools.objects.clean_mask``).

    Each 128x128 test patch is processed alone, on exactly the pixels every row is scored on: a nucleus cut
    by the patch edge may fall below ``min_area``, so this underestimates the gain on whole images a little.
    """
    return np.stack([O.clean_mask(p >= threshold, opening_radius=opening_radius, min_area=min_area)[0]
                     for p in prob])


def choose_postprocess(prob, label, threshold, grid=POST_GRID):
    """The opening radius and minimum area with the best pooled MCC on the validation patches."""
    best = None
    for radius in grid["opening_radii"]:
        for area in grid["min_areas"]:
            pred = postprocess(prob, threshold, radius, area)
            mcc = M.binary_scores(pred, label)["mcc"]
            if best is None or mcc > best[0] + 1e-12:
                best = (mcc, radius, area)
    return dict(val_mcc=best[0], opening_radius=best[1], min_area=best[2])


def score_model(model, data, post, gpu):
    """Val-threshold scores of one model on a real dataset's test split (with row 5's post-processing too).

    Returns
    -------
    dict
        ``threshold`` (MCC-optimal on val), ``val_mcc``, the six metrics and ``auc`` on test at it,
        ``images`` (per test image tp, fp, tn, fn) and, when ``post``, the same under ``post``.
    """
    val, test = E.load_split(Path(data) / "val.h5"), E.load_split(Path(data) / "test.h5")
    network = infer.load_model(model, gpu=gpu)
    val_prob = infer.predict(network, val["data"], desc="val")
    test_prob = infer.predict(network, test["data"], desc="test")
    chosen = E.evaluate_arrays(val_prob, val["label"])
    res = E.evaluate_arrays(test_prob, test["label"], threshold=chosen["threshold"])
    out = dict(threshold=chosen["threshold"], val_mcc=chosen["metrics"]["mcc"], **res["metrics"], auc=res["auc"],
               images=image_counts(test_prob >= chosen["threshold"], test["label"], test["source_index"]).tolist())
    if post:
        params = choose_postprocess(val_prob, val["label"], chosen["threshold"])
        pred = postprocess(test_prob, chosen["threshold"], params["opening_radius"], params["min_area"])
        counts = image_counts(pred, test["label"], test["source_index"])
        out["post"] = dict(**params, **M.scores(*counts.sum(0)), auc=None, images=counts.tolist())
    return out


def scoring_code():
    """Digest of the code a score depends on (these functions and the modules they call), so that editing how
    Table 2 is drawn does not rescore every model."""
    functions = (score_model, image_counts, postprocess, choose_postprocess)
    return files.digest([inspect.getsource(f) for f in functions],
                        [files.sha256_file(m.__file__) for m in (infer, E, M, O)], files.code_digest(cellfcn, prototxt))


def cached_score(folder, data, post, gpu):
    """:func:`score_model` of ``folder/final.caffemodel``, cached in ``folder/score.json``."""
    model = Path(folder) / "final.caffemodel"
    key = files.digest(files.sha256_file(model), files.sha256_file(Path(data) / "val.h5"),
                       files.sha256_file(Path(data) / "test.h5"), post, POST_GRID, scoring_code())
    path = Path(folder) / "score.json"
    if path.is_file():
        old = files.read_json(path, "score")
        if old.get("inputs_sha256") == key:
            return old
    score = dict(score_model(model, data, post, gpu), inputs_sha256=key)
    files.write_json(path, score)
    return score


# ------------------------------------------------------------------------------------------------ table
def _mcc(counts):
    """MCC of summed counts along the last axis of ``counts`` (..., 4)."""
    return M.scores(counts[..., 0], counts[..., 1], counts[..., 2], counts[..., 3])["mcc"]


def paired_difference(a, b, n_boot=2000, seed=0):
    """Mean MCC difference of two rows over their shared seeds, with a 95% bootstrap interval.

    Parameters
    ----------
    a, b : dict of seed -> ndarray (G, 4)
        Per-test-image confusion counts of each row's model of that seed (the same test images).

    Returns
    -------
    dict
        ``diff`` (mean over the shared seeds of MCC(a) - MCC(b), all images), ``ci`` [low, high], ``seeds``.
        Each replicate draws the shared seeds and the test images with replacement, the same for both rows.
    """
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("the rows share no seed")
    ca, cb = (np.stack([np.asarray(x[sd], np.float64) for sd in seeds]) for x in (a, b))  # (S, G, 4)
    diff = float(np.mean(_mcc(ca.sum(1)) - _mcc(cb.sum(1))))
    rng = np.random.default_rng(seed)
    n_seeds, n_images = ca.shape[:2]
    weights = rng.multinomial(n_images, np.full(n_images, 1 / n_images), size=n_boot).astype(np.float64)  # (B, G)
    per_seed = _mcc(np.einsum("bg,sgk->bsk", weights, ca)) - _mcc(np.einsum("bg,sgk->bsk", weights, cb))  # (B, S)
    picks = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    reps = np.take_along_axis(per_seed, picks, axis=1).mean(1)
    low, high = np.percentile(reps, [2.5, 97.5])
    return dict(diff=diff, ci=[float(low), float(high)], seeds=seeds)


def row_entry(row, scores, seconds, reference, n_boot=2000):
    """One Table 2 row: per-seed values, mean and sd, the paired difference to row 2, training seconds.

    ``seconds`` maps run ids to their training seconds, the runs they start from included."""
    per_seed = {sd: (scores[rid]["post"] if row["post"] else scores[rid]) for sd, rid in row["runs"].items()}
    mcc = [per_seed[sd]["mcc"] for sd in sorted(per_seed)]
    entry = dict({k: row[k] for k in ("row", "key", "name", "net", "init", "n_real")},
                 seeds=sorted(per_seed), mcc_values=mcc, mcc_mean=float(np.mean(mcc)),
                 mcc_sd=float(np.std(mcc, ddof=1)) if len(mcc) > 1 else None,
                 f_score_mean=float(np.mean([per_seed[sd]["f_score"] for sd in per_seed])),
                 thresholds=[scores[rid]["threshold"] for rid in row["runs"].values()],
                 train_seconds_mean=float(np.mean([seconds[rid] for rid in row["runs"].values()])))
    aucs = [per_seed[sd]["auc"] for sd in per_seed if per_seed[sd]["auc"] is not None]
    entry["auc_mean"] = float(np.mean(aucs)) if aucs else None
    if row["post"]:
        entry["post"] = [{k: per_seed[sd][k] for k in ("opening_radius", "min_area")} for sd in sorted(per_seed)]
    if reference is not None and row["key"] != "pretrained":
        counts = {sd: np.asarray(per_seed[sd]["images"]) for sd in per_seed}
        entry["vs_row2"] = paired_difference(counts, reference, n_boot)
    return entry


def training_seconds(rid, info, by_id):
    """Seconds of a run including the run it starts from (pretraining counts for the fine-tuned models)."""
    weights = by_id[rid]["weights"]
    return info[rid]["seconds"] + (training_seconds(weights, info, by_id) if weights else 0.0)


def fmt(x, digits=3):
    return "–" if x is None else f"{x:.{digits}f}"


def table_cells(table):
    """Table 2 as (header, body) of strings: the one rendering, for Markdown and the report."""
    header = ["row", "model", "net", "real patches", "seeds", "MCC mean ± sd (per seed)", "F-score", "AUC",
              "Δ MCC vs row 2 [95% CI]", "training s"]
    body = []
    for r in table["rows"]:
        spread = f" ± {fmt(r['mcc_sd'])}" if r["mcc_sd"] is not None else ""
        delta = (f"{r['vs_row2']['diff']:+.3f} [{r['vs_row2']['ci'][0]:+.3f}, {r['vs_row2']['ci'][1]:+.3f}]"
                 if "vs_row2" in r else "")
        body.append([f"{r['row']}{'*' if len(r['seeds']) > 1 else ''}", r["name"], r["net"], str(r["n_real"]),
                     str(len(r["seeds"])), f"{fmt(r['mcc_mean'])}{spread} ({', '.join(fmt(v) for v in r['mcc_values'])})",
                     fmt(r["f_score_mean"]), fmt(r["auc_mean"]), delta, f"{r['train_seconds_mean']:.0f}"])
    return header, body


def caption(table):
    """What Table 2's numbers are."""
    s = table["settings"]
    return (f"{table['set']} set: {s['pretrain']} pretraining and {s['finetune']} fine-tuning iterations of batch "
            f"{table['batch']}, seeds {', '.join(map(str, s['seeds']))} for the starred rows. MCC, F-score and AUC "
            "on the real test patches at each model's validation-chosen threshold; Δ: difference to row 2 with a "
            "95% bootstrap interval paired over seeds and test images; training seconds per seed, pretraining "
            "included where a row starts from it.")


def _verdict(d, better, worse):
    low, high = d["ci"]
    if low > 0:
        return better
    if high < 0:
        return worse
    return "no difference the interval can resolve"


def findings(table):
    """Plain sentences answering the report's claim and suggestions from Table 2's numbers."""
    rows = {r["key"]: r for r in table["rows"]}
    two = rows["pretrained"]

    def vs(key, what, better, worse):
        r = rows[key]
        d = r["vs_row2"]
        return (f"{what}: MCC {fmt(r['mcc_mean'])} against row 2's {fmt(two['mcc_mean'])}, Δ {d['diff']:+.3f} "
                f"[{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] over seeds {', '.join(map(str, d['seeds']))}: "
                f"{_verdict(d, better, worse)}.")

    out = [vs("xavier", "Claim — pretraining on synthetic images, then fine-tuning, against the real patches "
                        "alone (row 3)", "the real patches alone do better", "pretraining helps"),
           vs("xavier-equal", "Equal compute (row 4)", "the real patches alone do better",
              "pretraining helps even at equal compute"),
           vs("pretrained-post", "Post-processing (row 5)", "it helps", "it hurts")]
    for v in VARIANTS:
        out.append(vs(f"{v}-pretrained", f"{v} (row 6, pretrained)", "better than FCRN-A", "worse than FCRN-A"))
    for d in table["data_efficiency"]:
        out.append(f"With {d['n_real']} real patches: pretrained {fmt(d['pretrained'])}, real only "
                   f"{fmt(d['xavier'])}, gain from pretraining {d['gain']['diff']:+.3f} "
                   f"[{d['gain']['ci'][0]:+.3f}, {d['gain']['ci'][1]:+.3f}].")
    return out


def markdown(table):
    """Table 2, its caption and the findings in Markdown."""
    lines = [f"Table 2 — {caption(table)}", "", E.markdown_table(*table_cells(table)).rstrip(), ""]
    lines += [f"- {sentence}" for sentence in findings(table)]
    lines += ["", f"Training time of all {table['n_runs']} runs: {table['train_seconds_total'] / 60:.1f} min; wall time "
                  f"of this `make experiments`: {table['wall_seconds'] / 60:.1f} min (runs finished by an earlier "
                  "call are not repeated)."]
    return "\n".join(lines) + "\n"


def plot_data_efficiency(table, path):
    """MCC against the number of real training patches (row 7 with rows 2 and 3 at the full set)."""
    fig, ax = score_axes("Data efficiency (real test MCC at the validation threshold)",
                         "real training patches (x8 augmentation)", "MCC")
    for init, label, colour in (("pretrained", "pretrained on synthetic, then fine-tuned", "C0"),
                                ("xavier", "real only (Xavier)", "C1")):
        points = [(r["n_real"], v) for r in table["rows"] if r["net"] == net.DEFAULT and r["init"] == init
                  and r["row"] in (2, 3, 7) for v in r["mcc_values"]]
        if not points:
            continue
        xs = sorted({x for x, _ in points})
        ax.plot(xs, [np.mean([v for x2, v in points if x2 == x]) for x in xs], "-o", color=colour, label=label)
        ax.plot(*zip(*points), ".", color=colour, alpha=0.5)
    ax.set_xscale("log")
    ax.legend()
    save_figure(fig, path)


def plot_curves(curves, path):
    """Validation loss against iteration for the fine-tuning runs of rows 2 and 3, every seed."""
    fig, ax = score_axes("Fine-tuning on the real patches: validation loss", "iteration", "validation loss")
    for (label, seed), (its, loss) in sorted(curves.items()):
        ax.plot(its, loss, "-" if label.startswith("pretrained") else "--", color=f"C{seed % 10}",
                label=f"{label}, seed {seed}")
    ax.legend(fontsize=7)
    save_figure(fig, path)


# -------------------------------------------------------------------------------------------------- run
def _clock(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def run_set(name, out, gpu=None, n_boot=2000):
    """Build, train, score and tabulate an experiment set; return the Table 2 dict."""
    settings = SETS[name]
    out = Path(out)
    files.check_writable(out / "table2.json", "experiments folder")
    datasets, runs, rows = plan(name)
    started = time.monotonic()
    for i, (key, spec) in enumerate(datasets.items(), start=1):
        print(f"experiments: dataset {i}/{len(datasets)}: {key}", flush=True)
        build_dataset(out, key, spec, settings)
    by_id = {r["id"]: r for r in runs}
    cost = {r["id"]: r["iterations"] * net.multiply_adds(r["net"]) for r in runs}  # for the estimate
    post_runs = {rid for row in rows if row["post"] for rid in row["runs"].values()}
    info, scores, done_cost, spent = {}, {}, 0.0, 0.0
    for i, r in enumerate(runs, start=1):
        left = sum(cost[x["id"]] for x in runs[i - 1:])
        eta = f", about {_clock(left * spent / done_cost)} left" if done_cost else ""
        print(f"experiments: run {i}/{len(runs)}: {r['id']} ({r['iterations']} iterations{eta})", flush=True)
        t0, wall0 = time.monotonic(), time.time()
        info[r["id"]] = train_run(out, r, gpu)
        real = out / "data" / f"real-n{settings['real']}-s{r['seed']}"
        scores[r["id"]] = cached_score(out / "runs" / r["id"], real, r["id"] in post_runs, gpu)
        if (out / "runs" / r["id"] / "run.json").stat().st_mtime >= wall0:  # trained now, not found done
            done_cost, spent = done_cost + cost[r["id"]], spent + time.monotonic() - t0
    seconds = {rid: training_seconds(rid, info, by_id) for rid in by_id}
    reference_row = next(row for row in rows if row["key"] == "pretrained")
    reference = {sd: np.asarray(scores[rid]["images"]) for sd, rid in reference_row["runs"].items()}
    by_key = {row["key"]: row for row in rows}
    efficiency = []
    for k in (*settings["sizes"], settings["real"]):
        pre, xav = (by_key[f"{init}-n{k}" if k != settings["real"] else init] for init in ("pretrained", "xavier"))
        counts = [{sd: np.asarray(scores[rid]["images"]) for sd, rid in r["runs"].items()} for r in (pre, xav)]
        efficiency.append(dict(n_real=k, pretrained=float(np.mean([scores[rid]["mcc"] for rid in pre["runs"].values()])),
                               xavier=float(np.mean([scores[rid]["mcc"] for rid in xav["runs"].values()])),
                               gain=paired_difference(counts[0], counts[1], n_boot)))
    table = dict(schema_version=SCHEMA, set=name, settings={k: v for k, v in settings.items() if not k.endswith("_args")},
                 batch=BATCH, variants={v: dict(parameters=net.learnable_parameters(v),
                                                receptive_field=net.receptive_field(v)) for v in net.VARIANTS},
                 rows=[row_entry(row, scores, seconds, reference, n_boot) for row in rows],
                 data_efficiency=efficiency,
                 n_runs=len(runs), train_seconds_total=float(sum(info[r["id"]]["seconds"] for r in runs)),
                 wall_seconds=time.monotonic() - started)
    curves = {}
    for row in rows:
        if row["key"] in ("pretrained", "xavier"):
            for sd, rid in row["runs"].items():
                _, test = parse_log.read_log(out / "runs" / rid / "train.log")
                curves[(row["key"], sd)] = (test["iteration"].tolist(), test["loss"].tolist())
    plot_data_efficiency(table, out / "data_efficiency.png")
    plot_curves(curves, out / "finetune_curves.png")
    files.write_json(out / "table2.json", table)
    files.write_text(out / "table2.md", markdown(table))
    return table


def load_table2(path):
    """Read ``table2.json`` and check its schema."""
    table = files.read_json(path, "Table 2 (run `make experiments`)")
    if table.get("schema_version") != SCHEMA:
        raise InputError(f"{path} has schema {table.get('schema_version')}, this version reads {SCHEMA}: "
                         "run `make experiments` again")
    return table


def _main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.experiments", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--out", required=True, help="experiments folder (e.g. runs/experiments)")
    p.add_argument("--set", choices=sorted(SETS), default="default", help="which set (default: %(default)s)")
    p.add_argument("--gpu", type=int, help="CUDA device id (needs `make caffe GPU=1`)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates (default: %(default)s)")
    args = p.parse_args(argv)
    if args.bootstrap < 100:
        p.error("--bootstrap must be at least 100")
    try:
        table = run_set(args.set, args.out, args.gpu, args.bootstrap)
    except KeyboardInterrupt:
        print("\nexperiments: interrupted; run the same command again to go on where it stopped", file=sys.stderr)
        return 130
    print(markdown(table))


def main(argv=None):
    """Run the command; return its exit status (see cellfcn.cli)."""
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
