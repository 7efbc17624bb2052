"""The shuffled-label control over several label permutations (last-layer mode).

One shuffled-label run gives one random model, whose test AUC can land far from 0.5 while its
DeLong interval (test sampling only) looks narrow. This trains the head on the cached features
of the current workspace (`dvc repro train` first, with train.mode: last_layer) once per
permutation, with the training settings of params.yaml, and prints each test AUC and their
mean and standard deviation: how far from chance a model with no information lands.

    python bench/shuffled_control.py [--permutations 8]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from deepcovid.config import load_config  # noqa: E402
from deepcovid.model.architectures import split_backbone_head  # noqa: E402
from deepcovid.model.datasets import load_table  # noqa: E402
from deepcovid.model.environment import seed_everything  # noqa: E402
from deepcovid.model.training import train_head  # noqa: E402
from deepcovid.model.weights import build_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--permutations", type=int, default=8)
    args = ap.parse_args()
    params = load_config(REPO / "params.yaml").as_dict()
    cfg, name = params["train"], params["model"]
    feats = torch.from_numpy(np.load(REPO / "data/features/features.npy"))
    index = pd.read_csv(REPO / "data/features/index.csv", dtype=str, keep_default_na=False)
    row_of = {img: i for i, img in enumerate(index["image_id"])}
    table = load_table(REPO / "data/manifest.csv", REPO / "data/preprocessed", REPO / "data/augmented")
    aucs = []
    for seed in range(args.permutations):
        t = table.copy()
        train = t["split"] == "train"
        t.loc[train, "label"] = np.random.default_rng(seed).permutation(t.loc[train, "label"].to_numpy())
        parts = {s: t[t["split"] == s].reset_index(drop=True) for s in ("train", "val", "test")}
        x = {s: feats[[row_of[i] for i in parts[s]["image_id"]]] for s in parts}
        y = {s: torch.tensor(parts[s]["label"].to_numpy().astype(int)) for s in parts}
        seed_everything(seed)
        model, _ = build_model(name, params["weights"])
        _, head = split_backbone_head(model, name)
        head, _, best = train_head(
            head,
            x["train"],
            y["train"],
            x["val"],
            y["val"],
            epochs=cfg["epochs"],
            batch_size=cfg["batch_size"],
            lr=cfg["lr"],
            seed=seed,
            weight_decay=cfg["weight_decay"],
            patience=cfg["patience"],
        )
        with torch.no_grad():
            scores = torch.softmax(head(x["test"]), 1)[:, 1].numpy()
        aucs.append(roc_auc_score(y["test"].numpy(), scores))
        print(f"permutation {seed}: best epoch {best}, test AUC {aucs[-1]:.3f}")
    print(
        f"test AUC over {len(aucs)} permutations: mean {np.mean(aucs):.3f}, SD {np.std(aucs):.3f}, "
        f"range {min(aucs):.3f} to {max(aucs):.3f}"
    )


if __name__ == "__main__":
    main()
