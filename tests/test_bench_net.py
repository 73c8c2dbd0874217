"""bench/: the PyTorch speed peer is the same FCRN-A as our Caffe net, and the benchmark plumbing is right.

Same net: with Caffe's random weights copied in, PyTorch gives Caffe's deploy output and Caffe's training loss
and gradients. No timings are asserted here (speed lives in `make bench`).
"""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from bench import fcrn_torch, flops, nets, segment, train_step
from cellfcn import caffe_env
from prototxt.net import DEPLOY
from tools import infer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def deploy(caffe):
    caffe.set_random_seed(3)
    return caffe.Net(str(DEPLOY), caffe.TEST)


def _torch_from(net):
    return fcrn_torch.load_params(fcrn_torch.FCRNA(), fcrn_torch.caffe_params(net))


def test_torch_net_has_the_papers_parameter_count(deploy):
    model = fcrn_torch.FCRNA()
    assert fcrn_torch.n_learnable(model) == 1_365_282
    caffe_learnable = sum(b.data.size for name, blobs in deploy.params.items() if not name.startswith("up")
                          for b in blobs)
    assert caffe_learnable == 1_365_282


def test_torch_upsampling_is_caffes_bilinear_filler(deploy):
    model = fcrn_torch.FCRNA()
    for name in ("up5", "up6", "up7"):
        np.testing.assert_array_equal(getattr(model, name).weight.numpy(), deploy.params[name][0].data)
        assert not getattr(model, name).weight.requires_grad


def test_deploy_output_matches_caffe(deploy):
    rng = np.random.default_rng(0)
    x = rng.random((2, 1, 48, 64), dtype=np.float32)  # non-square, batch of two
    deploy.blobs["data"].reshape(*x.shape)
    deploy.reshape()
    deploy.blobs["data"].data[...] = x
    prob_caffe = deploy.forward()["prob"].copy()
    with torch.no_grad():
        prob_torch = torch.softmax(_torch_from(deploy)(torch.from_numpy(x)), dim=1).numpy()
    assert prob_torch.shape == prob_caffe.shape == (2, 2, 48, 64)
    np.testing.assert_allclose(prob_torch, prob_caffe, atol=2e-6)
    assert prob_caffe[:, 1].std() > 1e-4  # the comparison is not between two constant maps


def test_training_loss_and_gradients_match_caffe(caffe, tmp_path):
    batch, size = 2, 32
    path = tmp_path / "train.prototxt"
    path.write_text(nets.train_prototxt(batch, size))
    caffe.set_random_seed(5)
    net = caffe.Net(str(path), caffe.TRAIN)
    data, label = nets.batch_arrays(batch, size, seed=1)
    net.blobs["data"].data[...] = data
    net.blobs["label"].data[...] = label
    loss_caffe = float(net.forward()["loss"])
    net.backward()

    model = _torch_from(net)
    loss = F.cross_entropy(model(torch.from_numpy(data)), torch.from_numpy(label[:, 0]).long())
    loss.backward()
    assert loss.item() == pytest.approx(loss_caffe, rel=1e-5)
    for name, blobs in net.params.items():
        module = getattr(model, name)
        if name.startswith("up"):
            assert module.weight.grad is None  # fixed, as Caffe's lr_mult 0
            continue
        for blob, param in zip(blobs, (module.weight, module.bias)):
            scale = np.abs(blob.diff).max()
            assert scale > 0
            np.testing.assert_allclose(param.grad.numpy(), blob.diff, atol=1e-4 * scale, err_msg=name)


def test_analytic_flops_match_a_count_over_the_torch_layers():
    model = fcrn_torch.FCRNA()
    counted = {}

    def hook(module, args, out, name):
        per_output = module.weight[0].numel() if isinstance(module, torch.nn.Conv2d) else \
            module.weight.shape[1] * module.kernel_size[0] * module.kernel_size[1] / module.stride[0] ** 2
        counted[name] = 2 * per_output * out.numel()

    for name in flops.LAYERS:
        getattr(model, name).register_forward_hook(lambda m, a, o, name=name: hook(m, a, o, name))
    with torch.no_grad():
        model(torch.zeros(1, 1, 128, 96))
    analytic = flops.layer_flops(128, 96)
    assert counted.keys() == analytic.keys()
    for name, value in counted.items():
        assert analytic[name]["forward"] == pytest.approx(value), name
    assert flops.forward_flops(128, 128) == pytest.approx(3.048e9, rel=1e-3)  # "about 3.0 GFLOP" per patch
    with pytest.raises(ValueError):
        flops.layer_flops(100, 128)


