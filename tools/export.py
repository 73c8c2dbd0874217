"""Export a trained model as a bioimage.io model package with ONNX weights (``make export``).

The ONNX graph is written here from the deploy net's own NetParameter, layer by layer (Input, Convolution,
Deconvolution, ReLU, max Pooling, Crop, Softmax), with the weights pycaffe loaded from the ``.caffemodel``
after the two-way weight check (:func:`cellfcn.caffe_env.load_net`): a model whose net and weights disagree is
refused before anything is written. The package (``rdf.yaml`` in the bioimage.io model format 0.5) holds:

- ``weights.onnx``: input ``data`` (batch, channel, y, x), output ``prob``: every class probability
  (batch, channel, y, x), the softmax of the net;
- the preprocessing of the training data in the spec's terms: per-image percentile range scaling
  (``scale_range`` over y and x, the dataset manifest's percentiles) and a clip to [0, 1]. The dataset's resize
  factor is not a spec operation: it is recorded in ``config.cellfcn`` and the documentation (resize images by
  it before the model, and the maps back after);
- test input and output tensors (``.npy``) computed by our Caffe on a whole image, a cover (the image with
  the nuclei found in red), ``README.md``, the license, citations, and the instance parameters of
  ``make evaluate`` (as an attachment and in ``config.cellfcn``) so that ``make segment`` can be reproduced.

``<out>/<name>/`` holds the unpacked package and ``<out>/<name>.bioimageio.zip`` the same files zipped; both
are replaced atomically.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

from cellfcn import caffe_env, cli, files
from cellfcn.errors import InputError
from prototxt import net as netspec
from tools import infer

# 13: the first opset whose Softmax normalises along one axis (Caffe's), old enough for older runtimes.
OPSET = 13
# Largest difference (max abs, probabilities) from Caffe that an export accepts; the package's test uses it too.
TOLERANCE = 1e-4
_FLOAT = 1  # onnx.TensorProto.FLOAT


# ------------------------------------------------------------------------------------------- ONNX graph
def _pair(values, h, w, default):
    """A Caffe (h, w) pair from a repeated field (0, 1 or 2 values) or its ``_h``/``_w`` override."""
    if h or w:
        return int(h), int(w)
    values = list(values)
    if not values:
        return default, default
    if len(values) > 2:
        raise InputError("only 2-D spatial layers can be exported")
    return (int(values[0]), int(values[-1]))


def _conv_attrs(layer):
    p = layer.convolution_param
    if p.axis != 1:
        raise InputError(f"layer '{layer.name}': convolution axis {p.axis} cannot be exported (only 1)")
    kernel = _pair(p.kernel_size, p.kernel_h, p.kernel_w, 0)
    pad = _pair(p.pad, p.pad_h, p.pad_w, 0)
    return dict(kernel_shape=list(kernel), strides=list(_pair(p.stride, p.stride_h, p.stride_w, 1)),
                pads=[pad[0], pad[1], pad[0], pad[1]], dilations=list(_pair(p.dilation, 0, 0, 1)),
                group=int(p.group))


def _pool_attrs(layer, pb2):
    p = layer.pooling_param
    if p.pool != pb2.PoolingParameter.MAX or p.global_pooling:
        raise InputError(f"layer '{layer.name}': only max pooling with a kernel can be exported")
    pad = _pair([p.pad] if p.pad else [], p.pad_h, p.pad_w, 0)
    kernel = _pair([p.kernel_size] if p.kernel_size else [], p.kernel_h, p.kernel_w, 0)
    stride = _pair([p.stride] if p.HasField("stride") else [], p.stride_h, p.stride_w, 1)
    ceil = p.round_mode == pb2.PoolingParameter.CEIL
    if ceil and pad == (0, 0) and min(kernel) < max(stride):
        # Caffe then keeps a last window wholly outside the image (its value -FLT_MAX); ONNX drops it.
        raise InputError(f"layer '{layer.name}': ceil-rounded max pooling without padding and a kernel smaller "
                         "than its stride has no exact ONNX counterpart")
    # Caffe rounds the output size up by default (ceil) and, with padding, drops a last window that would
    # start in the bottom/right padding: ONNX's ceil_mode does both the same way.
    return dict(kernel_shape=list(kernel), strides=list(stride), pads=[pad[0], pad[1], pad[0], pad[1]],
                ceil_mode=int(ceil))


def net_outputs(net_param):
    """Blobs a net produces and never consumes (Caffe's net outputs), in order of production."""
    available = []
    for layer in net_param.layer:
        for bottom in layer.bottom:
            if bottom in available:
                available.remove(bottom)
        available += [top for top in layer.top if top not in available]
    return available


def onnx_model(net_param, net, opset=OPSET):
    """The ONNX model of a deploy net: the same layers, the weights of a loaded pycaffe net.

    Parameters
    ----------
    net_param : caffe_pb2.NetParameter
        The deploy net (one ``Input`` layer of a 4-D (batch, channel, y, x) blob).
    net : caffe.Net
        The same net with its weights (:func:`cellfcn.caffe_env.load_net`); also gives the output channels.
    opset : int

    Returns
    -------
    onnx.ModelProto
        Input and output named as the net's blobs, with dynamic batch, y and x sizes; checked by
        ``onnx.checker``.

    Raises
    ------
    InputError
        A layer type or setting that has no exact ONNX counterpart here (the message names it).
    """
    import onnx
    from onnx import helper, numpy_helper

    pb2 = caffe_env.caffe_pb2()
    if net_param.input or net_param.input_shape:
        raise InputError("nets with old-style 'input:' fields cannot be exported: use an Input layer")
    names = [layer.name for layer in net_param.layer]
    if len(set(names)) != len(names):
        raise InputError("layer names must be unique to export a net")
    last_writer = {}
    for i, layer in enumerate(net_param.layer):
        for top in layer.top:
            last_writer[top] = i
    current, nodes, inits, inputs = {}, [], [], []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    for i, layer in enumerate(net_param.layer):
        try:
            bottoms = [current[b] for b in layer.bottom]
        except KeyError as err:
            raise InputError(f"layer '{layer.name}' reads blob {err} before any layer writes it") from None
        tops = [top if last_writer[top] == i else f"{layer.name}/{top}" for top in layer.top]
        kind, name = layer.type, layer.name
        if kind == "Input":
            for top, value, shape in zip(layer.top, tops, layer.input_param.shape):
                if len(shape.dim) != 4:
                    raise InputError(f"input '{top}' must be 4-D (batch, channel, y, x), got {list(shape.dim)}")
                inputs.append(helper.make_tensor_value_info(value, _FLOAT, ["batch", int(shape.dim[1]), "y", "x"]))
        elif kind in ("Convolution", "Deconvolution"):
            blobs = [b.data.astype(np.float32) for b in net.params[name]]
            args = [bottoms[0], const(f"{name}/W", blobs[0])]
            if layer.convolution_param.bias_term:
                args.append(const(f"{name}/B", blobs[1]))
            op = "Conv" if kind == "Convolution" else "ConvTranspose"
            nodes.append(helper.make_node(op, args, tops, name=name, **_conv_attrs(layer)))
        elif kind == "ReLU":
            slope = layer.relu_param.negative_slope
            nodes.append(helper.make_node("LeakyRelu", bottoms, tops, name=name, alpha=slope) if slope else
                         helper.make_node("Relu", bottoms, tops, name=name))
        elif kind == "Pooling":
            nodes.append(helper.make_node("MaxPool", bottoms, tops, name=name, **_pool_attrs(layer, pb2)))
        elif kind == "Concat":
            if layer.concat_param.HasField("concat_dim"):
                raise InputError(f"layer '{name}': the deprecated concat_dim has no export here (use axis)")
            nodes.append(helper.make_node("Concat", bottoms, tops, name=name, axis=layer.concat_param.axis))
        elif kind == "Softmax":
            nodes.append(helper.make_node("Softmax", bottoms, tops, name=name, axis=layer.softmax_param.axis))
        elif kind == "Crop":
            # bottom 0 cut to the size of bottom 1 from ``axis`` on, starting at the offsets.
            axis = layer.crop_param.axis % 4
            offsets = list(layer.crop_param.offset) or [0]
            offsets = offsets * (4 - axis) if len(offsets) == 1 else offsets
            if len(offsets) != 4 - axis:
                raise InputError(f"layer '{name}': {len(offsets)} crop offsets for {4 - axis} axes")
            shape, size, end = f"{name}/shape", f"{name}/size", f"{name}/end"
            nodes += [helper.make_node("Shape", [bottoms[1]], [shape]),
                      helper.make_node("Slice", [shape, const(f"{name}/axis", np.array([axis], np.int64)),
                                                 const(f"{name}/rank", np.array([4], np.int64))], [size]),
                      helper.make_node("Add", [const(f"{name}/start", np.array(offsets, np.int64)), size], [end]),
                      helper.make_node("Slice", [bottoms[0], f"{name}/start", end,
                                                 const(f"{name}/axes", np.arange(axis, 4, dtype=np.int64))],
                                       tops, name=name)]
        else:
            raise InputError(f"layer '{name}' of type {kind} has no ONNX export here (supported: Input, "
                             f"Convolution, Deconvolution, ReLU, max Pooling, Crop, Concat, Softmax)")
        current.update(zip(layer.top, tops))
    if len(inputs) != 1:
        raise InputError(f"the net must have exactly one Input blob, it has {len(inputs)}")
    outputs = []
    for blob in net_outputs(net_param):
        channels = int(net.blobs[blob].data.shape[1])
        outputs.append(helper.make_tensor_value_info(current[blob], _FLOAT, ["batch", channels, "y", "x"]))
    graph = helper.make_graph(nodes, net_param.name or "net", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, producer_name="cellfcn", opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


def caffe_forward(net, batch):
    """Every channel of a net's (first) output for a (N, C, H, W) float32 batch, by one Caffe forward pass."""
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    data = net.blobs[net.inputs[0]]
    data.reshape(*batch.shape)
    net.reshape()
    data.data[...] = batch
    net.forward()
    return net.blobs[net.outputs[0]].data.copy()


# ---------------------------------------------------------------------------------------- the package
CLASS_NAMES = {2: ["background", "nucleus"], 3: ["background", "nucleus_interior", "nucleus_contour"],
               4: ["background", "nucleus_interior", "nucleus_contour", "micronucleus"]}
# What the package's README says the nucleus probability is, by number of classes (tools.infer.nucleus_of_classes).
NUCLEUS_CHANNELS = {2: "channel 1", 3: "channel 1 (interior) plus channel 2 (contour): 1 - channel 0",
                    4: "channel 1 (interior) plus channel 2 (contour): 1 - channel 0 - channel 3"}
# DOIs only: a URL would make bioimage.io's checks reach the network.
CITE = [
    {"text": "Xie W, Noble JA, Zisserman A (2018). Microscopy cell counting and detection with fully "
             "convolutional regression networks (FCRN-A). Computer Methods in Biomechanics and Biomedical "
             "Engineering: Imaging & Visualization 6(3):283-292.", "doi": "10.1080/21681163.2016.1149104"},
    {"text": "Jia Y et al. (2014). Caffe: convolutional architecture for fast feature embedding. ACM "
             "Multimedia.", "doi": "10.1145/2647868.2654889"},
]
REPORT = ("Marzo A, La Rosa F (2016). Microscopy cell semantic segmentation with fully-convolutional neural "
          "networks. Report, October 2016 (no DOI or public URL known).")
LICENSE = "BSD-2-Clause"


def default_name(model_net):
    """Package name from the model's net name: ``fcrn_a_finetune_train`` -> ``cellfcn_fcrn_a_finetune``."""
    return "cellfcn_" + (model_net[:-len("_train")] if model_net.endswith("_train") else model_net)


def size_grid(net_param):
    """(min, step) of the input's y and x sizes: whole poolings (each halves the map, each upsampling doubles
    it back) and a window larger than its two halos (``tools.infer.MARGIN``)."""
    step = 2 ** sum(layer.type == "Pooling" for layer in net_param.layer)
    return -(-(2 * infer.MARGIN + 1) // step) * step, step


def test_input(scale, step, image=None, channel=None, manifest=None):
    """The package's test input: one image at the net's scale, (H, W) float32, sides multiples of ``step``.

    Parameters
    ----------
    scale : float
        The training dataset's resize factor.
    step : int
        The sides are cropped at the bottom and right to multiples of it.
    image : path, optional
        A TIFF/PNG image (any size, gray or ``channel`` of a colour image), resized by ``scale`` as raw
        intensities (bilinear, anti-aliased when shrinking, as ``data_prep`` resizes).
    channel : int, optional
    manifest : path, optional
        Without ``image``: the first whole test image of this dataset's ``test_full.h5`` (prepared by
        ``make data``: already at the net's scale and normalised; the package's normalisation then changes
        it little).

    Raises
    ------
    InputError
        No image given and no dataset test image, or an unreadable image.
    """
    if image is not None:
        from skimage.transform import resize

        from cellfcn.images import read_array, to_gray

        gray = to_gray(read_array(image), channel=channel, name=str(image)).astype(np.float32)
        if scale != 1:
            shape = tuple(max(1, int(round(n * scale))) for n in gray.shape)
            gray = resize(gray, shape, order=1, anti_aliasing=scale < 1, preserve_range=True).astype(np.float32)
    else:
        import h5py

        full = Path(manifest).parent / "test_full.h5" if manifest else None
        if full is None or not full.is_file():
            raise InputError(f"no test image: give --image, or build the dataset with its test_full.h5 "
                             f"(make data){f' ({full} not found)' if full else ''}")
        with h5py.File(full, "r") as f:
            gray = np.asarray(f["images/0"], dtype=np.float32)
    h, w = (n - n % step for n in gray.shape)
    if min(h, w) < 1:
        raise InputError(f"test image of {gray.shape[1]}x{gray.shape[0]} px at the net's scale is smaller than "
                         f"{step} px")
    return np.ascontiguousarray(gray[:h, :w])


def _cover(prepared, maps, params):
    """RGB picture: the normalised test image beside it with the outlines of the nuclei found (red)."""
    from skimage.measure import label

    from cellfcn import objects, pictures

    labels = objects.instances_from_maps(maps, **params) if params else \
        label(infer.nucleus_probability(maps) >= 0.5)
    empty = np.zeros(np.shape(prepared), np.int32)
    return np.concatenate([pictures.overlay_outlines(prepared, empty), pictures.overlay_outlines(prepared, labels)],
                          axis=1)


def documentation(name, config, diffs):
    """The package's README.md: what the model is, how to prepare images, what the output means."""
    classes = ", ".join(f"{i}: {c}" for i, c in enumerate(config["classes"]))
    params = config["instance_parameters"]
    cut = (f"`make evaluate` chose them on the training and validation images "
           f"(`{config['instance_parameters_file']}`): "
           + ", ".join(f"{k} = {v}" for k, v in params.items()) + " (pixels at the net's scale), for "
           "`cellfcn.objects.instances_from_maps`."
           + (f" `make segment` (`--diameter auto`) runs each image a second time resized so that its nuclei, as "
              f"the first pass found them, have the working diameter of {config['working_diameter_px']:.1f} px, "
              "and cuts the maps of that pass resized back." if config["working_diameter_px"] else "")) \
        if params else \
        "None: `make evaluate` had not chosen instance parameters for this model."
    return f"""# {name}

An FCRN-A fully convolutional network ({config['model']['variant']} variant) that classifies every pixel of a
fluorescence microscopy image of nuclei; trained with BVLC Caffe by cellfcn, a reproduction of {REPORT}
Exported from `{config['model']['file']}` (SHA-256 `{config['model']['sha256'][:16]}...`, net
`{config['model']['net']}`) by `make export`.

## Input: `data` (batch, channel, y, x), one channel, float32

1. Resize the image by **{config['scale']}** (the factor the training images were resized by, so that nuclei
   have the training size: median diameter {config['nucleus_diameter_px']} px at the net's scale). This step is
   not a bioimage.io operation: do it before the model, and resize the output back.
2. The package's preprocessing then maps the {config['percentiles'][0]} and {config['percentiles'][1]}
   percentiles of each image to 0 and 1 (`scale_range` over y and x) and clips to [0, 1], as the training
   data were normalised (cellfcn normalises at the file's size, before resizing: the percentiles differ a
   little).

Sizes: y and x at least {config['min_size']} px and multiples of {config['step']} (the poolings). Run whole
images where memory allows. Tiles need {config['halo']} px of context on each side, kept out of the output
(cellfcn runs windows of up to {config['tile']} px so): the package declares no output halo because
bioimageio.core 0.11 pads the input by the halo before it computes the per-image percentiles, which shifts
the normalisation.

## Output: `prob` (batch, channel, y, x), float32 in [0, 1]

The softmax probability of each class ({classes}), same y and x as the input. The nucleus
probability is {NUCLEUS_CHANNELS.get(len(config['classes']), 'not defined for this class layout')}.

## Nuclei (instances) as `make segment` cuts them

{cut}

## Validation

The ONNX graph is written from the Caffe deploy net; on this package's test image its output differs from
Caffe's by at most {diffs['test_input']:.1e} (max abs), on random input by {diffs['random_input']:.1e}.
The test output (`test_output.npy`) was computed by Caffe.

## Cite

- {REPORT}
""" + "".join(f"- {c['text']} doi:{c['doi']}\n" for c in CITE) + f"""
License: {LICENSE} (LICENSE).
"""


def rdf(name, config, names, timestamp, min_size, step):
    """The ``rdf.yaml`` content (bioimage.io model format 0.5) of a package.

    ``names`` maps each role (``weights``, ``test_input``, ``test_output``, ``cover``, ``documentation``,
    ``attachments``) to its file name(s) and ``sha256`` the file names to their digests.
    """
    from bioimageio.spec.model.v0_5 import ModelDescr

    def ref(file):
        return {"source": file, "sha256": names["sha256"][file]}

    space = [{"type": "space", "id": a, "size": {"min": min_size, "step": step}} for a in ("y", "x")]
    # No output halo: bioimageio.core 0.11 pads the input by the halo *before* it takes the per-image
    # percentiles, which shifts the normalisation (by up to 16% of the range on mnfinder's test images); the
    # context tiles need is in the description and the documentation instead.
    out_space = [{"type": "space", "id": a, "size": {"tensor_id": "data", "axis_id": a}} for a in ("y", "x")]
    low, high = config["percentiles"]
    return {
        "type": "model",
        "format_version": ModelDescr.implemented_format_version,
        "name": name,
        "description": "FCRN-A fully convolutional network for semantic segmentation of nuclei in fluorescence "
                       "microscopy: per-pixel class probabilities. Trained with BVLC Caffe by cellfcn (a "
                       "reproduction of Marzo & La Rosa 2016); ONNX graph written from the Caffe net.",
        "authors": [{"name": "cellfcn authors"}],
        "cite": CITE,
        "license": LICENSE,
        "tags": ["fluorescence-light-microscopy", "nuclei", "semantic-segmentation", "2d", "fcrn", "onnx",
                 "caffe", "cellfcn"],
        "documentation": ref(names["documentation"]),
        "covers": [ref(names["cover"])],
        "attachments": [ref(f) for f in names["attachments"]],
        "timestamp": timestamp,
        "inputs": [{
            "id": "data",
            "description": f"fluorescence image resized by {config['scale']}; tiles need {config['halo']} px of "
                           "context each side (see the documentation)",
            "axes": [{"type": "batch"}, {"type": "channel", "channel_names": ["fluorescence"]}, *space],
            "test_tensor": ref(names["test_input"]),
            "data": {"type": "float32"},
            "preprocessing": [
                {"id": "scale_range", "kwargs": {"axes": ["y", "x"], "min_percentile": low,
                                                 "max_percentile": high}},
                {"id": "clip", "kwargs": {"min": 0.0, "max": 1.0}},
            ],
        }],
        "outputs": [{
            "id": "prob",
            "description": "softmax probability of each class: " + ", ".join(config["classes"]),
            "axes": [{"type": "batch"},
                     {"type": "channel", "channel_names": config["classes"]},
                     *out_space],
            "test_tensor": ref(names["test_output"]),
            "data": {"type": "float32", "range": [0.0, 1.0]},
        }],
        "weights": {"onnx": {**ref(names["weights"]), "opset_version": OPSET}},
        "config": {
            # As strict as our own check of the export.
            "bioimageio": {"reproducibility_tolerance": [{"absolute_tolerance": TOLERANCE, "relative_tolerance": 0.0,
                                                          "mismatched_elements_per_million": 0}]},
            "cellfcn": config,
        },
    }


def check_package(path):
    """Validate a package and run its test (onnxruntime on the test input) with bioimage.io's own libraries.

    Returns
    -------
    bioimageio.spec.ValidationSummary
        ``status`` is ``"passed"`` only when the format is valid *and* the test passed.
    """
    from bioimageio.core import test_model

    return test_model(str(path), weight_format="onnx", devices=["cpu"])


def _failure(summary):
    """The first error of a failed bioimage.io summary, as one line."""
    for detail in summary.details:
        for err in detail.errors:
            return f"{detail.name}: {'.'.join(map(str, err.loc))} {err.msg}".splitlines()[0]
    return f"status {summary.status}"


def _write_zip(path, folder):
    """Zip every file of ``folder`` (flat, fixed dates: the same files give the same bytes), atomically."""
    import zipfile

    with files.atomic_file(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(Path(folder).iterdir()):
            info = zipfile.ZipInfo(file.name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, file.read_bytes())


def export(model, out, net=None, manifest=None, image=None, channel=None, name=None, check=True, seed=0):
    """Write ``<out>/<name>/`` and ``<out>/<name>.bioimageio.zip`` for a trained model.

    Parameters
    ----------
    model : path
        ``.caffemodel``.
    out : path
        Output folder.
    net : str, optional
        Variant of ``prototxt.net.VARIANTS`` (default: the one the model names).
    manifest : path, optional
        The training dataset's ``manifest.json``: its resize factor, percentiles and nucleus diameter, when
        the model has no ``<model>.params.json`` (``make evaluate``); its ``test_full.h5`` gives the test image
        when ``image`` is None.
    image, channel
        Test image (:func:`test_input`).
    name : str, optional
        Package name (default :func:`default_name` of the model's net).
    check : bool
        Run :func:`check_package` on the package before it replaces any output.
    seed : int
        Seed of the random input of the ONNX-Caffe comparison.

    Returns
    -------
    dict
        ``folder``, ``zip``, ``config`` (``config.cellfcn`` of the rdf).

    Raises
    ------
    InputError
        A model whose deploy net and weights disagree (nothing is written), a missing input, an ONNX output
        that differs from Caffe's by more than 1e-4, or a package bioimage.io's test rejects.
    """
    import yaml
    from google.protobuf import text_format
    from PIL import Image

    from data_prep.normalize import normalize_percentile
    from tools import model_params, onnx_engine

    model = Path(model)
    model_net = caffe_env.model_name(model)
    deploy = netspec.deploy_path(net) if net else infer.deploy_for(model)
    caffe_net = caffe_env.load_net(deploy, model)  # the two-way weight check: refuses before any output
    net_param = text_format.Parse(Path(deploy).read_text(), caffe_env.caffe_pb2().NetParameter())
    name = name or default_name(model_net)
    out = Path(out)
    files.check_writable(out / f"{name}.bioimageio.zip")
    if model_params.params_path(model).is_file():
        record = model_params.read_model_params(model)
        dataset, params, working = record["dataset"], record["params"], record["working_diameter_px"]
    elif manifest is not None and Path(manifest).is_file():
        dataset, params, working = model_params.read_dataset_preprocessing(manifest), None, None
    else:
        raise InputError(f"no preprocessing for {model}: neither {model_params.params_path(model).name} "
                         f"(make evaluate) nor a dataset manifest{f' ({manifest} not found)' if manifest else ''}")
    min_size, step = size_grid(net_param)
    raw = test_input(dataset["scale"], step, image, channel, manifest)
    if min(raw.shape) < min_size:
        raise InputError(f"the test image is {raw.shape[1]}x{raw.shape[0]} px at the net's scale; the package "
                         f"needs at least {min_size} px")
    prepared = normalize_percentile(raw, *dataset["percentiles"], name="test image")
    expected = caffe_forward(caffe_net, prepared[None, None])
    graph = onnx_model(net_param, caffe_net)
    session = onnx_engine.load_session(graph.SerializeToString())
    noise = np.random.default_rng(seed).random((2, 1, min_size, min_size + step), dtype=np.float32)
    diffs = {"test_input": float(np.abs(onnx_engine.run(session, prepared[None, None]) - expected).max()),
             "random_input": float(np.abs(onnx_engine.run(session, noise) - caffe_forward(caffe_net, noise)).max())}
    if max(diffs.values()) > TOLERANCE:
        raise InputError(f"the ONNX graph of {Path(deploy).name} differs from Caffe by {max(diffs.values()):.2e} "
                         f"(max abs, over {TOLERANCE}): not exported")
    classes = int(expected.shape[1])
    config = {
        "model": {"file": model.name, "sha256": files.sha256_file(model), "net": model_net,
                  "variant": netspec.variant_of(net_param.name), "deploy": Path(deploy).name},
        "classes": CLASS_NAMES.get(classes, [f"class {i}" for i in range(classes)]),
        "scale": dataset["scale"], "percentiles": list(dataset["percentiles"]),
        "nucleus_diameter_px": dataset.get("nucleus_diameter_px"),
        "instance_parameters": params, "working_diameter_px": working,
        "instance_parameters_file": model_params.params_path(model).name if params else None,
        "min_size": min_size, "step": step, "halo": infer.MARGIN, "tile": infer.TILE,
        "onnx_max_abs_diff_to_caffe": diffs,
    }
    names = {"weights": "weights.onnx", "test_input": "test_input.npy", "test_output": "test_output.npy",
             "cover": "cover.png", "documentation": "README.md",
             "attachments": ["LICENSE", Path(deploy).name] + ([config["instance_parameters_file"]] if params else [])}
    timestamp = np.datetime_as_string(np.datetime64(int(model.stat().st_mtime), "s"), unit="s") + "Z"
    folder = out / name
    with files.staged_folder(folder) as tmp:
        (tmp / names["weights"]).write_bytes(graph.SerializeToString())
        np.save(tmp / names["test_input"], raw[None, None])
        np.save(tmp / names["test_output"], expected)
        Image.fromarray(_cover(prepared, infer.class_maps(expected[0]), params)).save(tmp / names["cover"])
        (tmp / names["documentation"]).write_text(documentation(name, config, diffs))
        (tmp / "LICENSE").write_bytes((caffe_env.REPO / "LICENSE").read_bytes())
        (tmp / Path(deploy).name).write_bytes(Path(deploy).read_bytes())
        if params:
            (tmp / config["instance_parameters_file"]).write_bytes(model_params.params_path(model).read_bytes())
        names["sha256"] = {f.name: files.sha256_file(f) for f in tmp.iterdir()}
        (tmp / onnx_engine.RDF).write_text(yaml.safe_dump(rdf(name, config, names, timestamp, min_size, step),
                                                          sort_keys=False, allow_unicode=True))
        if check:
            summary = check_package(tmp / onnx_engine.RDF)
            if summary.status != "passed":
                raise InputError(f"bioimage.io's test rejects the package: {_failure(summary)}")
        _write_zip(out / f"{name}.bioimageio.zip", tmp)
    return {"folder": folder, "zip": out / f"{name}.bioimageio.zip", "config": config}


def _main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tools.export", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--model", required=True, help="trained .caffemodel")
    parser.add_argument("--net", choices=list(netspec.VARIANTS),
                        help="its net variant (default: the one the model names); a model of another net is refused")
    parser.add_argument("--manifest", default=str(caffe_env.REPO / "runs" / "data" / "real" / "manifest.json"),
                        help="training dataset's manifest.json (preprocessing when the model has no "
                             "<model>.params.json; its test_full.h5 gives the test image) (default: %(default)s)")
    parser.add_argument("--image", help="test image (TIFF/PNG, raw; resized by the dataset's factor) instead of "
                                         "the dataset's first test image")
    parser.add_argument("--channel", type=int, help="channel of a colour --image")
    parser.add_argument("--name", help="package name (default: cellfcn_<variant>_<stage> from the model)")
    parser.add_argument("--out", default=str(caffe_env.REPO / "runs" / "export"),
                        help="output folder (default: %(default)s)")
    parser.add_argument("--no-check", action="store_true",
                        help="skip bioimage.io's validation and test of the package (seconds)")
    args = parser.parse_args(argv)
    if args.name is not None and not args.name.replace("_", "").replace("-", "").isalnum():
        parser.error("--name may hold letters, digits, '_' and '-' only")
    result = export(args.model, args.out, args.net, args.manifest, args.image, args.channel, args.name,
                    check=not args.no_check)
    diffs = result["config"]["onnx_max_abs_diff_to_caffe"]
    print(f"export: {result['zip']} ({result['zip'].stat().st_size / 1e6:.1f} MB) and {result['folder']}/; ONNX - "
          f"Caffe max abs {max(diffs.values()):.1e}" + ("" if args.no_check else "; bioimage.io test passed"))


def main(argv=None):
    """Run the command; return its exit status (see cellfcn.cli)."""
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
