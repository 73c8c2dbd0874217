"""Table 2: the report's claim and its section 7.3 suggestions, tested over seeds (`make experiments`).

Rows (each on every seed its schedule lists):

1. synthetic only: the pretrained model (Table 1's "before");
2. pretrained on synthetic, then fine-tuned on the real patches (the report's method);
3. real patches only, from Xavier initialisation, with the fine-tuning schedule;
4. real patches only, as many iterations as pretraining and fine-tuning together (equal compute);
5. row 2, then the report's post-processing: opening and minimum object area, chosen on validation;
6. rows 2 and 3 for each two-class net variant of ``prototxt.net.VARIANTS`` (k5, pool2, wide);
7. rows 2 and 3 with fewer real training patches (x8 augmentation each), same number of iterations.

Rows 1-5 (the main claim) follow ``make reproduce``'s lengths (500 pretraining and 660 fine-tuning iterations
of batch 8) in the default and full sets. Rows 6 and 7 follow the set's side schedule; where it is shorter
(the default set, to fit 2.5 hours on 2 cores), rows 2s and 3s repeat rows 2 and 3 on it, the table labels
every short row, and each row is compared with the report's method on its own schedule (row 2 or 2s).

Scores. Every model is scored like Table 1's honest protocol: the threshold that maximises MCC on its seed's
validation patches, applied to the real test patches (the same test images for every seed).

Intervals. The difference of a row to its reference is the mean over their shared seeds of the per-seed MCC
difference d_s (both models of a seed share its data and Caffe seed: a paired design). Its 95% interval is a
Student t interval with S - 1 degrees of freedom over those d_s, its standard error widened by the
test-image sampling: se^2 = var(d_s) / S + the bootstrap variance, over resampled test images (the same draw
for every seed and both rows), of the mean difference. Why t and not a bootstrap over seeds: with 3-5
seeds a bootstrap of seeds cannot reach its nominal coverage (3 seeds give 10 distinct resamples, and their
spread is sqrt((S-1)/S) of the sample's), while the t quantile (4.30 for 3 seeds, 2.78 for 5) pays honestly for
estimating the seed-to-seed spread from few seeds. The image term keeps a difference that is the same on
every seed but rests on a few test images from being called resolved. A row with one seed has no interval.
A finding says "better" or "worse" only where its interval excludes 0, otherwise "not resolved by N seeds".

Runs. Everything lives under ``--out``: ``data/`` (one dataset per seed and training-set size, built by
``python -m data_prep``), ``runs/<run>/`` (``python -m tools.train``: resumes an interrupted run, skips a
finished one), ``table2.json``, ``table2.md``, ``data_efficiency.png`` and ``finetune_curves.png``. Each run
is one task: train, then score in a child process (``score.json``, cached by the digest of model, data and
code, and refused when its content no longer matches its own digest). Tasks run serially, or with
``--workers n`` on a Dask ``LocalCluster`` of n processes, or with ``--scheduler tcp://host:8786`` on a
running cluster (its workers must run this repository's Python from the same paths and see ``--out``; start
them with ``--nthreads 1``); a fine-tuning task waits for its pretraining.

Threads. Caffe's oneDNN convolutions add their gradients in an order that depends on the number of OpenMP
threads, so a model's bits depend on it (the same thread count gives the same bits, on any worker). Each run
therefore trains on a fixed thread count, recorded in ``runs/<run>/threads.json`` when it first starts and
kept when it resumes: by default the machine's cores serially, the cores divided by the workers on a local
cluster, and each host's cores divided by its worker threads on a running cluster (``--threads`` overrides).
The table records every run's count.

Progress lines give the runs done, running and left and the time left, from the speed of the runs trained so
far in this call.
"""
import argparse
import contextlib
import fcntl
import inspect
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from scipy import stats

import cellfcn
from cellfcn import cli, files, schema
from cellfcn import metrics as M
from cellfcn import objects as O
from cellfcn import parse_log
from cellfcn.errors import CellfcnError
from cellfcn.machine import thread_env
from cellfcn.plotting import save_figure, score_axes
import prototxt
from prototxt import net
from tools import infer
from tools import score as E

SCHEMA = 2
REPO = Path(__file__).resolve().parents[1]
# Table 2 compares two-class segmentations; the 3-class ``contour`` net answers another question.
VARIANTS = tuple(v for v, spec in net.VARIANTS.items() if v != net.DEFAULT and spec.get("classes", 2) == 2)
# Iteration counts are batches of 8. Main: ``make reproduce``'s lengths (20 synthetic epochs of 200 patches,
# 12 real epochs of 440). side: the schedule of rows 6 and 7 (and rows 2s/3s where it differs from main).
# default: every row on 3 seeds within 2.5 hours on 2 cores (README, Table 2): row 7 fine-tunes 3 epochs of
# the 440 patches (from the main pretraining), and the net variants, 4-8 times its cost, are left to full;
# full: every row on the main schedule, 5 seeds for the main claim.
SETS = {
    "default": dict(seeds=(0, 1, 2), pretrain=500, finetune=660, real=55,
                    side=dict(seeds=(0, 1, 2), pretrain=500, finetune=165), sizes=(5, 14, 28), variants=(),
                    synthetic_args=(), real_args=()),
    "full": dict(seeds=(0, 1, 2, 3, 4), pretrain=500, finetune=660, real=55,
                 side=dict(seeds=(0, 1, 2), pretrain=500, finetune=660), sizes=(5, 14, 28), variants=VARIANTS,
                 synthetic_args=(), real_args=()),
    # A smoke run of every kind of row on tiny data (QUICK=1, the tests): two seeds, one-seed side rows.
    "quick": dict(seeds=(0, 1), pretrain=2, finetune=2, real=4,
                  side=dict(seeds=(0,), pretrain=2, finetune=1), sizes=(2,), variants=("pool2",),
                  synthetic_args=("--n-images", "4", "--image-size", "128", "--n-train", "16", "--n-test", "8"),
                  real_args=("--n-val-images", "1", "--max-test-images", "1")),
}
BATCH = 8
# Opening radii and minimum areas (pixels) searched on the validation patches for row 5.
POST_GRID = dict(opening_radii=(0, 1, 2, 3), min_areas=(0, 10, 20, 40, 80))
POLL_S = 10  # how often the distributed path asks the scheduler which runs are going
QUIET_S = 300  # a progress line at least this often while runs go on


