"""Stage repeats: retrain the last layer on K new patient-grouped splits and report the spread of
test AUC, sensitivity and specificity beside the pipeline's single-split intervals.

    python stages/repeats.py data/manifest.csv data/features metrics/evaluate.json \
        metrics/repeats.json metrics/repeats.csv
"""

import argparse

from deepcovid import files, runner
from deepcovid.config import load_config
from deepcovid.evaluation.repeats import run_repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifest", help="manifest CSV (split stage)")
    ap.add_argument("features", help="cached backbone features (featurize stage)")
    ap.add_argument("evaluation", help="metrics/evaluate.json (the single split's intervals, shown beside)")
    ap.add_argument("out", help="output: metrics JSON")
    ap.add_argument("table", help="output: one row per split (CSV)")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    cfg = load_config(args.params)
    summary, table = run_repeats(args.manifest, args.features, args.evaluation, cfg)
    files.write_csv(args.table, table)
    files.write_json(args.out, summary)


if __name__ == "__main__":
    runner.run(main, "repeats")
