"""FCRN-A training step, our Caffe against PyTorch on the same CPU threads: patches/s, GFLOP/s, per layer.

One step = forward + backward + SGD update (momentum, weight decay, Caffe's lr/decay multipliers) of a batch
of 1x128x128 patches with two-class softmax loss: ``solver.step(1)`` in pycaffe, and the same in PyTorch
(``bench/fcrn_torch.py``). Each framework runs in its own process; rounds alternate (bench/harness.py).
The per-layer breakdown comes from ``caffe time`` (Caffe) and from timing each PyTorch layer alone on the
activations of a real forward pass.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import flops, harness, machine, nets
from cellfcn import caffe_env


class CaffeTrain:
    """pycaffe SGDSolver over the Input-fed FCRN-A train net (built in a worker process)."""

    def __init__(self, batch, size, seed, workdir, warmup):
        caffe = caffe_env.import_caffe()
        caffe.set_random_seed(seed)
        net_path = Path(workdir) / "caffe_train.prototxt"
        net_path.write_text(nets.train_prototxt(batch, size))
        solver_path = Path(workdir) / "caffe_solver.prototxt"
        solver_path.write_text(nets.solver_prototxt(net_path, seed))
        self.solver = caffe.SGDSolver(str(solver_path))
        data, label = nets.batch_arrays(batch, size, seed)
        self.solver.net.blobs["data"].data[...] = data
        self.solver.net.blobs["label"].data[...] = label
        self.solver.step(warmup)
        self.net_path = net_path

    def run(self, steps):
        return harness.timed(lambda: self.solver.step(1), steps)

    def build_info(self):
        return build_info()

    def caffe_time(self, iterations):
        """``caffe time`` of this worker's build and environment on the same net: see :func:`caffe_time`."""
        return caffe_time(self.net_path, iterations)


class TorchTrain:
    """The same training step in PyTorch (built in a worker process)."""

    def __init__(self, batch, size, seed, threads, warmup):
        import torch
        from torch.nn import functional as F

        from bench import fcrn_torch

        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        self.torch, self.F = torch, F
        self.model = fcrn_torch.FCRNA()
        self.opt = fcrn_torch.sgd(self.model, lr=1e-4)
        data, label = nets.batch_arrays(batch, size, seed)
        self.x = torch.from_numpy(data)
        self.y = torch.from_numpy(label[:, 0]).long()
        for _ in range(warmup):
            self._step()

    def _step(self):
        self.opt.zero_grad(set_to_none=True)
        self.F.cross_entropy(self.model(self.x), self.y).backward()
        self.opt.step()

    def run(self, steps):
        return harness.timed(self._step, steps)

    def build_info(self):
        return build_info()

    def layer_times(self, iters):
        """Median forward and backward seconds of each convolution layer alone, on a forward pass's inputs."""
        torch = self.torch
        inputs = {}
        hooks = [getattr(self.model, name).register_forward_hook(
            lambda m, args, out, name=name: inputs.__setitem__(name, args[0].detach()))
            for name in flops.LAYERS]
        with torch.no_grad():
            self.model(self.x)
        for h in hooks:
            h.remove()
        out = {}
        for name in flops.LAYERS:
            layer = getattr(self.model, name)
            x = inputs[name].clone().requires_grad_(name != "conv1")  # no data gradient for the image
            fwd, bwd = [], []
            for _ in range(iters + 1):  # the first is a warm-up
                t0 = harness.time.perf_counter()
                y = layer(x)
                t1 = harness.time.perf_counter()
                y.backward(torch.ones_like(y))
                t2 = harness.time.perf_counter()
                fwd.append(t1 - t0)
                bwd.append(t2 - t1)
            out[name] = dict(forward=statistics.median(fwd[1:]), backward=statistics.median(bwd[1:]))
            layer.zero_grad(set_to_none=True)
        return out


LAYER_LINE = re.compile(r"\]\s+(\S+)\s+(forward|backward): ([0-9.eE+-]+) ms\.")
TOTAL_LINE = re.compile(r"Average (Forward pass|Backward pass|Forward-Backward): ([0-9.eE+-]+) ms\.")


def parse_caffe_time(log):
    """Per-layer and total milliseconds from a ``caffe time`` log.

    Returns
    -------
    dict
        ``layers``: name -> {"forward": ms, "backward": ms} in net order; ``forward``, ``backward``,
        ``forward_backward``: ms per iteration.
    """
    layers = {}
    for name, direction, ms in LAYER_LINE.findall(log):
        layers.setdefault(name, {})[direction] = float(ms)
    totals = {k.lower().replace(" pass", "").replace("-", "_"): float(v) for k, v in TOTAL_LINE.findall(log)}
    if not layers or "forward_backward" not in totals:
        raise ValueError("no per-layer timings in the caffe time log")
    return dict(layers=layers, **totals)


