"""Stage featurize: backbone features of every image, computed once (train.mode last_layer).

python stages/featurize.py data/manifest.csv data/preprocessed data/augmented data/features
"""

import argparse

from deepcovid import runner
from deepcovid.config import load_config
from deepcovid.model.features import featurize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifest", help="manifest.csv (split stage)")
    ap.add_argument("cache", help="preprocessed image folder")
    ap.add_argument("augmented", help="augmented image folder")
    ap.add_argument("out", help="output folder: features.npy, index.csv, meta.json")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    featurize(
        load_config(args.params), manifest=args.manifest, cache=args.cache, augmented=args.augmented, out=args.out
    )


if __name__ == "__main__":
    runner.run(main, "featurize")
