"""Command line: ``python -m data_prep {synthetic,mnfinder,folder} --out DIR [options]``.

Each command builds one dataset folder (see :mod:`data_prep.writers`) and skips the work when the folder's
manifest already records the same command, parameters, sources and code (``--force`` rebuilds).
A bad option value is a usage error (exit status 2); bad input or a failed write ends with a one-line
``error: ...`` on stderr, exit status 1, the previous output folder as it was and no temporary folder.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from cellfcn import images, scale
from cellfcn.cli import run
from cellfcn.constants import MANIFEST_SCHEMA, PCT_HIGH, PCT_LOW, STRIDE
from cellfcn.errors import InputError
from cellfcn.files import check_writable, clean_stale, code_digest, digest, sha256_file
from cellfcn.images import find_pairs, read_array, read_mask
from simcep_py.dataset import cell_range, plan_images

from . import mnfinder, real, synthetic
from .patches import MIN_CELL_FRACTION
from .preview import write_preview
from .progress import log, progress_map
from .targets import CONTOUR_WIDTH
from .writers import check_formats, check_output_path, is_up_to_date, read_split, write_dataset

REPO = Path(__file__).resolve().parent.parent
LMDB_ENCODING = {"data": "Datum.float_data, float32 in [0, 1], channels=1",
                 "label": "Datum.data, uint8 bytes 0/1, channels=1",
                 "3class_label": "Datum.data, uint8 bytes 0 background / 1 interior / 2 contour, channels=1",
                 "4class_label": "Datum.data, uint8 bytes as 3class_label and 3 micronucleus, channels=1"}


def _formats(value):
    return ["hdf5", "lmdb"] if value == "both" else [value]


# -------------------------------------------------------------------------- option values (usage errors)
def _checked(convert, valid, what):
    """An argparse ``type``: ``convert(text)``, rejected (usage error, exit 2) unless ``valid(value)``."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not valid(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    return parse


_positive = _checked(int, lambda v: v >= 1, "a positive integer")
_seed = _checked(int, lambda v: v >= 0, "a non-negative integer")
_patch_size = _checked(int, lambda v: v >= STRIDE and v % STRIDE == 0,
                       f"a positive multiple of {STRIDE} (the net's three 2x2 poolings)")
_share = _checked(float, lambda v: 0 <= v <= 1, "a fraction in [0, 1]")
_open_share = _checked(float, lambda v: 0 < v < 1, "a fraction in (0, 1)")
_cell_share = _checked(float, lambda v: 0 <= v < 1, "a fraction in [0, 1)")
_percentile = _checked(float, lambda v: 0 <= v <= 100, "a percentile in [0, 100]")
_scale = _checked(float, lambda v: 0 < v <= 16, "a factor in (0, 16]")


# ------------------------------------------------------------------------------------------- commands
def _build(args, kind, params, sources, load, extra_code=None):
    """Shared tail of every command: skip check, build, write, preview, summary."""
    started = time.monotonic()
    out = Path(args.out)
    check_output_path(out)
    if args.preview:
        if Path(args.preview).is_dir():
            raise InputError(f"preview path is a folder: {args.preview}")
        check_writable(args.preview, "preview")
    formats = _formats(args.format)
    check_formats(formats)
    clean_stale(out)  # temporaries of killed runs, also when the dataset turns out to be up to date
    params = {"patch_size": args.patch_size, "seed": args.seed, "formats": formats,
              "min_cell_fraction": args.min_cell_fraction, "percentiles": [args.pct_low, args.pct_high], **params}
    # cellfcn's readers and the diameter measure decide a dataset's content too
    code = {"data_prep": code_digest(sys.modules[__package__], images, scale), **(extra_code or {})}
    key = digest(args.command, params, sources, code)
    if not args.force and is_up_to_date(out, key):
        log(f"{out} is up to date (same parameters, sources and code); --force rebuilds it")
    else:
        splits, info, full, more, diameter = load(np.random.default_rng(args.seed))
        manifest = {"schema_version": MANIFEST_SCHEMA, "kind": kind, "command": args.command, "patch_size": args.patch_size, "seed": args.seed,
                    "formats": formats, "splits": info, "parameters": params, "sources": {**sources, **more},
                    "code": code, "lmdb_encoding": LMDB_ENCODING if "lmdb" in formats else None,
                    "nucleus_diameter_px": diameter, "contour_width_px": CONTOUR_WIDTH, "build_key": key}
        write_dataset(out, splits, formats, manifest, full)
        counts = ", ".join(f"{name} {entry['n']} (cells {100 * entry['cell_fraction']:.1f}%)"
                           for name, entry in info.items())
        log(f"wrote {out}: {counts} patches in {time.monotonic() - started:.1f} s")
    if args.preview:
        data, label = read_split(out, "train")
        write_preview(args.preview, data, label, args.seed)
        log(f"preview: {args.preview}")
    return 0


