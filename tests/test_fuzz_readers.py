"""Property-based fuzzing (hypothesis) of every reader of untrusted input.

The contract checked for each reader: given any input it either returns a valid result (the
invariants below hold) or raises the project's own error type (a subclass of
:class:`deepcovid.errors.DeepCovidError`) whose message is one line and names the input (the file
name; for params.yaml the file and the parameter path). Any other exception type is a failure, and
so is a result that breaks an invariant (a silently wrong result).

Examples per test (``derandomize=True``: the same examples on every run; no example database; no
network). ``FUZZ_SCALE=10`` multiplies the numbers, ``FUZZ_RANDOM=1`` draws new examples each run.

* ``deepcovid.data.images.read_image``: valid PNG (8/16-bit L, RGB, RGBA, P), JPEG and DICOM files
  give the original pixels (18 parametrized cases); the same files and DICOMs with random byte
  mutations (flip / overwrite / truncate / insert / delete at chosen offsets), 400 examples; random
  bytes behind the magic numbers of common formats, 200; a PNG whose IHDR claims a size over
  Pillow's pixel limit (refused as too large, without allocating), 40 (+1 explicit 100000x100000);
  changes strictly inside a PNG's IDAT data or CRC (Pillow checks the CRCs: must be refused), 100.
  JPEG has no checksum: a mutated JPEG may decode to other pixels without a warning, which is
  accepted (only the shape invariants are checked for it); a PNG that still decodes must give the
  original pixels.
* ``deepcovid.data.dicom.read_dicom``: mutated valid DICOM files (4 kinds), 300; a 128-byte preamble
  + ``DICM`` (or a valid file meta group) followed by random bytes, 150; 4 fixed mutated files, read
  with read_dicom and read_image (8 cases).
* ``deepcovid.data.metadata.read_csv_text``: CSV written by the csv module (random cells with quotes,
  separators, newlines, NUL, fields over the csv field limit; utf-8, utf-8 with BOM, latin-1,
  utf-16; blank lines; header-only; empty), 250: a clean one must parse to the cells written,
  stripped; one record of another field count (refused naming its line), 150; random CSV-like text
  and bytes, 250. ``read_cohen_style`` (column aliases in any spelling, missing / extra columns),
  150; ``read_chexpert`` (train.csv and valid.csv, one defect each: missing column, label outside
  1 / 0 / -1 / blank, path, view), 120; ``deepcovid.data.positives.read_exclusions``, 150.
* ``deepcovid.evaluation.predictions.load_predictions``: random tables (missing / duplicated
  columns, NaN / inf / negative / >1 scores, labels other than 0/1, duplicate ids, ragged rows,
  encodings, empty, header-only), 250 (+2 explicit); 2 fixed cases.
* ``deepcovid.config.load_config``: the real params.yaml with one leaf replaced (another type, an
  out-of-range or non-finite number, a string), one key deleted or an unknown key added at any
  depth, 200; random YAML text and bytes, 150; 9 fixed YAML cases.
* ``deepcovid.data.archive.safe_extract_zip``: zips with hostile member names ("../x", "/abs",
  "C:\\x", NUL, backslashes, .git, duplicates, a file and a folder of one name...), kinds (symlinks,
  fifos, folders without '/', random attributes), compression methods, patched central-directory
  fields (sizes, version, flags, method, name bytes) and random corruption, 250; 11 fixed cases.
  Nothing may be written outside dest (a canary folder and dest's parent are checked).
* A missing path and a folder in place of the file, for every reader (18 cases).
"""

from __future__ import annotations

import copy
import csv
import io
import math
import os
import re
import resource
import stat
import struct
import tempfile
import warnings
import zipfile
import zlib
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from PIL import Image

from deepcovid.data.metadata import _COHEN_ALIASES
from deepcovid.errors import DeepCovidError

REPO = Path(__file__).resolve().parents[1]


PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)
# A longer or differently seeded search (not for CI): FUZZ_SCALE=10 multiplies the examples,
# FUZZ_RANDOM=1 draws new ones on each run.
SCALE = float(os.environ.get("FUZZ_SCALE", "1"))
RANDOM = os.environ.get("FUZZ_RANDOM") == "1"


def fuzz(n: int):
    return settings(
        max_examples=max(1, round(n * SCALE)),
        deadline=None,
        derandomize=not RANDOM,
        database=None,
        phases=PHASES,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.function_scoped_fixture,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
            HealthCheck.filter_too_much,
        ],
    )


# --------------------------------------------------------------------------------------------
# the error contract


def check_error(exc: BaseException, *names: str, unnamed: list | None = None) -> str:
    """``exc`` is a project error with a one-line message naming one of ``names``.

    With ``unnamed``, a message that does not name the input is collected there (the caller fails
    after the run) instead of failing at once: for readers whose every message lacks the file name,
    an immediate failure would end the search for the other kinds of violation."""
    assert isinstance(exc, DeepCovidError), f"{type(exc).__name__} is not a DeepCovidError: {exc!r}"
    msg = str(exc)
    assert msg.strip(), "empty error message"
    assert not any(ch in msg for ch in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"), (
        f"error message is not one line: {msg!r}"
    )
    if unnamed is not None and not any(name in msg for name in names):
        unnamed.append(msg)
        return msg
    assert any(name in msg for name in names), f"error message does not name the input ({' or '.join(names)}): {msg!r}"
    return msg


def assert_all_named(unnamed: list, name: str) -> None:
    distinct = sorted(set(unnamed))
    assert not unnamed, (
        f"{len(unnamed)} error messages do not name the input file {name!r}; "
        f"{len(distinct)} distinct, e.g. {distinct[:4]}"
    )


def call(fn, *args, **kwargs):
    """(result, None) or (None, project error); any other exception propagates (a failure)."""
    try:
        result = fn(*args, **kwargs)
    except DeepCovidError as exc:
        _event(f"refused ({type(exc).__name__})")
        return None, exc
    _event("accepted")
    return result, None


def _event(text: str) -> None:
    if currently_in_test_context():  # the outcome counts in --hypothesis-show-statistics
        event(text)


# --------------------------------------------------------------------------------------------
# byte mutations

MUTATIONS = ("flip", "overwrite", "truncate", "insert", "delete")
# (kind, offset (taken modulo the current length), bytes to overwrite / insert, flip mask / delete count)
byte_ops = st.lists(
    st.tuples(
        st.sampled_from(MUTATIONS), st.integers(0, 2**20), st.binary(min_size=1, max_size=16), st.integers(1, 255)
    ),
    min_size=1,
    max_size=3,
)


def apply_ops(data: bytes, ops) -> bytes:
    buf = bytearray(data)
    for kind, off, chunk, mask in ops:
        if not buf:
            kind, off = "insert", 0
        off %= len(buf) + (kind == "insert")
        if kind == "flip":
            buf[off] ^= mask
        elif kind == "overwrite":
            buf[off : off + len(chunk)] = chunk
        elif kind == "truncate":
            del buf[off:]
        elif kind == "insert":
            buf[off:off] = chunk
        else:
            del buf[off : off + mask % 16 + 1]
    return bytes(buf)


# --------------------------------------------------------------------------------------------
# 1. images

H, W = 10, 14  # not square, so that a transposition shows


