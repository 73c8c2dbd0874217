"""What the benchmarks ran on: CPU model, cores, clock, SIMD width and the fp32 peak derived from them.

Peak fp32 FLOP/s = cores x clock x FMA pipes x SIMD lanes x 2 (an FMA is a multiply and an add).
The clock is /proc/cpuinfo's ``cpu MHz``: under a hypervisor that is the nominal (TSC) clock, so a boosting
core can exceed the figure a little. Lanes: 8 fp32 with AVX2, 16 with AVX-512, except on AMD Zen 4, which
runs 512-bit FMAs as two 256-bit halves (so it stays at 8 per pipe and cycle). Two FMA pipes per core on
every AVX2-era x86 core (Intel Haswell and later, AMD Zen 1-4).
"""
import os
import platform
import re
from pathlib import Path

FMA_PIPES = 2


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


def fp32_lanes(info):
    """fp32 lanes per FMA and cycle: 16 (AVX-512 at full width), 8 (AVX2+FMA, or Zen 4's AVX-512), else 4."""
    flags = info["flags"]
    if "avx512f" in flags and not (info["vendor"] == "AuthenticAMD" and info["family"] == 25):
        return 16
    if {"avx2", "fma"} <= flags or "avx512f" in flags:
        return 8
    return 4


def fp32_peak(info, threads):
    """Peak fp32 GFLOP/s of ``threads`` cores and how it was derived (a one-line formula)."""
    lanes = fp32_lanes(info)
    ghz = info["mhz"] / 1000.0
    peak = threads * ghz * FMA_PIPES * lanes * 2
    simd = "AVX-512" if lanes == 16 else ("AVX2" if lanes == 8 else "SSE")
    return peak, (f"{threads} cores x {ghz:.3f} GHz x {FMA_PIPES} FMA pipes x {lanes} fp32 lanes ({simd}) "
                  f"x 2 FLOP/FMA = {peak:.1f} GFLOP/s")


def load_average():
    """1-minute load average (other processes skew timings on a shared machine)."""
    return os.getloadavg()[0]


def describe(threads):
    """Everything a results file records about the machine."""
    info = cpuinfo()
    peak, how = fp32_peak(info, threads)
    return dict(cpu=info["model"], logical_cpus=info["cores"], mhz=info["mhz"], threads=threads,
                simd_lanes_fp32=fp32_lanes(info), fp32_peak_gflops=round(peak, 1), peak_derivation=how,
                load_average_1min=round(load_average(), 2), kernel=platform.release())
