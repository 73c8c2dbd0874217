"""The ONNX export (tools.export, tools.onnx_engine) against real Caffe, and the two-way weight check.

Models are real caffemodels of every net variant with seeded random weights (named ``<variant>_finetune_train``
as ``caffe train`` names them), so no training is needed; the real image is an mnfinder test image (the pinned
wheel ``make data`` uses, downloaded into runs/cache once).
"""
import json
import socket
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import tifffile
from conftest import REPO, dataset_manifest
from test_faults import assert_one_line_error

from cellfcn import caffe_env
from cellfcn import objects
from cellfcn.errors import InputError
from prototxt import net as netspec
from tools import export, infer, model_params, onnx_engine, segment

REAL_IMAGE = "test-data/2023-05-31_misc/images/HFF-revt-01_s17.tif"  # 512 x 512, 384 x 384 at the net's scale
SCALE, PERCENTILES = 0.75, [1.0, 99.8]


def _run(module, *args):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, cwd=REPO)


def _random_model(caffe, variant, path, name=None):
    """A deploy net of ``variant`` with seeded weights and random biases, saved under the train net's name."""
    param = netspec.deploy_net(variant=variant)
    param.name = name if name is not None else f"{variant}_finetune_train"
    caffe.set_random_seed(0)
    net = caffe_env.net_from_param(param)
    rng = np.random.default_rng(0)
    for blobs in net.params.values():
        if len(blobs) > 1:
            blobs[1].data[...] = rng.normal(0, 0.1, blobs[1].data.shape)
    net.save(str(path))
    return path


@pytest.fixture(scope="module")
def models(caffe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return {v: _random_model(caffe, v, folder / f"{v}.caffemodel") for v in netspec.VARIANTS}


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """A raw mnfinder test image (file) and what the net sees of it (normalised, resized by 0.75)."""
    from data_prep import mnfinder

    with zipfile.ZipFile(mnfinder.fetch_wheel(REPO / "runs" / "cache")) as archive:
        data = archive.read(f"mnfinder/{REAL_IMAGE}")
    path = tmp_path_factory.mktemp("real") / "nuclei.tif"
    path.write_bytes(data)
    from cellfcn.images import read_array

    return path, segment.prepare(read_array(path), scale=SCALE, percentiles=PERCENTILES)[1]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "manifest.json"
    path.write_text(json.dumps(dataset_manifest("real", parameters={"scale": SCALE, "percentiles": PERCENTILES})))
    return path


def _session(caffe, variant, model):
    net = caffe_env.load_net(netspec.deploy_path(variant), model)
    param = netspec.deploy_net(variant=variant)
    return net, onnx_engine.load_session(export.onnx_model(param, net).SerializeToString())


# ------------------------------------------------------------------------------------- ONNX == Caffe
@pytest.mark.parametrize("variant", list(netspec.VARIANTS))
def test_onnx_equals_caffe_on_random_input_and_a_whole_real_image(caffe, models, real, variant):
    net, session = _session(caffe, variant, models[variant])
    batch = np.random.default_rng(1).random((2, 1, 64, 104), dtype=np.float32)
    want = export.caffe_forward(net, batch)
    got = onnx_engine.run(session, batch)
    assert got.shape == want.shape == (2, netspec.VARIANTS[variant]["classes"], 64, 104)
    assert np.abs(got - want).max() <= 1e-4 and want.std() > 1e-3  # outputs that vary, and agree
    image = real[1]
    want = infer.segment_image(net, image)
    got = infer.segment_image(session, image, forward=onnx_engine.forward)
    assert got.shape == want.shape and want.shape[-2:] == image.shape
    assert np.abs(got - want).max() <= 1e-4


def _tiny_net(caffe, round_mode):
    """Conv, padded max pooling, a Deconvolution, Crop to the input's size, leaky ReLU, Softmax."""
    L, P = caffe.layers, caffe.params
    fill = dict(type="gaussian", std=0.5)
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 2, 16, 16]))
    n.conv = L.Convolution(n.data, num_output=4, kernel_size=3, pad=1, weight_filler=fill, bias_filler=fill)
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=3, stride=2, pad=1, round_mode=round_mode)
    n.up = L.Deconvolution(n.pool, convolution_param=dict(num_output=3, kernel_size=4, stride=2, pad=1,
                                                          weight_filler=fill, bias_filler=fill))
    n.crop = L.Crop(n.up, n.data, axis=2, offset=[1, 0] if round_mode == P.Pooling.CEIL else [0])
    n.relu = L.ReLU(n.crop, in_place=True, negative_slope=0.1)
    n.prob = L.Softmax(n.relu)
    param = n.to_proto()
    param.name = "tiny"
    return param


