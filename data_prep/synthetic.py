"""Synthetic dataset: SIMCEP images from ``simcep_py``, random training patches, a test split from other images.

The source images are planned by :func:`simcep_py.dataset.plan_images`, the one seeding scheme (so
``python -m simcep_py`` with the same seed and parameters draws the same images): each gets its own seed
and a cell count drawn uniformly from ``n_cells`` (default 60-100 nuclei of radius ~10 px on 512 x 512,
about 7-12 % cell pixels, the ~10 % of the report); the last round(``test_fraction`` x ``n_images``) are
used only for the test split, and within each split the first round(``simplex_fraction`` x count) images
get the simplex-noise background, so train and test both hold that share (half by default). Images are normalised like the real ones (robust percentiles, see
:mod:`data_prep.normalize`) so pre-training and fine-tuning see the same intensity scale. Training
patches are sampled at random positions (overlap allowed, near-empty rule applied, see
:mod:`data_prep.patches`); test patches are random positions in the test images without the rule.
"""

import numpy as np

from cellfcn.errors import InputError
from cellfcn.scale import pooled_median_diameter
from simcep_py import simulate

from .normalize import normalize_percentile
from .patches import cell_fraction, sample_patches
from .progress import progress_map
from .targets import contour_targets


def render_images(plan, size, pct):
    """Simulate and normalise the planned images: list of (image float32, mask bool, nuclei labels int32)."""
    def render(item):
        sim = simulate(shape=(size, size), n_cells=item["n_cells"], seed=item["seed"],
                       simplex_background=item["simplex_background"])
        image = normalize_percentile(sim.image, *pct, name=f"synthetic image (seed {item['seed']})")
        return image, np.asarray(sim.mask, dtype=bool), np.asarray(sim.nuclei_labels, dtype=np.int32)

    return progress_map(render, plan, "simulating")


def build_synthetic_splits(plan, rendered, n_train, n_test, patch_size, rng, min_cell_fraction):
    """Sample the train and test patches.

    Returns
    -------
    splits : dict of name -> dict with ``data`` (N, P, P) float32, ``label`` (N, P, P) bool, ``label3``
        (N, P, P) uint8 (3-class targets of the whole image, :func:`data_prep.targets.contour_targets`),
        ``label4`` (the 4-class targets: the same, SIMCEP has no micronuclei),
        ``source_index`` (N,) (index into the plan) and ``origin`` (N, 2)
    info : dict of name -> manifest entry
    diameter : float or None
        Median nucleus diameter of the training images (pixels).
    """
    if not any(mask.any() for _, mask, _ in rendered):
        raise InputError("every synthetic mask is empty: no cell pixels to learn from")
    splits, info = {}, {}
    for name, n, min_fraction in (("train", n_train, min_cell_fraction), ("test", n_test, 0.0)):
        members = [i for i, item in enumerate(plan) if item["split"] == name]
        masks = [rendered[i][1] for i in members]
        local, origin = sample_patches(masks, n, patch_size, rng, min_fraction, overlap=True)
        p = patch_size
        data = np.stack([rendered[members[j]][0][y:y + p, x:x + p] for j, (y, x) in zip(local, origin)])
        label = np.stack([masks[j][y:y + p, x:x + p] for j, (y, x) in zip(local, origin)])
        targets = {j: contour_targets(rendered[members[j]][2]) for j in np.unique(local)}
        label3 = np.stack([targets[j][y:y + p, x:x + p] for j, (y, x) in zip(local, origin)])
        index = np.asarray(members, dtype=np.int32)[local]
        # SIMCEP draws no micronuclei: the 4-class target is the 3-class one (a 4-class net pretrains on it).
        splits[name] = {"data": data, "label": label, "label3": label3, "label4": label3,
                        "source_index": index, "origin": origin}
        info[name] = {"n": int(n), "cell_fraction": round(cell_fraction(label), 6),
                      "image_cell_fraction": round(cell_fraction(masks), 6), "n_images": len(members),
                      "n_simplex_images": sum(plan[i]["simplex_background"] for i in members),
                      "near_empty_rule": min_fraction > 0}
    train = [rendered[i][2] for i, item in enumerate(plan) if item["split"] == "train"]
    return splits, info, pooled_median_diameter(train)
