"""Stage split: patient-level train / val / test split; the manifest every later stage reads.

    python stages/split.py data/raw data/filtered/positives.csv data/negatives/negatives.csv \
        data/duplicates.csv data/manifest.csv metrics/data.json
"""

import argparse

from deepcovid import files, runner
from deepcovid.config import load_config
from deepcovid.data.split import split_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("raw", help="raw data folder (fetch stage)")
    ap.add_argument("positives", help="positives.csv (filter stage)")
    ap.add_argument("negatives", help="negatives.csv (negatives stage)")
    ap.add_argument("duplicates", help="duplicates.csv (duplicates stage)")
    ap.add_argument("manifest", help="output: the manifest (CSV)")
    ap.add_argument("report", help="output: counts per split (JSON metrics)")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    cfg = load_config(args.params)
    manifest, report = split_dataset(
        args.raw,
        args.positives,
        args.negatives,
        args.duplicates,
        cfg.split.covid_test_images,
        cfg.split.val_fraction,
        cfg.seed,
        cfg.split.exclude_negatives_of_covid_patients,
        cfg.split.external_sources,
    )
    files.write_csv(args.manifest, manifest)
    files.write_json(args.report, {"dataset": cfg.dataset, **report})


if __name__ == "__main__":
    runner.run(main, "split")