@pytest.mark.parametrize("round_mode", [0, 1])  # CEIL (Caffe's default), FLOOR
def test_crop_and_caffe_pooling_rounding_on_odd_sizes(caffe, round_mode):
    param = _tiny_net(caffe, round_mode)
    net = caffe_env.net_from_param(param)
    session = onnx_engine.load_session(export.onnx_model(param, net).SerializeToString())
    for shape in [(1, 2, 16, 16), (2, 2, 17, 23), (1, 2, 10, 9), (1, 2, 25, 30)]:
        batch = np.random.default_rng(shape[2]).random(shape, dtype=np.float32)
        want = export.caffe_forward(net, batch)
        assert want.shape == (shape[0], 3, *shape[2:])
        assert np.abs(onnx_engine.run(session, batch) - want).max() <= 1e-4


def test_layers_without_an_exact_onnx_counterpart_are_refused(caffe):
    L, P = caffe.layers, caffe.params
    for pool, words in [(dict(pool=P.Pooling.AVE, kernel_size=2, stride=2), "only max pooling"),
                        (dict(pool=P.Pooling.MAX, kernel_size=1, stride=2), "no exact ONNX counterpart")]:
        n = caffe.NetSpec()
        n.data = L.Input(shape=dict(dim=[1, 1, 8, 8]))
        n.pool = L.Pooling(n.data, **pool)
        with pytest.raises(InputError, match=words):
            export.onnx_model(n.to_proto(), caffe_env.net_from_param(n.to_proto()))
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 8, 8]))
    n.sig = L.Sigmoid(n.data)
    with pytest.raises(InputError, match="type Sigmoid has no ONNX export"):
        export.onnx_model(n.to_proto(), caffe_env.net_from_param(n.to_proto()))


def _nucleus_detector(caffe, path):
    """FCRN-A weights set by hand to a nucleus detector: channel 0 carries the image through every layer (the
    poolings and upsamplings blur it) and the scores are 40 (x - 0.35): probabilities near 0 or 1 except on
    the nuclei's edges, like a trained model's, so thresholds cut the same nuclei from both engines."""
    param = netspec.deploy_net()
    param.name = "fcrn_a_finetune_train"
    net = caffe_env.net_from_param(param)
    for name, blobs in net.params.items():
        if name.startswith("conv") or name == "score":
            blobs[0].data[...] = 0
            blobs[1].data[...] = 0
            centre = blobs[0].data.shape[-1] // 2
            blobs[0].data[0, 0, centre, centre] = 1
    net.params["score"][0].data[1, 0, 0, 0] = 40
    net.params["score"][1].data[1] = -40 * 0.35
    net.save(str(path))
    return path


# A process without pycaffe: importing it fails, as where Caffe is not installed.
NO_CAFFE = """
import importlib.abc, sys
class NoCaffe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "caffe":
            raise ImportError("no Caffe here")
sys.meta_path.insert(0, NoCaffe())
import numpy as np
from cellfcn import objects
from tools import infer, onnx_engine
package, image, out = sys.argv[1:]
session = onnx_engine.load_session(package, threads=1)
maps = infer.segment_image(session, np.load(image), tile=256, forward=onnx_engine.forward)
labels = objects.instances_from_maps(maps, **onnx_engine.package_config(package)["instance_parameters"])
assert "caffe" not in sys.modules
np.save(out, labels)
"""


