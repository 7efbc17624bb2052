"""Reading and checking a predictions table (``data/predictions.csv``, written by the train stage).

One row per scored image. Required columns: ``image_id`` (unique per split; compare pairs models
on it), ``label`` (1 = COVID-19, 0 = not), ``split`` (``val`` / ``test``; other splits are
ignored), ``score`` (predicted COVID-19 probability in [0, 1]). Optional: ``group`` (``covid`` /
``normal`` / ``other-disease``; absent: ``covid`` / ``non-covid`` from the label), ``source``,
``patient``, ``category`` (carried along, unused).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from deepcovid import files
from deepcovid.errors import InputError, MissingInputError

log = logging.getLogger("evaluate")

REQUIRED_COLUMNS = ("image_id", "label", "split", "score")
OPTIONAL_COLUMNS = ("source", "patient", "group", "category")
SPLITS = ("val", "test", "external")


def load_predictions(path: str | Path) -> pd.DataFrame:
    """Read and check a predictions table; errors are one line naming the file and the column.

    Returns the rows of the ``val``, ``test`` and ``external`` splits with ``label`` as int, ``score`` as
    float, ``split`` lower-cased and a ``group`` column (derived from the label if absent).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: predictions file not found")
    return read_predictions(path, name=str(path))


def read_predictions(source, name: str) -> pd.DataFrame:
    """:func:`load_predictions` for a path or file-like ``source``; messages name ``name``."""
    path = name
    try:
        data = source.read() if hasattr(source, "read") else Path(source).read_bytes()
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not a predictions file") from None
    df = files.read_text_table(data, path)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column {missing[0]!r} (required columns: {', '.join(REQUIRED_COLUMNS)})")
    if (df["image_id"] == "").any():
        raise InputError(
            f"{path}: column 'image_id' has empty values "
            f"(line {files.line_of(df, int(np.flatnonzero(df['image_id'] == '')[0]))})"
        )
    df["split"] = df["split"].str.strip().str.lower()
    other = sorted(set(df["split"]) - set(SPLITS))
    if other:
        log.info(
            "%s: ignoring %d rows of split %s (only val, test and external are evaluated)",
            path,
            int((~df["split"].isin(SPLITS)).sum()),
            ", ".join(map(repr, other)),
        )
        df = df[df["split"].isin(SPLITS)].reset_index(drop=True)
    if not (df["split"] == "test").any():
        raise InputError(f"{path}: column 'split' has no 'test' rows")
    for col in ("label", "score"):
        values = pd.to_numeric(df[col].str.strip(), errors="coerce")
        bad = values.isna() | ~np.isfinite(values.to_numpy(dtype=float, na_value=np.nan))
        if bad.any():
            first = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(
                f"{path}: column {col!r} has {int(bad.sum())} empty or non-numeric values "
                f"(first: {df[col].iloc[first]!r} at image_id {df['image_id'].iloc[first]!r})"
            )
        df[col] = values.astype(float)
    if not df["label"].isin((0.0, 1.0)).all():
        found = sorted(set(df.loc[~df["label"].isin((0.0, 1.0)), "label"]))[:5]
        raise InputError(f"{path}: column 'label' must hold 0 or 1 (1 = COVID-19); found {found}")
    df["label"] = df["label"].astype(np.int64)
    if df["score"].min() < 0.0 or df["score"].max() > 1.0:
        raise InputError(
            f"{path}: column 'score' must be a probability in [0, 1]; "
            f"found range [{df['score'].min()}, {df['score'].max()}]"
        )
    dup = df.duplicated(["split", "image_id"])
    if dup.any():
        raise InputError(
            f"{path}: column 'image_id' repeats within a split "
            f"({int(dup.sum())} duplicates, e.g. {df.loc[dup, 'image_id'].iloc[0]!r})"
        )
    if "group" in df.columns:
        df["group"] = df["group"].str.strip()
        if (df["group"] == "").any():
            raise InputError(f"{path}: column 'group' has empty values")
        odd = df[(df["group"] == "covid") != (df["label"] == 1)]
        if len(odd):
            log.warning(
                "%s: %d rows whose group disagrees with the label (e.g. %s: group %r, label %d)",
                path,
                len(odd),
                odd["image_id"].iloc[0],
                odd["group"].iloc[0],
                odd["label"].iloc[0],
            )
    else:
        log.warning("%s: no 'group' column; score histograms use covid / non-covid from the label", path)
        df["group"] = np.where(df["label"] == 1, "covid", "non-covid")
    return df


@dataclass
class SplitData:
    """The rows of one split, with labels and scores as arrays."""

    frame: pd.DataFrame

    @property
    def labels(self) -> np.ndarray:
        return self.frame["label"].to_numpy(dtype=np.int64)

    @property
    def scores(self) -> np.ndarray:
        return self.frame["score"].to_numpy(dtype=np.float64)

    @property
    def both_classes(self) -> bool:
        return len(self.frame) > 0 and 0 < int(self.frame["label"].sum()) < len(self.frame)


def recorded_model(model_json: str | Path) -> str:
    """The SHA-256 of model.pt recorded in the train stage's ``model.json``."""
    import json

    try:
        digest = json.loads(Path(model_json).read_text(encoding="utf-8"))["model_sha256"]
    except FileNotFoundError:
        raise MissingInputError(f"{model_json} not found: run the train stage first") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(
            f"{model_json}: no model_sha256 ({type(exc).__name__}: {exc}): rerun the train stage"
        ) from None
    if not isinstance(digest, str) or len(digest) != 64:
        raise InputError(f"{model_json}: model_sha256 {digest!r} is not a SHA-256 digest")
    return digest


def operating_point(evaluation: str | Path, model_sha256: str | None = None) -> float:
    """The test threshold the evaluate stage chose (``test.threshold`` of metrics/evaluate.json).

    With ``model_sha256`` (the model that will be labelled at it), the file must name that
    model (its ``model_sha256``): a threshold chosen for another model's scores is refused."""
    import json

    try:
        record = json.loads(Path(evaluation).read_text(encoding="utf-8"))
        threshold = float(record["test"]["threshold"])
    except FileNotFoundError:
        raise MissingInputError(f"{evaluation} not found: run the evaluate stage first") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{evaluation}: no test.threshold ({type(exc).__name__}: {exc})") from None
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"{evaluation}: test.threshold {threshold} does not lie in [0, 1]")
    if model_sha256 is not None:
        named = record.get("model_sha256")
        if named is None:
            raise InputError(
                f"{evaluation} does not name the model its operating point was chosen for: "
                f"rerun the evaluate stage, or give a threshold (--threshold)"
            )
        if named != model_sha256:
            raise InputError(
                f"{evaluation}: its operating point was chosen for another model "
                f"(SHA-256 {str(named)[:16]}...), not this one ({model_sha256[:16]}...): give that model's "
                f"evaluation (--evaluation) or a threshold (--threshold)"
            )
    return threshold
