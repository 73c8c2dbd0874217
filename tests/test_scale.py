"""Nucleus size and the resize factor (cellfcn.scale): the diameter measure, the factor a diameter gives, and the
estimate from an image's own segmentation on drawn nuclei of known size at several magnifications."""
import math

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.transform import resize

from cellfcn import scale
from cellfcn.images import resize_normalized

DATASET_DIAMETER = 20.0  # the training nuclei's median diameter at the net's scale (mnfinder at 0.75: about 20)


def nuclei(shape, radius, n, rng):
    """A fluorescence-like image of ``n`` elliptic nuclei of mean radius ``radius`` (axes +-15%, some touching),
    blurred and noisy, and their instance labels."""
    yy, xx = np.mgrid[:shape[0], :shape[1]].astype(np.float64)
    labels = np.zeros(shape, np.int32)
    for k in range(1, n + 1):
        for _ in range(100):  # a free spot: the nucleus may touch others, not cover them
            cy, cx = rng.uniform(radius, np.array(shape) - radius)
            a, b = radius * rng.uniform(0.85, 1.15, 2)
            angle = rng.uniform(0, np.pi)
            u = (yy - cy) * np.cos(angle) + (xx - cx) * np.sin(angle)
            v = -(yy - cy) * np.sin(angle) + (xx - cx) * np.cos(angle)
            inside = (u / a) ** 2 + (v / b) ** 2 <= 1
            if (labels[inside] > 0).mean() < 0.02:
                labels[inside & (labels == 0)] = k
                break
    brightness = np.concatenate([[0.0], rng.uniform(0.5, 1.0, n)])
    image = 0.1 + brightness[labels]
    image = ndi.gaussian_filter(image, 0.1 * radius + 0.5) + rng.normal(0, 0.03, shape)
    return (np.clip(image, 0, 1) * 4000).astype(np.uint16), labels


def classical_measure(image):
    """``measure(factor)`` of cellfcn.scale.estimate_factor as tools.segment builds it: the normalised image
    resized by the factor, then cellfcn.scale.classical_diameter."""
    image = image.astype(np.float64) / image.max()

    def measure(factor):
        shape = tuple(max(1, round(s * factor)) for s in image.shape)
        return scale.classical_diameter(resize(image, shape, order=1, anti_aliasing=factor < 1, preserve_range=True))

    return measure


