"""DICOM test files written with pydicom (the tests make every DICOM file they read)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 16,
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    voi_lut: tuple[list[int], list[int]] | None = None,
    frames: int = 1,
    pixel_data: bool = True,
    syntax=ExplicitVRLittleEndian,
    **attributes,
) -> Path:
    """A DX image (Part 10 file) of ``pixels`` (2-D; 3-D with ``frames`` > 1; H x W x 3 for
    RGB). ``window``: (centre, width); ``rescale``: (slope, intercept); ``voi_lut``:
    (LUTDescriptor, LUTData); further keyword arguments become header attributes."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.BodyPartExamined = "DX", "test", "CHEST"
    rgb = photometric == "RGB"
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if rgb else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if rgb else 1
    if rgb:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if bits_stored <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if voi_lut is not None:
        item = Dataset()
        item.add_new(0x00283002, "US", list(voi_lut[0]))  # LUTDescriptor (VR US or SS: stated)
        item.add_new(0x00283006, "US", list(voi_lut[1]))  # LUTData (VR US or OW: stated)
        ds.VOILUTSequence = [item]
    for key, value in attributes.items():
        setattr(ds, key, value)
    if pixel_data:
        dtype = np.uint8 if ds.BitsAllocated == 8 else np.uint16
        ds.PixelData = pixels.astype(dtype).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def chest(height: int = 48, width: int = 40, bits: int = 12, seed: int = 0) -> np.ndarray:
    """A smooth ramp with noise over the whole range of ``bits``."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, height * width).reshape(height, width)
    values = ramp * (2**bits - 1) * 0.9 + rng.integers(0, max(2**bits // 20, 2), (height, width))
    return np.clip(values, 0, 2**bits - 1).astype(np.int64)


def write_deflated(path: Path, rows: int, cols: int, *, frames: int = 1, pixel_bytes: int | None = None) -> Path:
    """A Deflated Explicit VR Little Endian file (PS3.5 A.5) whose header declares ``rows`` x
    ``cols`` x ``frames`` 16-bit pixels and whose pixel data is ``pixel_bytes`` zero bytes (by
    default what the header declares), written in a stream: a few hundred KB on disk that would
    inflate to gigabytes, without ever holding them in memory."""
    import struct
    import zlib

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.BodyPartExamined = "DX", "test", "CHEST"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    header = DicomBytesIO()
    header.is_little_endian, header.is_implicit_VR = True, False
    write_dataset(header, ds)
    size = rows * cols * frames * 2 if pixel_bytes is None else pixel_bytes
    size += size % 2
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    with open(path, "wb") as f:
        f.write(b"\0" * 128 + b"DICM")
        out = DicomBytesIO()
        out.is_little_endian, out.is_implicit_VR = True, False
        write_file_meta_info(out, meta, enforce_standard=True)
        f.write(out.getvalue())
        f.write(deflate.compress(header.getvalue()))
        f.write(deflate.compress(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, size)))
        zeros = bytes(1 << 22)
        for start in range(0, size, len(zeros)):
            f.write(deflate.compress(zeros[: min(len(zeros), size - start)]))
        f.write(deflate.flush())
    return path
