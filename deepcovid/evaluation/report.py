"""Where the evaluate stage writes (:class:`OutputPaths`) and the writing itself (:func:`write_outputs`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from deepcovid import files
from deepcovid.errors import InputError
from deepcovid.evaluation import figures
from deepcovid.evaluation.evaluate import EvalResult


@dataclass(frozen=True)
class OutputPaths:
    metrics: Path
    details: Path
    thresholds: Path
    roc: Path
    pr: Path
    confusion: Path
    scores: Path
    calibration: Path
    figures: Path

    @classmethod
    def into(cls, metrics: str | Path, plots: str | Path) -> OutputPaths:
        """The evaluate stage's files in the folders ``metrics`` and ``plots``."""
        m, p = Path(metrics), Path(plots)
        return cls(
            metrics=m / "evaluate.json",
            details=m / "evaluate_details.json",
            thresholds=m / "thresholds.csv",
            roc=p / "roc.csv",
            pr=p / "pr.csv",
            confusion=p / "confusion.csv",
            scores=p / "scores.csv",
            calibration=p / "calibration.csv",
            figures=p / "figures",
        )

    @classmethod
    def under(cls, root: str | Path = ".") -> OutputPaths:
        return cls.into(Path(root) / "metrics", Path(root) / "plots")


def check_finite_frame(frame: pd.DataFrame, what: str) -> None:
    numeric = frame.select_dtypes(include=[np.number])
    if numeric.size and not np.isfinite(numeric.to_numpy(dtype=float)).all():
        raise InputError(f"internal error: {what} holds NaN or infinite values")


def write_outputs(result: EvalResult, paths: OutputPaths) -> None:
    """Write the metrics, plot data and figures (each file atomically; the figures folder as a whole)."""
    tables = {
        paths.thresholds: result.thresholds,
        paths.roc: result.roc,
        paths.pr: result.pr,
        paths.confusion: result.confusion,
        paths.scores: result.scores,
        paths.calibration: result.calibration,
    }
    for path, frame in tables.items():
        check_finite_frame(frame, str(path))
    with files.atomic_path(paths.figures) as tmp:
        tmp.mkdir()
        figures.evaluation_figures(result, tmp)
    for path, frame in tables.items():
        files.write_csv(path, frame)
    files.write_json(paths.details, result.details)
    files.write_json(paths.metrics, result.metrics)
