"""What the benchmarks ran on: CPU model, cores, clock, SIMD width, and the fp32 peak, measured.

The peak every "% of peak" divides by is measured (:func:`measure_fp32_peak`): a C loop of independent
fused multiply-adds on the widest vectors the compiler targets (``-march=native``), one thread per benchmark
thread, all at once, for about a second. Each thread's rate is its FLOPs over its own CPU time, best of
50 ms windows, so other processes time-slicing the cores do not lower it; the sum over threads is the peak.
A figure derived from /proc/cpuinfo's ``cpu MHz`` is not a bound: under a hypervisor that is the nominal
(TSC) clock while the cores boost above it (conv5 showed "107%" of such a peak on a 2.445 GHz AMD EPYC).

The nominal figure is kept beside it: cores x clock x FMA pipes x SIMD lanes x 2 (an FMA is a multiply and
an add). Lanes: 8 fp32 with AVX2, 16 with AVX-512, except on AMD Zen 4, which runs 512-bit FMAs as two
256-bit halves (so it stays at 8 per pipe and cycle). Two FMA pipes per core on every AVX2-era x86 core
(Intel Haswell and later, AMD Zen 1-4).
"""
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from cellfcn.errors import CellfcnError
from cellfcn.machine import cpuinfo

FMA_PIPES = 2
PEAK_SECONDS = 1.0
# CHAINS independent accumulators hide the FMA latency (4-5 cycles) on two pipes; each thread prints its best
# rate over WINDOW seconds of its own CPU time. The loop converges to 1.0: no denormals, no overflow.
FMA_LOOP = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#if defined(__AVX512F__)
#define LANES 16
#elif defined(__AVX__)
#define LANES 8
#else
#define LANES 4
#endif
#define CHAINS 12
#define WINDOW 0.05
typedef float vec __attribute__((vector_size(LANES * sizeof(float))));
static double seconds;

