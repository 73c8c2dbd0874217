"""The instance-aware 3-class net: its targets, their augmentation, the Caffe loss wiring, the contour
watershed and the parameters kept beside a model."""
import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
from skimage.draw import disk as draw_disk

from cellfcn import objects as O
from cellfcn.errors import InputError
from cellfcn.scale import nucleus_diameters
from cellfcn.scale import pooled_median_diameter as median_diameter
from data_prep import real
from data_prep.augment import dihedral
from data_prep.targets import CONTOUR, INTERIOR, MICRONUCLEUS, contour_targets, micronucleus_targets
from prototxt import net
from tools import infer, model_params

from conftest import REPO, dataset_manifest


def _discs(shape, *discs):
    """Instance labels 1..n of discs (y, x, r); later discs win overlapped pixels."""
    labels = np.zeros(shape, np.int32)
    for i, (y, x, r) in enumerate(discs, start=1):
        labels[draw_disk((y, x), r, shape=shape)] = i
    return labels


# ------------------------------------------------------------------------------------------------- targets
def test_touching_nuclei_get_contour_between_them():
    labels = _discs((40, 60), (20, 20, 9), (20, 37, 9))  # overlapping discs: one blob in the binary mask
    target = contour_targets(labels, width=2)
    np.testing.assert_array_equal(target > 0, labels > 0)
    assert target.dtype == np.uint8 and set(np.unique(target)) == {0, INTERIOR, CONTOUR}
    # The binary mask is one component; the interiors are two, kept >= 4 px apart by two contour bands.
    from scipy import ndimage as ndi

    assert ndi.label(labels > 0)[1] == 1
    interiors, n = ndi.label(target == INTERIOR)
    assert n == 2
    a, b = (np.argwhere(interiors == k) for k in (1, 2))
    gap = min(np.abs(p[:, None] - q[None]).max(-1).min() for p, q in ((a, b),))
    assert gap >= 4
    # Where the two nuclei meet, the pixels on both sides are contour.
    meet = (labels[:, :-1] != labels[:, 1:]) & (labels[:, :-1] > 0) & (labels[:, 1:] > 0)
    ys, xs = np.nonzero(meet)
    assert np.all(target[ys, xs] == CONTOUR) and np.all(target[ys, xs + 1] == CONTOUR)


def test_image_edge_is_not_a_contour_and_bad_input_is_refused():
    labels = np.zeros((20, 20), np.int32)
    labels[:, :8] = 1  # a nucleus cut by the left edge
    target = contour_targets(labels, width=1)
    assert np.all(target[5:15, 0] == INTERIOR) and np.all(target[:, 7] == CONTOUR)
    assert np.all(target[0, :7] == INTERIOR)  # top and bottom edges too
    for bad in (np.zeros((4, 4)), np.zeros((2, 4, 4), np.int32), -np.ones((4, 4), np.int32)):
        with pytest.raises(ValueError):
            contour_targets(bad)
    with pytest.raises(ValueError, match="width"):
        contour_targets(labels, width=0)


def test_diameters_leave_out_edge_nuclei():
    labels = _discs((64, 64), (30, 30, 10), (2, 2, 5))  # the second is cut by the edge
    d = nucleus_diameters(labels)
    assert d.shape == (1,) and d[0] == pytest.approx(2 * np.sqrt((labels == 1).sum() / np.pi))
    assert d[0] == pytest.approx(20, abs=0.5)
    assert median_diameter([labels, _discs((64, 64), (30, 30, 6))]) == pytest.approx(np.median(
        [d[0], nucleus_diameters(_discs((64, 64), (30, 30, 6)))[0]]), abs=1e-3)
    assert median_diameter([np.zeros((8, 8), np.int32)]) is None


