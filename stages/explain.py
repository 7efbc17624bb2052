"""Stage explain: occlusion heatmaps (the paper's Fig. 14) of the trained model for chosen test
images, with how much of each map lands on the lungs and lesions, and a randomised-weights check.

    python stages/explain.py models data/manifest.csv data/preprocessed data/predictions.csv \
        metrics/evaluate.json data/raw data/lungs data/explain metrics/explain.json plots/explain
"""

import argparse

from deepcovid import runner
from deepcovid.config import load_config
from deepcovid.explain.explain_run import run_explain


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, what in [
        ("models", "model folder (train stage)"),
        ("manifest", "manifest.csv (split stage)"),
        ("cache", "preprocessed image folder"),
        ("predictions", "scores (train stage)"),
        ("evaluation", "evaluate.json: the operating point"),
        ("raw", "raw sources (annotations)"),
        ("lungs", "lung masks (segment stage): where preprocess.lungs crop cut"),
        ("out", "output: maps and index folder"),
        ("metrics", "output: metrics (JSON)"),
        ("plots", "output: one figure per image (folder)"),
    ]:
        ap.add_argument(name, help=what)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    config = load_config(args.params)
    run_explain(
        config.explain,
        seed=config.seed,
        models=args.models,
        manifest=args.manifest,
        cache=args.cache,
        predictions=args.predictions,
        evaluation=args.evaluation,
        raw=args.raw,
        lungs=args.lungs,
        out=args.out,
        metrics=args.metrics,
        plots=args.plots,
    )


if __name__ == "__main__":
    runner.run(main, "explain")
