"""Offline augmentation of COVID training images (the paper: 5 copies each).

Flip, rotation / translation / scale / shear (torchvision RandomAffine's parameters) and a
smooth elastic field, composed into one sampling map, seeded per (seed, image, copy). Computed
in exact arithmetic with integer interpolation, not with torch's FMA-dispatched grid_sample,
so the PNGs (DVC outputs) are byte-identical on every CPU."""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from deepcovid import config, files, portable
from deepcovid.data.images import load_cached
from deepcovid.errors import StateError

log = logging.getLogger("augment")


class AugmentError(StateError):
    """An augmented image would leak into validation or test."""


@dataclass(frozen=True)
class Augmentation:
    """The random transformation of the augment stage (parameters as in params.yaml).

    ``rotation_degrees``, ``shear_degrees``: uniform in [-v, v] (shear along x, as
    RandomAffine with one shear value); ``translate``: uniform shift up to this fraction of
    the width / height, rounded to whole pixels (as RandomAffine); ``scale``: uniform in
    [low, high]; ``elastic_alpha``: a displacement field drawn on an ``elastic_grid`` x
    ``elastic_grid`` lattice (uniform in [-1, 1]), upsampled bicubically and scaled to at
    most this many pixels; 0 switches it off. Pixels mapped from outside the image are black.
    """

    hflip_p: float = 0.5
    rotation_degrees: float = 0.0
    translate: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    shear_degrees: float = 0.0
    elastic_alpha: float = 0.0
    elastic_grid: int = 5

    def source_coordinates(self, height: int, width: int, rng: portable.Rng) -> tuple[np.ndarray, np.ndarray]:
        """For every output pixel, the (x, y) of the input point it samples (pixel centres
        at integers), drawing this copy's parameters from ``rng``."""
        flip = rng.random() < self.hflip_p
        angle = math.radians(rng.uniform(-self.rotation_degrees, self.rotation_degrees))
        tx = float(round(rng.uniform(-self.translate * width, self.translate * width)))
        ty = float(round(rng.uniform(-self.translate * height, self.translate * height)))
        s = rng.uniform(self.scale[0], self.scale[1])
        shear = math.radians(rng.uniform(-self.shear_degrees, self.shear_degrees))
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
        if self.elastic_alpha > 0:
            g = int(self.elastic_grid)
            coarse = rng.uniform(-1.0, 1.0, size=(2, g, g))
            dx = np.clip(portable.resample(coarse[0], width, height, "bicubic"), -1, 1) * self.elastic_alpha
            dy = np.clip(portable.resample(coarse[1], width, height, "bicubic"), -1, 1) * self.elastic_alpha
            xx, yy = xx + dx, yy + dy
        # forward map q = c + t + R(angle) Sh(shear) s (p - c); invert it for each output q
        cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
        ca, sa = portable.cos(angle), portable.sin(angle)
        sh = portable.sin(shear) / portable.cos(shear)
        a, b = s * ca, s * (ca * sh - sa)  # L = R @ [[1, sh], [0, 1]] * s
        c, d = s * sa, s * (sa * sh + ca)
        det = a * d - b * c
        qx, qy = xx - (cx + tx), yy - (cy + ty)
        px = (d * qx - b * qy) / det + cx
        py = (-c * qx + a * qy) / det + cy
        if flip:
            px = (width - 1) - px
        return px, py

    def __call__(self, image: np.ndarray, rng: portable.Rng) -> np.ndarray:
        height, width = image.shape[:2]
        px, py = self.source_coordinates(height, width, rng)
        return bilinear_sample(image, px, py)