def test_micronuclei_get_their_own_class_on_background_only():
    labels = _discs((40, 40), (20, 20, 9))
    micronuclei = _discs((40, 40), (20, 31, 3), (5, 5, 2)) > 0  # one overlaps the nucleus's edge
    three = contour_targets(labels)
    four = micronucleus_targets(three, micronuclei)
    assert four.dtype == np.uint8 and set(np.unique(four)) == {0, INTERIOR, CONTOUR, MICRONUCLEUS}
    np.testing.assert_array_equal(four == MICRONUCLEUS, micronuclei & (labels == 0))
    np.testing.assert_array_equal(np.where(four == MICRONUCLEUS, 0, four), three)  # nuclei keep their classes
    np.testing.assert_array_equal(micronucleus_targets(three, None), three)  # no annotation: 3 classes
    with pytest.raises(ValueError, match="shape"):
        micronucleus_targets(three, micronuclei[:-1])


def test_augmented_patches_carry_their_images_targets():
    """Every training patch's 3- and 4-class targets are its image's, cut and transformed like the image."""
    rng = np.random.default_rng(0)
    labels = _discs((160, 160), (30, 30, 10), (30, 48, 10), (70, 60, 12), (65, 20, 8), (120, 120, 12),
                    (130, 40, 9), (40, 120, 10))
    micronuclei = _discs((160, 160), *((y, x, 2) for y in range(6, 160, 16) for x in range(6, 160, 16))) > 0
    image = np.where(labels > 0, 0.8, np.where(micronuclei, 0.6, 0.1)).astype(np.float32)
    targets = {"label3": contour_targets(labels)}
    targets["label4"] = micronucleus_targets(targets["label3"], micronuclei)
    split = real.train_split([image], [labels > 0], {k: [v] for k, v in targets.items()}, 3, 48, rng, 0.02)
    assert split["label3"].shape == split["label4"].shape == split["label"].shape == (24, 48, 48)
    assert (split["label4"] == MICRONUCLEUS).any()
    for k in range(24):
        y, x = split["origin"][k]
        for key, whole in targets.items():
            crop = whole[y:y + 48, x:x + 48]
            np.testing.assert_array_equal(split[key][k], dihedral(crop, int(split["transform"][k])))
        np.testing.assert_array_equal(split["label3"][k] > 0, split["label"][k])
        np.testing.assert_array_equal(split["data"][k], dihedral(image[y:y + 48, x:x + 48],
                                                                 int(split["transform"][k])))
    # Tiles (val/test) carry them untransformed.
    tiles = real.tile_split([image], [labels > 0], {k: [v] for k, v in targets.items()}, 48)
    np.testing.assert_array_equal(tiles["label4"][1], targets["label4"][:48, 48:96])
    np.testing.assert_array_equal(tiles["data"][1], image[:48, 48:96])


def test_real_splits_mark_micronuclei_only_where_annotated():
    rng = np.random.default_rng(1)
    labels = _discs((96, 96), (30, 30, 10), (60, 60, 12), (70, 20, 9))
    micronuclei = _discs((96, 96), (30, 48, 3), (80, 80, 3)) > 0
    image = np.where(labels > 0, 0.8, 0.1).astype(np.float32)
    item = ("a", image, labels > 0, labels)
    splits = real.build_real_splits([item + (micronuclei,)], [item], [item + (micronuclei,)], 1, 48, rng, 0.02)[0]
    assert (splits["train"]["label4"] == MICRONUCLEUS).any() and (splits["test"]["label4"] == MICRONUCLEUS).any()
    np.testing.assert_array_equal(splits["val"]["label4"], splits["val"]["label3"])  # no mask given
    raw = np.zeros((192, 192), np.int32)
    raw[100:106, 100:106] = 7
    prepared = real.prepare_micronuclei(raw, (192, 192), (96, 96), "a", scale=0.5)
    assert prepared.dtype == bool and prepared.shape == (96, 96) and prepared[50:53, 50:53].all()
    with pytest.raises(InputError, match="micronucleus mask"):
        real.prepare_micronuclei(raw, (190, 192), (95, 96), "a", scale=0.5)


