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
