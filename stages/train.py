"""Stage train: fine-tune the chosen architecture (last layer on the cached features, or the
whole network); score every validation and test image (deepcovid.model.train_run)."""

import argparse

from deepcovid import runner
from deepcovid.model.train_run import run_training
from deepcovid.model.trainparams import validate_train_params
from deepcovid.params import load_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--manifest", default="data/manifest.csv")
    ap.add_argument("--cache", default="data/preprocessed")
    ap.add_argument("--augmented", default="data/augmented")
    ap.add_argument("--features", default="data/features")
    ap.add_argument("--models", default="models")
    ap.add_argument("--predictions", default="data/predictions.csv")
    ap.add_argument("--metrics", default="metrics/train.json")
    ap.add_argument("--plot", default="plots/train_loss.csv")
    ap.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    args = ap.parse_args()

    params = load_params(args.params)
    validate_train_params(params)
    run_training(params, manifest=args.manifest, cache=args.cache, augmented=args.augmented, features=args.features,
                 models=args.models, predictions=args.predictions, metrics=args.metrics, plot=args.plot,
                 use_mlflow=not args.no_mlflow)


if __name__ == "__main__":
    runner.run(main, "train")
