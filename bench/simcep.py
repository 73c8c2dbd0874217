"""Benchmark: simcep_py images per second (default 512x512, 50 cells, simplex background on half).

Prints the figure; ``--json OUT`` also writes it for ``make bench``. Not a test: timings depend on the
machine and its load, so the wall-clock rate is reported next to the CPU-time rate of this process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from bench.machine import describe
from cellfcn import files
from simcep_py import SimcepParams, simulate
from simcep_py.dataset import plan_images


def run_once(shape, plan, params):
    """Simulate the planned images; return (wall seconds, CPU seconds)."""
    wall, cpu = time.perf_counter(), time.process_time()
    for item in plan:
        simulate(shape, item["n_cells"], item["seed"], params, item["simplex_background"])
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(shape=(512, 512), n_cells=50, n_images=20, repeats=3, seed=0, simplex_fraction=0.5, target="nuclei"):
    """Median images/s over ``repeats`` runs of ``n_images`` images, after one warm-up image."""
    params = SimcepParams(target=target)
    plan = plan_images(n_images, np.random.default_rng(seed), n_cells, simplex_fraction, test_fraction=0)
    run_once(shape, plan[:1], params)
    runs = [run_once(shape, plan, params) for _ in range(repeats)]
    wall = statistics.median(r[0] for r in runs)
    cpu = statistics.median(r[1] for r in runs)
    return {"benchmark": "simcep", "metric": "images_per_s", "value": round(n_images / wall, 3),
            "unit": "images/s", "cpu_images_per_s": round(n_images / cpu, 3),
            "shape": list(shape), "n_cells": n_cells, "n_images": n_images, "repeats": repeats,
            "simplex_fraction": simplex_fraction, "target": target,
            "machine": describe(threads=1)}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.simcep", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    parser.add_argument("--n-cells", type=int, default=50, help="cells per image (default 50)")
    parser.add_argument("--n-images", type=int, default=20, help="images per timed run (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median is reported (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--simplex-fraction", type=float, default=0.5)
    parser.add_argument("--target", choices=("nuclei", "cells"), default="nuclei")
    parser.add_argument("--json", metavar="OUT", help="also write the result as JSON to OUT")
    args = parser.parse_args(argv)
    if args.size < 16 or args.n_cells < 0 or args.n_images < 1 or args.repeats < 1:
        print("error: need --size >= 16, --n-cells >= 0, --n-images >= 1, --repeats >= 1", file=sys.stderr)
        return 2
    if not 0 <= args.simplex_fraction <= 1:
        print("error: --simplex-fraction must be in [0, 1]", file=sys.stderr)
        return 2
    result = measure((args.size, args.size), args.n_cells, args.n_images, args.repeats, args.seed,
                     args.simplex_fraction, args.target)
    print(f"simcep_py: {result['value']:.1f} images/s at {args.size}x{args.size} with {args.n_cells} cells "
          f"(CPU time of this process: {result['cpu_images_per_s']:.1f} images/s; "
          f"{result['machine']['cpu']}, {result['machine']['logical_cpus']} CPUs, "
          f"load {result['machine']['load_average_1min']})")
    if args.json:
        files.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
