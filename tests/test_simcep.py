"""Tests of simcep_py: shapes, textures, placement, measurement model, simulate() and the CLI."""

import json
import os
import subprocess
import sys
from itertools import combinations

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage
from skimage.draw import polygon as draw_polygon

from simcep_py import SimcepParams, simulate
from simcep_py.__main__ import main
from simcep_py.dataset import plan_images
from simcep_py.measurement import add_blurred, blur_pad, energy_matched, gaussian_kernel, simplex_field
from simcep_py.placement import intersection, overlap_fraction
from simcep_py.shapes import fill_curve, random_knots, shape_mask, spline_curve
from simcep_py.texture import perlin_texture, resize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _image_window(obj, shape):
    """Slices of the image and of the object's frame where the frame lies inside the image."""
    y0, x0 = max(obj.origin[0], 0), max(obj.origin[1], 0)
    y1 = min(obj.origin[0] + obj.cell.shape[0], shape[0])
    x1 = min(obj.origin[1] + obj.cell.shape[1], shape[1])
    return ((slice(y0, y1), slice(x0, x1)),
            (slice(y0 - obj.origin[0], y1 - obj.origin[0]), slice(x0 - obj.origin[1], x1 - obj.origin[1])))


def _paint(objects, shape, which):
    """Per-pixel count of objects covering it, from the objects' own full masks."""
    count = np.zeros(shape, dtype=np.int32)
    for obj in objects:
        image_win, frame_win = _image_window(obj, shape)
        count[image_win] += getattr(obj, which)[frame_win]
    return count


# --- shapes -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("radius,alpha,beta", [(10, 0.1, 0.1), (20, 0.3, 0.05), (6, 0.1, 0.1)])
def test_shapes_are_closed_solid_and_area_near_pi_r2(radius, alpha, beta):
    rng = np.random.default_rng(1)
    areas = []
    for _ in range(150):
        mask = shape_mask(radius, alpha, beta, rng)
        labelled, n = ndimage.label(mask)
        assert n == 1, "a shape must be one connected region"
        assert np.array_equal(ndimage.binary_fill_holes(mask), mask), "a closed curve leaves no holes"
        assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()), "clipped"
        areas.append(mask.sum())
    areas = np.array(areas) / (np.pi * radius ** 2)
    assert abs(areas.mean() - 1) < 0.06
    assert areas.min() > 0.6 and areas.max() < 1.5


def test_spline_passes_through_the_knots_and_closes():
    knots = random_knots(0.3, 0.05, np.random.default_rng(2), n=3)
    curve = spline_curve(knots, 1.0, n_samples=200)
    # Samples at t = k / 10 are the knots; the curve returns to the first knot smoothly.
    np.testing.assert_allclose(curve[:, :, ::20], knots, atol=1e-12)
    steps = np.hypot(*np.diff(np.concatenate([curve, curve[:, :, :1]], axis=2), axis=1))
    assert steps.max() < 3 * np.median(steps)


def test_fill_curve_matches_skimage_polygon():
    rng = np.random.default_rng(3)
    for _ in range(100):
        curve = spline_curve(random_knots(0.3, 0.05, rng), 15.0)[0] + rng.uniform(5, 35, size=(2, 1))
        expected = np.zeros((40, 40), dtype=bool)
        rr, cc = draw_polygon(curve[0], curve[1], shape=(40, 40))
        expected[rr, cc] = True
        assert np.array_equal(fill_curve(curve[0], curve[1], (40, 40)), expected)


def test_fill_curve_fills_a_self_intersecting_loop():
    # A square with a loop crossing back over it: even-odd filling would leave a hole.
    rows = np.array([2, 2, 12, 12, 6, 6, 16, 16, 2.0])
    cols = np.array([2, 12, 12, 6, 6, 16, 16, 2, 2.0])
    mask = fill_curve(rows, cols, (20, 20))
    assert mask[8, 8] and mask[4, 4] and mask[14, 14]
    assert np.array_equal(ndimage.binary_fill_holes(mask), mask)


# --- textures and the measurement model ------------------------------------------------------------------

