"""The Makefile checks its variables with make's own functions: a hostile value never reaches a shell."""
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _make_n(*args):
    """``make -n help`` with extra goals and variables: parse the Makefile, print (not run) the recipes."""
    return subprocess.run(["make", "-n", "--no-print-directory", "help", *args], cwd=REPO, capture_output=True,
                          text=True)


@pytest.mark.parametrize("variable, value, phrase", [
    ("SEED", "0' ; touch {m} ; echo '1", "SEED must be a non-negative integer"),  # broke out of $(shell '...')
    ("BATCH", "8' ; touch {m} ; echo '1", "BATCH must be a positive integer"),
    ("EPOCHS", "2' ; touch {m} ; echo '1", "EPOCHS must be a positive integer"),
    ("SEED", "$(shell touch {m})", "SEED must not contain '$'"),  # make would expand it at its first use
    ("RUNS", "$(shell touch {m})", "RUNS must not contain '$'"),  # expanded by DATA := on the next line
    ("CONFIG", "default ; touch {m}", "CONFIG must be default or paper"),  # filter alone found 'default' in it
    ("NET", "k5 ; touch {m}", "NET must be fcrn_a"),
    ("GPU_ID", "0' ; touch {m} ; echo '", "GPU_ID must be a device id"),  # reaches nvidia-smi's $(shell)
    ("SYN_ARGS", "--n-images 6 ; touch {m}", "SYN_ARGS must be plain arguments"),
    ("OUT", "x\" ; touch {m} ; echo \"", "OUT must not contain"),  # the recipes double-quote paths
])
def test_hostile_values_are_refused_without_running(tmp_path, variable, value, phrase):
    marker = tmp_path / "ran"
    proc = _make_n(f"{variable}={value.format(m=marker)}")
    assert proc.returncode != 0 and not marker.exists()
    assert phrase in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_hostile_value_from_the_environment_is_refused(tmp_path):
    marker = tmp_path / "ran"
    proc = subprocess.run(["make", "-n", "help"], cwd=REPO, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "SEED": f"$(shell touch {marker})"})
    assert proc.returncode != 0 and not marker.exists() and "SEED must not contain '$'" in proc.stderr


@pytest.mark.parametrize("args, phrase", [
    (["segment", "IN=x", "SCHEDULER=tcp://h ost"], "SCHEDULER must be an address"),
    (["segment", "IN=x", "WORKERS=-1"], "WORKERS must be a non-negative integer"),
    (["BATCH=0"], "BATCH must be a positive integer"),
    (["BATCH=08"], "BATCH must be a positive integer"),
    (["FORMAT=hdf5 lmdb"], "FORMAT must be hdf5 or lmdb"),
    (["segment", "IN=x", "DIAMETER=2x"], "DIAMETER must be the typical nucleus diameter"),
    (["segment", "IN=x", "ENGINE=tf"], "ENGINE must be caffe or onnx"),
    (["segment", "IN=x", "ENGINE=onnx"], "ENGINE=onnx needs MODEL="),
])
def test_malformed_values_are_one_line(args, phrase):
    proc = _make_n(*args)
    assert proc.returncode != 0 and phrase in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


@pytest.mark.parametrize("args", [
    ["SEED=007", "BATCH=16", "EPOCHS=3", "CONFIG=paper", "FORMAT=lmdb", "NET=pool2", "EXPERIMENTS=full"],
    ["segment", "IN=/data/my images", "OUT=/tmp/out dir", "WORKERS=0", "SCHEDULER=tcp://[::1]:8786"],
    ["segment", "IN=x", "DIAMETER=24.5", "ENGINE=onnx", "MODEL=m.bioimageio.zip"],
    ["experiments", "WORKERS=2", "THREADS=1"],
    ["QUICK=1", "SYN_ARGS=--n-images 6 --image-size 256", "GPU_ID=3"],
])
def test_good_values_pass(args):
    proc = _make_n(*args)
    assert proc.returncode == 0, proc.stderr
