"""How much JPEG damage the image reader catches, on real X-rays, and what the check costs.

    python bench/jpeg_corruption.py [--data ../shared/data] [--images 200] [--seeds 3]

For each of the first ``--images`` JPEG files of the Cohen copy and ``--seeds`` seeds, two kinds of
damage: 400 bytes overwritten with random bytes in the middle of the file (the hostile-input
issue's probe) and three random bits flipped in the last two thirds. Counts, per kind, how many
damaged files Pillow alone refuses, how many the reader (Pillow plus libjpeg-turbo's strict
check, :func:`deepcovid.data.images.read_image`) refuses, and how many decode without a word.
Last line: the time of reading the undamaged files with the check against Pillow alone (ratio,
measured side by side in one run; absolute times depend on the machine).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deepcovid.data.images import ImageReadError, read_image, to_rgb8  # noqa: E402


def _pillow_accepts(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
        return True
    except Exception:
        return False


def _damage(data: bytes, kind: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    if kind == "400 bytes overwritten":
        mid = len(out) // 2
        out[mid : mid + 400] = rng.integers(0, 256, 400, dtype=np.uint8).tobytes()
    else:
        for k in rng.integers(len(out) // 3, len(out) - 10, 3):
            out[int(k)] ^= 1 << int(rng.integers(0, 8))
    return bytes(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    paths = [p for p in sorted((Path(args.data) / "cohen" / "images").iterdir()) if p.read_bytes()[:2] == b"\xff\xd8"][
        : args.images
    ]
    if not paths:
        sys.exit(f"no JPEG files under {args.data}/cohen/images")
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "damaged.jpg"
        for kind in ("400 bytes overwritten", "3 bits flipped"):
            n = pillow = reader = 0
            for path in paths:
                for seed in range(args.seeds):
                    data = _damage(path.read_bytes(), kind, seed)
                    target.write_bytes(data)
                    n += 1
                    pillow += not _pillow_accepts(data)
                    try:
                        read_image(target)
                    except ImageReadError:
                        reader += 1
            print(
                f"{kind}: {n} damaged files; Pillow alone refuses {pillow}, the reader {reader}; "
                f"{n - reader} decode without a word"
            )
    best = {"pillow": float("inf"), "reader": float("inf")}
    for _ in range(3):  # alternate, keep each one's fastest
        start = time.perf_counter()
        for path in paths:
            with Image.open(path) as img:
                img.load()
                to_rgb8(img)
        best["pillow"] = min(best["pillow"], time.perf_counter() - start)
        start = time.perf_counter()
        for path in paths:
            read_image(path)
        best["reader"] = min(best["reader"], time.perf_counter() - start)
    print(
        f"reading {len(paths)} undamaged JPEGs: with the check {best['reader']:.2f} s, Pillow alone "
        f"{best['pillow']:.2f} s; ratio {best['reader'] / best['pillow']:.2f}"
    )


if __name__ == "__main__":
    main()