def test_perlin_texture_range_and_independence():
    textures = perlin_texture((23, 23), 0.5, 2, 5, 0.2, np.random.default_rng(4), n=5)
    assert textures.shape == (5, 23, 23) and textures.dtype == np.float32
    np.testing.assert_allclose(textures.min(axis=(1, 2)), 0.2, atol=1e-6)
    np.testing.assert_allclose(textures.max(axis=(1, 2)), 1.0, atol=1e-6)
    assert not np.allclose(textures[0], textures[1])
    # Persistence 0.9 keeps more fine detail than 0.5: larger pixel-to-pixel differences.
    coarse = perlin_texture((64, 64), 0.5, 2, 6, 0.0, np.random.default_rng(5))
    fine = perlin_texture((64, 64), 0.9, 2, 6, 0.0, np.random.default_rng(5))
    assert np.abs(np.diff(fine, axis=1)).mean() > np.abs(np.diff(coarse, axis=1)).mean()


@pytest.mark.parametrize("order", [1, 3])
def test_resize_equals_ndimage_zoom(order):
    grid = np.random.default_rng(6).random((7, 11))
    expected = ndimage.zoom(grid, (30 / 7, 20 / 11), order=order, mode="reflect", grid_mode=True)
    np.testing.assert_allclose(resize(grid, (30, 20), order), expected, atol=1e-8)


def test_energy_matching_and_blur_conserve_what_they_should():
    field = np.random.default_rng(7).random((32, 32))
    matched = energy_matched(field, reference_energy=50.0, scale=0.05)
    assert np.isclose(np.sum(matched ** 2), 2.5)
    patch = np.zeros((9, 9))
    patch[2:7, 2:7] = 1.0
    peaks = []
    for sigma in (0.5, 2.0, 5.0):
        canvas = np.zeros((60, 60))
        add_blurred(canvas, patch, (25, 25), gaussian_kernel(sigma))
        assert np.isclose(canvas.sum(), patch.sum(), rtol=0.01), "blur keeps the object's intensity"
        peaks.append(canvas.max())
    assert peaks[0] > peaks[1] > peaks[2], "a deeper object is more blurred"
    assert blur_pad(5.0) == 15


def test_simplex_field_is_smooth_seeded_and_normalised():
    a = simplex_field((96, 128), 0.3, np.random.default_rng(8))
    b = simplex_field((96, 128), 0.3, np.random.default_rng(8))
    c = simplex_field((96, 128), 0.3, np.random.default_rng(9))
    assert a.shape == (96, 128) and np.array_equal(a, b) and not np.allclose(a, c)
    assert np.isclose(a.min(), 0) and np.isclose(a.max(), 1)
    assert np.abs(np.diff(a, axis=0)).max() < 0.1  # smooth: no pixel-scale jumps


# --- simulate ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def default_sim():
    return simulate((512, 512), 50, seed=0)


def test_default_simulation_count_and_cell_fraction(default_sim):
    sim = default_sim
    assert sim.image.shape == (512, 512) and sim.image.dtype == np.float32
    assert 0.0 <= sim.image.min() and sim.image.max() <= 1.0
    assert len(sim.features) == 50
    assert len(np.unique(sim.nuclei_labels)) == 51  # every nucleus visible, plus background
    # 50 nuclei of radius 10 cover 50 pi 10^2 / 512^2 = 6.0% before clipping and overlap.
    assert 0.045 < sim.cell_fraction < 0.07
    assert sim.mask is sim.nuclei_mask
    assert sim.cell_mask.mean() > 2 * sim.nuclei_mask.mean()


def test_masks_labels_features_and_objects_agree(default_sim):
    sim = default_sim
    shape = sim.image.shape
    assert np.array_equal(sim.nuclei_mask, sim.nuclei_labels > 0)
    assert np.array_equal(sim.cell_mask, sim.cell_labels > 0)
    assert np.array_equal(sim.nuclei_mask, _paint(sim.objects, shape, "nucleus") > 0)
    assert np.array_equal(sim.cell_mask, _paint(sim.objects, shape, "cell") > 0)
    assert not (sim.nuclei_mask & ~sim.cell_mask).any(), "nuclei lie inside their cells"
    for obj, feat in zip(sim.objects, sim.features):
        assert feat["label"] == obj.label
        image_win, frame_win = _image_window(obj, shape)
        for which, labels in (("nucleus", sim.nuclei_labels), ("cell", sim.cell_labels)):
            full = np.zeros(shape, dtype=bool)
            full[image_win] = getattr(obj, which)[frame_win]
            assert feat[f"{which}_area"] == full.sum()
            np.testing.assert_allclose(feat[f"{which}_centroid"], np.argwhere(full).mean(axis=0))
            assert not ((labels == obj.label) & ~full).any(), "a label lies outside its object"
        assert feat["area"] == feat["nucleus_area"] and feat["centroid"] == feat["nucleus_centroid"]
        low, high = sim.params.blur_sigma_range
        assert low <= feat["sigma"] <= high
    # One defocus depth per group of touching nuclei: most of the 50 are apart, so most depths differ.
    n_groups = len({f["blur_group"] for f in sim.features})
    assert len({round(f["sigma"], 6) for f in sim.features}) == n_groups > 35
    assert any(f["cluster"] >= 0 for f in sim.features) and any(f["cluster"] < 0 for f in sim.features)


