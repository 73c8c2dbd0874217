"""The real Caffe build: binary, pycaffe, training, snapshots, fine-tuning, resume, data layers."""
import os
import re
import subprocess
from pathlib import Path

import lmdb
import numpy as np
import pytest
from conftest import REPO, run_caffe, toy_arrays, write_h5

from cellfcn import caffe_env


def test_caffe_binary_reports_version(caffe_bin):
    out = subprocess.run([caffe_bin, "--version"], capture_output=True, text=True, check=True).stdout
    assert "caffe version 1.0.0" in out


def test_venv_imports_the_selected_pycaffe_from_anywhere():
    # Our build through the venv's .pth; your own (CAFFE_ROOT) through the PYTHONPATH that make exports.
    out = subprocess.run([str(REPO / ".venv/bin/python"), "-c",
                          "import caffe, numpy; from caffe.proto import caffe_pb2; from cellfcn import caffe_env; "
                          "caffe_env.import_caffe(); print(caffe.__file__); "
                          "print(caffe.io.array_to_datum(numpy.ones((1,2,2),numpy.uint8)).data)"],
                         capture_output=True, text=True, cwd="/", check=True).stdout
    assert str(caffe_env.pycaffe_dir()) in out
    assert "\\x01\\x01\\x01\\x01" in out  # numpy-2 patched array_to_datum (tobytes)


def test_another_builds_pycaffe_is_an_error_not_a_mix(tmp_path):
    # A child whose selected build (CAFFE_ROOT) is not the pycaffe Python imports: one line, exit 1.
    fake = tmp_path / "other" / "python" / "caffe"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    env = {k: v for k, v in os.environ.items() if k not in ("CAFFE", "PYCAFFE")}
    env["CAFFE_ROOT"] = str(tmp_path / "other")
    proc = subprocess.run([str(REPO / ".venv/bin/python"), "-m", "cellfcn.caffe_env", "--what", "pycaffe"],
                          capture_output=True, text=True, env=env, check=True)
    assert proc.stdout.strip() == str(tmp_path / "other" / "python")
    code = "import sys; from cellfcn import caffe_env, cli; sys.exit(cli.run(lambda _: caffe_env.import_caffe()))"
    proc = subprocess.run([str(REPO / ".venv/bin/python"), "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: pycaffe was imported from") and len(proc.stderr.splitlines()) == 1


def test_protobuf_limit_patch_reads_large_model(caffe, tmp_path):
    # Net::CopyTrainedLayersFrom goes through ReadProtoFromBinaryFile, the patched SetTotalBytesLimit call.
    net_path = _toy_net(caffe, tmp_path, None, 1, input_shape=(1, 1, 4, 4), width=4096)
    net = caffe.Net(str(net_path), caffe.TEST)
    net.params["conv"][0].data[...] = 0.25
    net.save(str(tmp_path / "big.caffemodel"))
    assert (tmp_path / "big.caffemodel").stat().st_size > 100_000
    loaded = caffe.Net(str(net_path), caffe.TEST, weights=str(tmp_path / "big.caffemodel"))
    assert np.all(loaded.params["conv"][0].data == 0.25)


def _toy_net(caffe, folder, listfile, batch, input_shape=None, width=2):
    L = caffe.layers
    n = caffe.NetSpec()
    if input_shape:
        n.data = L.Input(shape=dict(dim=list(input_shape)))
        n.conv = L.Convolution(n.data, num_output=width, kernel_size=3, pad=1, weight_filler=dict(type="xavier"))
    else:
        n.data, n.label = L.HDF5Data(ntop=2, hdf5_data_param=dict(source=str(listfile), batch_size=batch))
        n.hidden = L.Convolution(n.data, num_output=4, kernel_size=3, pad=1, weight_filler=dict(type="xavier"))
        n.relu = L.ReLU(n.hidden, in_place=True)
        n.conv = L.Convolution(n.relu, num_output=width, kernel_size=1, weight_filler=dict(type="xavier"))
        n.loss = L.SoftmaxWithLoss(n.conv, n.label)
    path = Path(folder) / ("deploy.prototxt" if input_shape else "train.prototxt")
    path.write_text(str(n.to_proto()))
    return path


def _solver(caffe, folder, net_path, max_iter, base_lr=0.5, snapshot=0):
    from caffe.proto import caffe_pb2

    s = caffe_pb2.SolverParameter()
    s.net = str(net_path)
    s.base_lr, s.lr_policy, s.momentum, s.weight_decay = base_lr, "fixed", 0.9, 0.0
    s.max_iter, s.display, s.snapshot = max_iter, 1, snapshot
    s.snapshot_prefix = str(Path(folder) / "snap")
    s.random_seed = 7
    s.solver_mode = caffe_pb2.SolverParameter.CPU
    path = Path(folder) / f"solver_{max_iter}_{base_lr}.prototxt"
    path.write_text(str(s))
    return path


@pytest.fixture
def toy(caffe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # pycaffe, like `caffe train`, reads the list file's .h5 from the dataset folder
    data, label = toy_arrays()
    listfile = write_h5(tmp_path, "train", data, label)
    return tmp_path, _toy_net(caffe, tmp_path, listfile, batch=8)


def _losses(log):
    return [float(v) for v in re.findall(r"Iteration \d+.*?, loss = ([0-9.eE+-]+)", log)]


def _weights(caffe, net_path, model):
    net = caffe.Net(str(net_path), caffe.TEST, weights=str(model))
    return {k: [b.data.copy() for b in v] for k, v in net.params.items()}


def test_caffe_train_lowers_loss_and_writes_model_and_state(caffe, toy):
    folder, net_path = toy
    log = run_caffe(["train", f"-solver={_solver(caffe, folder, net_path, 20)}"], folder)
    losses = _losses(log)
    assert len(losses) >= 20
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3])
    from caffe.proto import caffe_pb2

    model = caffe_pb2.NetParameter()
    model.ParseFromString((folder / "snap_iter_20.caffemodel").read_bytes())
    assert {layer.name for layer in model.layer if layer.blobs} == {"hidden", "conv"}
    state = caffe_pb2.SolverState()
    state.ParseFromString((folder / "snap_iter_20.solverstate").read_bytes())
    assert state.iter == 20 and len(state.history) == 4  # momentum of 2 weights + 2 biases


