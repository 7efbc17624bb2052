"""Stage train: fine-tune the chosen architecture (the last layer on cached features, or the whole
network); score every validation and test image; log the run to MLflow.

    python stages/train.py data/manifest.csv data/preprocessed data/augmented data/features \
        models data/predictions.csv metrics/train.json plots/train_loss.csv
"""

import argparse

from deepcovid import runner
from deepcovid.config import load_config
from deepcovid.model.train_run import run_training


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, what in [
        ("manifest", "manifest.csv (split stage)"),
        ("cache", "preprocessed image folder"),
        ("augmented", "augmented image folder"),
        ("features", "features folder (featurize stage)"),
        ("models", "output: model folder"),
        ("predictions", "output: validation and test scores"),
        ("metrics", "output: training metrics (JSON)"),
        ("plot", "output: loss per epoch (CSV)"),
    ]:
        ap.add_argument(name, help=what)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow (as mlflow.enabled: false)")
    args = ap.parse_args()
    cfg = load_config(args.params)
    run_training(
        cfg,
        manifest=args.manifest,
        cache=args.cache,
        augmented=args.augmented,
        features=args.features,
        models=args.models,
        predictions=args.predictions,
        metrics=args.metrics,
        plot=args.plot,
        use_mlflow=cfg.mlflow.enabled and not args.no_mlflow,
    )


if __name__ == "__main__":
    runner.run(main, "train")
