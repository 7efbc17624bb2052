"""Offline augmentation of COVID training images (the paper: 5 copies each).

Flips, small rotations, small affine and elastic distortions with torchvision transforms v2,
each copy seeded from (seed, parent image id, copy number) so that results do not depend on
the order or the number of worker processes.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torchvision.transforms import v2


class AugmentError(RuntimeError):
    """An augmented image would leak into validation or test."""


class SmoothElastic(torch.nn.Module):
    """Small elastic distortion: a random displacement field on a coarse ``grid`` x ``grid``
    lattice, upsampled bicubically (so it is smooth) and scaled to at most ``alpha`` pixels,
    applied with ``torchvision.transforms.v2.functional.elastic``.

    torchvision's ``ElasticTransform`` blurs a full-resolution noise field with a large
    Gaussian kernel (about 0.2 s per 256 px image on one core) and its ``alpha`` has no direct
    unit; this field has the same role, an explicit amplitude in pixels, and costs ~1 ms.
    """

    def __init__(self, alpha: float, grid: int = 5) -> None:
        super().__init__()
        self.alpha, self.grid = float(alpha), int(grid)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if self.alpha <= 0:
            return img
        height, width = img.shape[-2:]
        coarse = torch.rand(1, 2, self.grid, self.grid) * 2 - 1
        field = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)
        field = field.clamp(-1, 1) * self.alpha  # pixels, (dx, dy)
        scale = torch.tensor([2.0 / width, 2.0 / height]).view(1, 2, 1, 1)
        displacement = (field * scale).permute(0, 2, 3, 1)  # normalised units, [1, H, W, 2]
        return v2.functional.elastic(img, displacement, interpolation=v2.InterpolationMode.BILINEAR)


def build_transform(cfg: dict) -> v2.Compose:
    scale = cfg.get("scale", [1.0, 1.0])
    return v2.Compose([
        v2.RandomHorizontalFlip(p=float(cfg["hflip_p"])),
        v2.RandomAffine(
            degrees=float(cfg["rotation_degrees"]),
            translate=(float(cfg.get("translate", 0.0)),) * 2,
            scale=(float(scale[0]), float(scale[1])),
            shear=float(cfg.get("shear_degrees", 0.0)),
            interpolation=v2.InterpolationMode.BILINEAR,
        ),
        SmoothElastic(alpha=float(cfg.get("elastic_alpha", 0.0)), grid=int(cfg.get("elastic_grid", 5))),
    ])


def copy_seed(seed: int, image_id: str, copy: int) -> int:
    digest = hashlib.sha256(f"{seed}:{image_id}:{copy}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def augment_image(image: np.ndarray, transform: v2.Compose, seed: int) -> np.ndarray:
    """Apply ``transform`` to a uint8 HxWx3 array with its own seeded generator state."""
    tensor = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = transform(tensor)
    return out.permute(1, 2, 0).contiguous().numpy()


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
