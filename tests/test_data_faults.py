"""data_prep when things go wrong: a full disk, kill -9, unwritable outputs, moved and copied datasets, reruns,
and inputs that are accepted but wrong (non-binary masks, patch sizes, fractions).

The fault tests run the real command line in a child process (``python -m data_prep``), as a user would.
"""

import hashlib
import io
import json
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.transform import downscale_local_mean

from cellfcn.errors import InputError
from cellfcn.images import to_binary_mask
from data_prep import __main__ as cli
from data_prep.writers import is_up_to_date

# Small, fast settings: 4 images of 128 x 128, 8 training and 4 test patches (about 1 MB of HDF5).
SYNTH = ["synthetic", "--n-images", 4, "--image-size", 128, "--n-cells", "6:9", "--n-train", 8, "--n-test", 4]
FILE_LIMIT = 256 << 10  # the simulated disk: no file may grow beyond 256 KiB


def data_prep(*args, preexec_fn=None):
    """Run ``python -m data_prep ARGS`` in a child process."""
    return subprocess.run([sys.executable, "-m", "data_prep", *map(str, args)], capture_output=True, text=True,
                          preexec_fn=preexec_fn)


def message_lines(stderr):
    """stderr without progress-bar frames: what a user reads once the bars are cleared."""
    return [line for line in stderr.replace("\r", "\n").splitlines() if line.strip() and "|" not in line]


def assert_one_line_error(proc, *phrases):
    lines = message_lines(proc.stderr)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "Traceback" not in proc.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines


def tree_hashes(folder):
    """Relative path -> SHA-256 of every file below ``folder`` (LMDB's run-time lock.mdb left out)."""
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(Path(folder).rglob("*")) if path.is_file() and path.name != "lock.mdb"}


