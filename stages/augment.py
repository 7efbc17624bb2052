"""Stage augment: seeded augmented copies of each COVID-19 training image (the paper: 5).

python stages/augment.py data/manifest.csv data/preprocessed data/augmented
"""

import argparse

from deepcovid import files, runner
from deepcovid.config import load_config
from deepcovid.data.augment import augment_positives


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifest", help="manifest.csv (split stage)")
    ap.add_argument("cache", help="preprocessed image folder (preprocess stage)")
    ap.add_argument("out", help="output folder: images/, index.csv")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    cfg = load_config(args.params)
    with files.atomic_path(args.out) as tmp:
        augment_positives(args.manifest, args.cache, tmp, cfg.augment, cfg.seed)


if __name__ == "__main__":
    runner.run(main, "augment")