# ------------------------------------------------------------------------------------------------- the net
def test_contour_variant_is_fcrn_a_with_three_classes():
    assert net.learnable_parameters("contour") == net.learnable_parameters("fcrn_a") + 33  # 32 + 1 more scores
    train = net.train_net("d/train_3class.txt", 4, "hdf5", "train", "contour")
    layers = {layer.name: layer for layer in train.layer}
    assert layers["score"].convolution_param.num_output == 3
    assert layers["loss"].type == "SoftmaxWithLoss"
    assert train.layer[0].hdf5_data_param.source == "d/train_3class.txt"
    lmdb = net.train_net("d/train", 4, "lmdb", "train", "contour")
    assert [layer.data_param.source for layer in lmdb.layer[:2]] == ["d/train_data_lmdb", "d/train_3class_label_lmdb"]
    assert net.dataset_source("d", "val", "hdf5", "contour").endswith("val_3class.txt")
    assert net.dataset_source("d", "val", "hdf5").endswith("val.txt")


def test_contour_skip_variant_joins_the_encoder_features():
    # U-Net's skips: each upsampled blob is concatenated with the encoder's ReLU output of its resolution.
    train = net.train_net("d/train_3class.txt", 4, "hdf5", "train", "contour_skip")
    layers = {layer.name: layer for layer in train.layer}
    joins = {name: list(layer.bottom) for name, layer in layers.items() if layer.type == "Concat"}
    assert joins == {"skip5": ["up5", "conv3"], "skip6": ["up6", "conv2"], "skip7": ["up7", "conv1"]}
    assert [list(layers[f"conv{i}"].bottom) for i in (5, 6, 7)] == [["skip5"], ["skip6"], ["skip7"]]
    assert layers["score"].convolution_param.num_output == 3 and layers["loss"].type == "SoftmaxWithLoss"
    assert train.layer[0].hdf5_data_param.source == "d/train_3class.txt"
    assert net.dataset_files("val", "hdf5", "contour_skip") == net.dataset_files("val", "hdf5", "contour")
    # The joins widen conv5..conv7's inputs: more multiply-adds than the net without them, same receptive field.
    assert net.multiply_adds("contour_skip") - net.multiply_adds("contour") == 9 * (
        32 * 32 * 128 * 128 + 64 * 64 * 64 * 64 + 128 * 128 * 32 * 32)
    assert net.receptive_field("contour_skip") == net.receptive_field("contour")


def test_micronucleus_variant_reads_the_four_class_files():
    assert net.learnable_parameters("contour_skip_mn") == net.learnable_parameters("contour_skip") + 33
    train = net.train_net(net.dataset_source("d", "train", "hdf5", "contour_skip_mn"), 4, "hdf5", "train",
                          "contour_skip_mn")
    layers = {layer.name: layer for layer in train.layer}
    assert layers["score"].convolution_param.num_output == 4 and layers["loss"].type == "SoftmaxWithLoss"
    assert train.layer[0].hdf5_data_param.source == "d/train_4class.txt"
    assert net.dataset_files("val", "lmdb", "contour_skip_mn") == ["val_data_lmdb/data.mdb",
                                                                  "val_4class_label_lmdb/data.mdb"]


def test_weighted_variant_takes_its_loss_from_an_infogain_file():
    assert net.learnable_parameters("contour_skip_mnw") == net.learnable_parameters("contour_skip_mn")
    assert net.class_weights("contour_skip_mn") is None and net.class_weights("contour_skip_mnw")[:3] == (1, 1, 1)
    source = net.dataset_source("d", "train", "hdf5", "contour_skip_mnw")
    train = net.train_net(source, 4, "hdf5", "train", "contour_skip_mnw", infogain="/r/infogain.binaryproto")
    loss = {layer.name: layer for layer in train.layer}["loss"]
    assert loss.type == "InfogainLoss" and loss.infogain_loss_param.source == "/r/infogain.binaryproto"
    assert train.layer[0].hdf5_data_param.source == "d/train_4class.txt"
    with pytest.raises(ValueError, match="infogain file goes with class weights"):
        net.train_net(source, 4, "hdf5", "train", "contour_skip_mnw")  # the weights would be lost
    with pytest.raises(ValueError, match="infogain file goes with class weights"):
        net.train_net(source, 4, "hdf5", "train", "contour_skip_mn", infogain="/r/h")
    with pytest.raises(ValueError, match="no class weights"):
        net.write_infogain("/tmp/never", "contour_skip")


