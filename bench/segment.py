"""Whole-image segmentation speed: the deploy FCRN-A on one 2048x2048 image, Caffe against PyTorch, MP/s.

Both frameworks cut the image into the same tiles (``--tile`` pixels plus a ``--halo`` of context on each
side, cropped off again; the halo exceeds the net's receptive-field radius of 33 pixels, and tile origins are
multiples of 8 so the pooling grid matches the whole image's). Caffe's im2col buffers make one pass over a
whole 2048x2048 image need over 20 GB (conv7 alone: 576 x 2048^2 floats), so tiling is how Caffe segments
large images; ``--tile 0`` runs the image whole anyway. Caffe and PyTorch share the same (random or given)
weights, and the run reports the largest difference between their probability maps.
"""
import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make `bench` importable like under the venv's .pth
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import flops, harness, machine, nets  # noqa: E402
from bench.train_step import build_info, write_json  # noqa: E402


def tiles(height, width, tile, halo):
    """Split an image into tiles with context.

    Parameters
    ----------
    height, width : int
        Image size, multiples of 8.
    tile : int
        Tile side (a multiple of 8), or 0 for the whole image as one tile.
    halo : int
        Context added on each side where the image allows it (a multiple of 8).

    Returns
    -------
    list of tuple
        ((y0, y1, x0, x1) input window, (y0, y1, x0, x1) output region in image coordinates).
    """
    if tile == 0:
        return [((0, height, 0, width), (0, height, 0, width))]
    out = []
    for ty in range(0, height, tile):
        for tx in range(0, width, tile):
            oy1, ox1 = min(ty + tile, height), min(tx + tile, width)
            window = (max(ty - halo, 0), min(oy1 + halo, height), max(tx - halo, 0), min(ox1 + halo, width))
            out.append((window, (ty, oy1, tx, ox1)))
    return out


def test_image(size, seed):
    """A deterministic smooth-plus-noise float32 image in [0, 1] (the content does not change the speed)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = 0.5 + 0.25 * np.sin(40 * xx) * np.cos(40 * yy) + 0.1 * rng.standard_normal((size, size), np.float32)
    return np.clip(img, 0, 1).astype(np.float32)


class _Segmenter:
    """Runs one framework's ``_forward(window) -> prob of class 1`` over the tiles of the image."""

    def __init__(self, size, tile, halo, seed, warmup):
        self.image = test_image(size, seed)
        self.tiles = tiles(size, size, tile, halo)
        self.warmup = warmup

    def _warm(self):
        (y0, y1, x0, x1), _ = self.tiles[0]
        for _ in range(self.warmup):
            self._forward(self.image[y0:y1, x0:x1])

    def segment(self):
        """Probability of class 1 (cell) for the whole image."""
        out = np.empty_like(self.image)
        for (y0, y1, x0, x1), (oy0, oy1, ox0, ox1) in self.tiles:
            prob = self._forward(self.image[y0:y1, x0:x1])
            out[oy0:oy1, ox0:ox1] = prob[oy0 - y0:oy1 - y0, ox0 - x0:ox1 - x0]
        return out

    def run(self, steps):
        return harness.timed(self.segment, steps)

    def build_info(self):
        return build_info()


class CaffeSegment(_Segmenter):
    """pycaffe deploy net, reshaped to each tile."""

    def __init__(self, size, tile, halo, seed, warmup, weights=None):
        from tools import caffe_env

        from bench import fcrn_torch

        super().__init__(size, tile, halo, seed, warmup)
        caffe = caffe_env.import_caffe()
        caffe.set_random_seed(seed)
        self.net = caffe.Net(str(nets.DEPLOY), caffe.TEST, **({"weights": weights} if weights else {}))
        self.params = fcrn_torch.caffe_params(self.net)
        self._warm()

    def get_params(self):
        return self.params

    def _forward(self, window):
        blob = self.net.blobs["data"]
        blob.reshape(1, 1, *window.shape)
        self.net.reshape()
        blob.data[0, 0] = window
        return self.net.forward()["prob"][0, 1].copy()


class TorchSegment(_Segmenter):
    """PyTorch FCRN-A with Caffe's weights, softmax over the two classes, inference mode."""

    def __init__(self, size, tile, halo, seed, warmup, threads, params):
        import torch

        from bench import fcrn_torch

        super().__init__(size, tile, halo, seed, warmup)
        torch.set_num_threads(threads)
        self.torch = torch
        self.model = fcrn_torch.load_params(fcrn_torch.FCRNA(), params).eval()
        self._warm()

    def _forward(self, window):
        torch = self.torch
        with torch.inference_mode():
            scores = self.model(torch.from_numpy(np.ascontiguousarray(window))[None, None])
            return torch.softmax(scores, dim=1)[0, 1].numpy().copy()


