"""Stage negatives: the non-COVID images, each with its pool (train or test).

python stages/negatives.py data/raw data/negatives
"""

import argparse

from deepcovid import files, runner
from deepcovid.config import load_config
from deepcovid.data.negatives import select_negatives


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("raw", help="raw data folder (fetch stage)")
    ap.add_argument("out", help="output folder: negatives.csv, report.json")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    cfg = load_config(args.params)
    negatives, report = select_negatives(
        args.raw, cfg.dataset, cfg.sources.negatives, cfg.negatives, cfg.filter.frontal_views, cfg.seed
    )
    with files.atomic_path(args.out) as tmp:
        tmp.mkdir()
        files.write_csv(tmp / "negatives.csv", negatives)
        files.write_json(tmp / "report.json", report)


if __name__ == "__main__":
    runner.run(main, "negatives")
