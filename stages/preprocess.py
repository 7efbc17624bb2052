"""Stage preprocess: decode every image once (any mode, 8 or 16 bit) into a square 8-bit RGB cache,
cropped to the lungs or blacked out around them when preprocess.lungs says so (the segment stage's
masks); unreadable files are listed in rejected.csv with the reason.

    python stages/preprocess.py data/raw data/manifest.csv data/lungs data/preprocessed
"""

import argparse

from deepcovid import files, runner
from deepcovid.config import load_config
from deepcovid.data.cache import build_cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("raw", help="raw data folder (fetch stage)")
    ap.add_argument("manifest", help="manifest.csv (split stage)")
    ap.add_argument("lungs", help="lung mask folder (segment stage)")
    ap.add_argument("out", help="output folder: images/, index.csv, rejected.csv, report.json")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    cfg = load_config(args.params).preprocess
    with files.atomic_path(args.out) as tmp:
        build_cache(
            args.raw,
            args.manifest,
            tmp,
            cache_size=cfg.cache_size,
            resize=cfg.resize,
            grayscale=cfg.grayscale,
            workers=cfg.workers,
            max_pixels=cfg.max_pixels,
            lungs=cfg.lungs,
            lung_margin=cfg.lung_margin,
            lungs_dir=args.lungs,
            intensity=cfg.intensity,
        )


if __name__ == "__main__":
    runner.run(main, "preprocess")
