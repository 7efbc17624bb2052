"""Stage card: the model card (models/MODEL_CARD.md), generated from the pipeline's outputs and
logged to the model's MLflow run.

    python stages/card.py models data/filtered/report.json metrics/data.json metrics/train.json \
        metrics/evaluate.json metrics/audit.json metrics/repeats.json metrics/explain.json models/MODEL_CARD.md
"""

import argparse
import logging

from deepcovid import runner
from deepcovid.config import load_config
from deepcovid.evaluation.card import write_card
from deepcovid.model import tracking

log = logging.getLogger("card")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, text in (
        ("models", "model folder (model.pt, model.json)"),
        ("filter_report", "data/filtered/report.json"),
        ("data", "metrics/data.json"),
        ("train", "metrics/train.json"),
        ("evaluation", "metrics/evaluate.json"),
        ("audit", "metrics/audit.json"),
        ("repeats", "metrics/repeats.json"),
        ("explain", "metrics/explain.json"),
        ("out", "output: the model card (Markdown)"),
    ):
        ap.add_argument(name, help=text)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--no-mlflow", action="store_true", help="do not log the card to the model's MLflow run")
    args = ap.parse_args()
    cfg = load_config(args.params)
    digest = write_card(
        models=args.models,
        data_json=args.data,
        filter_report=args.filter_report,
        train_json=args.train,
        evaluation_json=args.evaluation,
        audit_json=args.audit,
        repeats_json=args.repeats,
        explain_json=args.explain,
        params=cfg,
        out=args.out,
    )
    log.info("wrote %s", args.out)
    if cfg.mlflow.enabled and not args.no_mlflow:
        run = tracking.log_to_training_run(args.out, digest, cfg.mlflow.experiment, cfg.mlflow.tracking_uri)
        log.info("logged to MLflow run %s", run) if run else log.info("no MLflow run of this model: card not logged")


if __name__ == "__main__":
    runner.run(main, "card")
