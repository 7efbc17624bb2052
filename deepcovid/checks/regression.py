"""Regression check (``deepcovid check-regression``): is a metric of metrics/evaluate.json worse than
the committed baseline by more than its tolerance (params.yaml, section ``regression``)?

``tolerances`` maps metrics (nested as in the metrics file, or dotted like ``test.auc``) to the
largest allowed drop; ``lower_is_better`` lists the metrics whose increase is the regression.
A metric missing from either file fails too. Plain Python (json, PyYAML): starts fast.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from deepcovid import files
from deepcovid.config import ConfigError, Regression, flatten
from deepcovid.errors import InputError, MissingInputError

log = logging.getLogger("check_regression")
HEADER = ("metric", "baseline", "current", "drop", "tolerance", "status")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def regression_rows(current: dict, baseline: dict, tolerances: dict, lower_is_better=()) -> list[dict]:
    """One row per toleranced metric: ``metric, baseline, current, drop, tolerance, status``.

    ``drop`` is how much worse the current value is: ``baseline - current``, or ``current -
    baseline`` for the metrics in ``lower_is_better``; negative means better. Status ``FAIL``
    when ``drop > tolerance``, ``MISSING`` when the metric is absent (or not a number) in either file.
    """
    cur, base, tol = flatten(current), flatten(baseline), flatten(tolerances)
    lower = set(lower_is_better or ())
    unknown = lower - set(tol)
    if unknown:
        raise ConfigError(
            f"parameter regression.lower_is_better names metrics without a tolerance: {', '.join(sorted(unknown))}"
        )
    rows = []
    for metric, t in tol.items():
        if not _number(t) or t < 0:
            raise ConfigError(f"parameter regression.tolerances.{metric} must be a number >= 0, got {t!r}")
        b, c = base.get(metric), cur.get(metric)
        row = {
            "metric": metric,
            "baseline": b,
            "current": c,
            "drop": None,
            "tolerance": float(t),
            "lower_is_better": metric in lower,
            "status": "MISSING",
        }
        if _number(b) and _number(c):
            drop = (c - b) if metric in lower else (b - c)
            row.update(drop=float(drop), status="FAIL" if drop > t + 1e-12 else "ok")
        rows.append(row)
    return rows


def format_rows(rows: list[dict]) -> str:
    """An aligned plain-text table (metric, baseline, current, drop, tolerance, status)."""

    def cell(v, signed=False):
        if v is None:
            return "-"
        if not _number(v):
            return repr(v)
        return f"{v:+.4f}" if signed else f"{v:.4f}"

    body = [
        [
            r["metric"] + (" (lower is better)" if r["lower_is_better"] else ""),
            cell(r["baseline"]),
            cell(r["current"]),
            cell(r["drop"], signed=True),
            cell(r["tolerance"]),
            r["status"],
        ]
        for r in rows
    ]
    widths = [max([len(h)] + [len(b[i]) for b in body]) for i, h in enumerate(HEADER)]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(HEADER), line(["-" * w for w in widths])] + [line(b) for b in body])


def read_metrics(path: Path, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        hint = " (create it with --write-baseline)" if what == "baseline" else " (run: dvc repro evaluate)"
        raise MissingInputError(f"{path}: {what} metrics file not found{hint}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data


def check_regression(
    cfg: Regression, metrics: str | Path, baseline: str | Path | None = None, write_baseline: bool = False
) -> int:
    """Print the comparison table; 0 when no metric regressed, 1 otherwise.

    ``cfg``: the ``regression`` section; ``baseline`` defaults to its ``baseline``; ``write_baseline`` copies the
    current metrics there instead of comparing.
    """
    baseline = Path(baseline or cfg.baseline)
    current = read_metrics(Path(metrics), "current")
    if write_baseline:
        files.write_json(baseline, current)
        log.info("wrote baseline %s from %s", baseline, metrics)
        return 0
    rows = regression_rows(current, read_metrics(baseline, "baseline"), cfg.flat_tolerances(), cfg.lower_is_better)
    print(f"regression check: {metrics} against {baseline}")
    print(format_rows(rows))
    failed = [r["metric"] for r in rows if r["status"] != "ok"]
    if failed:
        print(f"REGRESSION: {', '.join(failed)}: worse than the baseline by more than the tolerance, or missing")
        return 1
    print("ok: no metric is worse than the baseline by more than its tolerance")
    return 0
