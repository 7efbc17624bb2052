"""DICOM radiographs (pydicom) as 8-bit grayscale images, the way a viewer would display them.

The stored values go through the Modality LUT (or rescale slope / intercept), then the first VOI
LUT or window of the header (a VOI LUT sequence before a window); without either, the full range
of the values is shown (min to max, as :mod:`deepcovid.data.images` scales deep PNGs).
MONOCHROME1 (high values dark) is inverted after that so bone is always bright. Refused with the
reason (:class:`~deepcovid.data.images.ImageReadError`): files that are not DICOM, no pixel
data, more than one frame, colour models other than MONOCHROME1/2 and RGB, and compressed transfer
syntaxes the installed pydicom handlers cannot decode.

Header facts a user should know are returned as notes: a lateral view, a modality that is not
a radiograph, a body part other than the chest.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from deepcovid.errors import FileReadError

MAGIC_OFFSET = 128  # the DICOM preamble, then "DICM"
LATERAL_VIEWS = {"LL", "RL", "LATERAL", "LAT", "LLD", "RLD"}
RADIOGRAPHY = {"CR", "DX", "RG", "DR"}


class DicomError(FileReadError):
    """A DICOM file that cannot be shown as a radiograph (``reason``: why; the message names the file)."""


def _parser_errors() -> tuple[type[BaseException], ...]:
    """What pydicom and NumPy raise on malformed files (found by fuzzing mutated files: unknown value
    representations, lengths that do not fit, truncated tags, LUT entries out of range...)."""
    import struct

    from pydicom.errors import BytesLengthException, InvalidDicomError

    return (InvalidDicomError, BytesLengthException, EOFError, OSError, ValueError, KeyError, TypeError,
            IndexError, AttributeError, NotImplementedError, OverflowError, struct.error, MemoryError)


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
            raise DicomError(f"compressed transfer syntax {name} cannot be decoded with the installed handlers "
                             f"(e.g. pip install pylibjpeg pylibjpeg-libjpeg): {reason}") from None
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


def read_dicom(path: str | Path) -> tuple[Image.Image, list[str]]:
    """An 8-bit grayscale (mode ``L``) or RGB image of a DICOM file, and the header's notes.
    Raises :class:`DicomError` naming the file and the reason."""
    try:
        return _read_dicom(path)
    except DicomError as exc:
        raise DicomError(exc.reason, path) from None
    except _parser_errors() as exc:  # a malformed element met while reading the header's other fields
        first = (str(exc).splitlines() or [""])[0]
        raise DicomError(f"invalid DICOM data: {type(exc).__name__}: {first}", path) from None


def _read_dicom(path: str | Path) -> tuple[Image.Image, list[str]]:
    import pydicom
    from pydicom.pixels import apply_modality_lut

    try:
        with warnings.catch_warnings():  # pydicom warns of each oddity it tolerates; the outcome is what counts
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
    except _parser_errors() as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DicomError(f"not a readable DICOM file: {reason}") from None
    if "PixelData" not in ds:
        raise DicomError("DICOM file without pixel data (a report or structured document?)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DicomError(f"multi-frame DICOM ({frames} frames): not supported; export the radiograph as one frame")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in {"MONOCHROME1", "MONOCHROME2", "RGB"}:
        raise DicomError(f"DICOM PhotometricInterpretation {photometric or '(missing)'}: "
                         f"only MONOCHROME1, MONOCHROME2 and RGB are supported")
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
