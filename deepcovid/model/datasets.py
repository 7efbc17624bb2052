"""The image table the models see, and its torch Dataset.

``load_table`` joins the manifest (provenance, split) with the preprocessed cache index
(rejected images drop out) and, for training, the augmented copies. Columns:

    image_id, parent, source, patient, split_group, label (int), group, category, split, file
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from PIL import Image
from torch.utils.data import Dataset

TABLE_COLUMNS = [
    "image_id",
    "parent",
    "source",
    "patient",
    "split_group",
    "label",
    "group",
    "category",
    "split",
    "file",
]


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


class ImageDataset(Dataset):
    """(image tensor, label) pairs from cached files (RGB), through ``transform``
    (:mod:`deepcovid.model.presets`)."""

    def __init__(self, files: list[str], labels: list[int], transform) -> None:
        self.files, self.labels, self.transform = list(files), [int(x) for x in labels], transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        with Image.open(self.files[i]) as img:
            image = img.convert("RGB")
        return self.transform(image), self.labels[i]
