"""Throughput of `deepcovid predict` on real X-rays, and what batching buys, side by side.

    python bench/predict_throughput.py [--data ../shared/data] [--model models] [--images 128]

Scores the first ``--images`` files of the Cohen copy (JPEG and PNG of many sizes) and the same
pixels written as 16-bit DICOM files, with the committed model, at batch 1, 8 (the default) and
32, alternating two rounds and keeping each setting's fastest. Prints images per second
(decoding, preparation and the network together) and the ratios: batch 8 against 1 and 32,
DICOM against JPEG/PNG.
Absolute numbers depend on the machine and its load; the ratios are measured in one run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from deepcovid.model.predict import collect_files, predict_files  # noqa: E402
from dicom_files import write_dicom  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--model", default="models")
    ap.add_argument("--images", type=int, default=128)
    args = ap.parse_args()
    import torch

    files = collect_files([Path(args.data) / "cohen" / "images"])[: args.images]
    with tempfile.TemporaryDirectory() as tmp:
        dicoms = []
        for i, f in enumerate(files):
            pixels = np.asarray(Image.open(f).convert("L"), dtype=np.uint16) * 257
            dicoms.append(str(write_dicom(Path(tmp) / f"{i:04d}.dcm", pixels, bits_stored=16)))
        best: dict[tuple[str, int], float] = {}
        for _ in range(2):
            for kind, paths in (("jpeg/png", files), ("dicom", dicoms)):
                for batch in (1, 8, 32):
                    start = time.perf_counter()
                    table = predict_files(paths, models=args.model, threshold=0.5, batch_size=batch)
                    seconds = time.perf_counter() - start
                    assert (table["error"] == "").all(), table.loc[table["error"] != "", "error"].iloc[0]
                    best[kind, batch] = min(best.get((kind, batch), np.inf), seconds)
    n = len(files)
    print(f"{n} real X-rays, {torch.get_num_threads()} torch threads, model {args.model}")
    for (kind, batch), seconds in sorted(best.items()):
        print(f"  {kind:9s} batch {batch:2d}: {n / seconds:6.1f} images/s ({seconds:.2f} s)")
    for other in (1, 32):
        print(f"batch 8 against batch {other} (jpeg/png): {best['jpeg/png', other] / best['jpeg/png', 8]:.2f}x as fast")
    print(f"dicom against jpeg/png (batch 8): {best['dicom', 8] / best['jpeg/png', 8]:.2f}x the time")


if __name__ == "__main__":
    main()
