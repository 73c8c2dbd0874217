"""`make bench`: every benchmark in one go -> <out>/results.json and <out>/results.md (the README's table).

Runs the training step (bench/train_step.py), whole-image segmentation (bench/segment.py), the exported
model's segmentation in onnxruntime against Caffe (bench/onnx_segment.py) and simcep_py's image rate
(bench/simcep.py). PyTorch is the speed peer and lives only here: if it is missing, the pinned CPU
wheel of bench/requirements.txt is installed into this interpreter's environment first.
"""
import argparse
import datetime
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import harness, onnx_segment, segment, train_step
from cellfcn import files

BENCH = Path(__file__).resolve().parent
# Our Caffe on its own im2col + GEMM path, beside the default engine: the per-engine figures of every run.
ENGINE_VARIANTS = {"gemm": {"CAFFE_ENGINE": "caffe"}}
BENCHMARKS = ("train_step", "segment", "onnx_segment", "simcep")


def ensure_torch():
    """Install bench/requirements.txt with this interpreter's pip if torch is not importable."""
    if importlib.util.find_spec("torch") is not None:
        return
    print("installing the PyTorch peer (bench/requirements.txt)", file=sys.stderr)
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", str(BENCH / "requirements.txt")])
    if proc.returncode != 0:
        raise RuntimeError("pip could not install bench/requirements.txt")


def run_simcep(args):
    """bench.simcep's result dict (it owns its own CLI and JSON; run alone, in its own process)."""
    with tempfile.TemporaryDirectory(prefix="bench-simcep-") as tmp:
        out = Path(tmp) / "simcep.json"
        proc = subprocess.run([sys.executable, "-m", "bench.simcep", "--json", str(out), *args])
        if proc.returncode != 0:
            raise RuntimeError(f"bench.simcep failed ({proc.returncode})")
        return json.loads(out.read_text())


def _fmt(x, digits=2):
    return f"{x:.{digits}f}"


def engine_names(results):
    """Table labels of the frameworks of a result, in table order: the GEMM path (before), the default
    engine, PyTorch."""
    t = results.get("train_step") or results.get("segment") or {}
    libs = t.get("build", {}).get("caffe", {}).get("libraries", [])
    default = "oneDNN" if any("dnnl" in lib for lib in libs) else "GEMM"
    names = {f"caffe:{label}": f"ours, CAFFE_ENGINE={env['CAFFE_ENGINE']} (GEMM)"
             for label, env in ENGINE_VARIANTS.items()}
    names.update({"caffe": f"ours, default engine ({default})", "torch": "PyTorch 2.13 (CPU)"})
    return names


def _layer_lines(t, names, peak):
    """The per-engine table: per convolution layer, each framework's ms and GFLOP/s forward and backward."""
    shown = [label for label in names if label in t["layers"][0]]
    lines = ["", f"Training step per layer and engine (batch {t['batch']} of 1x{t['size']}x{t['size']}; "
                 f"Caffe from `caffe time`, PyTorch each layer alone; % of the {peak} GFLOP/s fp32 peak):", "",
             "| layer | GFLOP fwd+bwd | " + " | ".join(f"{names[label]}: ms fwd / bwd | GFLOP/s fwd / bwd (% of peak)"
                                                     for label in shown) + " |",
             "|---|---|" + "---|---|" * len(shown)]
    for row in t["layers"]:
        cells = []
        for label in shown:
            r = row.get(label)
            cells += [f"{r['fwd_ms']:.1f} / {r['bwd_ms']:.1f}",
                      f"{r['fwd_gflops']:.0f} ({r['fwd_pct_peak']:.0f}%) / {r['bwd_gflops']:.0f} "
                      f"({r['bwd_pct_peak']:.0f}%)"] if r else ["", ""]
        lines.append(f"| {row['layer']} | {row['gflop']:.2f} | " + " | ".join(cells) + " |")
    for label, ct in t.get("caffe_time", {}).items():
        lines.append(f"\n`caffe time` forward-backward, {names.get(label, label)}: {ct['forward_backward_ms']:.0f} ms "
                     f"per batch (all layers, ReLU/pooling/loss included).")
    return lines


