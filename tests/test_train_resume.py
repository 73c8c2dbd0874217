"""tools.train resumes past a snapshot torn by a kill or a full disk, and leaves no glog files in /tmp."""
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, make_dataset

from cellfcn import caffe_env


def _train(data, out, tmp, *extra):
    env = {**os.environ, "TMPDIR": str(tmp)}  # glog's default folder for its own log files
    return subprocess.run([sys.executable, "-m", "tools.train", "--stage", "pretrain", "--data", str(data), "--out",
                           str(out), "--batch", "4", "--iterations", "20", *extra], capture_output=True, text=True,
                          cwd=REPO, env=env)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished pretraining with snapshots at iterations 5, 10, 15 and 20, and the TMPDIR it ran with."""
    root = tmp_path_factory.mktemp("resume")
    data = make_dataset(root / "synthetic", "synthetic", n_train=8, n_test=4)
    (root / "tmp").mkdir()
    proc = _train(data, root / "pretrain", root / "tmp")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return data, root / "pretrain", root / "tmp"


def test_caffe_train_leaves_no_glog_file(finished):
    _, out, tmp = finished
    assert sorted(p.name for p in out.glob("snap_iter_*.solverstate")) == [
        f"snap_iter_{i}.solverstate" for i in (10, 15, 20, 5)]
    assert list(tmp.iterdir()) == []  # was: caffe.INFO, caffe.<host>.<user>.log.INFO.<time>... per run
    assert "Optimization Done" in (out / "train.log").read_text()  # the log still has all of Caffe's lines


def _cut(path, keep):
    path.write_bytes(path.read_bytes()[:keep(path.stat().st_size)])


def _one_history_blob_fewer(path):
    """A solverstate cut exactly between two fields: it parses, with the last history blob missing."""
    state = caffe_env.caffe_pb2().SolverState()
    state.ParseFromString(path.read_bytes())
    del state.history[-1]
    path.write_bytes(state.SerializeToString())


@pytest.mark.parametrize("tear", [
    lambda out: _cut(out / "snap_iter_15.solverstate", lambda n: n // 2),  # killed while writing the state
    lambda out: _cut(out / "snap_iter_15.caffemodel", lambda n: n - 1000),  # disk full while writing weights
    lambda out: _one_history_blob_fewer(out / "snap_iter_15.solverstate"),
    lambda out: (out / "snap_iter_15.caffemodel").unlink(),
], ids=["state cut short", "weights cut short", "state cut between fields", "weights missing"])
def test_a_torn_newest_snapshot_resumes_from_the_one_before(finished, tmp_path, tear):
    data, done, tmp = finished
    out = tmp_path / "pretrain"
    subprocess.run(["cp", "-r", str(done), str(out)], check=True)
    # As a kill during the snapshot of iteration 15 leaves the run: no later snapshot, not finished.
    for name in ("snap_iter_20.caffemodel", "snap_iter_20.solverstate", "final.caffemodel"):
        (out / name).unlink()
    run = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps(dict(run, status="started")))
    tear(out)
    proc = _train(data, out, tmp)
    assert proc.returncode == 0, proc.stdout[-1000:] + proc.stderr[-2000:]  # was: Caffe aborted, at every rerun
    assert "the snapshot of iteration 15 is torn" in proc.stdout and "resuming from iteration 10" in proc.stdout
    assert f"Resuming from {out / 'snap_iter_10.solverstate'}" in (out / "train.log").read_text()
    assert (out / "final.caffemodel").is_file() and json.loads((out / "run.json").read_text())["resumed_from"] == 10
    assert (out / "snap_iter_15.solverstate").is_file()  # written again by the resumed run
