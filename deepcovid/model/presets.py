"""The image transforms, built in one place (as torchvision's references/classification presets).

Evaluation (and feature extraction): resize, scale to 0..1, normalise as the network expects.
Training (full fine-tuning): the augment stage's own augmentation (:func:`deepcovid.data.augment.
build_transform`, from the same ``augment`` parameters) on the uint8 image, then the same.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import v2

from deepcovid import config, portable
from deepcovid.data.augment import build_transform

_INTERPOLATION = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC}


def eval_transform(prep: dict, image_size: int) -> v2.Compose:
    """Cached uint8 image -> resized float tensor normalised as the network expects
    (``prep``: :func:`deepcovid.model.architectures.preprocessing`)."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(
                (image_size, image_size),
                interpolation=_INTERPOLATION[prep.get("interpolation", "bilinear")],
                antialias=True,
            ),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=prep["mean"], std=prep["std"]),
        ]
    )


class Augment:
    """The augment stage's augmentation (params ``augment``) applied on the fly to a uint8
    image (PIL or H x W x 3 array), seeded from torch's random numbers: reproducible under
    the training loop's per-epoch seeding, in DataLoader workers too."""

    def __init__(self, aug: config.Augment) -> None:
        self.augmentation = build_transform(aug)

    def __call__(self, image) -> np.ndarray:
        seed = int(torch.randint(0, 2**63 - 1, ()).item())
        return self.augmentation(np.asarray(image, dtype=np.uint8), portable.Rng(seed))


def train_transform(prep: dict, image_size: int, aug: config.Augment) -> v2.Compose:
    """Full fine-tuning: :class:`Augment` (params ``augment``), then :func:`eval_transform`."""
    return v2.Compose([Augment(aug), eval_transform(prep, image_size)])
