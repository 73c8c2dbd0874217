"""simcep_py at its defaults behaves like the original SIMCEP (Matlab) measurement model.

Each property of issue 14 is pinned statistically on a handful of seeded images, against the earlier
simcep_py model (``LEGACY_MEASUREMENT``) where the contrast shows the test can fail. Reference values
of the original, run in Octave at 512x512 with 50 nuclei: nucleus pixel fraction 0.0585, mean nucleus
intensity 0.70, about 3% of nucleus pixels saturated, effective blur sigma 5/50/95% 0.6/1.7/2.4 px.
"""

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import regionprops

from simcep_py import SimcepParams, simulate
from simcep_py.measurement import (add_blurred, autofluorescence, gaussian_kernel, illumination_field,
                                   kernel_spread)
from simcep_py.params import LEGACY_MEASUREMENT

LEGACY = SimcepParams(**LEGACY_MEASUREMENT)
SEEDS = range(6)


def _is_8bit(image):
    """True when a float32 image in [0, 1] holds exactly the values k / 255 (a lossless uint8)."""
    as_uint8 = np.round(image * 255).astype(np.uint8)
    return image.dtype == np.float32 and np.array_equal(as_uint8.astype(np.float32) / np.float32(255), image)


def _background(sim, margin=10):
    """Pixels at least ``margin`` px from any nucleus."""
    return ~ndimage.binary_dilation(sim.nuclei_mask, iterations=margin)


@pytest.fixture(scope="module")
def full_size():
    """Six default images at the issue's setting: 512x512, 50 nuclei."""
    return [simulate((512, 512), 50, seed=s) for s in SEEDS]


@pytest.fixture(scope="module")
def small():
    """(default, legacy) pairs of small images with the same seeds (identical geometry)."""
    return [(simulate((256, 256), 20, seed=s), simulate((256, 256), 20, seed=s, params=LEGACY))
            for s in range(8)]


# --- geometry: unchanged by the measurement model ---------------------------------------------------------

def test_geometry_statistics_are_unchanged(full_size):
    # Measured on these seeds before the measurement model changed (and equal to the original's).
    fraction = np.mean([sim.nuclei_mask.mean() for sim in full_size])
    area = np.mean([np.mean([f["nucleus_area"] for f in sim.features]) for sim in full_size])
    eccentricity = np.mean([np.mean([p.eccentricity for p in regionprops(sim.nuclei_labels)])
                            for sim in full_size])
    components = np.mean([ndimage.label(sim.nuclei_mask)[1] for sim in full_size])
    assert fraction == pytest.approx(0.05857, abs=5e-4)
    assert area == pytest.approx(309.8, abs=2.0)
    assert eccentricity == pytest.approx(0.378, abs=0.01)
    assert components == pytest.approx(43.5, abs=1.0)
    assert all(len(sim.features) == 50 for sim in full_size)


def test_measurement_model_leaves_masks_alone(small):
    for default, legacy in small:
        assert np.array_equal(default.nuclei_labels, legacy.nuclei_labels)
        assert np.array_equal(default.cell_labels, legacy.cell_labels)


# --- illumination -------------------------------------------------------------------------------------------

def test_illumination_bowl_is_centred_unless_shifted():
    field = illumination_field((65, 97), 0.0, np.random.default_rng(0))
    assert np.unravel_index(np.argmax(field), field.shape) == (32, 48)
    shifted = illumination_field((65, 97), 0.25, np.random.default_rng(0))
    assert np.unravel_index(np.argmax(shifted), shifted.shape) != (32, 48)


def _bowl_centre(sim):
    """Centre of ``a + b y + c x + d (x^2 + y^2)`` fitted to the background, relative to the image
    centre, as a fraction of the size."""
    background = _background(sim)
    rows, cols = np.nonzero(background)
    y, x = rows / background.shape[0] - 0.5, cols / background.shape[1] - 0.5
    design = np.stack([np.ones_like(y), y, x, x ** 2 + y ** 2], axis=1)
    _, b, c, d = np.linalg.lstsq(design, sim.image[background].astype(np.float64), rcond=None)[0]
    return -b / (2 * d), -c / (2 * d)


def test_brightest_background_is_the_image_centre(small):
    default = [np.hypot(*_bowl_centre(d)) for d, _ in small]
    legacy = [np.hypot(*_bowl_centre(l)) for _, l in small]
    # The coarse autofluorescence moves the fitted centre a little; the random shift far more.
    assert max(default) < 0.09 and np.mean(default) < 0.06
    assert sum(offset > 0.12 for offset in legacy) >= 4


# --- defocus --------------------------------------------------------------------------------------------------

def test_blur_window_caps_the_effective_spread():
    cap = kernel_spread(gaussian_kernel(5.0, 9))
    assert 2.3 < cap < 2.5, "a 9x9 window caps sigma 5 near 2.4 px"
    assert kernel_spread(gaussian_kernel(0.5, 9)) == pytest.approx(0.5, abs=0.05)  # sampled: a bit under
    assert kernel_spread(gaussian_kernel(5.0, 0)) == pytest.approx(4.9, abs=0.1)
    # The blur actually applied: an impulse spreads by the capped amount and stays inside the window.
    canvas = np.zeros((21, 21))
    add_blurred(canvas, np.ones((1, 1)), (10, 10), gaussian_kernel(5.0, 9))
    assert canvas.sum() == pytest.approx(1.0)
    assert not canvas[:6].any() and not canvas[15:].any()
    offsets = np.arange(21) - 10
    assert np.sqrt(canvas.sum(axis=1) @ offsets ** 2) == pytest.approx(cap)


