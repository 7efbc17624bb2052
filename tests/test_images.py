"""Decoding every mode the sources contain into the uniform 8-bit RGB cache."""

import io as _io

import numpy as np
import pytest
from PIL import Image

from deepcovid.data.images import ImageReadError, read_image, resize_square


def _save(tmp_path, name, img, fmt):
    path = tmp_path / name
    img.save(path, format=fmt)
    return path


def _gradient(h=40, w=60):
    return (np.linspace(0, 255, w)[None, :] * np.ones((h, 1))).astype(np.uint8)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "LA", "1", "CMYK"])
def test_modes_decode_to_rgb8(tmp_path, mode):
    base = Image.fromarray(_gradient(), mode="L")
    img = base.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    out = read_image(_save(tmp_path, f"x.{fmt.lower()}", img, fmt))
    assert out.mode == "RGB" and out.size == (60, 40)
    arr = np.asarray(out)
    assert arr.dtype == np.uint8
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()  # grey replicated


def test_16bit_scaled_by_own_range(tmp_path):
    # a 12-bit radiograph stored in 16 bits: values 0..4095 must span 0..255, not 0..16
    arr = (np.linspace(0, 4095, 64)[None, :] * np.ones((8, 1))).astype(np.uint16)
    img = Image.fromarray(arr)
    assert img.mode in ("I;16", "I")
    path = _save(tmp_path, "deep.png", img, "PNG")
    out = np.asarray(read_image(path))[..., 0]
    assert out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out[0].astype(int)) >= 0)


def test_rgba_transparency_composited_on_black(tmp_path):
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[:5, :, 3] = 255  # top half opaque, bottom transparent
    out = np.asarray(read_image(_save(tmp_path, "a.png", Image.fromarray(rgba, "RGBA"), "PNG")))
    assert out[0, 0, 0] == 200 and out[9, 9, 0] == 0


def test_png_named_jpg_opens_by_content(tmp_path):
    path = _save(tmp_path, "really_png.jpg", Image.fromarray(_gradient()), "PNG")
    assert read_image(path).size == (60, 40)


def test_colour_kept_when_not_grayscale(tmp_path):
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    out = np.asarray(read_image(_save(tmp_path, "red.png", Image.fromarray(rgb), "PNG"), grayscale=False))
    assert out[0, 0].tolist() == [255, 0, 0]


def test_truncated_png_rejected(tmp_path):
    buf = _io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200), dtype=np.uint8)).save(buf, "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageReadError, match="cannot decode"):
        read_image(path)


def test_truncated_jpeg_rejected(tmp_path):
    buf = _io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200), dtype=np.uint8)).save(buf, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[:600])
    with pytest.raises(ImageReadError):
        read_image(path)


def test_garbage_and_missing_rejected(tmp_path):
    path = tmp_path / "garbage.png"
    path.write_bytes(b"this is not an image at all")
    with pytest.raises(ImageReadError, match="not a recognised image"):
        read_image(path)
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "absent.png")


def test_resize_modes():
    img = Image.fromarray(np.full((50, 100), 255, dtype=np.uint8)).convert("RGB")
    stretched = np.asarray(resize_square(img, 32, "stretch"))
    assert stretched.shape == (32, 32, 3) and stretched.min() == 255
    padded = np.asarray(resize_square(img, 32, "pad"))
    assert padded.shape == (32, 32, 3)
    assert padded[0, 16, 0] == 0 and padded[16, 16, 0] == 255  # letterbox bars top and bottom
    with pytest.raises(ValueError, match="unknown resize mode"):
        resize_square(img, 32, "crop")


