"""Stage augment: 5x augmentation of COVID training images (the paper's setting)."""

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from deepcovid import runner

from deepcovid import files
from deepcovid.data.augment import augment_image, build_transform, check_augmented, copy_seed
from deepcovid.data.images import load_cached
from deepcovid.params import get, load_params, validate_data_params

log = logging.getLogger("augment")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--manifest", default="data/manifest.csv")
    ap.add_argument("--cache", default="data/preprocessed")
    ap.add_argument("--out", default="data/augmented")
    args = ap.parse_args()

    params = load_params(args.params)
    validate_data_params(params)
    cfg, seed = get(params, "augment"), int(params["seed"])
    copies = int(cfg["copies"])
    manifest = pd.read_csv(args.manifest, dtype=str, keep_default_na=False)
    index = pd.read_csv(Path(args.cache) / "index.csv", dtype=str, keep_default_na=False)
    rows = manifest.merge(index[["image_id", "cache_path"]], on="image_id")
    parents = rows[(rows["split"] == "train") & (rows["label"] == "1")]
    transform = build_transform(cfg)
    records = []
    with files.atomic_path(args.out) as tmp:
        (tmp / "images").mkdir(parents=True)
        for row in tqdm(list(parents.itertuples(index=False)), desc="augment", mininterval=2):
            image = load_cached(Path(args.cache) / row.cache_path)
            for k in range(1, copies + 1):
                out = augment_image(image, transform, copy_seed(seed, row.image_id, k))
                rel = f"images/{row.image_id}.aug{k}.png"
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.asarray(out)).save(tmp / rel, format="PNG", compress_level=3)
                records.append({"image_id": f"{row.image_id}#aug{k}", "parent": row.image_id, "copy": k,
                                "source": row.source, "patient": row.patient, "split_group": row.split_group,
                                "label": 1, "group": row.group, "category": row.category, "split": "train",
                                "cache_path": rel})
        table = pd.DataFrame(records, columns=["image_id", "parent", "copy", "source", "patient", "split_group",
                                               "label", "group", "category", "split", "cache_path"])
        check_augmented(table, manifest)
        files.write_csv(tmp / "index.csv", table)
    log.info("wrote %d augmented copies of %d COVID training images", len(table), len(parents))


if __name__ == "__main__":
    runner.run(main, "augment")
