"""The direct depthwise path of our Caffe patch (group == channels == num_output) against the GEMM path.

Every case runs a Convolution or Deconvolution layer on each path the environment's ``CAFFE_DEPTHWISE``
selects when the net is built: the direct loops (unset), Caffe's own per-group GEMM (``0``) and, on the CPU,
the CUDA kernels' per-element code (``kernel``), and checks each against a float64 numpy reference: forward
output, gradient to the bottom, filter and bias gradients. ``CELLFCN_TEST_GPU=<id>`` runs the same checks in
GPU mode with the CUDA build (tests/test_gpu.py does).
"""
import os
import subprocess

import numpy as np
import pytest

from cellfcn import caffe_env

GPU = os.environ.get("CELLFCN_TEST_GPU")
caffe = caffe_env.import_caffe(gpu=int(GPU) if GPU else None)

RTOL, ATOL = 1e-5, 1e-5
LOG_MARK = "direct depthwise path"

# (layer type, channels, input (h, w), kernel (h, w), stride (h, w), pad (h, w), dilation (h, w), bias)
CASES = {
    "deconv-bilinear-x2": ("Deconvolution", 6, (5, 7), (4, 4), (2, 2), (1, 1), (1, 1), False),
    "deconv-3x3-s1-bias": ("Deconvolution", 4, (6, 5), (3, 3), (1, 1), (1, 1), (1, 1), True),
    "deconv-rect-s3x2": ("Deconvolution", 3, (4, 6), (3, 5), (3, 2), (0, 2), (1, 1), True),
    "deconv-dilated": ("Deconvolution", 5, (6, 6), (3, 3), (2, 2), (2, 2), (2, 2), False),
    # Over 32768 elements (caffe_omp_loops, patches/0007): the direct loops share the channels out to threads.
    "deconv-bilinear-x2-threaded": ("Deconvolution", 16, (48, 47), (4, 4), (2, 2), (1, 1), (1, 1), True),
    "conv-3x3-s1-bias": ("Convolution", 4, (9, 8), (3, 3), (1, 1), (1, 1), (1, 1), True),
    "conv-4x4-s2": ("Convolution", 6, (10, 12), (4, 4), (2, 2), (1, 1), (1, 1), False),
    "conv-rect-dilated": ("Convolution", 3, (13, 11), (3, 5), (2, 3), (1, 2), (2, 1), True),
}


def _windows(h, w, kernel, stride, dilation):
    """Yield (a, b, rows, cols): slices of the padded large plane that filter tap (a, b) meets."""
    for a in range(kernel[0]):
        for b in range(kernel[1]):
            rows = slice(a * dilation[0], a * dilation[0] + stride[0] * (h - 1) + 1, stride[0])
            cols = slice(b * dilation[1], b * dilation[1] + stride[1] * (w - 1) + 1, stride[1])
            yield a, b, rows, cols


