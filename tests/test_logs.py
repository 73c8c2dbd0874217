"""cellfcn/parse_log.py and tools/plot_log.py on real `caffe train` logs (the committed fixture and a live run).

``python tests/test_logs.py`` rewrites the fixture tests/data/caffe_train.log with :func:`train_tiny`.
"""
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "data" / "caffe_train.log"

from cellfcn import parse_log
from tools import plot_log

SOLVER = """train_net: "{d}/train.prototxt"
test_net: "{d}/test.prototxt"
test_iter: 2
test_interval: 5
base_lr: 0.01
lr_policy: "step"
gamma: 0.1
stepsize: 12
momentum: 0.9
weight_decay: 0.001
display: 2
max_iter: {max_iter}
snapshot: 10
snapshot_prefix: "{d}/snap"
solver_mode: CPU
random_seed: 0
"""


def train_tiny(workdir):
    """Train a tiny net with the real `caffe train`: 14 iterations, then resume from iteration 10 to 24.

    The two runs' stderr are appended to one log, as a resumed training writes it. Returns the log text.
    """
    from cellfcn import caffe_env

    caffe = caffe_env.import_caffe()
    import h5py

    L = caffe.layers
    d = Path(workdir)
    rng = np.random.default_rng(0)
    x = rng.random((32, 1, 16, 16), dtype=np.float32)
    with h5py.File(d / "d.h5", "w") as f:
        f["data"] = x
        f["label"] = (x > 0.5).astype(np.float32)
    (d / "d.txt").write_text(f"{d / 'd.h5'}\n")
    for phase in ("train", "test"):
        n = caffe.NetSpec()
        n.data, n.label = L.HDF5Data(ntop=2, hdf5_data_param=dict(source=str(d / "d.txt"), batch_size=4))
        n.conv = L.Convolution(n.data, num_output=4, kernel_size=3, pad=1, weight_filler=dict(type="xavier"))
        n.relu = L.ReLU(n.conv, in_place=True)
        n.score = L.Convolution(n.relu, num_output=2, kernel_size=1, weight_filler=dict(type="xavier"))
        n.loss = L.SoftmaxWithLoss(n.score, n.label)
        if phase == "test":
            n.accuracy = L.Accuracy(n.score, n.label)
        (d / f"{phase}.prototxt").write_text(str(n.to_proto()))
    binary = str(caffe_env.caffe_binary())
    env = {"GLOG_logtostderr": "1", "PATH": "/usr/bin:/bin"}
    log = d / "train.log"
    with open(log, "w") as out:
        for max_iter, extra in ((14, []), (24, ["-snapshot", str(d / "snap_iter_10.solverstate")])):
            (d / "solver.prototxt").write_text(SOLVER.format(d=d, max_iter=max_iter))
            subprocess.run([binary, "train", "-solver", str(d / "solver.prototxt"), *extra], stdout=out,
                           stderr=subprocess.STDOUT, env=env, check=True, cwd=d)
    return log.read_text()


def _rows(table):
    return {int(i): {k: float(v[n]) for k, v in table.items() if k != "iteration"}
            for n, i in enumerate(table["iteration"])}


@pytest.fixture(scope="module")
def fixture_text():
    return FIXTURE.read_text()


def _segments(text):
    """The fixture split before the second run's first line (the resumed run)."""
    starts = [m.start() for m in re.finditer(r"^I\d+ [\d:.]+ +\d+ caffe\.cpp:\d+\] Use CPU", text, re.M)]
    assert len(starts) == 2
    return text[:starts[1]], text[starts[1]:]


