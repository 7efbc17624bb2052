"""deepcovid.data.lungs: lung masks at the segmenter's size, and preprocess.lungs (crop / mask) applied with them."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from deepcovid import portable
from deepcovid.data import lungs
from deepcovid.data.images import ImageReadError, letterbox, resize_square


def _image(width=90, height=60, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _box_mask(size, top, bottom, left, right):
    mask = np.zeros((size, size), bool)
    mask[top:bottom, left:right] = True
    return mask


def test_crop_box_is_the_masks_footprint_in_image_pixels():
    mask = _box_mask(32, 8, 24, 4, 16)  # rows 8..23, columns 4..15 of 32
    assert lungs.crop_box(mask, 64, 96, 0.0) == (8, 24, 32, 72)
    assert lungs.crop_box(mask, 64, 96, 0.1) == (8 - 6, 24 - 9, 32 + 6, 72 + 9)
    assert lungs.crop_box(mask, 64, 96, 0.5) == (0, 0, 64, 96)  # kept inside the image
    assert lungs.crop_box(np.zeros((32, 32), bool), 64, 96, 0.1) == (0, 0, 64, 96)


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(8, 40),
    width=st.integers(5, 300),
    height=st.integers(5, 300),
    data=st.data(),
)
def test_crop_box_covers_every_lung_pixel_and_nothing_beyond_the_box(size, width, height, data):
    """Every raw pixel whose centre a lung pixel of the mask covers (the stretch of the mask over the
    image) lies in the box; the box's edges are the extreme lung pixels' edges, rounded outwards."""
    top = data.draw(st.integers(0, size - 1))
    bottom = data.draw(st.integers(top + 1, size))
    left = data.draw(st.integers(0, size - 1))
    right = data.draw(st.integers(left + 1, size))
    x0, y0, x1, y1 = lungs.crop_box(_box_mask(size, top, bottom, left, right), width, height, 0.0)
    # the raw pixel x belongs to mask column floor((x + 0.5) * size / width)
    cols = (2 * np.arange(width) + 1) * size // (2 * width)
    rows = (2 * np.arange(height) + 1) * size // (2 * height)
    inside_x = np.flatnonzero((cols >= left) & (cols < right))
    inside_y = np.flatnonzero((rows >= top) & (rows < bottom))
    if len(inside_x):
        assert x0 <= inside_x[0] and inside_x[-1] < x1
    if len(inside_y):
        assert y0 <= inside_y[0] and inside_y[-1] < y1
    assert x0 == left * width // size and y0 == top * height // size
    assert x1 == -(-right * width // size) and y1 == -(-bottom * height // size)


def test_mask_at_stretches_a_raw_mask_as_the_image_is_stretched():
    raw = np.zeros((100, 50), bool)
    raw[:, :25] = True
    at = lungs.mask_at(raw, 16)
    assert at.shape == (16, 16)
    assert at[:, :8].all() and not at[:, 8:].any()
    expected = portable.resize_uint8(np.where(raw, 255, 0).astype(np.uint8), 16, 16) >= 128
    np.testing.assert_array_equal(at, expected)


def test_clean_keeps_the_two_largest_regions_with_their_holes_filled():
    mask = np.zeros((20, 20), bool)
    mask[2:12, 1:6] = True  # 50 px
    mask[2:12, 10:16] = True  # 60 px
    mask[15:17, 15:17] = True  # 4 px speck
    mask[5, 12] = False  # a hole
    cleaned = lungs.clean(mask)
    assert cleaned[5, 12] and not cleaned[15:17, 15:17].any()
    assert cleaned.sum() == 110
    assert not lungs.clean(np.zeros((5, 5), bool)).any()


def test_mask_to_cache_stretch_and_pad():
    mask = np.zeros((8, 8), bool)
    mask[:, :4] = True
    stretched = lungs.mask_to_cache(mask, 90, 60, 16, "stretch")
    assert stretched[:, :8].all() and not stretched[:, 8:].any()
    padded = lungs.mask_to_cache(np.ones((8, 8), bool), 90, 60, 30, "pad")
    new_w, new_h, left, top = letterbox(90, 60, 30)
    assert padded.sum() == new_w * new_h
    assert padded[top : top + new_h, left : left + new_w].all()


def test_apply_none_is_the_plain_cache_and_needs_no_mask():
    image = _image()
    for resize in ("stretch", "pad"):
        out = lungs.apply_lungs(image, None, lungs="none", margin=0.1, cache_size=32, resize=resize)
        assert out.tobytes() == resize_square(image, 32, resize).tobytes()


def test_apply_crop_is_the_cache_of_the_cropped_image():
    image = _image(90, 60)
    mask = _box_mask(16, 4, 12, 2, 8)
    out = lungs.apply_lungs(image, mask, lungs="crop", margin=0.0, cache_size=32, resize="stretch")
    box = lungs.crop_box(mask, 90, 60, 0.0)
    assert box == (11, 15, 45, 45)
    assert out.tobytes() == resize_square(image.crop(box), 32, "stretch").tobytes()


def test_apply_mask_blacks_out_everything_outside_the_grown_lungs():
    image = Image.fromarray(np.full((64, 64, 3), 200, np.uint8), "RGB")
    mask = _box_mask(16, 4, 12, 4, 12)
    out = np.asarray(lungs.apply_lungs(image, mask, lungs="mask", margin=0.0, cache_size=32, resize="stretch"))
    assert (out[8:24, 8:24] == 200).all()
    assert out.sum() == 200 * 3 * 16 * 16
    grown = np.asarray(lungs.apply_lungs(image, mask, lungs="mask", margin=0.125, cache_size=32, resize="stretch"))
    assert (grown > 0).sum() > (out > 0).sum()  # two mask pixels of margin: a larger kept area
    assert (grown[:2] == 0).all() and (grown[:, :2] == 0).all()


@pytest.mark.parametrize("mode", ["crop", "mask"])
def test_an_image_without_lungs_is_refused_not_cropped_to_noise(mode):
    tiny = _box_mask(32, 0, 2, 0, 2)  # 4 of 1024 pixels
    with pytest.raises(lungs.NoLungsError, match="found no lungs"):
        lungs.apply_lungs(_image(), tiny, lungs=mode, margin=0.05, cache_size=32, resize="stretch")
    assert issubclass(lungs.NoLungsError, ImageReadError)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown lungs mode"):
        lungs.apply_lungs(_image(), None, lungs="lungs", margin=0.0, cache_size=32, resize="stretch")


def test_masks_round_trip_and_foreign_files_are_refused(tmp_path):
    mask = _box_mask(16, 3, 9, 2, 14)
    lungs.write_mask(tmp_path / "m.png", mask)
    np.testing.assert_array_equal(lungs.read_mask(tmp_path / "m.png", 16), mask)
    with pytest.raises(ImageReadError, match="not a 32x32"):
        lungs.read_mask(tmp_path / "m.png", 32)
    Image.fromarray(np.full((16, 16), 128, np.uint8), "L").save(tmp_path / "grey.png")
    with pytest.raises(ImageReadError, match="0/255"):
        lungs.read_mask(tmp_path / "grey.png", 16)
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match="cannot be read"):
        lungs.read_mask(tmp_path / "junk.png", 16)


def test_segment_input_is_the_exact_grey_resize():
    image = _image(70, 50, seed=3)
    expected = portable.resize_uint8(np.asarray(image.convert("L")), 24, 24)
    np.testing.assert_array_equal(lungs.segment_input(image, 24), expected)


def test_equalise_none_equalize_and_clahe():
    from skimage.exposure import equalize_adapthist

    rng = np.random.default_rng(5)
    grey = np.clip(rng.normal(90, 20, (40, 40)), 0, 255).astype(np.uint8)
    cached = Image.fromarray(grey, "L").convert("RGB")
    assert lungs.equalise(cached, "none") is cached
    out = np.asarray(lungs.equalise(cached, "equalize"))
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 0] == out[..., 2]).all()
    np.testing.assert_array_equal(out[..., 0], np.asarray(ImageOps.equalize(Image.fromarray(grey, "L"))))
    assert out.min() < 10 and out.max() > 245  # spread over the whole range
    clahe = np.asarray(lungs.equalise(cached, "clahe"))[..., 0]
    np.testing.assert_array_equal(clahe, np.round(equalize_adapthist(grey, clip_limit=0.01) * 255).astype(np.uint8))
    with pytest.raises(ValueError, match="unknown intensity mode"):
        lungs.equalise(cached, "gamma")


def test_equalise_inside_the_lungs_uses_their_histogram_and_keeps_the_rest_black():
    grey = np.zeros((128, 128), np.uint8)  # (Pillow's equalisation needs more than 255 pixels)
    grey[32:96, 32:96] = np.arange(64 * 64).reshape(64, 64) % 40 + 100  # a narrow range inside
    inside = np.zeros((128, 128), bool)
    inside[32:96, 32:96] = True
    out = np.asarray(lungs.equalise(Image.fromarray(grey, "L").convert("RGB"), "equalize", inside))[..., 0]
    assert (out[~inside] == 0).all()
    assert out[inside].min() < 20 and out[inside].max() > 235  # stretched by the lungs' own histogram
    plain = np.asarray(lungs.equalise(Image.fromarray(grey, "L").convert("RGB"), "equalize"))[..., 0]
    assert not np.array_equal(plain[inside], out[inside])  # the black outside would have shifted it


def test_apply_passes_the_dilated_lungs_to_the_equalisation():
    image = Image.fromarray(np.random.default_rng(2).integers(60, 120, (64, 64, 3), dtype=np.uint8), "RGB")
    mask = _box_mask(16, 4, 12, 4, 12)
    out = np.asarray(
        lungs.apply_lungs(image, mask, lungs="mask", margin=0.0, cache_size=32, resize="stretch", intensity="equalize")
    )
    assert (out[:8] == 0).all() and out[8:24, 8:24].max() > 240
