"""Stage evaluate: operating point, sensitivity/specificity with intervals, ROC/PR, calibration, figures.

In the pipeline (no arguments) it reads data/predictions.csv and writes
metrics/evaluate.json (the headline numbers, for `dvc metrics show/diff`),
metrics/evaluate_details.json (counts, clipped paper intervals, settings), metrics/thresholds.csv
(sensitivity/specificity at evaluate.thresholds), plots/{roc,pr,confusion,scores,calibration}.csv
(rendered by `dvc plots show`) and plots/figures/*.png.

Outside DVC, on any predictions file with the documented columns (image_id, label, split,
score; group optional), all outputs go under --out-dir:

    python stages/evaluate.py --predictions other/predictions.csv --out-dir reports/other

The operating point is chosen on the validation split; a file holding only a test split
falls back to the paper-style threshold chosen on the test split (a warning, and
settings.operating_point_chosen_on = "test" in the metrics). See deepcovid/evaluation/evaluate.py.
"""

import argparse
import logging
from pathlib import Path

from deepcovid import runner
from deepcovid.evaluation.evaluate import EvalConfig, evaluate
from deepcovid.evaluation.predictions import load_predictions
from deepcovid.evaluation.report import OutputPaths, write_outputs
from deepcovid.params import load_params

log = logging.getLogger("evaluate")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=None,
                    help="parameter file (default params.yaml; when absent, built-in defaults are used)")
    ap.add_argument("--predictions", default="data/predictions.csv")
    ap.add_argument("--out-dir", default=".", help="root of the metrics/ and plots/ outputs (default: .)")
    args = ap.parse_args()

    if args.params is None and not Path("params.yaml").is_file():
        log.info("no params.yaml here: using the built-in evaluate defaults")
        cfg = EvalConfig.defaults()
    else:
        cfg = EvalConfig.from_params(load_params(args.params or "params.yaml"))
    table = load_predictions(args.predictions)
    result = evaluate(table, cfg, name=args.predictions)
    paths = OutputPaths.under(args.out_dir)
    write_outputs(result, paths)
    log.info("wrote %s, %s and %s", paths.metrics, paths.metrics.parent / "thresholds.csv", paths.figures)


if __name__ == "__main__":
    runner.run(main, "evaluate")
