"""A pixel budget checked before any pixel is decoded (``preprocess.max_pixels``).

Every reader (Pillow's formats and DICOM, deflated, multi-frame) reads the image's size from its
header and refuses one above the budget before decoding it; a file larger than any image within
the budget could be is refused before it is read; a deflated DICOM data set is inflated in bounded
steps, so a 280 KB file that would inflate to gigabytes costs next to nothing. Measured: the peak
memory of ``deepcovid predict`` on such a file.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pydicom
import pytest
from PIL import Image

from deepcovid.data import dicom
from deepcovid.data.images import ImageReadError, read_image
from dicom_files import chest, write_deflated, write_dicom
from workspace import REPO

BUDGET = 50_000_000


def test_a_small_deflated_dicom_reads_as_pydicom_reads_it(tmp_path):
    path = write_deflated(tmp_path / "small.dcm", 48, 40)
    ours, _ = dicom.read_dicom(path, BUDGET)
    assert ours.size == (40, 48)
    reference = pydicom.dcmread(path).pixel_array
    assert reference.shape == (48, 40) and not reference.any() and not np.asarray(ours).any()


def test_a_deflated_dicom_with_pixels_reads_as_pydicom_reads_it(tmp_path):
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    pixels = chest(64, 48, bits=12)
    path = write_dicom(tmp_path / "d.dcm", pixels, bits_stored=12, syntax=DeflatedExplicitVRLittleEndian)
    plain = write_dicom(tmp_path / "p.dcm", pixels, bits_stored=12)
    assert np.array_equal(np.asarray(dicom.read_dicom(path, BUDGET)[0]), np.asarray(dicom.read_dicom(plain)[0]))


@pytest.mark.parametrize("rows, cols, frames", [(12000, 12000, 1), (512, 512, 1000)])
def test_a_deflated_bomb_is_refused_from_its_header(tmp_path, rows, cols, frames):
    path = write_deflated(tmp_path / "bomb.dcm", rows, cols, frames=frames)
    assert path.stat().st_size < 1_000_000  # 288 MB or 524 MB of pixels
    with pytest.raises(ImageReadError, match="above the pixel budget of 50,000,000"):
        read_image(path, max_pixels=BUDGET)


def test_a_deflated_file_inflating_beyond_its_header_is_refused(tmp_path):
    path = write_deflated(tmp_path / "liar.dcm", 100, 100, pixel_bytes=200_000_000)
    with pytest.raises(ImageReadError, match="inflates beyond the 20,000 bytes"):
        read_image(path, max_pixels=BUDGET)


def test_an_uncompressed_dicom_header_is_checked_before_its_pixels(tmp_path):
    path = write_dicom(tmp_path / "big.dcm", chest(64, 64), bits_stored=12)
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 20000  # the header lies; the pixel data is never read
    ds.save_as(path)
    with pytest.raises(ImageReadError, match="20000 x 20000 pixels x 1 frames"):
        read_image(path, max_pixels=BUDGET)
    three = write_dicom(tmp_path / "frames.dcm", np.stack([chest(64, 64)] * 3), bits_stored=12, frames=3)
    with pytest.raises(ImageReadError, match="12,288 pixels: above the pixel budget of 10,000"):
        read_image(three, max_pixels=10_000)


def test_png_and_jpeg_sizes_are_checked_before_decoding(tmp_path):
    png, jpeg = tmp_path / "a.png", tmp_path / "a.jpg"
    Image.fromarray(np.zeros((300, 300), np.uint8)).save(png)
    Image.fromarray(np.zeros((300, 300), np.uint8)).save(jpeg)
    for path in (png, jpeg):
        with pytest.raises(ImageReadError, match="300 x 300 = 90,000 pixels: above the pixel budget of 65,536"):
            read_image(path, max_pixels=65_536)
        assert read_image(path, max_pixels=90_000).size == (300, 300)
    big = tmp_path / "padded.png"
    big.write_bytes(png.read_bytes() + bytes(20 << 20))  # trailing junk: larger than any 65,536-pixel image
    with pytest.raises(ImageReadError, match="larger than an image within the pixel budget"):
        read_image(big, max_pixels=65_536)


def test_the_budget_never_exceeds_pillows_own_limit():
    assert dicom.pixel_budget(None) == Image.MAX_IMAGE_PIXELS
    assert dicom.pixel_budget(10**12) == Image.MAX_IMAGE_PIXELS
    assert dicom.pixel_budget(1000) == 1000


def _predict_peak_kb(tiny_trained, image) -> tuple[subprocess.CompletedProcess, int]:
    measure = textwrap.dedent(f"""
        import resource, subprocess, sys
        proc = subprocess.run([sys.executable, "-m", "deepcovid", "predict", {str(image)!r}, "--model",
                               {str(tiny_trained / "models")!r}, "--threshold", "0.5"], capture_output=True, text=True)
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        print("PEAK_KB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    """)
    proc = subprocess.run([sys.executable, "-c", measure], cwd=REPO, capture_output=True, text=True, timeout=300)
    return proc, int(proc.stdout.split("PEAK_KB")[1].split()[0])