def markdown(results):
    """The results as Markdown: a summary table, then the per-layer, per-engine table of the training step."""
    m = results["machine"]
    names = engine_names(results)
    lines = [f"Measured {results['date']} on {m['cpu']} ({m['logical_cpus']} CPUs, {m['mhz']:.0f} MHz), "
             f"{m['threads']} threads for both frameworks; fp32 peak {m['fp32_peak_gflops']} GFLOP/s "
             f"({m['peak_derivation']}). Load average at the start: {m['load_average_1min']}.", "",
             "| benchmark | engine | ours | PyTorch 2.13 (CPU) | ours / PyTorch |", "|---|---|---|---|---|"]
    t = results.get("train_step")
    if t:
        p = t["torch"]
        for label in [k for k in names if k in t and k != "torch"]:
            c = t[label]
            lines.append(f"| Caffe training step, batch {t['batch']} of 1x{t['size']}x{t['size']} (patches/s) | "
                         f"{names[label]} | {_fmt(c['patches_per_s'])} | {_fmt(p['patches_per_s'])} | "
                         f"{_fmt(c['ratio_over_torch'])} |")
            lines.append(f"| training step: GFLOP/s (% of fp32 peak) | {names[label]} | {c['gflops']} "
                         f"({c['pct_peak']}%) | {p['gflops']} ({p['pct_peak']}%) | |")
    s = results.get("segment")
    if s:
        tiling = "whole" if s["tile"] == 0 else f"{s['windows']} windows of {s['tile']} px (tools.infer)"
        for label in [k for k in names if k in s and k != "torch"]:
            lines.append(f"| Caffe segmentation of one {s['size']}x{s['size']} image, {tiling} (MP/s) | "
                         f"{names[label]} | {_fmt(s[label]['mp_per_s'], 3)} | {_fmt(s['torch']['mp_per_s'], 3)} | "
                         f"{_fmt(s[label]['ratio_over_torch'])} |")
    sim = results.get("simcep")
    if sim:
        lines.append(f"| simcep_py: {sim['shape'][0]}x{sim['shape'][1]} images with {sim['n_cells']} cells "
                     f"(images/s, 1 thread) | | {_fmt(sim['value'])} | n/a | |")
    o = results.get("onnx_segment")
    if o:
        lines += ["", f"The exported model (`make export`) in onnxruntime {o['build']['onnx']['onnxruntime']}: one "
                      f"{o['size']}x{o['size']} image in {o['windows']} windows of {o['tile']} px (tools.infer) at "
                      f"{_fmt(o['onnx']['mp_per_s'], 3)} MP/s, our Caffe (default engine) at "
                      f"{_fmt(o['caffe']['mp_per_s'], 3)} MP/s in the same run: onnxruntime / Caffe "
                      f"{_fmt(o['ratio_onnx_over_caffe'])}, largest probability difference "
                      f"{o['max_abs_prob_diff']:.1e}."]
    if t and "layers" in t:
        lines += _layer_lines(t, names, m["fp32_peak_gflops"])
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--threads", type=int, default=None, help="threads for both frameworks (default: all CPUs)")
    p.add_argument("--quick", action="store_true", help="a fast smoke run: small sizes, one round each")
    p.add_argument("--skip", default="", help=f"comma list of benchmarks to skip: {', '.join(BENCHMARKS)}")
    a = p.parse_args(argv)
    skip = {s for s in a.skip.split(",") if s}
    if skip - set(BENCHMARKS):
        print(f"error: unknown benchmark in --skip: {sorted(skip - set(BENCHMARKS))}", file=sys.stderr)
        return 2
    if a.threads is not None and a.threads < 1:
        print("error: --threads must be >= 1", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    threads = a.threads or len(os.sched_getaffinity(0))
    results = dict(date=datetime.datetime.now().astimezone().isoformat(timespec="minutes"))
    try:
        ensure_torch()
        if "train_step" not in skip:
            kw = dict(batch=2, rounds=1, steps=1, warmup=1, layer_iters=1) if a.quick else {}
            results["train_step"] = r = train_step.run(threads=threads, variants=ENGINE_VARIANTS, **kw)
            print(train_step.format_report(r), flush=True)
        if "segment" not in skip:
            kw = dict(size=512, tile=256, rounds=1) if a.quick else {}
            results["segment"] = r = segment.run(threads=threads, variants=ENGINE_VARIANTS, **kw)
            print(segment.format_report(r), flush=True)
        if "onnx_segment" not in skip:
            kw = dict(size=512, tile=256, rounds=1) if a.quick else {}
            results["onnx_segment"] = r = onnx_segment.run(threads=threads, **kw)
            print(onnx_segment.format_report(r), flush=True)
        if "simcep" not in skip:
            args = ["--size", "128", "--n-images", "2", "--repeats", "1"] if a.quick else []
            results["simcep"] = r = run_simcep(args)
    except (harness.WorkerError, RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    results["machine"] = next(r["machine"] for r in results.values() if isinstance(r, dict) and "machine" in r) \
        if len(results) > 1 else None
    if results["machine"] is None:
        print("error: every benchmark was skipped", file=sys.stderr)
        return 2
    results["machine"] = dict(results["machine"], threads=threads)
    files.write_json(out / "results.json", results)
    md = out / "results.md"
    files.write_text(md, markdown(results))
    print(f"\nwrote {out / 'results.json'} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