def run_synthetic(args):
    import simcep_py  # noqa: PLC0415  (its code digest marks the dataset)

    params = {"n_images": args.n_images, "image_size": args.image_size, "n_train": args.n_train,
              "n_test": args.n_test, "test_fraction": args.test_fraction,
              "simplex_fraction": args.simplex_fraction, "n_cells": list(args.n_cells)}

    def load(rng):
        plan = plan_images(args.n_images, rng, args.n_cells, args.simplex_fraction, args.test_fraction)
        rendered = synthetic.render_images(plan, args.image_size, (args.pct_low, args.pct_high))
        splits, info, diameter = synthetic.build_synthetic_splits(plan, rendered, args.n_train, args.n_test,
                                                                  args.patch_size, rng, args.min_cell_fraction)
        return splits, info, None, {"images": plan}, diameter

    return _build(args, "synthetic", params, {"generator": "simcep_py"}, load,
                  {"simcep_py": code_digest(simcep_py)})


def _prepare(items, args, desc):
    """(name, raw image, raw mask[, raw micronucleus mask]) -> (name, image, mask, labels[, micronuclei])
    prepared by :func:`real.prepare_pair` (and :func:`real.prepare_micronuclei`)."""
    def prepare(item):
        name, image, mask = item[:3]
        prepared = real.prepare_pair(image, mask, name, args.channel, args.scale, (args.pct_low, args.pct_high))
        if len(item) == 3:
            return (name, *prepared)
        return (name, *prepared,
                real.prepare_micronuclei(item[3], np.shape(mask)[:2], prepared[0].shape, name, args.scale))

    return progress_map(prepare, items, desc)


def _real_splits(args, train, val, test, rng):
    return real.build_real_splits(_prepare(train, args, "train images"), _prepare(val, args, "val images"),
                                  _prepare(test, args, "test images"), args.n_train, args.patch_size, rng,
                                  args.min_cell_fraction)


def run_mnfinder(args):
    params = {"n_train": args.n_train, "n_val_images": args.n_val_images, "max_test_images": args.max_test_images,
              "scale": args.scale}
    sources = {"wheel": {"file": mnfinder.WHEEL, "sha256": mnfinder.WHEEL_SHA256,
                         "url": f"https://pypi.org/project/{mnfinder.PACKAGE}/{mnfinder.VERSION}/"},
               "dropped": {mnfinder.DUPLICATE: "pixel-identical to training-data/2022-05-26_RPE1/images/1.tif"}}

    def load(rng):
        wheel = mnfinder.check_wheel(args.wheel) if args.wheel else mnfinder.fetch_wheel(args.cache)
        pairs = mnfinder.list_pairs(wheel)
        train, val = mnfinder.pick_val(pairs["train"], args.n_val_images, rng)
        test = pairs["test"][:args.max_test_images]
        read = {name: mnfinder.read_pairs(wheel, items, f"reading {name}")
                for name, items in (("train", train), ("val", val), ("test", test))}
        members = {r[0]: r[4] for rows in read.values() for r in rows}
        splits, info, full, diameter = _real_splits(
            args, *([r[:4] for r in read[k]] for k in ("train", "val", "test")), rng)
        return splits, info, full, {"members": members}, diameter

    return _build(args, "real", params, sources, load)


def run_folder(args):
    pairs = find_pairs(args.images, args.masks, args.mask_suffix)
    if len(pairs) < 3:
        raise InputError(f"need at least 3 image/mask pairs (train, val, test), found {len(pairs)}")
    members = {name: {"image": str(image), "image_sha256": sha256_file(image), "mask": str(mask),
                      "mask_sha256": sha256_file(mask)} for name, image, mask in pairs}
    params = {"n_train": args.n_train, "val_fraction": args.val_fraction, "test_fraction": args.test_fraction,
              "scale": args.scale, "channel": args.channel, "mask_suffix": args.mask_suffix}

    def load(rng):
        n = len(pairs)
        n_test = max(1, int(round(args.test_fraction * n)))
        n_val = max(1, int(round(args.val_fraction * n)))
        if n_test + n_val >= n:
            raise InputError(f"{n} pairs leave no training image with --val-fraction {args.val_fraction} "
                             f"and --test-fraction {args.test_fraction}")
        order = rng.permutation(n)
        groups = {"test": sorted(order[:n_test]), "val": sorted(order[n_test:n_test + n_val]),
                  "train": sorted(order[n_test + n_val:])}
        items = {k: progress_map(lambda i: (pairs[i][0], read_array(pairs[i][1]), read_mask(pairs[i][2])), idx,
                                 f"reading {k}")
                 for k, idx in groups.items()}
        splits, info, full, diameter = _real_splits(args, items["train"], items["val"], items["test"], rng)
        return splits, info, full, {}, diameter

    return _build(args, "real", params, {"members": members}, load)


