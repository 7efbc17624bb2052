"""Did a rebuild reproduce the committed results (``deepcovid check-reproduction``)?

Data stages: their dvc.lock output hashes must be identical (exact arithmetic, any CPU). Model
stages: their metrics must agree within ``params.yaml`` ``reproduction.tolerances``, measured
across instruction sets and thread counts (bench/cross_isa.py, docs/reproducibility.md)."""

from __future__ import annotations

import fnmatch
import json
import math
from pathlib import Path

import yaml

from deepcovid.config import Reproduction, flatten
from deepcovid.errors import InputError, MissingInputError

METRIC_FILES = ("evaluate.json", "train.json", "explain.json", "audit.json", "repeats.json")


def lock_outputs(lock: dict) -> dict[str, dict[str, str]]:
    """{stage: {output path: hash}} from a parsed dvc.lock (schema 2.0)."""
    stages = lock.get("stages") if isinstance(lock, dict) else None
    if not isinstance(stages, dict):
        raise InputError("not a dvc.lock file (no 'stages' mapping)")
    out = {}
    for name, stage in stages.items():
        entries = {}
        for o in stage.get("outs", []) or []:
            digest = o.get("md5") or o.get("hash") or o.get("etag") or ""
            entries[o["path"]] = f"{digest}:{o.get('size', '')}:{o.get('nfiles', '')}"
        out[name] = entries
    return out


def compare_outputs(committed: dict, rebuilt: dict, stages: list[str]) -> list[str]:
    """Differences between the outputs of ``stages`` in two parsed dvc.lock files, one line each."""
    a, b = lock_outputs(committed), lock_outputs(rebuilt)
    problems = []
    for stage in stages:
        if stage not in a:
            problems.append(f"{stage}: not in the committed dvc.lock")
            continue
        if stage not in b:
            problems.append(f"{stage}: not in the rebuilt dvc.lock")
            continue
        for path in sorted(set(a[stage]) | set(b[stage])):
            if a[stage].get(path) != b[stage].get(path):
                problems.append(
                    f"{stage}: {path} differs (committed {a[stage].get(path)}, rebuilt {b[stage].get(path)})"
                )
    return problems


def flatten_numbers(obj: dict) -> dict[str, float]:
    """Dotted keys of every numeric leaf (bools excluded) of a nested dict."""
    return {k: float(v) for k, v in flatten(obj).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def compare_metrics(committed: dict, current: dict, tolerances: dict[str, float | None]) -> list[dict]:
    """One row per numeric metric of either file: ``metric, committed, current, difference,
    tolerance, status``. ``tolerances`` maps fnmatch patterns of dotted keys to the largest
    allowed absolute difference, or None for keys that describe the run rather than the
    result (thread count, instruction set); the longest (most specific) matching pattern applies. Status is
    ``ok``, ``FAIL`` (difference above tolerance), ``MISSING`` (in one file only) or
    ``NO TOLERANCE`` (no pattern matches: every metric must be covered)."""
    a, b = flatten_numbers(committed), flatten_numbers(current)
    rows = []
    for key in sorted(set(a) | set(b)):
        matching = [p for p in tolerances if fnmatch.fnmatchcase(key, p)]
        tol = tolerances[max(matching, key=len)] if matching else "none"
        if tol is None:
            continue
        row = {
            "metric": key,
            "committed": a.get(key),
            "current": b.get(key),
            "difference": None,
            "tolerance": None if tol == "none" else float(tol),
        }
        if key not in a or key not in b:
            row["status"] = "MISSING"
        elif tol == "none":
            row["status"] = "NO TOLERANCE"
        else:
            va, vb = a[key], b[key]
            diff = 0.0 if (math.isnan(va) and math.isnan(vb)) else abs(va - vb)
            row["difference"] = diff
            row["status"] = "ok" if diff <= float(tol) + 1e-12 else "FAIL"
        rows.append(row)
    return rows


def _load(path: Path, kind: str):
    if not path.is_file():
        raise MissingInputError(f"{path}: {kind} not found")
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: not a valid {kind} ({type(exc).__name__})") from None


def check_reproduction(
    cfg: Reproduction, committed_lock: str | Path, lock: str | Path, committed_metrics: str | Path, metrics: str | Path
) -> int:
    """Print what was compared; 0 when the data stages' outputs and the model metrics agree, 1 otherwise.

    ``cfg``: the ``reproduction`` section (exact_stages, tolerances); the metrics folders
    hold :data:`METRIC_FILES`.
    """
    stages, tolerances = cfg.exact_stages, cfg.tolerances

    problems = compare_outputs(_load(Path(committed_lock), "dvc.lock"), _load(Path(lock), "dvc.lock"), stages)
    print(
        f"data stages ({', '.join(stages)}): outputs {'DIFFER' if problems else 'identical to the committed dvc.lock'}"
    )
    for line in problems:
        print(f"  {line}")
    failed = bool(problems)

    for name in METRIC_FILES:
        rows = compare_metrics(
            _load(Path(committed_metrics) / name, "metrics file"),
            _load(Path(metrics) / name, "metrics file"),
            tolerances,
        )
        bad = [r for r in rows if r["status"] != "ok"]
        worst = max(
            (r["difference"] / r["tolerance"] for r in rows if r["difference"] is not None and r["tolerance"]),
            default=0.0,
        )
        print(
            f"metrics/{name}: {len(rows) - len(bad)}/{len(rows)} within tolerance "
            f"(largest difference {worst:.2f} of its tolerance)"
        )
        for r in bad:
            print(
                f"  {r['metric']}: committed {r['committed']}, current {r['current']}, "
                f"difference {r['difference']}, tolerance {r['tolerance']}: {r['status']}"
            )
        failed |= bool(bad)
    if failed:
        print("NOT REPRODUCED: see the lines above")
        return 1
    print("ok: data stages byte-identical, model metrics within the measured tolerance")
    return 0