def test_the_package_gives_caffe_labels_on_a_real_image_without_caffe(caffe, real, manifest, tmp_path):
    model = _nucleus_detector(caffe, tmp_path / "detector.caffemodel")
    chosen = {"threshold": 0.5, "opening_radius": 1, "min_area": 10}
    model_params.write_model_params(model, chosen, val={"f1": 0.5, "dsb_score": 0.3}, chosen_on="val_full.h5",
                                    dataset={"scale": SCALE, "percentiles": PERCENTILES, "nucleus_diameter_px": 20.0})
    package = export.export(model, tmp_path / "export", image=real[0], check=False)["zip"]
    np.save(tmp_path / "image.npy", real[1])
    proc = subprocess.run([sys.executable, "-c", NO_CAFFE, package, tmp_path / "image.npy", tmp_path / "onnx.npy"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    net = caffe_env.load_net(netspec.DEPLOY, model)
    want = objects.instances_from_maps(infer.segment_image(net, real[1], tile=256), **chosen)  # 4 windows
    assert want.max() >= 10  # the image's nuclei
    assert np.array_equal(np.load(tmp_path / "onnx.npy"), want)


# ------------------------------------------------------------------------------------- the package
def _no_network(monkeypatch):
    """Make every connection attempt fail and record it."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:] or args)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


@pytest.mark.parametrize("variant", ["fcrn_a", "contour"])
def test_package_validates_and_passes_the_bioimageio_test_offline(caffe, models, real, manifest, tmp_path,
                                                                  variant, monkeypatch):
    model = tmp_path / "final.caffemodel"
    if variant == "fcrn_a":  # maps that follow the image: a wrong normalisation would show
        _nucleus_detector(caffe, model)
    else:
        model.write_bytes(models[variant].read_bytes())
    chosen = {"threshold": 0.5, "opening_radius": 1, "min_area": 10}
    if variant == "fcrn_a":  # a model with the instance parameters make evaluate chose for it
        model_params.write_model_params(model, chosen, val={"f1": 0.5, "dsb_score": 0.3},
                                        dataset={"scale": SCALE, "percentiles": PERCENTILES,
                                                 "nucleus_diameter_px": 20.0}, chosen_on="val_full.h5")
    out = tmp_path / "export"
    check = [] if variant == "fcrn_a" else ["--no-check"]  # the check below runs on both
    proc = _run("tools.export", "--model", model, "--manifest", manifest, "--image", real[0], "--out", out, *check)
    assert proc.returncode == 0, proc.stderr[-3000:]
    name = f"cellfcn_{variant}_finetune"
    folder, package = out / name, out / f"{name}.bioimageio.zip"
    assert ("bioimage.io test passed" in proc.stdout) == (not check)
    assert package.is_file() and (folder / "rdf.yaml").is_file()
    assert sorted(p.name for p in out.iterdir()) == sorted([name, package.name])  # no temporaries
    with zipfile.ZipFile(package) as archive:
        assert sorted(archive.namelist()) == sorted(p.name for p in folder.iterdir())
    rdf = onnx_engine.read_rdf(package)
    classes = netspec.VARIANTS[variant]["classes"]
    assert rdf["format_version"].startswith("0.5.")
    assert rdf["inputs"][0]["preprocessing"][0] == {
        "id": "scale_range", "kwargs": {"axes": ["y", "x"], "min_percentile": 1.0, "max_percentile": 99.8}}
    assert len(rdf["outputs"][0]["axes"][1]["channel_names"]) == classes
    config = onnx_engine.package_config(package)
    assert (config["scale"], config["model"]["variant"]) == (SCALE, variant)
    assert config["instance_parameters"] == (chosen if variant == "fcrn_a" else None)
    assert any(a["source"] == "final.caffemodel.params.json" for a in rdf["attachments"]) == (variant == "fcrn_a")
    # The test output is Caffe's; the package's ONNX weights reproduce it through onnxruntime.
    test_in = np.load(folder / "test_input.npy")
    prepared = segment.prepare(test_in[0, 0], percentiles=PERCENTILES)[0]
    expected = np.load(folder / "test_output.npy")
    assert expected.shape == (1, classes, *test_in.shape[2:])
    assert np.abs(onnx_engine.run(onnx_engine.load_session(package), prepared[None, None]) - expected).max() <= 1e-4
    # bioimage.io's own validation and test, on the zip, without any network connection.
    attempts = _no_network(monkeypatch)
    summary = export.check_package(package)
    assert summary.status == "passed", export._failure(summary)
    assert any(d.name.startswith("Reproduce test outputs") and d.status == "passed" for d in summary.details)
    # bioimage.io's plain predict (what its tools call) on the raw test input gives Caffe's maps.
    from bioimageio.core import predict

    predicted = predict(model=str(package), inputs={"data": test_in}).members["prob"].data.values
    assert np.abs(predicted - expected).max() <= 1e-4
    assert attempts == []


def test_a_package_whose_weights_do_not_give_its_test_output_fails_the_bioimageio_test(models, real, manifest,
                                                                                       tmp_path):
    import yaml

    from cellfcn import files

    folder = export.export(models["fcrn_a"], tmp_path, manifest=manifest, image=real[0], check=False)["folder"]
    output = folder / "test_output.npy"
    np.save(output, np.load(output) + 2e-4)  # just over the package's tolerance, 1e-4
    rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
    rdf["outputs"][0]["test_tensor"]["sha256"] = files.sha256_file(output)
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
    summary = export.check_package(folder / "rdf.yaml")
    assert summary.status != "passed"
    assert any(d.name.startswith("Reproduce test outputs") and d.status == "failed" for d in summary.details)


# ------------------------------------------------------------------ a model its net and weights disagree on
def test_export_refuses_a_model_of_another_net_before_writing(models, real, manifest, tmp_path):
    out = tmp_path / "export"
    for model, net, words in [(models["fcrn_a"], "pool2", "layer 'up5'"),  # pool2's layers: a subset of FCRN-A's
                              (models["pool2"], "fcrn_a", "layer 'up5'"),
                              (models["fcrn_a"], "k5", "layer 'conv1' blob 0")]:
        proc = _run("tools.export", "--model", model, "--net", net, "--manifest", manifest, "--image", real[0],
                    "--out", out)
        assert_one_line_error(proc, words, "another net")
        assert not out.exists()


def test_segment_refuses_fcrn_a_weights_in_the_pool2_net(models, real, tmp_path):
    """Issue 25, case 1: pool2's learnable layers are a subset of FCRN-A's with the same shapes."""
    proc = _run("tools.segment", real[0], "--model", models["fcrn_a"], "--deploy", netspec.deploy_path("pool2"),
                "--threshold", 0.5, "--opening", 0, "--min-area", 0, "--scale", 0.75, "--workers", 0,
                "--out", tmp_path / "o")
    assert_one_line_error(proc, "layer 'up5'", "this net lacks")
    assert not (tmp_path / "o").exists()


def test_the_model_must_name_the_variant_of_its_deploy_net(caffe, tmp_path):
    deploy = netspec.deploy_path("fcrn_a")
    for name in ("pool2_finetune_train", "", "someone_elses"):  # FCRN-A's layers, another net's name
        model = _random_model(caffe, "fcrn_a", tmp_path / "m.caffemodel", name=name)
        with pytest.raises(InputError, match=f"a model of net '{name}', not of this 'fcrn_a' net"):
            caffe_env.load_net(deploy, model)
    for name in ("fcrn_a_finetune_train", "fcrn_a_pretrain_train", "fcrn_a_deploy"):
        caffe_env.load_net(deploy, _random_model(caffe, "fcrn_a", tmp_path / "m.caffemodel", name=name))


def test_every_variant_loads_only_its_own_weights(caffe, models):
    for deploy_variant in netspec.VARIANTS:
        for model_variant, model in models.items():
            if model_variant == deploy_variant:
                assert caffe_env.load_net(netspec.deploy_path(deploy_variant), model).params
            else:
                with pytest.raises(InputError, match="another net"):
                    caffe_env.load_net(netspec.deploy_path(deploy_variant), model)


# ------------------------------------------------------------------- make segment with the package (onnx)
# tools.segment's command line in a process where pycaffe cannot be imported, as where Caffe is not installed.
SEGMENT_NO_CAFFE = NO_CAFFE.split("import numpy as np")[0] + """
from tools import segment
status = segment.main(sys.argv[1:])
assert "caffe" not in sys.modules, "pycaffe was imported"
sys.exit(status)
"""


def _segment_no_caffe(*args):
    return subprocess.run([sys.executable, "-c", SEGMENT_NO_CAFFE, *map(str, args)], capture_output=True, text=True,
                          cwd=REPO)


def _output(out, stem, kind):
    return tifffile.imread(out / f"{stem}_{kind}.tif")


def _counts(out):
    import csv

    return {row["file"].rsplit("/", 1)[-1]: row for row in csv.DictReader((out / "counts.csv").open())}


@pytest.fixture(scope="module")
def exported(caffe, real, tmp_path_factory):
    """The nucleus detector with its parameters, its package, and a folder of two real images (the mnfinder
    test image and a crop of it whose sides are not multiples of 8)."""
    from cellfcn.images import read_array

    root = tmp_path_factory.mktemp("exported")
    model = _nucleus_detector(caffe, root / "detector.caffemodel")
    chosen = {"threshold": 0.5, "opening_radius": 1, "min_area": 10}
    model_params.write_model_params(model, chosen, val={"f1": 0.5, "dsb_score": 0.3}, chosen_on="val_full.h5",
                                    dataset={"scale": SCALE, "percentiles": PERCENTILES, "nucleus_diameter_px": 20.0})
    package = export.export(model, root / "export", image=real[0], check=False)
    images = root / "images"
    images.mkdir()
    images.joinpath("whole.tif").write_bytes(real[0].read_bytes())
    tifffile.imwrite(images / "crop.tif", read_array(real[0])[37:338, 55:476])
    return {"model": model, "zip": package["zip"], "folder": package["folder"], "images": images}


def test_segment_with_the_package_and_no_caffe_gives_caffes_labels_and_counts(exported, tmp_path):
    images, common = exported["images"], ("--scale", SCALE, "--workers", 0)
    by_onnx, by_caffe = tmp_path / "onnx", tmp_path / "caffe"
    done = _segment_no_caffe(images, "--engine", "onnx", "--model", exported["zip"], "--out", by_onnx, *common)
    assert done.returncode == 0, done.stderr[-3000:]
    done = _run("tools.segment", images, "--model", exported["model"], "--out", by_caffe, *common)
    assert done.returncode == 0, done.stderr[-3000:]
    onnx_rows, caffe_rows = _counts(by_onnx), _counts(by_caffe)
    assert sorted(onnx_rows) == ["crop.tif", "whole.tif"]
    for name, row in caffe_rows.items():
        assert row["status"] == onnx_rows[name]["status"] == "done"
        assert int(row["cells"]) >= 10  # the image's nuclei
        fields = ("cells", "mean_area_px", "median_area_px", "min_area_px", "max_area_px", "cell_fraction")
        assert [onnx_rows[name][k] for k in fields] == [row[k] for k in fields]
        stem = name.rsplit(".", 1)[0]
        assert np.array_equal(_output(by_onnx, stem, "labels"), _output(by_caffe, stem, "labels"))
        assert np.abs(_output(by_onnx, stem, "prob") - _output(by_caffe, stem, "prob")).max() <= 1e-4
    onnx_run, caffe_run = (json.loads((out / "manifest.json").read_text())["last_run"] for out in (by_onnx, by_caffe))
    assert (onnx_run["engine"], caffe_run["engine"]) == ("onnx", "caffe")
    assert onnx_run["params"] == caffe_run["params"] and onnx_run["dataset"] == caffe_run["dataset"]
    assert onnx_run["params_from"] == f"config.cellfcn of {exported['zip']}" and onnx_run["deploy"] is None
    # The engine is in the digest: the package run on Dask (a session per worker) into Caffe's folder
    # segments every image again, to the same labels; from the unpacked folder, the same weights.
    done = _segment_no_caffe(images, "--engine", "onnx", "--model", exported["folder"], "--out", by_caffe,
                             "--scale", SCALE, "--workers", 2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [row["status"] for row in _counts(by_caffe).values()] == ["done", "done"]
    for name in onnx_rows:
        stem = name.rsplit(".", 1)[0]
        assert np.array_equal(_output(by_onnx, stem, "labels"), _output(by_caffe, stem, "labels"))
    assert json.loads((by_caffe / "manifest.json").read_text())["last_run"]["digest"] == onnx_run["digest"]


def test_segment_with_onnx_refuses_caffes_options_and_a_model_without_parameters(exported, tmp_path):
    out = tmp_path / "o"
    images, common = exported["images"], ("--engine", "onnx", "--out", out, "--scale", SCALE, "--workers", 0)
    done = _segment_no_caffe(images, "--model", exported["zip"], "--deploy", netspec.DEPLOY, *common)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: ") and "--deploy is for --engine caffe" in done.stderr
    assert_one_line_error(_segment_no_caffe(images, "--model", exported["model"], *common), "not a package")
    bare = exported["folder"] / "weights.onnx"  # the weights alone: no parameters, no preprocessing
    assert_one_line_error(_segment_no_caffe(images, "--model", bare, *common), "holds no instance parameters",
                          "--threshold, --opening, --min-area")
    explicit = ("--threshold", 0.5, "--opening", 1, "--min-area", 10)
    assert_one_line_error(_segment_no_caffe(images, "--model", bare, *explicit, *common), "no preprocessing",
                          "--manifest")
    assert not out.exists()
