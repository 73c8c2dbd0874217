"""Caffe's own CPU loops as patches/0007 leaves them: ReLU, max pooling and the direct depthwise path,
vectorized and split by element, plane or channel over OpenMP threads.

Max pooling keeps Caffe's semantics (ceil-mode windows, the first maximum in scan order wins, gradients go to
the argmax), checked against numpy on odd shapes, padding and ties, below and above the threading threshold.
The thread count must not change a single bit: the FCRN-A training net runs forward and backward in a fresh
process per thread count (OpenMP reads ``OMP_NUM_THREADS`` once, when it starts), its convolutions pinned to
the GEMM path on one OpenBLAS thread so that only our loops see the threads; under ``CAFFE_ENGINE=caffe`` the
loops stay serial. (The depthwise loops against numpy, the GEMM path
and the CUDA kernels' arithmetic: tests/test_depthwise.py.)
"""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from cellfcn import caffe_env

FLT_MAX = np.finfo(np.float32).max

# Writes every blob's data and diff and every parameter gradient of one forward/backward pass to argv[1],
# with the number of threads the process ended with under "threads".
CHILD = """
import os
import sys
import numpy as np
from google.protobuf import text_format
from bench import nets
from cellfcn import caffe_env

caffe = caffe_env.import_caffe()
caffe.set_random_seed(0)
param = text_format.Parse(nets.train_prototxt(batch=4, size=128), caffe_env.caffe_pb2().NetParameter())
for layer in param.layer:
    if layer.type == "Convolution":  # Caffe's GEMM path on one OpenBLAS thread: only our loops see threads
        layer.convolution_param.engine = layer.convolution_param.CAFFE
    if layer.type == "Deconvolution":  # learnable (FCRN-A's are not), so that the filter gradient runs too
        layer.param[0].lr_mult = 1
path = sys.argv[1] + ".prototxt"
with open(path, "w") as f:
    f.write(text_format.MessageToString(param))
net = caffe.Net(path, caffe.TRAIN)
net.blobs["data"].data[...], net.blobs["label"].data[...] = nets.batch_arrays(4, 128, seed=0)
net.forward()
net.backward()
out = {"threads": np.array(len(os.listdir("/proc/self/task")))}
for name, blob in net.blobs.items():
    out[name + "/data"], out[name + "/diff"] = blob.data, blob.diff
for name, blobs in net.params.items():
    for i, blob in enumerate(blobs):
        out[f"{name}/{i}/diff"] = blob.diff
np.savez(sys.argv[1], **out)
"""


def _pass(tmp_path, threads, **env):
    out = tmp_path / f"threads{threads}{''.join(env)}.npz"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS="1", GLOG_logtostderr="1",
               GLOG_minloglevel="0", **env)
    env.pop("CAFFE_DEPTHWISE", None)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(out.with_suffix(""))], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert set(re.findall(r"\] (\w+): direct depthwise path", proc.stderr)) == {"up5", "up6", "up7"}
    with np.load(out) as arrays:
        return {name: arrays[name] for name in arrays.files}


def test_libcaffe_links_openmp():
    ldd = subprocess.run(["ldd", str(caffe_env.caffe_binary())], capture_output=True, text=True, check=True)
    libcaffe = re.search(r"libcaffe\S* => (\S+)", ldd.stdout).group(1)
    needed = subprocess.run(["readelf", "-d", libcaffe], capture_output=True, text=True, check=True).stdout
    assert "libgomp.so" in needed


def test_thread_count_does_not_change_a_bit(tmp_path):
    one, two = _pass(tmp_path, 1), _pass(tmp_path, 2)
    assert one.pop("threads") == 1 and two.pop("threads") == 2  # OpenMP did run our loops on two threads
    assert one.keys() == two.keys()
    # Every layer's output and gradient (the ReLUs work in place on the conv blobs), all of them non-zero.
    assert {"conv1/data", "pool1/data", "pool1/diff", "up7/data", "up7/diff", "up7/0/diff"} <= one.keys()
    assert all(np.abs(one[name]).max() > 0 for name in ("pool1/diff", "up7/diff", "up7/0/diff", "up5/0/diff"))
    for name in one:
        assert one[name].tobytes() == two[name].tobytes(), name