def _pattern(seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


def _smooth() -> np.ndarray:
    y, x = np.mgrid[0:16, 0:16]
    return (x * 8 + y * 7).astype(np.uint8)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _gray(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma, as Pillow's convert("L")."""
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


@cache
def image_files() -> dict[str, tuple[bytes, np.ndarray, np.ndarray, int]]:
    """name -> (file bytes, expected RGB with grayscale=False, expected with grayscale=True, tolerance)."""
    import dicom_files
    from dicom_files import chest, write_dicom

    rgb = _pattern()
    out = {}
    gray = rgb[..., 0]
    g3 = np.stack([gray] * 3, -1)
    out["png_l8"] = (_save(Image.fromarray(gray), "PNG"), g3, g3, 0)
    deep = (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 37 + 1000).astype(np.uint16)
    scaled = np.round((deep - deep.min()) * (255.0 / (deep.max() - deep.min()))).astype(np.uint8)
    s3 = np.stack([scaled] * 3, -1)
    out["png_l16"] = (_save(Image.frombytes("I;16", (W, H), deep.astype("<u2").tobytes()), "PNG"), s3, s3, 0)
    out["png_rgb"] = (_save(Image.fromarray(rgb), "PNG"), rgb, np.stack([_gray(rgb)] * 3, -1), 1)
    alpha = _pattern(2)[..., 0]
    rgba = np.dstack([rgb, alpha])
    comp = np.round(rgb.astype(np.float64) * alpha[..., None] / 255.0).astype(np.uint8)
    out["png_rgba"] = (_save(Image.fromarray(rgba), "PNG"), comp, np.stack([_gray(comp)] * 3, -1), 2)
    pal = Image.fromarray(rgb).quantize(colors=16)
    prgb = np.asarray(pal.convert("RGB"))
    out["png_p"] = (_save(pal, "PNG"), prgb, np.stack([_gray(prgb)] * 3, -1), 1)
    sm = _smooth()
    out["jpeg_l"] = (_save(Image.fromarray(sm), "JPEG", quality=95), np.stack([sm] * 3, -1), np.stack([sm] * 3, -1), 8)
    smc = np.dstack([sm, sm[::-1], sm.T])
    out["jpeg_rgb"] = (_save(Image.fromarray(smc), "JPEG", quality=95), smc, np.stack([_gray(smc)] * 3, -1), 12)
    # fixed UIDs, so that the files (and the offsets of a failing example) are the same on every run
    uid, dicom_files.generate_uid = dicom_files.generate_uid, lambda: "1.2.826.0.1.3680043.8.498.1"
    try:
        out.update(_dicom_files(chest, write_dicom, rgb))
    finally:
        dicom_files.generate_uid = uid
    return out


def _dicom_files(chest, write_dicom, rgb):
    out = {}
    with tempfile.TemporaryDirectory() as td:
        values = chest(H, W, bits=12, seed=3)
        lo, hi = values.min(), values.max()
        dsc = np.round((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)
        d3 = np.stack([dsc] * 3, -1)
        out["dicom_mono2"] = (write_dicom(Path(td) / "a.dcm", values).read_bytes(), d3, d3, 1)
        out["dicom_mono1_window"] = (
            write_dicom(
                Path(td) / "b.dcm", values, photometric="MONOCHROME1", window=(2000.0, 3000.0), ViewPosition="LL"
            ).read_bytes(),
            None,
            None,
            0,
        )
        out["dicom_rescale_voilut"] = (
            write_dicom(
                Path(td) / "c.dcm", values, rescale=(0.5, -10.0), voi_lut=([256, 0, 8], list(range(256)))
            ).read_bytes(),
            None,
            None,
            0,
        )
        out["dicom_rgb"] = (
            write_dicom(Path(td) / "d.dcm", rgb, photometric="RGB", bits_stored=8).read_bytes(),
            rgb,
            np.stack([_gray(rgb)] * 3, -1),
            1,
        )
    return out


IMAGE_KINDS = (
    "png_l8",
    "png_l16",
    "png_rgb",
    "png_rgba",
    "png_p",
    "jpeg_l",
    "jpeg_rgb",
    "dicom_mono2",
    "dicom_mono1_window",
    "dicom_rescale_voilut",
    "dicom_rgb",
)
PNG_KINDS = tuple(k for k in IMAGE_KINDS if k.startswith("png"))
DICOM_KINDS = tuple(k for k in IMAGE_KINDS if k.startswith("dicom"))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_rgb8(img) -> np.ndarray:
    assert isinstance(img, Image.Image), f"not a PIL image: {type(img).__name__}"
    assert img.mode == "RGB", f"mode {img.mode}, expected RGB"
    assert img.width > 0 and img.height > 0, f"empty image {img.size}"
    arr = np.asarray(img)
    assert arr.dtype == np.uint8 and arr.shape == (img.height, img.width, 3)
    return arr


def png_chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    """(type, data start, data end) of each chunk; the CRC follows at end..end+4."""
    pos, out = 8, []
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        out.append((data[pos + 4 : pos + 8], pos + 8, pos + 8 + length))
        pos += 12 + length
    return out


@pytest.mark.parametrize("grayscale", [True, False])
@pytest.mark.parametrize(
    "kind", ["png_l8", "png_l16", "png_rgb", "png_rgba", "png_p", "jpeg_l", "jpeg_rgb", "dicom_mono2", "dicom_rgb"]
)
def test_read_image_unmutated_pixels(tmp_path, kind, grayscale):
    from deepcovid.data.images import read_image

    data, colour, gray, tol = image_files()[kind]
    path = tmp_path / f"fuzz-unmutated.{kind.split('_')[0]}"
    path.write_bytes(data)
    arr = check_rgb8(read_image(path, grayscale=grayscale)).astype(np.int64)
    want = (gray if grayscale else colour).astype(np.int64)
    assert arr.shape == want.shape
    diff = np.abs(arr - want)
    if kind.startswith("jpeg"):
        assert diff.mean() <= 3 and diff.max() <= tol * 4, (diff.mean(), diff.max())
    else:
        assert diff.max() <= tol, f"pixels differ by up to {diff.max()} (tolerance {tol})"


def test_read_image_mutated(tmp_path):
    from deepcovid.data.images import read_image

    path, unnamed = tmp_path / "fuzz-mutated-input.img", []

    @fuzz(400)
    @given(st.sampled_from(IMAGE_KINDS), byte_ops, st.booleans())
    def run(kind, ops, grayscale):
        data = apply_ops(image_files()[kind][0], ops)
        path.write_bytes(data)
        img, err = call(read_image, path, grayscale=grayscale, notes=[])
        if err is not None:
            check_error(err, path.name, unnamed=unnamed)
            return
        arr = check_rgb8(img)
        _, colour, gray, tol = image_files()[kind]
        if kind in PNG_KINDS and data.startswith(PNG_SIGNATURE):
            # every PNG chunk is CRC-checked: a PNG that decodes holds the original pixels
            want = gray if grayscale else colour
            assert arr.shape == want.shape and np.abs(arr.astype(int) - want).max() <= tol, (
                "mutated PNG decoded to other pixels"
            )

    run()
    assert_all_named(unnamed, path.name)


MAGICS = (
    b"",
    PNG_SIGNATURE,
    b"\xff\xd8\xff",
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"\x00" * 128 + b"DICM",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"P5\n",
    b"P6\n3 2\n255\n",
    b"\x00\x00\x01\x00",
    b"8BPS",
    b"\x0a\x05\x01\x08",
    b"\x00\x00\x02\x00",
)


def test_read_image_random_bytes(tmp_path):
    from deepcovid.data.images import read_image

    path, unnamed = tmp_path / "fuzz-random-input.bin", []

    @fuzz(200)
    @given(st.sampled_from(MAGICS), st.binary(max_size=1024), st.booleans())
    def run(magic, body, grayscale):
        path.write_bytes(magic + body)
        img, err = call(read_image, path, grayscale=grayscale)
        if err is not None:
            check_error(err, path.name, unnamed=unnamed)
            return
        check_rgb8(img)

    run()
    assert_all_named(unnamed, path.name)


def _png_chunk(ctype: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload))


def png_with_header(width: int, height: int, bit_depth: int, colour_type: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _png_chunk(b"IEND", b"")
    )


@st.composite
def huge_sizes(draw):
    limit = Image.MAX_IMAGE_PIXELS or 89_478_485
    width = draw(st.integers(limit // 100_000 + 1, 100_000))
    height = draw(st.integers(limit // width + 1, 100_000))
    return width, height


def test_read_image_huge_png_header_refused(tmp_path):
    from deepcovid.data.images import read_image

    assert Image.MAX_IMAGE_PIXELS, "Pillow's decompression-bomb limit is off"
    path, unnamed = tmp_path / "fuzz-huge.png", []

    @fuzz(40)
    @example(size=(100_000, 100_000), depth=(8, 0))
    @given(huge_sizes(), st.sampled_from([(8, 0), (16, 0), (8, 2), (16, 2), (8, 6), (8, 4), (1, 0), (8, 3)]))
    def run(size, depth):
        path.write_bytes(png_with_header(*size, *depth))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        img, err = call(read_image, path)
        grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        assert err is not None, f"a {size[0]}x{size[1]} PNG header was accepted"
        msg = check_error(err, path.name, unnamed=unnamed)
        assert "too large" in msg, msg
        assert grown_mib < 100, f"reading the header allocated {grown_mib:.0f} MiB"

    run()
    assert_all_named(unnamed, path.name)


@st.composite
def idat_mutations(draw):
    kind = draw(st.sampled_from(PNG_KINDS))
    data = bytearray(image_files()[kind][0])
    idats = [(s, e) for t, s, e in png_chunks(bytes(data)) if t == b"IDAT"]
    start, end = draw(st.sampled_from(idats))
    where = draw(st.sampled_from(["data", "crc"]))
    lo, hi = (start, end - 1) if where == "data" else (end, end + 3)
    off = draw(st.integers(lo, hi))
    if draw(st.booleans()):
        data[off] ^= draw(st.integers(1, 255))
    else:
        k = draw(st.integers(1, hi - off + 1))
        new = draw(st.binary(min_size=k, max_size=k).filter(lambda b: b != bytes(data[off : off + k])))
        data[off : off + k] = new
    return kind, where, off, bytes(data)


def test_read_image_png_idat_mutation_refused(tmp_path):
    from deepcovid.data.images import read_image

    path, unnamed = tmp_path / "fuzz-idat.png", []

    @fuzz(100)
    @given(idat_mutations())
    def run(case):
        kind, where, off, data = case
        path.write_bytes(data)
        img, err = call(read_image, path)
        assert err is not None, f"{kind}: a PNG changed inside its IDAT {where} (offset {off}) was accepted"
        check_error(err, path.name, unnamed=unnamed)

    run()
    assert_all_named(unnamed, path.name)


# --------------------------------------------------------------------------------------------
# 2. DICOM


def check_dicom_result(result) -> None:
    assert isinstance(result, tuple) and len(result) == 2, f"not (image, notes): {result!r}"
    img, notes = result
    assert isinstance(img, Image.Image) and img.mode in ("L", "RGB"), f"image mode {getattr(img, 'mode', img)}"
    assert img.width > 0 and img.height > 0
    assert np.asarray(img).dtype == np.uint8
    assert isinstance(notes, list) and all(isinstance(n, str) and "\n" not in n for n in notes), notes


def check_dicom_read(read_dicom, path, unnamed: list) -> None:
    """``read_dicom(path)`` gives a valid (image, notes) or a one-line project error naming the file
    (one that does not is collected in ``unnamed``)."""
    result, err = call(read_dicom, path)
    if err is not None:
        check_error(err, path.name, unnamed=unnamed)
    else:
        check_dicom_result(result)


def test_read_dicom_mutated(tmp_path):
    from deepcovid.data.dicom import read_dicom

    path, unnamed = tmp_path / "fuzz-mutated.dcm", []

    @fuzz(300)
    @given(st.sampled_from(DICOM_KINDS), byte_ops)
    def run(kind, ops):
        path.write_bytes(apply_ops(image_files()[kind][0], ops))
        check_dicom_read(read_dicom, path, unnamed)

    run()
    assert_all_named(unnamed, path.name)


def _file_meta_end(data: bytes) -> int:
    # (0002,0000) UL group length right after "DICM": tag 4 + VR 2 + length 2 + value 4
    (group_length,) = struct.unpack("<I", data[140:144])
    return 144 + group_length


def test_read_dicom_random_after_preamble(tmp_path):
    from deepcovid.data.dicom import read_dicom

    path, unnamed = tmp_path / "fuzz-random.dcm", []

    @fuzz(150)
    @given(st.sampled_from(["preamble", "meta"]), st.sampled_from(DICOM_KINDS), st.binary(max_size=600))
    def run(start, kind, body):
        base = image_files()[kind][0]
        head = b"\0" * 128 + b"DICM" if start == "preamble" else base[: _file_meta_end(base)]
        path.write_bytes(head + body)
        check_dicom_read(read_dicom, path, unnamed)

    run()
    assert_all_named(unnamed, path.name)


DICOM_CASES = {  # inputs found by this fuzzer, kept as fixed cases (offsets in the files of image_files())
    "unknown-VR-TL-in-group-length": ("dicom_mono2", [("flip", 136, b"", 1)]),  # (0002,0000) VR UL -> TL
    "group-length-VR-UN": ("dicom_mono2", [("flip", 137, b"", 2)]),  # UL -> UN: value of the wrong length
    "truncated-in-file-meta": ("dicom_mono2", [("truncate", 152, b"", 1)]),
    "VOI-LUT-entry-over-8-bits": ("dicom_rescale_voilut", [("flip", 579, b"", 1)]),
}


@pytest.mark.parametrize("reader", ["read_dicom", "read_image"])
@pytest.mark.parametrize("case", list(DICOM_CASES), ids=list(DICOM_CASES))
def test_dicom_known_cases(tmp_path, case, reader):
    from deepcovid.data.dicom import read_dicom
    from deepcovid.data.images import read_image

    kind, ops = DICOM_CASES[case]
    path = tmp_path / "fuzz-known.dcm"
    path.write_bytes(apply_ops(image_files()[kind][0], ops))
    result, err = call(read_dicom if reader == "read_dicom" else read_image, path)
    if err is not None:
        check_error(err, path.name)
    elif reader == "read_dicom":
        check_dicom_result(result)
    else:
        check_rgb8(result)


# --------------------------------------------------------------------------------------------
# 3. metadata CSV readers

ENCODINGS = ("utf-8", "utf-8-sig", "latin-1", "utf-16")
_WEIRD = ",\"\n\r \t;'\\é€\u00a0\u2028\ufeff\x00\x1cab"
cells = st.one_of(
    st.text(alphabet=st.sampled_from(list("abcxyz0123456789 _-./")), max_size=10),
    st.text(alphabet=st.sampled_from(list(_WEIRD)), max_size=8),
    st.text(max_size=8),
    st.integers(1, 200_000).map(lambda n: "L" * n),
)
header_names = st.one_of(
    st.text(alphabet=st.sampled_from(list("abcdefgxyz_ ")), min_size=0, max_size=8),
    st.text(alphabet=st.sampled_from(list(',"\n é\t')), max_size=4),
)


def write_records(records: list[list[str]], blank_after: set[int] = frozenset()) -> tuple[str, list[int]]:
    """CSV text of ``records`` (csv module, \\r\\n), a blank line after the records in
    ``blank_after``; and the physical line each record starts on."""
    parts, starts, line = [], [], 1
    for i, record in enumerate(records):
        buf = io.StringIO()
        csv.writer(buf).writerow(record)
        text = buf.getvalue()
        if i in blank_after:
            text += "\r\n"
        starts.append(line)
        line += text.count("\n")
        parts.append(text)
    return "".join(parts), starts


def encode(text: str, encoding: str) -> tuple[bytes, str]:
    try:
        return text.encode(encoding), encoding
    except UnicodeEncodeError:
        return text.encode("utf-8"), "utf-8"


def as_read(cell: str, encoding: str) -> str:
    """What a cell written in ``encoding`` reads back as (bytes that are not UTF-8 become U+FFFD)."""
    return cell.encode(encoding).decode("utf-8", errors="replace") if encoding == "latin-1" else cell


def check_text_frame(frame) -> None:
    assert isinstance(frame, pd.DataFrame)
    names = list(frame.columns)
    assert all(isinstance(c, str) and c and c == c.strip() for c in names), names
    assert len(set(names)) == len(names), names
    for col in names:
        assert all(isinstance(v, str) for v in frame[col]), f"column {col!r} holds non-strings"


@st.composite
def csv_tables(draw):
    header = draw(st.lists(header_names, min_size=1, max_size=5))
    rows = draw(st.lists(st.lists(cells, min_size=len(header), max_size=len(header)), max_size=5))
    blank = draw(st.sets(st.integers(0, len(rows)), max_size=2))
    encoding = draw(st.sampled_from(ENCODINGS))
    return header, rows, blank, encoding


@fuzz(250)
@example(case=([], [], set(), "utf-8"))  # an empty file
@given(csv_tables())
def test_read_csv_text_well_formed(tmp_path, case):
    from deepcovid.data.metadata import read_csv_text

    header, rows, blank, encoding = case
    text, _ = write_records([header, *rows] if header else [], blank)
    raw, encoding = encode(text, encoding)
    path = tmp_path / "fuzz-table.csv"
    path.write_bytes(raw)
    frame, err = call(read_csv_text, path)
    names = [as_read(h, encoding).strip() for h in header]
    kept = [i for i, n in enumerate(names) if n]
    limit = csv.field_size_limit()
    clean = (
        encoding != "utf-16"
        and b"\0" not in raw
        and kept
        and len({names[i] for i in kept}) == len(kept)
        and all(len(c) <= limit for c in [*header, *(c for r in rows for c in r)])
    )
    if err is not None:
        check_error(err, path.name)
        assert not clean, f"a well-formed CSV was refused: {err}"
        return
    check_text_frame(frame)
    assert encoding != "utf-16" and b"\0" not in raw
    assert list(frame.columns) == [names[i] for i in kept]
    want = [[as_read(r[i], encoding).strip() for i in kept] for r in rows]
    assert frame.values.tolist() == want if want else frame.empty, "cells differ from the records written"


@st.composite
def ragged_tables(draw):
    header = draw(st.lists(st.text(alphabet="abcdefgh", min_size=1, max_size=6), min_size=1, max_size=5, unique=True))
    clean_cells = st.text(alphabet=st.sampled_from(list('ab ,"\n\t;é')), max_size=6)
    rows = draw(st.lists(st.lists(clean_cells, min_size=len(header), max_size=len(header)), min_size=1, max_size=5))
    bad = draw(st.integers(0, len(rows) - 1))
    if len(header) > 1 and draw(st.booleans()):
        rows[bad] = rows[bad][: draw(st.integers(1, len(header) - 1))]
    else:
        rows[bad] = rows[bad] + draw(st.lists(clean_cells, min_size=1, max_size=3))
    blank = draw(st.sets(st.integers(0, len(rows)), max_size=2))
    return header, rows, bad, blank


@fuzz(150)
@given(ragged_tables())
def test_read_csv_text_field_count_mismatch_refused(tmp_path, case):
    from deepcovid.data.metadata import read_csv_text

    header, rows, bad, blank = case
    text, starts = write_records([header, *rows], blank)
    path = tmp_path / "fuzz-ragged.csv"
    path.write_text(text, encoding="utf-8", newline="")
    first_bad = next(i for i, r in enumerate(rows) if len(r) != len(header))
    frame, err = call(read_csv_text, path)
    assert err is not None, f"record {first_bad + 1} has {len(rows[first_bad])} fields, header {len(header)}: accepted"
    msg = check_error(err, path.name)
    assert f"line {starts[first_bad + 1]} " in msg, f"expected line {starts[first_bad + 1]}: {msg}"


csv_noise = st.text(alphabet=st.sampled_from(list(',,,"""\n\r\r\n  \tabc;é\x00\ufeff\x1c\u2028')), max_size=60)


@fuzz(250)
@given(st.one_of(csv_noise, st.text(max_size=40)), st.sampled_from(ENCODINGS), st.binary(max_size=8))
def test_read_csv_text_random_text(tmp_path, text, encoding, junk):
    from deepcovid.data.metadata import read_csv_text

    raw, encoding = encode(text, encoding)
    raw = raw + junk if junk[:1] == b"\xff" else raw
    path = tmp_path / "fuzz-noise.csv"
    path.write_bytes(raw)
    frame, err = call(read_csv_text, path)
    if err is not None:
        check_error(err, path.name)
        return
    check_text_frame(frame)
    # the same cells as the csv module's strict parse of the decoded text
    decoded = raw.decode("utf-8", errors="replace").removeprefix("\ufeff")
    records = list(csv.reader(io.StringIO(decoded, newline=""), strict=True))
    names = [n.strip() for n in records[0]]
    kept = [i for i, n in enumerate(names) if n]
    body = [r for r in records[1:] if r]
    assert all(len(r) == len(records[0]) for r in body), "a record of another field count was accepted"
    assert list(frame.columns) == [names[i] for i in kept]
    assert frame.values.tolist() == [[r[i].strip() for i in kept] for r in body] if body else frame.empty


# --- Cohen-style metadata ---

COHEN_ALIASES = _COHEN_ALIASES  # the spellings the reader accepts, to write headers with
ALL_ALIASES = {a for names in COHEN_ALIASES.values() for a in names}


def _key(name: str) -> str:
    return re.sub(r"[\s_\-/]+", "", name.strip().lower())


@st.composite
def spelling(draw, alias: str) -> str:
    out = ""
    for ch in alias:
        out += ch.upper() if draw(st.booleans()) else ch
        if draw(st.integers(0, 5)) == 0:
            out += draw(st.sampled_from([" ", "_", "-"]))
    return draw(st.sampled_from(["", " "])) + out.strip(" _-") + draw(st.sampled_from(["", " "]))


@st.composite
def cohen_tables(draw):
    present = {f: draw(st.integers(0, 9)) > 0 for f in COHEN_ALIASES}
    columns: list[tuple[str | None, str]] = []
    for field, aliases in COHEN_ALIASES.items():
        if present[field]:
            columns.append((field, draw(spelling(draw(st.sampled_from(aliases))))))
    extra = draw(
        st.lists(
            st.text(alphabet="qrstuvw ", min_size=1, max_size=6).filter(
                lambda n: n.strip() and _key(n) not in ALL_ALIASES
            ),
            max_size=2,
        )
    )
    columns += [(None, n) for n in extra]
    columns = draw(st.permutations(columns))
    value = st.one_of(
        st.sampled_from(["COVID-19", "PA", "AP Supine", "X-ray", "CT", "x.png", "a/b.jpg", "", " 1 ", "images"]), cells
    )
    rows = draw(st.lists(st.lists(value, min_size=len(columns), max_size=len(columns)), max_size=4))
    return columns, rows


@fuzz(150)
@given(cohen_tables())
def test_read_cohen_style(tmp_path, case):
    from deepcovid.data.metadata import read_cohen_style

    columns, rows = case
    header = [name for _, name in columns]
    text, _ = write_records([header, *rows])
    path = tmp_path / "fuzz-metadata.csv"
    path.write_text(text, encoding="utf-8", newline="")
    frame, err = call(read_cohen_style, path, "cohen")
    fields = [f for f, _ in columns if f]
    missing = [f for f in ("filename", "patient", "finding", "view") if f not in fields]
    names = [h.strip() for h in header]
    limit = csv.field_size_limit()
    clean = (
        not missing
        and rows
        and "\0" not in text
        and len(set(names)) == len(names)
        and all(len(c) <= limit for r in rows for c in r)
    )
    if err is not None:
        msg = check_error(err, path.name)
        assert not clean, f"a valid metadata table was refused: {msg}"
        if (
            columns
            and missing
            and "\0" not in text
            and len(set(names)) == len(names)
            and all(len(c) <= limit for r in rows for c in r)
        ):
            assert any(repr(f) in msg for f in missing), f"missing column not named: {msg}"
        return
    assert not missing, f"required columns {missing} missing, yet accepted"
    assert list(frame.columns) == ["source", "relpath", "patient", "finding", "view", "modality", "offset"]
    assert len(frame) == len(rows)
    col = {f: i for i, (f, _) in enumerate(columns) if f}

    def cell(r, f, default):
        return r[col[f]].strip() if f in col else default

    for got, r in zip(frame.to_dict("records"), rows):
        fname, folder = cell(r, "filename", ""), cell(r, "folder", "") or "images"
        want = {
            "source": "cohen",
            "relpath": f"{folder}/{fname}" if fname else "",
            "patient": cell(r, "patient", ""),
            "finding": cell(r, "finding", ""),
            "view": cell(r, "view", ""),
            "modality": cell(r, "modality", "X-ray"),
            "offset": cell(r, "offset", ""),
        }
        assert got == want


# --- CheXpert ---

CHEXPERT_CATEGORIES = [
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
]
VALID_LABELS = ("1.0", "0.0", "-1.0", "", "1", "0", "-1", " 1.0 ")
ODD_LABELS = ("2", "0.5", "abc", "inf", "-inf", "nan", "1e5", "-2.0", "yes", "1,0", "0x1")


@st.composite
def chexpert_csv(draw, split: str):
    """A CheXpert-style table, valid or with one kind of defect."""
    defect = draw(st.sampled_from([None, None, "missing column", "label", "path", "view", "extra"]))
    columns = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_CATEGORIES]
    if defect == "missing column":
        columns.remove(draw(st.sampled_from(columns)))
    if defect == "extra":
        columns.insert(draw(st.integers(0, len(columns))), draw(st.sampled_from(["x", "Path ", "note"])))
    path = st.builds(
        lambda pre, p, s, v: f"{pre}{split}/patient{p:05d}/study{s}/view{v}_frontal.jpg",
        st.sampled_from(["CheXpert-v1.0-small/", "CheXpert-v1.0/", ""]),
        st.integers(0, 99999),
        st.integers(1, 3),
        st.integers(1, 2),
    )
    values = {
        "Path": path,
        "Sex": st.sampled_from(["Male", "Female", ""]),
        "Age": st.sampled_from(["50", ""]),
        "Frontal/Lateral": st.sampled_from(["Frontal", "Lateral", "frontal", " Frontal "]),
        "AP/PA": st.sampled_from(["AP", "PA", ""]),
    }
    rows = draw(
        st.lists(st.fixed_dictionaries({c: values.get(c, st.sampled_from(VALID_LABELS)) for c in columns}), max_size=4)
    )
    if rows and defect in ("label", "path", "view"):
        row = draw(st.sampled_from(rows))
        if defect == "label":
            category = draw(st.sampled_from([c for c in columns if c in CHEXPERT_CATEGORIES]))
            row[category] = draw(st.sampled_from(ODD_LABELS))
        elif defect == "path" and "Path" in row:
            row["Path"] = draw(
                st.one_of(
                    st.sampled_from(
                        [
                            "",
                            "/abs/patient1/x.jpg",
                            "../patient2/x.jpg",
                            "train/patientX/x.jpg",
                            "patient",
                            "CheXpert-v1.0",
                        ]
                    ),
                    cells,
                )
            )
        elif "Frontal/Lateral" in row:
            row["Frontal/Lateral"] = draw(st.sampled_from(["", "x", "FRONTAL", "Lat", "front al"]))
    return columns, [[r[c] for c in columns] for r in rows]


@fuzz(120)
@given(chexpert_csv("train"), st.one_of(st.none(), chexpert_csv("valid")))
def test_read_chexpert(tmp_path, train, valid):
    from deepcovid.data.metadata import read_chexpert

    root = tmp_path / "CheXpert-v1.0-small"
    root.mkdir(exist_ok=True)
    (root / "valid.csv").unlink(missing_ok=True)
    tables = [("train.csv", train)] + ([("valid.csv", valid)] if valid else [])
    for name, (columns, rows) in tables:
        (root / name).write_text(write_records([columns, *rows])[0], encoding="utf-8", newline="")
    frame, err = call(read_chexpert, root)
    if err is not None:
        check_error(err, "train.csv", "valid.csv")
        return
    assert len(frame) == sum(len(rows) for _, (_, rows) in tables)
    assert {"source", "relpath", "patient", "frontal", "view", "csv", *CHEXPERT_CATEGORIES} <= set(frame.columns)
    written = [(name, dict(zip(columns, r))) for name, (columns, rows) in tables for r in rows]
    for (name, r), got in zip(written, frame.to_dict("records")):
        assert got["csv"] == name
        assert re.fullmatch(r"patient\d+", got["patient"]) and got["patient"] in r["Path"], got
        assert got["frontal"] == (r["Frontal/Lateral"].strip().lower() == "frontal")
        for cat in CHEXPERT_CATEGORIES:
            v = got[cat]
            assert (isinstance(v, float) and math.isnan(v)) or v in (1.0, 0.0, -1.0), (
                f"{name}: {cat} = {r[cat]!r} accepted as {v!r} (CheXpert labels are 1, 0, -1 or blank)"
            )
            want = float(r[cat]) if r[cat].strip() else math.nan
            assert (math.isnan(v) and math.isnan(want)) or v == want


# --- radiologist exclusions ---


@st.composite
def exclusion_tables(draw):
    columns = ["filename", "decision", "reason", "reviewer"] + (["source"] if draw(st.booleans()) else [])
    columns += draw(st.lists(st.sampled_from(["note", "date"]), unique=True, max_size=2))
    if draw(st.integers(0, 5)) == 0:
        columns.remove(draw(st.sampled_from(columns)))
    columns = draw(st.permutations(columns))
    dirty = draw(st.booleans())
    decision = st.sampled_from(
        ["exclude", "include", "Exclude", " INCLUDE "] + (["maybe", "", "excluded"] if dirty else [])
    )
    value = {"decision": decision, "source": st.sampled_from(["cohen", "actualmed", ""])}
    rows = draw(st.lists(st.fixed_dictionaries({c: value.get(c, cells) for c in columns}), max_size=4))
    return columns, [[r[c] for c in columns] for r in rows]


@fuzz(150)
@given(exclusion_tables())
def test_read_exclusions(tmp_path, case):
    from deepcovid.data.positives import read_exclusions

    columns, rows = case
    path = tmp_path / "fuzz-exclusions.csv"
    path.write_text(write_records([columns, *rows])[0], encoding="utf-8", newline="")
    frame, err = call(read_exclusions, path)
    if err is not None:
        check_error(err, path.name)
        return
    assert {"filename", "decision", "reason", "reviewer", "source"} <= set(frame.columns)
    assert len(frame) == len(rows)
    for got, r in zip(frame.to_dict("records"), rows):
        r = dict(zip(columns, r))
        assert got["decision"] in ("exclude", "include"), got["decision"]
        assert got["decision"] == r["decision"].strip().lower()
        assert got["source"] == (r.get("source", "").strip() or "cohen")
        for c in ("filename", "reason", "reviewer"):
            assert got[c] == r[c].strip()


# --------------------------------------------------------------------------------------------
# 4. predictions

REQUIRED_PRED = ("image_id", "label", "split", "score")
SPLITS = ("val", "test", "external")


@st.composite
def prediction_tables(draw):
    dirty = draw(st.booleans())
    columns = list(REQUIRED_PRED) + draw(
        st.lists(st.sampled_from(["group", "source", "patient", "category", "x"]), unique=True, max_size=3)
    )
    if dirty and draw(st.integers(0, 3)) == 0:
        columns.remove(draw(st.sampled_from(columns)))
    if dirty and draw(st.integers(0, 5)) == 0:
        columns.append(draw(st.sampled_from(columns)) + draw(st.sampled_from(["", " "])))  # a duplicated name
    columns = draw(st.permutations(columns))
    header = [c if not dirty or draw(st.integers(0, 4)) else f" {c} " for c in columns]
    ids = (
        st.sampled_from(["a", "b", "c", "img 1", "x,y", 'q"t'])
        if dirty
        else st.text(alphabet=st.sampled_from(list('abcdefgh0123456789_-. ,"é')), min_size=1, max_size=8)
    )
    valid = {
        "image_id": ids,
        "label": st.sampled_from(["0", "1", "1.0", "0.0", " 1 "]),
        "split": st.sampled_from(["test", "val", "external", "train", " TEST ", "Val"]),
        "score": st.one_of(st.floats(0, 1).map(repr), st.sampled_from(["0", "1", "1e-3", " 0.25 "])),
        "group": st.sampled_from(["covid", "normal", "other-disease", " covid "]),
    }
    odd = {
        "image_id": st.one_of(ids, cells),
        "label": st.sampled_from(["2", "-1", "", "nan", "abc", "True", "0.5", "inf"]),
        "split": st.sampled_from(["", "other", "te st", "nan"]),
        "score": st.sampled_from(["-0.1", "1.5", "nan", "NaN", "inf", "-inf", "", "abc", "0x1", "1e400", "-0"]),
        "group": st.sampled_from(["", " "]),
    }
    value = {c: st.one_of(valid[c], odd[c]) if dirty else valid[c] for c in valid}
    n = draw(st.integers(0, 6))
    rows = []
    for _ in range(n):
        row = [draw(value.get(c, cells if dirty else st.text(alphabet="abc", max_size=3))) for c in columns]
        if dirty and draw(st.integers(0, 6)) == 0:
            row = row[: draw(st.integers(0, len(row)))] if draw(st.booleans()) else row + ["extra"]
        rows.append(row)
    if dirty and rows and draw(st.integers(0, 8)) == 0:
        rows = [r + ["extra"] for r in rows]  # one field more than the header in every row
    encoding = draw(st.sampled_from(ENCODINGS)) if dirty else "utf-8"
    return header, rows, encoding, draw(st.booleans()) if dirty else False


@fuzz(250)
@example(case=([], [], "utf-8", False))
@example(case=(["image_id", "label", "split", "score"], [], "utf-8", False))
@given(prediction_tables())
def test_load_predictions(tmp_path, case):
    check_predictions_case(tmp_path, case)


PREDICTION_CASES = {  # inputs found by this fuzzer, kept as fixed cases
    "same-column-name-after-strip": (
        ["image_id", "label", "split", "score", " split "],
        [["a", "1", "test", "0.5", "test"]],
        "utf-8",
        False,
    ),
    "short-row": (["image_id", "label", "split", "score"], [["a", "1", "test", "0.5"], ["b", "0"]], "utf-8", False),
}


@pytest.mark.parametrize("case", list(PREDICTION_CASES), ids=list(PREDICTION_CASES))
def test_load_predictions_known_cases(tmp_path, case):
    check_predictions_case(tmp_path, PREDICTION_CASES[case])


def check_predictions_case(tmp_path, case) -> None:
    from deepcovid.evaluation.predictions import load_predictions

    header, rows, encoding, empty = case
    text = "" if empty or not header else write_records([header, *rows])[0]
    raw, encoding = encode(text, encoding)
    path = tmp_path / "fuzz-predictions.csv"
    path.write_bytes(raw)
    frame, err = call(load_predictions, path)
    if err is not None:
        check_error(err, path.name)
        return
    assert isinstance(frame, pd.DataFrame)
    scores = frame["score"].to_numpy(dtype=float)
    assert np.isfinite(scores).all() and (scores >= 0).all() and (scores <= 1).all(), scores
    assert frame["label"].isin([0, 1]).all() and frame["label"].dtype.kind == "i", frame["label"].tolist()
    assert frame["split"].isin(SPLITS).all(), frame["split"].tolist()
    assert not frame.duplicated(["split", "image_id"]).any()
    assert all(isinstance(g, str) and g for g in frame["group"]), f"group values {frame['group'].tolist()}"
    # the rows are the records written (no column shifted, none lost, none invented)
    names = [h.strip() for h in header]
    assert all(len(r) == len(header) for r in rows), "a row of another field count than the header was accepted"
    idx = {c: names.index(c) for c in REQUIRED_PRED}
    kept = [r for r in rows if r[idx["split"]].strip().lower() in SPLITS]
    assert len(frame) == len(kept)
    for got, r in zip(frame.to_dict("records"), kept):
        assert got["image_id"] == r[idx["image_id"]].strip()  # cells are read stripped
        assert got["label"] == float(r[idx["label"]]) and got["score"] == float(r[idx["score"]])
        assert got["split"] == r[idx["split"]].strip().lower()
        if "group" in names:
            assert got["group"] == r[names.index("group")].strip()


# --------------------------------------------------------------------------------------------
# 5. params.yaml


@cache
def real_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


def nodes(tree, prefix=()):
    """(path, value) of every node below the root."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for k, v in items:
        yield prefix + (k,), v
        yield from nodes(v, prefix + (k,))


# mappings whose keys are free (dict fields), where an added or deleted key may be valid
FREE_MAPPINGS = {
    ("datasets",),
    ("regression", "tolerances"),
    ("regression", "tolerances", "test"),
    ("reproduction", "tolerances"),
    ("mitigation", "variants"),  # names of variants, and each variant's overrides (checked when run)
    ("mitigation", "variants", "baseline"),
    ("mitigation", "variants", "lungs_crop"),
    ("mitigation", "variants", "lungs_mask"),
    ("mitigation", "variants", "equalize"),
    ("mitigation", "variants", "imagenet_norm"),
    ("mitigation", "variants", "lungs_mask_equalize"),
}
# parameters checked together: an error may name another parameter of the same group
CROSS = [
    {"dataset", "datasets", "split.external_sources"},
    {"train.image_size", "preprocess.cache_size", "explain.window"},
    {"explain.window", "explain.stride"},
    {"explain.top_covid", "explain.false_negatives", "explain.false_positives"},
    {"fetch.cohen.url", "fetch.cohen.commit", "fetch.cohen.method", "fetch.cohen.local_dir"},
    {"fetch.actualmed.url", "fetch.actualmed.commit", "fetch.actualmed.method", "fetch.actualmed.local_dir"},
    {"regression.tolerances", "regression.lower_is_better"},
    {"mitigation.baseline", "mitigation.variants"},  # the baseline names one of the variants
]


def dotted(path) -> str:
    return ".".join(map(str, path))


def _within(p: str, q: str) -> bool:
    return p == q or p.startswith(q + ".")


def related(named: str, mutated: str) -> bool:
    if _within(named, mutated) or (named and _within(mutated, named)):
        return True
    return any(any(_within(named, m) for m in group) and any(_within(mutated, m) for m in group) for group in CROSS)


leaf_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.integers(-3, 300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-9, 1.5, -1.0, 1e308]),
    st.text(max_size=12),
    st.sampled_from(["1", "0.5", "1e-4", "inf", "nan", "-1", "true", "null", "", "auto"]),
    st.lists(st.one_of(st.integers(-5, 500), st.floats(-1, 2), st.text(max_size=4)), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
new_keys = st.one_of(
    st.text(
        alphabet=st.characters(blacklist_characters=_LINE_BREAKS, blacklist_categories=["Cs"]), min_size=1, max_size=10
    ),
    st.integers(-5, 5),
)


special_numbers = st.sampled_from(
    [
        math.inf,
        -math.inf,
        math.nan,
        0,
        0.0,
        -0.0,
        -1,
        -1.0,
        1,
        2,
        0.5,
        1.0000001,
        1e-300,
        1e308,
        10**30,
        -(10**30),
        2**63,
        255,
        256,
        65,
        1000,
        10**6 + 1,
    ]
)


@st.composite
def param_mutations(draw):
    """(kind, path, new value): one change to the real params.yaml."""
    params = real_params()
    everything = list(nodes(params))
    kind = draw(st.sampled_from(["replace", "replace", "number", "delete", "add"]))
    numbers = [(p, v) for p, v in everything if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if kind == "replace":
        path, old = draw(st.sampled_from(everything))
        new = draw(leaf_values.filter(lambda v: v != old or type(v) is not type(old)))
    elif kind == "number":
        path, old = draw(st.sampled_from(numbers))
        new = draw(special_numbers)
    elif kind == "delete":
        path, new = draw(st.sampled_from([p for p, v in everything if isinstance(p[-1], str)])), None
    else:
        parents = [((), params)] + [(p, v) for p, v in everything if isinstance(v, dict)]
        parent, node = draw(st.sampled_from(parents))
        key = draw(new_keys.filter(lambda k: k not in node))
        path, new = parent + (key,), draw(leaf_values)
    return kind, path, new


def mutate_params(kind, path, new) -> dict:
    params = copy.deepcopy(real_params())
    node = params
    for k in path[:-1]:
        node = node[k]
    if kind == "delete":
        del node[path[-1]]
    else:
        node[path[-1]] = new
    return params


def same_value(given, got) -> bool:
    if isinstance(given, dict):
        return isinstance(got, dict) and set(given) == set(got) and all(same_value(v, got[k]) for k, v in given.items())
    if isinstance(given, (list, tuple)):
        return isinstance(got, (list, tuple)) and len(given) == len(got) and all(map(same_value, given, got))
    if isinstance(given, int) and not isinstance(given, bool) and isinstance(got, float):
        return float(given) == got
    if isinstance(given, str) and isinstance(got, float):  # a numeric string read as a number
        try:
            return float(given) == got
        except ValueError:
            return False
    return given == got and (given is None) == (got is None) and isinstance(given, bool) == isinstance(got, bool)


def finite_numbers(tree, prefix=()):
    for path, v in nodes(tree, prefix):
        if isinstance(v, float) and not math.isfinite(v):
            yield dotted(path), v


@fuzz(200)
@given(param_mutations())
def test_load_config_mutated_params(tmp_path, case):
    from deepcovid.config import Params, load_config

    kind, path, new = case
    file = tmp_path / "fuzz-params.yaml"
    file.write_text(
        yaml.safe_dump(mutate_params(kind, path, new), allow_unicode=True, sort_keys=False), encoding="utf-8"
    )
    params = yaml.safe_load(file.read_text(encoding="utf-8"))  # what the reader sees
    where = dotted(path)
    cfg, err = call(load_config, file)
    in_section = path[:-1] not in FREE_MAPPINGS
    if err is not None:
        msg = check_error(err, file.name)
        named = re.findall(r"parameter (.+?): ", msg)
        assert named, f"no parameter named in {msg!r}"
        assert f"parameter {where}:" in msg or any(related(n, where) for n in named), (
            f"{kind} {where}: the error names {named}: {msg}"
        )
        return
    assert kind != "add" or not in_section, f"unknown parameter {where} = {new!r} accepted"
    assert kind != "delete" or not in_section, f"parameter {where} deleted, yet accepted"
    assert isinstance(cfg, Params)
    out = cfg.as_dict()
    assert same_value(params, out), f"{kind} {where} = {new!r}: the config read differs from the file"
    assert not list(finite_numbers(out)), f"{where} = {new!r}: non-finite numbers accepted: {list(finite_numbers(out))}"


yaml_texts = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=st.sampled_from(list("abc:-[]{}&*!|>'\"#%@` \n\t,?0.1")), max_size=80),
    st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5)),
        lambda kids: st.one_of(st.lists(kids, max_size=3), st.dictionaries(st.text(max_size=6), kids, max_size=3)),
        max_leaves=8,
    ).map(lambda v: yaml.safe_dump(v, allow_unicode=True)),
)


def check_yaml_case(tmp_path, data: bytes) -> None:
    from deepcovid.config import Params, load_config

    file = tmp_path / "fuzz-random-params.yaml"
    file.write_bytes(data)
    cfg, err = call(load_config, file)
    if err is not None:
        check_error(err, file.name)
        return
    assert isinstance(cfg, Params)


@fuzz(150)
@given(st.one_of(yaml_texts.map(lambda t: t.encode("utf-8")), st.binary(max_size=80)))
def test_load_config_random_yaml(tmp_path, data):
    check_yaml_case(tmp_path, data)


YAML_CASES = {  # inputs found by this fuzzer or worth keeping, as fixed cases
    "invalid-utf8": b"train: {lr: \xe9}\n",
    "utf16-bom": b"\xff\xfe\x00bad utf-8",
    "deep-unclosed-flow": b"[" * 5000,
    "deep-nesting": b"a: " + b"[" * 3000 + b"]" * 3000 + b"\n",
    "recursive-alias": b"a: &a [*a]\n",
    "tab-indent": b"train:\n\tlr: 1\n",
    "duplicate-key": b"seed: 1\nseed: 2\n",
    "binary-tag": b"seed: !!binary AAAA\n",
    "python-tag": b"seed: !!python/object/apply:os.system ['true']\n",
}


@pytest.mark.parametrize("case", list(YAML_CASES), ids=list(YAML_CASES))
def test_load_config_known_yaml_cases(tmp_path, case):
    check_yaml_case(tmp_path, YAML_CASES[case])


# --------------------------------------------------------------------------------------------
# 6. zip archives

ARCHIVE_NAME = "fuzz-archive.zip"
LONG = "n" * 300  # over NAME_MAX
HOSTILE = [
    "../x",
    "/abs",
    "a/../../b",
    "top/../../b",
    "C:\\x",
    "C:/x",
    "c:x",
    "top\\x",
    "top/x\\..\\..\\y",
    "top/x\0y",
    "\0",
    "",
    "/",
    ".",
    "./",
    "top/..",
    "top/.git/config",
    "top/./d.txt",
    "top//e.txt",
    "top/a.txt/",
    "{CANARY}/x",
    f"top/{LONG}",
    f"top/{LONG}/",
    f"top/{LONG}/x",
    "top/\n",
    "top/\x7f",
    "top/a.txt",
    "top/b/",
    "top/b/c.txt",
    "top/",
    "top",
    "other/f.txt",
    "top/..x",
    "top/...",
    "top/ ",
    "top/é/ü.txt",
]
member_names = st.one_of(
    st.sampled_from(HOSTILE),
    st.lists(
        st.sampled_from(["top", "top", "a", "b", "..", ".", "", "x.txt", "\\", "C:", ".git"]), min_size=1, max_size=4
    ).map("/".join),
    st.text(max_size=8).map(lambda t: "top/" + t),
)
KINDS = {
    "file": (stat.S_IFREG | 0o644) << 16,
    "dir": (stat.S_IFDIR | 0o755) << 16 | 0x10,
    "symlink": (stat.S_IFLNK | 0o777) << 16,
    "fifo": (stat.S_IFIFO | 0o644) << 16,
    "none": 0,
    "dosdir": 0x10,
}
COMPRESSIONS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
member_data = st.one_of(
    st.binary(max_size=64), st.sampled_from([b"../../canary/pwned", b"{CANARY}", b"\0" * (3 << 19)])
)  # the last: a bomb


safe_names = st.lists(
    st.text(alphabet="abcxyz._-", min_size=1, max_size=5).filter(lambda p: p not in (".", "..")), min_size=1, max_size=3
).map(lambda parts: "/".join(["top", *parts]))
clean_members = st.tuples(
    st.one_of(safe_names, safe_names.map(lambda n: n + "/"), st.just("top/")),
    st.sampled_from(["file", "none"]),
    st.just(3),
    st.sampled_from(COMPRESSIONS),
    st.binary(max_size=64),
    st.just(0),
)
hostile_members = st.tuples(
    member_names,
    st.sampled_from([*KINDS, "random"]),
    st.sampled_from([3, 0]),
    st.sampled_from(COMPRESSIONS),
    member_data,
    st.integers(0, 2**32 - 1),
)


# fields of a central directory entry: (offset, struct format, values to try)
CENTRAL_FIELDS = {
    "version": (6, "<H", [20, 45, 63, 68, 255]),
    "flags": (8, "<H", [0x1, 0x8, 0x40, 0x800, 0x801]),
    "method": (10, "<H", [0, 1, 8, 9, 12, 14, 99]),
    "crc": (16, "<I", [0, 1]),
    "csize": (20, "<I", [0, 1, 2**32 - 1]),
    "size": (24, "<I", [0, 1, 2**31, 2**32 - 1]),
    "attr": (38, "<I", [0, 0x10, 0xA1FF0000, 0x41ED0000]),
    "offset": (42, "<I", [0, 1, 2**32 - 1]),
}
header_patches = st.lists(
    st.one_of(
        st.tuples(st.integers(0, 5), st.sampled_from(sorted(CENTRAL_FIELDS))).flatmap(
            lambda wf: st.tuples(st.just(wf[0]), st.just(wf[1]), st.sampled_from(CENTRAL_FIELDS[wf[1]][2]))
        ),
        st.tuples(st.integers(0, 5), st.just("name"), st.binary(min_size=1, max_size=12)),
    ),
    max_size=2,
)


@st.composite
def zip_cases(draw):
    """(members, central-directory patches, byte mutations, max_bytes, strip_top_level, dest exists)."""
    members = draw(st.lists(clean_members, max_size=4)) + draw(st.lists(hostile_members, max_size=2))
    members = [(n, "dir" if k == "file" and n.endswith("/") else k, *rest) for n, k, *rest in members]
    members = draw(st.permutations(members))
    patches = draw(header_patches) if draw(st.integers(0, 2)) == 0 else []
    ops = draw(byte_ops) if draw(st.integers(0, 2)) == 0 else None
    return (members, patches, ops, draw(st.sampled_from([1, 1000, 10**7])), draw(st.booleans()), draw(st.booleans()))


def build_zip(members, canary: Path) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names
        with zipfile.ZipFile(buf, "w") as zf:
            for name, kind, system, compression, data, attr in members:
                info = zipfile.ZipInfo(name.replace("{CANARY}", str(canary)), date_time=(2020, 1, 1, 0, 0, 0))
                info.create_system = system
                info.external_attr = attr if kind == "random" else KINDS[kind]
                zf.writestr(info, data.replace(b"{CANARY}", str(canary).encode()), compress_type=compression)
    return buf.getvalue()


def patch_central(data: bytes, patches) -> bytes:
    """Overwrite fields of the central directory entries (the entry is taken modulo their number);
    a "name" patch overwrites the stored name's bytes (same length) and sets the UTF-8 flag."""
    buf = bytearray(data)
    central = [m.start() for m in re.finditer(rb"PK\x01\x02", bytes(buf))]
    for which, field, value in patches:
        if not central:
            break
        at = central[which % len(central)]
        if field == "name":
            (length,) = struct.unpack("<H", buf[at + 28 : at + 30])
            buf[at + 46 : at + 46 + length] = (value * (length // len(value) + 1))[:length]
            buf[at + 8 : at + 10] = struct.pack("<H", struct.unpack("<H", buf[at + 8 : at + 10])[0] | 0x800)
        else:
            offset, fmt, _ = CENTRAL_FIELDS[field]
            buf[at + offset : at + offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    return bytes(buf)


def _tree(root: Path) -> dict[str, bytes | None]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            out[p.relative_to(root).as_posix()] = p.read_bytes() if p.is_file() and not p.is_symlink() else None
    return out


def check_zip_case(case) -> None:
    from deepcovid.data.archive import safe_extract_zip

    members, patches, ops, max_bytes, strip, dest_exists = case
    with tempfile.TemporaryDirectory() as td:
        base = Path(td)
        canary, out = base / "canary", base / "out"
        canary.mkdir()
        out.mkdir()
        archive, dest = base / ARCHIVE_NAME, out / "dest"
        data = build_zip(members, canary)
        data = patch_central(data, patches) if patches else data
        data = apply_ops(data, ops) if ops else data
        archive.write_bytes(data)
        if dest_exists:
            dest.mkdir()
            (dest / "~marker~").write_bytes(b"old")
        before = _tree(dest) if dest_exists else None
        n, err = call(safe_extract_zip, archive, dest, max_bytes=max_bytes, strip_top_level=strip)
        # nothing is ever written outside dest
        assert os.listdir(canary) == [], f"written into the canary folder: {os.listdir(canary)}"
        assert sorted(os.listdir(base)) == sorted([ARCHIVE_NAME, "canary", "out"]), os.listdir(base)
        leftovers = sorted(set(os.listdir(out)) - {"dest"})
        assert not leftovers, f"left next to dest: {leftovers}"
        if err is not None:
            check_error(err, ARCHIVE_NAME)
            assert (_tree(dest) if dest.exists() else None) == before, "dest changed by a failed extraction"
            return
        assert isinstance(n, int)
        real = os.path.realpath(dest)
        files = 0
        for dirpath, dirnames, filenames in os.walk(dest):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                assert not os.path.islink(p), f"a symlink was extracted: {p}"
                assert os.path.realpath(p).startswith(real + os.sep), f"{p} lies outside dest"
                mode = os.lstat(p).st_mode
                assert stat.S_ISREG(mode) or stat.S_ISDIR(mode), f"{p} is not a file or folder ({oct(mode)})"
                files += stat.S_ISREG(mode)
        assert n == files, f"returned {n}, {files} files extracted"
        assert "~marker~" not in os.listdir(dest), "dest was not replaced"
        if not ops and not patches:  # the archive as built: the files are its members
            want = {}
            for name, _kind, _system, _compression, blob, _attr in members:
                name, blob = name.replace("{CANARY}", str(canary)), blob.replace(b"{CANARY}", str(canary).encode())
                name = name.split("\0")[0]  # zipfile.ZipInfo stores a name up to its first NUL
                parts = [p for p in name.split("/") if p not in ("", ".")]
                parts = parts[1:] if strip else parts
                if parts and not name.endswith("/"):
                    want["/".join(parts)] = blob
            got = {k: v for k, v in _tree(dest).items() if v is not None}
            assert got == want, "extracted files differ from the archive's members (names or contents)"


@fuzz(250)
@given(zip_cases())
def test_safe_extract_zip(case):
    check_zip_case(case)


_FILE = ("top/a", "file", 3, zipfile.ZIP_STORED, b"x", 0)
ZIP_CASES = {  # inputs found by this fuzzer, kept as fixed cases
    "empty-name-after-nul": ([_FILE, ("\0", "file", 3, 0, b"", 0)], [], None, 1000, False, False),
    "nul-in-stored-name": (
        [_FILE, ("top/xay", "file", 3, 0, b"", 0)],
        [(1, "name", b"top/x\0y")],
        None,
        1000,
        False,
        False,
    ),
    "invalid-utf8-name": (
        [("top/\u00e9", "file", 3, 0, b"x", 0)],
        [(0, "name", b"top/\xff\xfe")],
        None,
        1000,
        True,
        False,
    ),
    "version-6.8": ([_FILE], [(0, "version", 68)], None, 1000, False, False),
    "unknown-method": ([_FILE], [(0, "method", 99)], None, 1000, False, False),
    "corrupt-lzma": (
        [("top/a", "file", 3, zipfile.ZIP_LZMA, b"hello world " * 50, 0)],
        [],
        [("overwrite", 50, b"\xff" * 16, 1)],
        10**7,
        True,
        False,
    ),
    "corrupt-bzip2": (
        [("top/a", "file", 3, zipfile.ZIP_BZIP2, b"hello world " * 50, 0)],
        [],
        [("overwrite", 50, b"\xff" * 16, 1)],
        10**7,
        True,
        False,
    ),
    "encrypted-flag": ([_FILE], [(0, "flags", 0x1)], None, 1000, False, False),
    "long-folder-name": ([("top/" + "n" * 300 + "/", "dir", 3, 0, b"", 0)], [], None, 1000, False, False),
    "file-in-long-folder": ([("top/" + "n" * 300 + "/x", "file", 3, 0, b"", 0)], [], None, 1000, False, False),
    "long-file-name": ([("top/" + "n" * 300, "file", 3, 0, b"", 0)], [], None, 1000, False, False),
}


@pytest.mark.parametrize("case", list(ZIP_CASES), ids=list(ZIP_CASES))
def test_safe_extract_zip_known_cases(case):
    check_zip_case(ZIP_CASES[case])


# --------------------------------------------------------------------------------------------
# missing files and folders in place of files, for every reader


def _readers():
    from deepcovid.config import load_config
    from deepcovid.data.archive import safe_extract_zip
    from deepcovid.data.dicom import read_dicom
    from deepcovid.data.images import read_image
    from deepcovid.data.metadata import read_chexpert, read_cohen_style, read_csv_text
    from deepcovid.data.positives import read_exclusions
    from deepcovid.evaluation.predictions import load_predictions

    return {
        "read_image": read_image,
        "read_dicom": read_dicom,
        "read_csv_text": read_csv_text,
        "read_cohen_style": lambda p: read_cohen_style(p, "cohen"),
        "read_chexpert": read_chexpert,
        "read_exclusions": read_exclusions,
        "load_predictions": load_predictions,
        "load_config": load_config,
        "safe_extract_zip": lambda p: safe_extract_zip(p, p.parent / "fuzz-dest", max_bytes=1000),
    }


@pytest.mark.parametrize("what", ["missing", "folder"])
@pytest.mark.parametrize(
    "reader",
    [
        "read_image",
        "read_dicom",
        "read_csv_text",
        "read_cohen_style",
        "read_chexpert",
        "read_exclusions",
        "load_predictions",
        "load_config",
        "safe_extract_zip",
    ],
)
def test_missing_file_or_folder(tmp_path, reader, what):
    path = tmp_path / "fuzz-absent-input"
    if what == "folder":
        path.mkdir()
    result, err = call(_readers()[reader], path)
    assert err is not None, f"{reader} accepted a {what} path: {result!r}"
    check_error(err, path.name)
