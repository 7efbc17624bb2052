"""DICOM radiographs (pydicom) as 8-bit grayscale images, the way a viewer would display them.

The stored values go through the Modality LUT (or rescale slope / intercept), then the first VOI
LUT or window of the header (a VOI LUT sequence before a window); without either, the full range
of the values is shown (min to max, as :mod:`deepcovid.data.images` scales deep PNGs).
MONOCHROME1 (high values dark) is inverted after that so bone is always bright. Refused with the
reason (:class:`~deepcovid.data.images.ImageReadError`): files that are not DICOM, no pixel
data, more than one frame, colour models other than MONOCHROME1/2 and RGB, and compressed transfer
syntaxes the installed pydicom handlers cannot decode.

A pixel budget is checked before any pixel is decoded: rows x columns x frames from the header
(read without the pixel data) against ``max_pixels``; a file larger than any image within the
budget could be is refused before it is read; a deflated data set is inflated with a bounded
buffer (its header first, then at most what the header declares), never as a whole.

Header facts a user should know are returned as notes: a lateral view, a modality that is not
a radiograph, a body part other than the chest.
"""

from __future__ import annotations

import os
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from deepcovid.errors import FileReadError

MAGIC_OFFSET = 128  # the DICOM preamble, then "DICM"
LATERAL_VIEWS = {"LL", "RL", "LATERAL", "LAT", "LLD", "RLD"}
RADIOGRAPHY = {"CR", "DX", "RG", "DR"}
#: Bytes of header (everything before the pixel data) a deflated file may inflate to.
DEFLATED_HEADER_BYTES = 1 << 20
#: Bytes a stored pixel may take at most (3 samples of 32 bits; 16-bit RGBA in a PNG is 8), and
#: room for metadata: a file larger than max_pixels x this + the room cannot hold an image within
#: the budget (:func:`check_file_size`).
_MAX_BYTES_PER_PIXEL = 12
_HEADER_ROOM = 16 << 20
_PIXEL_DATA = 0x7FE00010


class DicomError(FileReadError):
    """A DICOM file that cannot be shown as a radiograph (``reason``: why; the message names the file)."""


def _parser_errors() -> tuple[type[BaseException], ...]:
    """What pydicom and NumPy raise on malformed files (found by fuzzing mutated files: unknown value
    representations, lengths that do not fit, truncated tags, LUT entries out of range...)."""
    import struct

    from pydicom.errors import BytesLengthException, InvalidDicomError

    return (
        InvalidDicomError,
        BytesLengthException,
        EOFError,
        OSError,
        ValueError,
        KeyError,
        TypeError,
        IndexError,
        AttributeError,
        NotImplementedError,
        OverflowError,
        struct.error,
        MemoryError,
    )


def is_dicom(path: str | Path) -> bool:
    """Whether ``path`` starts with the DICOM preamble and the ``DICM`` marker (Part 10 files)."""
    try:
        with open(path, "rb") as f:
            head = f.read(MAGIC_OFFSET + 4)
    except OSError:
        return False
    return len(head) == MAGIC_OFFSET + 4 and head[MAGIC_OFFSET:] == b"DICM"


def header_notes(ds) -> list[str]:
    """Warnings from the header: lateral view, not a radiograph, not the chest."""
    notes = []
    view = str(ds.get("ViewPosition", "") or "").strip().upper()
    if view in LATERAL_VIEWS:
        notes.append(f"lateral view (DICOM ViewPosition {view}): the model was trained on frontal views")
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality and modality not in RADIOGRAPHY:
        notes.append(f"DICOM Modality {modality}: not a radiograph (CR/DX)")
    part = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    if part and part not in {"CHEST", "THORAX", "LUNG"}:
        notes.append(f"DICOM BodyPartExamined {part}: not the chest")
    return notes


