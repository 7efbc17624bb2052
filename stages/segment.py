"""Stage segment: a lung segmenter (MONAI BasicUNet) learnt from the sources' lung masks on the
train / validation patients, its Dice on the held-out ones, and a lung mask for every manifest image.

    python stages/segment.py data/raw data/manifest.csv data/lungs models/segment metrics/segment.json plots/segment
"""

import argparse

from deepcovid import files, runner
from deepcovid.config import load_config
from deepcovid.segment.run import run_segment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, what in [
        ("raw", "raw data folder (fetch stage)"),
        ("manifest", "manifest.csv (split stage)"),
        ("out", "output folder: masks/, index.csv"),
        ("models", "output folder: segment.pt, segment.json"),
        ("metrics", "output: held-out Dice (JSON)"),
        ("plots", "output: figure folder"),
    ]:
        ap.add_argument(name, help=what)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    config = load_config(args.params)
    with files.atomic_path(args.out) as out, files.atomic_path(args.models) as models:
        run_segment(
            config.segment,
            seed=config.seed,
            max_pixels=config.preprocess.max_pixels,
            raw=args.raw,
            manifest=args.manifest,
            out=out,
            models=models,
            metrics=args.metrics,
            plots=args.plots,
        )


if __name__ == "__main__":
    runner.run(main, "segment")
