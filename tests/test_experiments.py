"""Table 2 (`make experiments`): the plans, the interval over seeds and images, the verdicts, row 5's
post-processing, the caches and their digests, thread records, progress and bad arguments. The whole quick set
runs here serially and on a real 2-worker Dask LocalCluster (same scores, same weights), and in
tests/test_reproduce.py after `make reproduce QUICK=1`, for the report."""
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from cellfcn import caffe_env, files
from cellfcn import metrics as M
from cellfcn.errors import InputError
from prototxt import net
from tools import experiments as X

MAIN_CLAIM = ("synthetic", "pretrained", "xavier", "xavier-equal")


def _runs(name):
    datasets, runs, rows = X.plan(name)
    return datasets, {r["id"]: r for r in runs}, {r["key"]: r for r in rows}, runs


@pytest.mark.parametrize("name", ["default", "full"])
def test_plans_give_every_row_three_seeds_and_the_main_claim_the_product_schedule(name):
    datasets, by_id, keys, runs = _runs(name)
    s = X.SETS[name]
    assert all(len(r["runs"]) >= 3 for r in keys.values())
    for key in MAIN_CLAIM:
        assert len(keys[key]["runs"]) >= (5 if name == "full" else 3) and not keys[key]["short"]
    for sd, rid in keys["pretrained"]["runs"].items():  # make reproduce's lengths
        fine = by_id[rid]
        assert (fine["iterations"], by_id[fine["weights"]]["iterations"]) == (660, 500)
        assert by_id[keys["synthetic"]["runs"][sd]]["iterations"] == 500
        assert by_id[keys["xavier"]["runs"][sd]]["iterations"] == 660
        assert by_id[keys["xavier-equal"]["runs"][sd]]["iterations"] == 1160
        assert by_id[keys["xavier-equal"]["runs"][sd]]["weights"] is None
    assert keys["pretrained-post"]["runs"] == keys["pretrained"]["runs"]  # same models, post-processed
    for run in runs:
        assert run["data"] in datasets and run["score_data"] == f"real-n{s['real']}-s{run['seed']}"
        if run["weights"]:  # fine-tuning starts from the pretraining of the same net and seed
            pre = by_id[run["weights"]]
            assert (pre["stage"], pre["net"], pre["seed"]) == ("pretrain", run["net"], run["seed"])
            assert runs.index(pre) < runs.index(run)  # serial order: pretraining first
    assert len(runs) == len(by_id)  # a model shared by rows is trained once
    for r in keys.values():  # every row is compared with the report's method on its own schedule
        if r["ref"]:
            ref = keys[r["ref"]]
            assert ref["init"] == "pretrained" and ref["n_real"] == s["real"] and ref["net"] == net.DEFAULT
            assert ref["short"] == r["short"] or r["key"] == "pretrained-short"
    for k in s["sizes"]:  # every training-set size gets the side schedule's iterations
        run = by_id[keys[f"xavier-n{k}"]["runs"][0]]
        assert run["iterations"] == s["side"]["finetune"] and datasets[run["data"]]["n_train"] == k


def test_default_set_labels_its_short_rows_and_full_set_has_the_variants():
    _, _, keys, _ = _runs("default")
    short = {k for k, r in keys.items() if r["short"]}
    assert short == {"pretrained-short", "xavier-short", *(f"{i}-n{k}" for i in ("pretrained", "xavier")
                                                           for k in X.SETS["default"]["sizes"])}
    assert all(r["schedule"].startswith("short: ") for k, r in keys.items() if k in short)
    assert keys["pretrained-n5"]["ref"] == "pretrained-short" and keys["pretrained-short"]["ref"] == "pretrained"
    _, _, full, _ = _runs("full")
    assert not any(r["short"] for r in full.values()) and "pretrained-short" not in full
    assert {r["net"] for r in full.values() if r["row"] == "6"} == set(X.VARIANTS)
    assert full["k5-pretrained"]["ref"] == "pretrained"


def test_only_two_class_variants_are_rows():
    assert net.DEFAULT not in X.VARIANTS and {"k5", "pool2", "wide"} <= set(X.VARIANTS)
    assert all(net.VARIANTS[v].get("classes", 2) == 2 for v in X.VARIANTS)
    assert set(X.VARIANTS) == {v for v, spec in net.VARIANTS.items()
                               if v != net.DEFAULT and spec.get("classes", 2) == 2}


def test_image_counts_match_per_image_scores():
    rng = np.random.default_rng(0)
    label = rng.random((6, 8, 8)) > 0.7
    pred = rng.random((6, 8, 8)) > 0.5
    groups = np.array([3, 3, 7, 7, 7, 9])
    counts = X.image_counts(pred, label, groups)
    for row, g in zip(counts, (3, 7, 9)):
        sel = groups == g
        tp = np.count_nonzero(pred[sel] & label[sel])
        fp = np.count_nonzero(pred[sel] & ~label[sel])
        fn = np.count_nonzero(~pred[sel] & label[sel])
        assert row.tolist() == [tp, fp, sel.sum() * 64 - tp - fp - fn, fn]


