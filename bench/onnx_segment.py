"""Whole-image segmentation speed of the exported model: onnxruntime against our Caffe, MP/s.

Both run the product's tiling, :func:`tools.infer.segment_image`, over bench.segment's 2048x2048 test image,
each in its own worker process with the same threads and the same weights (Caffe's seeded random fillers, or
``--weights``); the ONNX graph is :func:`tools.export.onnx_model` of that Caffe net, run as ``tools.segment``
would run it (:mod:`tools.onnx_engine`). The run reports the onnxruntime / Caffe speed ratio and the largest
difference between the two probability maps.
"""
import argparse
import os
import statistics
import sys
from pathlib import Path

from bench import harness, machine, segment
from cellfcn import caffe_env
from prototxt.net import DEPLOY
from tools import infer


def _caffe_net(seed, weights):
    """(caffe.Net, deploy prototxt): ``weights`` loaded and checked, or the deploy FCRN-A with Caffe's fillers
    seeded by ``seed`` (the same weights in every worker)."""
    caffe = caffe_env.import_caffe()
    caffe.set_random_seed(seed)
    if weights:
        return infer.load_model(weights), infer.deploy_for(weights)
    return caffe.Net(str(DEPLOY), caffe.TEST), DEPLOY


class CaffeSegment(segment._Segmenter):
    """pycaffe deploy net run by tools.infer (bench.segment's without the PyTorch peer's weights)."""

    _forward = staticmethod(infer.forward_image)

    def __init__(self, size, tile, margin, seed, warmup, weights=None):
        super().__init__(size, tile, margin, seed, warmup)
        self.net = _caffe_net(seed, weights)[0]
        self._warm()


class OnnxSegment(segment._Segmenter):
    """The Caffe net's ONNX graph in onnxruntime, run by tools.infer's tiling through tools.onnx_engine."""

    def __init__(self, size, tile, margin, seed, warmup, threads, weights=None):
        from google.protobuf import text_format

        from tools import export, onnx_engine

        super().__init__(size, tile, margin, seed, warmup)
        net, deploy = _caffe_net(seed, weights)
        param = text_format.Parse(Path(deploy).read_text(), caffe_env.caffe_pb2().NetParameter())
        self.net = onnx_engine.load_session(export.onnx_model(param, net).SerializeToString(), threads)
        self._forward = onnx_engine.forward
        self._warm()

    def build_info(self):
        import onnxruntime

        return {"onnxruntime": onnxruntime.__version__}


def run(size=2048, tile=infer.TILE, margin=infer.MARGIN, threads=None, rounds=3, warmup=1, seed=0, weights=None):
    """Benchmark whole-image segmentation, onnxruntime against Caffe; return the results dict."""
    import numpy as np

    threads = threads or len(os.sched_getaffinity(0))
    info = machine.describe(threads)
    common = dict(size=size, tile=tile, margin=margin, seed=seed, warmup=warmup, weights=weights)
    workers = []
    try:
        workers.append(harness.Worker("caffe", "bench.onnx_segment:CaffeSegment", common, threads))
        workers.append(harness.Worker("onnx", "bench.onnx_segment:OnnxSegment", dict(common, threads=threads),
                                      threads))
        probs = {w.label: w.call("segment") for w in workers}
        diff = float(np.abs(probs["caffe"] - probs["onnx"]).max())
        shapes = segment.window_shapes(size, tile or max(-(-size // 8) * 8, 2 * margin + 8), margin)
        print(f"segmenting {size}x{size} in {len(shapes)} window(s), {threads} threads, {rounds} rounds",
              file=sys.stderr)
        times = harness.alternate(workers, rounds, 1)
        build = {w.label: w.call("build_info") for w in workers}
    finally:
        for w in workers:
            w.close()
    mp = size * size / 1e6
    result = dict(benchmark="onnx_segment", size=size, tile=tile, margin=margin, windows=len(shapes),
                  threads=threads, rounds=rounds, max_abs_prob_diff=diff, machine=info, build=build)
    for label, tt in times.items():
        median = statistics.median(tt["wall"])
        result[label] = dict(seconds=round(median, 3), cpu_seconds=round(statistics.median(tt["cpu"]), 3),
                             round_s=[round(x, 3) for x in tt["wall"]], mp_per_s=round(mp / median, 4))
    result["ratio_onnx_over_caffe"] = round(result["onnx"]["mp_per_s"] / result["caffe"]["mp_per_s"], 3)
    return result


def format_report(r):
    """Human-readable summary of :func:`run`'s result."""
    lines = [f"exported FCRN-A on one {r['size']}x{r['size']} image ({r['windows']} windows of up to {r['tile']} px, "
             f"tools.infer), {r['threads']} threads, load average {r['machine']['load_average_1min']}"]
    for label, name in (("caffe", "Caffe"), ("onnx", f"onnxruntime {r['build']['onnx']['onnxruntime']}")):
        lines.append(f"  {name:18s} {r[label]['seconds']:8.2f} s  {r[label]['mp_per_s']:7.3f} MP/s")
    lines.append(f"  onnxruntime / Caffe: {r['ratio_onnx_over_caffe']:.2f}; largest probability difference "
                 f"{r['max_abs_prob_diff']:.2e}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.onnx_segment", description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048, help="image side, a multiple of 8 (default 2048)")
    p.add_argument("--tile", type=int, default=infer.TILE, help="window side, a multiple of 8 (default %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="threads for both (default: all usable CPUs)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    p.add_argument("--weights", help="a .caffemodel (default: Caffe's random fillers)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    error = None
    if a.size <= 0 or a.size % 8 or a.tile % 8 or a.tile <= 2 * infer.MARGIN:
        error = f"--size must be a positive multiple of 8, --tile a multiple of 8 above {2 * infer.MARGIN}"
    elif a.rounds < 1 or (a.threads is not None and a.threads < 1):
        error = "--rounds and --threads must be >= 1"
    elif a.weights and not Path(a.weights).is_file():
        error = f"weights file not found: {a.weights}"
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return harness.run_and_report(lambda: run(a.size, a.tile, infer.MARGIN, a.threads, a.rounds, 1, a.seed,
                                              a.weights), format_report, a.json)


if __name__ == "__main__":
    sys.exit(main())
