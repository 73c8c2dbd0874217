"""Caffe's mode is set once, where a net is made: pycaffe used for protobuf or NetSpec never changes it, and
takes the CUDA build's pycaffe that ``make ... GPU=1`` puts first on the search path.

No GPU is needed: a fake CUDA build (a ``caffe`` package that records mode calls, with the real build's
``caffe_pb2``) stands for ``.caffe-cuda``, and the real CPU build's mode calls are recorded in-process.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO

from cellfcn import caffe_env

FAKE_CAFFE = '''
modes = []
layers = params = object()


def set_mode_cpu():
    modes.append("cpu")


def set_mode_gpu():
    modes.append("gpu")


def set_device(device):
    modes.append(f"device {device}")
'''


@pytest.fixture
def fake_cuda_tree(tmp_path):
    """A repository root whose ``.caffe`` is the real CPU build and whose ``.caffe-cuda`` is a fake one."""
    root = tmp_path / "repo"
    package = root / ".caffe-cuda" / "python" / "caffe"
    (package / "proto").mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_CAFFE)
    (package / "proto" / "__init__.py").write_text("")
    shutil.copy(caffe_env.pycaffe_dir() / "caffe" / "proto" / "caffe_pb2.py", package / "proto")
    binary = root / ".caffe-cuda" / "bin" / "caffe"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\nexit 0\n")  # device_query: the device is there
    binary.chmod(0o755)
    (root / ".caffe").symlink_to(REPO / ".caffe")
    return root


def _run_with_cuda_pycaffe_first(root, body):
    """Run ``body`` in a child whose search path starts with the fake CUDA pycaffe, as under GPU=1."""
    code = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        from cellfcn import caffe_env
        caffe_env.REPO = Path({str(root)!r})
        import numpy as np
        """) + textwrap.dedent(body)
    env = {k: v for k, v in os.environ.items() if k not in ("CAFFE", "PYCAFFE", "CAFFE_ROOT")}
    env["PYTHONPATH"] = str(root / ".caffe-cuda" / "python")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)


def test_protobuf_and_netspec_take_the_cuda_pycaffe_and_keep_the_mode(fake_cuda_tree):
    proc = _run_with_cuda_pycaffe_first(fake_cuda_tree, """
        import caffe
        record = caffe_env.encode_datum(np.full((2, 3), 0.5, np.float32), "data")  # make data, FORMAT=lmdb
        assert caffe_env.decode_datum(record).tolist() == [[0.5] * 3] * 2
        seen = {"after protobuf": list(caffe.modes)}
        caffe_env.import_caffe(0)  # a net is made on device 0
        from prototxt import net
        net._caffe()
        caffe_env.caffe_pb2().NetParameter()
        seen["after a GPU net, NetSpec and protobuf"] = list(caffe.modes)
        caffe_env.import_caffe()  # a CPU net from the CUDA build is fine too
        seen["after a CPU net"] = list(caffe.modes)
        seen["module"] = caffe.__file__
        print(json.dumps(seen))
        """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout)
    assert seen["module"].startswith(str(fake_cuda_tree / ".caffe-cuda"))
    assert seen["after protobuf"] == []  # neither CPU mode nor the CPU build demanded
    assert seen["after a GPU net, NetSpec and protobuf"] == ["device 0", "gpu"]
    assert seen["after a CPU net"] == ["device 0", "gpu", "cpu"]


def test_a_device_needs_the_cuda_pycaffe(fake_cuda_tree):
    # The CPU build's pycaffe is first on the path (no GPU=1): asking for a device is one clear error.
    root = fake_cuda_tree
    code = ("import sys; from pathlib import Path; from cellfcn import caffe_env, cli; "
            f"caffe_env.REPO = Path({str(root)!r}); sys.exit(cli.run(lambda _: caffe_env.import_caffe(0)))")
    env = {k: v for k, v in os.environ.items() if k not in ("CAFFE", "PYCAFFE", "CAFFE_ROOT", "PYTHONPATH")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    assert proc.returncode == 1 and proc.stderr.startswith("error: pycaffe was imported from"), proc.stderr
    assert str(root / ".caffe-cuda" / "python") in proc.stderr


def test_load_net_on_a_device_stays_on_it(caffe, tmp_path, monkeypatch):
    # CAFFE_ROOT= with a gpu: load_net set GPU mode, then its protobuf reads switched the process back to the
    # CPU. The real build, its mode calls recorded (no device here: the CUDA checks are stood in for).
    deploy = REPO / "prototxt" / "deploy.prototxt"
    model = tmp_path / "model.caffemodel"
    caffe.Net(str(deploy), caffe.TEST).save(str(model))
    monkeypatch.setenv("CAFFE_ROOT", str(REPO / ".caffe"))
    for name in ("CAFFE", "PYCAFFE"):
        monkeypatch.delenv(name, raising=False)
    modes = []
    monkeypatch.setattr(caffe, "set_mode_cpu", lambda: modes.append("cpu"))
    monkeypatch.setattr(caffe, "set_mode_gpu", lambda: modes.append("gpu"))
    monkeypatch.setattr(caffe, "set_device", lambda device: modes.append(f"device {device}"))
    monkeypatch.setattr(caffe_env, "_cpu_only", lambda: False)
    monkeypatch.setattr(caffe_env, "check_device", lambda gpu: None)
    net = caffe_env.load_net(deploy, model, gpu=0)
    assert "prob" in net.blobs
    assert modes == ["device 0", "gpu"]