def test_effective_blur_spread_matches_the_original(full_size):
    cap = kernel_spread(gaussian_kernel(5.0, 9))
    spread = np.concatenate([[f["blur_spread"] for f in sim.features] for sim in full_size])
    assert spread.max() <= cap + 1e-12
    low, median, high = np.percentile(spread, [5, 50, 95])
    assert low < 0.8 and 1.4 < median < 2.1 and 2.3 < high, (low, median, high)


def test_one_depth_per_group_of_touching_objects_deepest_gets_the_most_blur(full_size):
    low, high = SimcepParams().blur_sigma_range
    for sim in full_size:
        groups = {}
        for feature in sim.features:
            groups.setdefault(feature["blur_group"], set()).add(feature["sigma"])
        assert all(len(sigmas) == 1 for sigmas in groups.values()), "a group shares one depth"
        assert max(f["sigma"] for f in sim.features) == pytest.approx(high)
        assert min(f["sigma"] for f in sim.features) >= low
        # Touching nuclei (8-connected) are in one group; separate ones mostly are not.
        components, n = ndimage.label(sim.nuclei_mask, structure=np.ones((3, 3)))
        for label in range(1, n + 1):
            members = np.unique(sim.nuclei_labels[components == label])
            assert len({sim.features[m - 1]["blur_group"] for m in members}) == 1
        assert len(groups) >= n - 2


def test_legacy_blur_draws_a_full_gaussian_per_object(small):
    for _, legacy in small:
        assert len({f["blur_group"] for f in legacy.features}) == len(legacy.features)
    spread = np.concatenate([[f["blur_spread"] for f in legacy.features] for _, legacy in small])
    assert spread.max() > 3.5


# --- intensity ------------------------------------------------------------------------------------------------

def test_a_few_percent_of_nucleus_pixels_saturate(full_size):
    saturated = np.mean([(sim.image[sim.nuclei_mask] >= 1.0).mean() for sim in full_size])
    inside = np.mean([sim.image[sim.nuclei_mask].mean() for sim in full_size])
    assert 0.01 < saturated < 0.06
    assert inside == pytest.approx(0.70, abs=0.04)


def test_peak_normalisation_keeps_everything_below_one(small):
    saturated = np.mean([(legacy.image[legacy.nuclei_mask] >= 1.0).mean() for _, legacy in small])
    assert saturated < 0.002
    ratio = [legacy.image[legacy.nuclei_mask].mean() / default.image[default.nuclei_mask].mean()
             for default, legacy in small]
    assert max(ratio) < 0.95, "peak-normalised nuclei are dimmer"


# --- background --------------------------------------------------------------------------------------------

def test_autofluorescence_is_two_coarse_octaves():
    assert SimcepParams().background_texture == (1.0, 1, 2, 0.0)

    def fine_share(texture):
        # Share of the field's variation finer than about 1/16 of the image.
        fields = [autofluorescence((128, 128), texture, np.random.default_rng(s)) for s in SEEDS]
        return max(np.std(f - ndimage.gaussian_filter(f, 4, mode="reflect")) / np.std(f) for f in fields)

    assert fine_share(SimcepParams().background_texture) < 0.05
    assert fine_share(LEGACY.background_texture) > 0.1


def test_background_energy_is_matched_to_the_sharp_cells():
    # The blur lowers the cells' energy, so matching the blurred image gives a dimmer background.
    for seed in SEEDS:
        exact = SimcepParams(noise_var=0.0, jpeg_output=False)
        sharp = simulate((256, 256), 20, seed, exact)
        blurred = simulate((256, 256), 20, seed, SimcepParams(noise_var=0.0, jpeg_output=False,
                                                              background_reference="blurred"))
        background = _background(sharp)
        ratio = sharp.image[background].mean() / blurred.image[background].mean()
        assert 1.03 < ratio < 1.2, ratio


# --- output --------------------------------------------------------------------------------------------------

def test_output_goes_through_an_8bit_jpeg(small):
    assert all(_is_8bit(default.image) for default, _ in small)
    assert not any(_is_8bit(legacy.image) for _, legacy in small)
    default = simulate((256, 256), 20, seed=0)
    continuous = simulate((256, 256), 20, seed=0, params=SimcepParams(jpeg_output=False))
    assert not _is_8bit(continuous.image)
    # Quality 100: the 8-bit round trip moves values by quantisation, barely by compression.
    difference = np.abs(default.image - continuous.image) * 255
    assert difference.mean() < 0.6 and difference.max() <= 3


def test_compression_lowers_the_jpeg_quality():
    best = simulate((128, 128), 10, seed=2)
    poor = simulate((128, 128), 10, seed=2, params=SimcepParams(comp=0.7))
    assert _is_8bit(poor.image)
    error = np.abs(poor.image - best.image)
    assert 0 < error.mean() < 0.05


@pytest.mark.parametrize("field,value,words", [
    ("blur_window", 8, "blur_window"),
    ("blur_window", 1, "blur_window"),
    ("blur_per_group", 1, "blur_per_group"),
    ("peak_normalise", "yes", "peak_normalise"),
    ("background_reference", "ideal", "background_reference"),
])
def test_new_parameters_are_validated(field, value, words):
    with pytest.raises(ValueError, match=words):
        SimcepParams(**{field: value})


def test_compression_needs_the_jpeg_output():
    with pytest.raises(ValueError, match="jpeg_output"):
        SimcepParams(comp=0.5, jpeg_output=False)