def test_caffe_weighs_each_pixel_by_its_class(caffe, tmp_path):
    """Caffe's InfogainLoss over our H is the class-weighted cross-entropy per pixel, normalised by the pixel
    count; where no pixel has a weighted class it equals SoftmaxWithLoss."""
    weights = np.array(net.class_weights("contour_skip_mnw"))
    h = net.write_infogain(tmp_path / "h.binaryproto", "contour_skip_mnw")
    L = caffe.layers
    n = caffe.NetSpec()
    n.score, n.label = L.Input(ntop=2, shape=[dict(dim=[2, 4, 5, 6]), dict(dim=[2, 1, 5, 6])])
    n.weighted = L.InfogainLoss(n.score, n.label, infogain_loss_param=dict(source=str(h)))
    n.plain = L.SoftmaxWithLoss(n.score, n.label)
    (tmp_path / "loss.prototxt").write_text(str(n.to_proto()))
    model = caffe.Net(str(tmp_path / "loss.prototxt"), caffe.TEST)
    rng = np.random.default_rng(0)
    score = rng.normal(0, 2, (2, 4, 5, 6)).astype(np.float32)
    p = np.exp(score) / np.exp(score).sum(1, keepdims=True)
    for label in (rng.integers(0, 4, (2, 1, 5, 6)), rng.integers(0, 3, (2, 1, 5, 6))):
        model.blobs["score"].data[...], model.blobs["label"].data[...] = score, label
        out = model.forward()
        ce = -np.log(np.take_along_axis(p, label, axis=1))
        np.testing.assert_allclose(out["weighted"], (weights[label] * ce).mean(), rtol=1e-5)
        np.testing.assert_allclose(out["plain"], ce.mean(), rtol=1e-5)
    assert out["weighted"] == pytest.approx(out["plain"], rel=1e-5)  # the last labels: no micronucleus


def test_four_class_maps_leave_the_micronuclei_out_of_the_nucleus():
    prob = np.array([0.1, 0.5, 0.1, 0.3], np.float32)[:, None, None] * np.ones((4, 2, 3), np.float32)
    maps = infer.class_maps(prob)
    assert maps.shape == (2, 2, 3)
    np.testing.assert_allclose(maps[0], 0.6, atol=1e-6)  # interior + contour, not 1 - background
    np.testing.assert_allclose(maps[1], 0.5)
    three = prob[:3] / prob[:3].sum(0)
    np.testing.assert_array_equal(infer.class_maps(three)[0], 1 - three[0])
    with pytest.raises(ValueError, match="2, 3 or 4 classes"):
        infer.class_maps(np.ones((5, 2, 2), np.float32) / 5)