def test_fixture_resumed_run_keeps_latest(fixture_text):
    train, test = parse_log.parse_log(fixture_text)
    assert train["iteration"].tolist() == list(range(0, 25, 2))
    assert test["iteration"].tolist() == [0, 5, 10, 15, 20]
    assert set(test) == {"iteration", "seconds", "accuracy", "loss"}
    rows, trows = _rows(train), _rows(test)
    # Iterations 10-14 ran twice; the resumed run's values win.
    assert rows[10]["loss"] == pytest.approx(0.692731)
    assert rows[12]["loss"] == pytest.approx(0.701599)
    assert rows[14]["loss"] == pytest.approx(0.699543)
    assert trows[10]["accuracy"] == pytest.approx(0.523926)
    assert trows[10]["loss"] == pytest.approx(0.69763)
    assert rows[0]["loss"] == pytest.approx(0.698006) and trows[0]["accuracy"] == pytest.approx(0.521484)
    # step policy: 0.01, then 0.001 from iteration 12; the final line has a loss but no lr.
    assert [rows[i]["lr"] for i in (0, 10, 12, 22)] == pytest.approx([0.01, 0.01, 0.001, 0.001])
    assert math.isnan(rows[24]["lr"]) and rows[24]["loss"] == pytest.approx(0.69817)
    # Training time only: non-decreasing across the resume, starting near 0.
    seconds = np.concatenate([train["seconds"], test["seconds"]])[np.argsort(
        np.concatenate([train["iteration"], test["iteration"]]), kind="stable")]
    assert seconds[0] >= 0 and seconds[0] < 5
    assert np.all(np.diff(train["seconds"]) >= 0) and np.all(np.diff(test["seconds"]) >= 0)


def test_truncated_last_line_is_dropped(fixture_text):
    cut = fixture_text.index("loss = 0.699543") + len("loss = 0.69")
    train, test = parse_log.parse_log(fixture_text[:cut])
    rows = _rows(train)
    assert max(rows) == 12  # the partial "Iteration 14 ... loss = 0.69" line is not read as 0.69
    assert rows[12]["loss"] == pytest.approx(0.701599)
    assert test["iteration"].tolist() == [0, 5, 10]


def test_any_cut_parses_to_a_prefix(fixture_text):
    full_train, full_test = parse_log.parse_log(fixture_text)
    for cut in range(0, len(fixture_text), 211):
        train, test = parse_log.parse_log(fixture_text[:cut])
        assert np.all(np.diff(train["iteration"]) > 0) and np.all(np.diff(test["iteration"]) > 0)
        assert set(train["iteration"].tolist()) <= set(full_train["iteration"].tolist())
        assert set(test["iteration"].tolist()) <= set(full_test["iteration"].tolist())
        assert np.all(np.isfinite(train["seconds"]))


def test_killed_mid_line_then_resumed(fixture_text):
    first, second = _segments(fixture_text)
    # The first run dies in the middle of its "Iteration 12" line; the resumed run's log follows on it.
    killed = first[:first.index("Iteration 12 (") + len("Iteration 12 (2 it")]
    train, test = parse_log.parse_log(killed + second)
    expected_train, expected_test = parse_log.parse_log(fixture_text)
    assert train["iteration"].tolist() == expected_train["iteration"].tolist()
    assert test["iteration"].tolist() == expected_test["iteration"].tolist()
    np.testing.assert_allclose(train["loss"], expected_train["loss"])
    np.testing.assert_allclose(test["accuracy"], expected_test["accuracy"])


def test_resume_point_comes_from_the_snapshot_name(fixture_text):
    first, second = _segments(fixture_text)
    # Without the resumed run's own lines for iterations 10-13, the rows the first run logged there are stale
    # all the same: the run restarted from snap_iter_10.
    second = "".join(line for line in second.splitlines(keepends=True)
                     if not re.search(r"Iteration 1[0-3][ ,]|Test net output", line))
    train, test = parse_log.parse_log(first + second)
    assert train["iteration"].tolist() == [0, 2, 4, 6, 8, 14, 16, 18, 20, 22, 24]
    assert test["iteration"].tolist() == [0, 5, 15, 20]
    assert np.isnan(test["accuracy"]).tolist() == [False, False, True, True]


def test_new_run_from_an_earlier_iteration_drops_later_rows(fixture_text):
    first, _ = _segments(fixture_text)
    # The same run appended twice (a restart from scratch): only the second copy's rows remain.
    train, test = parse_log.parse_log(first + first)
    once_train, once_test = parse_log.parse_log(first)
    assert train["iteration"].tolist() == [0, 2, 4, 6, 8, 10, 12, 14]
    assert test["iteration"].tolist() == once_test["iteration"].tolist()
    # Nothing of the first copy is kept, so its time does not carry over either.
    np.testing.assert_allclose(train["seconds"], once_train["seconds"])
    np.testing.assert_allclose(train["loss"], once_train["loss"])


