"""deepcovid.portable: exact-operation maths, filters and draws, checked against NumPy, SciPy
and Pillow (independent implementations)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage, stats

from deepcovid import portable as pm
from deepcovid.data.augment import Augmentation, bilinear_sample


def _ulps(a, b):
    return np.max(np.abs(a - b) / np.spacing(np.maximum(np.abs(b), 1e-300)))


def test_transcendentals_match_numpy():
    x = np.linspace(-40, 40, 200_001)
    assert _ulps(pm.exp(x), np.exp(x)) <= 4
    assert np.max(np.abs(pm.sin(x) - np.sin(x))) < 4e-16 * 40
    assert np.max(np.abs(pm.cos(x) - np.cos(x))) < 4e-16 * 40
    y = np.concatenate([np.geomspace(1e-300, 1e300, 100_001), np.linspace(0.5, 2.0, 100_001)])
    assert np.max(np.abs(pm.log(y) - np.log(y)) / np.maximum(1, np.abs(np.log(y)))) < 4e-16
    base = np.linspace(0, 1, 10_001)
    assert np.max(np.abs(pm.power(base, 1.23) - base**1.23)) < 1e-15
    assert pm.power(0.0, 2.0) == 0.0 and pm.power(0.0, 0.0) == 1.0
    assert np.isneginf(pm.log(0.0)) and np.isnan(pm.log(-1.0))
    # dtype kept, scalars give Python floats
    assert pm.exp(np.ones(3, np.float32)).dtype == np.float32
    assert type(pm.cos(0.3)) is float and pm.cos(0.0) == 1.0
    assert pm.hypot(3.0, 4.0) == 5.0


def test_gaussian_filter_matches_scipy():
    img = np.random.default_rng(0).random((40, 57)).astype(np.float32)
    for sigma in (0.6, 1.3, 3.0):
        ours = pm.gaussian_filter(img, sigma)
        ref = ndimage.gaussian_filter(img, sigma, mode="nearest")
        assert ours.dtype == np.float32 and np.max(np.abs(ours - ref)) < 2e-6


def _smooth(h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    return (127 + 100 * np.sin(xx / 9.0) * np.cos(yy / 13.0)).astype(np.uint8)


@pytest.mark.parametrize("size", [(64, 64), (256, 256), (500, 333)])
def test_resize_uint8_close_to_pillow(size):
    img = _smooth(300, 410)
    ours = pm.resize_uint8(img, *size)
    ref = np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BICUBIC))
    assert ours.shape == ref.shape
    assert np.max(np.abs(ours.astype(int) - ref.astype(int))) <= 2
    flat = np.full((77, 123, 3), 200, np.uint8)
    assert np.all(pm.resize_uint8(flat, *size) == 200)


def _tap_sums(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """The reference: the fixed-point taps applied one by one (np.take), int64, one rounding."""
    a = img.astype(np.int64)
    for axis, n_out in ((1, width), (0, height)):
        idx, wi = pm._int_taps(a.shape[axis], n_out, "bicubic")
        acc = np.zeros(a.shape[:axis] + (n_out,) + a.shape[axis + 1 :], dtype=np.int64)
        shape = [1] * a.ndim
        shape[axis] = n_out
        for j in range(idx.shape[1]):
            acc += np.take(a, idx[:, j], axis=axis) * wi[:, j].reshape(shape)
        a = acc
    return np.clip((a + (1 << 23)) >> 24, 0, 255).astype(np.uint8)


def test_resize_uint8_equals_the_tap_sums():
    """The sparse-matrix passes give the exact integers of the taps applied one by one: random
    sizes up and down, grey and RGB, the sharpest edges, one-pixel images."""
    rng = np.random.default_rng(5)
    for k in range(40):
        h, w = (int(v) for v in rng.integers(1, 400, 2))
        shape = (h, w, 3) if k % 3 == 0 else (h, w)
        img = rng.integers(0, 256, size=shape, dtype=np.uint8)
        if k % 4 == 1:
            img = (255 * (np.indices((h, w)).sum(axis=0) % 2)).astype(np.uint8)
        ow, oh = (int(v) for v in rng.integers(1, 300, 2))
        np.testing.assert_array_equal(pm.resize_uint8(img, ow, oh), _tap_sums(img, ow, oh))


def test_resized_crops_equal_resize_uint8_of_each_crop():
    """The duplicates' thumbnails (shared horizontal passes) give the exact integers of the int64
    tap sums of each crop: random image sizes and boxes, up and down, edges and one-pixel boxes."""
    rng = np.random.default_rng(3)
    for k in range(60):
        h, w = (int(v) for v in rng.integers(1, 500, 2))
        img = rng.integers(0, 256, size=(h, w), dtype=np.uint8)
        if k % 5 == 0:
            img = (255 * (np.indices((h, w)).sum(axis=0) % 2)).astype(np.uint8)  # the sharpest edges
        boxes = []
        for _ in range(4):
            top, left = int(rng.integers(0, h)), int(rng.integers(0, w))
            boxes.append((top, int(rng.integers(top + 1, h + 1)), left, int(rng.integers(left + 1, w + 1))))
        boxes.append((0, h, 0, w))
        boxes.append(boxes[0][:2] + boxes[1][2:])  # columns shared with another box
        ow, oh = (int(v) for v in rng.integers(1, 300, 2))
        got = pm.resize_uint8_crops(img, boxes, ow, oh)
        for (t, b, left, r), crop in zip(boxes, got):
            np.testing.assert_array_equal(crop, _tap_sums(np.ascontiguousarray(img[t:b, left:r]), ow, oh))


def test_resample_float_close_to_pillow():
    img = _smooth(64, 80).astype(np.float32) / 255
    for size, kernel, resample in [
        ((200, 170), "bicubic", Image.Resampling.BICUBIC),
        ((30, 20), "bilinear", Image.Resampling.BILINEAR),
    ]:
        ours = pm.resample(img, *size, kernel)
        ref = np.asarray(Image.fromarray(img, "F").resize(size, resample))
        assert ours.dtype == np.float32 and np.max(np.abs(ours - ref)) < 1e-3


def test_polylines_like_imagedraw():
    lines = [([(10, 10), (80, 40), (60, 90)], 7), ([(5, 95), (95, 5)], 3)]
    ours = pm.draw_polylines((100, 100), lines) > 0
    pil = Image.new("L", (100, 100))
    draw = ImageDraw.Draw(pil)
    for pts, width in lines:
        draw.line(pts, fill=255, width=width, joint="curve")
    ref = np.asarray(pil) > 0
    iou = (ours & ref).sum() / (ours | ref).sum()
    assert iou > 0.8


def test_rng_draws_have_the_right_distribution():
    rng = pm.Rng(1)
    u = rng.uniform(2.0, 5.0, size=20_000)
    assert u.min() >= 2.0 and u.max() < 5.0 and stats.kstest((u - 2) / 3, "uniform").pvalue > 1e-3
    z = rng.standard_normal(20_001, dtype=np.float32)
    assert z.dtype == np.float32 and z.shape == (20_001,)
    assert stats.kstest(z, "norm").pvalue > 1e-3
    b = np.array([rng.beta(1.2, 1.8) for _ in range(5000)])
    assert stats.kstest(b, "beta", args=(1.2, 1.8)).pvalue > 1e-3
    assert isinstance(rng.uniform(0, 1), float) and isinstance(rng.normal(0, 1), float)
    # same seed, same stream; other methods refused
    assert pm.Rng(7).uniform(0, 1, size=5).tolist() == pm.Rng(7).uniform(0, 1, size=5).tolist()
    with pytest.raises(AttributeError, match="portable"):
        pm.Rng(0).gamma(2.0)


def test_bilinear_sample_and_augmentation():
    img = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:20, 0:30].astype(np.float64)
    assert np.array_equal(bilinear_sample(img, xx, yy), img)
    shifted = bilinear_sample(img, xx + 2, yy)  # an integer shift is exact, black enters
    assert np.array_equal(shifted[:, :-2], img[:, 2:]) and not shifted[:, -2:].any()
    half = bilinear_sample(img, xx + 0.5, yy)[:, :-1].astype(int)
    assert np.max(np.abs(half - (img[:, :-1].astype(int) + img[:, 1:]) / 2)) <= 0.5
    flip = Augmentation(hflip_p=1.0)
    assert np.array_equal(flip(img, pm.Rng(0)), img[:, ::-1])
