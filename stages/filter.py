"""Stage filter: keep frontal COVID-19 X-rays not excluded by the radiologist list."""

import argparse
import logging

import pandas as pd

from deepcovid import runner

from deepcovid import files
from deepcovid.data.positives import filter_positives, read_exclusions
from deepcovid.data.metadata import read_cohen_style
from deepcovid.params import dataset_sources, get, load_params, validate_data_params
from deepcovid.data.sources import read_sources, source_root

log = logging.getLogger("filter")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--raw", default="data/raw")
    ap.add_argument("--out", default="data/filtered")
    args = ap.parse_args()

    params = load_params(args.params)
    validate_data_params(params)
    exclusions = read_exclusions(get(params, "filter.exclusions"))
    sources = read_sources(args.raw)
    kept, reports = [], []
    for name in dataset_sources(params)["positives"]:
        root = source_root(sources, name, args.raw)
        meta = read_cohen_style(root / "metadata.csv", name)
        rows, report = filter_positives(meta, get(params, "filter.frontal_views"), exclusions, root=root)
        log.info("%s: %d rows, %d COVID-19 X-ray rows -> kept %d images of %d patients; removed %s",
                 name, report["rows"], report["covid_xray_rows"], report["kept"], report["kept_patients"],
                 ", ".join(f"{k}: {v}" for k, v in report["removed"].items()))
        kept.append(rows)
        reports.append(report)
    with files.atomic_path(args.out) as tmp:
        tmp.mkdir()
        files.write_csv(tmp / "positives.csv", pd.concat(kept, ignore_index=True))
        files.write_json(tmp / "report.json", {"sources": reports})


if __name__ == "__main__":
    runner.run(main, "filter")
