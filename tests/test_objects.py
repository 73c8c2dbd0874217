"""cellfcn/objects.py on hand-made label images with hand-computed answers."""
import warnings

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.draw import disk as draw_disk
from skimage.feature import peak_local_max
from skimage.measure import label as label_regions

from cellfcn import objects as O
from cellfcn.errors import InputError
from cellfcn.images import instance_labels_from_rgba


def _discs(shape, *discs):
    """Label image with disc i + 1 of (row, col, radius) painted in order (later discs win overlaps)."""
    labels = np.zeros(shape, dtype=np.int32)
    for i, (row, col, radius) in enumerate(discs, start=1):
        labels[draw_disk((row, col), radius, shape=shape)] = i
    return labels


# ---------------------------------------------------------------------------------------------------------
# Instances
# ---------------------------------------------------------------------------------------------------------

def test_touching_discs_are_split_into_two():
    mask = _discs((60, 70), (30, 25, 10), (30, 43, 10)) > 0
    assert label_regions(mask).max() == 1  # one connected blob
    labels = O.instances_from_mask(mask, opening_radius=0)
    assert labels.dtype == np.int32 and labels.shape == mask.shape
    assert set(np.unique(labels)) == {0, 1, 2}
    assert labels[30, 25] != labels[30, 43] and labels[30, 25] > 0 and labels[30, 43] > 0
    np.testing.assert_array_equal(labels > 0, mask)  # the instances cover the mask exactly
    areas = np.bincount(labels.ravel())[1:]
    assert abs(int(areas[0]) - int(areas[1])) <= 10  # split near the neck, not at random
    assert set(np.unique(labels[:, :32])) == {0, 1} and set(np.unique(labels[:, 37:])) == {0, 2}
    # With the defaults (opening 1 etc.) too, and without the dome rule: the peaks alone split them.
    assert O.instances_from_mask(mask).max() == 2
    assert O.instances_from_mask(mask, opening_radius=0, min_dynamic=0).max() == 2


def test_min_dynamic_merges_peaks_that_do_not_rise_far_above_the_saddle():
    # Disc peaks are ~10 px of distance, the neck ~4.4 px: a dynamic of ~5.6 px.
    mask = _discs((60, 70), (30, 25, 10), (30, 43, 10)) > 0
    assert O.instances_from_mask(mask, opening_radius=0, smooth_sigma=0, min_dynamic=4).max() == 2
    merged = O.instances_from_mask(mask, opening_radius=0, smooth_sigma=0, min_dynamic=7)
    np.testing.assert_array_equal(merged, mask.astype(np.int32))


def test_component_lower_than_min_dynamic_is_kept_whole():
    labels = _discs((40, 60), (20, 15, 3), (20, 40, 10))
    out = O.instances_from_mask(labels > 0, opening_radius=0, min_area=0, min_dynamic=6)
    # The small disc (max distance ~3 < 6) is not lost; the large one starts higher: label 1.
    np.testing.assert_array_equal(out, np.choose(labels, [0, 2, 1]))


def test_plateau_ridge_is_one_nucleus():
    mask = np.zeros((20, 90), dtype=bool)
    mask[6:14, 5:85] = True  # straight-sided: the distance transform has a flat ridge
    distance = ndi.distance_transform_edt(mask)
    assert len(peak_local_max(distance, min_distance=5, labels=mask.astype(int), exclude_border=False)) > 1
    for sigma in (0.0, 1.0):
        out = O.instances_from_mask(mask, opening_radius=0, smooth_sigma=sigma, min_dynamic=0)
        np.testing.assert_array_equal(out, mask.astype(np.int32))


def test_min_area_removes_small_components():
    labels = _discs((50, 50), (20, 20, 10))
    labels[40:43, 40:43] = 2  # a 3 x 3 speck, area 9
    mask = labels > 0
    np.testing.assert_array_equal(O.instances_from_mask(mask, opening_radius=0, min_area=20), labels == 1)
    np.testing.assert_array_equal(O.instances_from_mask(mask, opening_radius=0, min_area=10), labels == 1)
    np.testing.assert_array_equal(O.instances_from_mask(mask, opening_radius=0, min_area=9), labels)


def test_opening_removes_a_thin_bridge_but_the_image_edge_does_not_erode():
    mask = _discs((40, 80), (20, 15, 9), (20, 60, 9)) > 0
    mask[20, 15:61] = True  # 1-pixel-wide bridge
    mask[0:3, 25:55] = True  # a nucleus mostly outside the image: 3 rows, thinner than the disk (5)
    kept = O.instances_from_mask(mask, opening_radius=0)
    opened = O.instances_from_mask(mask, opening_radius=2)
    assert np.all(kept[20, 25:51] > 0) and np.all(opened[20, 25:51] == 0)
    assert opened.max() == 3 and np.all(opened[0:3, 27:53] > 0)


def test_nucleus_at_the_image_edge_gets_a_marker():
    mask = _discs((40, 60), (0, 30, 10)) > 0
    np.testing.assert_array_equal(O.instances_from_mask(mask, opening_radius=0), mask.astype(np.int32))


def test_labels_are_in_raster_order_and_edge_cases():
    labels = _discs((50, 60), (35, 12, 6), (12, 45, 6), (35, 45, 6))
    out = O.instances_from_mask(labels > 0, opening_radius=0)
    assert out[12, 45] == 1 and out[35, 12] == 2 and out[35, 45] == 3
    empty = O.instances_from_mask(np.zeros((8, 9), dtype=bool))
    assert empty.dtype == np.int32 and empty.shape == (8, 9) and not empty.any()
    full = O.instances_from_mask(np.ones((20, 20), dtype=np.uint8), opening_radius=2)
    np.testing.assert_array_equal(full, np.ones((20, 20), dtype=np.int32))


def test_instances_from_probs_is_threshold_then_mask():
    rng = np.random.default_rng(3)
    probs = np.clip(ndi.gaussian_filter(rng.random((80, 90)), 3) * 6 - 2.5, 0, 1).astype(np.float32)
    probs[5:10, 5:10] = np.float32(0.5)  # exactly on the threshold: foreground (>=)
    out = O.instances_from_probs(probs, 0.5)
    np.testing.assert_array_equal(out, O.instances_from_mask(probs >= 0.5))
    assert out[7, 7] > 0
    assert out.max() >= 3 and np.array_equal(np.unique(out), np.arange(out.max() + 1))  # consecutive
    # Deterministic: same input, same output, also after other calls.
    O.instances_from_probs(probs, 0.3, opening_radius=2)
    np.testing.assert_array_equal(O.instances_from_probs(probs, 0.5), out)


def _cores_and_rims():
    """Two touching discs of radius 10 whose probability is 0.9 in their cores (radius 7) and 0.5 at their rims
    and on the bridge between them, and a 0.5 smudge apart from both."""
    truth = _discs((40, 80), (20, 20, 10), (20, 39, 10))
    cores = _discs((40, 80), (20, 20, 7), (20, 39, 7))
    probs = np.where(cores > 0, 0.9, np.where(truth > 0, 0.5, 0.02)).astype(np.float32)
    probs[30:36, 60:70] = 0.5
    return truth, probs


def test_nuclei_cut_high_grow_to_the_extent_threshold():
    truth, probs = _cores_and_rims()
    low = O.instances_from_probs(probs, 0.5, opening_radius=0, min_area=0)
    assert low.max() == 3 and low[32, 65] > 0  # at the lower threshold the smudge is an object
    cut = O.instances_from_probs(probs, 0.7, opening_radius=0, min_area=0)
    assert cut.max() == 2 and O.object_scores(truth, cut)["dsb_score"] < 0.5  # apart, but half their area
    grown = O.instances_from_probs(probs, 0.7, opening_radius=0, min_area=0, extent_threshold=0.5)
    assert grown.max() == 2 and not grown[30:36, 60:70].any()  # no nucleus reaches the smudge
    np.testing.assert_array_equal(grown > 0, truth > 0)
    scores = O.object_scores(truth, grown)
    assert scores["f1"] == 1.0 and scores["dsb_score"] >= 0.9  # the bridge is shared at the flood's meeting
    assert np.array_equal(np.unique(grown), [0, 1, 2]) and grown[20, 12] == 1  # raster order
    np.testing.assert_array_equal(O.instances_from_probs(probs, 0.7, opening_radius=0, min_area=0,
                                                         extent_threshold=None), cut)
    # The contour net's nuclei grow the same way.
    interior = np.where(probs > 0.8, 0.9, 0.05).astype(np.float32)
    contour = O.instances_from_contour(probs, interior, 0.7, marker_threshold=0.5, opening_radius=0, min_area=0,
                                       extent_threshold=0.5)
    np.testing.assert_array_equal(contour, grown)


def test_choose_instance_params_grows_where_the_threshold_is_higher():
    truth, probs = _cores_and_rims()
    result = O.choose_instance_params([probs], [truth], thresholds=(0.5, 0.7), opening_radii=(0,),
                                      min_areas=(0,), extent_threshold=0.5)
    assert [row["extent_threshold"] for row in result["grid"]] == [None, 0.5]
    assert [row["f1"] for row in result["grid"]] == [0.8, 1.0]  # at 0.5 the smudge is a false positive
    assert result["params"]["threshold"] == 0.7 and result["params"]["extent_threshold"] == 0.5
    again = O.object_scores(truth, O.instances_from_maps(probs, **result["params"]))
    assert again["dsb_score"] == result["scores"]["dsb_score"]
    with pytest.raises(ValueError, match="extent_threshold"):
        O.choose_instance_params([probs], [truth], extent_threshold=1.5)


@pytest.mark.parametrize("call, message", [
    (lambda: O.instances_from_probs(np.zeros((4, 4)), 0.5, extent_threshold=0.6), "must not exceed"),
    (lambda: O.instances_from_probs(np.zeros((4, 4)), 0.5, extent_threshold=-0.1), "extent_threshold"),
    (lambda: O.instances_from_contour(np.zeros((4, 4)), np.zeros((4, 4)), 0.5, extent_threshold=0.9),
     "must not exceed"),
    (lambda: O.instances_from_probs(np.zeros((4, 4), dtype=np.uint8), 0.5), "float"),
    (lambda: O.instances_from_probs(np.full((4, 4), 1.5), 0.5), r"\[0, 1\]"),
    (lambda: O.instances_from_probs(np.full((4, 4), np.nan), 0.5), "NaN"),
    (lambda: O.instances_from_probs(np.zeros((2, 4, 4)), 0.5), "2-D"),
    (lambda: O.instances_from_probs(np.zeros((4, 4)), 1.5), "threshold"),
    (lambda: O.instances_from_probs(np.zeros((4, 4)), True), "threshold"),
    (lambda: O.instances_from_mask(np.full((4, 4), 2)), "0 and 1"),
    (lambda: O.instances_from_mask(np.zeros((4, 4), bool), opening_radius=-1), "opening_radius"),
    (lambda: O.instances_from_mask(np.zeros((4, 4), bool), opening_radius=1.5), "opening_radius"),
    (lambda: O.instances_from_mask(np.zeros((4, 4), bool), min_area=-1), "min_area"),
    (lambda: O.instances_from_mask(np.zeros((4, 4), bool), min_distance=0), "min_distance"),
    (lambda: O.instances_from_mask(np.zeros((4, 4), bool), smooth_sigma=np.inf), "smooth_sigma"),
    (lambda: O.instances_from_mask(np.zeros((4, 4), bool), min_dynamic=np.nan), "min_dynamic"),
])
def test_instance_input_validation(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------------------------------------------------
# RGBA ground truth
# ---------------------------------------------------------------------------------------------------------

def _rgba_mask():
    rgba = np.zeros((30, 40, 4), dtype=np.uint8)
    red, green, blue = (255, 0, 0, 255), (0, 255, 0, 255), (0, 0, 255, 255)
    rgba[2:9, 2:9] = red
    rgba[2:9, 9:16] = green  # touches red
    rgba[15:23, 3:11] = blue
    rgba[15:23, 25:33] = blue  # the same colour for a separate nucleus
    rgba[27:29, 15:17] = blue  # a 4-pixel slip of that colour
    expected = np.zeros((30, 40), dtype=np.int32)
    expected[2:9, 2:9], expected[2:9, 9:16] = 1, 2
    expected[15:23, 3:11], expected[15:23, 25:33] = 3, 4
    expected[27:29, 15:17] = 3  # joins the colour's largest part (a tie: the first in raster order)
    return rgba, expected


def test_instance_labels_from_rgba():
    rgba, expected = _rgba_mask()
    out = instance_labels_from_rgba(rgba)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, expected)
    every_part = expected.copy()
    every_part[27:29, 15:17] = 5
    np.testing.assert_array_equal(instance_labels_from_rgba(rgba, min_fragment_area=0), every_part)
    # Black background: RGB, or RGBA that is opaque everywhere, give the same nuclei.
    np.testing.assert_array_equal(instance_labels_from_rgba(rgba[..., :3]), expected)
    opaque = rgba.copy()
    opaque[..., 3] = 255
    np.testing.assert_array_equal(instance_labels_from_rgba(opaque), expected)
    assert not instance_labels_from_rgba(np.zeros((5, 6, 4), dtype=np.uint8)).any()


def test_rgba_transparent_background_may_hold_colour():
    rgba, expected = _rgba_mask()
    rgba[25:30, 30:40, :3] = 77  # colour under alpha 0: still background when the alpha varies
    np.testing.assert_array_equal(instance_labels_from_rgba(rgba), expected)


@pytest.mark.parametrize("array", [np.zeros((5, 5), np.uint8), np.zeros((5, 5, 2), np.uint8),
                                   np.zeros((5, 5, 4), np.uint16), np.zeros((5, 5, 4))])
def test_rgba_validation(array):
    with pytest.raises(ValueError, match="rgba"):
        instance_labels_from_rgba(array)
    with pytest.raises(ValueError, match="min_fragment_area"):
        instance_labels_from_rgba(np.zeros((5, 5, 4), np.uint8), min_fragment_area=-1)


# ---------------------------------------------------------------------------------------------------------
# IoU and matching
# ---------------------------------------------------------------------------------------------------------

def _random_labels(seed, shape=(60, 70)):
    """Blobs with large, non-consecutive labels."""
    rng = np.random.default_rng(seed)
    blobs = label_regions(ndi.gaussian_filter(rng.random(shape), 1.5) > 0.52)
    ids = np.r_[0, rng.choice(np.arange(1, 10 ** 6), size=blobs.max(), replace=False)]
    return ids[blobs].astype(np.int64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_iou_matrix_matches_brute_force(seed):
    gt, pred = _random_labels(seed), _random_labels(seed + 100)
    iou, gt_ids, pred_ids = O.iou_matrix(gt, pred)
    assert gt_ids.size > 5 and pred_ids.size > 5
    np.testing.assert_array_equal(gt_ids, np.unique(gt)[1:])
    np.testing.assert_array_equal(pred_ids, np.unique(pred)[1:])
    brute = np.array([[np.sum((gt == g) & (pred == p)) / np.sum((gt == g) | (pred == p)) for p in pred_ids]
                      for g in gt_ids])
    assert iou.dtype == np.float64 and iou.shape == brute.shape and (iou > 0).sum() > 5
    np.testing.assert_array_equal(iou, brute)


def _squares(shifts, extra_pred=True):
    """Five 12 x 12 ground-truth squares; predictions shifted right by ``shifts`` pixels (IoU
    (12 - s) / (12 + s)), plus one prediction that overlaps nothing. Labels are not consecutive."""
    gt = np.zeros((40, 170), dtype=np.int32)
    pred = np.zeros_like(gt)
    pred_ids = (7, 3, 9, 1, 2)
    for i, shift in enumerate(shifts):
        gt[2:14, 2 + 30 * i:14 + 30 * i] = 10 * (i + 1)
        pred[2:14, 2 + 30 * i + shift:14 + 30 * i + shift] = pred_ids[i]
    if extra_pred:
        pred[25:35, 100:110] = 5
    return gt, pred


SHIFTS = (0, 2, 3, 4, 6)  # IoU 1, 5/7, 0.6, 0.5, 1/3


def test_match_instances_on_known_ious():
    gt, pred = _squares(SHIFTS)
    result = O.match_instances(gt, pred)
    assert (result["tp"], result["fp"], result["fn"]) == (4, 2, 1)
    np.testing.assert_array_equal(result["pairs"], [[10, 7], [20, 3], [30, 9], [40, 1]])
    np.testing.assert_array_equal(result["ious"], [1.0, 10 / 14, 0.6, 0.5])  # 0.5 counts: IoU >= 0.5
    strict = O.match_instances(gt, pred, iou_threshold=0.6)
    assert (strict["tp"], strict["fp"], strict["fn"]) == (3, 3, 2)
    low = O.match_instances(gt, pred, iou_threshold=0.3)
    assert low["tp"] == 5 and low["pairs"].dtype == np.int64


def test_hungarian_takes_the_most_matches_where_greedy_would_not():
    # Intervals on three rows: A = [0, 10), B = [10, 20) (ground truth), Y = [0, 2), X = [2, 12) (predicted).
    # IoU(A, X) = 8/12, IoU(A, Y) = 2/10, IoU(B, X) = 2/18. Greedy (highest IoU first) takes A-X and stops:
    # one match. At threshold 0.1 the best assignment is A-Y and B-X: two matches (less summed IoU).
    gt = np.zeros((3, 25), dtype=np.int32)
    pred = np.zeros_like(gt)
    gt[:, 0:10], gt[:, 10:20] = 1, 2
    pred[:, 0:2], pred[:, 2:12] = 1, 2
    iou, _, _ = O.iou_matrix(gt, pred)
    np.testing.assert_array_equal(iou, [[0.2, 8 / 12], [0.0, 2 / 18]])
    two = O.match_instances(gt, pred, iou_threshold=0.1)
    assert (two["tp"], two["fp"], two["fn"]) == (2, 0, 0)
    np.testing.assert_array_equal(two["pairs"], [[1, 1], [2, 2]])
    np.testing.assert_array_equal(two["ious"], [0.2, 2 / 18])
    # Above IoU(B, X) only one match is possible: the higher-IoU one.
    one = O.match_instances(gt, pred, iou_threshold=0.15)
    np.testing.assert_array_equal(one["pairs"], [[1, 2]])
    assert (one["tp"], one["fp"], one["fn"]) == (1, 1, 1)
    # IoU exactly at the threshold matches.
    assert O.match_instances(gt, pred, iou_threshold=0.2)["tp"] == 1


def test_match_with_empty_sides():
    gt, pred = _squares(SHIFTS)
    nothing = np.zeros_like(gt)
    for a, b, expected in ((gt, nothing, (0, 0, 5)), (nothing, pred, (0, 6, 0)), (nothing, nothing, (0, 0, 0))):
        result = O.match_instances(a, b)
        assert (result["tp"], result["fp"], result["fn"]) == expected
        assert result["pairs"].shape == (0, 2) and result["ious"].shape == (0,)


@pytest.mark.parametrize("gt, pred, message", [
    (np.zeros((4, 4)), np.zeros((4, 4), np.int32), "integer"),
    (np.zeros((4, 4), bool), np.zeros((4, 4), np.int32), "integer"),
    (np.full((4, 4), -1), np.zeros((4, 4), np.int32), "negative"),
    (np.zeros((4, 4), np.int32), np.zeros((4, 5), np.int32), "shape"),
    (np.zeros(4, np.int32), np.zeros(4, np.int32), "2-D"),
])
def test_label_validation(gt, pred, message):
    with pytest.raises(ValueError, match=message):
        O.match_instances(gt, pred)
    with pytest.raises(ValueError, match=message):
        O.object_scores(gt, pred)


def test_match_threshold_validation():
    labels = np.zeros((4, 4), np.int32)
    for bad in (0, 0.0, -0.1, 1.1, np.nan):
        with pytest.raises(ValueError, match="iou_threshold"):
            O.match_instances(labels, labels, iou_threshold=bad)


# ---------------------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------------------

TP_SQUARES = [4, 3, 3, 2, 2, 1, 1, 1, 1, 1]  # IoUs 1, 5/7, 0.6, 0.5 at thresholds 0.5, 0.55, ..., 0.95
DSB_SQUARES = (4 / 7 + 3 / 8 + 3 / 8 + 2 / 9 + 2 / 9 + 5 * (1 / 10)) / 10


def test_object_scores_on_known_ious():
    gt, pred = _squares(SHIFTS)
    scores = O.object_scores(gt, pred)
    assert scores["iou_thresholds"] == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    assert (scores["n_gt"], scores["n_pred"]) == (5, 6)
    assert scores["tp"] == TP_SQUARES
    assert scores["fp"] == [6 - k for k in TP_SQUARES] and scores["fn"] == [5 - k for k in TP_SQUARES]
    assert scores["precision"] == pytest.approx(4 / 6, abs=1e-15)
    assert scores["recall"] == pytest.approx(4 / 5, abs=1e-15)
    assert scores["f1"] == pytest.approx(8 / 11, abs=1e-15)
    assert scores["dsb_score"] == pytest.approx(DSB_SQUARES, abs=1e-15)
    assert (scores["count_error"], scores["abs_count_error"]) == (1, 1)
    assert scores["rel_count_error"] == pytest.approx(0.2, abs=1e-15)
    for key in ("count_error", "abs_count_error", "n_gt", "n_pred"):
        assert type(scores[key]) is int
    assert all(type(k) is int for k in scores["tp"])


def _empty_cases():
    gt, pred = _squares(SHIFTS)
    nothing = np.zeros_like(gt)
    return {"no_pred": O.object_scores(gt, nothing), "no_gt": O.object_scores(nothing, np.where(pred == 5, pred, 0)),
            "both_empty": O.object_scores(nothing, nothing)}


def test_object_scores_edge_cases():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NaN by definition, not by a 0/0 warning
        cases = _empty_cases()
    nan = float("nan")
    expected = {
        # n_gt, n_pred, precision, recall, f1, dsb, count error, abs, relative
        "no_pred": (5, 0, nan, 0.0, 0.0, 0.0, -5, 5, 1.0),
        "no_gt": (0, 1, 0.0, nan, 0.0, 0.0, 1, 1, nan),
        "both_empty": (0, 0, nan, nan, nan, nan, 0, 0, nan),
    }
    keys = ("n_gt", "n_pred", "precision", "recall", "f1", "dsb_score", "count_error", "abs_count_error",
            "rel_count_error")
    for name, values in expected.items():
        got = tuple(cases[name][key] for key in keys)
        np.testing.assert_array_equal(np.array(got, dtype=float), np.array(values, dtype=float), err_msg=name)


def test_pooled_object_scores():
    cases = _empty_cases()
    squares = O.object_scores(*_squares(SHIFTS))
    per_image = [squares, cases["no_pred"], cases["both_empty"], cases["no_gt"]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pooled = O.pooled_object_scores(per_image)
    tp = np.array(TP_SQUARES)
    assert (pooled["n_images"], pooled["n_gt"], pooled["n_pred"]) == (4, 10, 7)
    assert pooled["tp"] == TP_SQUARES
    assert pooled["fp"] == list(6 - tp + 1) and pooled["fn"] == list(5 - tp + 5)
    assert pooled["precision"] == pytest.approx(4 / 7, abs=1e-15)  # 4 TP, 2 + 1 FP
    assert pooled["recall"] == pytest.approx(4 / 10, abs=1e-15)  # 4 TP, 1 + 5 FN
    assert pooled["f1"] == pytest.approx(8 / 17, abs=1e-15)
    assert pooled["dsb_score"] == pytest.approx(np.mean(tp / (tp + (7 - tp) + (10 - tp))), abs=1e-15)
    assert pooled["mean_image_dsb_score"] == pytest.approx(DSB_SQUARES / 3, abs=1e-15)  # NaN image skipped
    assert pooled["mean_abs_count_error"] == pytest.approx((1 + 5 + 0 + 1) / 4, abs=1e-15)
    assert pooled["mean_rel_count_error"] == pytest.approx((0.2 + 1.0) / 2, abs=1e-15)  # images with GT only
    # Only empty images: nothing is defined, and no warning says so.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = O.pooled_object_scores([cases["both_empty"]])
    for key in ("precision", "recall", "f1", "dsb_score", "mean_image_dsb_score", "mean_rel_count_error"):
        assert np.isnan(empty[key]), key
    assert empty["mean_abs_count_error"] == 0.0


def test_pooled_validation():
    with pytest.raises(ValueError, match="at least one"):
        O.pooled_object_scores([])
    with pytest.raises(ValueError, match="not an object_scores"):
        O.pooled_object_scores([{"tp": [1]}])
    scores = O.object_scores(*_squares(SHIFTS))
    with pytest.raises(ValueError, match="IoU thresholds"):
        O.pooled_object_scores([dict(scores, iou_thresholds=[0.5])])


# ---------------------------------------------------------------------------------------------------------
# Parameter search
# ---------------------------------------------------------------------------------------------------------

def _search_data():
    gt = _discs((64, 96), (20, 20, 8), (40, 50, 8), (20, 78, 8))
    probs = np.where(gt > 0, 0.8, 0.05)
    probs[50:54, 8:12] = 0.9  # a speck: 16 pixels (12 after an opening with radius 1)
    return [probs, probs[::-1].copy()], [gt, gt[::-1].copy()]


def test_choose_instance_params():
    probs_list, gt_list = _search_data()
    grid = dict(thresholds=(0.5, 0.7, 0.85), opening_radii=(0, 1), min_areas=(10, 20))
    result = O.choose_instance_params(probs_list, gt_list, **grid)
    # min_area 20 drops the speck (F1 1); at 0.5 and 0.7 the masks are identical: the tie goes to the first.
    assert result["params"] == {"threshold": 0.5, "opening_radius": 0, "min_area": 20, "min_distance": 5,
                                "smooth_sigma": 1.0, "min_dynamic": O.MIN_DYNAMIC}
    rows = result["grid"]
    assert [(r["threshold"], r["opening_radius"], r["min_area"]) for r in rows] == \
        [(t, r, a) for t in (0.5, 0.7, 0.85) for r in (0, 1) for a in (10, 20)]
    by_key = {(r["threshold"], r["opening_radius"], r["min_area"]): r for r in rows}
    assert by_key[(0.5, 0, 20)]["f1"] == 1.0 and by_key[(0.5, 0, 20)]["dsb_score"] == 1.0
    assert by_key[(0.5, 0, 10)]["f1"] == pytest.approx(2 * 6 / (2 * 6 + 2), abs=1e-15)  # 6 TP, 2 specks
    assert by_key[(0.85, 0, 10)]["f1"] == 0.0  # only the specks pass 0.85
    assert by_key[(0.85, 0, 10)]["precision"] == 0.0 and np.isnan(by_key[(0.85, 0, 20)]["precision"])
    assert result["scores"]["f1"] == 1.0 and result["scores"]["n_gt"] == 6
    # The chosen parameters reproduce the chosen scores through the public functions.
    again = O.pooled_object_scores(O.object_scores(gt, O.instances_from_probs(p, **result["params"]))
                                   for p, gt in zip(probs_list, gt_list))
    assert again == result["scores"]
    assert repr(O.choose_instance_params(probs_list, gt_list, **grid)) == repr(result)  # deterministic, NaN too


def test_choose_prefers_higher_dsb_on_equal_f1():
    probs_list, gt_list = _search_data()
    # A 0.6 halo two pixels wide: threshold 0.5 grows the discs (IoU ~0.7: the same F1, a lower DSB score).
    for probs, gt in zip(probs_list, gt_list):
        probs[ndi.binary_dilation(gt > 0, iterations=2) & (gt == 0)] = 0.6
    result = O.choose_instance_params(probs_list, gt_list, thresholds=(0.5, 0.7), opening_radii=(0,),
                                      min_areas=(20,))
    first, second = result["grid"]
    assert first["f1"] == second["f1"] == 1.0 and first["dsb_score"] < second["dsb_score"] == 1.0
    assert result["params"]["threshold"] == 0.7


@pytest.mark.parametrize("kwargs, message", [
    (dict(maps_list=[], gt_labels_list=[]), "at least one"),
    (dict(gt_labels_list=[np.zeros((64, 96), np.int32)]), "as many"),
    (dict(gt_labels_list=[np.zeros((64, 96), np.int32)] * 2), "no ground-truth object"),
    (dict(thresholds=()), "at least one value"),
    (dict(thresholds=(0.5, 2.0)), "threshold"),
    (dict(min_areas=(-1,)), "min_area"),
    (dict(min_dynamic=-1), "min_dynamic"),
])
def test_choose_validation(kwargs, message):
    probs_list, gt_list = _search_data()
    arguments = {"maps_list": probs_list, "gt_labels_list": gt_list, **kwargs}
    with pytest.raises(ValueError, match=message):
        O.choose_instance_params(**arguments)


# ---------------------------------------------------------------------------------------------------------
# The object-level table of make evaluate (tools.object_table)
# ---------------------------------------------------------------------------------------------------------

def test_object_table_on_hand_made_images(tmp_path):
    import h5py

    from tools import object_table

    val_probs, val_gt = _search_data()
    val = {"names": ["v0", "v1"], "images": [np.where(g > 0, 0.9, 0.1).astype(np.float32) for g in val_gt],
           "labels": val_gt}
    gt = _discs((64, 96), (20, 20, 8), (40, 50, 8), (20, 78, 8))
    empty = np.zeros((32, 32), np.int32)
    test = {"names": ["t0", "t1"], "images": [np.where(gt > 0, 0.9, 0.1).astype(np.float32),
                                               np.full((32, 32), 0.2, np.float32)], "labels": [gt, empty]}
    # The network finds the first two nuclei exactly and misses the third; nothing in the empty image.
    found = np.where((gt == 1) | (gt == 2), 0.8, 0.05)
    # The model before fine-tuning sees the nuclei at 0.2, below the fixed grid: its val threshold is added.
    faint = [np.where(g > 0, 0.2, 0.05) for g in val_gt]
    maps = {"before": {"val": faint, "test": [np.where(gt > 0, 0.2, 0.05), np.zeros((32, 32))]},
            "after": {"val": val_probs, "test": [found, np.zeros((32, 32))]}}
    rows, predictions = object_table.evaluate_objects(maps, val, test, {"before": 0.15})
    before, after, otsu = rows
    assert [r["model"] for r in rows] == ["before", "after", "otsu"]
    assert before["grid"]["thresholds"] == (0.15, 0.3, 0.5, 0.7) and after["grid"]["thresholds"] == (0.3, 0.5, 0.7)
    assert before["params"]["threshold"] == 0.15 and before["pooled"]["f1"] == 1.0
    # Chosen on val: the first setting with F1 1 (min area 30 drops the 16-pixel speck).
    assert after["params"] == {"threshold": 0.3, "opening_radius": 0, "min_area": 30, "min_distance": 5,
                               "smooth_sigma": 1.0, "min_dynamic": O.MIN_DYNAMIC}
    assert after["val"] == {"f1": 1.0, "dsb_score": 1.0}
    # 2 TP (IoU 1), 0 FP, 1 FN: precision 1, recall 2/3, F1 4/5, DSB 2/3 at every IoU threshold.
    pooled = after["pooled"]
    assert (pooled["tp"], pooled["fp"], pooled["fn"], pooled["n_gt"], pooled["n_pred"]) == (2, 0, 1, 3, 2)
    assert pooled["precision"] == 1.0 and pooled["recall"] == pytest.approx(2 / 3)
    assert pooled["f1"] == pytest.approx(0.8) and pooled["dsb_score"] == pytest.approx(2 / 3)
    assert pooled["mean_abs_count_error"] == 0.5  # |2 - 3| and |0 - 0| over two images
    assert pooled["mean_rel_count_error"] == pytest.approx(1 / 3)  # only the image with nuclei
    first, second = after["images"]
    assert first["count_error"] == -1 and first["rel_count_error"] == pytest.approx(1 / 3)
    # Undefined ratios of the empty image are null, not 0.
    assert second["precision"] is second["recall"] is second["f1"] is second["dsb_score"] is None
    np.testing.assert_array_equal(predictions["after"][0], np.where(gt == 3, 0, gt))
    # Otsu + watershed finds all three bright discs.
    assert otsu["params"]["threshold"] == 0.5 and otsu["pooled"]["f1"] == 1.0
    assert otsu["pooled"]["mean_abs_count_error"] == 0.0

    text = object_table.write_outputs(tmp_path, rows, val, test)
    assert "| ours: after fine-tuning | 0.30 | 0 | 30 | 1.000 | 0.667 | 0.800 | 0.667 |" in text
    assert "| Otsu per image + watershed | Otsu |" in text
    assert (tmp_path / "objects.md").read_text() == text
    assert object_table.load_objects(tmp_path / "objects.json")["rows"][1]["params"] == after["params"]

    # The training images join the choice: on them a haze at 0.4 joins the nuclei into one blob at threshold
    # 0.3, so 0.5 is chosen; val F1 stays the validation images' own.
    train_gt = _discs((64, 96), (20, 20, 8), (40, 70, 8))
    train = {"names": ["r0"], "images": [np.where(train_gt > 0, 0.9, 0.1).astype(np.float32)],
             "labels": [train_gt]}
    hazy = np.where(train_gt > 0, 0.9, 0.4)
    maps["after"]["train"], maps["before"]["train"] = [hazy], [hazy]
    with_train, _ = object_table.evaluate_objects(maps, val, test, {"before": 0.15}, train=train)
    assert after["chosen_on"] == {"val": 2} and with_train[1]["chosen_on"] == {"train": 1, "val": 2}
    assert with_train[1]["params"]["threshold"] == 0.5 and with_train[1]["val"] == {"f1": 1.0, "dsb_score": 1.0}
    assert with_train[1]["choice"]["f1"] == 1.0 and with_train[2]["chosen_on"] == {"train": 1, "val": 2}
    text = object_table.write_outputs(tmp_path, with_train, val, test, train)
    assert "chosen on the 1 training and 2 validation images" in text
    assert object_table.load_objects(tmp_path / "objects.json")["train_images"] == ["r0"]

    # Whole-image files need labels/<i>: an older dataset with masks only is refused (its connected components
    # would merge touching nuclei in the truth), not silently used.
    with h5py.File(tmp_path / "full.h5", "w") as f:
        f["images/0"], f["masks/0"] = test["images"][0], (gt > 0).astype(np.uint8)
    with pytest.raises(InputError, match="no instance labels.*make data"):
        object_table.load_full(tmp_path / "full.h5")
    with h5py.File(tmp_path / "full.h5", "a") as f:
        f["labels/0"] = np.where(gt == 2, 7, gt)
    assert object_table.load_full(tmp_path / "full.h5")["labels"][0].max() == 7


def test_own_scale_row_chooses_the_working_diameter_on_the_choice_images():
    """A "net" that paints every nucleus 3 px too thin misses them all at its first pass (IoU 0.16); at three
    times the size the same erosion leaves IoU 0.64. The working diameter is chosen on the choice images and
    the test image is cut at its own scale with parameters chosen again there (the row's grid, here one
    setting that grows the nuclei); the first pass's parameters and scores stay in dataset_scale."""
    from cellfcn import scale
    from tools import object_table

    def forward(net, window):
        return ndi.binary_erosion(window > 0.5, iterations=3).astype(np.float32)

    gt = _discs((64, 96), (20, 20, 5), (40, 50, 5), (20, 78, 5))
    image = np.where(gt > 0, 0.9, 0.1).astype(np.float32)
    sets = {k: {"names": [k], "images": [image], "labels": [gt]} for k in ("train", "val", "test")}
    first = forward(None, image)
    maps = {k: [first] for k in sets}
    params = {"threshold": 0.5, "opening_radius": 0, "min_area": 0}
    row, _ = object_table.score_params("after", maps, sets, params)
    row["chosen_on"] = {"train": 1, "val": 1}
    row["grid"] = {"thresholds": (0.5,), "opening_radii": (0,), "min_areas": (0,), "extent_threshold": 0.3}
    measured = scale.median_diameter(O.instances_from_maps(first, **params))
    own, predictions, test_maps = object_table.own_scale_row(row, None, maps, sets, measured, ratios=(1.0, 3.0),
                                                             forward=forward)
    assert row["pooled"]["f1"] == 0 and own["dataset_scale"]["f1"] == 0 and own["dataset_scale"]["val_f1"] == 0
    assert [t["ratio"] for t in own["working_choice"]] == [1.0, 3.0]
    assert [t["f1"] for t in own["working_choice"]] == [0.0, 1.0] and own["choice"]["f1"] == 1.0
    assert own["working_ratio"] == 3.0 and own["working_diameter_px"] == pytest.approx(3 * measured)
    assert own["pooled"]["f1"] == 1.0 and own["val"]["f1"] == 1.0
    assert own["images"][0]["own_factor"] == pytest.approx(3.0) and own["dataset_scale"]["params"] == params
    assert own["params"] == {**params, "min_distance": 5, "smooth_sigma": 1.0, "min_dynamic": O.MIN_DYNAMIC,
                             "extent_threshold": 0.3}
    assert test_maps[0].shape == gt.shape and predictions[0].max() == 3