def test_gemm_path_keeps_the_loops_serial(tmp_path):
    """CAFFE_ENGINE=caffe: OpenBLAS's pthreads run the convolutions, so our loops start no OpenMP thread."""
    two = _pass(tmp_path, 2, CAFFE_ENGINE="caffe")
    assert two["threads"] == 1


def max_pool_ref(x, kernel, stride, pad):
    """Caffe's max pooling of ``x`` (N, C, H, W) in float64 bookkeeping: (top, argmax index in the plane)."""
    n, c, h, w = x.shape
    ph, pw = (-(-(size + 2 * pad - kernel) // stride) + 1 for size in (h, w))
    if pad:  # Caffe drops a last window that would start inside the padding
        ph -= (ph - 1) * stride >= h + pad
        pw -= (pw - 1) * stride >= w + pad
    top = np.full((n, c, ph, pw), -FLT_MAX, np.float32)
    arg = np.full((n, c, ph, pw), -1, np.int64)
    for i in range(ph):
        for j in range(pw):
            hs, ws = i * stride - pad, j * stride - pad
            he, we = min(hs + kernel, h), min(ws + kernel, w)
            hs, ws = max(hs, 0), max(ws, 0)
            window = x[:, :, hs:he, ws:we].reshape(n, c, -1)
            first = window.argmax(-1)  # the first maximum in scan order, as Caffe's strict >
            best = np.take_along_axis(window, first[..., None], -1)[..., 0]
            found = best > -FLT_MAX
            top[:, :, i, j] = np.where(found, best, -FLT_MAX)
            arg[:, :, i, j] = np.where(found, (hs + first // (we - ws)) * w + ws + first % (we - ws), -1)
    return top, arg


# (N, C, H, W), kernel, stride, pad; the last one is over 32768 outputs, so its planes go to threads.
POOL_CASES = {
    "2x2-odd-size": ((2, 3, 7, 9), 2, 2, 0),
    "2x2-even": ((1, 2, 8, 6), 2, 2, 0),
    "3x3-s2-pad": ((2, 2, 8, 10), 3, 2, 1),
    "3x3-s3": ((1, 3, 9, 11), 3, 3, 0),
    "2x2-threaded": ((2, 16, 64, 66), 2, 2, 0),
}


@pytest.mark.parametrize("case", sorted(POOL_CASES))
def test_max_pooling_matches_numpy(case, caffe, tmp_path):
    shape, kernel, stride, pad = POOL_CASES[case]
    rng = np.random.default_rng(sorted(POOL_CASES).index(case))
    x = rng.integers(-2, 3, shape).astype(np.float32)  # few values: many ties within a window
    path = tmp_path / "pool.prototxt"
    path.write_text(f"""name: "pool" force_backward: true
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {" ".join(f"dim: {d}" for d in shape)} }} }} }}
layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "mask"
  pooling_param {{ pool: MAX kernel_size: {kernel} stride: {stride} pad: {pad} }} }}
layer {{ name: "again" type: "Pooling" bottom: "data" top: "again"
  pooling_param {{ pool: MAX kernel_size: {kernel} stride: {stride} pad: {pad} }} }}
""")
    net = caffe.Net(str(path), caffe.TEST)
    net.blobs["data"].data[...] = x
    net.forward()
    top, arg = max_pool_ref(x, kernel, stride, pad)
    np.testing.assert_array_equal(net.blobs["pool"].data, top)
    np.testing.assert_array_equal(net.blobs["again"].data, top)
    np.testing.assert_array_equal(net.blobs["mask"].data, arg)  # the top-mask path (float indices)
    # Backward through both layers: the one without a top mask routes by its internal int argmax.
    g = rng.standard_normal(top.shape).astype(np.float32)
    net.blobs["pool"].diff[...] = g
    net.blobs["again"].diff[...] = 2 * g
    net.backward()
    expected = np.zeros(x.shape, np.float64).reshape(shape[0] * shape[1], -1)
    planes = np.arange(shape[0] * shape[1])[:, None]
    np.add.at(expected, (planes, arg.reshape(len(planes), -1)), 3 * g.reshape(len(planes), -1).astype(np.float64))
    np.testing.assert_allclose(net.blobs["data"].diff, expected.reshape(shape), rtol=1e-6)