class ExperimentError(CellfcnError):
    """A one-line reason the experiments cannot go on."""


# ------------------------------------------------------------------------------------------------ plan
def _side_is_short(s):
    """Whether a set's rows 6 and 7 train on another schedule than its main claim (then rows 2s and 3s)."""
    return (s["side"]["pretrain"], s["side"]["finetune"]) != (s["pretrain"], s["finetune"])


def plan(name):
    """The datasets, runs and rows of an experiment set.

    Returns
    -------
    datasets : dict of key -> dict(kind, seed, n_train)
    runs : list of dict
        In serial execution order (the main claim seed by seed first, so a stopped set already answers it):
        ``id``, ``net``, ``stage``, ``data`` (dataset key), ``seed``, ``iterations``, ``weights`` (the id of
        the run whose model it starts from, or None), ``score_data`` (the dataset it is scored on).
    rows : list of dict
        ``row`` (label: '1'-'7', '2s', '3s'), ``key``, ``name``, ``runs`` (seed -> run id), ``post`` (row 5),
        ``n_real``, ``net``, ``init`` ('synthetic only', 'pretrained', 'xavier'), ``schedule`` (text),
        ``short`` (on the shorter side schedule), ``ref`` (key of the row it is compared with, or None).
    """
    s = SETS[name]
    side, short = s["side"], _side_is_short(s)
    datasets, runs, rows = {}, {}, []

    def dataset(kind, seed, n_train=None):
        key = f"synthetic-s{seed}" if kind == "synthetic" else f"real-n{n_train}-s{seed}"
        datasets[key] = dict(kind=kind, seed=seed, n_train=n_train)
        return key

    def add_run(rid, variant, stage, seed, data, iterations, weights=None):
        scored_on = dataset("real", seed, s["real"])  # every model is scored on its seed's val and test splits
        runs.setdefault(rid, dict(id=rid, net=variant, stage=stage, data=data, seed=seed, weights=weights,
                                  iterations=iterations, score_data=scored_on))
        return rid

    def pretrain(variant, seed, iterations):
        return add_run(f"{variant}-pretrain-i{iterations}-s{seed}", variant, "pretrain", seed,
                       dataset("synthetic", seed), iterations)

    def method(variant, seed, n_real, sched, pretrained, iterations=None):
        data = dataset("real", seed, n_real)
        if pretrained:
            pre = pretrain(variant, seed, sched["pretrain"])
            return add_run(f"{variant}-pre{sched['pretrain']}-n{n_real}-i{sched['finetune']}-s{seed}", variant,
                           "finetune", seed, data, sched["finetune"], weights=pre)
        iterations = iterations or sched["finetune"]
        return add_run(f"{variant}-xavier-n{n_real}-i{iterations}-s{seed}", variant, "finetune", seed, data,
                       iterations)

    def add(row, key, name, seeds, make, text, ref, n_real=s["real"], variant=net.DEFAULT, init="pretrained",
            post=False, on_side=False):
        rows.append(dict(row=row, key=key, name=name, runs={sd: make(sd) for sd in seeds}, n_real=n_real,
                         net=variant, init=init, post=post, schedule=text, short=on_side and short, ref=ref))

    main = dict(pretrain=s["pretrain"], finetune=s["finetune"])
    both = f"{s['pretrain']} + {s['finetune']}"
    side_both = ("short: " if short else "") + f"{side['pretrain']} + {side['finetune']}"
    side_real = ("short: " if short else "") + f"{side['finetune']}"
    n, equal = s["real"], s["pretrain"] + s["finetune"]
    for seed in s["seeds"]:
        method(net.DEFAULT, seed, n, main, True), method(net.DEFAULT, seed, n, main, False)
        method(net.DEFAULT, seed, n, main, False, equal)
    add("1", "synthetic", "synthetic only (Table 1's before)", s["seeds"],
        lambda sd: pretrain(net.DEFAULT, sd, s["pretrain"]), f"{s['pretrain']} + 0", "pretrained", n_real=0,
        init="synthetic only")
    add("2", "pretrained", "pretrained, then fine-tuned (the report's method)", s["seeds"],
        lambda sd: method(net.DEFAULT, sd, n, main, True), both, None)
    add("3", "xavier", "real only, Xavier initialisation, fine-tuning schedule", s["seeds"],
        lambda sd: method(net.DEFAULT, sd, n, main, False), str(s["finetune"]), "pretrained", init="xavier")
    add("4", "xavier-equal", f"real only, equal compute ({equal} iterations)", s["seeds"],
        lambda sd: method(net.DEFAULT, sd, n, main, False, equal), str(equal), "pretrained", init="xavier")
    add("5", "pretrained-post", "row 2 + opening and minimum area (chosen on validation)", s["seeds"],
        lambda sd: method(net.DEFAULT, sd, n, main, True), both, "pretrained", post=True)
    side_ref, side_xavier = "pretrained", "xavier"
    if short:
        side_ref, side_xavier = "pretrained-short", "xavier-short"
        add("2s", side_ref, f"row 2 with {side['finetune']} fine-tuning iterations", side["seeds"],
            lambda sd: method(net.DEFAULT, sd, n, side, True), side_both, "pretrained", on_side=True)
        add("3s", side_xavier, f"row 3 with {side['finetune']} iterations", side["seeds"],
            lambda sd: method(net.DEFAULT, sd, n, side, False), side_real, side_ref, init="xavier", on_side=True)
    for v in s["variants"]:
        add("6", f"{v}-pretrained", f"{v}: pretrained, then fine-tuned", side["seeds"],
            lambda sd, v=v: method(v, sd, n, side, True), side_both, side_ref, variant=v, on_side=True)
        add("6", f"{v}-xavier", f"{v}: real only", side["seeds"], lambda sd, v=v: method(v, sd, n, side, False),
            side_real, side_ref, variant=v, init="xavier", on_side=True)
    for k in s["sizes"]:
        add("7", f"pretrained-n{k}", f"pretrained, fine-tuned on {k} real patches", side["seeds"],
            lambda sd, k=k: method(net.DEFAULT, sd, k, side, True), side_both, side_ref, n_real=k, on_side=True)
        add("7", f"xavier-n{k}", f"real only, {k} real patches", side["seeds"],
            lambda sd, k=k: method(net.DEFAULT, sd, k, side, False), side_real, side_ref, n_real=k, init="xavier",
            on_side=True)
    return datasets, list(runs.values()), rows