def _pixels(ds) -> np.ndarray:
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    try:
        return ds.pixel_array
    except (NotImplementedError, RuntimeError, ValueError) as exc:
        name = getattr(syntax, "name", str(syntax))
        compressed = syntax is not None and getattr(syntax, "is_compressed", False)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if compressed:
            raise DicomError(
                f"compressed transfer syntax {name} cannot be decoded with the installed handlers "
                f"(e.g. pip install pylibjpeg pylibjpeg-libjpeg): {reason}"
            ) from None
        raise DicomError(f"cannot decode the pixel data ({name}): {reason}") from None


def _voi(values: np.ndarray, ds) -> tuple[np.ndarray, float, float, str]:
    """The VOI transform of ``values`` (after the modality LUT) and its output range."""
    from pydicom.pixels import apply_voi_lut

    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        out = apply_voi_lut(values, ds, index=0, prefer_lut=True).astype(np.float64)
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return out, 0.0, float(2**bits - 1), "VOI LUT"
    if "WindowCenter" in ds and "WindowWidth" in ds:
        out = apply_voi_lut(values, ds, index=0, prefer_lut=False).astype(np.float64)
        # the window's output range: what the transform gives far below and far above the window
        span = float(np.abs(values).max()) * 4 + 1e6
        probe = apply_voi_lut(np.array([-span, span], dtype=np.float64), ds, index=0, prefer_lut=False)
        return out, float(min(probe)), float(max(probe)), "window"
    values = values.astype(np.float64)
    return values, float(values.min()), float(values.max()), "full range"


def pixel_budget(max_pixels: int | None) -> int:
    """The pixel budget in force: ``max_pixels`` (``preprocess.max_pixels``), or Pillow's own
    decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``) when None; never above Pillow's."""
    ceiling = int(Image.MAX_IMAGE_PIXELS or 0)
    if max_pixels is None:
        return ceiling
    return min(int(max_pixels), ceiling) if ceiling else int(max_pixels)


def read_dicom(path: str | Path, max_pixels: int | None = None) -> tuple[Image.Image, list[str]]:
    """An 8-bit grayscale (mode ``L``) or RGB image of a DICOM file, and the header's notes.
    Raises :class:`DicomError` naming the file and the reason; images of more than
    :func:`pixel_budget` pixels (rows x columns x frames) are refused before their pixels are read."""
    try:
        return _read_dicom(path, pixel_budget(max_pixels))
    except DicomError as exc:
        raise DicomError(exc.reason, path) from None
    except _parser_errors() as exc:  # a malformed element met while reading the header's other fields
        first = (str(exc).splitlines() or [""])[0]
        raise DicomError(f"invalid DICOM data: {type(exc).__name__}: {first}", path) from None


def check_file_size(path: str | Path, max_pixels: int, kind: str = "file") -> None:
    """Raise :class:`DicomError` when ``path`` is larger than any image of at most
    ``max_pixels`` pixels can be stored in (checked before the file is read)."""
    size = os.stat(path).st_size
    if size > max_pixels * _MAX_BYTES_PER_PIXEL + _HEADER_ROOM:
        raise DicomError(
            f"a {kind} of {size:,} bytes: larger than an image within the pixel budget of "
            f"{max_pixels:,} (preprocess.max_pixels) can be"
        )


