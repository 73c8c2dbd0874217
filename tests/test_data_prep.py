"""data_prep: augmentation, patches, the HDF5/LMDB writers read back by Caffe, determinism, bad input."""

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

from cellfcn.errors import InputError
from cellfcn.files import sha256_file
from cellfcn.images import mask_labels, read_array, resize_labels, to_binary_mask, to_gray
from data_prep import __main__ as cli
from data_prep.augment import augment_dihedral, dihedral
from data_prep.normalize import normalize_percentile
from data_prep.patches import sample_patches, tile_origins
from data_prep.real import prepare_pair

REPO = Path(__file__).resolve().parent.parent
P = 32  # small patches keep the tests fast; every size path is the same code as 128


# ---------------------------------------------------------------------------------------------- helpers

def disks(shape, centres, radius):
    """Instance label image with one disk per centre."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    labels = np.zeros(shape, dtype=np.uint8)
    for k, (cy, cx) in enumerate(centres, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = k
    return labels


def make_folder(root, n=5, shape=(100, 130), seed=0):
    """n image/mask pairs covering the supported encodings: 16-bit PNG + instance labels, 8-bit TIFF +
    colour-coded RGBA, 16-bit TIFF + binary 0/255."""
    rng = np.random.default_rng(seed)
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    for i in range(n):
        centres = rng.integers(8, [shape[0] - 8, shape[1] - 8], size=(12, 2))
        labels = disks(shape, centres, 6)
        intensity = 200 + 3000 * (labels > 0) + rng.normal(0, 50, shape)
        kind = i % 3
        if kind == 0:
            Image.fromarray(intensity.astype(np.uint16)).save(images / f"img{i}.png")
            Image.fromarray(labels).save(masks / f"img{i}.png")
        elif kind == 1:
            tifffile.imwrite(images / f"img{i}.tif", (intensity / 16).astype(np.uint8))
            palette = rng.integers(1, 256, size=(labels.max() + 1, 4)).astype(np.uint8)
            palette[:, 3] = 255
            rgba = palette[labels]
            rgba[labels == 0] = 0
            Image.fromarray(rgba, "RGBA").save(masks / f"img{i}.png")
        else:
            tifffile.imwrite(images / f"img{i}.tif", intensity.astype(np.uint16))
            tifffile.imwrite(masks / f"img{i}.tif", ((labels > 0) * 255).astype(np.uint8))
    return images, masks


def run(argv, capsys):
    """Run the CLI; return (exit status, stderr lines without progress bars)."""
    status = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "|" not in line]
    return status, lines


def folder_args(images, masks, out, *extra):
    return ["folder", "--images", images, "--masks", masks, "--out", out, "--patch-size", P, "--n-train", 6,
            *extra]


def data_hashes(out):
    """SHA-256 of every output file, as the manifest records them."""
    return json.loads((Path(out) / "manifest.json").read_text())["files"]


@pytest.fixture(scope="module")
def folder_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    images, masks = make_folder(root)
    out = root / "out"
    assert cli.main([str(a) for a in folder_args(images, masks, out, "--format", "both")]) == 0
    return images, masks, out


# ---------------------------------------------------------------------------------------------- augmentation

def test_each_dihedral_transform_is_exact():
    a = np.arange(12 * 12).reshape(12, 12)
    n = a.shape[0] - 1
    i, j = np.mgrid[:12, :12]
    # Written out index by index, out[i, j] = a[f(i, j)]: k quarter turns counter-clockwise, then for
    # k >= 4 a left-right mirror (out[i, j] = turned[i, n - j]).
    expected = [a[i, j], a[j, n - i], a[n - i, n - j], a[n - j, i],
                a[i, n - j], a[n - j, n - i], a[n - i, j], a[j, i]]
    for k in range(8):
        np.testing.assert_array_equal(dihedral(a, k), expected[k], err_msg=f"transform {k}")
    assert len({dihedral(a, k).tobytes() for k in range(8)}) == 8
    with pytest.raises(ValueError):
        dihedral(a, 8)


def test_augmentation_applies_the_same_transform_to_image_and_mask():
    rng = np.random.default_rng(1)
    images = rng.random((3, 16, 16)).astype(np.float32)
    masks = images > 0.6
    out_images, out_masks, transform = augment_dihedral(images, masks)
    assert out_images.shape == out_masks.shape == (24, 16, 16)
    np.testing.assert_array_equal(out_masks, out_images > 0.6)  # the label follows its image
    for idx in range(24):
        np.testing.assert_array_equal(out_images[idx], dihedral(images[idx // 8], idx % 8))
        assert transform[idx] == idx % 8


# ---------------------------------------------------------------------------------------------- reading

def test_gray_channel_and_mask_encodings():
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb[..., 1] = 7
    assert to_gray(rgb, channel=1).tolist() == np.full((4, 5), 7).tolist()
    with pytest.raises(InputError, match="--channel"):
        to_gray(rgb)
    assert to_gray(np.repeat(np.arange(20, dtype=np.uint16).reshape(4, 5, 1), 3, axis=2)).shape == (4, 5)
    labels = np.array([[0, 3], [7, 0]])
    assert to_binary_mask(labels).tolist() == [[False, True], [True, False]]
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 1] = (0, 0, 0, 255)  # a black object on a transparent background still counts
    rgba[1, 0] = (200, 10, 30, 255)
    assert to_binary_mask(rgba).tolist() == [[False, True], [True, False]]
    opaque = np.zeros((2, 2, 4), dtype=np.uint8)
    opaque[..., 3] = 255
    opaque[1, 1, 0] = 9
    assert to_binary_mask(opaque).tolist() == [[False, False], [False, True]]


def _touching_pair():
    """Instance labels of two touching 6x6 squares (1 left, 2 right) on a 12x20 background."""
    labels = np.zeros((12, 20), dtype=np.uint8)
    labels[3:9, 4:10], labels[3:9, 10:16] = 1, 2
    return labels


def test_mask_labels_of_each_encoding():
    labels = _touching_pair()
    # instance labels (any values) are kept apart and renumbered in raster order
    np.testing.assert_array_equal(mask_labels(np.where(labels == 1, 9, labels * 4)), labels)
    assert mask_labels(labels).dtype == np.int32
    # a binary mask cannot tell touching nuclei apart: one connected component
    binary = (labels > 0).astype(np.uint8) * 255
    np.testing.assert_array_equal(mask_labels(binary), (labels > 0).astype(np.int32))
    # colour-coded RGBA: one colour per nucleus
    rgba = np.zeros(labels.shape + (4,), dtype=np.uint8)
    rgba[labels == 1], rgba[labels == 2] = (10, 200, 30, 255), (90, 5, 60, 255)
    np.testing.assert_array_equal(mask_labels(rgba), labels)
    for mask in (labels, binary, rgba):  # labels > 0 is the binary mask
        np.testing.assert_array_equal(mask_labels(mask) > 0, to_binary_mask(mask))
    with pytest.raises(InputError, match="piecewise constant"):
        mask_labels(np.arange(240).reshape(12, 20))


def test_resized_labels_cover_the_resized_mask_and_keep_nuclei_apart():
    labels = np.zeros((40, 60), dtype=np.int32)
    labels[8:32, 6:30], labels[8:32, 30:54] = 1, 2  # touching 24x24 squares
    labels[2:4, 57:59] = 3  # 2x2: lost at scale 0.25
    image = np.random.default_rng(0).random(labels.shape)
    _, mask, resized = prepare_pair(image, labels, "x", scale=0.25)
    assert mask.shape == resized.shape == (10, 15) and resized.dtype == np.int32
    np.testing.assert_array_equal(resized > 0, mask)
    assert set(np.unique(resized)) == {0, 1, 2}
    assert np.array_equal(resized[2:8, 2:7], np.ones((6, 5))) and np.array_equal(resized[2:8, 8:13],
                                                                                  np.full((6, 5), 2))
    # pixels the bilinear mask adds beyond the nearest-neighbour labels take the nearest nucleus
    near = np.zeros((5, 5), dtype=np.int32)
    near[1, 1], near[3, 3] = 4, 7
    grown = resize_labels(near, np.ones((5, 5), bool))
    assert grown[0, 0] == 1 and grown[4, 4] == 2 and (grown > 0).all()
    assert not resize_labels(near, np.zeros((5, 5), bool)).any()


def test_normalisation_is_robust_and_in_range():
    image = np.full((50, 50), 100, dtype=np.uint16)
    image[:25] = 1100
    image[0, 0] = 65535  # one hot pixel does not set the scale
    out = normalize_percentile(image)
    assert out.dtype == np.float32 and out.min() == 0 and out.max() == 1
    assert out[30, 30] == 0 and out[10, 10] == 1


# ---------------------------------------------------------------------------------------------- patches

def test_tiles_and_near_empty_rule():
    origins = tile_origins((100, 130), 32)
    assert origins.shape == (3 * 4, 2) and origins.max(axis=0).tolist() == [64, 96]
    mask = np.zeros((200, 200), dtype=bool)
    mask[150:170, 150:170] = True  # 400 px in one corner: most positions are near-empty
    index, origin = sample_patches([mask], 5, 32, np.random.default_rng(0), min_cell_fraction=0.1)
    for y, x in origin:
        assert mask[y:y + 32, x:x + 32].mean() >= 0.1
    with pytest.raises(InputError, match="only"):
        sample_patches([mask], 5, 32, np.random.default_rng(0), min_cell_fraction=0.1, overlap=False)


def test_folder_dataset_counts_shapes_and_contract(folder_dataset):
    _, masks, out = folder_dataset
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "real" and manifest["patch_size"] == P and set(manifest["splits"]) == {
        "train", "val", "test"}
    for rel, digest in manifest["files"].items():
        assert sha256_file(out / rel) == digest
    with h5py.File(out / "train.h5") as f:
        assert f["data"].shape == f["label"].shape == (6 * 8, 1, P, P)
        assert f["data"].dtype == f["label"].dtype == np.float32
        assert f["data"].chunks == (1, 1, P, P)
        assert 0 <= f["data"][:].min() and f["data"][:].max() <= 1
        assert set(np.unique(f["label"][:])) <= {0.0, 1.0}
        # near-empty rule on every training patch (the dihedral transforms keep the count)
        assert (f["label"][:].mean(axis=(1, 2, 3)) >= 0.02).all()
    for split in ("val", "test"):
        assert (out / f"{split}.txt").read_text() == f"{split}.h5\n"  # relative to the dataset folder
        with h5py.File(out / f"{split}.h5") as f, h5py.File(out / f"{split}_full.h5") as full:
            n_images = manifest["splits"][split]["n_images"]
            assert len(full["images"]) == len(full["masks"]) == n_images == 1
            shape = full["images/0"].shape
            assert f["data"].shape == (len(tile_origins(shape, P)), 1, P, P) == (12, 1, P, P)
            assert full["masks/0"].dtype == np.uint8 and full["images/0"].attrs["name"].startswith("img")
            # instance labels of the mask file (scale 1): labels > 0 is the mask, touching nuclei stay apart
            assert full["labels/0"].dtype == np.int32 and full["labels/0"].attrs["name"] == \
                full["images/0"].attrs["name"]
            np.testing.assert_array_equal(full["labels/0"][()] > 0, full["masks/0"][()] != 0)
            source = next(masks.glob(full["images/0"].attrs["name"] + ".*"))
            np.testing.assert_array_equal(full["labels/0"][()], mask_labels(read_array(source)))
            for k in range(len(f["data"])):  # each tile is its whole image's region at `origin`
                i, (y, x) = f["source_index"][k], f["origin"][k]
                np.testing.assert_array_equal(f["data"][k, 0], full[f"images/{i}"][y:y + P, x:x + P])
                np.testing.assert_array_equal(f["label"][k, 0], full[f"masks/{i}"][y:y + P, x:x + P])
    train_names = set(manifest["splits"]["train"]["images"])
    assert not train_names & set(manifest["splits"]["test"]["images"] + manifest["splits"]["val"]["images"])


# ---------------------------------------------------------------------------------------------- Caffe

def caffe_forward(tmp_path, layers, n):
    from cellfcn import caffe_env

    caffe = caffe_env.import_caffe()
    net_file = tmp_path / "net.prototxt"
    net_file.write_text(layers)
    net = caffe.Net(str(net_file), caffe.TEST)
    net.forward()
    assert net.blobs["data"].data.shape == net.blobs["label"].data.shape == (n, 1, P, P)
    return net.blobs["data"].data.copy(), net.blobs["label"].data.copy()


def test_caffe_reads_hdf5(folder_dataset, tmp_path, monkeypatch):
    _, _, out = folder_dataset
    monkeypatch.chdir(out)  # list files name their .h5 relative to the dataset folder, Caffe's working folder
    layers = '''layer { name: "d" type: "HDF5Data" top: "data" top: "label"
      hdf5_data_param { source: "train.txt" batch_size: 48 } }'''
    data, label = caffe_forward(tmp_path, layers, 48)
    with h5py.File(out / "train.h5") as f:
        np.testing.assert_array_equal(data, f["data"][:])
        np.testing.assert_array_equal(label, f["label"][:])


def test_caffe_reads_lmdb_pair(folder_dataset, tmp_path):
    _, _, out = folder_dataset
    layers = "".join(f'''layer {{ name: "{top}" type: "Data" top: "{top}"
      data_param {{ source: "{out / f'train_{top}_lmdb'}" batch_size: 48 backend: LMDB }} }}
    ''' for top in ("data", "label"))
    data, label = caffe_forward(tmp_path, layers, 48)
    with h5py.File(out / "train.h5") as f:  # the same patches, in the same order, as the HDF5 file
        np.testing.assert_array_equal(data, f["data"][:])
        np.testing.assert_array_equal(label, f["label"][:])


# ---------------------------------------------------------------------------------------------- determinism

def test_same_seed_same_bytes_other_seed_differs(folder_dataset, tmp_path, capsys):
    images, masks, out = folder_dataset
    again, other = tmp_path / "again", tmp_path / "other"
    assert run(folder_args(images, masks, again, "--format", "both"), capsys)[0] == 0
    assert run(folder_args(images, masks, other, "--format", "both", "--seed", 1), capsys)[0] == 0
    first, second, third = data_hashes(out), data_hashes(again), data_hashes(other)
    assert first == second
    assert {"train.h5", "train_data_lmdb/data.mdb", "train_label_lmdb/data.mdb"} <= set(first)
    assert first["train.h5"] != third["train.h5"]
    assert first["train_data_lmdb/data.mdb"] != third["train_data_lmdb/data.mdb"]


def test_unchanged_dataset_is_skipped_and_a_change_rebuilds(folder_dataset, tmp_path, capsys):
    images, masks, _ = folder_dataset
    out = tmp_path / "skip"
    assert run(folder_args(images, masks, out, "--format", "hdf5"), capsys)[0] == 0
    stamp = (out / "train.h5").stat().st_mtime_ns
    status, lines = run(folder_args(images, masks, out, "--format", "hdf5"), capsys)
    assert status == 0 and any("up to date" in line for line in lines)
    assert (out / "train.h5").stat().st_mtime_ns == stamp
    status, lines = run(folder_args(images, masks, out, "--format", "hdf5", "--n-train", 5), capsys)
    assert status == 0 and json.loads((out / "manifest.json").read_text())["splits"]["train"]["n"] == 40
    assert not list(tmp_path.glob(".skip*"))  # no temporary folder left behind


def test_failed_write_keeps_the_old_dataset_and_leaves_no_temporary_folder(folder_dataset, tmp_path, capsys,
                                                                            monkeypatch):
    images, masks, _ = folder_dataset
    out = tmp_path / "kept"
    assert run(folder_args(images, masks, out, "--format", "lmdb", "--preview", tmp_path / "p.png"), capsys)[0] == 0
    assert Image.open(tmp_path / "p.png").size == (2 * (6 * (P + 4) - 4), 2 * (4 * (P + 4) - 4))  # 24 from LMDB
    before = data_hashes(out)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("data_prep.writers.write_lmdb", disk_full)
    status, lines = run(folder_args(images, masks, out, "--format", "lmdb", "--seed", 3), capsys)
    assert status == 1 and lines == [f"error: cannot write {out}: No space left on device; the previous version "
                                     "(if any) is unchanged"]
    assert data_hashes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept", "p.png"]


def test_synthetic_dataset(tmp_path, capsys):
    args = ["synthetic", "--image-size", 96, "--n-images", 4, "--n-cells", "6:9", "--n-train", 6, "--n-test", 3,
            "--patch-size", P, "--test-fraction", 0.5, "--format", "both"]
    assert run(args + ["--out", tmp_path / "a", "--preview", tmp_path / "p.png"], capsys)[0] == 0
    assert run(args + ["--out", tmp_path / "b"], capsys)[0] == 0
    assert run(args + ["--out", tmp_path / "c", "--seed", 5], capsys)[0] == 0
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["kind"] == "synthetic" and manifest["splits"]["train"]["n"] == 6
    assert [img["simplex_background"] for img in manifest["sources"]["images"]] == [True, False, True, False]
    with h5py.File(tmp_path / "a" / "train.h5") as train, h5py.File(tmp_path / "a" / "test.h5") as test:
        assert train["data"].shape == (6, 1, P, P) and test["data"].shape == (3, 1, P, P)
        # the test patches come from images never used for training
        assert not set(train["source_index"][:]) & set(test["source_index"][:])
    assert data_hashes(tmp_path / "a") == data_hashes(tmp_path / "b")
    assert data_hashes(tmp_path / "a")["train.h5"] != data_hashes(tmp_path / "c")["train.h5"]
    assert Image.open(tmp_path / "p.png").size[0] > 0


# ---------------------------------------------------------------------------------------------- bad input

def corrupt(kind, images, masks):
    """Break a copy of the folder dataset in one way."""
    if kind == "unmatched":
        (masks / "img0.png").unlink()
    elif kind == "size":
        Image.fromarray(np.zeros((90, 130), dtype=np.uint8)).save(masks / "img0.png")
    elif kind == "empty":
        for path in images.iterdir():
            path.unlink()
    elif kind == "truncated":
        data = (images / "img1.tif").read_bytes()
        (images / "img1.tif").write_bytes(data[:len(data) // 3])
    elif kind == "truncated_png":
        data = (masks / "img0.png").read_bytes()
        (masks / "img0.png").write_bytes(data[:len(data) // 2])
    elif kind == "not_an_image":
        (images / "img2.tif").write_text("hello")
    elif kind == "empty_masks":
        for path in masks.iterdir():
            shape = np.asarray(Image.open(path) if path.suffix == ".png" else tifffile.imread(path)).shape[:2]
            Image.fromarray(np.zeros(shape, dtype=np.uint8)).save(path.with_suffix(".png"))
            if path.suffix != ".png":
                path.unlink()
    elif kind == "nan":
        (images / "img1.tif").unlink()
        bad = np.ones((100, 130), dtype=np.float32)
        bad[5, 5] = np.nan
        tifffile.imwrite(images / "img1.tif", bad)
    elif kind == "constant":
        tifffile.imwrite(images / "img2.tif", np.full((100, 130), 7, dtype=np.uint16))


@pytest.mark.parametrize("kind, message", [
    ("unmatched", "unmatched"), ("size", "mask is"), ("empty", "no image files"),
    ("truncated", "cannot read"), ("truncated_png", "cannot read"), ("not_an_image", "cannot read"),
    ("empty_masks", "every mask is empty"), ("nan", "NaN"), ("constant", "constant image")])
def test_bad_input_one_line_error_and_no_output(tmp_path, capsys, kind, message):
    images, masks = make_folder(tmp_path, n=5)
    corrupt(kind, images, masks)
    out = tmp_path / "new" / "out"
    status, lines = run(folder_args(images, masks, out), capsys)
    assert status == 1
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "new").exists()


def test_bad_paths(tmp_path, capsys):
    images, masks = make_folder(tmp_path, n=3)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cases = [(folder_args(images, masks, blocker / "out"), f"{blocker} is a file"),
             (folder_args(images, masks, blocker), "is a file"),
             (folder_args(images, tmp_path / "missing", tmp_path / "o"), "mask folder not found")]
    (tmp_path / "someone_elses").mkdir()
    (tmp_path / "someone_elses" / "notes.txt").write_text("keep me")
    cases.append((folder_args(images, masks, tmp_path / "someone_elses"), "not a data_prep dataset"))
    for argv, message in cases:
        status, lines = run(argv, capsys)
        assert status == 1 and len(lines) == 1 and message in lines[0], lines
    assert (tmp_path / "someone_elses" / "notes.txt").read_text() == "keep me"
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------- mnfinder

def test_mnfinder_subset(tmp_path, capsys):
    """The real built-in dataset on a subset (downloads the pinned wheel into runs/cache once)."""
    out = tmp_path / "real"
    status, lines = run(["mnfinder", "--out", out, "--n-train", 4, "--max-test-images", 1, "--format", "hdf5",
                         "--cache", REPO / "runs" / "cache"], capsys)
    assert status == 0, lines
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sources"]["wheel"]["sha256"] == "11b1f6aea9f40b4dd3cf6c3de30ef8d517a4833907b88b86ce2b7ab1f9dbce4a"
    splits = manifest["splits"]
    assert splits["train"]["n"] == 32 and splits["val"]["n_images"] == 3 and splits["test"]["n_images"] == 1
    assert "test-data/2023-05-31_misc/images/1.tif" not in splits["test"]["images"]
    # one val image per cell group, none of them used for training
    assert sorted(name.split("/")[1].split("_", 1)[1] for name in splits["val"]["images"]) == ["RPE1", "U2OS",
                                                                                            "misc"]
    assert not set(splits["val"]["images"]) & set(splits["train"]["images"])
    with h5py.File(out / "test_full.h5") as full, h5py.File(out / "test.h5") as test:
        assert full["images/0"].attrs["name"] == "test-data/2022-10-14_U2OS/images/4.tif"
        assert full["images/0"].shape == (576, 652)  # 768 x 869 at the default scale 0.75
        assert test["data"].shape == (4 * 5, 1, 128, 128)
        assert 0.05 < full["masks/0"][:].mean() < 0.4
        # the colours of the wheel's mask as instance labels, resized with the image, covering the mask
        labels = full["labels/0"][()]
        np.testing.assert_array_equal(labels > 0, full["masks/0"][()] != 0)
        assert 20 < labels.max() == len(np.unique(labels)) - 1


def test_simcep_cli_draws_the_images_of_make_data(tmp_path):
    # One seeding scheme: `python -m simcep_py --seed S` plans exactly the source images `make data SEED=S` uses.
    common = ["--seed", "3", "--n-images", "4", "--n-cells", "5:8"]
    done = subprocess.run([sys.executable, "-m", "data_prep", "synthetic", *common, "--image-size", "128",
                           "--n-train", "8", "--n-test", "4", "--format", "hdf5", "--out", str(tmp_path / "data")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    done = subprocess.run([sys.executable, "-m", "simcep_py", *common, "--size", "128", "--quiet",
                           "--out", str(tmp_path / "simcep")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    planned = json.loads((tmp_path / "data" / "manifest.json").read_text())["sources"]["images"]
    written = json.loads((tmp_path / "simcep" / "simcep.json").read_text())["images"]
    keys = ("seed", "n_cells", "split", "simplex_background")
    assert [{k: r[k] for k in keys} for r in written] == [{k: p[k] for k in keys} for p in planned]
    assert len({p["seed"] for p in planned}) == 4 and {p["split"] for p in planned} == {"train", "test"}