def test_deep_images_map_their_own_range_exactly(tmp_path):
    """16-bit and 32-bit integer and float images: (value - min) x 255 / (max - min), rounded; a
    flat one is black."""
    from PIL import TiffImagePlugin  # noqa: F401 - 32-bit modes are written as TIFF

    rng = np.random.default_rng(4)
    for mode, arr in [
        ("I;16", rng.integers(100, 4000, (6, 9)).astype(np.uint16)),
        ("I", rng.integers(-70000, 90000, (6, 9)).astype(np.int32)),
        ("F", rng.normal(3.0, 2.0, (6, 9)).astype(np.float32)),
    ]:
        path = _save(tmp_path, f"{mode.replace(';', '')}.tif", Image.fromarray(arr), "TIFF")
        x = arr.astype(np.float64)
        want = np.round((x - x.min()) * (255.0 / (x.max() - x.min()))).astype(np.uint8)
        got = np.asarray(read_image(path))
        np.testing.assert_array_equal(got, np.repeat(want[..., None], 3, axis=2))
    flat = _save(tmp_path, "flat.png", Image.fromarray(np.full((5, 7), 1234, np.uint16)), "PNG")
    assert not np.asarray(read_image(flat)).any()


def test_transparent_colour_of_a_grey_or_palette_png_goes_on_black(tmp_path):
    grey = Image.fromarray(np.array([[10, 200], [200, 10]], np.uint8))
    path = tmp_path / "trns.png"
    grey.save(path, transparency=10)
    np.testing.assert_array_equal(np.asarray(read_image(path))[..., 0], [[0, 200], [200, 0]])
    palette = grey.convert("P")
    palette.save(tmp_path / "p.png", transparency=palette.getpixel((0, 0)))
    np.testing.assert_array_equal(np.asarray(read_image(tmp_path / "p.png"))[..., 0], [[0, 200], [200, 0]])


def test_jpeg_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((40, 64), np.uint8)
    arr[:, :32] = 255  # bright left half
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "o.jpg"
    Image.fromarray(arr).save(path, exif=exif.tobytes(), quality=95)
    out = np.asarray(read_image(path))[..., 0]
    assert out.shape == (64, 40)
    assert out[:28].mean() > 200 and out[36:].mean() < 50  # the bright half now on top


def test_colour_becomes_luminance(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 255, 128, 0
    out = np.asarray(read_image(_save(tmp_path, "c.png", Image.fromarray(rgb), "PNG")))
    want = (255 * 299 + 128 * 587 + 0 * 114 + 500) // 1000  # ITU-R 601-2, as Pillow's L
    assert (out == want).all()


def test_letterbox_places_the_image_centred_with_its_aspect():
    from deepcovid.data.images import letterbox

    assert letterbox(100, 50, 224) == (224, 112, 0, 56)
    assert letterbox(50, 100, 224) == (112, 224, 56, 0)
    assert letterbox(101, 50, 31) == (31, 15, 0, 8)
    assert letterbox(1000, 1, 224) == (224, 1, 0, 111)
    assert letterbox(1, 1000, 224) == (1, 224, 111, 0)
    assert letterbox(64, 64, 32) == (32, 32, 0, 0)


def test_padded_resize_puts_the_image_where_letterbox_says(tmp_path):
    img = Image.fromarray(np.full((30, 90), 255, np.uint8)).convert("RGB")
    padded = np.asarray(resize_square(img, 30, "pad"))[..., 0]
    rows = np.nonzero(padded.max(axis=1))[0]
    assert rows.min() == 10 and rows.max() == 19 and (padded[10:20] == 255).all()


def test_every_failure_gives_its_reason_and_the_file(tmp_path):
    folder = tmp_path / "folder.png"
    folder.mkdir()
    with pytest.raises(ImageReadError, match="a folder, not an image file") as caught:
        read_image(folder)
    assert str(folder) in str(caught.value)
    cut = tmp_path / "cut.png"
    buf = _io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200), dtype=np.uint8)).save(buf, "PNG")
    cut.write_bytes(buf.getvalue()[:3000])
    with pytest.raises(ImageReadError) as caught:
        read_image(cut)
    assert caught.value.reason.startswith("cannot decode: ") and "\n" not in caught.value.reason


def test_load_cached_reads_rgb(tmp_path):
    from deepcovid.data.images import load_cached

    path = _save(tmp_path, "g.png", Image.fromarray(_gradient()), "PNG")
    arr = load_cached(path)
    assert arr.shape == (40, 60, 3) and arr.dtype == np.uint8 and (arr[..., 2] == _gradient()).all()