def _common(parser, n_train):
    parser.add_argument("--out", required=True, help="dataset folder to write (replaced when rebuilt)")
    parser.add_argument("--seed", type=_seed, default=0, help="seed of every random choice (default 0)")
    parser.add_argument("--format", choices=("hdf5", "lmdb", "both"), default="both",
                        help="HDF5Data files, LMDB Data-layer databases, or both (default both)")
    parser.add_argument("--patch-size", type=_patch_size, default=128,
                        help=f"patch side in pixels, a multiple of {STRIDE} (default 128)")
    parser.add_argument("--n-train", type=_positive, default=n_train, help=f"training patches (default {n_train})")
    parser.add_argument("--min-cell-fraction", type=_cell_share, default=MIN_CELL_FRACTION,
                        help="near-empty rule: skip training patches with fewer cell pixels than this "
                             f"fraction (default {MIN_CELL_FRACTION}, about one nucleus of radius 10 px)")
    parser.add_argument("--pct-low", type=_percentile, default=PCT_LOW,
                        help=f"normalisation low percentile ({PCT_LOW})")
    parser.add_argument("--pct-high", type=_percentile, default=PCT_HIGH,
                        help=f"normalisation high percentile ({PCT_HIGH})")
    parser.add_argument("--preview", metavar="PNG", help="also write a grid of training patches with outlines")
    parser.add_argument("--force", action="store_true", help="rebuild even if the manifest matches")


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synthetic", help="SIMCEP images from simcep_py -> train/test patches")
    _common(p, 200)
    p.add_argument("--n-images", type=_checked(int, lambda v: v >= 2, "at least 2 (train and test images)"),
                   default=40, help="source images (default 40)")
    p.add_argument("--image-size", type=_positive, default=512, help="source image side (default 512)")
    p.add_argument("--n-test", type=_positive, default=100, help="test patches (default 100)")
    p.add_argument("--test-fraction", type=_checked(float, lambda v: 0 < v <= 1, "a fraction in (0, 1]"),
                   default=0.25, help="share of source images kept for the test split (default 0.25)")
    p.add_argument("--simplex-fraction", type=_share, default=0.5,
                   help="share of images with the simplex-noise background (default 0.5)")
    p.add_argument("--n-cells", type=cell_range, default=(60, 100), metavar="N|LO:HI",
                   help="cells per image, drawn uniformly in LO..HI (default 60:100)")
    p.set_defaults(run=run_synthetic)

    p = sub.add_parser("mnfinder", help="the nucleus images of the mnfinder 1.2.3 wheel -> train/val/test",
                       description="Training patches are augmented x8 (dihedral transforms); see data_prep/mnfinder.py "
                                   "for what the wheel holds and why --scale defaults to 0.75.")
    _common(p, 55)
    p.add_argument("--scale", type=_scale, default=0.75,
                   help="resize factor for images and masks (default 0.75: median nucleus radius 13.5 -> 10 px)")
    p.add_argument("--n-val-images", type=_positive, default=3, help="held-out val images (default 3)")
    p.add_argument("--max-test-images", type=_positive, help="use only the first N test images")
    p.add_argument("--cache", default=str(REPO / "runs" / "cache"), help="wheel cache folder (default runs/cache)")
    p.add_argument("--wheel", help=f"use this copy of {mnfinder.WHEEL} instead of the cache")
    p.set_defaults(run=run_mnfinder, channel=None)  # the wheel's images are all single-channel

    p = sub.add_parser("folder", help="image/mask pairs matched by name in two folders -> train/val/test",
                       description="Images are split at random (by --seed) into train/val/test; training patches "
                                   "are augmented x8 (dihedral transforms).")
    _common(p, 55)
    p.add_argument("--images", required=True, help="folder of images (TIFF or PNG, 8/16-bit, gray or RGB)")
    p.add_argument("--masks", required=True, help="folder of masks (binary, instance labels or colour-coded)")
    p.add_argument("--mask-suffix", default="", help="mask name = image name + this, e.g. _mask (default none)")
    p.add_argument("--channel", type=_checked(int, lambda v: 0 <= v <= 2, "0, 1 or 2"),
                   help="channel of an RGB image to use (0 red, 1 green, 2 blue)")
    p.add_argument("--scale", type=_scale, default=1.0, help="resize factor for images and masks (default 1)")
    p.add_argument("--val-fraction", type=_open_share, default=0.1,
                   help="share of images for val, in (0, 1) (default 0.1; at least one image)")
    p.add_argument("--test-fraction", type=_open_share, default=0.2,
                   help="share of images for test, in (0, 1) (default 0.2; at least one image)")
    p.set_defaults(run=run_folder)
    return parser


def _main(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.pct_low >= args.pct_high:
        parser.error(f"--pct-low ({args.pct_low}) must be below --pct-high ({args.pct_high})")
    return args.run(args)


def main(argv=None):
    """Run the command line; return the exit status (argparse exits 2 itself on a usage error)."""
    return run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
