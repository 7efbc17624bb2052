"""Stage evaluate: operating point, sensitivity/specificity with intervals, ROC/PR, calibration, figures.

    python stages/evaluate.py data/predictions.csv metrics plots --model models/model.json

Writes METRICS/evaluate.json (headline numbers for `dvc metrics`), evaluate_details.json and
thresholds.csv, and PLOTS/{roc,pr,confusion,scores,calibration}.csv and PLOTS/figures/*.png.
Works on any predictions file with the columns image_id, label, split, score (group optional).
The operating point is chosen on the validation split; a file without one falls back to the
paper-style threshold chosen on test (with a warning). --model names the model record
(model.json) of the model that scored the predictions: its SHA-256 goes beside the operating
point, so that predict/explain never label another model's scores at it.
"""

import argparse
import logging

from deepcovid import runner
from deepcovid.config import load_config
from deepcovid.evaluation.evaluate import EvalConfig, evaluate
from deepcovid.evaluation.predictions import load_predictions, recorded_model
from deepcovid.evaluation.report import OutputPaths, write_outputs

log = logging.getLogger("evaluate")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("predictions", help="predictions CSV (train stage)")
    ap.add_argument("metrics", help="output folder of the metrics")
    ap.add_argument("plots", help="output folder of the plot data and figures")
    ap.add_argument("--model", default=None, help="model.json of the model that scored the predictions")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    cfg = EvalConfig.from_config(load_config(args.params))
    model_sha256 = None if args.model is None else recorded_model(args.model)
    result = evaluate(load_predictions(args.predictions), cfg, name=args.predictions, model_sha256=model_sha256)
    paths = OutputPaths.into(args.metrics, args.plots)
    write_outputs(result, paths)
    log.info("wrote %s, %s and %s", paths.metrics, paths.thresholds, paths.figures)


if __name__ == "__main__":
    runner.run(main, "evaluate")