def efficiency_pairs(name):
    """(n_real, key of the pretrained row, key of the real-only row) for each training-set size of row 7 and the
    full real set, all on the side schedule."""
    s = SETS[name]
    full = ("pretrained-short", "xavier-short") if _side_is_short(s) else ("pretrained", "xavier")
    return [*((k, f"pretrained-n{k}", f"xavier-n{k}") for k in s["sizes"]), (s["real"], *full)]


# ----------------------------------------------------------------------------------------------- steps
_CHILDREN = set()  # training and scoring processes of this process, for interrupt_children


def _call(cmd, what, threads=None, log=None):
    """Run a child process (in the repository, ``threads`` threads if given); its output goes to ``log``
    (a path, appended) or to this process's."""
    env = dict(os.environ, **(thread_env(threads) if threads else {}))
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(open(log, "a", buffering=1)) if log else None
        # In a process group of its own, so that Ctrl-C reaches it only through this process: serially from
        # the handler below, on a Dask worker from interrupt_children (the workers themselves ignore it).
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT if log else None,
                                process_group=0)
        _CHILDREN.add(proc)
        try:
            rc = proc.wait()
        except KeyboardInterrupt:  # let Caffe snapshot and stop, then stop here
            _interrupt(proc)
            proc.wait()
            raise
        finally:
            _CHILDREN.discard(proc)
    if rc in (130, -signal.SIGINT):
        raise ExperimentError(f"{what} was interrupted; run `make experiments` again to resume")
    if rc != 0:
        where = f" (its output: {log})" if log else ""
        raise ExperimentError(f"{what} failed (exit {rc}){where}; run `make experiments` again to resume")


def _interrupt(proc):
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)  # the child and Caffe under it: Caffe snapshots and stops


def interrupt_children():
    """Send SIGINT to this process's training and scoring children and their process groups: Caffe snapshots
    and stops (resumable). Runs on each Dask worker when the experiments stop early."""
    for proc in list(_CHILDREN):
        _interrupt(proc)
    return len(_CHILDREN)


def build_dataset(out, key, spec, settings, cache=None):
    """``python -m data_prep`` for one dataset (it skips a dataset that is up to date); ``cache``: the mnfinder
    wheel cache folder (default data_prep's)."""
    folder = Path(out).absolute() / "data" / key
    if spec["kind"] == "synthetic":
        cmd = ["synthetic", *settings["synthetic_args"]]
    else:
        cmd = ["mnfinder", "--n-train", str(spec["n_train"]), *settings["real_args"]]
        cmd += ["--cache", str(cache)] if cache else []
    _call([sys.executable, "-m", "data_prep", *cmd, "--out", str(folder), "--seed", str(spec["seed"]),
           "--format", "hdf5"], f"data_prep {key}")
    return folder


def train_run(out, run, threads, gpu=None, log=None):
    """``python -m tools.train`` for one run on ``threads`` threads; return its run.json."""
    out = Path(out).absolute()
    folder = out / "runs" / run["id"]
    cmd = [sys.executable, "-m", "tools.train", "--stage", run["stage"], "--data", str(out / "data" / run["data"]),
           "--out", str(folder), "--format", "hdf5", "--batch", str(BATCH), "--seed", str(run["seed"]),
           "--net", run["net"], "--iterations", str(run["iterations"])]
    if run["weights"]:
        cmd += ["--weights", str(out / "runs" / run["weights"] / "final.caffemodel")]
    if gpu is not None:
        cmd += ["--gpu", str(gpu)]
    _call(cmd, f"training {run['id']}", threads, log)
    return files.read_json(folder / "run.json", "run record")


def run_threads(folder, default):
    """The thread count a run trains on: the one recorded when it first started, else ``default`` (recorded
    now). A run finished before counts were recorded has None (unknown)."""
    path = Path(folder) / "threads.json"
    if path.is_file():
        threads = files.read_json(path, "thread record").get("threads")
        if not (isinstance(threads, int) and threads >= 1):
            raise ExperimentError(f"{path} holds no thread count: delete it and run `make experiments` again")
        return threads
    record = Path(folder) / "run.json"
    if record.is_file() and files.read_json(record, "run record").get("status") == "done":
        return None
    files.write_json(path, dict(threads=int(default)))
    return int(default)


