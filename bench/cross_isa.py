"""Measure how much the model stages' results move across instruction sets and thread counts.

Runs featurize, train and evaluate of the current workspace (the data stages must have been
run: `dvc repro augment`) in scratch copies, once as is and once per emulated CPU:

    as-is             this machine's best kernels, torch's default thread count
    avx2              ONEDNN_MAX_CPU_ISA=AVX2, ATEN_CPU_CAPABILITY=avx2 (an AVX2-only machine)
    baseline          ONEDNN_MAX_CPU_ISA=SSE41, ATEN_CPU_CAPABILITY=default, numpy held back
    1-thread          as is, with one thread

and prints, for every metric of metrics/evaluate.json and metrics/train.json, the largest
absolute difference from the as-is run, and the largest difference of any predicted score.
These figures are what `reproduction.tolerances` in params.yaml is set from.

    python bench/cross_isa.py [--variants avx2,baseline,1-thread] [--params params.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from deepcovid.checks.reproduction import flatten_numbers  # noqa: E402

_ONE = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
VARIANTS = {
    "as-is": {},
    "avx2": {
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "ATEN_CPU_CAPABILITY": "avx2",
        "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
    },
    "baseline": {
        "ONEDNN_MAX_CPU_ISA": "SSE41",
        "ATEN_CPU_CAPABILITY": "default",
        "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR",
    },
    "1-thread": _ONE,
}
MODEL_STAGES = ("featurize", "train", "evaluate")


def run_variant(name: str, params: Path, work: Path) -> tuple[dict, pd.DataFrame, float]:
    ws = work / name
    (ws / "data").mkdir(parents=True)
    shutil.copy(params, ws / "params.yaml")
    for part in ("manifest.csv", "preprocessed", "augmented"):
        src = REPO / "data" / part
        (os.symlink(src, ws / "data" / part))
    env = {**os.environ, **VARIANTS[name], "MLFLOW_TRACKING_URI": f"sqlite:///{ws}/mlflow.db"}
    start = time.perf_counter()
    commands = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for stage in MODEL_STAGES:
        script, *args = shlex.split(commands[stage]["cmd"])[1:]  # as dvc.yaml runs it, paths from argv
        subprocess.run(
            [sys.executable, str(REPO / script), *args], cwd=ws, env=env, check=True, capture_output=True, text=True
        )
    seconds = time.perf_counter() - start
    metrics = {f: json.loads((ws / "metrics" / f).read_text()) for f in ("evaluate.json", "train.json")}
    return metrics, pd.read_csv(ws / "data" / "predictions.csv"), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--variants", default="avx2,baseline,1-thread")
    args = ap.parse_args()
    if not (REPO / "data" / "augmented" / "index.csv").is_file():
        sys.exit("run the data stages first: dvc repro augment")
    names = ["as-is"] + [v for v in args.variants.split(",") if v]
    with tempfile.TemporaryDirectory() as tmp:
        results = {n: run_variant(n, Path(args.params), Path(tmp)) for n in names}
    ref_metrics, ref_pred, _ = results["as-is"]
    worst: dict[str, float] = {}
    for name in names[1:]:
        metrics, pred, seconds = results[name]
        score_diff = float(np.max(np.abs(pred["score"].to_numpy() - ref_pred["score"].to_numpy())))
        print(f"{name}: max |score difference| {score_diff:.3g}  ({seconds:.0f} s)")
        for f in ref_metrics:
            a, b = flatten_numbers(ref_metrics[f]), flatten_numbers(metrics[f])
            for key in sorted(set(a) & set(b)):
                d = abs(a[key] - b[key])
                worst[f"{f}:{key}"] = max(worst.get(f"{f}:{key}", 0.0), d)
    print("largest difference from the as-is run over the variants (non-zero only):")
    for key, d in sorted(worst.items(), key=lambda kv: -kv[1]):
        if d > 0:
            print(f"  {key}: {d:.3g}")
    print(f"metrics identical in every variant: {sum(1 for d in worst.values() if d == 0)} of {len(worst)}")


if __name__ == "__main__":
    main()