def test_predict_on_a_280_kb_decompression_bomb_costs_no_more_than_a_normal_image(tiny_trained, tmp_path):
    """The whole predict on a 240 x 240 PNG peaks near 0.9 GB on one machine, 1.3 GB on another
    (torch's import alone is most of it): the bomb must add nothing to that (before: 5.9 GB), so the
    bound is relative to the normal image measured in the same run, not an absolute figure."""
    bomb = write_deflated(tmp_path / "bomb.dcm", 12000, 12000)
    assert bomb.stat().st_size < 300_000
    proc, peak_kb = _predict_peak_kb(tiny_trained, bomb)
    assert "above the pixel budget" in proc.stdout, proc.stderr
    normal = tmp_path / "x.png"
    Image.fromarray(chest(240, 240, bits=8).astype(np.uint8), "L").save(normal)
    ok, normal_kb = _predict_peak_kb(tiny_trained, normal)
    assert ",COVID-19," in ok.stdout or ",non-COVID," in ok.stdout, ok.stderr
    print(f"peak RSS: bomb {peak_kb / 1e6:.3f} GB, a normal image {normal_kb / 1e6:.3f} GB")
    assert peak_kb < normal_kb + 64_000, f"bomb {peak_kb / 1e6:.2f} GB, a normal image {normal_kb / 1e6:.2f} GB"


def _header(**attributes):
    ds = pydicom.Dataset()
    for key, value in attributes.items():
        setattr(ds, key, value)
    return ds


def test_check_budget_counts_pixels_and_bytes_from_the_header():
    assert dicom.check_budget(_header(Rows=100, Columns=50, SamplesPerPixel=3, BitsAllocated=8), 5000) == 15_000
    assert dicom.check_budget(_header(Rows=100, Columns=50, BitsAllocated=12), 5000) == 10_000  # 12 bits: 2 bytes
    assert dicom.check_budget(_header(Rows=100, Columns=50), 5000) == 10_000  # no BitsAllocated: 16 bits
    assert dicom.check_budget(_header(Rows=10, Columns=10, BitsAllocated=1), 5000) == 100
    assert dicom.check_budget(_header(Rows=10, Columns=10, NumberOfFrames=3, BitsAllocated=32), 300) == 1200
    assert dicom.check_budget(_header(), 1) == 0  # no image in the header: nothing to budget
    assert dicom.check_budget(_header(Rows=10), 1) == 0
    with pytest.raises(
        dicom.DicomError, match=r"10 x 10 pixels x 3 frames = 300 pixels: above the pixel budget of 299"
    ):
        dicom.check_budget(_header(Rows=10, Columns=10, NumberOfFrames=3), 299)
    with pytest.raises(dicom.DicomError, match=r"20 x 10 pixels x 1 frames = 200 pixels"):
        dicom.check_budget(_header(Rows=10, Columns=20), 199)
    with pytest.raises(dicom.DicomError, match="invalid image size in the DICOM header"):
        dicom.check_budget({"Rows": 10, "Columns": 10, "NumberOfFrames": "many"}, 1000)  # as a lenient reader gives


def test_the_file_size_limit_is_exact(tmp_path):
    png = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)
    limit = 65_536 * dicom._MAX_BYTES_PER_PIXEL + dicom._HEADER_ROOM
    png.write_bytes(png.read_bytes() + bytes(limit - png.stat().st_size))  # exactly at the limit: read
    assert read_image(png, max_pixels=65_536).size == (8, 8)
    png.write_bytes(png.read_bytes() + b"\0")
    with pytest.raises(
        ImageReadError, match=f"a file of {limit + 1:,} bytes: larger than an image within the pixel budget of 65,536"
    ):
        read_image(png, max_pixels=65_536)
    dcm = write_dicom(tmp_path / "a.dcm", chest(8, 8), bits_stored=12)
    room = 65_536 * dicom._MAX_BYTES_PER_PIXEL + dicom._HEADER_ROOM
    ds = pydicom.dcmread(dcm)
    ds.add_new(0x00091010, "OB", bytes(room - dcm.stat().st_size - 12 + 2))  # private padding, before the pixels
    ds.save_as(dcm)
    over = dcm.stat().st_size - room
    with pytest.raises(ImageReadError, match=f"a DICOM file of {dcm.stat().st_size:,} bytes"):
        read_image(dcm, max_pixels=65_536)
    assert read_image(dcm, max_pixels=65_536 + over).size == (8, 8)


def test_a_deflated_file_exactly_as_long_as_its_header_declares_is_read(tmp_path):
    path = write_deflated(tmp_path / "exact.dcm", 100, 100, pixel_bytes=20_000)
    image, _ = dicom.read_dicom(path, 10_000)
    assert image.size == (100, 100)
    with pytest.raises(dicom.DicomError, match="above the pixel budget of 9,999"):
        dicom.read_dicom(path, 9_999)
