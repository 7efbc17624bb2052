"""Did a rebuild reproduce the committed results? Exact for the data stages, within a
measured tolerance for the model stages.

The data stages (fetch ... augment) use only exactly rounded or integer arithmetic for every
byte they write (:mod:`deepcovid.portable`), so their outputs must hash the same on any CPU:
they are compared through the output hashes of two ``dvc.lock`` files. The model stages run
oneDNN / ATen kernels whose results depend on the instruction set and the thread count in the
last bits; they are bitwise reproducible on one machine with one thread count, and across
machines their metrics must agree within the tolerances of ``params.yaml`` (section
``reproduction``), which were measured by rerunning them under ``ONEDNN_MAX_CPU_ISA``,
``ATEN_CPU_CAPABILITY`` and thread-count emulation (see README, "Reproducibility").
"""

from __future__ import annotations

import fnmatch
import math

from deepcovid.params import flatten

__all__ = ["lock_outputs", "compare_outputs", "compare_metrics", "flatten_numbers"]


def lock_outputs(lock: dict) -> dict[str, dict[str, str]]:
    """{stage: {output path: hash}} from a parsed dvc.lock (schema 2.0)."""
    stages = lock.get("stages") if isinstance(lock, dict) else None
    if not isinstance(stages, dict):
        raise ValueError("not a dvc.lock file (no 'stages' mapping)")
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
                problems.append(f"{stage}: {path} differs (committed {a[stage].get(path)}, rebuilt {b[stage].get(path)})")
    return problems


def flatten_numbers(obj: dict) -> dict[str, float]:
    """Dotted keys of every numeric leaf (bools excluded) of a nested dict."""
    return {k: float(v) for k, v in flatten(obj).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


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
        row = {"metric": key, "committed": a.get(key), "current": b.get(key), "difference": None,
               "tolerance": None if tol == "none" else float(tol)}
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