def bilinear_sample(image: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Sample a uint8 H x W (x C) image at float coordinates, bilinearly, with black outside.
    Coordinates are rounded to 1/256 pixel; the blend is integer arithmetic."""
    height, width = image.shape[:2]
    fx = np.rint(px * 256.0).astype(np.int64)
    fy = np.rint(py * 256.0).astype(np.int64)
    x0, y0 = fx >> 8, fy >> 8
    wx, wy = fx & 255, fy & 255
    img = image.astype(np.int64)
    if img.ndim == 2:
        img = img[..., None]
    acc = np.zeros((height, width, img.shape[2]), dtype=np.int64)
    for dy, wgt_y in ((0, 256 - wy), (1, wy)):
        for dx, wgt_x in ((0, 256 - wx), (1, wx)):
            xi, yi = x0 + dx, y0 + dy
            inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
            pix = img[np.clip(yi, 0, height - 1), np.clip(xi, 0, width - 1)]
            acc += np.where(inside, wgt_x * wgt_y, 0)[..., None] * pix
    out = ((acc + (1 << 15)) >> 16).astype(np.uint8)
    return out[..., 0] if image.ndim == 2 else out


def build_transform(cfg: config.Augment) -> Augmentation:
    """The augmentation the ``augment`` section of params.yaml describes."""
    return Augmentation(
        hflip_p=float(cfg.hflip_p),
        rotation_degrees=float(cfg.rotation_degrees),
        translate=float(cfg.translate),
        scale=(float(cfg.scale[0]), float(cfg.scale[1])),
        shear_degrees=float(cfg.shear_degrees),
        elastic_alpha=float(cfg.elastic_alpha),
        elastic_grid=int(cfg.elastic_grid),
    )


def copy_seed(seed: int, image_id: str, copy: int) -> int:
    digest = hashlib.sha256(f"{seed}:{image_id}:{copy}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def augment_image(image: np.ndarray, transform: Augmentation, seed: int) -> np.ndarray:
    """Apply ``transform`` to a uint8 H x W x 3 array with its own seeded generator."""
    return transform(np.asarray(image, dtype=np.uint8), portable.Rng(seed))


def check_augmented(augmented: pd.DataFrame, manifest: pd.DataFrame) -> None:
    """No augmented image, nor any image of its parent's patient group, outside training."""
    parents = manifest.set_index("image_id").loc[augmented["parent"]]
    if (parents["split"] != "train").any():
        bad = augmented["parent"][(parents["split"] != "train").to_numpy()].iloc[0]
        raise AugmentError(f"augmented copy of {bad} whose parent is not in the training split")
    if (augmented["split"] != "train").any():
        raise AugmentError("an augmented image is assigned to a split other than train")
    held_out = set(manifest.loc[manifest["split"] != "train", "split_group"])
    leaked = set(parents["split_group"]) & held_out
    if leaked:
        raise AugmentError(f"patient group {sorted(leaked)[0]} of an augmented image is in validation or test")


AUGMENTED_COLUMNS = [
    "image_id",
    "parent",
    "copy",
    "source",
    "patient",
    "split_group",
    "label",
    "group",
    "category",
    "split",
    "cache_path",
]


def augment_positives(manifest_csv, cache_dir, out_dir, cfg: config.Augment, seed: int) -> pd.DataFrame:
    """The augment stage: ``cfg.copies`` seeded copies of every COVID-19 training image into the new
    folder ``out_dir`` (``images/`` and ``index.csv``, each copy recording its parent)."""
    cache_dir, out_dir = Path(cache_dir), Path(out_dir)
    manifest = pd.read_csv(manifest_csv, dtype=str, keep_default_na=False)
    index = pd.read_csv(cache_dir / "index.csv", dtype=str, keep_default_na=False)
    rows = manifest.merge(index[["image_id", "cache_path"]], on="image_id")
    parents = rows[(rows["split"] == "train") & (rows["label"] == "1")]
    transform = build_transform(cfg)
    records = []
    (out_dir / "images").mkdir(parents=True)
    for row in tqdm(list(parents.itertuples(index=False)), desc="augment", mininterval=2):
        image = load_cached(files.inside(cache_dir, row.cache_path))
        for k in range(1, cfg.copies + 1):
            out = augment_image(image, transform, copy_seed(seed, row.image_id, k))
            rel = f"images/{row.image_id}.aug{k}.png"
            target = files.inside(out_dir, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(out)).save(target, format="PNG", compress_level=3)
            records.append(
                {
                    "image_id": f"{row.image_id}#aug{k}",
                    "parent": row.image_id,
                    "copy": k,
                    "source": row.source,
                    "patient": row.patient,
                    "split_group": row.split_group,
                    "label": 1,
                    "group": row.group,
                    "category": row.category,
                    "split": "train",
                    "cache_path": rel,
                }
            )
    table = pd.DataFrame(records, columns=AUGMENTED_COLUMNS)
    check_augmented(table, manifest)
    files.write_csv(out_dir / "index.csv", table)
    log.info("wrote %d augmented copies of %d COVID training images", len(table), len(parents))
    return table
