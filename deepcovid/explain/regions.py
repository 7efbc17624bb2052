"""Where the lungs (and lesions) are, at the model input, and how much of a heatmap lands there.

The annotations come from :func:`deepcovid.data.annotations.annotation_index`. A mask is mapped to
the model input exactly as the preprocess stage maps the image (stretch or pad).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from deepcovid.data.annotations import annotation_index, box_mask, load_mask
from deepcovid.data.images import ImageReadError, letterbox, read_image
from deepcovid.data.lungs import crop_box

__all__ = ["Regions", "annotation_index", "load_regions", "mass_inside", "pointing_hit", "to_input"]


@dataclass
class Regions:
    """Boolean masks at the model input (None where unknown) and where the lung mask came from."""

    lung: np.ndarray | None = None
    lesion: np.ndarray | None = None
    lung_origin: str = ""


def to_input(mask: np.ndarray, *, cache_size: int, resize: str, image_size: int) -> np.ndarray:
    """A mask of the raw image, mapped to the model input as preprocess + resize map the image."""
    img = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L")
    if resize == "pad":
        new_w, new_h, left, top = letterbox(*img.size, cache_size)
        canvas = Image.new("L", (cache_size, cache_size), 0)
        canvas.paste(img.resize((new_w, new_h), Image.BILINEAR), (left, top))
        img = canvas
    return np.asarray(img.resize((image_size, image_size), Image.BILINEAR)) >= 128


def load_regions(
    image: Path, entry: dict, *, cache_size: int, resize: str, image_size: int, lung_mask=None, lungs=None
) -> Regions:
    """The :class:`Regions` of raw ``image`` from its :func:`annotation_index` entry; an
    :class:`ImageReadError` names what cannot be used. For a model of ``preprocess.lungs: crop``
    (``lungs``: the mode and margin), the masks are cut to the box preprocess cut from the image's
    segment-stage ``lung_mask`` (:func:`~deepcovid.data.lungs.crop_box`) before they are mapped."""
    size = read_image(image).size
    box = None
    if lungs is not None and lungs[0] == "crop":
        box = crop_box(lung_mask, *size, lungs[1])
    out = Regions()
    for kind in ("lung", "lesion"):
        if kind not in entry:
            continue
        how, value, origin, *extra = entry[kind]
        if how == "unusable":
            raise ImageReadError(value)
        raw = load_mask(value, size) if how == "mask" else box_mask(value, *extra[:1], size, *extra[1:])
        if box is not None:
            raw = raw[box[1] : box[3], box[0] : box[2]]
        mapped = to_input(raw, cache_size=cache_size, resize=resize, image_size=image_size)
        setattr(out, kind, mapped)
        if kind == "lung":
            out.lung_origin = origin
    return out


def mass_inside(heatmap: np.ndarray, mask: np.ndarray | None) -> float:
    """Fraction of the map's positive mass inside ``mask`` (nan without a mask, a non-empty
    mask or any positive value)."""
    if mask is None or not mask.any():
        return float("nan")
    positive = np.clip(heatmap, 0, None)
    total = positive.sum()
    return float(positive[mask].sum() / total) if total > 0 else float("nan")


def pointing_hit(heatmap: np.ndarray, mask: np.ndarray | None) -> float:
    """1.0 if the map's maximum lies inside ``mask`` (all maxima, when tied), else 0.0; nan without one."""
    if mask is None or not mask.any():
        return float("nan")
    top = heatmap == heatmap.max()
    return float(mask[top].all())