@contextlib.contextmanager
def run_lock(folder):
    """Hold a lock on the run folder itself while a run trains, so that two calls never train one run at once
    (released when the holder exits, however it exits)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ExperimentError(f"{folder} is being trained by another `make experiments`: wait for it, "
                                  "or stop it, and run again") from None
        yield
    finally:
        os.close(fd)


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
    """Threshold each patch, open it with a disk and remove smaller components (``cellfcn.objects.clean_mask``).

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
        ``images`` (per test image tp, fp, tn, fn) and, when ``post``, the same under ``post``. A threshold
        that cannot be chosen (MCC undefined on val) leaves it and every metric NaN, ``images`` None.
    """
    val, test = E.load_split(Path(data) / "val.h5"), E.load_split(Path(data) / "test.h5")
    network = infer.load_model(model, gpu=gpu)
    val_prob = infer.predict(network, val["data"], desc="val")
    test_prob = infer.predict(network, test["data"], desc="test")
    chosen = E.evaluate_arrays(val_prob, val["label"])
    threshold = chosen["threshold"]
    res = E.evaluate_arrays(test_prob, test["label"], threshold=threshold)
    defined = not math.isnan(threshold)
    out = dict(threshold=threshold, val_mcc=chosen["metrics"]["mcc"], **res["metrics"], auc=res["auc"],
               images=image_counts(test_prob >= threshold, test["label"], test["source_index"]).tolist()
               if defined else None)
    if post:
        if defined:
            params = choose_postprocess(val_prob, val["label"], threshold)
            pred = postprocess(test_prob, threshold, params["opening_radius"], params["min_area"])
            counts = image_counts(pred, test["label"], test["source_index"])
            out["post"] = dict(**params, **M.scores(*counts.sum(0)), auc=None, images=counts.tolist())
        else:
            out["post"] = dict(out, val_mcc=float("nan"), opening_radius=None, min_area=None, auc=None)
    return out


def scoring_code():
    """Digest of the code a score depends on (these functions and the modules they call), so that editing how
    Table 2 is drawn does not rescore every model."""
    functions = (score_model, image_counts, postprocess, choose_postprocess)
    return files.digest([inspect.getsource(f) for f in functions],
                        [files.sha256_file(m.__file__) for m in (infer, E)], files.code_digest(cellfcn, prototxt))




def _content_digest(score):
    return files.digest({k: v for k, v in score.items() if k != "content_sha256"})


def _score_key(folder, data, post):
    folder = Path(folder)
    threads = (files.read_json(folder / "threads.json", "thread record").get("threads")
               if (folder / "threads.json").is_file() else None)
    key = files.digest(files.sha256_file(folder / "final.caffemodel"), files.sha256_file(Path(data) / "val.h5"),
                       files.sha256_file(Path(data) / "test.h5"), post, POST_GRID, scoring_code(), threads)
    return key, threads


def _cached(path, key):
    """The score cached in ``path`` for ``key``, or None; a cache whose content changed is refused."""
    if not Path(path).is_file():
        return None
    old = files.read_json(path, "score")
    if not isinstance(old, dict) or old.get("content_sha256") != _content_digest(old):
        raise ExperimentError(f"{path} does not match the digest it was written with (edited by hand?): "
                              "delete it and run `make experiments` again to rescore the model")
    return old if old.get("inputs_sha256") == key else None


def cached_score(folder, data, post, gpu=None):
    """:func:`score_model` of ``folder/final.caffemodel``, cached in ``folder/score.json``.

    The cache is found by the digest of its inputs (model, data, post-processing, scoring code, the run's
    thread record) and trusted only while its content matches the digest it was written with.

    Raises
    ------
    ExperimentError
        ``score.json`` was changed after it was written (or is no score): one line naming the fix.
    """
    path = Path(folder) / "score.json"
    key, threads = _score_key(folder, data, post)
    score = _cached(path, key)
    if score is None:
        score = dict(score_model(Path(folder) / "final.caffemodel", data, post, gpu), train_threads=threads,
                     inputs_sha256=key)
        score["content_sha256"] = _content_digest(score)
        files.write_json(path, score)
    return score


def _announce(topic, rid):
    """Tell the client that a Dask worker starts a run (nothing outside a worker)."""
    try:
        from distributed import get_worker

        get_worker().log_event(topic, rid)
    except (ImportError, ValueError):  # serial: no worker
        pass


def run_task(out, run, threads, post, gpu=None, echo=True, after=None, topic=None):
    """Train one run (or find it done) and score it, each in a child process on the run's thread count.

    Parameters
    ----------
    out : str or Path
        The experiments folder (every worker sees it at this path).
    run : dict
        One run of :func:`plan`.
    threads : int
        Threads for a run that has none recorded yet (:func:`run_threads`).
    post : bool
        Score row 5's post-processing too.
    gpu : int, optional
    echo : bool
        Show the children's output here; otherwise it is appended to ``runs/<run>/task.log``.
    after : object
        Ignored: the result of the task this one waits for (Dask orders tasks by their arguments).
    topic : str, optional
        Dask event topic on which a worker announces that the run starts.

    Returns
    -------
    dict
        ``id``, ``weights`` (the run it starts from), ``info`` (run.json), ``score``, ``threads`` (None:
        trained before counts were recorded), ``trained`` (this task trained it), ``wall`` (seconds).
    """
    out = Path(out).absolute()
    folder = out / "runs" / run["id"]
    log = None if echo else folder / "task.log"
    data = out / "data" / run["score_data"]
    t0 = time.monotonic()
    if topic:
        _announce(topic, run["id"])
    with run_lock(folder):
        used = run_threads(folder, threads)
        record = folder / "run.json"
        before = files.sha256_file(record) if record.is_file() else None
        info = train_run(out, run, used or threads, gpu, log)
        trained = files.sha256_file(record) != before
        if trained and used is None:  # a run finished before counts were recorded, trained again now
            used = threads
            files.write_json(folder / "threads.json", dict(threads=int(threads)))
        key, _ = _score_key(folder, data, post)
        score = _cached(folder / "score.json", key)
        if score is None:
            cmd = [sys.executable, "-m", "tools.experiments", "--score", str(folder), "--data", str(data)]
            cmd += (["--post"] if post else []) + (["--gpu", str(gpu)] if gpu is not None else [])
            _call(cmd, f"scoring {run['id']}", used or threads, log)
            score = _cached(folder / "score.json", key)
            if score is None:
                raise ExperimentError(f"scoring {run['id']} wrote no score for its model; run `make experiments` "
                                      "again")
    return dict(id=run["id"], weights=run["weights"], info=info, score=score, threads=used, trained=trained,
                wall=time.monotonic() - t0)


# -------------------------------------------------------------------------------------------- progress
def _clock(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """Prints the runs done, running and left, and the time left from the speed of this call's trainings.

    The cost of a run is its iterations times its net's multiply-adds per patch; the time left is the cost
    of the runs not finished divided by the cost finished per second of wall time since the first run
    started (with several workers, their combined speed).
    """

    def __init__(self, runs, stream=None):
        self.cost = {r["id"]: r["iterations"] * net.multiply_adds(r["net"]) for r in runs}
        self.runs = {r["id"]: r for r in runs}
        self.done, self.running = set(), set()
        self.trained_cost, self.first, self.last_line = 0.0, None, time.monotonic()
        self.stream = stream or sys.stdout

    def status(self):
        """'d/N done, r running, l left (about T left)'."""
        left = len(self.cost) - len(self.done) - len(self.running)
        text = f"{len(self.done)}/{len(self.cost)} done, {len(self.running)} running, {left} left"
        if self.trained_cost and len(self.done) < len(self.cost):
            rate = self.trained_cost / (time.monotonic() - self.first)
            remaining = sum(c for rid, c in self.cost.items() if rid not in self.done)
            return f"{text} (about {_clock(remaining / rate)} left)"
        return text

    def _print(self, text):
        print(f"experiments: {text}", file=self.stream, flush=True)
        self.last_line = time.monotonic()

    def start(self, rid):
        if self.first is None:
            self.first = time.monotonic()
        self.running.add(rid)
        r = self.runs[rid]
        self._print(f"run {rid} started ({r['iterations']} iterations of {r['net']}); {self.status()}")

    def finish(self, rid, trained, seconds, threads=None):
        self.running.discard(rid)
        self.done.add(rid)
        if trained:
            self.trained_cost += self.cost[rid]
        on = f" on {threads} thread{'s' if threads > 1 else ''}" if threads else ""
        what = f"trained in {_clock(seconds)}{on}" if trained else "up to date"
        self._print(f"run {len(self.done)}/{len(self.cost)} finished: {rid} {what}; {self.status()}")

    def tick(self):
        """A status line when none was printed for a while."""
        if time.monotonic() - self.last_line >= QUIET_S:
            self._print(f"going on: {', '.join(sorted(self.running))}; {self.status()}")


def run_serial(out, runs, post_runs, threads, gpu, progress):
    """Every run's :func:`run_task` in plan order in this process; return {run id: result}."""
    results = {}
    for r in runs:
        progress.start(r["id"])
        res = results[r["id"]] = run_task(out, r, threads, r["id"] in post_runs, gpu, echo=True)
        progress.finish(r["id"], res["trained"], res["wall"], res["threads"])
    return results


