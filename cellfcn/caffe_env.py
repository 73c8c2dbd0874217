"""Everything that touches Caffe directly: the build in use, pycaffe, Datum records, nets with checked weights.

Which build, for both the CPU and the CUDA variant:

1. ``CAFFE`` (path to the ``caffe`` binary) and ``PYCAFFE`` (folder holding the ``caffe`` package);
2. ``CAFFE_ROOT``: an install prefix or a source tree with a ``build/`` folder;
3. the project's own build, ``.caffe/`` (CPU) or ``.caffe-cuda/`` (``gpu=True``), made by ``make caffe``.

pycaffe is imported by Python's own search path: ``make env`` registers ``.caffe``'s pycaffe in the venv, and
``make`` puts the selected one first on ``PYTHONPATH`` for ``GPU=1`` and your own Caffe. :func:`import_caffe`
checks that the ``caffe`` module Python found is the selected build's, so a mixed-up build is an error, not a
silent surprise.
"""
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from .constants import STAGES
from .errors import CaffeNotFound, InputError

REPO = Path(__file__).resolve().parent.parent
# cellfcn's net names: the deploy net's and those ``tools.train`` gives the train and test nets of a stage.
_NET_NAME = re.compile(rf"^(\w+?)_(?:deploy|(?:{'|'.join(STAGES)})_(?:train|test))$")
_PYCAFFE_SUBDIRS = ("lib/python3/dist-packages", "python")


def _prefix(gpu):
    root = os.environ.get("CAFFE_ROOT")
    if root:
        return Path(root)
    return REPO / (".caffe-cuda" if gpu else ".caffe")


def _hint(gpu):
    return "make caffe GPU=1" if gpu else "make caffe"


def caffe_binary(gpu=False):
    """Return the path of the ``caffe`` command-line tool.

    Parameters
    ----------
    gpu : bool
        Look for the CUDA build (``.caffe-cuda/``) instead of the CPU one.

    Raises
    ------
    CaffeNotFound
        If no executable is found.
    """
    explicit = os.environ.get("CAFFE")
    candidates = [Path(explicit)] if explicit else [
        _prefix(gpu) / "bin" / "caffe", _prefix(gpu) / "build" / "tools" / "caffe"]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise CaffeNotFound(f"caffe binary not found at {candidates[0]}: run '{_hint(gpu)}' or set CAFFE/CAFFE_ROOT")


def pycaffe_dir(gpu=False):
    """Return the folder that holds the selected build's ``caffe`` Python package."""
    explicit = os.environ.get("PYCAFFE")
    candidates = [Path(explicit)] if explicit else [_prefix(gpu) / sub for sub in _PYCAFFE_SUBDIRS]
    for path in candidates:
        if (path / "caffe" / "__init__.py").is_file():
            return path
    raise CaffeNotFound(f"pycaffe not found under {candidates[0]}: run '{_hint(gpu)}' or set PYCAFFE/CAFFE_ROOT")


def _selected_pycaffe(gpu):
    """The folders whose pycaffe may serve: the CUDA build's for a device; otherwise the CPU build's or the
    CUDA build's (``make ... GPU=1`` puts the latter first on the search path, and it runs on the CPU too)."""
    if gpu is not None:
        return [pycaffe_dir(True).resolve()]
    found = []
    for cuda in (False, True):
        try:
            found.append(pycaffe_dir(cuda).resolve())
        except CaffeNotFound:
            pass
    return found or [pycaffe_dir(False)]  # neither build: pycaffe_dir says what to run


def pycaffe(gpu=None):
    """The ``caffe`` module of a selected build, imported once (glog quiet); its mode is left as it is.

    For what needs pycaffe but runs no net (NetSpec, protobuf messages): only the code that makes a net sets
    the mode (:func:`import_caffe`), so using pycaffe elsewhere never turns a GPU process back to the CPU.

    Parameters
    ----------
    gpu : int or None
        A CUDA device id: the CUDA build's pycaffe is required; None accepts either build's.

    Raises
    ------
    CaffeNotFound
        No pycaffe on the search path, or another build's.
    """
    allowed = _selected_pycaffe(gpu)
    if "caffe" not in sys.modules:
        try:
            _quiet_import()
        except ImportError as err:
            raise CaffeNotFound(f"pycaffe is not importable ({err}): run '{_hint(gpu is not None)}', "
                                f"or put {allowed[0]} on PYTHONPATH") from None
    import caffe

    loaded = Path(caffe.__file__).resolve().parent.parent
    if loaded not in allowed:
        raise CaffeNotFound(f"pycaffe was imported from {loaded}, not from the selected build "
                            f"{' or '.join(map(str, allowed))}: run with PYTHONPATH={allowed[0]} (make does this "
                            "for GPU=1 and CAFFE_ROOT)")
    return caffe


