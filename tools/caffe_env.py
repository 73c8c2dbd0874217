"""Find the Caffe build every tool uses: the ``caffe`` binary and pycaffe.

Resolution order, for both the CPU and the CUDA build:

1. ``CAFFE`` (path to the ``caffe`` binary) and ``PYCAFFE`` (folder holding the ``caffe`` package);
2. ``CAFFE_ROOT``: an install prefix or a source tree with a ``build/`` folder;
3. the project's own build, ``.caffe/`` (CPU) or ``.caffe-cuda/`` (``gpu=True``), made by ``make caffe``.
"""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_PYCAFFE_SUBDIRS = ("lib/python3/dist-packages", "python")


class CaffeNotFound(RuntimeError):
    """Raised when no usable Caffe build is found."""


def _prefix(gpu):
    root = os.environ.get("CAFFE_ROOT")
    if root:
        return Path(root)
    return REPO / (".caffe-cuda" if gpu else ".caffe")


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
    hint = "make caffe GPU=1" if gpu else "make caffe"
    raise CaffeNotFound(f"caffe binary not found at {candidates[0]}: run '{hint}' or set CAFFE/CAFFE_ROOT")


def pycaffe_dir(gpu=False):
    """Return the folder that holds the ``caffe`` Python package."""
    explicit = os.environ.get("PYCAFFE")
    candidates = [Path(explicit)] if explicit else [_prefix(gpu) / sub for sub in _PYCAFFE_SUBDIRS]
    for path in candidates:
        if (path / "caffe" / "__init__.py").is_file():
            return path
    hint = "make caffe GPU=1" if gpu else "make caffe"
    raise CaffeNotFound(f"pycaffe not found under {candidates[0]}: run '{hint}' or set PYCAFFE/CAFFE_ROOT")


def import_caffe(gpu=None):
    """Import pycaffe from the selected build and set its mode.

    Parameters
    ----------
    gpu : int or None
        CUDA device id, or None for CPU mode.

    Returns
    -------
    module
        The ``caffe`` module.
    """
    path = str(pycaffe_dir(gpu is not None))
    if "caffe" in sys.modules:
        loaded = Path(sys.modules["caffe"].__file__).resolve()
        if not loaded.is_relative_to(Path(path).resolve()):
            raise CaffeNotFound(f"pycaffe already imported from {loaded}, not from {path}")
    else:
        if path not in sys.path:
            sys.path.insert(0, path)
        _quiet_import()
    import caffe

    if gpu is None:
        caffe.set_mode_cpu()
    else:
        if _cpu_only(caffe):
            raise CaffeNotFound(f"GPU requested but the Caffe at {path} is CPU-only: run 'make caffe GPU=1'")
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
                          capture_output=True, text=True)
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
        import caffe  # noqa: F401
    finally:
        if before is None:
            del os.environ["GLOG_minloglevel"]


def _cpu_only(caffe):
    """Tell whether the loaded libcaffe is a CPU_ONLY build.

    pycaffe exposes no build flag, and ``set_device`` aborts the process in a CPU_ONLY build, so look for
    the message that only CPU_ONLY builds compile in, in the libcaffe this process has mapped.
    """
    marker = b"Cannot use GPU in CPU-only Caffe"
    with open("/proc/self/maps") as maps:
        libs = {line.split()[-1] for line in maps if "libcaffe" in line}
    return any(marker in Path(lib).read_bytes() for lib in libs)


def main(argv=None):
    """Print the resolved binary and pycaffe folder (``python tools/caffe_env.py [--gpu]``)."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="resolve the CUDA build")
    parser.add_argument("--what", choices=("binary", "pycaffe", "both"), default="both")
    args = parser.parse_args(argv)
    try:
        if args.what in ("binary", "both"):
            print(caffe_binary(args.gpu))
        if args.what in ("pycaffe", "both"):
            print(pycaffe_dir(args.gpu))
    except CaffeNotFound as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