@pytest.mark.parametrize("target,overlap", [("nuclei", 0.0), ("nuclei", 0.15), ("cells", 0.3)])
def test_overlap_rule_holds_in_the_output(target, overlap):
    params = SimcepParams(target=target, overlap=overlap, clustprob=0.9, clust=2)
    sim = simulate((192, 192), 40, seed=11, params=params)
    which = "nucleus" if target == "nuclei" else "cell"
    fractions = [overlap_fraction(getattr(a, which), a.origin, getattr(b, which), b.origin)
                 for a, b in combinations(sim.objects, 2)]
    assert max(fractions) <= overlap
    if overlap == 0:
        assert _paint(sim.objects, (192, 192), which).max() == 1
    else:
        assert max(fractions) > 0, "crowded clusters should use some of the allowed overlap"
    # Where targets overlap, the later cell owns the pixel in the label image.
    assert np.array_equal(sim.mask, (sim.nuclei_labels if target == "nuclei" else sim.cell_labels) > 0)


def test_intersection_counts_pixels_of_offset_frames():
    a = np.ones((4, 4), dtype=bool)
    assert intersection(a, (0, 0), a, (2, 3)) == 2
    assert intersection(a, (0, 0), a, (4, 0)) == 0
    assert overlap_fraction(a, (0, 0), np.ones((2, 2), dtype=bool), (1, 1)) == 1.0


def test_crowded_image_places_fewer_cells_and_says_so():
    params = SimcepParams(overlap=0.0, max_tries=5)
    sim = simulate((64, 64), 60, seed=3, params=params)
    assert 0 < len(sim.features) < 60
    assert len(np.unique(sim.nuclei_labels)) - 1 == len(sim.features)


def test_cells_target_uses_the_cell_channel_and_mask():
    params = SimcepParams(target="cells")
    sim = simulate((256, 256), 20, seed=5, params=params)
    nuclei = simulate((256, 256), 20, seed=5, params=SimcepParams(target="nuclei", overlap=params.overlap))
    assert sim.mask is sim.cell_mask
    assert sim.features[0]["area"] == sim.features[0]["cell_area"]
    # Cell channel: the cytoplasm is bright, so mean intensity inside cells but outside nuclei is high.
    ring = sim.cell_mask & ~sim.nuclei_mask
    assert sim.image[ring].mean() > 2 * sim.image[~sim.cell_mask].mean()
    assert nuclei.image[ring].mean() < sim.image[ring].mean()


def test_no_cells_gives_empty_masks():
    sim = simulate((64, 80), 0, seed=1)
    assert sim.image.shape == (64, 80) and not sim.mask.any() and sim.features == []
    assert np.isfinite(sim.image).all()


def test_simplex_background_changes_image_not_masks():
    plain = simulate((256, 256), 20, seed=7)
    noisy = simulate((256, 256), 20, seed=7, simplex_background=True)
    for name in ("mask", "nuclei_mask", "cell_mask", "nuclei_labels", "cell_labels"):
        assert np.array_equal(getattr(plain, name), getattr(noisy, name))
    assert plain.features == noisy.features
    background = ~ndimage.binary_dilation(plain.cell_mask, iterations=20)
    diff = noisy.image.astype(np.float64) - plain.image
    # The background brightens unevenly (varies far more than the CCD noise, sigma 0.01).
    assert diff[background].mean() > 0.02
    assert diff[background].std() > 0.02


def test_same_seed_same_arrays_other_seed_differs():
    a = simulate((128, 128), 12, seed=42, simplex_background=True)
    b = simulate((128, 128), 12, seed=42, simplex_background=True)
    c = simulate((128, 128), 12, seed=43, simplex_background=True)
    for name in ("image", "nuclei_labels", "cell_labels"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.nuclei_labels, c.nuclei_labels)


def test_jpeg_output_changes_the_image_only():
    plain = simulate((128, 128), 10, seed=2, params=SimcepParams(jpeg_output=False))
    jpeg = simulate((128, 128), 10, seed=2, params=SimcepParams(comp=0.7))
    assert not np.array_equal(plain.image, jpeg.image)
    assert np.abs(plain.image - jpeg.image).mean() < 0.05
    assert np.array_equal(plain.mask, jpeg.mask)


