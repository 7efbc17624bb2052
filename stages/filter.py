"""Stage filter: keep frontal COVID-19 X-rays not excluded by the radiologist list.

python stages/filter.py data/raw data/filtered
"""

import argparse

from deepcovid import files, runner
from deepcovid.config import load_config
from deepcovid.data.positives import select_positives


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("raw", help="raw data folder (fetch stage)")
    ap.add_argument("out", help="output folder: positives.csv, report.json")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    cfg = load_config(args.params)
    positives, reports = select_positives(
        args.raw, cfg.sources.positives, cfg.filter.frontal_views, cfg.filter.exclusions
    )
    with files.atomic_path(args.out) as tmp:
        tmp.mkdir()
        files.write_csv(tmp / "positives.csv", positives)
        files.write_json(tmp / "report.json", {"sources": reports})


if __name__ == "__main__":
    runner.run(main, "filter")