def disc_labels(shape, radius, centres):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    labels = np.zeros(shape, np.int32)
    for k, (cy, cx) in enumerate(centres, 1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = k
    return labels


def test_median_diameter_of_discs_leaves_out_cut_nuclei():
    labels = disc_labels((120, 120), 10, [(30, 30), (30, 80), (80, 50), (115, 60)])  # the last one is cut
    # equivalent diameter of a digital disc of radius 10 (317 pixels): 20.1
    assert scale.median_diameter(labels) == pytest.approx(2 * math.sqrt(317 / math.pi))
    assert math.isnan(scale.median_diameter(labels, min_nuclei=4))
    assert math.isnan(scale.median_diameter(np.zeros((10, 10), np.int32)))
    with pytest.raises(ValueError):
        scale.median_diameter(labels.astype(np.float32))


def test_factor_for_diameter():
    assert scale.factor_for_diameter(20, 40) == 0.5
    assert scale.factor_for_diameter(20.0, 13.5) == pytest.approx(1.4815, abs=1e-4)
    for bad in (0, -3, math.nan, math.inf):
        with pytest.raises(ValueError):
            scale.factor_for_diameter(20, bad)
    with pytest.raises(ValueError, match="outside"):
        scale.factor_for_diameter(20, 0.5)  # 40x: beyond any magnification the net could make sense of


@pytest.mark.parametrize("radius", [5, 7, 10, 15, 20, 30])
def test_estimate_finds_the_size_of_drawn_nuclei(radius):
    """Drawn nuclei of radius 5..30 px: the estimate brings them to the training size within 5%, from a start
    at the training data's factor (0.75)."""
    rng = np.random.default_rng(radius)
    size = int(radius * 16)
    image, labels = nuclei((size, size), radius, 30, rng)
    ideal = DATASET_DIAMETER / scale.median_diameter(labels)
    estimate = scale.estimate_factor(classical_measure(image), 0.75, DATASET_DIAMETER)
    assert estimate["estimated"] and estimate["converged"]
    assert abs(estimate["factor"] / ideal - 1) <= 0.05, (estimate, ideal)
    assert estimate["diameter_px"] == pytest.approx(DATASET_DIAMETER / estimate["factor"], rel=scale.TOLERANCE)
    assert len(estimate["passes"]) <= scale.MAX_PASSES
    assert estimate["factor"] in [f for f, _ in estimate["passes"]]  # a factor that was measured


def test_run_factor_is_the_median_kept_at_the_dataset_factor_when_close():
    # the median 0.52, on the grid of 2% steps around the dataset's factor: 0.75 * 1.02 ** -18; NaN left out
    assert scale.run_factor([0.5, 0.52, 3.0, math.nan, None], 0.75) == (pytest.approx(0.75 * 1.02 ** -18), True)
    assert scale.run_factor([0.66, 0.7, 0.86], 0.75) == (0.75, True)  # within 15%: the dataset's factor
    assert scale.run_factor([math.nan, None], 0.75) == (0.75, False)
    assert scale.run_factor([], 0.75) == (0.75, False)
    # one image more moves the run's factor only when the median crosses a step
    assert scale.run_factor([0.4, 0.41, 0.42], 0.75) == scale.run_factor([0.4, 0.41, 0.4105, 0.42], 0.75)


def test_images_like_the_training_data_keep_the_dataset_factor():
    rng = np.random.default_rng(1)
    estimates = [scale.estimate_factor(classical_measure(nuclei((200, 200), DATASET_DIAMETER / 2 / 0.75, 25, rng)[0]),
                                       0.75, DATASET_DIAMETER)["factor"] for _ in range(3)]
    assert all(abs(e / 0.75 - 1) <= 0.1 for e in estimates), estimates
    assert scale.run_factor(estimates, 0.75) == (0.75, True)


def test_estimate_without_nuclei_keeps_the_start():
    calls = []

    def measure(factor):
        calls.append(factor)
        return math.nan

    estimate = scale.estimate_factor(measure, 0.75, DATASET_DIAMETER)
    assert calls == [0.75]
    assert estimate["factor"] == 0.75 and not estimate["estimated"] and math.isnan(estimate["diameter_px"])


def test_estimate_is_bounded_and_the_last_measured_factor_is_kept():
    # a first pass that found only specks (2 px) moves the factor to 4x the start at most, not 10x
    seen = []

    def measure(factor):
        seen.append(factor)
        return {0.75: 2.0, 3.0: math.nan}[factor]

    estimate = scale.estimate_factor(measure, 0.75, DATASET_DIAMETER)
    assert seen == [0.75, 3.0] and 3.0 == 0.75 * scale.ESTIMATE_RANGE
    # the second pass found nothing: the first pass's factor, whose segmentation exists, is the result
    assert estimate["factor"] == 0.75 and estimate["estimated"] and not estimate["converged"]
    with pytest.raises(ValueError):
        scale.estimate_factor(measure, 0.75, DATASET_DIAMETER, max_passes=0)
    with pytest.raises(ValueError):
        scale.estimate_factor(measure, -1, DATASET_DIAMETER)


@pytest.mark.parametrize("magnification", [0.5, 0.67, 1.5, 2.0])
def test_magnified_test_images_keep_their_nuclei(magnification):
    """The magnification test's images: image and labels resized together, nuclei scaled by the magnification,
    so the ideal factor moves by its inverse."""
    from tools.magnification import ideal_factor, magnify

    image, labels = nuclei((240, 200), 12, 20, np.random.default_rng(4))
    big, big_labels = magnify(image, labels, magnification)
    assert big.shape == big_labels.shape == (round(240 * magnification), round(200 * magnification))
    assert big.dtype == np.float32 and big_labels.dtype == np.int32
    assert abs(big_labels.max() - labels.max()) <= 2  # a cut nucleus may vanish or split at the border
    assert scale.median_diameter(big_labels) == pytest.approx(magnification * scale.median_diameter(labels), rel=0.05)
    assert ideal_factor(big_labels, DATASET_DIAMETER) == pytest.approx(
        ideal_factor(labels, DATASET_DIAMETER) / magnification, rel=0.05)
    # bright where the nuclei are, at every size
    assert big[big_labels > 0].mean() > 2 * big[big_labels == 0].mean()


def test_own_factor_brings_the_measured_diameter_to_the_working_one():
    assert scale.own_factor(20.0, 30.0) == pytest.approx(1.5)
    assert scale.own_factor(40.0, 20.0) == pytest.approx(0.5)
    # within the tolerance, the first pass stands; unmeasured keeps it; the range clamps
    assert scale.own_factor(20.0 * (1 + scale.TOLERANCE / 2), 20.0) == 1.0
    assert scale.own_factor(float("nan"), 20.0) == 1.0
    assert scale.own_factor(1.0, 20.0) == scale.ESTIMATE_RANGE
    with pytest.raises(ValueError, match="working_diameter"):
        scale.own_factor(20.0, 0)


@pytest.mark.parametrize("radius", [7, 15])
def test_own_scale_maps_resize_nuclei_of_known_size_to_the_working_diameter(radius):
    """With a transparent "net" (its map is the image), the first pass measures the drawn nuclei, the second
    sees them at the working diameter, and the maps come back at the image's size, the nuclei where they were."""
    from cellfcn import objects as O
    from tools import infer

    image, labels = nuclei((240, 260), radius, 14, np.random.default_rng(radius))
    image = image.astype(np.float32) / image.max()
    seen = []

    def forward(net, window):
        seen.append(window.shape)
        return window

    params = dict(threshold=0.5, opening_radius=0, min_area=10)
    maps, factor, diameter = infer.own_scale_maps(None, image, params, DATASET_DIAMETER, forward=forward)
    truth = scale.median_diameter(labels)
    assert diameter == pytest.approx(truth, rel=0.1)
    assert factor == pytest.approx(DATASET_DIAMETER / diameter)
    assert seen[-1][0] >= round(240 * factor) and maps.shape == image.shape  # the second pass ran resized
    again = scale.median_diameter(O.instances_from_maps(resize_normalized(image, factor), **params))
    assert again == pytest.approx(DATASET_DIAMETER, rel=0.1)
    found = O.instances_from_maps(maps, **params)
    assert abs(int(found.max()) - int(labels.max())) <= 2
    assert ((found > 0) == (labels > 0)).mean() > 0.97


def test_own_scale_maps_keep_the_first_pass_at_the_working_diameter():
    from cellfcn import objects as O
    from tools import infer

    image, _ = nuclei((200, 200), 10, 10, np.random.default_rng(3))
    image = image.astype(np.float32) / image.max()
    calls = []
    params = dict(threshold=0.5, opening_radius=0, min_area=10)
    working = scale.median_diameter(O.instances_from_maps(image, **params))
    maps, factor, diameter = infer.own_scale_maps(None, image, params, working,
                                                  forward=lambda net, window: calls.append(1) or window)
    assert factor == 1.0 and len(calls) == 1 and np.array_equal(maps, image)
