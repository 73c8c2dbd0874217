"""The CUDA build of Caffe (``make caffe GPU=1`` -> .caffe-cuda) on an NVIDIA GPU.

Each test needs the CUDA build, and all but one a visible GPU; they skip with the reason otherwise (CPU CI
has neither). ``CELLFCN_GPU_ID`` picks the device (default 0).
"""
import os
import re
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from cellfcn import caffe_env

GPU_ID = os.environ.get("CELLFCN_GPU_ID", "0")


def _cuda_caffe():
    """The CUDA build's caffe binary, or None when `make caffe GPU=1` has not been run."""
    try:
        binary = caffe_env.caffe_binary(gpu=True)
    except caffe_env.CaffeNotFound:
        return None
    return binary if b"libcudart" in subprocess.run(["ldd", str(binary)], capture_output=True).stdout else None


def _gpu_names():
    """Names of the GPUs nvidia-smi lists (empty without a driver or a GPU)."""
    if shutil.which("nvidia-smi") is None:
        return []
    proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return [line for line in proc.stdout.splitlines() if line.startswith("GPU ")] if proc.returncode == 0 else []


CAFFE = _cuda_caffe()
GPUS = _gpu_names()
needs_build = pytest.mark.skipif(CAFFE is None, reason="no CUDA build of Caffe in .caffe-cuda: run 'make caffe GPU=1'")
needs_gpu = pytest.mark.skipif(CAFFE is None or not GPUS,
                               reason="needs the CUDA build (.caffe-cuda) and an NVIDIA GPU; "
                                      f"build: {'yes' if CAFFE else 'no'}, GPUs: {len(GPUS)}")


def _caffe(*args, env=None, timeout=600):
    full_env = dict(os.environ, GLOG_logtostderr="1", **(env or {}))
    return subprocess.run([str(CAFFE), *args], capture_output=True, text=True, env=full_env, timeout=timeout)


@needs_build
@pytest.mark.skipif(bool(GPUS), reason="a GPU is present: this checks the failure without one")
def test_device_query_without_gpu_fails_cleanly():
    proc = _caffe("device_query", "-gpu", "0", timeout=120)
    assert proc.returncode != 0
    assert re.search(r"no CUDA-capable device|CUDA driver|cudaError|Check failed", proc.stderr), proc.stderr[-1500:]


@needs_gpu
def test_device_query_reads_cuda13_attributes():
    proc = _caffe("device_query", "-gpu", GPU_ID, timeout=120)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert re.search(r"Name:\s+\S", proc.stderr)
    clock = re.search(r"Clock rate:\s+(\d+)", proc.stderr)
    assert clock and int(clock.group(1)) > 0  # read with cudaDeviceGetAttribute on CUDA 13


@needs_gpu
def test_depthwise_layers_on_gpu():
    """tests/test_depthwise.py in GPU mode: direct CUDA kernels vs Caffe's GEMM vs the numpy reference."""
    env = dict(os.environ, CELLFCN_TEST_GPU=GPU_ID, PYTHONPATH=str(caffe_env.pycaffe_dir(gpu=True)))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(caffe_env.REPO / "tests" / "test_depthwise.py")],
                          capture_output=True, text=True, env=env, timeout=600, cwd=caffe_env.REPO)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert re.search(r"\d+ passed", proc.stdout) and "skipped" not in proc.stdout


_CPU_VS_GPU = r"""
import sys
import numpy as np
import caffe  # the CUDA build's, first on PYTHONPATH

rng = np.random.default_rng(0)
x = rng.random((2, 1, 64, 64), dtype=np.float32)
g = rng.standard_normal((2, 2, 64, 64)).astype(np.float32)
results = []
for mode in ("cpu", "gpu"):
    if mode == "gpu":
        caffe.set_device(int(sys.argv[3]))
        caffe.set_mode_gpu()
    else:
        caffe.set_mode_cpu()
    net = caffe.Net(sys.argv[2], caffe.TEST)
    if mode == "gpu":
        for name, blobs in params.items():
            for blob, value in zip(net.params[name], blobs):
                blob.data[...] = value
    else:
        params = {n: [b.data.copy() for b in bs] for n, bs in net.params.items()}
    net.blobs["data"].reshape(*x.shape)
    net.reshape()
    net.blobs["data"].data[...] = x
    net.forward()
    prob = net.blobs["prob"].data.copy()
    net.blobs["prob"].diff[...] = g
    net.backward()
    results.append((prob, net.blobs["data"].diff.copy()))
(p_cpu, d_cpu), (p_gpu, d_gpu) = results
np.testing.assert_allclose(p_gpu, p_cpu, rtol=1e-3, atol=1e-5)
np.testing.assert_allclose(d_gpu, d_cpu, rtol=1e-2, atol=1e-4 * float(np.abs(d_cpu).max()))
print("max |prob diff|", float(np.abs(p_gpu - p_cpu).max()))
"""


