"""DICOM radiographs (deepcovid/data/dicom.py) against the standard's formulas, written here.

Every file is made with pydicom in the test (tests/dicom_files.py): MONOCHROME1 and 2, 8, 12
and 16 bits, with and without a window or a VOI LUT, rescaled, RGB, multi-frame, without pixel
data, compressed (RLE, decodable; JPEG-LS, not with the installed handlers) and malformed.
"""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLSLossless, RLELossless

from deepcovid.data import dicom as D
from deepcovid.data.images import ImageReadError, read_image
from dicom_files import chest, write_dicom


def _linear_window(x: np.ndarray, centre: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 (LINEAR), as a fraction of the output range, then 8 bits."""
    c, w = centre - 0.5, width - 1
    frac = np.where(x <= c - w / 2, 0.0, np.where(x > c + w / 2, 1.0, (x - c) / w + 0.5))
    return np.round(np.clip(frac, 0, 1) * 255).astype(np.uint8)


def _full_range(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return np.round((x - x.min()) * 255 / (x.max() - x.min())).astype(np.uint8)


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_full_range_when_the_header_has_no_window(tmp_path, bits):
    pixels = chest(bits=bits)
    image, notes = D.read_dicom(write_dicom(tmp_path / "a.dcm", pixels, bits_stored=bits))
    assert image.mode == "L" and image.size == (40, 48) and notes == []
    np.testing.assert_array_equal(np.asarray(image), _full_range(pixels))


@pytest.mark.parametrize("bits", [12, 16])
def test_window_is_applied_as_the_standard_defines_it(tmp_path, bits):
    pixels = chest(bits=bits)
    centre, width = 0.4 * 2**bits, 0.3 * 2**bits
    image, _ = D.read_dicom(write_dicom(tmp_path / "w.dcm", pixels, bits_stored=bits, window=(centre, width)))
    got = np.asarray(image).astype(int)
    want = _linear_window(pixels.astype(np.float64), centre, width).astype(int)
    assert np.abs(got - want).max() <= 1  # rounding of the last bit
    assert (got == 0).mean() > 0.2 and (got == 255).mean() > 0.3  # clipped on both sides


def test_rescale_slope_and_intercept_come_before_the_window(tmp_path):
    pixels = chest(bits=12)
    slope, intercept, centre, width = 2.0, -1000.0, 3000.0, 2000.0
    image, _ = D.read_dicom(
        write_dicom(tmp_path / "r.dcm", pixels, bits_stored=12, rescale=(slope, intercept), window=(centre, width))
    )
    want = _linear_window(pixels * slope + intercept, centre, width).astype(int)
    assert np.abs(np.asarray(image).astype(int) - want).max() <= 1


def test_voi_lut_sequence_is_preferred_to_the_window(tmp_path):
    pixels = chest(bits=12)
    lut = [int(v) for v in np.round(np.sqrt(np.arange(4096) / 4095) * 1023)]  # a gamma LUT, 10-bit output
    image, _ = D.read_dicom(
        write_dicom(tmp_path / "l.dcm", pixels, bits_stored=12, voi_lut=([4096, 0, 10], lut), window=(100.0, 10.0))
    )
    want = np.round(np.asarray(lut)[pixels] * 255 / 1023).astype(int)
    np.testing.assert_array_equal(np.asarray(image).astype(int), want)  # the LUT's range is 0 to 2**10 - 1


def test_monochrome1_is_inverted(tmp_path):
    pixels = chest(bits=12)
    two, _ = D.read_dicom(write_dicom(tmp_path / "m2.dcm", pixels, bits_stored=12, window=(1500.0, 2000.0)))
    one, _ = D.read_dicom(
        write_dicom(tmp_path / "m1.dcm", pixels, bits_stored=12, window=(1500.0, 2000.0), photometric="MONOCHROME1")
    )
    np.testing.assert_array_equal(np.asarray(one), 255 - np.asarray(two))


def test_rle_compressed_file_decodes_like_the_uncompressed_one(tmp_path):
    import pydicom

    pixels = chest(bits=16)
    path = write_dicom(tmp_path / "plain.dcm", pixels, bits_stored=16)
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "rle.dcm")
    np.testing.assert_array_equal(np.asarray(D.read_dicom(tmp_path / "rle.dcm")[0]), np.asarray(D.read_dicom(path)[0]))


def test_header_notes(tmp_path):
    pixels = chest()
    _, notes = D.read_dicom(
        write_dicom(
            tmp_path / "lat.dcm", pixels, bits_stored=12, ViewPosition="LL", Modality="CT", BodyPartExamined="HAND"
        )
    )
    assert any("lateral view" in n and "LL" in n for n in notes)
    assert any("Modality CT" in n for n in notes) and any("HAND" in n for n in notes)
    _, frontal = D.read_dicom(write_dicom(tmp_path / "pa.dcm", pixels, bits_stored=12, ViewPosition="PA"))
    assert frontal == []


@pytest.mark.parametrize(
    "make, reason",
    [
        (
            lambda p: write_dicom(p, np.stack([chest()] * 2), bits_stored=12, frames=2),
            r"multi-frame DICOM \(2 frames\)",
        ),
        (lambda p: write_dicom(p, chest(), bits_stored=12, pixel_data=False), "without pixel data"),
        (lambda p: write_dicom(p, chest(), bits_stored=12, photometric="PALETTE COLOR"), "PALETTE COLOR"),
        (lambda p: p.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage" * 3), "without pixel data"),
        (lambda p: p.write_bytes(write_dicom(p, chest(), bits_stored=12).read_bytes()[:300]), "without pixel data"),
    ],
)
def test_refused_with_the_reason(tmp_path, make, reason):
    path = tmp_path / "bad.dcm"
    make(path)
    with pytest.raises(D.DicomError, match=reason):
        D.read_dicom(path)
    with pytest.raises(ImageReadError, match=reason):
        read_image(path)  # the pipeline's reader dispatches DICOM files by content


def test_compressed_syntax_without_a_handler_is_refused_with_the_reason(tmp_path):
    import pydicom

    path = write_dicom(tmp_path / "ls.dcm", chest(), bits_stored=12)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8not really JPEG-LS\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.save_as(path)
    with pytest.raises(D.DicomError, match="compressed transfer syntax JPEG-LS Lossless.*cannot be decoded"):
        D.read_dicom(path)


def test_truncated_pixel_data_and_other_files_are_refused(tmp_path):
    path = write_dicom(tmp_path / "t.dcm", chest(), bits_stored=12)
    path.write_bytes(path.read_bytes()[:-500])
    with pytest.raises(D.DicomError, match="cannot decode the pixel data.*less than expected"):
        D.read_dicom(path)
    with pytest.raises(D.DicomError, match="not a readable DICOM file"):
        D.read_dicom(__file__)


def test_the_pipeline_reader_gives_rgb_and_notes(tmp_path):
    pixels = chest(bits=16)
    path = write_dicom(tmp_path / "x", pixels, bits_stored=16, ViewPosition="LATERAL")  # no suffix: by content
    assert D.is_dicom(path) and not D.is_dicom(tmp_path / "missing") and not D.is_dicom(__file__)
    notes: list[str] = []
    image = read_image(path, grayscale=True, notes=notes)
    assert image.mode == "RGB" and image.size == (40, 48)
    np.testing.assert_array_equal(np.asarray(image)[..., 0], _full_range(pixels))
    assert len(notes) == 1 and "lateral" in notes[0]
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3))
    colour = read_image(write_dicom(tmp_path / "c.dcm", rgb, photometric="RGB", bits_stored=8), grayscale=False)
    np.testing.assert_array_equal(np.asarray(colour), rgb.astype(np.uint8))


def test_a_window_needs_both_centre_and_width_and_the_first_of_several_is_used(tmp_path):
    pixels = chest(bits=12)
    only_centre = write_dicom(tmp_path / "c.dcm", pixels, bits_stored=12, WindowCenter=1000.0)
    np.testing.assert_array_equal(np.asarray(D.read_dicom(only_centre)[0]), _full_range(pixels))
    two = write_dicom(
        tmp_path / "2.dcm", pixels, bits_stored=12, WindowCenter=[1500.0, 500.0], WindowWidth=[2000.0, 200.0]
    )
    got = np.asarray(D.read_dicom(two)[0]).astype(int)
    assert np.abs(got - _linear_window(pixels.astype(np.float64), 1500.0, 2000.0).astype(int)).max() <= 1


def test_a_16_bit_rgb_file_is_refused(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 4096, (20, 30, 3))
    path = write_dicom(tmp_path / "rgb16.dcm", rgb, photometric="RGB", bits_stored=12)
    with pytest.raises(D.DicomError, match="not 8-bit RGB"):
        D.read_dicom(path)


def test_the_budget_is_checked_on_the_header_alone(tmp_path, monkeypatch):
    """The data set the budget is checked on was read without its pixel data."""
    seen = []
    real = D.check_budget
    monkeypatch.setattr(D, "check_budget", lambda ds, budget: seen.append("PixelData" in ds) or real(ds, budget))
    D.read_dicom(write_dicom(tmp_path / "a.dcm", chest(), bits_stored=12))
    assert seen == [False]


def test_pillows_limit_switched_off_leaves_the_budget_given(monkeypatch):
    monkeypatch.setattr(D.Image, "MAX_IMAGE_PIXELS", None)
    assert D.pixel_budget(1000) == 1000


class _NoPixels:
    """A data set whose pixel data cannot be decoded; ``file_meta`` only when given."""

    def __init__(self, exc, syntax=None):
        self.exc = exc
        if syntax is not None:
            self.file_meta = {"TransferSyntaxUID": syntax}

    @property
    def pixel_array(self):
        raise self.exc


@pytest.mark.parametrize(
    "ds, reason",
    [
        (_NoPixels(ValueError("first line\nsecond line")), r"cannot decode the pixel data \(None\): first line$"),
        (_NoPixels(ValueError()), r"cannot decode the pixel data \(None\): ValueError$"),
        (_NoPixels(RuntimeError("x"), syntax="1.2.3"), r"cannot decode the pixel data \(1.2.3\): x$"),
    ],
)
def test_undecodable_pixels_give_the_syntax_and_the_first_line_of_the_reason(ds, reason):
    with pytest.raises(D.DicomError, match=reason):
        D._pixels(ds)


@pytest.mark.parametrize(
    "exc, reason", [(ValueError("first line\nsecond line"), "first line"), (ValueError(), "ValueError")]
)
def test_errors_of_each_step_give_the_first_line_of_the_reason_and_the_file(tmp_path, monkeypatch, exc, reason):
    import pydicom.pixels

    path = write_dicom(tmp_path / "a.dcm", chest(), bits_stored=12)

    def fail(*args, **kwargs):
        raise exc

    steps = [
        (D, "_dataset", "not a readable DICOM file: "),
        (pydicom.pixels, "apply_modality_lut", "invalid DICOM image attributes: "),
        # after the data set was read: the exception's type, then its first line (here none)
        (D, "header_notes", "invalid DICOM data: ValueError:" + ("" if reason == "ValueError" else f" {reason}")),
    ]
    for owner, name, prefix in steps:
        with monkeypatch.context() as m:
            m.setattr(owner, name, fail)
            with pytest.raises(D.DicomError) as caught:
                D.read_dicom(path)
        want = prefix if name == "header_notes" else prefix + reason
        assert caught.value.reason.strip() == want and str(path) in str(caught.value), (name, str(caught.value))
