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

from cellfcn.errors import InputError
from prototxt import net
from solvers import solve
from tools import infer

# Learnable parameters by hand: 3x3 convs (in*9*out + out) and the 1x1 score conv; the bilinear
# Deconvolutions are fixed (lr_mult 0) and not counted.
HAND_COUNT = sum(i * 9 * o + o for i, o in [(1, 32), (32, 64), (64, 128), (128, 512), (512, 128), (128, 64),
                                             (64, 32)]) + (32 * 2 + 2)


def test_hand_count_is_the_reports_figure():
    assert HAND_COUNT == 1_365_282


# The variants by hand: k5 has 25 weights per kernel, wide doubles every layer's channels; pool2 only moves
# one pooling (same layers, same count).
HAND_VARIANTS = {
    "fcrn_a": (HAND_COUNT, 38),
    "k5": (sum(i * 25 * o + o for i, o in [(1, 32), (32, 64), (64, 128), (128, 512), (512, 128), (128, 64),
                                            (64, 32)]) + (32 * 2 + 2), 68),
    "pool2": (HAND_COUNT, 26),
    "wide": (sum(i * 9 * o + o for i, o in [(1, 64), (64, 128), (128, 256), (256, 1024), (1024, 256),
                                             (256, 128), (128, 64)]) + (64 * 2 + 2), 38),
    "contour": (HAND_COUNT + 32 + 1, 38),  # one more score channel (3 classes): 32 weights and a bias
    # conv5, conv6 and conv7 also read conv3's 128, conv2's 64 and conv1's 32 channels (U-Net's skips).
    "contour_skip": (HAND_COUNT + 32 + 1 + 128 * 9 * 128 + 64 * 9 * 64 + 32 * 9 * 32, 38),
    "contour_skip_mn": (HAND_COUNT + 2 * (32 + 1) + 128 * 9 * 128 + 64 * 9 * 64 + 32 * 9 * 32, 38),  # 4 classes
    "contour_skip_mnw": (HAND_COUNT + 2 * (32 + 1) + 128 * 9 * 128 + 64 * 9 * 64 + 32 * 9 * 32, 38),  # weighted
}


def test_every_variant_is_described_by_hand():
    assert set(HAND_VARIANTS) == set(net.VARIANTS)
    assert HAND_VARIANTS["k5"][0] == 3_790_626 and HAND_VARIANTS["wide"][0] == 5_458_498  # ~2.8x and 4.0x
    for variant, (count, field) in HAND_VARIANTS.items():
        assert net.learnable_parameters(variant) == count, variant
        assert net.receptive_field(variant) == field, variant


@pytest.mark.parametrize("variant", sorted(net.VARIANTS))
def test_learnable_parameters_counted_with_pycaffe(caffe, variant):
    n = caffe.Net(str(net.deploy_path(variant)), caffe.TEST)
    proto = net.deploy_net(variant=variant)
    fixed = {layer.name for layer in proto.layer if layer.param and all(p.lr_mult == 0 for p in layer.param)}
    assert fixed == {f"up{i}" for i in range(8 - net.VARIANTS[variant]["pools"], 8)}
    learnable = sum(b.data.size for name, blobs in n.params.items() if name not in fixed for b in blobs)
    assert learnable == HAND_VARIANTS[variant][0]
    assert all(len(n.params[name]) == 1 for name in fixed)  # bias_term: false
    assert sum(layer.type == "Pooling" for layer in proto.layer) == net.VARIANTS[variant]["pools"]


def test_trained_nets_name_their_variant():
    assert net.variant_of("k5_finetune_train") == "k5" and net.variant_of("wide_deploy") == "wide"
    assert net.variant_of("fcrn_a_pretrain_train") == "fcrn_a" and net.variant_of("pool2_finetune_test") == "pool2"
    for name in ("someone_elses", "", "fcrn_a", "vgg16_deploy", "fcrn_a_scratch_train"):
        with pytest.raises(InputError, match="none of cellfcn's nets"):
            net.variant_of(name)
    with pytest.raises(ValueError, match="net must be one of"):
        net.deploy_path("vgg16")


def test_upsampling_is_bilinear_and_depthwise(caffe):
    n = caffe.Net(str(net.DEPLOY), caffe.TEST)
    w = n.params["up6"][0].data
    assert w.shape == (128, 1, 4, 4)
    ramp = np.array([0.25, 0.75, 0.75, 0.25])
    np.testing.assert_allclose(w[5, 0], np.outer(ramp, ramp))


@pytest.mark.parametrize("variant", sorted(net.VARIANTS))
def test_receptive_field_of_conv4(caffe, variant):
    n = caffe.Net(str(net.deploy_path(variant)), caffe.TEST)
    for name in ("conv1", "conv2", "conv3", "conv4"):  # positive weights: ReLUs pass everything
        n.params[name][0].data[...] = np.abs(n.params[name][0].data) + 1e-3
    stride = 2 ** net.VARIANTS[variant]["pools"]
    size, unit = 128, 64 // stride
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
        probe[0, 0, unit * stride + stride // 2 - 1, x] += 1000.0
        seen.append(not np.allclose(conv4(probe), ref))
    cols = np.flatnonzero(seen)
    field = HAND_VARIANTS[variant][1]
    assert len(cols) == field and cols[-1] - cols[0] == field - 1


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
    # A length in iterations keeps the configuration's shape: step at half, snapshots at a quarter, 10 tests.
    s = solve.schedule("finetune", 40, 8, iterations=165)
    assert (s["max_iter"], s["stepsize"], s["snapshot"], s["test_interval"], s["epochs"]) == (165, 82, 41, 17, 33.0)
    assert solve.schedule("finetune", 440, 8)["test_interval"] == 55  # per epoch otherwise, as before
    with pytest.raises(ValueError, match="not both"):
        solve.schedule("pretrain", 200, 8, epochs=2, iterations=10)


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


def test_a_variant_trains_and_its_model_names_its_net(caffe, tmp_path):
    syn = make_dataset(tmp_path / "synthetic", "synthetic", n_train=8, n_test=4, size=32)
    real = make_dataset(tmp_path / "real", "real", n_train=8, n_test=4, size=32, seed=5)
    _train("--stage", "pretrain", "--data", syn, "--out", tmp_path / "pool2", "--net", "pool2", "--batch", 4,
           "--iterations", 3)
    run = json.loads((tmp_path / "pool2" / "run.json").read_text())
    assert (run["net"], run["max_iter"], run["stepsize"]) == ("pool2", 3, 2)  # the step at half the length
    model = tmp_path / "pool2" / "final.caffemodel"
    assert infer.deploy_for(model) == net.deploy_path("pool2")
    params = infer.load_model(model).params
    assert "up5" not in params and "up6" in params
    _train("--stage", "pretrain", "--data", syn, "--out", tmp_path / "fcrn_a", "--batch", 4, "--iterations", 2)
    # pool2 has FCRN-A's layers and shapes: only the name a model carries tells them apart.
    proc = _train("--stage", "finetune", "--data", real, "--out", tmp_path / "ft", "--net", "pool2", "--weights",
                  tmp_path / "fcrn_a" / "final.caffemodel", "--iterations", 2, check=False)
    assert proc.returncode == 1 and "is a model of net 'fcrn_a', not 'pool2'" in proc.stderr
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "ft" / "train.log").exists()
    proc = _train("--stage", "pretrain", "--data", syn, "--out", tmp_path / "x", "--epochs", 1, "--iterations", 2,
                  check=False)
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr
