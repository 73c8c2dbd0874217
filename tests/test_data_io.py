"""cellfcn.images: channels from the file's own metadata, and masks that only look like instance labels."""
import io

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree
from skimage.transform import downscale_local_mean

from cellfcn.errors import InputError
from cellfcn.images import gray_channel, mask_labels, read_array, relabel_raster_order, to_binary_mask, to_gray

PLANES = np.stack([np.full((6, 8), 10 * (k + 1), np.uint16) for k in range(4)])  # plane k holds 10 (k + 1)


def tiff(data, **kwargs):
    """``data`` written as a TIFF with these tags, read back by read_array (from bytes)."""
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, data, **kwargs)
    return read_array(buffer.getvalue(), "img.tif")


def png(data, mode):
    buffer = io.BytesIO()
    Image.fromarray(data, mode).save(buffer, "PNG")
    return read_array(buffer.getvalue(), "img.png")


def test_two_unspecified_samples_are_two_channels_not_grey_and_alpha():
    image = tiff(np.moveaxis(PLANES[:2], 0, -1), photometric="minisblack", planarconfig="contig")
    assert image.channels == ("channel 0", "channel 1")
    gray, used = gray_channel(image, 1, "img.tif")  # was refused: "channel 1 out of range (image has 1)"
    assert (gray == 20).all() and used.startswith("channel 1 (channel 1) of TIFF, photometric MINISBLACK")
    with pytest.raises(InputError, match=r"2 differing channels \(0 = channel 0, 1 = channel 1"):
        to_gray(image, name="img.tif")  # was: channel 0 taken silently, channel 1 dropped as "alpha"


@pytest.mark.parametrize("kwargs, names", [
    (dict(imagej=True, metadata={"axes": "CYX"}), ("channel 0", "channel 1")),  # an ImageJ hyperstack
    (dict(photometric="minisblack"), ("page 0", "page 1")),  # two pages of unknown meaning
])
def test_planes_of_a_stack_are_channels_to_choose(kwargs, names):
    image = tiff(PLANES[:2], **kwargs)
    assert image.shape == (6, 8, 2) and image.channels == names
    assert (to_gray(image, 1) == 20).all()


def test_alpha_only_where_the_tiff_says_alpha():
    rgba = tiff(np.moveaxis(PLANES, 0, -1).astype(np.uint8), photometric="rgb", extrasamples=["unassalpha"])
    assert rgba.channels == ("red", "green", "blue", "alpha")
    with pytest.raises(InputError, match=r"channel 3 out of range: the image has 3"):
        to_gray(rgba, 3)
    extra = tiff(np.moveaxis(PLANES, 0, -1).astype(np.uint8), photometric="rgb", extrasamples=["unspecified"])
    assert extra.channels == ("red", "green", "blue", "channel 3")
    assert (to_gray(extra, 3) == 40).all()  # a fourth fluorescence channel, not transparency
    gray_alpha = tiff(np.moveaxis(PLANES[:2], 0, -1), photometric="minisblack", extrasamples=["assocalpha"])
    assert gray_alpha.channels == ("gray", "alpha") and (to_gray(gray_alpha) == 10).all()


def test_planar_rgb_palette_and_inverted_grey():
    planar = tiff(PLANES[:3].astype(np.uint8), photometric="rgb", planarconfig="separate")
    assert planar.shape == (6, 8, 3) and (to_gray(planar, 2) == 30).all()
    inverted = tiff(np.full((6, 8), 5, np.uint8), photometric="miniswhite")
    assert (to_gray(inverted) == 250).all() and inverted.layout.endswith("inverted")
    colormap = np.zeros((3, 256), np.uint16)
    colormap[:, 1] = (1000, 2000, 3000)
    palette = tiff(np.ones((6, 8), np.uint8), photometric="palette", colormap=colormap)
    assert palette.channels == ("red", "green", "blue") and (to_gray(palette, 1) == 2000).all()


@pytest.mark.parametrize("kwargs", [dict(imagej=True, metadata={"axes": "ZYX"}),
                                    dict(imagej=True, metadata={"axes": "ZCYX"})])
def test_a_stack_is_not_one_image(kwargs):
    data = PLANES if kwargs["metadata"]["axes"] == "ZYX" else PLANES.reshape(2, 2, 6, 8)
    with pytest.raises(InputError, match=r"img.tif: a .* image with axes .*Z.*not one 2-D image"):
        tiff(data, **kwargs)


@pytest.mark.parametrize("read", [lambda: tiff(PLANES[0], photometric="minisblack"),
                                  lambda: png(PLANES[0].astype(np.uint8), "L"),
                                  lambda: png(np.stack([PLANES[0], PLANES[1]], -1).astype(np.uint8), "LA")])
def test_channel_on_a_grey_image_is_an_error(read):
    image = read()
    assert (to_gray(image) == 10).all()
    with pytest.raises(InputError, match=r"--channel 0 given, but the image is grey"):
        to_gray(image, 0, "img")  # was: ignored


