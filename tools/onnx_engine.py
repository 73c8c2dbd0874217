"""Run an exported model (``make export``) with onnxruntime: segmentation where Caffe is not installed.

:func:`load_session` opens a ``.onnx`` file, an unpacked bioimage.io package folder or its
``.bioimageio.zip``; :func:`forward` has the contract of :func:`tools.infer.forward_image`, so the product's
tiling runs the ONNX net unchanged::

    session = onnx_engine.load_session("runs/export/cellfcn_fcrn_a_finetune.bioimageio.zip", threads=1)
    maps = infer.segment_image(session, image, forward=onnx_engine.forward)

:func:`package_config` gives what the package recorded to prepare images and cut nuclei (``config.cellfcn``
of its ``rdf.yaml``: resize factor, percentiles, instance parameters), so ``tools.segment`` needs neither the
dataset manifest nor ``make evaluate``'s files.
"""
import hashlib
import zipfile
from pathlib import Path

import numpy as np

from cellfcn.errors import InputError
from tools import infer

RDF = "rdf.yaml"


def _read_member(package, name):
    """Bytes of file ``name`` of a package folder or zip."""
    package = Path(package)
    try:
        if package.is_dir():
            return (package / name).read_bytes()
        with zipfile.ZipFile(package) as archive:
            return archive.read(name)
    except zipfile.BadZipFile:
        raise InputError(f"{package}: not a package of `make export` (its folder or .bioimageio.zip) nor a "
                         ".onnx") from None
    except (OSError, KeyError) as err:
        raise InputError(f"{package}: cannot read {name} ({err})") from None


def read_rdf(package):
    """The parsed ``rdf.yaml`` of a bioimage.io package (folder or zip)."""
    import yaml

    try:
        rdf = yaml.safe_load(_read_member(package, RDF))
    except yaml.YAMLError as err:
        raise InputError(f"{package}: {RDF} is not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(rdf, dict) or rdf.get("type") != "model":
        raise InputError(f"{package}: {RDF} does not describe a model")
    return rdf


def _onnx_bytes(path):
    if isinstance(path, bytes):
        return path
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.suffix == ".onnx":
        return path.read_bytes()
    weights = (read_rdf(path).get("weights") or {}).get("onnx")
    if not weights or "source" not in weights:
        raise InputError(f"{path}: the package has no ONNX weights")
    return _read_member(path, weights["source"])


def load_session(path, threads=None):
    """An onnxruntime session (CPU) of an exported model.

    Parameters
    ----------
    path : path or bytes
        ``.onnx`` file, bioimage.io package folder or ``.bioimageio.zip``; or a serialised ONNX model.
    threads : int, optional
        Threads of one forward pass (default: onnxruntime's, one per core); ``tools.segment`` runs one per
        process, as its Caffe path does.

    Returns
    -------
    onnxruntime.InferenceSession

    Raises
    ------
    InputError
        A missing or unreadable file, a package without ONNX weights, or a file onnxruntime rejects.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(_onnx_bytes(path), options, providers=["CPUExecutionProvider"])
    except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidGraph,
            ort.capi.onnxruntime_pybind11_state.InvalidProtobuf) as err:
        where = "the ONNX model" if isinstance(path, bytes) else path
        raise InputError(f"{where}: onnxruntime cannot load the model ({str(err).splitlines()[0]})") from None


def weights_sha256(path):
    """SHA-256 of the ONNX weights of a ``.onnx`` file, package folder or zip: the same for all three forms of
    one export, and what decides the maps (``tools.segment``'s settings digest)."""
    return hashlib.sha256(_onnx_bytes(path)).hexdigest()


def classes(session):
    """Number of output channels (classes) of a session's model.

    Raises
    ------
    InputError
        An output without a fixed channel count (not a model ``tools.export`` wrote).
    """
    channels = session.get_outputs()[0].shape[1]
    if not isinstance(channels, int) or channels < 2:
        raise InputError(f"the ONNX model's output has {channels!r} channels, not a fixed number of classes "
                         "(not exported by `make export`?)")
    return channels


def run(session, batch):
    """Every output channel of the model for a (N, C, H, W) float32 batch: (N, classes, H, W) float32."""
    name = session.get_inputs()[0].name
    return session.run(None, {name: np.ascontiguousarray(batch, dtype=np.float32)})[0]


def forward(session, window):
    """The maps (:func:`tools.infer.class_maps`) of one 2-D float32 window whose sides are multiples of 8:
    :func:`tools.infer.forward_image` for an onnxruntime session."""
    return infer.class_maps(run(session, np.asarray(window, dtype=np.float32)[None, None])[0])


def package_config(package):
    """``config.cellfcn`` of an exported package: ``scale``, ``percentiles``, ``nucleus_diameter_px``,
    ``instance_parameters`` and ``working_diameter_px`` (None when ``make evaluate`` had not chosen them),
    ``classes``, the source model.

    Raises
    ------
    InputError
        Not a package written by ``tools.export``.
    """
    config = (read_rdf(package).get("config") or {}).get("cellfcn")
    if not isinstance(config, dict) or "scale" not in config or "percentiles" not in config:
        raise InputError(f"{package}: no config.cellfcn with scale and percentiles (not exported by "
                         "`make export`?)")
    return config
