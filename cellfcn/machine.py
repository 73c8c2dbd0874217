"""The machine a run is on, as the benchmarks, the report and the README's tables name it, and the thread counts a
run pins (one definition for training, segmentation workers and benchmarks)."""
import os
import platform
import re
from pathlib import Path


def cpuinfo(text=None):
    """Parse /proc/cpuinfo (or ``text``) into the fields the benchmarks report.

    Returns
    -------
    dict
        ``model``, ``vendor``, ``family``, ``cores`` (logical CPUs this process may use), ``mhz``, ``flags``
        (set of str).
    """
    if text is None:
        text = Path("/proc/cpuinfo").read_text()
    first = text.split("\n\n")[0]
    fields = dict(re.findall(r"^([^\t:]+?)\s*:\s*(.*)$", first, flags=re.M))
    mhz = [float(v) for v in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", text, flags=re.M)]
    return dict(model=fields.get("model name", platform.processor() or "unknown"),
                vendor=fields.get("vendor_id", ""), family=int(fields.get("cpu family", 0) or 0),
                cores=len(os.sched_getaffinity(0)), mhz=max(mhz) if mhz else 0.0,
                flags=set(fields.get("flags", "").split()))


def thread_env(threads):
    """Environment variables that fix Caffe's OpenMP (oneDNN) and the BLAS pools at ``threads`` threads; set
    them before the libraries load (each reads its variable once)."""
    return dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"), str(int(threads)))