def test_the_channel_used_is_said():
    rgb = png(np.moveaxis(PLANES[:3], 0, -1).astype(np.uint8), "RGB")
    assert gray_channel(rgb, 2)[1] == "channel 2 (blue) of PNG, mode RGB"
    same = png(np.repeat(PLANES[0, ..., None], 3, -1).astype(np.uint8), "RGB")
    assert gray_channel(same)[1] == "red of PNG, mode RGB, all 3 channels equal"
    assert gray_channel(PLANES[0])[1] == "gray of the array"  # a plain array: channels from its shape


def test_a_mask_file_with_separate_channels_is_refused():
    mask = tiff(np.moveaxis(PLANES[:2], 0, -1), photometric="minisblack", planarconfig="contig")
    with pytest.raises(InputError, match="a mask with 2 separate channels"):
        mask_labels(mask, "img.tif")


# --------------------------------------------------------------- masks that only look like instance labels
def _discs(shape, centres, radius, supersample=1, seed=0):
    yy, xx = np.mgrid[:shape[0] * supersample, :shape[1] * supersample] / supersample
    labels = np.zeros(yy.shape, np.int32)
    for k, (cy, cx) in enumerate(centres, start=1):
        labels[((yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2) & (labels == 0)] = k
    return labels


def _random_discs(n, shape, radius, seed):
    rng = np.random.default_rng(seed)
    return _discs(shape, rng.uniform(0, 1, (n, 2)) * shape, radius)


def _voronoi(n, shape, seed):
    """Confluent cells: every pixel belongs to the nearest of n random seeds."""
    seeds = np.random.default_rng(seed).uniform(0, 1, (n, 2)) * shape
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return cKDTree(seeds).query(np.c_[yy.ravel(), xx.ravel()])[1].reshape(shape) + 1


def _ramp(step, angle=0.0, shape=(300, 1200)):
    """An intensity gradient: one level more every ``step`` px along ``angle`` (radians)."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return ((np.cos(angle) * xx + np.sin(angle) * yy) // step).astype(np.uint16) + 1


def _binary_with_gradient(span, background):
    """0/255 nuclei whose values drift by ``span`` levels across the image (background 0, or drifting too)."""
    cells = _random_discs(60, (400, 1200), 12, seed=3) > 0
    drift = np.linspace(0, 1, 1200)[None, :]
    return np.where(cells, 200 + span * drift, background * (1 + span / 2 * drift)).astype(np.uint8)


def _anti_aliased(radius, sigma=None):
    """One large disc, 0/255, with anti-aliased (4x supersampled) or Gaussian-blurred edges."""
    size = 2 * radius + 20
    if sigma is None:
        fine = _discs((size, size), [(size / 2, size / 2)], radius, supersample=4) > 0
        return (downscale_local_mean(fine.astype(float), (4, 4)) * 255).round().astype(np.uint8)
    sharp = _discs((size, size), [(size / 2, size / 2)], radius) > 0
    return (gaussian_filter(sharp.astype(float), sigma) * 255).round().astype(np.uint8)


@pytest.mark.parametrize("make", [
    lambda: _ramp(10), lambda: _ramp(50), lambda: _ramp(200), lambda: _ramp(15, 0.3), lambda: _ramp(15, 1.0),
    lambda: _binary_with_gradient(55, 0), lambda: _binary_with_gradient(5, 0), lambda: _binary_with_gradient(20, 1),
    lambda: _anti_aliased(40), lambda: _anti_aliased(150), lambda: _anti_aliased(400),
    lambda: _anti_aliased(400, sigma=2),
], ids=["ramp 1/10 px", "ramp 1/50 px", "ramp 1/200 px", "oblique ramp", "diagonal ramp", "binary + drift 55",
        "binary + drift 5", "binary + drift, background too", "anti-aliased r 40", "anti-aliased r 150",
        "anti-aliased r 400", "blurred r 400"])
def test_gradients_and_soft_edges_are_refused_at_any_size_and_slope(make):
    # Each passed as instance labels before: under 10% of neighbouring cell pixels differ in all of them.
    with pytest.raises(InputError, match=r"^masks/m.png: mask with \d+ values is not piecewise constant"):
        to_binary_mask(make(), "masks/m.png")


@pytest.mark.parametrize("labels", [
    _random_discs(150, (400, 400), 14, seed=1), _random_discs(600, (300, 300), 4, seed=2),
    _voronoi(200, (400, 400), seed=2), relabel_raster_order(_voronoi(200, (400, 400), seed=2)),
], ids=["dense nuclei", "small dense nuclei", "confluent cells", "confluent cells, raster order"])
def test_instance_labels_still_pass(labels):
    np.testing.assert_array_equal(to_binary_mask(labels), labels > 0)
    assert mask_labels(labels).max() == len(np.unique(labels)) - (labels == 0).any()
