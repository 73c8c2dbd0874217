"""Write a folder of simulated images (16-bit TIFF), target masks (PNG) and a JSON of every parameter."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np
import tifffile
from PIL import Image
from tqdm import tqdm

from .params import SimcepParams
from .preview import preview_grid, save_png
from .simulation import check_inputs, simulate

MANIFEST = "simcep.json"
PREVIEW_IMAGES = 6


def image_seed(seed, index):
    """Seed of image ``index`` of a run seeded with ``seed`` (independent streams per image)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def simplex_choice(n_images, fraction, seed):
    """Boolean per image: exactly ``round(fraction * n_images)`` images, chosen by ``seed``, get the
    simplex background."""
    chosen = np.zeros(n_images, dtype=bool)
    count = int(round(fraction * n_images))
    chosen[np.random.default_rng([int(seed), n_images]).permutation(n_images)[:count]] = True
    return chosen


def write_dataset(out, n_images, shape, n_cells, seed, params=None, simplex_fraction=0.5, preview=None,
                  overwrite=False, progress=True):
    """Simulate ``n_images`` images and write them to the folder ``out``.

    Layout: ``images/NNNNNN.tif`` (uint16, image x 65535), ``masks/NNNNNN.png`` (uint8, 255 = target
    object, 0 = background) and ``simcep.json`` (every parameter, the run seed, and per image its seed,
    simplex flag, placed cell count and cell-pixel fraction). Everything is written to a temporary
    folder next to ``out`` that is renamed to ``out`` only when complete.

    Parameters
    ----------
    out : path
    n_images : int
    shape : (int, int)
    n_cells : int
    seed : int
    params : SimcepParams, optional
    simplex_fraction : float
        Fraction of images with the simplex-noise background (exactly ``round(fraction * n)``).
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
    if not isinstance(n_images, int) or isinstance(n_images, bool) or n_images < 1:
        raise ValueError(f"n_images must be an integer >= 1, got {n_images!r}")
    if not 0.0 <= simplex_fraction <= 1.0:
        raise ValueError(f"simplex_fraction must be in [0, 1], got {simplex_fraction!r}")
    check_inputs(shape, n_cells, seed)
    out = os.path.abspath(os.fspath(out))
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f"output folder {out} exists (use --overwrite to replace it)")
    if preview is not None and not os.path.isdir(os.path.dirname(os.path.abspath(preview))):
        raise FileNotFoundError(f"preview folder {os.path.dirname(os.path.abspath(preview))} does not exist")
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)

    simplex = simplex_choice(n_images, simplex_fraction, seed)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
    try:
        os.mkdir(os.path.join(tmp, "images"))
        os.mkdir(os.path.join(tmp, "masks"))
        records, shown = [], []
        for i in tqdm(range(n_images), desc="simcep", unit="img", disable=not progress):
            sim = simulate(shape, n_cells, image_seed(seed, i), params, bool(simplex[i]))
            name = f"{i:06d}"
            tifffile.imwrite(os.path.join(tmp, "images", name + ".tif"),
                             np.round(sim.image * 65535).astype(np.uint16))
            Image.fromarray(sim.mask.astype(np.uint8) * 255).save(os.path.join(tmp, "masks", name + ".png"))
            records.append({"image": f"images/{name}.tif", "mask": f"masks/{name}.png", "seed": sim.seed,
                            "simplex_background": sim.simplex_background, "n_cells_placed": len(sim.features),
                            "cell_fraction": sim.cell_fraction})
            if len(shown) < PREVIEW_IMAGES:
                shown.append((sim.image, sim.nuclei_labels if params.target == "nuclei" else sim.cell_labels))
        manifest = {"generator": "simcep_py", "seed": int(seed), "n_images": n_images, "shape": list(shape),
                    "n_cells": n_cells, "simplex_fraction": simplex_fraction, "params": params.to_dict(),
                    "image_format": "uint16 TIFF, intensity = value / 65535",
                    "mask_format": f"uint8 PNG, 255 = {params.target}, 0 = background",
                    "cell_fraction": float(np.mean([r["cell_fraction"] for r in records])),
                    "images": records}
        with open(os.path.join(tmp, MANIFEST), "w") as handle:
            json.dump(manifest, handle, indent=1)
        if preview is not None:
            save_png(preview, preview_grid([s[0] for s in shown], [s[1] for s in shown],
                                           columns=min(3, len(shown))))
        if os.path.exists(out):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=parent)
            os.rename(out, os.path.join(old, "old"))
            os.rename(tmp, out)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
