"""Stage negatives: select the non-COVID images and propose their pool (train or test)."""

import argparse
import logging

import pandas as pd

from deepcovid import runner

from deepcovid import files
from deepcovid.data.metadata import read_chexpert, read_cohen_style
from deepcovid.data.negatives import assign_pools_by_patient, chexpert_single_label, public_negatives, sample_chexpert
from deepcovid.params import dataset_sources, get, load_params, validate_data_params
from deepcovid.data.sources import read_sources, source_root

log = logging.getLogger("negatives")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--raw", default="data/raw")
    ap.add_argument("--out", default="data/negatives")
    args = ap.parse_args()

    params = load_params(args.params)
    validate_data_params(params)
    dataset, seed = params["dataset"], int(params["seed"])
    sources = read_sources(args.raw)
    frames, report = [], {}
    names = dataset_sources(params)["negatives"]
    if "chexpert" in names:
        table = read_chexpert(source_root(sources, "chexpert", args.raw), get(params, "negatives.use_valid_csv"))
        candidates = chexpert_single_label(table)
        counts = get(params, f"negatives.counts.{dataset if dataset in ('paper', 'synthetic') else 'paper'}")
        chosen, per_category = sample_chexpert(candidates, counts, seed)
        report["chexpert"] = {"rows": int(len(table)), "frontal_single_label": int(len(candidates)),
                              "categories": per_category}
        frames.append(chosen)
    cohen_style = [n for n in names if n != "chexpert"]
    if cohen_style:
        metas = [read_cohen_style(source_root(sources, n, args.raw) / "metadata.csv", n) for n in cohen_style]
        chosen, rep = public_negatives(metas, get(params, "filter.frontal_views"))
        chosen = assign_pools_by_patient(chosen, get(params, "negatives.public_test_fraction"), seed)
        report.update(rep)
        frames.append(chosen)
    negatives = pd.concat(frames, ignore_index=True)
    summary = negatives.groupby(["pool", "group"]).size().unstack(fill_value=0)
    log.info("selected %d negatives:\n%s", len(negatives), summary.to_string())
    report["selected"] = {pool: {g: int(v) for g, v in row.items()} for pool, row in summary.iterrows()}
    with files.atomic_path(args.out) as tmp:
        tmp.mkdir()
        files.write_csv(tmp / "negatives.csv", negatives)
        files.write_json(tmp / "report.json", report)


if __name__ == "__main__":
    runner.run(main, "negatives")
