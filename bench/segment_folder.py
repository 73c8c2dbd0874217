"""``make segment`` throughput: images/s of a folder, serially in one process against a Dask LocalCluster.

Runs the product's command, ``python -m tools.segment``, as a fresh process per run (so each pays its own
start-up: pycaffe, the net, the cluster's worker processes), on a folder of ``--images`` generated 16-bit
TIFFs of ``--size`` (default: the real test images' size after the dataset's scale 0.75), with a given or a
random-weight model (speed does not depend on the weights). Serial is ``--workers 0`` (one process, one
BLAS thread: the command computes with one thread per process so both paths give identical bytes); parallel
is a LocalCluster of ``--workers`` processes. Each setting runs ``--repeats`` times into a fresh folder,
alternating, and the median wall time counts. Prints a table and writes ``--out`` (JSON).
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cellfcn import caffe_env, cli, files
from cellfcn.constants import PCT_HIGH, PCT_LOW
from prototxt.net import DEPLOY


def write_images(folder, n, shape, seed=0):
    """``n`` deterministic images of bright discs on noise, as 16-bit TIFFs."""
    import tifffile

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    for i in range(n):
        mask = np.zeros(shape, bool)
        for cy, cx in rng.integers(0, shape, size=(60, 2)):
            mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < 100
        image = 300 + 2500 * mask + rng.normal(0, 80, shape)
        tifffile.imwrite(Path(folder) / f"bench{i:03d}.tif", np.clip(image, 0, 65535).astype(np.uint16))


def random_model(path):
    """Save the deploy net with its initial (filler) weights."""
    caffe = caffe_env.import_caffe()
    caffe.set_random_seed(0)
    caffe.Net(str(DEPLOY), caffe.TEST).save(str(path))
    return path


def time_run(folder, model, out, workers, manifest=None):
    """Wall seconds of one ``tools.segment`` run (at factor 1: the images' own size); ``manifest``: the
    preprocessing of a model without its own parameters file."""
    cmd = [sys.executable, "-m", "tools.segment", str(folder), "--model", str(model), "--out", str(out),
           *(["--manifest", str(manifest)] if manifest else []), "--scale", "1", "--threshold", "0.5", "--opening",
           "1", "--min-area", "10", "--workers", str(workers)]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"tools.segment failed: {done.stderr.strip()[-500:]}")
    return seconds


def _main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.segment_folder", description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=16, help="images in the folder (default: %(default)s)")
    p.add_argument("--size", default="576x652", help="image height x width (default: %(default)s)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="LocalCluster worker processes (default: one per core, %(default)s)")
    p.add_argument("--repeats", type=int, default=2, help="runs per setting (default: %(default)s)")
    p.add_argument("--model", help="caffemodel (default: random weights)")
    p.add_argument("--out", default="runs/bench/segment_folder.json", help="JSON result (default: %(default)s)")
    args = p.parse_args(argv)
    shape = tuple(int(v) for v in args.size.lower().split("x"))
    if args.images < 1 or args.workers < 1 or args.repeats < 1 or len(shape) != 2 or min(shape) < 8:
        p.error("--images, --workers, --repeats must be positive and --size HxW at least 8x8")
    with tempfile.TemporaryDirectory(prefix="bench-segment-") as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        write_images(tmp / "images", args.images, shape)
        model, manifest = args.model, None
        if not model:  # random weights have no parameters file: their preprocessing comes from a manifest
            model, manifest = random_model(tmp / "random.caffemodel"), tmp / "manifest.json"
            files.write_json(manifest, {"parameters": {"scale": 1.0, "percentiles": [PCT_LOW, PCT_HIGH]},
                                        "nucleus_diameter_px": 20.0})
        seconds = {"serial": [], "dask": []}
        for r in range(args.repeats):
            for name, workers in (("serial", 0), ("dask", args.workers)):
                seconds[name].append(time_run(tmp / "images", model, tmp / f"{name}{r}", workers, manifest))
    wall = {k: statistics.median(v) for k, v in seconds.items()}
    result = {"images": args.images, "size": list(shape), "workers": args.workers, "cpu_count": os.cpu_count(),
              "load_average_1min": os.getloadavg()[0], "seconds": seconds,
              "images_per_s": {k: args.images / v for k, v in wall.items()},
              "speedup": wall["serial"] / wall["dask"]}
    files.write_json(args.out, result)
    print(f"segment {args.images} images of {shape[0]}x{shape[1]} (median of {args.repeats}, wall time with "
          f"start-up; {os.cpu_count()} cores, load {result['load_average_1min']:.1f}):")
    print(f"  serial (1 process)         {wall['serial']:7.1f} s  {result['images_per_s']['serial']:.2f} images/s")
    print(f"  LocalCluster ({args.workers} processes) {wall['dask']:7.1f} s  {result['images_per_s']['dask']:.2f} "
          f"images/s  speed-up {result['speedup']:.2f}x")


def main(argv=None):
    """Run the benchmark; return its exit status."""
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