@pytest.mark.parametrize("field,value,words", [
    ("nucleus_radius", -1.0, "nucleus_radius"),
    ("cytoplasm_radius", 5.0, "cytoplasm_radius"),
    ("overlap", 1.5, "overlap must be in [0, 1]"),
    ("overlap", -0.1, "overlap"),
    ("clustprob", float("nan"), "clustprob"),
    ("clust", 0, "clust"),
    ("clust", 2.5, "clust"),
    ("spatvar", 0.0, "spatvar"),
    ("nucleus_texture", (0.5, 2, 5), "nucleus_texture"),
    ("cytoplasm_texture", (1.5, 2, 8, 0.2), "persistence"),
    ("nucleus_shape", (0.1, 0.9), "nucleus_shape"),
    ("blur_sigma_range", (5.0, 0.5), "blur_sigma_range"),
    ("noise_var", -1e-4, "noise_var"),
    ("comp", 1.0, "comp"),
    ("illum_shift", 0.6, "illum_shift"),
    ("target", "cytoplasm", "target"),
    ("illumscale", True, "illumscale"),
])
def test_invalid_parameters_raise_clear_errors(field, value, words):
    with pytest.raises(ValueError) as info:
        SimcepParams(**{field: value})
    assert words in str(info.value)


def test_params_round_trip_and_unknown_names():
    params = SimcepParams(nucleus_radius=8.0, target="cells")
    assert SimcepParams.from_dict(json.loads(json.dumps(params.to_dict()))) == params
    with pytest.raises(ValueError, match="unknown SIMCEP parameter"):
        SimcepParams.from_dict({"radius": 3})


@pytest.mark.parametrize("kwargs,words", [
    ({"shape": (8, 512)}, "image sides"),
    ({"shape": (512,)}, "shape"),
    ({"n_cells": -1}, "n_cells"),
    ({"seed": -5}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"params": {"overlap": 0.1}}, "SimcepParams"),
])
def test_simulate_rejects_bad_arguments(kwargs, words):
    args = {"shape": (64, 64), "n_cells": 5, "seed": 0, **kwargs}
    with pytest.raises(ValueError) as info:
        simulate(**args)
    assert words in str(info.value)


# --- CLI ----------------------------------------------------------------------------------------------------

def test_cli_writes_images_masks_json_and_preview(tmp_path):
    out, preview = tmp_path / "syn", tmp_path / "preview.png"

    def args(folder, *extra):
        return ["--n-images", "4", "--size", "96x128", "--n-cells", "8", "--out", str(folder), "--seed", "3",
                "--quiet", "--set", "nucleus_radius=7", *extra]

    assert main(args(out, "--preview", str(preview))) == 0
    manifest = json.loads((out / "simcep.json").read_text())
    assert manifest["seed"] == 3 and manifest["shape"] == [96, 128]
    assert SimcepParams.from_dict(manifest["params"]) == SimcepParams(nucleus_radius=7.0)
    assert sum(r["simplex_background"] for r in manifest["images"]) == 2
    params = SimcepParams(nucleus_radius=7.0)
    for i, record in enumerate(manifest["images"]):
        image = tifffile.imread(out / record["image"])
        mask = np.asarray(Image.open(out / record["mask"]))
        sim = simulate((96, 128), 8, record["seed"], params, record["simplex_background"])
        assert record["seed"] == plan_images(4, np.random.default_rng(3), 8)[i]["seed"]
        assert image.dtype == np.uint16 and image.shape == (96, 128)
        assert np.array_equal(image, np.round(sim.image * 65535).astype(np.uint16))
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        assert np.array_equal(mask == 255, sim.mask)
    grid = np.asarray(Image.open(preview))
    assert grid.ndim == 3 and grid.shape[0] >= 2 * 96 and (grid == [255, 40, 40]).all(axis=2).any()
    assert sorted(os.listdir(tmp_path)) == ["preview.png", "syn"], "no temporary folders left"
    # The same seed again: byte-identical files. again: byte-identical files.
    again = tmp_path / "again"
    assert main(args(again)) == 0
    for record in manifest["images"]:
        for key in ("image", "mask"):
            assert (out / record[key]).read_bytes() == (again / record[key]).read_bytes()


