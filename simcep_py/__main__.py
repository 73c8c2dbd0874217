"""Command line: simulate a folder of SIMCEP images with masks.

Example: ``python -m simcep_py --n-images 40 --out runs/synthetic --seed 0 --preview p.png``. The defaults are
those of ``make data``, whose synthetic source images are exactly these 40 for the same ``--seed``
(both plan the run with :func:`simcep_py.dataset.plan_images`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cellfcn import cli
from cellfcn.errors import InputError

from .dataset import MANIFEST, cell_range, write_dataset
from .params import SimcepParams


def _size(text):
    """``512`` or ``HxW`` (e.g. ``384x512``) -> (height, width)."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}") from None
    if len(values) not in (1, 2):
        raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}")
    return (values[0], values[-1])


def _assignment(text):
    """``name=value`` with a JSON value (bare words are strings)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m simcep_py",
        description="Simulate fluorescence microscope images of cell populations (SIMCEP) with ground truth: "
                    "16-bit TIFF images, PNG masks and a JSON of every parameter, written to a temporary "
                    "folder renamed to --out when complete.")
    parser.add_argument("--n-images", type=int, required=True, help="number of images")
    parser.add_argument("--size", type=_size, default=(512, 512), help="image size N or HxW (default 512)")
    parser.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    parser.add_argument("--seed", type=int, default=0, help="run seed (default 0)")
    parser.add_argument("--n-cells", type=cell_range, default=(60, 100), metavar="N|LO:HI",
                        help="cells per image, or a range drawn from uniformly per image (default 60:100)")
    parser.add_argument("--simplex-fraction", type=float, default=0.5,
                        help="fraction of each split's images with the simplex-noise background (default 0.5)")
    parser.add_argument("--test-fraction", type=float, default=0.25,
                        help="fraction of images (the last ones) marked as the test split (default 0.25)")
    parser.add_argument("--target", choices=("nuclei", "cells"), default=None,
                        help="channel and mask to write (default: nuclei)")
    parser.add_argument("--params", metavar="JSON",
                        help="parameters from a JSON file: a SimcepParams dict or a previous simcep.json")
    parser.add_argument("--set", dest="overrides", type=_assignment, action="append", default=[],
                        metavar="NAME=VALUE", help="override one parameter, e.g. --set nucleus_radius=8 "
                                                   "(repeatable; values are JSON)")
    parser.add_argument("--preview", metavar="PNG", help="write a grid of the first images with mask outlines")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def check_replaceable(out):
    """Refuse to replace ``out`` unless every file in it is one simcep_py wrote (``--overwrite``).

    An empty or missing folder is fine; otherwise it must hold a simcep_py ``simcep.json`` and nothing but
    the images and masks that manifest lists, so a folder of the user's is never deleted.

    Raises
    ------
    InputError
        ``out`` is a file, has no simcep_py manifest, or holds a file the manifest does not list.
    """
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError(f"--out {out} is a file, not a simcep_py output folder; nothing was replaced")
    if not any(out.iterdir()):
        return
    try:
        manifest = json.loads((out / MANIFEST).read_text())
        ours = {MANIFEST, "images", "masks"} | {r[key] for r in manifest["images"] for key in ("image", "mask")}
        if manifest["generator"] != "simcep_py":
            raise ValueError
    except (OSError, ValueError, TypeError, KeyError):
        raise InputError(f"--overwrite refuses {out}: not a simcep_py output folder (no valid {MANIFEST}); "
                         "nothing was deleted") from None
    entries = list(out.iterdir())
    for sub in ("images", "masks"):
        if (out / sub).is_dir() and not (out / sub).is_symlink():
            entries += (out / sub).iterdir()
    for path in entries:
        name = path.relative_to(out).as_posix()
        if name not in ours or path.is_symlink() or path.is_dir() != (name in ("images", "masks")):
            raise InputError(f"--overwrite refuses {out}: {name} is not a file simcep_py wrote; nothing was "
                             "deleted")


def _params(args):
    values = {}
    if args.params:
        with open(args.params) as handle:
            try:
                loaded = json.load(handle)
            except json.JSONDecodeError as error:
                raise ValueError(f"{args.params}: not valid JSON ({error})") from None
        values = loaded.get("params", loaded) if isinstance(loaded, dict) else None
        if not isinstance(values, dict):
            raise ValueError(f"{args.params}: expected a JSON object of parameters")
    values.update(dict(args.overrides))
    if args.target is not None:
        values["target"] = args.target
    return SimcepParams.from_dict(values)


def _main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.overwrite:
        check_replaceable(args.out)
    try:
        params = _params(args)
        n_cells = args.n_cells[0] if args.n_cells[0] == args.n_cells[1] else args.n_cells
        manifest = write_dataset(args.out, args.n_images, args.size, n_cells, args.seed, params,
                                 simplex_fraction=args.simplex_fraction, test_fraction=args.test_fraction,
                                 preview=args.preview, overwrite=args.overwrite, progress=not args.quiet)
    except (ValueError, TypeError) as error:  # a bad parameter value: a usage error
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {manifest['n_images']} images to {args.out} "
          f"(cell-pixel fraction {manifest['cell_fraction']:.3f})")


def main(argv=None):
    """Run the command; return its exit status (see cellfcn.cli)."""
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
