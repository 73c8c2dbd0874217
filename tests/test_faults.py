"""Faults injected on purpose: each ends in one line `error: ...` (exit 1), or a Make error before any work,
and leaves earlier outputs intact and no temporary files behind. The data_prep cases are in
test_data_faults.py."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, make_dataset
from PIL import Image

from cellfcn import caffe_env
from prototxt import net


def _run(module, *args, **kwargs):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, **kwargs)


def assert_one_line_error(proc, *words):
    assert proc.returncode == 1, proc.stdout[-1000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    for word in words:
        assert word in lines[0], lines[0]


def _temporaries(folder):
    return [p for p in Path(folder).rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]


# ------------------------------------------------------------------------------ weights of another net
@pytest.fixture(scope="module")
def foreign_models(caffe, tmp_path_factory):
    """A model of an unrelated net (other layer names) and one of FCRN-A with conv7 halved (other shapes)."""
    folder = tmp_path_factory.mktemp("models")
    n = caffe.NetSpec()
    n.data = caffe.layers.Input(shape=dict(dim=[1, 1, 16, 16]))
    n.other = caffe.layers.Convolution(n.data, num_output=4, kernel_size=3, weight_filler=dict(type="xavier"))
    other = n.to_proto()
    other.name = "fcrn_a_finetune_train"  # both claim to be FCRN-A: their layers tell
    caffe_env.net_from_param(other).save(str(folder / "renamed.caffemodel"))
    param = net.deploy_net()
    param.name = "fcrn_a_finetune_train"
    next(layer for layer in param.layer if layer.name == "conv7").convolution_param.num_output = 16
    caffe_env.net_from_param(param).save(str(folder / "reshaped.caffemodel"))
    return folder


@pytest.mark.parametrize("model, layer", [("renamed", "conv1"), ("reshaped", "conv7")])
def test_segment_refuses_weights_of_another_net(foreign_models, tmp_path, model, layer):
    image = tmp_path / "cells.png"
    Image.fromarray((np.random.default_rng(0).random((40, 48)) * 255).astype(np.uint8)).save(image)
    proc = _run("tools.segment", image, "--model", foreign_models / f"{model}.caffemodel", "--out", tmp_path / "o")
    assert_one_line_error(proc, f"layer '{layer}'", "another net")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("model, layer", [("renamed", "conv1"), ("reshaped", "conv7")])
def test_finetune_refuses_weights_of_another_net_before_caffe_runs(foreign_models, tmp_path, model, layer):
    real = make_dataset(tmp_path / "real", "real", n_train=8, n_test=4)
    out = tmp_path / "finetune"
    proc = _run("tools.train", "--stage", "finetune", "--data", real, "--out", out, "--batch", 4, "--epochs", 1,
                "--weights", foreign_models / f"{model}.caffemodel")
    assert_one_line_error(proc, f"layer '{layer}'")
    assert not (out / "train.log").exists()


# --------------------------------------------------------------------------------- datasets that move
def test_training_follows_a_dataset_that_moves_and_copies_under_paths_with_spaces(tmp_path):
    original = make_dataset(tmp_path / "a folder" / "synthetic", "synthetic", n_train=8, n_test=4)
    out = tmp_path / "run with spaces"
    assert _run("tools.train", "--stage", "pretrain", "--data", original, "--out", out, "--batch", 4,
                "--epochs", 1).returncode == 0
    moved = tmp_path / "moved here" / "synthetic"
    shutil.move(str(original.parent), str(moved.parent))
    copy = tmp_path / "copy of it"
    shutil.copytree(moved, copy)
    shutil.rmtree(moved.parent)  # only the copy is left: training must read the copy's files
    proc = _run("tools.train", "--stage", "pretrain", "--data", copy, "--out", out, "--batch", 4, "--epochs", 1)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "up to date" in proc.stdout  # same content: the finished run stands
    proc = _run("tools.train", "--stage", "pretrain", "--data", copy, "--out", tmp_path / "second run",
                "--batch", 4, "--epochs", 1)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ----------------------------------------------------------------------------------- the training log
def test_train_log_is_on_disk_line_by_line_when_killed(tmp_path):
    syn = make_dataset(tmp_path / "synthetic", "synthetic", n_train=16, n_test=8)
    out = tmp_path / "pretrain"
    proc = subprocess.Popen([sys.executable, "-m", "tools.train", "--stage", "pretrain", "--data", str(syn),
                             "--out", str(out), "--batch", "4", "--epochs", "200"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    seen, deadline = None, time.time() + 120
    for line in proc.stdout:  # the progress lines train.py echoes after writing them to the log
        if line.startswith("Iteration 20"):
            seen = line.strip()
            break
        assert time.time() < deadline, "no iteration 20 within 2 minutes"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert seen is not None
    assert seen in (out / "train.log").read_text()


# ------------------------------------------------------------------------- stages that only render
def test_figures_and_report_never_run_the_net(tmp_path):
    runs = tmp_path / "runs"
    (runs / "pretrain").mkdir(parents=True)
    proc = _run("tools.figures", "--runs", runs, "--data", tmp_path, "--out", tmp_path / "fig")
    assert_one_line_error(proc, "table1.json", "make evaluate")
    proc = _run("tools.report", "--runs", runs, "--out", tmp_path / "report")
    assert_one_line_error(proc, "missing", "make pretrain")
    (runs / "eval").mkdir()
    (runs / "eval" / "table1.json").write_text(json.dumps({"rows": []}))  # written by an older version
    proc = _run("tools.figures", "--runs", runs, "--data", tmp_path, "--out", tmp_path / "fig")
    assert_one_line_error(proc, "schema", "make evaluate")


# ---------------------------------------------------------------------------- outputs that can't be
def test_outputs_below_a_file_or_onto_a_folder_are_one_line_errors(tmp_path):
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    proc = _run("tools.evaluate", "--runs", tmp_path, "--data", tmp_path, "--out", blocker / "eval")
    assert_one_line_error(proc, "is a file")
    proc = _run("cellfcn.parse_log", REPO / "tests" / "data" / "caffe_train.log", "--out", tmp_path)
    assert_one_line_error(proc, "is a folder")
    proc = _run("prototxt.net", "--out", blocker)
    assert_one_line_error(proc, "does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a file"] and not _temporaries(tmp_path)


def test_two_inputs_never_write_the_same_outputs(tmp_path):
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.full((16, 16), 100, np.uint8)).save(tmp_path / folder / "cells.png")
    model = tmp_path / "m.caffemodel"
    model.write_bytes(b"")
    proc = _run("tools.segment", tmp_path / "one" / "cells.png", tmp_path / "two" / "cells.png", "--model", model,
                "--out", tmp_path / "out")
    assert_one_line_error(proc, "cells_*")
    assert not (tmp_path / "out").exists()


# -------------------------------------------------------------------- Make variables, before any work
@pytest.mark.parametrize("assignment, words", [
    ("CONFIG=fast", "CONFIG must be default or paper"), ("FORMAT=csv", "FORMAT must be hdf5 or lmdb"),
    ("SEED=-1", "SEED must be a non-negative integer"), ("BATCH=0", "BATCH must be a positive integer"),
    ("EPOCHS=ten", "EPOCHS must be a positive integer"), ("GPU_ID=15", "no CUDA device 15"),
    ("NET=vgg16", "NET must be fcrn_a, k5, pool2, wide, contour, contour_skip, contour_skip_mn or contour_skip_mnw"),
    ("EXPERIMENTS=all", "EXPERIMENTS must be default or full")])
def test_make_checks_its_variables_before_any_work(tmp_path, assignment, words):
    extra = ["GPU=1"] if assignment.startswith("GPU") else []
    proc = subprocess.run(["make", "-C", str(REPO), "pretrain", assignment, *extra, f"RUNS={tmp_path / 'runs'}"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], proc.stderr
    assert not (tmp_path / "runs").exists()


def test_make_knows_every_net_variant():
    from prototxt import net

    line = next(x for x in (REPO / "Makefile").read_text().splitlines() if "NET must be" in x)
    assert line.split("$(filter ")[1].split(",")[0].split() == list(net.VARIANTS)