def test_cli_refuses_existing_output_and_overwrites_on_request(tmp_path, capsys):
    out = tmp_path / "syn"
    assert main(["--n-images", "1", "--size", "64", "--n-cells", "3", "--test-fraction", "0", "--out", str(out),
                 "--quiet"]) == 0
    assert main(["--n-images", "1", "--size", "64", "--n-cells", "3", "--test-fraction", "0", "--out", str(out),
                 "--quiet"]) == 1
    assert "exists" in capsys.readouterr().err
    assert main(["--n-images", "2", "--size", "64", "--n-cells", "3", "--out", str(out), "--quiet",
                 "--overwrite"]) == 0
    assert len(os.listdir(out / "images")) == 2
    assert sorted(os.listdir(tmp_path)) == ["syn"]


@pytest.mark.parametrize("foreign", ["notes.txt", "images/mine.tif", "masks/keep/x.png"])
def test_cli_overwrite_refuses_files_it_did_not_write(tmp_path, capsys, foreign):
    out = tmp_path / "syn"
    args = ["--n-images", "1", "--size", "64", "--n-cells", "3", "--test-fraction", "0", "--out", str(out),
            "--quiet", "--overwrite"]
    assert main(args) == 0
    (out / foreign).parent.mkdir(parents=True, exist_ok=True)
    (out / foreign).write_text("the user's")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite refuses" in err and "nothing was deleted" in err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


@pytest.mark.parametrize("manifest", [None, "{not json", '{"generator": "someone else", "images": []}'])
def test_cli_overwrite_refuses_a_folder_of_the_users(tmp_path, capsys, manifest):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    if manifest is not None:
        (out / "simcep.json").write_text(manifest)
    assert main(["--n-images", "1", "--size", "64", "--out", str(out), "--quiet", "--overwrite"]) == 1
    assert "not a simcep_py output folder" in capsys.readouterr().err
    assert (out / "thesis.tex").read_text() == "years of work"
    assert sorted(os.listdir(tmp_path)) == ["mine"]


@pytest.mark.parametrize("bad", [["--set", "overlap=2"], ["--n-images", "0"], ["--size", "abc"],
                                 ["--simplex-fraction", "1.5"], ["--set", "bogus=1"]])
def test_cli_bad_argument_fails_cleanly(tmp_path, capsys, bad):
    out = tmp_path / "syn"
    args = ["--n-images", "2", "--size", "64", "--out", str(out), "--quiet"]
    for i in range(0, len(bad), 2):
        if bad[i] in args:
            args[args.index(bad[i]) + 1] = bad[i + 1]
        else:
            args += bad[i:i + 2]
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse rejects malformed values itself
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(("error:", "python -m simcep_py: error:"))
    assert os.listdir(tmp_path) == [], "no output or temporary folder left"


def test_cli_as_a_module_exits_with_a_one_line_error(tmp_path):
    out = tmp_path / "syn"
    result = subprocess.run([sys.executable, "-m", "simcep_py", "--n-images", "2", "--out", str(out),
                             "--set", "nucleus_radius=-3"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: nucleus_radius must be in [2, 1000] px, got -3"]
    assert not out.exists() and os.listdir(tmp_path) == []


def test_plan_is_exact_per_split_and_seeded():
    plan = plan_images(12, np.random.default_rng(1), (60, 100), simplex_fraction=0.5, test_fraction=0.25)
    assert [p["split"] for p in plan] == ["train"] * 9 + ["test"] * 3
    assert sum(p["simplex_background"] for p in plan if p["split"] == "train") == round(0.5 * 9)
    assert sum(p["simplex_background"] for p in plan if p["split"] == "test") == round(0.5 * 3)
    assert all(60 <= p["n_cells"] <= 100 for p in plan)
    assert plan == plan_images(12, np.random.default_rng(1), (60, 100), 0.5, 0.25)
    assert plan != plan_images(12, np.random.default_rng(2), (60, 100), 0.5, 0.25)
    assert all(p["split"] == "train" for p in plan_images(1, np.random.default_rng(0), 5, 1.0, 0.0))
    with pytest.raises(ValueError, match="at least 2 images"):
        plan_images(1, np.random.default_rng(0), 5, 0.5, 0.25)


def test_a_failure_midway_leaves_no_folder(tmp_path, monkeypatch):
    import simcep_py.dataset as dataset

    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return simulate(*args, **kwargs)

    monkeypatch.setattr(dataset, "simulate", failing)
    with pytest.raises(RuntimeError):
        dataset.write_dataset(tmp_path / "syn", 3, (64, 64), 3, seed=0, progress=False)
    assert os.listdir(tmp_path) == []