def _counts(rng, n_images, quality):
    """Per-image counts of a model that finds about ``quality`` of 1000 cell pixels per image and errs on the
    rest (false positives as many as misses)."""
    tp = rng.integers(int(900 * quality), int(1000 * quality), n_images)
    fp = 1000 - tp
    return np.stack([tp, fp, np.full(n_images, 10000), 1000 - tp], axis=1)


def _mcc(counts):
    return M.scores(*np.asarray(counts).sum(0))["mcc"]


def test_paired_difference_is_the_mean_per_seed_difference_with_a_t_interval():
    rng = np.random.default_rng(1)
    good = {sd: _counts(rng, 12, 0.9) for sd in (0, 1, 2)}
    poor = {sd: _counts(rng, 12, 0.6) for sd in (0, 1, 2)}
    d = X.paired_difference(poor, good, n_boot=500)
    per_seed = [_mcc(poor[sd]) - _mcc(good[sd]) for sd in (0, 1, 2)]
    assert d["per_seed"] == pytest.approx(per_seed) and d["diff"] == pytest.approx(np.mean(per_seed))
    assert d["ci"][0] < d["diff"] < d["ci"][1] < 0 and d["seeds"] == [0, 1, 2]
    # The half-width is t(0.975, 2) times a standard error at least the seeds' own.
    half = (d["ci"][1] - d["ci"][0]) / 2
    assert half >= 4.30 * np.std(per_seed, ddof=1) / math.sqrt(3)
    same = X.paired_difference(good, good, n_boot=200)
    assert same["diff"] == 0 and same["ci"] == [0, 0]  # pairing: a row against itself never differs
    assert X.verdict(same, "better", "worse") == "identical on every seed"
    assert X.verdict(d, "better", "worse") == "worse"
    with pytest.raises(ValueError, match="share no seed"):
        X.paired_difference({5: poor[0]}, good)


def test_a_larger_spread_between_seeds_widens_the_interval():
    """Same per-seed mean difference, same test images: only the seeds' spread differs."""
    rng = np.random.default_rng(2)
    base = _counts(rng, 15, 0.85)
    ref = {sd: base for sd in range(3)}

    def shifted(offsets):  # a model that turns ``offset`` of every image's false positives into true positives
        out = {}
        for sd, off in enumerate(offsets):
            c = base.copy()
            moved = np.round(c[:, 1] * off).astype(np.int64)
            c[:, 0] += moved
            c[:, 1] -= moved
            c[:, 3] -= moved
            c[:, 2] += moved
            out[sd] = c
        return out

    narrow = X.paired_difference(shifted([0.10, 0.11, 0.12]), ref, n_boot=500)
    wide = X.paired_difference(shifted([0.01, 0.11, 0.21]), ref, n_boot=500)
    assert narrow["diff"] == pytest.approx(wide["diff"], abs=2e-3) and narrow["diff"] > 0
    width = {k: d["ci"][1] - d["ci"][0] for k, d in (("narrow", narrow), ("wide", wide))}
    assert width["wide"] > 5 * width["narrow"]
    assert X.verdict(narrow, "better", "worse") == "better"
    assert wide["ci"][0] < 0 < wide["ci"][1]
    assert X.verdict(wide, "better", "worse") == "not resolved by 3 seeds"


def test_one_seed_or_an_undefined_model_gives_no_interval():
    rng = np.random.default_rng(3)
    a, b = {0: _counts(rng, 8, 0.9)}, {0: _counts(rng, 8, 0.7), 1: _counts(rng, 8, 0.7)}
    one = X.paired_difference(a, b)
    assert one["ci"] is None and one["seeds"] == [0] and one["diff"] == pytest.approx(_mcc(a[0]) - _mcc(b[0]))
    assert X.verdict(one, "better", "worse") == "one seed: no interval, no claim"
    undefined = X.paired_difference({0: None, 1: a[0]}, b)
    assert math.isnan(undefined["diff"]) and undefined["ci"] is None
    assert X.verdict(undefined, "better", "worse").startswith("undefined")
    nothing = a[0].copy()
    nothing[:, 3] += nothing[:, 0] + nothing[:, 1]  # predicts no pixel: MCC undefined
    nothing[:, :2] = 0
    assert X.paired_difference({0: nothing}, b)["per_seed"] is None


