"""Tolerant readers of the sources' metadata, normalised to one schema.

Cohen-style tables (covid-chestxray-dataset, Actualmed; column names vary across versions) ->
``source, relpath, patient, finding, view, modality, offset``; CheXpert train/valid.csv ->
``source, relpath, patient, frontal, view, csv`` and the 14 categories (float, NaN = blank).
A missing required column raises :class:`MetadataError` naming the file and the column."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from deepcovid import files
from deepcovid.errors import InputError
from deepcovid.labels import CHEXPERT_CATEGORIES

# normalised column name -> accepted spellings (compared lower-case, without spaces, _ and -)
_COHEN_ALIASES = {
    "filename": ["filename", "imagename", "image", "file", "imagefile", "imagepath"],
    "patient": ["patientid", "patient", "patientnumber", "id"],
    "finding": ["finding", "findings", "label", "diagnosis"],
    "view": ["view", "projection", "viewposition"],
    "modality": ["modality"],
    "folder": ["folder", "imagefolder"],
    "offset": ["offset", "daysoffset"],
}
_COHEN_REQUIRED = ("filename", "patient", "finding", "view")


class MetadataError(InputError):
    """A metadata file cannot be used."""


def _key(name: str) -> str:
    return re.sub(r"[\s_\-/]+", "", str(name).strip().lower())


def read_csv_text(path: Path) -> pd.DataFrame:
    """Read a CSV with every cell as stripped text (empty cells are ""), strictly
    (:func:`deepcovid.files.read_text_table`: a stray quote is an error naming the line, not a row
    whose columns silently moved); bytes that are not UTF-8 become U+FFFD (downloaded tables are
    not always clean); a header-only file gives an empty frame."""
    try:
        return files.read_text_table(Path(path).read_bytes(), str(path), encoding_errors="replace")
    except FileNotFoundError:
        raise MetadataError(f"{path}: metadata file not found") from None
    except IsADirectoryError:
        raise MetadataError(f"{path}: is a folder, not a CSV file") from None
    except InputError as exc:
        raise MetadataError(str(exc)) from None


def read_cohen_style(path: str | Path, source: str, images_dir: str = "images") -> pd.DataFrame:
    """Read a Cohen- or Actualmed-style ``metadata.csv`` into the normalised schema."""
    path = Path(path)
    raw = read_csv_text(path)
    found: dict[str, str] = {}
    keys = {_key(c): c for c in raw.columns}
    for norm, aliases in _COHEN_ALIASES.items():
        for alias in aliases:
            if alias in keys:
                found[norm] = keys[alias]
                break
    missing = [c for c in _COHEN_REQUIRED if c not in found]
    if missing:
        raise MetadataError(
            f"{path}: required column {missing[0]!r} not found "
            f"(accepted names: {', '.join(_COHEN_ALIASES[missing[0]])})"
        )
    if raw.empty:
        raise MetadataError(f"{path}: no rows below the header")
    out = pd.DataFrame(
        {
            "source": source,
            "filename": raw[found["filename"]],
            "patient": raw[found["patient"]],
            "finding": raw[found["finding"]],
            "view": raw[found["view"]],
            # Older versions have no modality column: they held X-rays only.
            "modality": raw[found["modality"]] if "modality" in found else "X-ray",
            "offset": raw[found["offset"]] if "offset" in found else "",
        }
    )
    folder = raw[found["folder"]] if "folder" in found else pd.Series(images_dir, index=raw.index)
    folder = folder.where(folder != "", images_dir)
    out.insert(1, "relpath", [f"{d}/{f}" if f else "" for d, f in zip(folder, out["filename"])])
    return out.drop(columns="filename")


# --- CheXpert -------------------------------------------------------------------------------

CHEXPERT_LABEL_VALUES = (1.0, 0.0, -1.0)  # positive, negative, uncertain (blank: not mentioned)


def chexpert_root(path: str | Path) -> Path:
    """The folder holding train.csv for a user-given CheXpert path.

    Accepts the folder itself (``CheXpert-v1.0-small``) or its parent.
    """
    path = Path(path)
    if (path / "train.csv").is_file():
        return path
    for name in ("CheXpert-v1.0-small", "CheXpert-v1.0"):
        if (path / name / "train.csv").is_file():
            return path / name
    raise MetadataError(
        f"{path}: no CheXpert train.csv found there (expected CheXpert-v1.0[-small]/train.csv); "
        "check parameter fetch.chexpert.path"
    )


def _chexpert_relpath(root: Path, value: str) -> str:
    """CSV ``Path`` values start with the dataset folder name: make them relative to root."""
    parts = Path(value).parts
    if parts and parts[0].startswith("CheXpert-v1.0"):
        parts = parts[1:]
    return Path(*parts).as_posix() if parts else ""


def read_chexpert(root: str | Path, include_valid: bool = True) -> pd.DataFrame:
    """Read CheXpert train.csv (and valid.csv) into the normalised schema."""
    root = Path(root)
    frames = []
    for name in ("train.csv", "valid.csv") if include_valid else ("train.csv",):
        path = root / name
        if name == "valid.csv" and not path.is_file():
            continue
        raw = read_csv_text(path)
        for col in ["Path", "Frontal/Lateral", *CHEXPERT_CATEGORIES]:
            if col not in raw.columns:
                raise MetadataError(f"{path}: required column {col!r} not found")
        frame = pd.DataFrame(
            {
                "source": "chexpert",
                "relpath": [_chexpert_relpath(root, v) for v in raw["Path"]],
                "patient": raw["Path"].str.extract(r"(patient\d+)", expand=False).fillna(""),
                "frontal": raw["Frontal/Lateral"].str.lower().eq("frontal"),
                "view": raw["AP/PA"] if "AP/PA" in raw.columns else "",
                "csv": name,
            }
        )
        for cat in CHEXPERT_CATEGORIES:
            values = pd.to_numeric(raw[cat].replace("", np.nan), errors="coerce")
            bad = raw[cat].ne("") & ~values.isin(CHEXPERT_LABEL_VALUES)
            if bad.any():
                i = int(np.flatnonzero(bad.to_numpy())[0])
                raise MetadataError(
                    f"{path}: line {files.line_of(raw, i)}: column {cat!r} holds {raw[cat].iloc[i]!r}, "
                    "expected 1.0, 0.0, -1.0 or blank"
                )
            frame[cat] = values.to_numpy()
        if (frame["patient"] == "").any():
            i = int(np.flatnonzero((frame["patient"] == "").to_numpy())[0])
            raise MetadataError(
                f"{path}: line {files.line_of(raw, i)}: no patientNNNNN in Path {raw['Path'].iloc[i]!r}"
            )
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
