"""The oneDNN convolution engine of our Caffe patch (patches/0006) against Caffe's own im2col + GEMM path.

``CAFFE_ENGINE`` is read when a layer is set up, so each net here is built on the engine the environment
names then: ``caffe`` (the GEMM path), unset (oneDNN where it applies: 2-D float layers, not depthwise) or
``dnnl`` (oneDNN on every 2-D layer, the depthwise upsampling and the layers with under 16 channels too). Every check compares forward outputs,
data gradients, and weight and bias gradients (which Caffe accumulates), layer by layer; the whole FCRN-A;
and a few iterations of ``caffe train``.
"""
import os
import re
import subprocess

import numpy as np
import pytest

from bench import nets
from cellfcn import caffe_env
from conftest import run_caffe, toy_arrays, write_h5

caffe = caffe_env.import_caffe()

ENGINES = {"caffe": "caffe", "auto": None, "dnnl": "dnnl"}
LOG_MARK = "oneDNN engine"

# (layer type, channels in, num_output, group, input (h, w), kernel (h, w), stride (h, w), pad (h, w),
#  dilation (h, w), bias)
CASES = {
    "conv-3x3-same-bias": ("Convolution", 16, 24, 1, (9, 8), (3, 3), (1, 1), (1, 1), (1, 1), True),
    "conv-1x1": ("Convolution", 6, 2, 1, (7, 5), (1, 1), (1, 1), (0, 0), (1, 1), True),
    "conv-first-layer": ("Convolution", 1, 8, 1, (12, 12), (3, 3), (1, 1), (1, 1), (1, 1), True),
    "conv-rect-strided": ("Convolution", 4, 6, 1, (13, 11), (3, 5), (2, 3), (1, 2), (1, 1), False),
    "conv-partial-window": ("Convolution", 3, 4, 1, (10, 10), (3, 3), (2, 2), (0, 0), (1, 1), True),
    "conv-dilated": ("Convolution", 4, 4, 1, (11, 10), (3, 3), (1, 1), (2, 2), (2, 2), True),
    "conv-grouped": ("Convolution", 32, 48, 2, (8, 9), (3, 3), (1, 1), (1, 1), (1, 1), True),
    "deconv-x2": ("Deconvolution", 4, 6, 1, (5, 6), (4, 4), (2, 2), (1, 1), (1, 1), True),
    "deconv-grouped": ("Deconvolution", 6, 9, 3, (5, 4), (3, 3), (2, 1), (1, 0), (1, 1), False),
    "deconv-depthwise-bilinear": ("Deconvolution", 8, 8, 8, (6, 7), (4, 4), (2, 2), (1, 1), (1, 1), False),
}
RTOL, ATOL = 1e-4, 1e-5


def layer_prototxt(case, batch=3):
    """A one-layer net over Input ``data`` (batch, C, H, W) with force_backward."""
    kind, cin, nout, group, size, kernel, stride, pad, dilation, bias = CASES[case]
    return f"""name: "engine_case"
force_backward: true
layer {{ name: "data" type: "Input" top: "data"
  input_param {{ shape {{ dim: {batch} dim: {cin} dim: {size[0]} dim: {size[1]} }} }} }}
layer {{ name: "out" type: "{kind}" bottom: "data" top: "out"
  convolution_param {{ num_output: {nout} group: {group} bias_term: {str(bias).lower()}
    kernel_h: {kernel[0]} kernel_w: {kernel[1]} stride_h: {stride[0]} stride_w: {stride[1]}
    pad_h: {pad[0]} pad_w: {pad[1]} dilation: {dilation[0]} dilation: {dilation[1]}
    weight_filler {{ type: "gaussian" std: 1 }} bias_filler {{ type: "gaussian" std: 1 }} }} }}
"""


def set_engine(monkeypatch, engine):
    if ENGINES[engine] is None:
        monkeypatch.delenv("CAFFE_ENGINE", raising=False)
    else:
        monkeypatch.setenv("CAFFE_ENGINE", ENGINES[engine])


