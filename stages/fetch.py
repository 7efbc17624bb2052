"""Stage fetch: bring the raw sources of the chosen dataset into one folder.

synthetic: generate Cohen-style and CheXpert-style data; paper: download Cohen at the pinned
commit and check your CheXpert path; public: download Cohen and Actualmed. Its parameters are
the file the fetch_params stage writes.

    python stages/fetch.py data/fetch_params.json data/raw
"""

import argparse
import json
import logging

from deepcovid import runner
from deepcovid.data.fetch import fetch_dataset

log = logging.getLogger("fetch")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("selection", help="parameters written by the fetch_params stage")
    ap.add_argument("out", help="raw data folder (replaced atomically)")
    args = ap.parse_args()
    with open(args.selection, encoding="utf-8") as f:
        selection = json.load(f)
    roots = fetch_dataset(selection, args.out, log=log.info)
    log.info("dataset %s: fetched %s into %s", selection["dataset"], ", ".join(sorted(roots)), args.out)


if __name__ == "__main__":
    runner.run(main, "fetch")
