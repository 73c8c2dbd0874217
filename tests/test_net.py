"""FCRN-A in prototxt, the solvers, and tools/train.py driving `caffe train`."""
import json
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, make_dataset

from prototxt import net
from solvers import solve

# Learnable parameters by hand: 3x3 convs (in*9*out + out) and the 1x1 score conv; the bilinear
# Deconvolutions are fixed (lr_mult 0) and not counted.
HAND_COUNT = sum(i * 9 * o + o for i, o in [(1, 32), (32, 64), (64, 128), (128, 512), (512, 128), (128, 64),
                                             (64, 32)]) + (32 * 2 + 2)


def test_hand_count_is_the_reports_figure():
    assert HAND_COUNT == 1_365_282


def test_learnable_parameters_counted_with_pycaffe(caffe):
    n = caffe.Net(str(net.DEPLOY), caffe.TEST)
    proto = net.deploy_net()
    fixed = {layer.name for layer in proto.layer if layer.param and all(p.lr_mult == 0 for p in layer.param)}
    assert fixed == {"up5", "up6", "up7"}
    learnable = sum(b.data.size for name, blobs in n.params.items() if name not in fixed for b in blobs)
    assert learnable == HAND_COUNT
    assert all(len(n.params[name]) == 1 for name in fixed)  # bias_term: false


def test_upsampling_is_bilinear_and_depthwise(caffe):
    n = caffe.Net(str(net.DEPLOY), caffe.TEST)
    w = n.params["up6"][0].data
    assert w.shape == (128, 1, 4, 4)
    ramp = np.array([0.25, 0.75, 0.75, 0.25])
    np.testing.assert_allclose(w[5, 0], np.outer(ramp, ramp))


def test_receptive_field_of_conv4_is_38(caffe):
    n = caffe.Net(str(net.DEPLOY), caffe.TEST)
    for name in ("conv1", "conv2", "conv3", "conv4"):  # positive weights: ReLUs pass everything
        n.params[name][0].data[...] = np.abs(n.params[name][0].data) + 1e-3
    size, unit = 96, 6
    n.blobs["data"].reshape(1, 1, size, size)
    n.reshape()
    base = np.full((1, 1, size, size), 0.5, np.float32)

    def conv4(image):
        n.blobs["data"].data[...] = image
        n.forward(end="relu4")
        return n.blobs["conv4"].data[0, :, unit, unit].copy()

    ref = conv4(base)
    seen = []
    for x in range(size):  # a large bump wins every max-pool window it is in
        probe = base.copy()
        probe[0, 0, unit * 8 + 3, x] += 1000.0
        seen.append(not np.allclose(conv4(probe), ref))
    cols = np.flatnonzero(seen)
    assert len(cols) == 38 and cols[-1] - cols[0] == 37


@pytest.mark.parametrize("hw", [(8, 8), (64, 96), (128, 128), (200, 136)])
def test_output_has_input_size(caffe, hw):
    n = caffe.Net(str(net.DEPLOY), caffe.TEST)
    n.blobs["data"].reshape(2, 1, *hw)
    n.reshape()
    n.blobs["data"].data[...] = np.random.default_rng(0).random((2, 1, *hw))
    prob = n.forward()["prob"]
    assert prob.shape == (2, 2, *hw)
    np.testing.assert_allclose(prob.sum(axis=1), 1.0, rtol=1e-5)


def test_committed_prototxt_match_generator(tmp_path):
    for name, (title, param) in net.default_files().items():
        net.write_prototxt(tmp_path / name, param, title)
        committed = REPO / "prototxt" / name
        assert committed.is_file(), f"{name} missing: run make prototxt"
        assert committed.read_text() == (tmp_path / name).read_text(), f"{name} is stale: run make prototxt"
    solve.write_defaults(tmp_path)
    for path in tmp_path.glob("*_*.prototxt"):
        if path.name.startswith(("pretrain_default", "pretrain_paper", "finetune_default", "finetune_paper")):
            assert (REPO / "solvers" / path.name).read_text() == path.read_text(), f"{path.name} is stale"


def test_schedule_turns_epochs_into_iterations():
    s = solve.schedule("pretrain", 200, 8, "paper")
    assert (s["iters_per_epoch"], s["max_iter"], s["stepsize"], s["base_lr"]) == (25, 1500, 500, 0.01)
    assert solve.schedule("finetune", 440, 8, "paper", epochs=3)["max_iter"] == 165
    assert solve.schedule("pretrain", 201, 8)["iters_per_epoch"] == 26
    assert solve.largest_divisor(96, 16) == 16 and solve.largest_divisor(97, 16) == 1
    with pytest.raises(ValueError, match="config"):
        solve.schedule("pretrain", 200, 8, "fast")
    with pytest.raises(ValueError, match="epochs"):
        solve.schedule("pretrain", 200, 8, epochs=0)