def run(size=2048, tile=512, halo=40, threads=None, rounds=3, warmup=1, seed=0, weights=None):
    """Benchmark whole-image segmentation; return the results dict."""
    threads = threads or len(os.sched_getaffinity(0))
    info = machine.describe(threads)
    common = dict(size=size, tile=tile, halo=halo, seed=seed, warmup=warmup)
    caffe_w = harness.Worker("caffe", "bench.segment:CaffeSegment", dict(common, weights=weights), threads)
    try:
        torch_w = harness.Worker("torch", "bench.segment:TorchSegment", dict(
            common, threads=threads, params=caffe_w.call("get_params")), threads)
        try:
            diff = float(np.abs(caffe_w.call("segment") - torch_w.call("segment")).max())
            print(f"segmenting {size}x{size} in {len(tiles(size, size, tile, halo))} tile(s), {threads} "
                  f"threads, {rounds} rounds", file=sys.stderr)
            times = harness.alternate([caffe_w, torch_w], rounds, 1)
            build = {w.label: w.call("build_info") for w in (caffe_w, torch_w)}
        finally:
            torch_w.close()
    finally:
        caffe_w.close()
    # FLOPs actually computed: each tile's window, halo included.
    computed = sum(flops.forward_flops(y1 - y0, x1 - x0) for (y0, y1, x0, x1), _ in tiles(size, size, tile, halo))
    mp = size * size / 1e6
    result = dict(benchmark="segment", size=size, tile=tile, halo=halo, threads=threads, rounds=rounds,
                  gflop_computed=round(computed / 1e9, 1), max_abs_prob_diff=diff, machine=info, build=build)
    for label, tt in times.items():
        t = tt["wall"]
        median = statistics.median(t)
        gflops = computed / median / 1e9
        result[label] = dict(seconds=round(median, 3), cpu_seconds=round(statistics.median(tt["cpu"]), 3),
                             round_s=[round(x, 3) for x in t],
                             mp_per_s=round(mp / median, 4), gflops=round(gflops, 1),
                             pct_peak=round(100 * gflops / info["fp32_peak_gflops"], 1))
    result["ratio_caffe_over_torch"] = round(result["caffe"]["mp_per_s"] / result["torch"]["mp_per_s"], 3)
    return result


def format_report(r):
    """Human-readable summary of :func:`run`'s result."""
    tiling = "whole image" if r["tile"] == 0 else f"tiles of {r['tile']} + {r['halo']} px halo"
    lines = [f"deploy FCRN-A on one {r['size']}x{r['size']} image ({tiling}), {r['threads']} threads, "
             f"{r['gflop_computed']} GFLOP computed, load average {r['machine']['load_average_1min']}"]
    for label in ("caffe", "torch"):
        s = r[label]
        lines.append(f"  {label:6s} {s['seconds']:8.2f} s  {s['mp_per_s']:7.3f} MP/s  {s['gflops']:6.1f} GFLOP/s "
                     f"({s['pct_peak']:.0f}% of peak)")
    lines.append(f"  Caffe / PyTorch: {r['ratio_caffe_over_torch']:.2f}; largest probability difference "
                 f"{r['max_abs_prob_diff']:.2e}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048, help="image side, a multiple of 8 (default 2048)")
    p.add_argument("--tile", type=int, default=512, help="tile side, a multiple of 8; 0: whole image (default 512)")
    p.add_argument("--halo", type=int, default=40, help="context on each tile side, a multiple of 8 (default 40)")
    p.add_argument("--threads", type=int, default=None, help="threads for both (default: all usable CPUs)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed forward passes over one tile (default 1)")
    p.add_argument("--weights", help="a .caffemodel for the deploy net (default: Caffe's random fillers)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    error = None
    if a.size <= 0 or a.size % 8 or a.tile < 0 or a.tile % 8 or a.halo < 0 or a.halo % 8:
        error = "--size must be a positive multiple of 8; --tile and --halo non-negative multiples of 8"
    elif a.rounds < 1 or a.warmup < 0 or (a.threads is not None and a.threads < 1):
        error = "--rounds and --threads must be >= 1, --warmup >= 0"
    elif a.weights and not Path(a.weights).is_file():
        error = f"weights file not found: {a.weights}"
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        result = run(a.size, a.tile, a.halo, a.threads, a.rounds, a.warmup, a.seed, a.weights)
    except (harness.WorkerError, RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_report(result))
    if a.json:
        write_json(a.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