def import_caffe(gpu=None):
    """Import pycaffe (:func:`pycaffe`) and set its mode: call it where a net is made, and only there.

    Parameters
    ----------
    gpu : int or None
        CUDA device id, or None for CPU mode.

    Returns
    -------
    module
        The ``caffe`` module.

    Raises
    ------
    CaffeNotFound
        No pycaffe on the search path, another build's pycaffe, a CPU-only build asked for a GPU, or an
        unusable CUDA device.
    """
    caffe = pycaffe(gpu)
    if gpu is None:
        caffe.set_mode_cpu()
    else:
        if _cpu_only():
            raise CaffeNotFound(f"GPU requested but the Caffe at {Path(caffe.__file__).parent.parent} is "
                                "CPU-only: run 'make caffe GPU=1'")
        check_device(gpu)
        caffe.set_device(int(gpu))
        caffe.set_mode_gpu()
    return caffe


def check_device(gpu):
    """Raise CaffeNotFound unless CUDA device ``gpu`` is usable by the CUDA build.

    Caffe aborts the whole process (glog FATAL) on a missing device or driver, so ask ``caffe device_query``
    in a child process first and turn its failure into one line.
    """
    proc = subprocess.run([str(caffe_binary(gpu=True)), "device_query", f"-gpu={int(gpu)}"],
                          capture_output=True, text=True, env={**os.environ, "GLOG_logtostderr": "1"})
    if proc.returncode != 0:
        lines = [ln.split("] ", 1)[-1] for ln in proc.stderr.splitlines() if "Check failed" in ln or "] " in ln]
        reason = next((ln for ln in lines if "Check failed" in ln), lines[-1] if lines else "no output")
        raise CaffeNotFound(f"CUDA device {gpu} is not usable: {reason}")


def _quiet_import():
    """Import pycaffe with glog's INFO/WARNING lines (net set-up chatter) off, for this process only.

    glog reads GLOG_minloglevel when libcaffe loads; it must not leak into the ``caffe`` subprocesses whose
    logs are the training record.
    """
    before = os.environ.get("GLOG_minloglevel")
    os.environ.setdefault("GLOG_minloglevel", "2")
    try:
        import caffe  # noqa: F401  (loads libcaffe while glog is quiet)
    finally:
        if before is None:
            del os.environ["GLOG_minloglevel"]


def _cpu_only():
    """Tell whether the loaded libcaffe is a CPU_ONLY build.

    pycaffe exposes no build flag, and ``set_device`` aborts the process in a CPU_ONLY build, so look for
    the message that only CPU_ONLY builds compile in, in the libcaffe this process has mapped.
    """
    marker = b"Cannot use GPU in CPU-only Caffe"
    with open("/proc/self/maps") as maps:
        libs = {line.split()[-1] for line in maps if "libcaffe" in line}
    return any(marker in Path(lib).read_bytes() for lib in libs)


def caffe_pb2():
    """Caffe's protobuf module (``caffe.proto.caffe_pb2``) of the selected build, CPU or CUDA; the mode is
    left as it is (:func:`pycaffe`)."""
    pycaffe()
    from caffe.proto import caffe_pb2 as pb2

    return pb2


# ------------------------------------------------------------------------------------------ Datum records
def encode_datum(patch, kind):
    """Serialise one (H, W) patch as a Caffe ``Datum`` for the LMDB Data layer.

    Parameters
    ----------
    patch : (H, W) array_like
    kind : {'data', 'label'}
        ``data``: float32 intensities in ``float_data`` (normalised values need float precision, and the
        Data layer then needs no scaling); ``label``: 0/1 as uint8 bytes in ``data`` (exact, 4x smaller).

    Returns
    -------
    bytes
    """
    patch = np.asarray(patch)
    datum = caffe_pb2().Datum(channels=1, height=patch.shape[0], width=patch.shape[1])
    if kind == "data":
        datum.float_data.extend(patch.astype(np.float32).ravel().tolist())
    elif kind == "label":
        datum.data = patch.astype(np.uint8).tobytes()
    else:
        raise ValueError(f"kind must be 'data' or 'label', got {kind!r}")
    return datum.SerializeToString()


def decode_datum(record):
    """The (H, W) float32 array of a serialised single-channel ``Datum`` (either encoding)."""
    datum = caffe_pb2().Datum.FromString(record)
    shape = (datum.height, datum.width)
    if datum.float_data:
        return np.asarray(datum.float_data, dtype=np.float32).reshape(shape)
    return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape).astype(np.float32)


# ------------------------------------------------------------------------------- nets and their weights
def read_model(model):
    """The NetParameter of a ``.caffemodel``.

    Raises
    ------
    InputError
        A missing or empty file, or not a binary NetParameter.
    """
    from google.protobuf.message import DecodeError

    model = Path(model)
    if not model.is_file() or model.stat().st_size == 0:
        raise InputError(f"model not found or empty: {model}")
    param = caffe_pb2().NetParameter()
    try:
        param.ParseFromString(model.read_bytes())
    except DecodeError:
        raise InputError(f"{model}: not a caffemodel (NetParameter) file") from None
    return param


def model_name(model):
    """The name of the net a ``.caffemodel`` was trained as (Caffe stores the train net's name)."""
    return read_model(model).name