def caffe_time(model, iterations):
    """Run ``caffe time`` on ``model`` in this process's environment; return :func:`parse_caffe_time`."""
    env = {**os.environ, "GLOG_logtostderr": "1", "GLOG_minloglevel": "0"}
    proc = subprocess.run([str(caffe_env.caffe_binary()), "time", "-model", str(model),
                           "-iterations", str(iterations)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"caffe time failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return parse_caffe_time(proc.stderr)


def summarise(times, batch, size, peak):
    """Throughput figures of one framework from its per-round median step times (harness.alternate)."""
    step_s = times["wall"]
    median = statistics.median(step_s)
    gflops = flops.train_flops(size, size) * batch / median / 1e9
    return dict(step_ms=round(median * 1e3, 2), best_step_ms=round(min(step_s) * 1e3, 2),
                cpu_ms=round(statistics.median(times["cpu"]) * 1e3, 2),
                round_ms=[round(t * 1e3, 2) for t in step_s],
                patches_per_s=round(batch / median, 3), gflops=round(gflops, 1),
                pct_peak=round(100 * gflops / peak, 1))


def _gflops(flop, seconds):
    return round(flop / seconds / 1e9, 1) if seconds > 0 else 0.0


def layer_table(layer_times, batch, size, peak):
    """Rows per convolution layer: ms, GFLOP/s and % of peak of each framework, forward, backward and both.

    ``layer_times`` maps a label ("caffe", "torch", ...) to {layer: {"forward": s, "backward": s}}.
    """
    rows = []
    for name, f in flops.layer_flops(size, size).items():
        fwd_flop, bwd_flop = f["forward"] * batch, f["backward"] * batch
        row = dict(layer=name, gflop=round((fwd_flop + bwd_flop) / 1e9, 3))
        for label, times in layer_times.items():
            if name not in times:
                continue
            fwd, bwd = times[name]["forward"], times[name]["backward"]
            gflops = _gflops(fwd_flop + bwd_flop, fwd + bwd)
            row[label] = dict(fwd_ms=round(fwd * 1e3, 2), bwd_ms=round(bwd * 1e3, 2),
                              fwd_gflops=_gflops(fwd_flop, fwd), bwd_gflops=_gflops(bwd_flop, bwd),
                              gflops=gflops, pct_peak=round(100 * gflops / peak, 1),
                              fwd_pct_peak=round(100 * _gflops(fwd_flop, fwd) / peak, 1),
                              bwd_pct_peak=round(100 * _gflops(bwd_flop, bwd) / peak, 1))
        rows.append(row)
    return rows


def run(batch=16, size=128, threads=None, rounds=5, steps=3, warmup=2, layer_iters=5, seed=0,
        frameworks=("caffe", "torch"), variants=None):
    """Benchmark the training step; return the results dict (see module docstring).

    ``variants`` maps a label to environment overrides (``CAFFE_ROOT``, ``LD_LIBRARY_PATH``, thread counts)
    for extra Caffe workers "caffe:<label>", alternated with the others: the A/B runs of tuning.
    """
    threads = threads or len(os.sched_getaffinity(0))
    info = machine.describe(threads)
    peak = info["fp32_peak_gflops"]
    caffes = ([("caffe", {})] if "caffe" in frameworks else []) + [
        (f"caffe:{label}", env) for label, env in (variants or {}).items()]
    result = dict(benchmark="train_step", batch=batch, size=size, threads=threads, rounds=rounds,
                  steps_per_round=steps, gflop_per_patch=round(flops.train_flops(size, size) / 1e9, 3),
                  machine=info)
    layer_times = {}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as workdir:
        workers = []
        try:
            for label, env in caffes:
                wd = Path(workdir) / label.replace(":", "-")
                wd.mkdir()
                workers.append(harness.Worker(label, "bench.train_step:CaffeTrain", dict(
                    batch=batch, size=size, seed=seed, workdir=str(wd), warmup=warmup), threads, env))
            if "torch" in frameworks:
                workers.append(harness.Worker("torch", "bench.train_step:TorchTrain", dict(
                    batch=batch, size=size, seed=seed, threads=threads, warmup=warmup), threads))
            print(f"training step, batch {batch} of 1x{size}x{size}, {threads} threads: "
                  f"{rounds} rounds x {steps} steps", file=sys.stderr)
            times = harness.alternate(workers, rounds, steps)
            for w in workers:
                result.setdefault("build", {})[w.label] = w.call("build_info")
                if not layer_iters:
                    continue
                if w.label == "torch":
                    layer_times["torch"] = w.call("layer_times", layer_iters)
                else:
                    timing = w.call("caffe_time", layer_iters)
                    layer_times[w.label] = {k: {d: v / 1e3 for d, v in t.items()}
                                            for k, t in timing["layers"].items()}
                    result.setdefault("caffe_time", {})[w.label] = dict(
                        forward_backward_ms=timing["forward_backward"], forward_ms=timing.get("forward"),
                        backward_ms=timing.get("backward"), iterations=layer_iters,
                        all_layers_ms=timing["layers"])
        finally:
            for w in workers:
                w.close()
    for label in times:
        result[label] = summarise(times[label], batch, size, peak)
    for label in times:
        if label != "torch" and "torch" in times:
            result[label]["ratio_over_torch"] = round(result[label]["patches_per_s"]
                                                      / result["torch"]["patches_per_s"], 3)
    if "caffe" in result and "torch" in result:
        result["ratio_caffe_over_torch"] = result["caffe"]["ratio_over_torch"]
    if layer_times:
        result["layers"] = layer_table(layer_times, batch, size, peak)
    return result


def build_info():
    """Which build this process runs: Caffe's binary and the BLAS/OpenMP libraries mapped, or torch's version."""
    with open("/proc/self/maps") as maps:  # numpy's and scipy's own BLAS copies are not the ones timed
        libs = sorted({line.split()[-1] for line in maps if re.search(r"blas|blis|mkl|dnnl|gomp|libomp|libcaffe",
                       line.split()[-1]) and ".libs/" not in line and "scipy/" not in line})
    info = dict(libraries=libs)
    if "caffe" in sys.modules:
        info["binary"] = str(caffe_env.caffe_binary())
        info.update({k: v for k, v in os.environ.items() if k in ("CAFFE_ROOT", "LD_LIBRARY_PATH")})
    if "torch" in sys.modules:
        info["torch"] = sys.modules["torch"].__version__
    info["threads_env"] = {k: v for k, v in os.environ.items() if k.endswith("_NUM_THREADS")}
    return info


def labels(r):
    """Framework labels present in a result, Caffe ones first."""
    return [k for k in r if k == "caffe" or k.startswith("caffe:")] + (["torch"] if "torch" in r else [])


def format_report(r):
    """Human-readable summary of :func:`run`'s result."""
    lines = [f"FCRN-A training step, batch {r['batch']} of 1x{r['size']}x{r['size']}, {r['threads']} threads, "
             f"{r['gflop_per_patch']} GFLOP per patch (fwd+bwd), load average {r['machine']['load_average_1min']}",
             f"peak: {r['machine']['peak_derivation']}"]
    for label in labels(r):
        s = r[label]
        ratio = f"  x{s['ratio_over_torch']:.2f} of PyTorch" if "ratio_over_torch" in s else ""
        lines.append(f"  {label:16s} {s['step_ms']:8.1f} ms/step (best {s['best_step_ms']:.0f}, "
                     f"CPU {s['cpu_ms']:.0f}) "
                     f"{s['patches_per_s']:7.2f} patches/s {s['gflops']:6.1f} GFLOP/s ({s['pct_peak']:.0f}% of peak)"
                     f"{ratio}")
    if "layers" in r:
        shown = [label for label in labels(r) if label in r["layers"][0]]
        head = " | ".join(f"{label[:16]:>16s} fwd   bwd GFLOP/s" for label in shown)
        lines.append(f"  per layer, ms per batch:\n  {'layer':7s} {'GFLOP':>6s} | {head}")
        for row in r["layers"]:
            cells = " | ".join(f"{row[label]['fwd_ms']:20.1f} {row[label]['bwd_ms']:5.1f} "
                               f"{row[label]['gflops']:7.1f}" if label in row else f"{'-':>34s}"
                               for label in shown)
            lines.append(f"  {row['layer']:7s} {row['gflop']:6.2f} | {cells}")
    for label, t in r.get("caffe_time", {}).items():
        lines.append(f"  caffe time ({label}): forward-backward {t['forward_backward_ms']:.1f} ms")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16, help="patches per step (default 16)")
    p.add_argument("--size", type=int, default=128, help="patch side, a multiple of 8 (default 128)")
    p.add_argument("--threads", type=int, default=None, help="threads for both (default: all usable CPUs)")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per round (default 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--layer-iters", type=int, default=5,
                   help="iterations of the per-layer timings (caffe time, PyTorch); 0 skips them")
    p.add_argument("--frameworks", default="caffe,torch", help="comma list of caffe, torch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", action="append", default=[], metavar="LABEL=VAR=VALUE[,VAR=VALUE]",
                   help=harness.VARIANT_HELP)
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    frameworks = tuple(f for f in a.frameworks.split(",") if f)
    errors = []
    if a.size <= 0 or a.size % 8:
        errors.append(f"--size must be a positive multiple of 8, got {a.size}")
    if min(a.batch, a.rounds, a.steps) < 1 or a.warmup < 0 or a.layer_iters < 0:
        errors.append("--batch, --rounds and --steps must be >= 1; --warmup and --layer-iters >= 0")
    if not frameworks or set(frameworks) - {"caffe", "torch"}:
        errors.append(f"--frameworks must list caffe and/or torch, got {a.frameworks!r}")
    if a.threads is not None and a.threads < 1:
        errors.append("--threads must be >= 1")
    try:
        variants = harness.parse_variants(a.variant)
    except ValueError as e:
        errors.append(str(e))
    if errors:
        print(f"error: {errors[0]}", file=sys.stderr)
        return 2
    return harness.run_and_report(lambda: run(a.batch, a.size, a.threads, a.rounds, a.steps, a.warmup, a.layer_iters,
                                              a.seed, frameworks, variants), format_report, a.json)


if __name__ == "__main__":
    sys.exit(main())