def _fake_results(name, quality):
    """run_task results for every run of a set, with scores drawn per seed around ``quality(run)``."""
    _, runs, _ = X.plan(name)
    rng = np.random.default_rng(4)
    results = {}
    for r in runs:
        images = _counts(rng, 10, quality(r))
        score = dict(threshold=0.5, val_mcc=0.8, **M.scores(*images.sum(0)), auc=0.99, images=images.tolist())
        score["post"] = dict(score, opening_radius=0, min_area=0, auc=None)
        results[r["id"]] = dict(id=r["id"], weights=r["weights"], info=dict(seconds=10.0), score=score,
                                threads=2, trained=True, wall=11.0)
    return results


def test_table_and_findings_claim_only_what_the_intervals_carry():
    def quality(run):  # real-only models clearly worse, the rest alike
        return 0.5 if "xavier" in run["id"] else 0.9

    _, _, rows = X.plan("default")
    table = X.tabulate("default", rows, _fake_results("default", quality), n_boot=200)
    table.update(where="serial", wall_seconds=60.0)
    text = X.markdown(table)
    assert "short: 500 + 165" in text and "| 2s |" in text and "vs 2s" in text and "Caffe on 2 threads per run" in text
    assert "rows 2s, 3s and 7 on seeds 0, 1, 2 with a short schedule" in text  # the caption names the rows shown
    sentences = X.findings(table)
    claim = next(s for s in sentences if s.startswith("Claim"))
    assert claim.endswith("pretraining helps.")
    synthetic = next(s for s in sentences if s.startswith("Synthetic only"))
    assert "not resolved by 3 seeds" in synthetic
    for s in sentences:  # "better"/"worse" only where the interval excludes 0
        if s.endswith(("helps.", "better.", "hurts.", "costs MCC.")):
            low, high = (float(x) for x in s.split("[")[1].split("]")[0].split(", "))
            assert low > 0 or high < 0
    header, body = X.table_cells(table)
    assert len(body) == len(rows) and all(cell[5] == "3" for cell in body)


def test_score_cache_refuses_a_hand_edited_file(tmp_path):
    score = dict(mcc=0.9, threshold=0.4, inputs_sha256="k")
    score["content_sha256"] = X._content_digest(score)
    path = tmp_path / "score.json"
    files.write_json(path, score)
    assert X._cached(path, "k") == score and X._cached(path, "other") is None
    files.write_json(path, dict(score, mcc=0.95))
    with pytest.raises(X.ExperimentError, match=r"edited by hand\?\): delete it and run `make experiments`"):
        X._cached(path, "k")
    path.write_text("[1, 2]")
    with pytest.raises(X.ExperimentError, match="does not match"):
        X._cached(path, "k")


def test_table2_json_is_checked_on_reading(tmp_path):
    table = dict(schema_version=X.SCHEMA, set="quick", rows=[], data_efficiency=[], n_runs=0, train_seconds_total=0.0,
                 wall_seconds=1.0, where="serial")
    table["content_sha256"] = X._content_digest(table)
    path = tmp_path / "table2.json"
    files.write_json(path, table)
    assert X.load_table2(path) == table
    files.write_json(path, dict(table, rows=[{"mcc_mean": 1.0}]))
    with pytest.raises(InputError, match="edited by hand"):
        X.load_table2(path)
    files.write_json(path, dict(table, schema_version=1))
    with pytest.raises(InputError, match="schema 1"):
        X.load_table2(path)
    files.write_json(path, {k: v for k, v in table.items() if k != "wall_seconds"})
    with pytest.raises(InputError, match="wall_seconds is missing: run `make experiments` again"):
        X.load_table2(path)