@pytest.fixture(scope="module")
def contour_run(tmp_path_factory):
    """A tiny synthetic dataset from data_prep and two iterations of `tools.train --net contour` on it."""
    tmp = tmp_path_factory.mktemp("contour")
    py = sys.executable
    subprocess.run([py, "-m", "data_prep", "synthetic", "--out", tmp / "data", "--n-images", "3", "--image-size",
                    "128", "--n-train", "8", "--n-test", "4", "--patch-size", "64", "--format", "both"],
                   check=True, cwd=REPO, capture_output=True)
    proc = subprocess.run([py, "-m", "tools.train", "--stage", "pretrain", "--data", tmp / "data", "--out",
                           tmp / "run", "--net", "contour", "--iterations", "2", "--batch", "4"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return tmp


def test_caffe_trains_the_three_classes(contour_run):
    manifest = json.loads((contour_run / "data" / "manifest.json").read_text())
    assert manifest["nucleus_diameter_px"] > 0 and manifest["schema_version"] == 1
    for name in ("train_3class.h5", "train_3class_label_lmdb/data.mdb", "test_3class.h5"):
        assert name in manifest["files"]
    log = (contour_run / "run" / "train.log").read_text()
    # SoftmaxWithLoss over 3 classes: a loss finite and above zero on the first iteration.
    loss = [float(line.rsplit("loss = ", 1)[1].split()[0]) for line in log.splitlines() if "Iteration 0" in line
            and "loss = " in line]
    assert loss and 0 < loss[0] < 10
    model = contour_run / "run" / "final.caffemodel"
    network = infer.load_model(model)
    assert network.blobs["prob"].data.shape[1] == 3
    maps = infer.segment_image(network, np.random.default_rng(0).random((72, 90)).astype(np.float32))
    assert maps.shape == (2, 72, 90) and maps.dtype == np.float32
    assert np.all(maps[1] <= maps[0] + 1e-6)  # interior is part of the nucleus probability


def test_weighted_variant_trains_with_its_h_in_the_run_folder(contour_run, tmp_path, monkeypatch):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "tools.train", "--stage", "pretrain", "--data",
                           contour_run / "data", "--out", out, "--net", "contour_skip_mnw", "--iterations", "1",
                           "--batch", "4"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f'source: "{(out / net.INFOGAIN).resolve()}"' in (out / "train.prototxt").read_text()
    assert 'type: "InfogainLoss"' in (out / "train.log").read_text() and (out / "final.caffemodel").is_file()
    # The weights are part of the run's identity: other weights, another run (its snapshots are not resumed).
    from tools import train

    args = argparse.Namespace(out=tmp_path / "key", stage="pretrain", data=contour_run / "data", format="hdf5",
                              batch=4, config="default", epochs=None, iterations=1, seed=0, net="contour_skip_mnw",
                              weights=None, gpu=None)
    key = train.prepare(args)[1]["inputs_sha256"]
    assert key == json.loads((out / "run.json").read_text())["inputs_sha256"]
    monkeypatch.setitem(net.VARIANTS, "contour_skip_mnw", dict(net.VARIANTS["contour_skip_mnw"],
                                                               class_weights=(1, 1, 1, 5)))
    assert train.prepare(args)[1]["inputs_sha256"] != key


def test_contour_model_trains_from_lmdb_too(contour_run, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tools.train", "--stage", "pretrain", "--data",
                           contour_run / "data", "--out", tmp_path / "run", "--net", "contour", "--iterations", "1",
                           "--batch", "4", "--format", "lmdb"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------------- instances
def test_contour_watershed_splits_what_the_distance_transform_cannot():
    # Two nuclei whose union is a convex-ish blob: no distance-transform dome between them.
    labels = _discs((50, 70), (25, 28, 12), (25, 42, 12))
    target = contour_targets(labels, width=2)
    probs = np.where(labels > 0, 0.95, 0.02).astype(np.float32)
    interior = np.where(target == INTERIOR, 0.9, 0.05).astype(np.float32)
    assert O.instances_from_probs(probs, 0.5, opening_radius=0, min_area=0).max() == 1  # merged
    split = O.instances_from_contour(probs, interior, 0.5, marker_threshold=0.5, opening_radius=0, min_area=0)
    assert split.max() == 2
    np.testing.assert_array_equal(split > 0, labels > 0)  # the whole mask is shared out
    assert O.object_scores(labels, split)["f1"] == 1.0
    # A component without a seed is a nucleus of its own; dispatch by the maps' shape.
    probs[5:9, 60:64] = 0.9
    found = O.instances_from_maps(np.stack([probs, interior]), threshold=0.5, marker_threshold=0.5,
                                  opening_radius=0, min_area=0)
    assert found.max() == 3
    with pytest.raises(ValueError, match="instances_from_contour"):
        O.instances_from_maps(np.stack([probs, interior]), threshold=0.5, min_dynamic=2)
    with pytest.raises(ValueError, match="maps must be"):
        O.instances_from_maps(np.zeros((3, 4, 4), np.float32), threshold=0.5)
    with pytest.raises(ValueError, match="marker_threshold"):
        O.instances_from_contour(probs, interior, 0.5, marker_threshold=1.5)


def test_grid_search_chooses_the_marker_threshold():
    labels = _discs((50, 70), (25, 28, 12), (25, 42, 12))
    target = contour_targets(labels, width=2)
    probs = np.where(labels > 0, 0.95, 0.02).astype(np.float32)
    # Interior certainty 0.6: markers at 0.7 find nothing (one unseeded blob), at 0.5 both nuclei.
    interior = np.where(target == INTERIOR, 0.6, 0.05).astype(np.float32)
    result = O.choose_instance_params([np.stack([probs, interior])], [labels], thresholds=(0.5,),
                                      opening_radii=(0,), min_areas=(0,), marker_thresholds=(0.7, 0.5))
    assert result["params"]["marker_threshold"] == 0.5 and result["scores"]["f1"] == 1.0
    assert [row["marker_threshold"] for row in result["grid"]] == [0.7, 0.5]
    assert result["grid"][0]["f1"] < 1  # one blob for two nuclei
    assert set(result["params"]) == {"threshold", "marker_threshold", "opening_radius", "min_area",
                                     "min_marker_area"}
    with pytest.raises(ValueError, match="do not go with"):
        O.choose_instance_params([np.stack([probs, interior]), probs], [labels, labels])


# ------------------------------------------------------------------------------------------ model parameters
def test_parameters_belong_to_their_model(tmp_path):
    model, other = tmp_path / "a.caffemodel", tmp_path / "b.caffemodel"
    model.write_bytes(b"model a")
    other.write_bytes(b"model b")
    dataset = {"scale": 0.75, "percentiles": [1.0, 99.8], "nucleus_diameter_px": 20.3}
    with pytest.raises(InputError, match="no instance parameters chosen for"):
        model_params.read_model_params(model)
    model_params.write_model_params(model, {"threshold": 0.5}, val={"f1": 0.9}, dataset=dataset, chosen_on="v")
    record = model_params.read_model_params(model)
    assert record["params"] == {"threshold": 0.5} and record["dataset"] == dataset
    # Another model with this model's file: refused.
    model_params.params_path(model).rename(model_params.params_path(other))
    with pytest.raises(InputError, match="chosen for another model"):
        model_params.read_model_params(other)
    with pytest.raises(InputError, match="scale"):
        model_params.write_model_params(model, {}, val={}, dataset={**dataset, "scale": -1}, chosen_on="v")
    assert not model_params.params_path(model).exists()
    with pytest.raises(InputError, match="nucleus_diameter_px must be a positive number, not None"):
        model_params.dataset_preprocessing(dataset_manifest("real", nucleus_diameter_px=None))
    # A real dataset's manifest without its scale is refused, not read as 1 (a synthetic one is made at 1).
    with pytest.raises(InputError, match="parameters.scale is missing"):
        model_params.dataset_preprocessing(dataset_manifest("real", parameters={"percentiles": [1, 99]}))
    assert model_params.dataset_preprocessing(dataset_manifest("synthetic"))["scale"] == 1.0
    # Older or foreign manifests: one line naming `make data`.
    for bad in (dataset_manifest("real", schema_version=None), dataset_manifest("real", parameters={"scale": 1}),
                dataset_manifest("real", parameters={"scale": 1, "percentiles": [99, 1]})):
        with pytest.raises(InputError, match="make data"):
            model_params.dataset_preprocessing(bad)
