"""Benchmark: simcep_py images per second (default 512x512, 50 cells, simplex background on half).

Prints the figure; ``--json OUT`` also writes it for ``make bench``. Not a test: timings depend on the
machine and its load, so the wall-clock rate is reported next to the CPU-time rate of this process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.machine import describe  # noqa: E402
from simcep_py import SimcepParams, simulate  # noqa: E402
from simcep_py.dataset import image_seed, simplex_choice  # noqa: E402


def run_once(shape, n_cells, n_images, seed, simplex, params):
    """Simulate ``n_images`` images; return (wall seconds, CPU seconds)."""
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(n_images):
        simulate(shape, n_cells, image_seed(seed, i), params, bool(simplex[i]))
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(shape=(512, 512), n_cells=50, n_images=20, repeats=3, seed=0, simplex_fraction=0.5, target="nuclei"):
    """Median images/s over ``repeats`` runs of ``n_images`` images, after one warm-up image."""
    params = SimcepParams(target=target)
    simplex = simplex_choice(n_images, simplex_fraction, seed)
    run_once(shape, n_cells, 1, seed, simplex, params)
    runs = [run_once(shape, n_cells, n_images, seed, simplex, params) for _ in range(repeats)]
    wall = statistics.median(r[0] for r in runs)
    cpu = statistics.median(r[1] for r in runs)
    return {"benchmark": "simcep", "metric": "images_per_s", "value": round(n_images / wall, 3),
            "unit": "images/s", "cpu_images_per_s": round(n_images / cpu, 3),
            "shape": list(shape), "n_cells": n_cells, "n_images": n_images, "repeats": repeats,
            "simplex_fraction": simplex_fraction, "target": target,
            "machine": describe(threads=1)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
        folder = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".json", dir=folder)
        with os.fdopen(fd, "w") as handle:
            json.dump(result, handle, indent=1)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