def test_a_run_keeps_the_thread_count_it_started_with(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    assert X.run_threads(folder, 2) == 2
    assert X.run_threads(folder, 1) == 2  # a resumed run keeps its count
    assert json.loads((folder / "threads.json").read_text()) == {"threads": 2}
    old = tmp_path / "old"
    old.mkdir()
    (old / "run.json").write_text(json.dumps({"status": "done"}))
    assert X.run_threads(old, 2) is None and not (old / "threads.json").exists()  # trained before records
    (folder / "threads.json").write_text('{"threads": 0}')
    with pytest.raises(X.ExperimentError, match="holds no thread count"):
        X.run_threads(folder, 2)
    assert X.thread_env(3) == {"OMP_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "3", "MKL_NUM_THREADS": "3"}


def test_a_run_is_trained_by_one_call_at_a_time(tmp_path):
    with X.run_lock(tmp_path / "run"):
        with pytest.raises(X.ExperimentError, match="being trained by another"):
            with X.run_lock(tmp_path / "run"):
                pass
    with X.run_lock(tmp_path / "run"):  # released
        pass


def test_progress_counts_runs_and_estimates_the_time_left(capsys):
    _, runs, _ = X.plan("quick")
    progress = X.Progress(runs)
    progress.start(runs[0]["id"])
    assert f"0/{len(runs)} done, 1 running, {len(runs) - 1} left" in capsys.readouterr().out
    progress.finish(runs[0]["id"], trained=False, seconds=1.0)
    assert "up to date" in capsys.readouterr().out and "about" not in progress.status()  # no speed yet
    progress.start(runs[1]["id"])
    progress.finish(runs[1]["id"], trained=True, seconds=1.0, threads=2)
    line = capsys.readouterr().out
    assert f"run 2/{len(runs)} finished" in line and "trained in 0m01s on 2 threads" in line
    assert f"2/{len(runs)} done, 0 running" in line and "left (about" in line


def test_priorities_put_pretraining_first():
    _, runs, _ = X.plan("default")
    priority = X._priorities(runs)
    for r in runs:
        if r["weights"]:
            assert priority[r["weights"]] > priority[r["id"]]


def test_postprocessing_is_chosen_on_validation_and_removes_specks():
    label = np.zeros((4, 32, 32), bool)
    label[:, 8:20, 8:20] = True
    prob = np.where(label, 0.9, 0.1).astype(np.float32)
    prob[:, 26, 26] = prob[:, 2, 28] = 0.95  # single-pixel false positives
    chosen = X.choose_postprocess(prob, label, 0.5)
    assert chosen["val_mcc"] == pytest.approx(1.0)
    assert chosen["opening_radius"] > 0 or chosen["min_area"] > 1
    cleaned = X.postprocess(prob, 0.5, chosen["opening_radius"], chosen["min_area"])
    np.testing.assert_array_equal(cleaned, label)


def _experiments(*args):
    return subprocess.run([sys.executable, "-m", "tools.experiments", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True)


def test_bad_arguments_are_one_line(tmp_path):
    proc = _experiments("--set", "huge", "--out", tmp_path)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr and "Traceback" not in proc.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = _experiments("--set", "quick", "--out", blocker / "x")
    assert proc.returncode == 1 and proc.stderr.startswith("error:") and "Traceback" not in proc.stderr
    for args, message in ((("--out", tmp_path, "--gpu", "0", "--workers", "2"), "runs serially"),
                          (("--score", tmp_path), "--score needs --data"),
                          (("--out", tmp_path, "--workers", "-1"), "--workers must be"),
                          (("--out", tmp_path, "--threads", "0"), "--threads must be")):
        proc = _experiments(*args)
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.splitlines()) == 1


def _weights(model):
    return [(layer.name, [list(b.data) for b in layer.blobs]) for layer in caffe_env.read_model(model).layer
            if layer.blobs]


def _score(path):
    score = json.loads(path.read_text())
    del score["inputs_sha256"], score["content_sha256"]  # they hold the model file's digest, which holds paths
    return score


def test_quick_set_on_a_local_cluster_gives_the_serial_scores(tmp_path):
    """The whole quick set serially and on a 2-worker LocalCluster, one thread per run each: the same weights
    and scores for every run; then a hand-edited score is refused in one line."""
    serial, cluster = tmp_path / "serial", tmp_path / "cluster"
    first = _experiments("--set", "quick", "--out", serial, "--threads", 1)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    shutil.copytree(serial / "data", cluster / "data")  # data_prep finds it up to date
    second = _experiments("--set", "quick", "--out", cluster, "--threads", 1, "--workers", 2)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    _, runs, _ = X.plan("quick")
    assert f"run {len(runs)}/{len(runs)} finished" in second.stdout and "left (about" in second.stdout
    assert "Dask LocalCluster of 2 workers" in second.stdout and "Traceback" not in second.stderr
    for run in runs:
        a, b = serial / "runs" / run["id"], cluster / "runs" / run["id"]
        assert json.loads((b / "threads.json").read_text()) == {"threads": 1}
        assert _weights(a / "final.caffemodel") == _weights(b / "final.caffemodel"), run["id"]
        assert _score(a / "score.json") == _score(b / "score.json"), run["id"]
        assert json.loads((b / "run.json").read_text())["net"] == run["net"]
    one, two = (json.loads((d / "table2.json").read_text()) for d in (serial, cluster))
    assert [r["mcc_values"] for r in one["rows"]] == [r["mcc_values"] for r in two["rows"]]
    assert one["where"] == "serial" and all(t == 1 for r in two["rows"] for t in r["threads"])
    # A score edited by hand is refused, in one line that names the fix.
    edited = cluster / "runs" / runs[0]["id"] / "score.json"
    edited.write_text(edited.read_text().replace('"mcc": ', '"mcc": 0.99, "was": ', 1))
    again = _experiments("--set", "quick", "--out", cluster, "--threads", 1)
    last = again.stderr.strip().splitlines()[-1]  # after the children's progress bars
    assert again.returncode == 1 and last.startswith("error: ") and "Traceback" not in again.stderr
    assert "edited by hand" in last and "make experiments" in last