def cluster_threads(client):
    """Threads per run on a running cluster: the fewest cores per worker thread over its hosts."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    if not workers:
        raise ExperimentError("the Dask cluster has no workers: start some (`dask worker <scheduler> --nthreads 1`)")
    cores = client.run(os.cpu_count)
    slots, host_cores = {}, {}
    for address, w in workers.items():
        slots[w["host"]] = slots.get(w["host"], 0) + w["nthreads"]
        host_cores[w["host"]] = cores.get(address) or 1
    return max(1, min(host_cores[h] // slots[h] for h in slots))


def _priorities(runs):
    """Dask priority of each run: the cost of the longest chain it starts (pretraining before the rest)."""
    cost = {r["id"]: r["iterations"] * net.multiply_adds(r["net"]) for r in runs}
    chain = dict(cost)
    for r in reversed(runs):  # plan order puts a pretraining before its fine-tunings
        if r["weights"]:
            chain[r["weights"]] = max(chain[r["weights"]], cost[r["weights"]] + chain[r["id"]])
    top = max(chain.values())
    return {rid: int(1000 * c / top) for rid, c in chain.items()}


def run_dask(out, runs, post_runs, threads, gpu, progress, scheduler=None, workers=None):
    """Every run's :func:`run_task` as a task on Dask's distributed scheduler; return {run id: result}.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler; default: a ``LocalCluster`` of ``workers`` processes.
    threads : int, optional
        Threads per run; default: the cores per worker thread (:func:`cluster_threads`, or the machine's
        cores divided by ``workers``).
    """
    import logging

    from dask.distributed import Client, LocalCluster, wait

    from tools import experiments as this  # by name: workers import it (not a copy of ``__main__``)

    if scheduler:
        cluster, client = None, Client(scheduler)
    else:
        threads = threads or max(1, (os.cpu_count() or 1) // workers)
        # The worker processes start with Ctrl-C ignored (this process stops them and their trainings).
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                                   env=thread_env(threads), silence_logs=logging.CRITICAL)  # errors: ours, one line
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)
        client = Client(cluster)
    try:
        threads = threads or cluster_threads(client)
        tag, futures = uuid.uuid4().hex[:8], {}
        topic, started = f"cellfcn-experiments-{tag}", []
        client.subscribe_topic(topic, lambda event: started.append(event[1]))
        priority = _priorities(runs)
        for r in runs:  # plan order: a pretraining's future exists before its fine-tunings'
            after = futures[r["weights"]] if r["weights"] else None
            futures[r["id"]] = client.submit(this.run_task, str(Path(out).absolute()), r, threads,
                                             r["id"] in post_runs, gpu, False, after, topic,
                                             key=f"experiments-{r['id']}-{tag}", priority=priority[r["id"]],
                                             pure=False)
        by_key = {f.key: rid for rid, f in futures.items()}
        pending, results = set(futures.values()), {}
        while pending:
            try:
                finished, pending = wait(pending, timeout=POLL_S, return_when="FIRST_COMPLETED")
            except TimeoutError:  # nothing finished for a while
                finished = ()
            while started:
                progress.start(started.pop(0))
            for future in finished:
                rid = by_key[future.key]
                res = results[rid] = future.result()  # a task's error ends the call here (finally stops the rest)
                if rid not in progress.running:
                    progress.start(rid)
                progress.finish(rid, res["trained"], res["wall"], res["threads"])
            progress.tick()
        return results
    except BaseException:
        with contextlib.suppress(Exception):  # let the running trainings snapshot and stop (resumable)
            client.run(this.interrupt_children)
            time.sleep(2)
        raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# --------------------------------------------------------------------------------------------- statistics
def _mcc(counts):
    """MCC of summed counts along the last axis of ``counts`` (..., 4)."""
    return M.scores(counts[..., 0], counts[..., 1], counts[..., 2], counts[..., 3])["mcc"]


def paired_difference(a, b, n_boot=2000, seed=0, level=0.95):
    """Mean MCC difference of two rows over their shared seeds, with an interval over seeds and test images.

    Parameters
    ----------
    a, b : dict of seed -> ndarray (G, 4) or None
        Per-test-image confusion counts of each row's model of that seed (the same test images); None: the
        model's threshold is undefined.
    n_boot : int
        Test-image bootstrap replicates for the image term of the standard error.
    level : float
        Coverage of the interval.

    Returns
    -------
    dict
        ``diff`` (mean over the shared seeds of MCC(a) - MCC(b) on all images), ``per_seed`` (those
        differences), ``seeds``, and ``ci`` [low, high]: ``diff`` -/+ t(level, S - 1) * sqrt(var(per_seed) / S
        + v_images), where v_images is the variance of the mean difference over bootstrap draws of the test
        images (one draw for every seed and both rows); ``ci`` None with one seed. A model whose MCC is
        undefined makes ``diff`` NaN and ``per_seed`` and ``ci`` None.
    """
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("the rows share no seed")
    undefined = dict(diff=float("nan"), per_seed=None, seeds=seeds, ci=None)
    if any(x[sd] is None for x in (a, b) for sd in seeds):
        return undefined
    ca, cb = (np.stack([np.asarray(x[sd], np.float64) for sd in seeds]) for x in (a, b))  # (S, G, 4)
    per_seed = _mcc(ca.sum(1)) - _mcc(cb.sum(1))
    if np.isnan(per_seed).any():  # a model's MCC is undefined on the test set
        return undefined
    out = dict(diff=float(per_seed.mean()), per_seed=per_seed.tolist(), seeds=seeds, ci=None)
    n_seeds, n_images = ca.shape[:2]
    if n_seeds < 2:
        return out
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n_images, np.full(n_images, 1 / n_images), size=n_boot).astype(np.float64)  # (B, G)
    boot = (_mcc(np.einsum("bg,sgk->bsk", weights, ca)) - _mcc(np.einsum("bg,sgk->bsk", weights, cb))).mean(1)
    # A draw can leave a model without a predicted or a true positive (MCC undefined): it carries no spread.
    se = math.sqrt(np.var(per_seed, ddof=1) / n_seeds + np.nanvar(boot, ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n_seeds - 1)) * se
    out["ci"] = [out["diff"] - half, out["diff"] + half]
    return out


def verdict(d, better, worse):
    """What a difference with its interval says: ``better`` or ``worse`` only where the interval excludes 0."""
    if d["per_seed"] is None:
        return "undefined (a model's MCC is undefined: no threshold on validation, or no positive on test)"
    if d["ci"] is None:
        return "one seed: no interval, no claim"
    if all(x == 0 for x in d["per_seed"]):
        return "identical on every seed"
    low, high = d["ci"]
    if low > 0:
        return better
    if high < 0:
        return worse
    return f"not resolved by {len(d['seeds'])} seeds"


# ------------------------------------------------------------------------------------------------ table
def _counts(score):
    return None if score["images"] is None else np.asarray(score["images"])


def row_entry(row, results, scores, reference, n_boot=2000):
    """One Table 2 row: per-seed values, mean and sd, the difference to its reference row, training seconds.

    Parameters
    ----------
    results : dict of run id -> result of :func:`run_task`
    scores : dict of run id -> the score that counts for this row (row 5: post-processed)
    reference : dict of seed -> counts of the reference row, or None
    """
    per_seed = {sd: scores[rid] for sd, rid in row["runs"].items()}
    mcc = [per_seed[sd]["mcc"] for sd in sorted(per_seed)]
    seconds = [training_seconds(rid, results) for rid in row["runs"].values()]
    entry = dict({k: row[k] for k in ("row", "key", "name", "net", "init", "n_real", "schedule", "short", "ref")},
                 seeds=sorted(per_seed), mcc_values=mcc, mcc_mean=float(np.mean(mcc)),
                 mcc_sd=float(np.std(mcc, ddof=1)) if len(mcc) > 1 else None,
                 f_score_mean=float(np.mean([per_seed[sd]["f_score"] for sd in per_seed])),
                 thresholds=[results[row["runs"][sd]]["score"]["threshold"] for sd in sorted(per_seed)],
                 threads=[results[row["runs"][sd]]["threads"] for sd in sorted(per_seed)],
                 train_seconds_mean=float(np.mean(seconds)))
    aucs = [per_seed[sd]["auc"] for sd in per_seed if per_seed[sd]["auc"] is not None]
    entry["auc_mean"] = float(np.mean(aucs)) if aucs else None
    if row["post"]:
        entry["post"] = [{k: per_seed[sd][k] for k in ("opening_radius", "min_area")} for sd in sorted(per_seed)]
    if reference is not None:
        entry["vs_ref"] = paired_difference({sd: _counts(per_seed[sd]) for sd in per_seed}, reference, n_boot)
    return entry


def training_seconds(rid, results):
    """Seconds of a run including the run it starts from (pretraining counts for the fine-tuned models)."""
    weights = results[rid]["weights"]
    return results[rid]["info"]["seconds"] + (training_seconds(weights, results) if weights else 0.0)


def fmt(x, digits=3):
    return "–" if x is None else "undefined" if x != x else f"{x:.{digits}f}"


def _interval(d):
    if d["per_seed"] is None:
        return "undefined"
    if d["ci"] is None:
        return f"{d['diff']:+.3f} (one seed)"
    return f"{d['diff']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"


def table_cells(table):
    """Table 2 as (header, body) of strings: the one rendering, for Markdown and the report."""
    header = ["row", "model", "net", "iterations", "real patches", "seeds", "MCC mean ± sd (per seed)", "F-score",
              "AUC", "Δ MCC [95% CI] vs row", "training s"]
    label = {r["key"]: r["row"] for r in table["rows"]}
    body = []
    for r in table["rows"]:
        spread = f" ± {fmt(r['mcc_sd'])}" if r["mcc_sd"] is not None else ""
        delta = f"{_interval(r['vs_ref'])} vs {label[r['ref']]}" if "vs_ref" in r else ""
        body.append([r["row"], r["name"], r["net"], r["schedule"], str(r["n_real"]), str(len(r["seeds"])),
                     f"{fmt(r['mcc_mean'])}{spread} ({', '.join(fmt(v) for v in r['mcc_values'])})",
                     fmt(r["f_score_mean"]), fmt(r["auc_mean"]), delta, f"{r['train_seconds_mean']:.0f}"])
    return header, body


def _threads_text(table):
    counts = sorted({t for r in table["rows"] for t in r["threads"] if t is not None})
    unknown = any(t is None for r in table["rows"] for t in r["threads"])
    text = " or ".join(map(str, counts)) if counts else "an unrecorded number of"
    plural = "thread" if counts == [1] and not unknown else "threads"
    return f"{text} {plural} per run" + (" (some unrecorded)" if unknown and counts else "")


def caption(table):
    """What Table 2's numbers are."""
    s, side = table["settings"], table["settings"]["side"]
    short = any(r["short"] for r in table["rows"])
    def seeds(values):
        return f"seed{'s' if len(values) > 1 else ''} {', '.join(map(str, values))}"

    side_rows = list(dict.fromkeys(r["row"] for r in table["rows"] if r["row"] not in ("1", "2", "3", "4", "5")))
    sched = (f"rows 1-5 with {s['pretrain']} pretraining and {s['finetune']} fine-tuning iterations of batch "
             f"{table['batch']} on {seeds(s['seeds'])}")
    if side_rows:
        sched += (f"; rows {', '.join(side_rows[:-1])}{' and ' if len(side_rows) > 1 else ''}{side_rows[-1]} on "
                  f"{seeds(side['seeds'])}")
    if short:
        sched += (f" with a short schedule: {side['pretrain']} pretraining and {side['finetune']} fine-tuning "
                  "iterations, labelled 'short'")
    return (f"{table['set']} set: {sched}. MCC, F-score and AUC on the real test patches at each model's "
            "validation-chosen threshold; Δ: mean over shared seeds of the per-seed MCC difference to the row "
            "named (the report's method on the same schedule), with a 95% t interval over the seeds widened by "
            "test-image resampling; none with one seed. Training seconds per seed, pretraining included where a "
            f"row starts from it; Caffe on {_threads_text(table)}.")