def conv_ref(large, weights, stride, pad, dilation):
    """Depthwise cross-correlation (Caffe's Convolution, group == channels) in float64."""
    kernel = weights.shape[2:]
    ext = [dilation[i] * (kernel[i] - 1) + 1 for i in range(2)]
    h, w = [(large.shape[2 + i] + 2 * pad[i] - ext[i]) // stride[i] + 1 for i in range(2)]
    padded = np.pad(large.astype(np.float64), ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    small = np.zeros(large.shape[:2] + (h, w))
    for a, b, rows, cols in _windows(h, w, kernel, stride, dilation):
        small += weights[None, :, 0, a, b, None, None] * padded[:, :, rows, cols]
    return small


def deconv_ref(small, weights, stride, pad, dilation, size=None):
    """Depthwise transposed convolution (Caffe's Deconvolution, group == channels) in float64.

    ``size`` (h, w) is the large plane's size; by default Deconvolution's. A strided Convolution's bottom
    can be up to stride - 1 larger: no tap reaches those last rows and columns, which stay 0.
    """
    kernel = weights.shape[2:]
    h, w = small.shape[2:]
    reach = [stride[i] * (small.shape[2 + i] - 1) + dilation[i] * (kernel[i] - 1) + 1 for i in range(2)]
    size = size or [reach[i] - 2 * pad[i] for i in range(2)]
    padded = np.zeros(small.shape[:2] + tuple(max(reach[i], size[i] + 2 * pad[i]) for i in range(2)))
    for a, b, rows, cols in _windows(h, w, kernel, stride, dilation):
        padded[:, :, rows, cols] += weights[None, :, 0, a, b, None, None] * small
    return padded[:, :, pad[0]:pad[0] + size[0], pad[1]:pad[1] + size[1]]


def weight_grad_ref(large, small, kernel, stride, pad, dilation):
    """Filter gradient (channels, 1, kh, kw): tap (a, b) of channel c sums small * the large pixels it met."""
    h, w = small.shape[2:]
    padded = np.pad(large.astype(np.float64), ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    grad = np.zeros((large.shape[1], 1) + tuple(kernel))
    for a, b, rows, cols in _windows(h, w, kernel, stride, dilation):
        grad[:, 0, a, b] = (small * padded[:, :, rows, cols]).sum(axis=(0, 2, 3))
    return grad


def layer_prototxt(kind, channels, size, kernel, stride, pad, dilation, bias, num_output=None):
    """A one-layer net: Input ``data`` (2, C, H, W) -> ``kind`` layer ``out`` with group = channels."""
    return f"""name: "depthwise_case"
force_backward: true
layer {{ name: "data" type: "Input" top: "data"
  input_param {{ shape {{ dim: 2 dim: {channels} dim: {size[0]} dim: {size[1]} }} }} }}
layer {{ name: "out" type: "{kind}" bottom: "data" top: "out"
  convolution_param {{ num_output: {num_output or channels} group: {channels} bias_term: {str(bias).lower()}
    kernel_h: {kernel[0]} kernel_w: {kernel[1]} stride_h: {stride[0]} stride_w: {stride[1]}
    pad_h: {pad[0]} pad_w: {pad[1]} dilation: {dilation[0]} dilation: {dilation[1]}
    weight_filler {{ type: "gaussian" std: 1 }} bias_filler {{ type: "gaussian" std: 1 }} }} }}
"""


# CAFFE_DEPTHWISE value per path; None = unset. "kernel" only differs from "direct" on the CPU.
PATHS = {"direct": None, "gemm": "0", "kernel": "kernel"}


def run_net(path, params, inputs, top_diffs, monkeypatch, mode):
    """Build the net at ``path`` on path ``mode`` (a PATHS key), load params, run forward and backward once.

    Returns
    -------
    dict
        ``top`` blobs' data, ``<blob>_diff`` of every input, and ``<layer>_<i>_diff`` of every param blob.
    """
    if PATHS[mode] is None:
        monkeypatch.delenv("CAFFE_DEPTHWISE", raising=False)
    else:
        monkeypatch.setenv("CAFFE_DEPTHWISE", PATHS[mode])
    net = caffe.Net(str(path), caffe.TEST)
    for layer, blobs in params.items():
        for blob, value in zip(net.params[layer], blobs):
            blob.data[...] = value
    for name, value in inputs.items():
        net.blobs[name].data[...] = value
    net.forward()
    result = {}
    for name, diff in top_diffs.items():
        result[name] = net.blobs[name].data.copy()
        net.blobs[name].diff[...] = diff
    net.backward()
    for name in inputs:
        result[name + "_diff"] = net.blobs[name].diff.copy()
    for layer in params:
        for i, blob in enumerate(net.params[layer]):
            result[f"{layer}_{i}_diff"] = blob.diff.copy()
    return result


@pytest.mark.parametrize("case", sorted(CASES))
def test_depthwise_matches_gemm_and_numpy(case, tmp_path, monkeypatch):
    kind, channels, size, kernel, stride, pad, dilation, bias = CASES[case]
    path = tmp_path / "net.prototxt"
    path.write_text(layer_prototxt(kind, channels, size, kernel, stride, pad, dilation, bias))
    rng = np.random.default_rng(sorted(CASES).index(case))
    x = rng.standard_normal((2, channels) + size).astype(np.float32)
    weights = rng.standard_normal((channels, 1) + kernel).astype(np.float32)
    b = rng.standard_normal(channels).astype(np.float32)
    if kind == "Convolution":
        y_ref = conv_ref(x, weights, stride, pad, dilation)
    else:
        y_ref = deconv_ref(x, weights, stride, pad, dilation)
    if bias:
        y_ref = y_ref + b[None, :, None, None]
    g = rng.standard_normal(y_ref.shape).astype(np.float32)
    if kind == "Convolution":
        x_grad_ref = deconv_ref(g, weights, stride, pad, dilation, size=size)
        w_grad_ref = weight_grad_ref(x, g, kernel, stride, pad, dilation)
    else:
        x_grad_ref = conv_ref(g, weights, stride, pad, dilation)
        w_grad_ref = weight_grad_ref(g, x, kernel, stride, pad, dilation)
    params = {"out": [weights, b] if bias else [weights]}
    results = {mode: run_net(path, params, {"data": x}, {"out": g}, monkeypatch, mode) for mode in PATHS}

    expected = {"out": y_ref, "data_diff": x_grad_ref, "out_0_diff": w_grad_ref}
    if bias:
        expected["out_1_diff"] = g.astype(np.float64).sum(axis=(0, 2, 3))
    for mode, result in results.items():
        assert set(result) == set(expected), mode
        for name, ref in expected.items():
            scale = max(1.0, float(np.abs(ref).max()))
            assert result[name].shape == ref.shape, (mode, name)
            np.testing.assert_allclose(result[name], ref, rtol=RTOL, atol=ATOL * scale, err_msg=f"{mode} {name}")
            np.testing.assert_allclose(result[name], results["gemm"][name], rtol=RTOL, atol=ATOL * scale,
                                       err_msg=f"{mode} vs GEMM {name}")
    # Row by row or element by element, every output adds its taps in the same (kh, kw) order: same bits.
    for name in ("out", "data_diff"):
        assert results["direct"][name].tobytes() == results["kernel"][name].tobytes(), name


def test_depthwise_is_deterministic(tmp_path, monkeypatch):
    kind, channels, size, kernel, stride, pad, dilation, bias = CASES["conv-rect-dilated"]
    path = tmp_path / "net.prototxt"
    path.write_text(layer_prototxt(kind, channels, size, kernel, stride, pad, dilation, bias))
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, channels) + size).astype(np.float32)
    params = {"out": [rng.standard_normal((channels, 1) + kernel).astype(np.float32),
                      rng.standard_normal(channels).astype(np.float32)]}
    g = rng.standard_normal(conv_ref(x, params["out"][0], stride, pad, dilation).shape).astype(np.float32)
    for mode in ("direct", "kernel"):
        first = run_net(path, params, {"data": x}, {"out": g}, monkeypatch, mode)
        second = run_net(path, params, {"data": x}, {"out": g}, monkeypatch, mode)
        for name in first:
            assert first[name].tobytes() == second[name].tobytes(), (mode, name)


def _setup_log(path, env):
    """Run ``caffe time`` for one iteration on ``path`` and return its log (glog to stderr)."""
    cmd = [str(caffe_env.caffe_binary(gpu=GPU is not None)), "time", "-model", str(path), "-iterations", "1"]
    if GPU is not None:
        cmd += ["-gpu", GPU]
    full_env = {k: v for k, v in os.environ.items() if k != "CAFFE_DEPTHWISE"}
    full_env.update(GLOG_logtostderr="1", GLOG_minloglevel="0", **env)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stderr


def test_depthwise_path_taken_only_when_it_applies(tmp_path):
    depthwise = tmp_path / "depthwise.prototxt"
    depthwise.write_text(layer_prototxt("Deconvolution", 4, (8, 8), (4, 4), (2, 2), (1, 1), (1, 1), False))
    assert LOG_MARK in _setup_log(depthwise, {})
    assert LOG_MARK not in _setup_log(depthwise, {"CAFFE_DEPTHWISE": "0"})
    assert "per-element code on CPU" in _setup_log(depthwise, {"CAFFE_DEPTHWISE": "kernel"})
    # group == channels but two filters per channel: Caffe's GEMM path.
    multiplier = tmp_path / "multiplier.prototxt"
    multiplier.write_text(layer_prototxt("Convolution", 4, (8, 8), (3, 3), (1, 1), (1, 1), (1, 1), True,
                                         num_output=8))
    assert LOG_MARK not in _setup_log(multiplier, {})


def test_fcrn_deploy_net_same_on_both_paths(tmp_path, monkeypatch):
    """The whole FCRN-A deploy net (its three bilinear deconvs take the direct path) on both paths."""
    deploy = caffe_env.REPO / "prototxt" / "deploy.prototxt"
    monkeypatch.setenv("CAFFE_DEPTHWISE", "0")
    reference = caffe.Net(str(deploy), caffe.TEST)
    params = {name: [blob.data.copy() for blob in blobs] for name, blobs in reference.params.items()}
    del reference
    rng = np.random.default_rng(3)
    x = rng.random((1, 1, 32, 32), dtype=np.float32)
    path = tmp_path / "deploy.prototxt"
    path.write_text("force_backward: true\n" + deploy.read_text())
    shape = (1, 2, 32, 32)
    g = rng.standard_normal(shape).astype(np.float32)

    def run(depthwise):
        monkeypatch.setenv("CAFFE_DEPTHWISE", "1" if depthwise else "0")
        net = caffe.Net(str(path), caffe.TEST)
        net.blobs["data"].reshape(*x.shape)
        net.reshape()
        for layer, blobs in params.items():
            for blob, value in zip(net.params[layer], blobs):
                blob.data[...] = value
        net.blobs["data"].data[...] = x
        net.forward()
        prob = net.blobs["prob"].data.copy()
        net.blobs["prob"].diff[...] = g
        net.backward()
        return prob, net.blobs["data"].diff.copy()

    prob_direct, grad_direct = run(True)
    prob_gemm, grad_gemm = run(False)
    assert prob_direct.shape == shape
    np.testing.assert_allclose(prob_direct, prob_gemm, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grad_direct, grad_gemm, rtol=1e-3, atol=1e-6 * float(np.abs(grad_gemm).max()))