static double now(clockid_t clock) {
    struct timespec t;
    clock_gettime(clock, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static void *work(void *arg) {
    double *best = arg;
    vec acc[CHAINS], a = (vec){0} + 0.999999f, b = (vec){0} + 1e-6f;
    for (int i = 0; i < CHAINS; i++) acc[i] = (vec){0} + 1e-3f * (i + 1);
    double end = now(CLOCK_MONOTONIC) + seconds;
    *best = 0;
    while (now(CLOCK_MONOTONIC) < end) {
        double start = now(CLOCK_THREAD_CPUTIME_ID), cpu;
        long n = 0;
        do {
            for (int r = 0; r < 1000; r++) {
#pragma GCC unroll 16
                for (int i = 0; i < CHAINS; i++) acc[i] = acc[i] * a + b;
            }
            n += 1000;
            cpu = now(CLOCK_THREAD_CPUTIME_ID) - start;
        } while (cpu < WINDOW);
        if (2.0 * LANES * CHAINS * n / cpu > *best) *best = 2.0 * LANES * CHAINS * n / cpu;
    }
    float sink = 0;
    for (int i = 0; i < CHAINS; i++)
        for (int l = 0; l < LANES; l++) sink += acc[i][l];
    if (sink != sink) *best = -1;  /* uses the chains, so the compiler keeps them */
    return NULL;
}

int main(int argc, char **argv) {
    int threads = atoi(argv[1]);
    seconds = atof(argv[2]);
    pthread_t tid[threads];
    double best[threads];
    for (int t = 0; t < threads; t++) pthread_create(&tid[t], NULL, work, &best[t]);
    for (int t = 0; t < threads; t++) pthread_join(tid[t], NULL);
    printf("%d", LANES);
    for (int t = 0; t < threads; t++) printf(" %.6e", best[t]);
    printf("\n");
    return 0;
}
"""


def fp32_lanes(info):
    """fp32 lanes per FMA and cycle: 16 (AVX-512 at full width), 8 (AVX2+FMA, or Zen 4's AVX-512), else 4."""
    flags = info["flags"]
    if "avx512f" in flags and not (info["vendor"] == "AuthenticAMD" and info["family"] == 25):
        return 16
    if {"avx2", "fma"} <= flags or "avx512f" in flags:
        return 8
    return 4


def _simd(lanes):
    return "AVX-512" if lanes == 16 else ("AVX2" if lanes == 8 else "SSE")


def fp32_nominal_peak(info, threads):
    """fp32 GFLOP/s of ``threads`` cores at /proc/cpuinfo's clock and how it was derived (a one-line formula);
    not a bound (see the module docstring): only a reference beside :func:`measure_fp32_peak`."""
    lanes = fp32_lanes(info)
    ghz = info["mhz"] / 1000.0
    peak = threads * ghz * FMA_PIPES * lanes * 2
    return peak, (f"{threads} cores x {ghz:.3f} GHz x {FMA_PIPES} FMA pipes x {lanes} fp32 lanes "
                  f"({_simd(lanes)}) x 2 FLOP/FMA = {peak:.1f} GFLOP/s")


def measure_fp32_peak(threads, seconds=PEAK_SECONDS):
    """Measure the fp32 FMA throughput of ``threads`` threads running at once (C, compiled here and now).

    Parameters
    ----------
    threads : int
        Threads, one per core a benchmark uses.
    seconds : float
        How long every thread runs.

    Returns
    -------
    peak : float
        GFLOP/s: the sum over threads of each one's best rate (by its own CPU time).
    how : str
        One line: what ran and each thread's rate.

    Raises
    ------
    CellfcnError
        No C compiler, or the loop did not build or run.
    """
    if threads < 1 or seconds <= 0:
        raise ValueError(f"need threads >= 1 and seconds > 0, got {threads} and {seconds}")
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        raise CellfcnError(f"no C compiler ({compiler}) to measure the fp32 peak with: install gcc (make deps)")
    with tempfile.TemporaryDirectory(prefix="fma-peak-") as tmp:
        source, binary = Path(tmp) / "fma.c", Path(tmp) / "fma"
        source.write_text(FMA_LOOP)
        build = subprocess.run([compiler, "-O2", "-march=native", "-ffp-contract=fast", "-pthread", "-o",
                                str(binary), str(source)], capture_output=True, text=True)
        if build.returncode != 0:
            raise CellfcnError(f"the fp32 peak loop did not compile: {(build.stderr.strip() or 'no output')[:300]}")
        proc = subprocess.run([str(binary), str(int(threads)), str(seconds)], capture_output=True, text=True)
    values = proc.stdout.split()
    if proc.returncode != 0 or len(values) != threads + 1 or any(float(v) <= 0 for v in values[1:]):
        raise CellfcnError(f"the fp32 peak loop failed (exit {proc.returncode}): {proc.stdout.strip()}")
    lanes, rates = int(values[0]), [float(v) / 1e9 for v in values[1:]]
    per_thread = ", ".join(f"{r:.1f}" for r in rates)
    return sum(rates), (f"measured: {threads} threads of fp32 FMAs ({_simd(lanes)}, {lanes} lanes) at once for "
                        f"{seconds:g} s, best 50 ms of each thread's CPU time: {per_thread} GFLOP/s = "
                        f"{sum(rates):.1f} GFLOP/s")


def load_average():
    """1-minute load average (other processes skew timings on a shared machine)."""
    return os.getloadavg()[0]


def describe(threads):
    """Everything a results file records about the machine, the fp32 peak measured on ``threads`` threads
    (``fp32_peak_gflops``, what every "% of peak" divides by) and the nominal one beside it."""
    info = cpuinfo()
    load = load_average()  # before the peak loop loads the cores
    peak, how = measure_fp32_peak(threads)
    nominal, nominal_how = fp32_nominal_peak(info, threads)
    return dict(cpu=info["model"], logical_cpus=info["cores"], mhz=info["mhz"], threads=threads,
                simd_lanes_fp32=fp32_lanes(info), fp32_peak_gflops=round(peak, 1), peak_derivation=how,
                fp32_nominal_gflops=round(nominal, 1), nominal_derivation=nominal_how,
                load_average_1min=round(load, 2), kernel=platform.release())
