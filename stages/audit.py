"""Stage audit: can the source or the view be read from the images, does the model beat a
metadata-only baseline, and how does it do per source and per view (the confounder audit).

    python stages/audit.py data/manifest.csv data/features data/preprocessed data/predictions.csv \
        metrics/evaluate.json metrics/audit.json
"""

import argparse

from deepcovid import files, runner
from deepcovid.config import load_config
from deepcovid.evaluation.audit import run_audit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifest", help="manifest CSV (split stage)")
    ap.add_argument("features", help="cached backbone features (featurize stage)")
    ap.add_argument("preprocessed", help="decoded image cache (preprocess stage): the style baseline's statistics")
    ap.add_argument("predictions", help="predictions CSV (train stage)")
    ap.add_argument("evaluation", help="metrics/evaluate.json (its test.threshold is the operating point)")
    ap.add_argument("out", help="output: metrics JSON")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    cfg = load_config(args.params)
    result = run_audit(
        args.manifest,
        args.features,
        args.predictions,
        args.evaluation,
        cfg.audit,
        seed=cfg.seed,
        ci_method=cfg.evaluate.ci_method,
        alpha=cfg.evaluate.alpha,
        preprocessed_dir=args.preprocessed,
    )
    files.write_json(args.out, result)


if __name__ == "__main__":
    runner.run(main, "audit")
