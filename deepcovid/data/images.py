"""Decode any source image (opened by content: any Pillow mode, 8 to 32 bit, and DICOM) into the cache format:
8-bit, 3 channels, square. Deep integer images are scaled from their own min..max, transparency
goes onto black, colour becomes luminance (``grayscale``) so it cannot be a shortcut. Unreadable
files raise :class:`ImageReadError` with a one-line reason."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from deepcovid import portable
from deepcovid.data import dicom
from deepcovid.errors import FileReadError, InputError

# Never accept silently truncated files.
ImageFile.LOAD_TRUNCATED_IMAGES = False

RESIZE_MODES = ("stretch", "pad")


class ImageReadError(FileReadError):
    """A source image cannot be decoded (``reason``: why; the message names the file)."""


def _to_uint8_gray_from_int(img: Image.Image) -> np.ndarray:
    arr = np.asarray(img)
    if arr.ndim == 3:  # defensive: multi-channel integer image
        arr = arr[..., 0]
    arr = arr.astype(np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def to_rgb8(img: Image.Image, grayscale: bool = True) -> Image.Image:
    """Convert a decoded Pillow image of any supported mode to 8-bit RGB."""
    img = ImageOps.exif_transpose(img) if img.format == "JPEG" else img
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        rgb = Image.fromarray(_to_uint8_gray_from_int(img), mode="L").convert("RGB")
    elif mode in ("P", "PA", "LA", "RGBA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        rgb = Image.alpha_composite(black, rgba).convert("RGB")
    else:
        rgb = img.convert("RGB")
    if grayscale:
        rgb = rgb.convert("L").convert("RGB")
    return rgb


def read_image(
    path: str | Path, grayscale: bool = True, notes: list[str] | None = None, max_pixels: int | None = None
) -> Image.Image:
    """Open ``path`` by content and return an 8-bit RGB image, or raise ImageReadError.

    DICOM files (recognised by their ``DICM`` marker) are shown as a viewer would
    (:func:`deepcovid.data.dicom.read_dicom`); their header's warnings (a lateral view, ...)
    are appended to ``notes`` when given. Before any pixel is decoded, the image's size from its
    header (width x height; x frames for DICOM) must lie within ``max_pixels``
    (:func:`~deepcovid.data.dicom.pixel_budget`: Pillow's own limit when None), and the
    file must not be larger than an image within it can be."""
    path = Path(path)
    budget = dicom.pixel_budget(max_pixels)
    if dicom.is_dicom(path):
        try:
            image, header = dicom.read_dicom(path, budget)
        except dicom.DicomError as exc:
            raise ImageReadError(exc.reason, path) from None
        if notes is not None:
            notes.extend(header)
        return to_rgb8(image, grayscale=grayscale)
    try:
        try:
            dicom.check_file_size(path, budget)
        except dicom.DicomError as exc:
            raise ImageReadError(exc.reason, path) from None
        data = path.read_bytes()
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > budget:  # the header's size, before any pixel is decoded
                    raise ImageReadError(
                        f"{img.width} x {img.height} = {img.width * img.height:,} pixels: above "
                        f"the pixel budget of {budget:,} (preprocess.max_pixels); refused before "
                        f"decoding",
                        path,
                    )
                if img.format == "PNG":
                    img.verify()  # every chunk's CRC, IDAT included (load() alone does not check them)
                    img = Image.open(io.BytesIO(data))
                img.load()
                if img.format == "JPEG":
                    corrupt = jpeg_corruption(data)
                    if corrupt:
                        raise ImageReadError(f"corrupt JPEG data ({corrupt})", path)
                return to_rgb8(img, grayscale=grayscale)
    except FileNotFoundError:
        raise ImageReadError("file not found", path) from None
    except IsADirectoryError:
        raise ImageReadError("a folder, not an image file", path) from None
    except Image.UnidentifiedImageError:
        raise ImageReadError("not a recognised image format", path) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(f"image too large ({exc})", path) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageReadError(f"cannot decode: {reason}", path) from None


def jpeg_corruption(data: bytes) -> str | None:
    """libjpeg-turbo's warning for JPEG data that is corrupt but still decodes (``Corrupt JPEG data: bad
    Huffman code``, ``premature end of data segment``, ``N extraneous bytes before marker``...), or
    None. Pillow decodes such files without a word, with wrong pixels from the damaged point on;
    the check decodes again at 1/8 scale (all of the entropy-coded data, little of the rest) through
    simplejpeg in strict mode. A file libjpeg-turbo cannot decode at all is left to Pillow's verdict."""
    import simplejpeg

    try:
        simplejpeg.decode_jpeg(data, colorspace="GRAY", strict=True, min_factor=8)
        return None
    except ValueError as exc:
        try:
            simplejpeg.decode_jpeg(data, colorspace="GRAY", strict=False, min_factor=8)
        except ValueError:
            return None
        return " ".join(str(exc).split()) or "recoverable decoder error"


def resize_square(img: Image.Image, size: int, mode: str = "stretch") -> Image.Image:
    """Resize to ``size`` x ``size``: ``stretch`` ignores aspect, ``pad`` letterboxes on black.

    Bicubic and antialiased, in integer arithmetic (:func:`deepcovid.portable.resize_uint8`),
    so the cached bytes are the same on every CPU.
    """
    if mode not in RESIZE_MODES:
        raise InputError(f"unknown resize mode {mode!r}; valid: {', '.join(RESIZE_MODES)}")
    arr = np.asarray(img.convert("RGB"))
    if mode == "stretch":
        return Image.fromarray(portable.resize_uint8(arr, size, size), "RGB")
    height, width = arr.shape[:2]
    new_w, new_h, left, top = letterbox(width, height, size)
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    canvas[top : top + new_h, left : left + new_w] = portable.resize_uint8(arr, new_w, new_h)
    return Image.fromarray(canvas, "RGB")


def letterbox(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """``resize: pad``: where a ``width`` x ``height`` image lands in the ``size`` square:
    ``(new_width, new_height, left, top)``, aspect kept, centred."""
    if width >= height:
        new_w, new_h = size, max(1, round(height * size / width))
    else:
        new_w, new_h = max(1, round(width * size / height)), size
    return new_w, new_h, (size - new_w) // 2, (size - new_h) // 2


def load_cached(path: str | Path) -> np.ndarray:
    """Read a cached image back as a uint8 HxWx3 array."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))
