"""Stage duplicates: near-duplicate radiographs among the positives and negatives; the split keeps
each group on one side.

    python stages/duplicates.py data/raw data/filtered/positives.csv data/negatives/negatives.csv \
        data/duplicates.csv
"""

import argparse

from deepcovid import files, runner
from deepcovid.config import load_config
from deepcovid.data.duplicates import find_duplicates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("raw", help="raw data folder (fetch stage)")
    ap.add_argument("positives", help="positives.csv (filter stage)")
    ap.add_argument("negatives", help="negatives.csv (negatives stage)")
    ap.add_argument("out", help="output: one row per image in a group of near-duplicates (CSV)")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    params = load_config(args.params)
    cfg = params.duplicates
    groups, _ = find_duplicates(
        args.raw,
        args.positives,
        args.negatives,
        cfg.max_distance,
        cfg.min_correlation,
        cfg.workers,
        max_pixels=params.preprocess.max_pixels,
    )
    files.write_csv(args.out, groups)


if __name__ == "__main__":
    runner.run(main, "duplicates")