def net_pass(net, params, inputs, backward_twice=False):
    """Load ``params`` and ``inputs``, run forward and backward; return every blob's data and diff and every
    param diff. ``backward_twice``: a second backward, whose param diffs must add up as Caffe's do."""
    for layer, blobs in params.items():
        for blob, value in zip(net.params[layer], blobs):
            blob.data[...] = value
            blob.diff[...] = 0
    for name, value in inputs.items():
        net.blobs[name].data[...] = value
    net.forward()
    top = net.outputs[0]
    if top != "loss":
        net.blobs[top].diff[...] = np.random.default_rng(1).standard_normal(net.blobs[top].shape)
    net.backward()
    if backward_twice:
        net.backward()
    out = {}
    for name, blob in net.blobs.items():
        out[f"{name}.data"] = blob.data.copy()
        out[f"{name}.diff"] = blob.diff.copy()
    for layer, blobs in net.params.items():
        for i, blob in enumerate(blobs):
            out[f"{layer}.param{i}.diff"] = blob.diff.copy()
    return out


def assert_same(result, reference, rtol=RTOL, atol=ATOL, what=""):
    assert set(result) == set(reference)
    for name, ref in reference.items():
        scale = max(1.0, float(np.abs(ref).max()))
        np.testing.assert_allclose(result[name], ref, rtol=rtol, atol=atol * scale, err_msg=f"{what} {name}")