def test_weights_start_finetuning_from_given_model(caffe, toy):
    folder, net_path = toy
    run_caffe(["train", f"-solver={_solver(caffe, folder, net_path, 5)}"], folder)
    pretrained = folder / "pretrained.caffemodel"
    (folder / "snap_iter_5.caffemodel").rename(pretrained)
    # With a zero learning rate the snapshot after one iteration is exactly the loaded weights.
    log = run_caffe(["train", f"-solver={_solver(caffe, folder, net_path, 1, base_lr=0.0)}",
                     f"-weights={pretrained}"], folder)
    assert f"Finetuning from {pretrained}" in log
    before, after = _weights(caffe, net_path, pretrained), _weights(caffe, net_path, folder / "snap_iter_1.caffemodel")
    for name in before:
        for b, a in zip(before[name], after[name]):
            np.testing.assert_array_equal(a, b)


def test_snapshot_resume_continues_from_its_iteration(caffe, toy):
    folder, net_path = toy
    straight = folder / "straight"
    straight.mkdir()
    run_caffe(["train", f"-solver={_solver(caffe, straight, net_path, 20)}"], folder)
    log = run_caffe(["train", f"-solver={_solver(caffe, folder, net_path, 20, snapshot=10)}"], folder)
    (folder / "snap_iter_20.caffemodel").unlink()
    log = run_caffe(["train", f"-solver={_solver(caffe, folder, net_path, 20, snapshot=10)}",
                     f"-snapshot={folder / 'snap_iter_10.solverstate'}"], folder)
    assert "Resuming from" in log and "restoring history" in log
    iters = [int(i) for i in re.findall(r"Iteration (\d+) \(", log)]
    assert min(iters) == 10 and max(iters) == 19  # the first resumed step is iteration 10
    resumed = _weights(caffe, net_path, folder / "snap_iter_20.caffemodel")
    reference = _weights(caffe, net_path, straight / "snap_iter_20.caffemodel")
    for name in reference:
        for r, a in zip(reference[name], resumed[name]):
            np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-6)


def test_hdf5data_layer_reads_python_written_file(caffe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the list file names its .h5 relative to the dataset folder
    data, label = toy_arrays(n=6, size=8, seed=3)
    listfile = write_h5(tmp_path, "set", data, label)
    n = caffe.NetSpec()
    n.data, n.label = caffe.layers.HDF5Data(ntop=2, hdf5_data_param=dict(source=str(listfile), batch_size=3))
    path = tmp_path / "read.prototxt"
    path.write_text(str(n.to_proto()))
    net = caffe.Net(str(path), caffe.TEST)
    for start in (0, 3):
        net.forward()
        np.testing.assert_array_equal(net.blobs["data"].data, data[start:start + 3])
        np.testing.assert_array_equal(net.blobs["label"].data, label[start:start + 3])


def test_lmdb_data_layers_read_python_written_datums(caffe, tmp_path):
    from caffe.proto import caffe_pb2

    data, label = toy_arrays(n=4, size=8, seed=4)
    for name, arrays in (("data", data), ("label", label)):
        env = lmdb.open(str(tmp_path / f"{name}_lmdb"), map_size=1 << 24)
        with env.begin(write=True) as txn:
            for i, arr in enumerate(arrays):
                if name == "data":
                    datum = caffe_pb2.Datum(channels=1, height=8, width=8, float_data=arr.ravel().tolist())
                else:
                    datum = caffe.io.array_to_datum(arr.astype(np.uint8))
                txn.put(b"%08d" % i, datum.SerializeToString())
        env.close()
    n = caffe.NetSpec()
    P = caffe.params
    n.data = caffe.layers.Data(source=str(tmp_path / "data_lmdb"), backend=P.Data.LMDB, batch_size=2)
    n.label = caffe.layers.Data(source=str(tmp_path / "label_lmdb"), backend=P.Data.LMDB, batch_size=2)
    path = tmp_path / "read.prototxt"
    path.write_text(str(n.to_proto()))
    net = caffe.Net(str(path), caffe.TEST)
    for start in (0, 2):
        net.forward()
        np.testing.assert_array_equal(net.blobs["data"].data, data[start:start + 2])
        np.testing.assert_array_equal(net.blobs["label"].data, label[start:start + 2])


def test_caffe_env_reports_missing_builds_clearly(tmp_path, monkeypatch):
    for explicit in ("CAFFE", "PYCAFFE"):  # exported by `make test CAFFE_ROOT=...`; they would win
        monkeypatch.delenv(explicit, raising=False)
    monkeypatch.setenv("CAFFE_ROOT", str(tmp_path))
    with pytest.raises(caffe_env.CaffeNotFound, match="caffe binary not found"):
        caffe_env.caffe_binary()
    with pytest.raises(caffe_env.CaffeNotFound, match="make caffe GPU=1"):
        caffe_env.pycaffe_dir(gpu=True)