def check_budget(ds, max_pixels: int) -> int:
    """The bytes of pixel data the header declares (rows x columns x frames x samples x bytes
    allocated); raises :class:`DicomError` when rows x columns x frames exceeds ``max_pixels``."""
    try:
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.get("BitsAllocated", 16) or 16)
    except (TypeError, ValueError) as exc:
        raise DicomError(f"invalid image size in the DICOM header: {exc}") from None
    pixels = rows * cols * max(frames, 1)
    if pixels > max_pixels:
        raise DicomError(
            f"{cols} x {rows} pixels x {frames} frames = {pixels:,} pixels: above the pixel budget of "
            f"{max_pixels:,} (preprocess.max_pixels); refused before decoding"
        )
    return pixels * max(samples, 1) * max(1, (bits + 7) // 8)


def _dataset(path: str | Path, max_pixels: int):
    """The data set of ``path`` after the budget checks, its pixel data not yet decoded."""
    import pydicom
    from pydicom.filereader import read_file_meta_info

    check_file_size(path, max_pixels, "DICOM file")
    syntax = read_file_meta_info(path).get("TransferSyntaxUID")
    if syntax == pydicom.uid.DeflatedExplicitVRLittleEndian:
        return _inflate(path, max_pixels)
    check_budget(pydicom.dcmread(path, stop_before_pixels=True), max_pixels)
    return pydicom.dcmread(path)


def _inflate(path: str | Path, max_pixels: int):
    """A deflated data set (PS3.5 A.5) inflated in bounded steps: the header (at most
    :data:`DEFLATED_HEADER_BYTES`), its budget checked, then at most the pixel bytes it declares
    (pydicom inflates the whole stream at once: a 280 KB file can inflate to gigabytes)."""
    from pydicom.dataset import FileDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble

    with open(path, "rb") as f:
        preamble = read_preamble(f, False)
        file_meta = _read_file_meta_info(f)
        zipped = f.read()
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    data = inflater.decompress(zipped, DEFLATED_HEADER_BYTES)
    header = read_dataset(DicomBytesIO(data), False, True, stop_when=lambda tag, vr, length: tag == _PIXEL_DATA)
    if "Rows" not in header and not inflater.eof:
        raise DicomError(f"deflated DICOM whose header inflates beyond {DEFLATED_HEADER_BYTES:,} bytes: refused")
    expected = check_budget(header, max_pixels)
    data += inflater.decompress(inflater.unconsumed_tail, expected + DEFLATED_HEADER_BYTES)
    if inflater.unconsumed_tail:
        raise DicomError(
            f"deflated DICOM that inflates beyond the {expected:,} bytes of pixels its header declares: refused"
        )
    dataset = read_dataset(DicomBytesIO(data), False, True)
    return FileDataset(str(path), dataset, preamble, file_meta, False, True)


def _read_dicom(path: str | Path, max_pixels: int) -> tuple[Image.Image, list[str]]:
    from pydicom.pixels import apply_modality_lut

    try:
        with warnings.catch_warnings():  # pydicom warns of each oddity it tolerates; the outcome is what counts
            warnings.simplefilter("ignore")
            ds = _dataset(path, max_pixels)
    except DicomError:
        raise
    except _parser_errors() + (zlib.error,) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DicomError(f"not a readable DICOM file: {reason}") from None
    if "PixelData" not in ds:
        raise DicomError("DICOM file without pixel data (a report or structured document?)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DicomError(f"multi-frame DICOM ({frames} frames): not supported; export the radiograph as one frame")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in {"MONOCHROME1", "MONOCHROME2", "RGB"}:
        raise DicomError(
            f"DICOM PhotometricInterpretation {photometric or '(missing)'}: "
            f"only MONOCHROME1, MONOCHROME2 and RGB are supported"
        )
    try:
        arr = _pixels(ds)
        if photometric == "RGB":
            if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
                raise DicomError(f"DICOM RGB pixel data of shape {arr.shape} and type {arr.dtype}: not 8-bit RGB")
            return Image.fromarray(arr, "RGB"), header_notes(ds)
        if arr.ndim != 2:
            raise DicomError(f"DICOM pixel data of shape {arr.shape}: expected one 2-D frame")
        values = apply_modality_lut(arr, ds)
        shown, lo, hi, _ = _voi(values, ds)
    except DicomError:
        raise
    except _parser_errors() as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DicomError(f"invalid DICOM image attributes: {reason}") from None
    if not np.isfinite(shown).all():
        raise DicomError("DICOM pixel values are not finite after the modality and VOI transforms")
    if hi > lo:
        scaled = np.clip((shown - lo) * (255.0 / (hi - lo)), 0, 255)
    else:
        scaled = np.zeros(shown.shape)
    if photometric == "MONOCHROME1":
        scaled = 255.0 - scaled
    return Image.fromarray(np.round(scaled).astype(np.uint8), "L"), header_notes(ds)