def _train(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "tools.train", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stdout[-2000:] + proc.stderr[-2000:])
    return proc


def _test_outputs(log):
    return {int(it): float(loss) for it, loss in re.findall(
        r"Iteration (\d+), Testing net.*?Test net output #\d+: loss = ([0-9.eE+-]+)", log, re.S)}


@pytest.mark.parametrize("fmt", ["hdf5", "lmdb"])
def test_pretrain_lowers_loss_then_finetune_starts_from_its_weights(caffe, tmp_path, monkeypatch, fmt):
    syn = make_dataset(tmp_path / "synthetic", "synthetic", n_train=16, n_test=8, size=32, formats=(fmt,))
    real = make_dataset(tmp_path / "real", "real", n_train=8, n_test=4, size=32, seed=5, formats=(fmt,))
    pre, fine = tmp_path / "pretrain", tmp_path / "finetune"
    _train("--stage", "pretrain", "--data", syn, "--out", pre, "--batch", 4, "--epochs", 30, "--format", fmt,
           "--config", "paper")  # its first learning-rate step comes after 20 epochs
    run = json.loads((pre / "run.json").read_text())
    assert run["status"] == "done" and run["max_iter"] == 120 and run["iters_per_epoch"] == 4
    losses = _test_outputs((pre / "train.log").read_text())
    assert losses[120] < 0.8 * losses[0]
    assert (pre / "final.caffemodel").read_bytes() == (pre / "snap_iter_120.caffemodel").read_bytes()

    _train("--stage", "finetune", "--data", real, "--out", fine, "--weights", pre / "final.caffemodel",
           "--batch", 4, "--epochs", 2, "--format", fmt)
    log = (fine / "train.log").read_text()
    assert "Finetuning from" in log
    # The test loss at iteration 0 is the pretrained model's loss on the val split: the first weights are its.
    monkeypatch.chdir(real)  # HDF5 list files name their .h5 relative to the dataset folder
    n = caffe.Net(str(fine / "test.prototxt"), caffe.TEST, weights=str(pre / "final.caffemodel"))
    val_loss = np.mean([n.forward()["loss"] for _ in range(json.loads((fine / "run.json").read_text())["n_test"]
                                                            // n.blobs["data"].num)])
    assert _test_outputs(log)[0] == pytest.approx(val_loss, rel=1e-4)
    # A second run with the same inputs does nothing.
    assert "up to date" in _train("--stage", "finetune", "--data", real, "--out", fine, "--weights",
                                  pre / "final.caffemodel", "--batch", 4, "--epochs", 2, "--format", fmt).stdout


def test_interrupted_run_resumes_from_its_snapshot(tmp_path):
    syn = make_dataset(tmp_path / "synthetic", "synthetic", n_train=16, n_test=8)
    out = tmp_path / "pretrain"
    args = [sys.executable, "-m", "tools.train", "--stage", "pretrain", "--data", str(syn), "--out",
            str(out), "--batch", "4", "--epochs", "100"]
    # A shell without job control starts background jobs with SIGINT ignored, and Python keeps an ignored
    # SIGINT; give the child the default disposition a terminal would.
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not list(out.glob("snap_iter_*.solverstate")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # like Ctrl-C: Caffe snapshots, then stops
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "resume" in err
    stopped = max(int(p.stem.split("_")[-1]) for p in out.glob("snap_iter_*.solverstate"))
    assert 0 < stopped < 400
    result = _train("--stage", "pretrain", "--data", syn, "--out", out, "--batch", 4, "--epochs", 100)
    assert f"resuming from iteration {stopped}" in result.stdout
    log = (out / "train.log").read_text()
    assert f"Resuming from {out / f'snap_iter_{stopped}.solverstate'}" in log
    assert json.loads((out / "run.json").read_text())["resumed_from"] == stopped
    assert (out / "final.caffemodel").is_file()


def test_train_rejects_missing_dataset_and_weights(tmp_path):
    proc = _train("--stage", "pretrain", "--data", tmp_path / "none", "--out", tmp_path / "o", check=False)
    assert proc.returncode == 1 and "make data" in proc.stderr and proc.stderr.count("\n") == 1
    syn = make_dataset(tmp_path / "synthetic")
    proc = _train("--stage", "finetune", "--data", syn, "--out", tmp_path / "o", "--weights", tmp_path / "x.caffemodel",
                  check=False)
    assert proc.returncode == 1 and "make pretrain" in proc.stderr
    proc = _train("--stage", "pretrain", "--data", syn, "--out", tmp_path / "o", "--format", "lmdb", check=False)
    assert proc.returncode == 1 and "no lmdb files" in proc.stderr
