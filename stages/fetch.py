"""Stage fetch: bring the raw sources of the chosen dataset into data/raw.

synthetic: generate Cohen-style and CheXpert-style data; paper: download Cohen at the pinned
commit and check the user's CheXpert path; public: download Cohen and Actualmed.

Only the parameters of the chosen dataset are read: for synthetic, seed and synthetic.*; for
paper and public, their sources (datasets.<dataset>) and fetch.<source> of each. --write-params
FILE writes that selection and stops: the fetch_params stage of dvc.yaml does, and fetch depends
on the file, so DVC re-runs fetch exactly when a parameter of its dataset changes.
"""

import argparse
import logging
from pathlib import Path

from deepcovid import runner

from deepcovid import files
from deepcovid.data.metadata import chexpert_root
from deepcovid.params import ParamsError, get, load_params, needed_sources, validate_data_params

log = logging.getLogger("fetch")


def fetch_params(params: dict) -> dict:
    """The parameters fetch reads for the chosen dataset, and no other."""
    dataset = params["dataset"]
    if dataset == "synthetic":
        return {"dataset": dataset, "seed": int(params["seed"]), "synthetic": get(params, "synthetic")}
    sources = needed_sources(params)
    settings = {name: get(params, f"fetch.{name}") for name in sources if name != "chexpert"}
    if "chexpert" in sources:
        settings["chexpert"] = {"path": get(params, "fetch.chexpert.path", None)}
    return {"dataset": dataset, "sources": sources, "fetch": settings}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="data/raw")
    ap.add_argument("--write-params", metavar="FILE",
                    help="only write the parameters this dataset's fetch reads to FILE (JSON)")
    args = ap.parse_args()

    params = load_params(args.params)
    validate_data_params(params)
    params = fetch_params(params)  # from here on, only what the chosen dataset uses
    if args.write_params:
        files.write_json(args.write_params, params)
        return
    dataset, sources = params["dataset"], params.get("sources", [])
    roots, records = {}, {}

    # Check what needs no download first, so a missing CheXpert stops at once.
    if "chexpert" in sources:
        path = params["fetch"]["chexpert"]["path"]
        if not path:
            raise ParamsError(
                f"dataset={dataset} needs CheXpert: set parameter fetch.chexpert.path to your "
                "CheXpert-v1.0-small (or CheXpert-v1.0) folder"
            )
        if not Path(path).exists():
            raise ParamsError(f"parameter fetch.chexpert.path: {path} does not exist")
        roots["chexpert"] = str(chexpert_root(path).resolve())
        records["chexpert"] = {"name": "chexpert", "method": "user_path", "path": roots["chexpert"]}

    with files.atomic_path(args.out) as tmp:
        tmp.mkdir()
        if dataset == "synthetic":
            from deepcovid import synthetic

            seed = params["seed"]
            records["cohen"] = synthetic.generate_cohen(tmp / "cohen", get(params, "synthetic.cohen"), seed)
            records["chexpert"] = synthetic.generate_chexpert(tmp / "chexpert", get(params, "synthetic.chexpert"), seed + 1)
            roots["cohen"] = "cohen"
            roots["chexpert"] = "chexpert/CheXpert-v1.0-small"
        else:
            from deepcovid.data.fetch import fetch_source

            for name in sources:
                if name == "chexpert":
                    continue
                records[name] = fetch_source(name, params["fetch"][name], tmp / name, log=log.info)
                roots[name] = name
        files.write_json(tmp / "sources.json", {"dataset": dataset, "roots": roots, "records": records})
    log.info("dataset %s: fetched %s into %s", dataset, ", ".join(sorted(roots)), args.out)


if __name__ == "__main__":
    runner.run(main, "fetch")