def random_params(net, rng):
    return {layer: [rng.standard_normal(b.data.shape).astype(np.float32) * 0.3 for b in blobs]
            for layer, blobs in net.params.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_matches_gemm_path(case, tmp_path, monkeypatch):
    path = tmp_path / "net.prototxt"
    path.write_text(layer_prototxt(case))
    rng = np.random.default_rng(sorted(CASES).index(case))
    results = {}
    for engine in ENGINES:
        set_engine(monkeypatch, engine)
        net = caffe.Net(str(path), caffe.TEST)
        if engine == "caffe":
            params = random_params(net, rng)
            x = rng.standard_normal(net.blobs["data"].shape).astype(np.float32)
        results[engine] = net_pass(net, params, {"data": x}, backward_twice=True)
    for engine in ("auto", "dnnl"):
        assert_same(results[engine], results["caffe"], what=f"{case} {engine}")
    # The second backward added to the param diffs: twice one backward's gradient.
    set_engine(monkeypatch, "dnnl")
    once = net_pass(caffe.Net(str(path), caffe.TEST), params, {"data": x})
    np.testing.assert_allclose(results["dnnl"]["out.param0.diff"], 2 * once["out.param0.diff"], rtol=1e-5,
                               atol=1e-5 * float(np.abs(once["out.param0.diff"]).max()))


def test_fcrn_a_every_layer_matches_gemm_path(tmp_path, monkeypatch):
    path = tmp_path / "fcrn.prototxt"
    path.write_text(nets.train_prototxt(batch=2, size=32))
    data, label = nets.batch_arrays(2, 32, seed=3)
    results = {}
    for engine in ENGINES:
        set_engine(monkeypatch, engine)
        caffe.set_random_seed(5)
        net = caffe.Net(str(path), caffe.TRAIN)
        if engine == "caffe":  # every engine runs the GEMM path's weights (bilinear upsampling included)
            params = {k: [b.data.copy() for b in v] for k, v in net.params.items()}
        results[engine] = net_pass(net, params, {"data": data, "label": label})
    assert any(k.startswith("conv4.param0") for k in results["caffe"])
    for engine in ("auto", "dnnl"):
        # Through 9 layers the sums run in another order: relative 1e-3 of each blob's largest value.
        assert_same(results[engine], results["caffe"], rtol=1e-3, atol=1e-4, what=engine)


def test_dnnl_is_deterministic(tmp_path, monkeypatch):
    path = tmp_path / "fcrn.prototxt"
    path.write_text(nets.train_prototxt(batch=2, size=32))
    data, label = nets.batch_arrays(2, 32, seed=4)
    set_engine(monkeypatch, "auto")
    runs = []
    for _ in range(2):
        caffe.set_random_seed(5)
        net = caffe.Net(str(path), caffe.TRAIN)
        params = {k: [b.data.copy() for b in v] for k, v in net.params.items()}
        runs.append(net_pass(net, params, {"data": data, "label": label}))
    for name in runs[0]:
        assert runs[0][name].tobytes() == runs[1][name].tobytes(), name


def test_shape_change_reuses_layer(tmp_path, monkeypatch):
    """One net, reshaped between passes (as tiled segmentation does): each shape gets its own primitives."""
    nets_by_engine = {}
    for engine in ("caffe", "auto"):
        set_engine(monkeypatch, engine)
        path = tmp_path / f"{engine}.prototxt"
        path.write_text(layer_prototxt("conv-3x3-same-bias", batch=1))
        nets_by_engine[engine] = caffe.Net(str(path), caffe.TEST)
    params = random_params(nets_by_engine["caffe"], np.random.default_rng(0))
    for size in ((9, 8), (16, 24), (9, 8)):
        x = np.random.default_rng(size[1]).standard_normal((1, 16) + size).astype(np.float32)
        out = {}
        for engine, net in nets_by_engine.items():
            net.blobs["data"].reshape(1, 16, *size)
            net.reshape()
            out[engine] = net_pass(net, params, {"data": x})
        assert_same(out["auto"], out["caffe"], what=str(size))


def _setup_log(path, env):
    """``caffe time`` for one iteration on ``path``: (return code, glog text)."""
    full_env = {k: v for k, v in os.environ.items() if k != "CAFFE_ENGINE"}
    full_env.update(GLOG_logtostderr="1", GLOG_minloglevel="0", **env)
    proc = subprocess.run([str(caffe_env.caffe_binary()), "time", "-model", str(path), "-iterations", "1"],
                          capture_output=True, text=True, env=full_env, timeout=120)
    return proc.returncode, proc.stderr


def test_engine_selection_and_switches(tmp_path):
    path = tmp_path / "fcrn.prototxt"
    path.write_text(nets.train_prototxt(batch=1, size=16))
    rc, log = _setup_log(path, {})
    assert rc == 0, log[-2000:]
    chosen = set(re.findall(r"\] (\w+): " + LOG_MARK, log))
    assert chosen == {"conv2", "conv3", "conv4", "conv5", "conv6", "conv7"}  # not conv1 (1 in), score (2 out)
    assert set(re.findall(r"\] (\w+): direct depthwise path", log)) == {"up5", "up6", "up7"}

    rc, log = _setup_log(path, {"CAFFE_ENGINE": "dnnl"})
    assert rc == 0 and len(re.findall(LOG_MARK, log)) == 11 and "direct depthwise path" not in log

    rc, log = _setup_log(path, {"CAFFE_ENGINE": "caffe"})
    assert rc == 0 and LOG_MARK not in log

    # engine: CAFFE in a layer's convolution_param keeps that layer on the GEMM path.
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format

    param = text_format.Parse(path.read_text(), caffe_pb2.NetParameter())
    next(layer for layer in param.layer if layer.name == "conv4").convolution_param.engine = \
        caffe_pb2.ConvolutionParameter.CAFFE
    pinned = tmp_path / "pinned.prototxt"
    pinned.write_text(text_format.MessageToString(param))
    rc, log = _setup_log(pinned, {})
    assert rc == 0, log[-2000:]
    assert "conv3: " + LOG_MARK in log and "conv4: " + LOG_MARK not in log

    rc, log = _setup_log(path, {"CAFFE_ENGINE": "fastest"})
    assert rc != 0 and "CAFFE_ENGINE must be caffe, dnnl or auto, not 'fastest'" in log


def _losses(log):
    return [float(v) for v in re.findall(r"Iteration \d+.*?, loss = ([0-9.eE+-]+)", log)]


def test_caffe_train_loss_curve_matches(tmp_path, monkeypatch):
    from caffe.proto import caffe_pb2

    from prototxt import net

    data, label = toy_arrays(n=16, size=32, seed=2)
    listfile = write_h5(tmp_path, "train", data, label)
    net_path = tmp_path / "train.prototxt"
    net_path.write_text(str(net.train_net(str(listfile.name), 4, "hdf5", "train")))
    s = caffe_pb2.SolverParameter()
    s.net = str(net_path)
    s.base_lr, s.lr_policy, s.momentum, s.weight_decay = 0.01, "fixed", 0.9, 5e-4
    s.max_iter, s.display, s.snapshot, s.random_seed = 8, 1, 0, 11
    s.solver_mode = caffe_pb2.SolverParameter.CPU
    solver = tmp_path / "solver.prototxt"
    solver.write_text(str(s))
    curves = {}
    for engine in ("caffe", "auto"):
        set_engine(monkeypatch, engine)  # run_caffe's child inherits the environment
        log = run_caffe(["train", f"-solver={solver}"], tmp_path)
        assert (LOG_MARK in log) == (engine == "auto")
        curves[engine] = _losses(log)
    assert len(curves["caffe"]) >= 8
    assert len(set(curves["caffe"])) > 1  # the loss moves: training happened
    np.testing.assert_allclose(curves["auto"], curves["caffe"], rtol=1e-3)
