"""Whole-image segmentation speed: the deploy FCRN-A on one 2048x2048 image, Caffe against PyTorch, MP/s.

Both frameworks run the product's own tiling, :func:`tools.infer.segment_image` (windows of ``--tile`` pixels
whose cores tile the image, ``--margin`` of context each side), so the benchmark times the code path that
``make evaluate`` and ``tools.segment`` use. Caffe's im2col buffers make one pass over a whole 2048x2048 image
need over 20 GB (conv7 alone: 576 x 2048^2 floats), so tiling is how Caffe segments large images;
``--tile 0`` runs the image whole anyway. Caffe and PyTorch share the same (random or given) weights, and the
run reports the largest difference between their probability maps.
"""
import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np

from bench import flops, harness, machine
from bench.train_step import build_info
from cellfcn import caffe_env
from prototxt.net import DEPLOY
from tools import infer


def window_shapes(size, tile, margin):
    """(height, width) of every window the product's tiling runs on a ``size`` x ``size`` image."""
    plan = infer.tile_plan(infer.pad_to_multiple(np.zeros((size, size), np.float32)).shape, tile, margin)
    return [(w[0].stop - w[0].start, w[1].stop - w[1].start) for w, _, _ in plan]


def test_image(size, seed):
    """A deterministic smooth-plus-noise float32 image in [0, 1] (the content does not change the speed)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = 0.5 + 0.25 * np.sin(40 * xx) * np.cos(40 * yy) + 0.1 * rng.standard_normal((size, size), np.float32)
    return np.clip(img, 0, 1).astype(np.float32)


class _Segmenter:
    """Runs :func:`tools.infer.segment_image` with one framework's ``_forward(net, window)``."""

    def __init__(self, size, tile, margin, seed, warmup):
        self.image = test_image(size, seed)
        # --tile 0: one window over the whole (padded) image.
        self.tile = tile or max(-(-size // 8) * 8, 2 * margin + 8)
        self.margin = margin
        self.warmup = warmup

    def _warm(self):
        y, x = window_shapes(len(self.image), self.tile, self.margin)[0]
        for _ in range(self.warmup):
            self._forward(self.net, self.image[:y, :x])

    def segment(self):
        """Probability of class 1 (cell) for the whole image."""
        return infer.segment_image(self.net, self.image, self.tile, self.margin, forward=self._forward)

    def run(self, steps):
        return harness.timed(self.segment, steps)

    def build_info(self):
        return build_info()


class CaffeSegment(_Segmenter):
    """pycaffe deploy net, loaded and run by tools.infer."""

    _forward = staticmethod(infer.forward_image)

    def __init__(self, size, tile, margin, seed, warmup, weights=None):
        from bench import fcrn_torch

        super().__init__(size, tile, margin, seed, warmup)
        caffe = caffe_env.import_caffe()
        caffe.set_random_seed(seed)
        self.net = infer.load_model(weights) if weights else caffe.Net(str(DEPLOY), caffe.TEST)
        self.params = fcrn_torch.caffe_params(self.net)
        self._warm()

    def get_params(self):
        return self.params


class TorchSegment(_Segmenter):
    """PyTorch FCRN-A with Caffe's weights, softmax over the two classes, inference mode."""

    def __init__(self, size, tile, margin, seed, warmup, threads, params):
        import torch

        from bench import fcrn_torch

        super().__init__(size, tile, margin, seed, warmup)
        torch.set_num_threads(threads)
        self.net = fcrn_torch.load_params(fcrn_torch.FCRNA(), params).eval()
        self._warm()

    @staticmethod
    def _forward(model, window):
        import torch

        with torch.inference_mode():
            scores = model(torch.from_numpy(np.ascontiguousarray(window))[None, None])
            return torch.softmax(scores, dim=1)[0, 1].numpy().copy()


def run(size=2048, tile=infer.TILE, margin=infer.MARGIN, threads=None, rounds=3, warmup=1, seed=0, weights=None,
        variants=None):
    """Benchmark whole-image segmentation; return the results dict.

    ``variants`` maps a label to environment overrides for extra Caffe workers "caffe:<label>" (as in
    bench.train_step), alternated with the others.
    """
    threads = threads or len(os.sched_getaffinity(0))
    info = machine.describe(threads)
    common = dict(size=size, tile=tile, margin=margin, seed=seed, warmup=warmup)
    workers = []
    try:
        for label, env in [("caffe", {})] + [(f"caffe:{k}", v) for k, v in (variants or {}).items()]:
            workers.append(harness.Worker(label, "bench.segment:CaffeSegment", dict(common, weights=weights),
                                          threads, env))
        workers.append(harness.Worker("torch", "bench.segment:TorchSegment", dict(
            common, threads=threads, params=workers[0].call("get_params")), threads))
        probs = {w.label: w.call("segment") for w in workers}
        diff = float(np.abs(probs["caffe"] - probs["torch"]).max())
        engine_diff = {label: float(np.abs(p - probs["caffe"]).max()) for label, p in probs.items()
                       if label.startswith("caffe:")}
        shapes = window_shapes(size, tile or max(-(-size // 8) * 8, 2 * margin + 8), margin)
        print(f"segmenting {size}x{size} in {len(shapes)} window(s), {threads} "
              f"threads, {rounds} rounds", file=sys.stderr)
        times = harness.alternate(workers, rounds, 1)
        build = {w.label: w.call("build_info") for w in workers}
    finally:
        for w in workers:
            w.close()
    # FLOPs actually computed: each window, margins included.
    computed = sum(flops.forward_flops(h, w) for h, w in shapes)
    mp = size * size / 1e6
    result = dict(benchmark="segment", size=size, tile=tile, margin=margin, windows=len(shapes), threads=threads,
                  rounds=rounds, gflop_computed=round(computed / 1e9, 1), max_abs_prob_diff=diff,
                  max_abs_prob_diff_to_default=engine_diff, machine=info, build=build)
    for label, tt in times.items():
        t = tt["wall"]
        median = statistics.median(t)
        gflops = computed / median / 1e9
        result[label] = dict(seconds=round(median, 3), cpu_seconds=round(statistics.median(tt["cpu"]), 3),
                             round_s=[round(x, 3) for x in t],
                             mp_per_s=round(mp / median, 4), gflops=round(gflops, 1),
                             pct_peak=round(100 * gflops / info["fp32_peak_gflops"], 1))
    for label in times:
        if label != "torch":
            result[label]["ratio_over_torch"] = round(result[label]["mp_per_s"] / result["torch"]["mp_per_s"], 3)
    result["ratio_caffe_over_torch"] = result["caffe"]["ratio_over_torch"]
    return result


def format_report(r):
    """Human-readable summary of :func:`run`'s result."""
    tiling = "whole image" if r["tile"] == 0 else \
        f"{r['windows']} windows of up to {r['tile']} px with {r['margin']} px margins (tools.infer)"
    lines = [f"deploy FCRN-A on one {r['size']}x{r['size']} image ({tiling}), {r['threads']} threads, "
             f"{r['gflop_computed']} GFLOP computed, load average {r['machine']['load_average_1min']}"]
    for label in [k for k in r if k == "torch" or k.startswith("caffe")]:
        s = r[label]
        lines.append(f"  {label:12s} {s['seconds']:8.2f} s  {s['mp_per_s']:7.3f} MP/s  {s['gflops']:6.1f} GFLOP/s "
                     f"({s['pct_peak']:.0f}% of peak)")
    lines.append(f"  Caffe / PyTorch: {r['ratio_caffe_over_torch']:.2f}; largest probability difference "
                 f"{r['max_abs_prob_diff']:.2e}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.segment", description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048, help="image side, a multiple of 8 (default 2048)")
    p.add_argument("--tile", type=int, default=infer.TILE,
                   help="window side, a multiple of 8; 0: whole image (default %(default)s, as tools.infer)")
    p.add_argument("--margin", type=int, default=infer.MARGIN,
                   help="context on each window side, a multiple of 8 (default %(default)s, as tools.infer)")
    p.add_argument("--threads", type=int, default=None, help="threads for both (default: all usable CPUs)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed forward passes over one tile (default 1)")
    p.add_argument("--weights", help="a .caffemodel for the deploy net (default: Caffe's random fillers)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", action="append", default=[], metavar="LABEL=VAR=VALUE[,VAR=VALUE]",
                   help=harness.VARIANT_HELP)
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    error = None
    if a.size <= 0 or a.size % 8 or a.tile < 0 or a.tile % 8 or a.margin < 0 or a.margin % 8 or \
            (a.tile and a.tile <= 2 * a.margin):
        error = "--size must be a positive multiple of 8; --tile and --margin non-negative multiples of 8, " \
                "--tile > 2 * --margin"
    elif a.rounds < 1 or a.warmup < 0 or (a.threads is not None and a.threads < 1):
        error = "--rounds and --threads must be >= 1, --warmup >= 0"
    elif a.weights and not Path(a.weights).is_file():
        error = f"weights file not found: {a.weights}"
    try:
        variants = harness.parse_variants(a.variant)
    except ValueError as e:
        error = error or str(e)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return harness.run_and_report(
        lambda: run(a.size, a.tile, a.margin, a.threads, a.rounds, a.warmup, a.seed, a.weights, variants),
        format_report, a.json)


if __name__ == "__main__":
    sys.exit(main())