def test_short_glog_date_and_year_rollover(fixture_text):
    short = re.sub(r"^([IWEF])\d{4}(\d{4}) ", r"\1\2 ", fixture_text, flags=re.M)
    long_train, long_test = parse_log.parse_log(fixture_text)
    train, test = parse_log.parse_log(short)
    np.testing.assert_allclose(train["seconds"], long_train["seconds"], atol=1e-6)
    np.testing.assert_allclose(test["accuracy"], long_test["accuracy"])
    text = ("I1231 23:59:58.000000  1 solver.cpp:45] Initializing solver from parameters: \n"
            "I1231 23:59:59.000000  1 solver.cpp:239] Iteration 0 (0 iter/s, 0s/1 iters), loss = 0.5\n"
            "I0101 00:00:03.500000  1 solver.cpp:239] Iteration 1 (1 iter/s, 1s/1 iters), loss = 0.25\n")
    train, _ = parse_log.parse_log(text)
    np.testing.assert_allclose(train["seconds"], [1.0, 5.5])


def test_not_a_log_is_an_error(tmp_path, capsys):
    path = tmp_path / "x.log"
    path.write_text("hello\nworld\n")
    assert parse_log.main([str(path)]) == 1
    assert "no training iterations" in capsys.readouterr().err
    assert parse_log.main([str(tmp_path / "missing.log")]) == 1


def test_cli_writes_csv(tmp_path):
    out = tmp_path / "log.csv"
    done = subprocess.run([sys.executable, "-m", "cellfcn.parse_log", str(FIXTURE), "--out", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    import csv

    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["iteration", "seconds", "lr", "train_loss", "test_accuracy", "test_loss"]
    by_it = {int(r["iteration"]): r for r in rows}
    assert sorted(by_it) == sorted(set(range(0, 25, 2)) | {5, 15})
    assert float(by_it[10]["test_accuracy"]) == pytest.approx(0.523926)
    assert by_it[5]["train_loss"] == "" and by_it[5]["test_loss"] != ""
    assert not list(tmp_path.glob(".*tmp*"))


def test_live_caffe_log(tmp_path):
    """The parser reads what the Caffe build in use writes today (not only the committed fixture)."""
    text = train_tiny(tmp_path)
    train, test = parse_log.parse_log(text)
    assert train["iteration"].tolist() == list(range(0, 25, 2))
    assert test["iteration"].tolist() == [0, 5, 10, 15, 20]
    assert np.all(np.isfinite(test["accuracy"])) and np.all((test["accuracy"] >= 0) & (test["accuracy"] <= 1))
    assert np.all(np.isfinite(train["loss"]))


def _png_size(path):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plot_log_two_stages(tmp_path):
    for stage, ipe in (("pretrain", 4), ("finetune", 8)):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "train.log").write_text(FIXTURE.read_text())
        (tmp_path / stage / "run.json").write_text(json.dumps({"iters_per_epoch": ipe}))
    out = tmp_path / "fig.png"
    code = plot_log.main(["--log", str(tmp_path / "pretrain" / "train.log"),
                          "--log", str(tmp_path / "finetune" / "train.log"), "--out", str(out)])
    assert code == 0
    width, height = _png_size(out)
    assert width > height  # iteration and epoch columns
    stages = plot_log.load_stages([tmp_path / "pretrain" / "train.log", tmp_path / "finetune" / "train.log"])
    assert [s["label"] for s in stages] == ["pretrain", "finetune"]
    assert [s["iters_per_epoch"] for s in stages] == [4, 8]


def test_plot_log_without_epochs_and_bad_args(tmp_path, capsys):
    out = tmp_path / "fig.png"
    assert plot_log.main(["--log", str(FIXTURE), "--out", str(out)]) == 0
    width, height = _png_size(out)
    assert width < height  # iteration column only: no iters_per_epoch known
    with pytest.raises(SystemExit):
        plot_log.main(["--log", str(FIXTURE), "--log", str(FIXTURE), "--iters-per-epoch", "3", "--out", str(out)])
    bad = tmp_path / "bad.log"
    bad.write_text("nothing\n")
    assert plot_log.main(["--log", str(bad), "--out", str(tmp_path / "bad.png")]) == 1
    assert not (tmp_path / "bad.png").exists()
    assert "error:" in capsys.readouterr().err


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        text = train_tiny(tmp)
    FIXTURE.write_text(text.replace(tmp, "/tmp/caffe-fixture"))
    print(f"wrote {FIXTURE}")
