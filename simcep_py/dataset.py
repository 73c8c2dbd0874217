"""Write a folder of simulated images (16-bit TIFF), target masks (PNG) and a JSON of every parameter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from tqdm import tqdm

from cellfcn import files
from cellfcn.errors import CellfcnError
from cellfcn.pictures import preview_grid, write_png

from .params import SimcepParams
from .simulation import check_inputs, simulate

MANIFEST = "simcep.json"
PREVIEW_IMAGES = 6


def cell_range(text):
    """Parse a cell count ``"N"`` or range ``"LO:HI"`` (command-line argument type) -> (lo, hi)."""
    import argparse

    try:
        lo, _, hi = text.partition(":")
        lo, hi = int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or LO:HI, got {text!r}") from None
    if not 0 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"need 0 <= LO <= HI, got {text!r}")
    return lo, hi


def plan_images(n_images, rng, n_cells=(60, 100), simplex_fraction=0.5, test_fraction=0.25):
    """Decide every image of a run: its seed, cell count, split and background -- the one seeding scheme.

    ``python -m simcep_py`` and ``python -m data_prep synthetic`` (``make data``) both call this with a
    generator seeded by the run's seed, so the same seed and parameters draw the same images.

    Parameters
    ----------
    n_images : int
        Images, at least 1 (2 when some go to the test split).
    rng : numpy.random.Generator
        Drawn from in a fixed order: all image seeds, then all cell counts.
    n_cells : int or (int, int)
        Cells per image, or the inclusive range a count is drawn from uniformly.
    simplex_fraction : float in [0, 1]
        Within each split, the first ``round(simplex_fraction * count)`` images get the simplex background.
    test_fraction : float in [0, 1]
        The last ``round(test_fraction * n_images)`` images (at least 1 and at most ``n_images - 1`` when
        the fraction is positive) form the test split.

    Returns
    -------
    list of dict
        ``seed``, ``n_cells``, ``split`` ("train"/"test"), ``simplex_background`` per image, in order.
    """
    lo, hi = (n_cells, n_cells) if isinstance(n_cells, int) else n_cells
    if not isinstance(n_images, int) or n_images < 1:
        raise ValueError(f"n_images must be an integer >= 1, got {n_images!r}")
    if not 0 <= lo <= hi:
        raise ValueError(f"n_cells must be >= 0 (a range LO <= HI), got {n_cells!r}")
    if not (0 <= test_fraction <= 1 and 0 <= simplex_fraction <= 1):
        raise ValueError("test_fraction and simplex_fraction must be in [0, 1]")
    if test_fraction > 0 and n_images < 2:
        raise ValueError(f"a test split needs at least 2 images (train and test), got {n_images}")
    n_test = min(max(1, int(round(test_fraction * n_images))), n_images - 1) if test_fraction > 0 else 0
    seeds = rng.integers(0, 2**31 - 1, size=n_images)
    counts = rng.integers(lo, hi + 1, size=n_images)
    plan = []
    for split, indices in (("train", range(n_images - n_test)), ("test", range(n_images - n_test, n_images))):
        n_simplex = int(round(simplex_fraction * len(indices)))
        for j, i in enumerate(indices):
            plan.append({"seed": int(seeds[i]), "n_cells": int(counts[i]), "split": split,
                         "simplex_background": j < n_simplex})
    return plan


def write_dataset(out, n_images, shape, n_cells, seed, params=None, simplex_fraction=0.5, test_fraction=0.25,
                  preview=None, overwrite=False, progress=True):
    """Simulate ``n_images`` images (planned by :func:`plan_images`) and write them to the folder ``out``.

    Layout: ``images/NNNNNN.tif`` (uint16, image x 65535), ``masks/NNNNNN.png`` (uint8, 255 = target
    object, 0 = background) and ``simcep.json`` (every parameter, the run seed, and per image its seed,
    split, simplex flag, placed cell count and cell-pixel fraction). Everything is written to a temporary
    folder next to ``out`` that replaces ``out`` only when complete.

    Parameters
    ----------
    out : path
    n_images : int
    shape : (int, int)
    n_cells : int or (int, int)
        Cells per image, or an inclusive range drawn from per image.
    seed : int
    params : SimcepParams, optional
    simplex_fraction, test_fraction : float
        See :func:`plan_images`.
    preview : path, optional
        PNG grid of the first images with target outlines.
    overwrite : bool
        Replace an existing ``out``; otherwise an existing ``out`` is an error.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    manifest : dict
        The content of ``simcep.json``.
    """
    params = SimcepParams() if params is None else params
    check_inputs(shape, n_cells if isinstance(n_cells, int) else n_cells[0], seed)
    plan = plan_images(n_images, np.random.default_rng(seed), n_cells, simplex_fraction, test_fraction)
    out = Path(out).absolute()
    if out.exists() and not overwrite:
        raise CellfcnError(f"output folder {out} exists (use --overwrite to replace it)")
    if preview is not None:
        files.check_writable(preview, "preview")
    with files.staged_folder(out) as tmp:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        records, shown = [], []
        for i, item in enumerate(tqdm(plan, desc="simcep", unit="img", disable=not progress)):
            sim = simulate(shape, item["n_cells"], item["seed"], params, item["simplex_background"])
            name = f"{i:06d}"
            tifffile.imwrite(tmp / "images" / f"{name}.tif", np.round(sim.image * 65535).astype(np.uint16))
            Image.fromarray(sim.mask.astype(np.uint8) * 255).save(tmp / "masks" / f"{name}.png")
            records.append({"image": f"images/{name}.tif", "mask": f"masks/{name}.png", "seed": sim.seed,
                            "n_cells": item["n_cells"], "split": item["split"], "simplex_background": sim.simplex_background,
                            "n_cells_placed": len(sim.features), "cell_fraction": sim.cell_fraction})
            if len(shown) < PREVIEW_IMAGES:
                shown.append((sim.image, sim.nuclei_labels if params.target == "nuclei" else sim.cell_labels))
        manifest = {"generator": "simcep_py", "seed": int(seed), "n_images": n_images, "shape": list(shape),
                    "n_cells": n_cells if isinstance(n_cells, int) else list(n_cells),
                    "simplex_fraction": simplex_fraction, "test_fraction": test_fraction,
                    "params": params.to_dict(), "image_format": "uint16 TIFF, intensity = value / 65535",
                    "mask_format": f"uint8 PNG, 255 = {params.target}, 0 = background",
                    "cell_fraction": float(np.mean([r["cell_fraction"] for r in records])),
                    "images": records}
        files.write_json(tmp / MANIFEST, manifest)
        if preview is not None:
            write_png(preview, preview_grid([s[0] for s in shown], [s[1] for s in shown], columns=min(3, len(shown))))
    return manifest