def litter(folder):
    """Temporary or displaced folders/files that data_prep's writes leave beside their output."""
    return sorted(p.name for p in Path(folder).iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def small_disk():
    """In the child: every file write beyond FILE_LIMIT fails with EFBIG, as on a full disk."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write() instead of killing the process


# ------------------------------------------------------------------------------------------- full disk

@pytest.mark.parametrize("fmt", ["hdf5", "lmdb"])
def test_full_disk_is_one_line_and_keeps_the_previous_dataset(tmp_path, fmt):
    out = tmp_path / "data"
    assert data_prep(*SYNTH, "--format", fmt, "--out", out).returncode == 0
    before = tree_hashes(out)
    assert max((out / rel).stat().st_size for rel in before) > FILE_LIMIT  # the rebuild cannot fit

    proc = data_prep(*SYNTH, "--format", fmt, "--seed", 1, "--out", out, preexec_fn=small_disk)
    # LMDB reports the failed write as "mdb_txn_commit: Input/output error"
    assert_one_line_error(proc, f"cannot write {out}", "File too large" if fmt == "hdf5" else "mdb_txn_commit",
                          "previous version (if any) is unchanged")
    assert tree_hashes(out) == before
    assert litter(tmp_path) == []


# ------------------------------------------------------------------------------------------- kill -9

def test_a_killed_run_leaves_a_temporary_folder_that_the_next_run_removes(tmp_path):
    out = tmp_path / "data"
    args = [*SYNTH, "--n-train", 300, "--format", "hdf5", "--out", out]  # ~40 MB: a write that takes a while
    assert data_prep(*args).returncode == 0
    before = tree_hashes(out)

    child = subprocess.Popen([sys.executable, "-m", "data_prep", *map(str, args), "--force"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not litter(tmp_path):
        assert child.poll() is None, "the child finished before its temporary folder was seen"
        assert time.monotonic() < deadline
        time.sleep(0.001)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert litter(tmp_path), "kill -9 gives no chance to clean up"
    assert tree_hashes(out) == before

    proc = data_prep(*args)  # up to date: nothing to rebuild, but the dead run's temporary goes
    assert proc.returncode == 0 and "up to date" in proc.stderr
    assert litter(tmp_path) == []
    assert tree_hashes(out) == before


# ------------------------------------------------------------------------------------ unwritable outputs

def test_unwritable_outputs_are_one_line_errors(tmp_path):
    blocker = tmp_path / "a file"
    blocker.write_text("x")
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("keep me")
    cases = [
        (["--out", blocker / "data"], f"{blocker} is a file"),  # the output's parent is a file
        (["--out", blocker], "output path is a file"),
        (["--out", foreign], "not a data_prep dataset"),
        (["--out", tmp_path / "data", "--preview", blocker / "p.png"], f"{blocker} is a file"),
        # /sys refuses new entries even to root (chmod 555 would not stop the root user tests run as in CI)
        (["--out", "/sys/data_prep_test_output"], "/sys/data_prep_test_output"),
    ]
    for args, phrase in cases:
        assert_one_line_error(data_prep(*SYNTH, "--format", "hdf5", *args), phrase)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a file", "notes"]
    assert (foreign / "keep.txt").read_text() == "keep me" and blocker.read_text() == "x"


# ------------------------------------------------------------------------- relocatable, reproducible

def test_a_dataset_under_spaces_moves_and_copies(tmp_path):
    out = tmp_path / "with space" / "my data"
    args = [*SYNTH, "--format", "hdf5"]
    assert data_prep(*args, "--out", out).returncode == 0
    for split in ("train", "test"):  # Caffe splits list lines at whitespace: only a bare name is safe
        assert (out / f"{split}.txt").read_text() == f"{split}.h5\n"
    key = json.loads((out / "manifest.json").read_text())["build_key"]
    built = tree_hashes(out)

    moved = tmp_path / "moved here"
    out.rename(moved)
    assert is_up_to_date(moved, key)
    stamp = (moved / "train.h5").stat().st_mtime_ns
    proc = data_prep(*args, "--out", moved)
    assert proc.returncode == 0 and "up to date" in proc.stderr
    assert (moved / "train.h5").stat().st_mtime_ns == stamp

    copy = tmp_path / "copy"
    shutil.copytree(moved, copy)
    (moved / "train.h5").write_bytes(b"damaged original")  # the copy must not depend on it
    assert is_up_to_date(copy, key) and not is_up_to_date(moved, key)
    assert tree_hashes(copy) == built


def test_same_seed_same_bytes_in_any_folder(tmp_path):
    args = [*SYNTH, "--format", "hdf5"]
    first, second, other = tmp_path / "a", tmp_path / "some where" / "b", tmp_path / "c"
    for out, seed in ((first, 0), (second, 0), (other, 1)):
        assert data_prep(*args, "--seed", seed, "--out", out).returncode == 0
    hashes = tree_hashes(first)
    assert {"manifest.json", "train.h5", "train.txt", "test.h5", "test.txt"} <= set(hashes)
    assert tree_hashes(second) == hashes  # every file, manifest and list files included
    assert tree_hashes(other)["train.h5"] != hashes["train.h5"]


# ----------------------------------------------------------------------- masks that are not binary

def disk_labels(shape, centres, radius, supersample=1):
    """Instance labels, one disk per centre, optionally on a grid ``supersample`` times finer."""
    yy, xx = np.mgrid[:shape[0] * supersample, :shape[1] * supersample] / supersample
    labels = np.zeros(yy.shape, dtype=np.uint16)
    for k, (cy, cx) in enumerate(centres, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = k
    return labels


CENTRES = [(20, 20), (20, 41), (60, 30), (70, 80), (30, 90)]  # the first two touch


def jpeg(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=90)
    return np.asarray(Image.open(buffer))


def test_instance_labels_and_two_valued_masks_are_accepted():
    labels = disk_labels((100, 120), CENTRES, 10)
    np.testing.assert_array_equal(to_binary_mask(labels), labels > 0)
    np.testing.assert_array_equal(to_binary_mask(labels.astype(np.float32)), labels > 0)
    two = np.where(labels > 0, 2, 1).astype(np.uint8)  # two values: the larger one is cell, not "non-zero"
    np.testing.assert_array_equal(to_binary_mask(two), labels > 0)
    np.testing.assert_array_equal(to_binary_mask(np.where(labels > 0, 0.5, 0.0)), labels > 0)
    palette = np.array([[0, 0, 0, 0], *[[40 * k, 255 - 30 * k, 7 * k, 255] for k in range(1, 6)]], np.uint8)
    np.testing.assert_array_equal(to_binary_mask(palette[labels]), labels > 0)


@pytest.mark.parametrize("kind, phrase", [
    ("gradient", "not piecewise constant"),
    ("probabilities", "not all integers"),
    ("jpeg", "not piecewise constant"),
    ("anti-aliased", "not piecewise constant"),
    ("jpeg colour", "colour-coded mask is not piecewise constant"),
    ("nan", "NaN"),
])
def test_masks_that_are_not_binary_or_labels_are_refused(kind, phrase):
    labels = disk_labels((100, 120), CENTRES, 10)
    if kind == "gradient":
        mask = np.tile(np.arange(120, dtype=np.uint8) * 2, (100, 1))
    elif kind == "probabilities":
        mask = np.clip(labels > 0, 0.02, 0.97) * np.linspace(0.9, 1.0, 120)
    elif kind == "jpeg":
        mask = jpeg(((labels > 0) * 255).astype(np.uint8))
    elif kind == "anti-aliased":
        fine = disk_labels((100, 120), CENTRES, 10, supersample=4) > 0
        mask = (downscale_local_mean(fine.astype(float), (4, 4)) * 255).round().astype(np.uint8)
    elif kind == "jpeg colour":
        mask = jpeg(np.stack([(labels * 40 % 256).astype(np.uint8), (labels > 0).astype(np.uint8) * 200,
                              (labels * 90 % 256).astype(np.uint8)], axis=-1))
    else:
        mask = (labels > 0).astype(np.float32)
        mask[3, 3] = np.nan
    with pytest.raises(InputError, match=phrase) as caught:
        to_binary_mask(mask, "masks/img7.png")
    assert str(caught.value).startswith("masks/img7.png: ")


def test_a_gradient_mask_file_stops_the_folder_command(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        labels = disk_labels((64, 64), rng.integers(10, 54, size=(4, 2)), 8)
        Image.fromarray((100 + 80 * (labels > 0) + rng.integers(0, 20, (64, 64))).astype(np.uint8)).save(
            images / f"img{i}.png")
        Image.fromarray(labels.astype(np.uint8)).save(masks / f"img{i}.png")
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))).save(masks / "img1.png")
    proc = data_prep("folder", "--images", images, "--masks", masks, "--out", tmp_path / "out", "--patch-size",
                     32, "--n-train", 2, "--format", "hdf5", "--val-fraction", 0.3, "--test-fraction", 0.3)
    assert_one_line_error(proc, "img1.png", "not piecewise constant")
    assert not (tmp_path / "out").exists() and litter(tmp_path) == []


# -------------------------------------------------------------------------------- option values

@pytest.mark.parametrize("args, phrase", [
    ([*SYNTH, "--patch-size", 100], "multiple of 8"),
    ([*SYNTH, "--patch-size", 4], "multiple of 8"),
    ([*SYNTH, "--test-fraction", 1.5], "(0, 1]"), ([*SYNTH, "--test-fraction", 0], "(0, 1]"),
    ([*SYNTH, "--simplex-fraction", -0.2], "[0, 1]"),
    ([*SYNTH, "--n-images", 1], "at least 2"),
    ([*SYNTH, "--n-train", 0], "positive integer"),
    ([*SYNTH, "--seed", -1], "non-negative"),
    ([*SYNTH, "--min-cell-fraction", 1], "[0, 1)"),
    ([*SYNTH, "--pct-low", 50, "--pct-high", 40], "below --pct-high"),
    ([*SYNTH, "--pct-high", "nan"], "[0, 100]"),
    (["folder", "--images", "i", "--masks", "m", "--val-fraction", -0.1], "(0, 1)"),
    (["folder", "--images", "i", "--masks", "m", "--test-fraction", 1], "(0, 1)"),
    (["folder", "--images", "i", "--masks", "m", "--scale", 0], "(0, 16]"),
    (["mnfinder", "--n-val-images", "two"], "positive integer"),
])
def test_bad_option_values_are_usage_errors(args, phrase, capsys, tmp_path):
    with pytest.raises(SystemExit) as caught:
        cli.main([*map(str, args), "--out", str(tmp_path / "out")])
    assert caught.value.code == 2
    assert phrase in capsys.readouterr().err.splitlines()[-1]
    assert not (tmp_path / "out").exists()