def findings(table):
    """Plain sentences answering the report's claim and suggestions from Table 2's numbers."""
    rows = {r["key"]: r for r in table["rows"]}

    def vs(key, what, better, worse):
        r = rows[key]
        ref = rows[r["ref"]]
        d = r["vs_ref"]
        return (f"{what}: MCC {fmt(r['mcc_mean'])} against row {ref['row']}'s {fmt(ref['mcc_mean'])}, Δ "
                f"{_interval(d)} over seeds {', '.join(map(str, d['seeds']))}: {verdict(d, better, worse)}.")

    out = [vs("xavier", "Claim — pretraining on synthetic images, then fine-tuning, against the real patches "
                        "alone (row 3)", "the real patches alone do better", "pretraining helps"),
           vs("xavier-equal", "Equal compute (row 4)", "the real patches alone do better",
              "pretraining helps even at equal compute"),
           vs("synthetic", "Synthetic only (row 1)", "fine-tuning hurts", "fine-tuning on the real patches helps"),
           vs("pretrained-post", "Post-processing (row 5)", "it helps", "it hurts")]
    if "pretrained-short" in rows:
        out.append(vs("pretrained-short", "The short schedule of rows 2s-7 (row 2s)", "shorter fine-tuning does "
                      "better", "shorter fine-tuning costs MCC"))
    for r in table["rows"]:
        if r["row"] == "6":
            out.append(vs(r["key"], f"{r['name']} (row 6)", "better than FCRN-A's pretrained model",
                          "worse than FCRN-A's pretrained model"))
    for d in table["data_efficiency"]:
        out.append(f"With {d['n_real']} real patches: pretrained {fmt(d['pretrained'])}, real only "
                   f"{fmt(d['xavier'])}, gain from pretraining {_interval(d['gain'])}: "
                   f"{verdict(d['gain'], 'pretraining helps', 'the real patches alone do better')}.")
    return out


