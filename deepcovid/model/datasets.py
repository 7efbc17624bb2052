"""The image table the models see, and its torch Dataset.

``load_table`` joins the manifest (provenance, split) with the preprocessed cache index
(rejected images drop out) and, for training, the augmented copies. Columns:

    image_id, parent, source, patient, split_group, label (int), group, category, split, file
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

TABLE_COLUMNS = ["image_id", "parent", "source", "patient", "split_group", "label", "group", "category", "split", "file"]


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def load_table(manifest: str | Path, cache_dir: str | Path, augmented_dir: str | Path | None = None) -> pd.DataFrame:
    """Every usable image (original and augmented) with its cached file."""
    cache_dir = Path(cache_dir)
    man = _read(Path(manifest))
    index = _read(cache_dir / "index.csv")[["image_id", "cache_path"]]
    table = man.merge(index, on="image_id", how="inner", validate="one_to_one")
    table = table.assign(parent="", file=[str(cache_dir / p) for p in table["cache_path"]])
    frames = [table]
    if augmented_dir is not None and (Path(augmented_dir) / "index.csv").is_file():
        aug = _read(Path(augmented_dir) / "index.csv")
        aug = aug.assign(file=[str(Path(augmented_dir) / p) for p in aug["cache_path"]])
        frames.append(aug)
    out = pd.concat([f.reindex(columns=TABLE_COLUMNS) for f in frames], ignore_index=True).fillna("")
    out["label"] = out["label"].astype(int)
    return out


def normalize_transform(prep: dict, image_size: int) -> v2.Compose:
    """Cached uint8 image -> resized float tensor normalised as the network expects."""
    interpolation = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC}[
        prep.get("interpolation", "bilinear")]
    return v2.Compose([
        v2.ToImage(),
        v2.Resize((image_size, image_size), interpolation=interpolation, antialias=True),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=prep["mean"], std=prep["std"]),
    ])


def train_transform(prep: dict, image_size: int, aug: dict) -> v2.Compose:
    """On-the-fly augmentation for full fine-tuning (flip, small affine), then normalisation."""
    scale = aug.get("scale", [1.0, 1.0])
    return v2.Compose([
        v2.ToImage(),
        v2.RandomHorizontalFlip(p=float(aug.get("hflip_p", 0.5))),
        v2.RandomAffine(degrees=float(aug.get("rotation_degrees", 0.0)),
                        translate=(float(aug.get("translate", 0.0)),) * 2,
                        scale=(float(scale[0]), float(scale[1]))),
        normalize_transform(prep, image_size),
    ])


class ImageDataset(Dataset):
    """(image tensor, label) pairs from cached files."""

    def __init__(self, files: list[str], labels: list[int], transform) -> None:
        self.files, self.labels, self.transform = list(files), [int(x) for x in labels], transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        with Image.open(self.files[i]) as img:
            image = img.convert("RGB")
        return self.transform(image), self.labels[i]
