"""Check that a rebuild reproduced the committed results (what .ci/run does after `make repro`).

    cp dvc.lock /tmp/committed.lock; cp metrics/evaluate.json metrics/train.json /tmp/committed/
    dvc repro
    python stages/check_reproduction.py --committed-lock /tmp/committed.lock --committed-metrics /tmp/committed

- data stages (params.yaml `reproduction.exact_stages`): every output hash in the rebuilt
  dvc.lock must equal the committed one, byte for byte, on any CPU;
- model stages: every number in metrics/evaluate.json and metrics/train.json must agree with
  the committed value within `reproduction.tolerances` (measured across instruction sets and
  thread counts; see README, "Reproducibility").

Prints what it compared; exit 0 when everything agrees, 1 when something differs, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import yaml

from deepcovid import runner
from deepcovid.params import ParamsError, get, load_params
from deepcovid.checks.reproduction import compare_metrics, compare_outputs

log = logging.getLogger("check_reproduction")
METRIC_FILES = ("evaluate.json", "train.json")


def _load(path: Path, kind: str):
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {kind} not found")
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: not a valid {kind} ({type(exc).__name__})") from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--committed-lock", required=True, help="the dvc.lock as committed")
    ap.add_argument("--lock", default="dvc.lock", help="the dvc.lock after the rebuild")
    ap.add_argument("--committed-metrics", required=True, help="folder with the committed evaluate.json, train.json")
    ap.add_argument("--metrics", default="metrics", help="folder with the rebuilt metrics")
    args = ap.parse_args()

    params = load_params(args.params)
    stages = get(params, "reproduction.exact_stages")
    tolerances = get(params, "reproduction.tolerances")
    if not isinstance(stages, list) or not stages:
        raise ParamsError("parameter reproduction.exact_stages must be a non-empty list of stage names")
    if not isinstance(tolerances, dict) or not tolerances:
        raise ParamsError("parameter reproduction.tolerances must map metric patterns to tolerances")

    failed = False
    problems = compare_outputs(_load(Path(args.committed_lock), "dvc.lock"), _load(Path(args.lock), "dvc.lock"),
                               stages)
    print(f"data stages ({', '.join(stages)}): outputs {'DIFFER' if problems else 'identical to the committed dvc.lock'}")
    for line in problems:
        print(f"  {line}")
    failed |= bool(problems)

    for name in METRIC_FILES:
        rows = compare_metrics(_load(Path(args.committed_metrics) / name, "metrics file"),
                               _load(Path(args.metrics) / name, "metrics file"), tolerances)
        bad = [r for r in rows if r["status"] != "ok"]
        worst = max((r["difference"] / r["tolerance"] for r in rows
                     if r["difference"] is not None and r["tolerance"]), default=0.0)
        print(f"metrics/{name}: {len(rows) - len(bad)}/{len(rows)} within tolerance "
              f"(largest difference {worst:.2f} of its tolerance)")
        for r in bad:
            print(f"  {r['metric']}: committed {r['committed']}, current {r['current']}, "
                  f"difference {r['difference']}, tolerance {r['tolerance']}: {r['status']}")
        failed |= bool(bad)
    if failed:
        print("NOT REPRODUCED: see the lines above")
        sys.exit(1)
    print("ok: data stages byte-identical, model metrics within the measured tolerance")


if __name__ == "__main__":
    runner.run(main, "check_reproduction")
