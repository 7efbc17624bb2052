"""Lung masks at the segmenter's resolution and what preprocess does with them (``preprocess.lungs``),
then the grey level's equalisation (``preprocess.intensity``).

A lung mask is a ``size`` x ``size`` boolean array over the whole raw image, stretched (the
segment stage's resolution, ``segment.size``). From it, ``crop`` cuts the raw image to the lungs'
bounding box grown by ``preprocess.lung_margin`` (a fraction of the image's side), ``mask`` keeps
the cached image only inside the lungs (the mask dilated by the same margin) and fills the rest
with black, ``none`` ignores it. Everything here but CLAHE is integer arithmetic (exact on every
CPU), so preprocess writes the same bytes everywhere given the same masks. ``equalize`` is Pillow's
histogram equalisation (integer; over the lungs only with ``lungs: mask``), ``clahe``
scikit-image's contrast-limited adaptive equalisation (floating point, rounded to 8 bits).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from scipy import ndimage

from deepcovid import portable
from deepcovid.data.images import ImageReadError, letterbox, resize_square

LUNG_MODES = ("none", "crop", "mask")
INTENSITY_MODES = ("none", "equalize", "clahe")
CLAHE_CLIP = 0.01  # scikit-image's default clip limit
# A predicted mask covering less than this fraction of the image finds no lungs: the image is
# refused (a lateral view, a CT slice, not a chest X-ray) instead of being cropped to noise.
MIN_LUNG_FRACTION = 0.02


class NoLungsError(ImageReadError):
    """The segmenter found no lungs in an image that ``preprocess.lungs`` needs them for."""


def segment_input(image: Image.Image, size: int) -> np.ndarray:
    """The segmenter's input of a decoded image: its grey level stretched to ``size`` x ``size``
    (uint8, :func:`deepcovid.portable.resize_uint8`)."""
    return portable.resize_uint8(np.asarray(image.convert("L")), size, size)


def mask_at(mask: np.ndarray, size: int) -> np.ndarray:
    """A boolean mask of a raw image (H x W) stretched to ``size`` x ``size`` as :func:`segment_input`
    stretches the image (a pixel is lung when the resized 0/255 mask is at least 128)."""
    return portable.resize_uint8(np.where(mask, 255, 0).astype(np.uint8), size, size) >= 128


def clean(mask: np.ndarray) -> np.ndarray:
    """The two largest connected regions of a thresholded mask (the lungs), holes filled."""
    labels, n = ndimage.label(mask)
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.argsort(-sizes, kind="stable")[:2] + 1
    return ndimage.binary_fill_holes(np.isin(labels, keep))


def check_found(mask: np.ndarray) -> None:
    """Raise :class:`NoLungsError` when ``mask`` covers less than :data:`MIN_LUNG_FRACTION`."""
    fraction = float(mask.mean()) if mask.size else 0.0
    if fraction < MIN_LUNG_FRACTION:
        raise NoLungsError(
            f"the lung segmenter found no lungs ({fraction:.1%} of the image, under {MIN_LUNG_FRACTION:.0%}): "
            f"not a frontal chest X-ray, or one it cannot read"
        )


def _margin(margin: float, side: int) -> int:
    return int(margin * side)


def crop_box(mask: np.ndarray, width: int, height: int, margin: float) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` in pixels of the ``width`` x ``height`` raw image: the bounding
    box of ``mask`` (at its own resolution, stretched over the image), grown by ``margin`` of each
    side's length and kept inside the image. An empty mask gives the whole image."""
    size_y, size_x = mask.shape
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return 0, 0, width, height
    left = cols[0] * width // size_x - _margin(margin, width)
    right = -(-(cols[-1] + 1) * width // size_x) + _margin(margin, width)
    top = rows[0] * height // size_y - _margin(margin, height)
    bottom = -(-(rows[-1] + 1) * height // size_y) + _margin(margin, height)
    return max(0, int(left)), max(0, int(top)), min(width, int(right)), min(height, int(bottom))


def _disk(radius: int) -> np.ndarray:
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def _nearest(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each of ``n_out`` pixels resampled from ``n_in`` (pixel centres)."""
    return (2 * np.arange(n_out) + 1) * n_in // (2 * n_out)


def dilate(mask: np.ndarray, margin: float) -> np.ndarray:
    """``mask`` grown by ``margin`` of its side (a disk; no change for a margin under one pixel)."""
    radius = _margin(margin, mask.shape[0])
    return ndimage.binary_dilation(mask, structure=_disk(radius)) if radius > 0 else mask


def mask_to_cache(mask: np.ndarray, width: int, height: int, cache_size: int, resize: str) -> np.ndarray:
    """``mask`` (stretched over a ``width`` x ``height`` image) mapped to the cached square as
    :func:`~deepcovid.data.images.resize_square` maps the image (nearest pixel; False outside the
    letterbox)."""
    size_y, size_x = mask.shape
    if resize == "stretch":
        return mask[np.ix_(_nearest(size_y, cache_size), _nearest(size_x, cache_size))]
    new_w, new_h, left, top = letterbox(width, height, cache_size)
    out = np.zeros((cache_size, cache_size), dtype=bool)
    out[top : top + new_h, left : left + new_w] = mask[np.ix_(_nearest(size_y, new_h), _nearest(size_x, new_w))]
    return out


def equalise(cached: Image.Image, mode: str, inside: np.ndarray | None = None) -> Image.Image:
    """``preprocess.intensity`` on a cached RGB image: its grey level equalised (``equalize``, over
    ``inside`` only when given, the rest left black) or CLAHE'd, replicated to three channels."""
    if mode not in INTENSITY_MODES:
        raise ValueError(f"unknown intensity mode {mode!r}; valid: {', '.join(INTENSITY_MODES)}")
    if mode == "none":
        return cached
    grey = cached.convert("L")
    if mode == "equalize":
        region = None if inside is None else Image.fromarray(np.where(inside, 255, 0).astype(np.uint8), "L")
        out = np.asarray(ImageOps.equalize(grey, mask=region))
    else:
        from skimage.exposure import equalize_adapthist

        out = np.round(equalize_adapthist(np.asarray(grey), clip_limit=CLAHE_CLIP) * 255).astype(np.uint8)
    if inside is not None:
        out = np.where(inside, out, 0).astype(np.uint8)
    return Image.fromarray(out, "L").convert("RGB")


def apply_lungs(
    image: Image.Image,
    mask: np.ndarray | None,
    *,
    lungs: str,
    margin: float,
    cache_size: int,
    resize: str,
    intensity: str = "none",
) -> Image.Image:
    """The cached square of a decoded raw ``image`` under ``preprocess.lungs`` (``mask``: its lung
    mask from the segmenter; unused and may be None for ``none``), then ``preprocess.intensity``."""
    if lungs not in LUNG_MODES:
        raise ValueError(f"unknown lungs mode {lungs!r}; valid: {', '.join(LUNG_MODES)}")
    if lungs == "none":
        return equalise(resize_square(image, cache_size, resize), intensity)
    check_found(mask)
    if lungs == "crop":
        return equalise(resize_square(image.crop(crop_box(mask, *image.size, margin)), cache_size, resize), intensity)
    cached = np.array(resize_square(image, cache_size, resize))
    inside = mask_to_cache(dilate(mask, margin), *image.size, cache_size, resize)
    cached[~inside] = 0
    return equalise(Image.fromarray(cached, "RGB"), intensity, inside)


def mask_files(lungs_dir: str | Path) -> tuple[dict[str, Path], int, str]:
    """The segment stage's folder: image id -> its mask file (images it could not read have none),
    the masks' size and the segmenter's SHA-256."""
    import pandas as pd

    from deepcovid import files

    lungs_dir = Path(lungs_dir)
    report = files.read_json(lungs_dir / "report.json", "the segment stage")
    index = pd.read_csv(lungs_dir / "index.csv", dtype=str, keep_default_na=False)
    paths = {i: files.inside(lungs_dir, p) for i, p in zip(index["image_id"], index["mask_path"]) if p}
    return paths, int(report["size"]), str(report["segmenter_sha256"])


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """A mask as a 0/255 grey PNG."""
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L").save(path, format="PNG", compress_level=6)


def read_mask(path: str | Path, size: int) -> np.ndarray:
    """A mask written by :func:`write_mask`, checked to be ``size`` x ``size`` and 0/255 only."""
    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("L"))
    except (OSError, ValueError) as exc:
        raise ImageReadError(f"lung mask cannot be read ({exc})", path) from None
    if arr.shape != (size, size) or not np.isin(arr, (0, 255)).all():
        raise ImageReadError(f"lung mask is not a {size}x{size} 0/255 mask (shape {arr.shape})", path)
    return arr == 255
