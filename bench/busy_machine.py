"""The duplicates stage's hashing on a busy machine: with one BLAS thread per worker (as the
stage runs) against OpenBLAS's default threads, side by side.

    python bench/busy_machine.py [--data ../shared/data] [--images 400] [--copies 2]

Hashes the first ``--images`` files of the Cohen copy with ``deepcovid.data.duplicates.hash_files``
(2 worker threads) in ``--copies`` processes at once, as when two pipelines or the test suite's
two workers share the cores; once as the stage runs (``threadpool_limits(1, "blas")`` around its
worker threads) and once with that limit removed; then once alone, limited. Prints each
setting's slowest process and the ratios. The hashes are the same in every setting (checked).
Absolute numbers depend on the machine and its load; the ratios are measured in one run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import contextlib, hashlib, sys, time
from pathlib import Path
from deepcovid.data import duplicates as D
if sys.argv[3] == "unlimited":
    D.threadpool_limits = lambda *a, **k: contextlib.nullcontext()
paths = sorted(Path(sys.argv[1]).glob("*"))[: int(sys.argv[2])]
start = time.perf_counter()
hashes, errors, mean = D.hash_files(paths, 2)
print(time.perf_counter() - start, hashlib.sha256(hashes.tobytes()).hexdigest())
"""


def run(images: Path, n: int, mode: str, copies: int) -> tuple[float, set[str]]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(images), str(n), mode],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(copies)
    ]
    results = [p.communicate()[0].split() for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a hashing process failed in mode {mode}")
    return max(float(r[0]) for r in results), {r[1] for r in results}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--copies", type=int, default=2)
    args = ap.parse_args()
    images = args.data / "cohen" / "images"
    if not images.is_dir():
        raise SystemExit(f"{images}: no such folder (--data)")
    limited, h1 = run(images, args.images, "limited", args.copies)
    unlimited, h2 = run(images, args.images, "unlimited", args.copies)
    alone, h3 = run(images, args.images, "limited", 1)
    if len(h1 | h2 | h3) != 1:
        raise SystemExit("the hashes differ between settings")
    print(f"hashing {args.images} real X-rays, 2 worker threads, {args.copies} processes at once:")
    print(f"  one BLAS thread per worker (the stage): {limited:6.1f} s")
    print(f"  OpenBLAS's default threads:            {unlimited:6.1f} s")
    print(f"  one process alone, one BLAS thread:     {alone:6.1f} s")
    print(f"  default threads / one BLAS thread: {unlimited / limited:.1f}x slower on the busy machine")


if __name__ == "__main__":
    main()