def test_benchmark_times_the_products_tiling():
    # tools.infer's defaults: 2048 px in windows of 512 with 40 px margins -> 5 x 5 windows.
    shapes = segment.window_shapes(2048, infer.TILE, infer.MARGIN)
    assert len(shapes) == 25 and max(shapes) == (512, 512)
    assert segment.window_shapes(64, 72, 16) == [(64, 64)]


def test_caffe_time_log_is_parsed(tmp_path):
    path = tmp_path / "train.prototxt"
    path.write_text(nets.train_prototxt(1, 16))
    timing = train_step.caffe_time(path, 1)
    assert list(timing["layers"])[:4] == ["data", "label", "conv1", "relu1"]
    assert set(flops.LAYERS) <= set(timing["layers"])
    assert all(set(t) == {"forward", "backward"} for t in timing["layers"].values())
    assert timing["forward_backward"] > 0


def test_train_step_cli_runs_both_frameworks(tmp_path):
    out = tmp_path / "train.json"
    proc = subprocess.run([sys.executable, "-m", "bench.train_step", "--batch", "1", "--size", "32",
                           "--rounds", "2", "--steps", "1", "--warmup", "0", "--layer-iters", "1", "--threads", "1",
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    for label in ("caffe", "torch"):
        assert len(r[label]["round_ms"]) == 2 and r[label]["patches_per_s"] > 0
    assert r["ratio_caffe_over_torch"] == pytest.approx(r["caffe"]["patches_per_s"] / r["torch"]["patches_per_s"],
                                                        rel=1e-2)
    assert [row["layer"] for row in r["layers"]] == list(flops.LAYERS)
    assert "Caffe / PyTorch" in proc.stdout or "of PyTorch" in proc.stdout


def test_a_variant_runs_another_caffe_build(tmp_path):
    """CAFFE_ROOT in a variant: its worker imports that build's pycaffe and times that build's caffe binary."""
    other = tmp_path / "other-caffe"
    shutil.copytree(caffe_env.caffe_binary().parent.parent, other, symlinks=True)
    r = train_step.run(batch=1, size=16, threads=1, rounds=1, steps=1, warmup=0, layer_iters=1, frameworks=("caffe",),
                       variants={"other": {"CAFFE_ROOT": str(other)}})
    assert r["caffe:other"]["patches_per_s"] > 0
    assert r["build"]["caffe:other"]["binary"] == str(other / "bin" / "caffe") != r["build"]["caffe"]["binary"]


def test_a_variant_without_a_build_fails_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench.segment", "--size", "96", "--tile", "48", "--margin", "16",
                           "--rounds", "1", "--threads", "1", "--variant", f"x=CAFFE_ROOT={tmp_path / 'none'}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: caffe:x worker failed: pycaffe not found under ")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_segment_cli_agrees_between_frameworks(tmp_path):
    out = tmp_path / "seg.json"
    proc = subprocess.run([sys.executable, "-m", "bench.segment", "--size", "96", "--tile", "48",
                           "--margin", "16", "--rounds", "1", "--threads", "1", "--variant", "gemm=CAFFE_ENGINE=caffe",
                           "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["max_abs_prob_diff"] < 1e-5 and r["max_abs_prob_diff_to_default"]["caffe:gemm"] < 1e-5
    assert r["caffe"]["mp_per_s"] > 0 and r["torch"]["mp_per_s"] > 0 and r["caffe:gemm"]["mp_per_s"] > 0


@pytest.mark.parametrize("module, args", [
    ("bench.train_step", ["--size", "100"]), ("bench.train_step", ["--frameworks", "tensorflow"]),
    ("bench.train_step", ["--variant", "novalue"]), ("bench.segment", ["--size", "100"]),
    ("bench.segment", ["--variant", "label="]), ("bench.segment", ["--variant", "x=A=1,novalue"])])
def test_bench_clis_reject_bad_arguments(module, args):
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1


def test_bench_reports_each_engine():
    from bench import run_all, train_step

    r = train_step.run(batch=1, size=16, threads=1, rounds=1, steps=1, warmup=0, layer_iters=1,
                       variants=run_all.ENGINE_VARIANTS)
    assert {"caffe", "caffe:gemm", "torch"} <= set(r) and r["caffe:gemm"]["ratio_over_torch"] > 0
    assert any("dnnl" in lib for lib in r["build"]["caffe"]["libraries"])
    md = run_all.markdown(dict(date="today", machine=dict(r["machine"], threads=1), train_step=r))
    assert "ours, default engine (oneDNN)" in md and "ours, CAFFE_ENGINE=caffe (GEMM)" in md
    conv7 = next(line for line in md.splitlines() if line.startswith("| conv7 |"))
    assert conv7.count("%") == 6  # forward and backward % of peak for each of the three