def markdown(table):
    """Table 2, its caption and the findings in Markdown."""
    lines = [f"Table 2 — {caption(table)}", "", E.markdown_table(*table_cells(table)).rstrip(), ""]
    lines += [f"- {sentence}" for sentence in findings(table)]
    lines += ["", f"Training time of all {table['n_runs']} runs: {table['train_seconds_total'] / 60:.1f} min; wall time "
                  f"of this `make experiments` ({table['where']}): {table['wall_seconds'] / 60:.1f} min (runs "
                  "finished by an earlier call are not repeated)."]
    return "\n".join(lines) + "\n"


def plot_data_efficiency(table, path):
    """MCC against the number of real training patches (row 7 with its reference rows)."""
    fig, ax = score_axes("Data efficiency (real test MCC at the validation threshold)",
                         "real training patches (x8 augmentation)", "MCC")
    rows = {r["key"]: r for r in table["rows"]}
    for i, (init, label) in enumerate((("pretrained", "pretrained on synthetic, then fine-tuned"),
                                       ("xavier", "real only (Xavier)"))):
        keyed = [(d["n_real"], rows[d[f"{init}_key"]]) for d in table["data_efficiency"]]
        xs = [k for k, _ in keyed]
        ax.plot(xs, [r["mcc_mean"] for _, r in keyed], "-o", color=f"C{i}", label=label)
        ax.plot([k for k, r in keyed for _ in r["mcc_values"]], [v for _, r in keyed for v in r["mcc_values"]],
                ".", color=f"C{i}", alpha=0.5)
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
def tabulate(name, rows, results, n_boot=2000):
    """The Table 2 dict (without timing) from every run's :func:`run_task` result."""
    settings = SETS[name]
    by_key = {row["key"]: row for row in rows}

    def row_scores(row):
        return {rid: results[rid]["score"]["post"] if row["post"] else results[rid]["score"]
                for rid in row["runs"].values()}

    def counts(key):
        return {sd: _counts(results[rid]["score"]) for sd, rid in by_key[key]["runs"].items()}

    def mean_mcc(key):
        return float(np.mean([results[rid]["score"]["mcc"] for rid in by_key[key]["runs"].values()]))

    entries = [row_entry(row, results, row_scores(row), counts(row["ref"]) if row["ref"] else None, n_boot)
               for row in rows]
    efficiency = [dict(n_real=k, pretrained_key=pre, xavier_key=xav, pretrained=mean_mcc(pre), xavier=mean_mcc(xav),
                       gain=paired_difference(counts(pre), counts(xav), n_boot))
                  for k, pre, xav in efficiency_pairs(name)]
    return dict(schema_version=SCHEMA, set=name,
                settings={k: v for k, v in settings.items() if not k.endswith("_args")}, batch=BATCH,
                variants={v: dict(parameters=net.learnable_parameters(v), receptive_field=net.receptive_field(v))
                          for v in (net.DEFAULT, *VARIANTS)},
                rows=entries, data_efficiency=efficiency, n_runs=len(results),
                train_seconds_total=float(sum(res["info"]["seconds"] for res in results.values())))


def run_set(name, out, gpu=None, n_boot=2000, workers=0, scheduler=None, threads=None, cache=None):
    """Build, train, score and tabulate an experiment set; return the Table 2 dict.

    Parameters
    ----------
    cache : str, optional
        The mnfinder wheel cache folder (default data_prep's).
    workers : int
        0: serially in this process; n: a Dask ``LocalCluster`` of n worker processes.
    scheduler : str, optional
        Address of a running Dask scheduler (instead of ``workers``).
    threads : int, optional
        Threads per run (default: see the module docstring).
    """
    settings = SETS[name]
    out = Path(out).absolute()
    files.check_writable(out / "table2.json", "experiments folder")
    datasets, runs, rows = plan(name)
    started = time.monotonic()
    for i, (key, spec) in enumerate(datasets.items(), start=1):
        print(f"experiments: dataset {i}/{len(datasets)}: {key}", flush=True)
        build_dataset(out, key, spec, settings, cache)
    post_runs = {rid for row in rows if row["post"] for rid in row["runs"].values()}
    progress = Progress(runs)
    if scheduler or workers:
        where = f"Dask cluster at {scheduler}" if scheduler else f"Dask LocalCluster of {workers} workers"
        results = run_dask(out, runs, post_runs, threads, gpu, progress, scheduler, workers)
    else:
        where = "serial"
        results = run_serial(out, runs, post_runs, threads or os.cpu_count() or 1, gpu, progress)
    table = tabulate(name, rows, results, n_boot)
    table.update(where=where, wall_seconds=time.monotonic() - started)
    curves = {}
    for row in rows:
        if row["key"] in ("pretrained", "xavier"):
            for sd, rid in row["runs"].items():
                _, test = parse_log.read_log(out / "runs" / rid / "train.log")
                curves[(row["key"], sd)] = (test["iteration"].tolist(), test["loss"].tolist())
    plot_data_efficiency(table, out / "data_efficiency.png")
    plot_curves(curves, out / "finetune_curves.png")
    table["content_sha256"] = _content_digest(table)
    files.write_json(out / "table2.json", table)
    files.write_text(out / "table2.md", markdown(table))
    return table


def _digest_matches(table):
    return None if table["content_sha256"] == _content_digest(table) else \
        "does not match the digest it was written with (edited by hand?)"


#: What ``table2.json`` holds (:func:`load_table2`): its content is what `make experiments` wrote.
TABLE2 = schema.Schema("Table 2", SCHEMA, "make experiments", {
    "set": str, "rows": [dict], "data_efficiency": [dict], "n_runs": schema.integer(0),
    "train_seconds_total": schema.number(0), "wall_seconds": schema.number(0), "where": str,
    "content_sha256": str}, check=_digest_matches)


def load_table2(path):
    """Read ``table2.json``, check its schema and that its content is what `make experiments` wrote."""
    return schema.load(path, TABLE2)


def _main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.experiments", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--out", help="experiments folder (e.g. runs/experiments)")
    p.add_argument("--set", choices=sorted(SETS), default="default", help="which set (default: %(default)s)")
    p.add_argument("--workers", type=int, default=0,
                   help="trainings as tasks on a Dask LocalCluster of this many processes (default 0: serially)")
    p.add_argument("--scheduler", help="address of a running Dask scheduler (tcp://host:8786) instead")
    p.add_argument("--threads", type=int, help="Caffe threads per run (default: the cores per worker)")
    p.add_argument("--gpu", type=int, help="CUDA device id (needs `make caffe GPU=1`; serial only)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates (default: %(default)s)")
    p.add_argument("--cache", help="mnfinder wheel cache folder (default: data_prep's, runs/cache)")
    p.add_argument("--score", metavar="RUN", help="score one trained run folder into RUN/score.json (what each "
                   "task runs in a child process) instead; with --data and --post")
    p.add_argument("--data", help="with --score: the real dataset to score on")
    p.add_argument("--post", action="store_true", help="with --score: row 5's post-processing too")
    args = p.parse_args(argv)
    if args.score:
        if not args.data:
            p.error("--score needs --data")
        cached_score(args.score, args.data, args.post, args.gpu)
        return 0
    if not args.out:
        p.error("--out is required")
    if args.bootstrap < 100:
        p.error("--bootstrap must be at least 100")
    if args.workers < 0:
        p.error("--workers must be >= 0")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    if args.gpu is not None and (args.workers or args.scheduler):
        p.error("--gpu runs serially on one device: leave out --workers and --scheduler")
    try:
        table = run_set(args.set, args.out, args.gpu, args.bootstrap, args.workers, args.scheduler, args.threads,
                        args.cache)
    except KeyboardInterrupt:
        print("\nexperiments: interrupted; run the same command again to go on where it stopped", file=sys.stderr)
        return 130
    print(markdown(table))


def main(argv=None):
    """Run the command; return its exit status (see cellfcn.cli)."""
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
