"""Stage featurize: backbone features of every image, computed once (last_layer mode).

In full fine-tuning mode the backbone changes while training, so nothing can be cached:
the stage then records that it was skipped.

Seeded, with deterministic algorithms (strictly): a rerun on the same machine with the same
thread count writes bitwise identical features. The thread count and CPU kernels in use are
logged, not written to meta.json: that is a DVC output and must not differ between machines.
"""

import argparse
import logging

import numpy as np

from deepcovid import runner

from deepcovid import files
from deepcovid.model.datasets import ImageDataset, load_table, normalize_transform
from deepcovid.model.features import extract_features, state_digest
from deepcovid.model.architectures import build_model, preprocessing, split_backbone_head
from deepcovid.params import load_params
from deepcovid.model.trainparams import validate_train_params
from deepcovid.model.training import compute_environment, resolve_device, seed_everything

log = logging.getLogger("featurize")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--manifest", default="data/manifest.csv")
    ap.add_argument("--cache", default="data/preprocessed")
    ap.add_argument("--augmented", default="data/augmented")
    ap.add_argument("--out", default="data/features")
    args = ap.parse_args()

    params = load_params(args.params)
    validate_train_params(params)
    name, mode, size = params["model"], params["train"]["mode"], params["train"]["image_size"]
    with files.atomic_path(args.out) as tmp:
        tmp.mkdir()
        if mode != "last_layer":
            files.write_json(tmp / "meta.json", {"mode": mode, "skipped": True,
                                              "reason": "full fine-tuning changes the backbone; nothing to cache"})
            log.info("train.mode=%s: no features to cache", mode)
            return
        seed_everything(int(params["seed"]))  # and deterministic algorithms
        log.info("compute environment: %s", ", ".join(f"{k}={v}" for k, v in compute_environment().items()))
        model, provenance = build_model(name, params["weights"])
        backbone, _ = split_backbone_head(model, name)
        device = resolve_device(params["train"]["device"])
        table = load_table(args.manifest, args.cache, args.augmented)
        prep = preprocessing(name)
        dataset = ImageDataset(table["file"], table["label"], normalize_transform(prep, size))
        feats = extract_features(backbone, dataset, batch_size=params["train"]["feature_batch_size"],
                                 num_workers=0, device=device, channels_last=True)
        np.save(tmp / "features.npy", feats.astype(np.float32))
        files.write_csv(tmp / "index.csv", table.drop(columns=["file"]))
        files.write_json(tmp / "meta.json", {"mode": mode, "skipped": False, "model": name, "image_size": size,
                                          "preprocessing": prep, "provenance": provenance,
                                          "backbone_sha256": state_digest(backbone), "shape": list(feats.shape),
                                          "device": str(device)})
    log.info("%s features %s for %d images", name, tuple(feats.shape[1:]), len(feats))


if __name__ == "__main__":
    runner.run(main, "featurize")
