"""Lung (and lesion) annotations beside each raw source, by image path.

The synthetic generator's lung and lesion masks (``synthetic_truth.csv``), Cohen's
``annotations/lungVAE-masks/<stem>_mask.png`` and its COCO lung boxes
(``imageannotation_ai_lung_bounding_boxes.json``, in pixels of the original images: a
``scale_factors.csv`` beside them, as in a downscaled copy, gives the original sizes). Read by the
segment stage (masks to learn from and to test on) and the explain stage (where the lungs are).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from deepcovid.data.images import ImageReadError


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def annotation_index(root: Path) -> dict[Path, dict]:
    """Annotations of the images under source ``root``: image path -> {kind: (how, value)},
    kind ``lung`` / ``lesion``; how ``mask`` (a mask file) or ``boxes`` ((x, y, w, h) list, with
    ``scale`` the (sx, sy) from original to file pixels, or a ``reason`` they cannot be used)."""
    index: dict[Path, dict] = {}
    truth = root / "annotations" / "synthetic_truth.csv"  # Cohen layout
    if truth.is_file():
        for row in _read_csv(truth).itertuples():
            index[root / "images" / row.filename] = {
                "lung": ("mask", root / row.lung_mask, "synthetic mask"),
                "lesion": ("mask", root / row.lesion_mask, "synthetic mask"),
            }
    truth = root / "synthetic_truth.csv"  # CheXpert layout: paths relative to the folder above
    if truth.is_file():
        for row in _read_csv(truth).itertuples():
            index[root.parent / row.Path] = {
                "lung": ("mask", root.parent / row.lung_mask, "synthetic mask"),
                "lesion": ("mask", root.parent / row.lesion_mask, "synthetic mask"),
            }
    _coco_boxes(root, index)
    masks = root / "annotations" / "lungVAE-masks"
    if masks.is_dir():
        stems = {p.stem: p for p in (root / "images").glob("*")}
        for mask in sorted(masks.glob("*_mask.png*")):
            stem = mask.name.split("_mask.png")[0]
            if stem in stems:
                index.setdefault(stems[stem], {})["lung"] = ("mask", mask, "lungVAE mask")
    return index


def _coco_boxes(root: Path, index: dict) -> None:
    path = root / "annotations" / "imageannotation_ai_lung_bounding_boxes.json"
    if not path.is_file():
        return
    coco = json.loads(path.read_text(encoding="utf-8"))
    lungs = {c["id"] for c in coco.get("categories", []) if "lung" in str(c.get("name", "")).lower()}
    boxes: dict[int, list] = {}
    for ann in coco.get("annotations", []):
        if ann.get("category_id") in lungs:
            boxes.setdefault(ann["image_id"], []).append(ann.get("bbox"))
    scales_csv = root / "annotations" / "scale_factors.csv"
    originals = {}
    if scales_csv.is_file():
        for row in _read_csv(scales_csv).itertuples():
            originals[row.filename] = (
                int(row.original_width),
                int(row.original_height),
                int(row.new_width),
                int(row.new_height),
            )
    for image in coco.get("images", []):
        name = image.get("file_name", "")
        recorded = (image.get("width"), image.get("height"))
        found = boxes.get(image.get("id"), [])
        scale = None  # from the recorded size to the file's, when the image is read
        if not found or any(not isinstance(b, list) or len(b) != 4 for b in found):
            entry = ("unusable", "lung boxes missing or malformed", "bounding boxes")
        elif name in originals and recorded != originals[name][:2]:
            entry = (
                "unusable",
                f"lung boxes recorded for a {recorded[0]}x{recorded[1]} image, the original is "
                f"{originals[name][0]}x{originals[name][1]}",
                "bounding boxes",
            )
        else:
            if name in originals:
                ow, oh, nw, nh = originals[name]
                scale = (nw / ow, nh / oh)
            entry = ("boxes", found, "bounding boxes", scale, recorded)
        index.setdefault(root / "images" / name, {})["lung"] = entry


def load_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    try:
        with Image.open(path) as img:
            mask = np.asarray(img.convert("L")) >= 128
    except (OSError, ValueError) as exc:
        raise ImageReadError(f"mask {path.name} cannot be read ({exc})") from None
    if mask.shape[::-1] != size:
        raise ImageReadError(f"mask {path.name} is {mask.shape[1]}x{mask.shape[0]}, its image {size[0]}x{size[1]}")
    return mask


def box_mask(boxes, scale, size: tuple[int, int], recorded) -> np.ndarray:
    w, h = size
    if scale is None:
        try:
            scale = (w / float(recorded[0]), h / float(recorded[1]))
        except (TypeError, ValueError, ZeroDivisionError):
            raise ImageReadError(f"lung boxes record no usable image size ({recorded})") from None
    sx, sy = scale
    mask = np.zeros((h, w), bool)
    for x, y, bw, bh in boxes:
        x0, y0 = max(0, int(round(x * sx))), max(0, int(round(y * sy)))
        mask[y0 : max(y0, int(round((y + bh) * sy))), x0 : max(x0, int(round((x + bw) * sx)))] = True
    return mask