@needs_gpu
def test_fcrn_net_same_on_cpu_and_gpu(tmp_path):
    """The FCRN-A deploy net, forward and backward, in the CUDA build's CPU and GPU modes."""
    net = tmp_path / "deploy.prototxt"
    net.write_text("force_backward: true\n" + (caffe_env.REPO / "prototxt" / "deploy.prototxt").read_text())
    proc = subprocess.run([sys.executable, "-c", _CPU_VS_GPU, "", str(net), GPU_ID], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, GLOG_minloglevel="2",
                                                PYTHONPATH=str(caffe_env.pycaffe_dir(gpu=True))))
    assert proc.returncode == 0, proc.stderr[-3000:]


def _disk_patches(n, size, seed):
    """Patches of bright blurred disks on a dark noisy background, with their disk masks as labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    data = np.empty((n, 1, size, size), np.float32)
    label = np.zeros_like(data)
    for i in range(n):
        for _ in range(rng.integers(3, 8)):
            cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(6, 14)
            label[i, 0][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
        data[i, 0] = np.clip(0.15 + 0.6 * label[i, 0] + rng.normal(0, 0.08, (size, size)), 0, 1)
    return data, label


@needs_gpu
def test_caffe_train_and_time_on_gpu(tmp_path):
    data, label = _disk_patches(16, 128, seed=0)
    with h5py.File(tmp_path / "train.h5", "w") as f:
        f["data"], f["label"] = data, label
    (tmp_path / "train.txt").write_text(f"{tmp_path / 'train.h5'}\n")
    net = (caffe_env.REPO / "prototxt" / "pretrain_train_hdf5.prototxt").read_text()
    net, n_sub = re.subn(r'source: "[^"]*"', f'source: "{tmp_path / "train.txt"}"', net)
    assert n_sub == 1
    (tmp_path / "train.prototxt").write_text(net)
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path / "train.prototxt"}"\nbase_lr: 0.01\nlr_policy: "fixed"\nmomentum: 0.9\n'
        f'display: 1\nmax_iter: 40\nsnapshot_prefix: "{tmp_path / "snap"}"\nsolver_mode: GPU\nrandom_seed: 1701\n')
    proc = _caffe("train", "-solver", str(tmp_path / "solver.prototxt"), "-gpu", GPU_ID)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = [float(v) for v in re.findall(r"Iteration \d+ .*?, loss = ([-\d.eE+na]+)", proc.stderr)]
    assert len(losses) >= 30 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert (tmp_path / "snap_iter_40.caffemodel").is_file()
    proc = _caffe("time", "-model", str(tmp_path / "train.prototxt"), "-gpu", GPU_ID, "-iterations", "5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"Average Forward-Backward: [\d.]+ ms", proc.stderr)
    assert re.search(r"up5\s+forward: [\d.]+ ms", proc.stderr)


def _fake_nvidia_smi(folder, output, rc=0):
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\nprintf '{output}'\nexit {rc}\n")
    script.chmod(0o755)
    return dict(os.environ, PATH=f"{folder}:/usr/bin:/bin")


@pytest.mark.parametrize("smi, expected", [("9.0\\n", "90"), ("9.0\\n8.0\\n9.0\\n", "80 90"),
                                           ("12.0\\n", "120"), ("", "90")])
def test_cuda_arch_from_visible_gpus(tmp_path, smi, expected):
    env = _fake_nvidia_smi(tmp_path, smi)
    out = subprocess.run([str(caffe_env.REPO / "tools" / "cuda_arch.sh")], capture_output=True, text=True,
                         env=env, check=True).stdout
    assert out.strip() == expected


def test_cuda_arch_without_driver(tmp_path):
    env = _fake_nvidia_smi(tmp_path, "NVIDIA-SMI has failed\\n", rc=9)
    out = subprocess.run([str(caffe_env.REPO / "tools" / "cuda_arch.sh")], capture_output=True, text=True,
                         env=env, check=True).stdout
    assert out.strip() == "90"
