"""Stage fetch_params: write the parameters the chosen dataset's fetch reads, and no other.

For synthetic: seed and synthetic.*; for paper and public: their sources' fetch.<source>. The
fetch stage reads only this file, so DVC re-runs it (a download) only when one of those changes.

    python stages/fetch_params.py data/fetch_params.json
"""

import argparse

from deepcovid import files, runner
from deepcovid.config import load_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="the JSON file to write")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    files.write_json(args.out, load_config(args.params).fetch_selection())


if __name__ == "__main__":
    runner.run(main, "fetch_params")
