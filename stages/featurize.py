"""Stage featurize: backbone features of every image, computed once (last_layer mode); in full
fine-tuning mode only a record that nothing was cached (deepcovid.model.features.featurize)."""

import argparse

from deepcovid import runner
from deepcovid.model.features import featurize
from deepcovid.model.trainparams import validate_train_params
from deepcovid.params import load_params


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
    featurize(params, manifest=args.manifest, cache=args.cache, augmented=args.augmented, out=args.out)


if __name__ == "__main__":
    runner.run(main, "featurize")