def variant_name(net_name):
    """The variant part of a cellfcn net name, ``<variant>_deploy`` or ``<variant>_<stage>_<train|test>``
    (``caffe train`` stores the train net's name in the model); None for a name of another form."""
    match = _NET_NAME.match(net_name)
    return match.group(1) if match else None


def _blob_shape(blob):
    """Shape of a BlobProto (its ``shape`` field, or the legacy num/channels/height/width)."""
    return tuple(blob.shape.dim) if blob.HasField("shape") else (blob.num, blob.channels, blob.height, blob.width)


def check_weights(net, model, net_name=None):
    """Check that ``net`` and ``model`` hold the same learnable layers with the same shapes, and the same net.

    Caffe copies weights by layer name: it silently keeps the random initialisation of layers the file
    lacks, ignores layers of the file the net lacks (FCRN-A's weights fill pool2's net, whose layers are a
    subset of FCRN-A's), and aborts the process on a shape mismatch. All are errors here, before Caffe sees
    the file. A model of a cellfcn net must also carry the name of the net's variant (two variants may share
    layers and shapes).

    Parameters
    ----------
    net : caffe.Net
    model : path
        A ``.caffemodel`` (binary NetParameter).
    net_name : str, optional
        Name of the net's NetParameter (a deploy prototxt's ``name``); when it is a cellfcn name
        (:func:`variant_name`), the model's own name must give the same variant.

    Raises
    ------
    InputError
        Not a caffemodel, a layer missing on either side, a blob of another count or shape, or a model of
        another variant (the message names the layer or the nets).
    """
    param = read_model(model)
    saved = {layer.name: layer.blobs for layer in param.layer if layer.blobs}
    if not saved:
        raise InputError(f"{model}: not a caffemodel (no layer holds weights)")
    for name, blobs in net.params.items():
        if name not in saved:
            raise InputError(f"{model}: no weights for layer '{name}' of this net (a model of another net?)")
        if len(saved[name]) != len(blobs):
            raise InputError(f"{model}: layer '{name}' has {len(saved[name])} blobs, this net {len(blobs)}")
        for i, (got, want) in enumerate(zip(saved[name], blobs)):
            shape = _blob_shape(got)
            if int(np.prod(shape)) != want.data.size or (got.HasField("shape") and shape != want.data.shape):
                raise InputError(f"{model}: layer '{name}' blob {i} has shape {shape}, this net "
                                 f"{want.data.shape} (a model of another net?)")
    unused = [name for name in saved if name not in net.params]
    if unused:
        raise InputError(f"{model}: holds weights for layer '{unused[0]}' that this net lacks (a model of "
                         f"another net?)")
    want = variant_name(net_name or "")
    if want is not None:
        own = variant_name(param.name)
        if own != want:
            raise InputError(f"{model}: a model of net '{param.name}', not of this '{want}' net "
                             f"'{net_name}' (a model of another net)")


def net_from_param(net_param, gpu=None):
    """A ``caffe.Net`` (TEST phase, Caffe's initial weights) from a NetParameter message or prototxt text."""
    caffe = import_caffe(gpu)
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt") as handle:
        handle.write(str(net_param))
        handle.flush()
        return caffe.Net(handle.name, caffe.TEST)


def load_net(deploy, model, gpu=None):
    """The deploy net with a model's weights, checked both ways and by variant (:func:`check_weights`).

    Parameters
    ----------
    deploy : path
        Deploy prototxt: Input ``data`` -> ``prob``.
    model : path
        ``.caffemodel`` with weights for every learnable layer.
    gpu : int or None
        CUDA device id, or None for CPU.

    Returns
    -------
    caffe.Net
    """
    from google.protobuf import text_format

    deploy = Path(deploy)
    if not deploy.is_file():
        raise InputError(f"deploy prototxt not found: {deploy}")
    caffe = import_caffe(gpu)
    try:
        param = text_format.Parse(deploy.read_text(), caffe_pb2().NetParameter())
    except text_format.ParseError as err:
        raise InputError(f"{deploy}: not a Caffe net prototxt ({err})") from None
    net = caffe.Net(str(deploy), caffe.TEST)
    if "data" not in net.blobs or "prob" not in net.blobs:
        raise InputError(f"{deploy}: the net needs an input blob 'data' and an output blob 'prob'")
    check_weights(net, model, param.name)
    net.copy_from(str(model))
    return net


def _main(argv=None):
    """Print the resolved binary and pycaffe folder (``python -m cellfcn.caffe_env [--gpu]``)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m cellfcn.caffe_env", description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="resolve the CUDA build")
    parser.add_argument("--what", choices=("binary", "pycaffe", "both"), default="both")
    args = parser.parse_args(argv)
    if args.what in ("binary", "both"):
        print(caffe_binary(args.gpu))
    if args.what in ("pycaffe", "both"):
        print(pycaffe_dir(args.gpu))


def main(argv=None):
    """Run the command; return its exit status."""
    from .cli import run

    return run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
