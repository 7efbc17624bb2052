"""Select the COVID-19 positives: X-ray, frontal view, COVID-19 finding, not excluded.

Each rule is applied in order and the number of rows it removes is reported, so the
output can be set beside the paper's counts (203 frontal COVID-19 images, 184 kept).
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from pathlib import Path

import pandas as pd

from deepcovid import files
from deepcovid.data.metadata import MetadataError, read_cohen_style, read_csv_text
from deepcovid.data.sources import read_sources, source_root, unsafe_rows

log = logging.getLogger("filter")
COVID_PATTERN = re.compile(r"covid[\s\-_]?19", re.IGNORECASE)
DECISIONS = ("exclude", "include")


def normalise_view(view: str) -> str:
    return re.sub(r"[\s_\-]+", " ", str(view).strip().upper())


def is_frontal(views: pd.Series, frontal_views: list[str]) -> pd.Series:
    allowed = {normalise_view(v) for v in frontal_views}
    return views.map(normalise_view).isin(allowed)


def is_xray(modality: pd.Series) -> pd.Series:
    return modality.str.replace(r"[\s\-_]", "", regex=True).str.lower().isin({"xray", "cr", "dx"})


def is_covid(finding: pd.Series) -> pd.Series:
    return finding.map(lambda f: bool(COVID_PATTERN.search(str(f))))


def read_exclusions(path: str | Path) -> pd.DataFrame:
    """Read the radiologist list; validates the decision column."""
    path = Path(path)
    frame = read_csv_text(path)
    for col in ("filename", "decision", "reason", "reviewer"):
        if col not in frame.columns:
            raise MetadataError(f"{path}: required column {col!r} not found")
    if "source" not in frame.columns:
        frame["source"] = "cohen"
    frame["source"] = frame["source"].where(frame["source"] != "", "cohen")
    frame["decision"] = frame["decision"].str.lower()
    bad = ~frame["decision"].isin(DECISIONS)
    if bad.any():
        i = int(bad.to_numpy().nonzero()[0][0])
        raise MetadataError(
            f"{path}: line {files.line_of(frame, i)}: decision {frame['decision'].iloc[i]!r} "
            f"is not one of {', '.join(DECISIONS)}"
        )
    return frame


def filter_positives(
    meta: pd.DataFrame, frontal_views: list[str], exclusions: pd.DataFrame, root: Path | None = None
) -> tuple[pd.DataFrame, dict]:
    """Apply the rules to one source's normalised metadata.

    Returns the kept rows (with label/group/category columns) and a report of how many
    rows each rule removed. When ``root`` is given, rows whose image file is missing are
    removed too and counted.
    """
    source = str(meta["source"].iloc[0]) if len(meta) else ""
    removed: OrderedDict[str, int] = OrderedDict()
    rows = meta

    def apply(rule: str, keep: pd.Series) -> None:
        nonlocal rows
        removed[rule] = int((~keep).sum())
        rows = rows[keep]

    apply("not X-ray", is_xray(rows["modality"]))
    apply("not COVID-19", is_covid(rows["finding"]))
    views_seen = sorted(set(rows["view"]))
    apply("not frontal", is_frontal(rows["view"], frontal_views))
    apply("no file name", rows["relpath"] != "")
    unsafe = []
    if root is not None:
        inside, unsafe = unsafe_rows(rows["relpath"], Path(root), source)
        apply("path outside the source", inside)
        apply("image file missing", rows["relpath"].map(lambda p: (Path(root) / p).is_file()))
    mine = exclusions[exclusions["source"] == source]
    excluded = set(mine.loc[mine["decision"] == "exclude", "filename"])
    names = rows["relpath"].map(lambda p: Path(p).name)
    apply("radiologist list", ~names.isin(excluded))
    listed = set(mine["filename"])
    unmatched = sorted(listed - set(meta["relpath"].map(lambda p: Path(p).name)))
    kept = rows.assign(label=1, group="covid", category="COVID-19")
    report = {
        "source": source,
        "rows": int(len(meta)),
        "covid_xray_rows": int((is_xray(meta["modality"]) & is_covid(meta["finding"])).sum()),
        "removed": dict(removed),
        "kept": int(len(kept)),
        "kept_patients": int(kept["patient"].nunique()),
        "views_among_covid_xrays": views_seen,
        "exclusion_list_unmatched": unmatched,
        "unsafe_paths": unsafe,
    }
    return kept.reset_index(drop=True), report


def select_positives(
    raw_dir: str | Path, sources: list[str], frontal_views: list[str], exclusions: str | Path
) -> tuple[pd.DataFrame, list[dict]]:
    """The filter stage: positives of every source in ``sources`` and one report per source."""
    excluded = read_exclusions(exclusions)
    roots = read_sources(raw_dir)
    kept, reports = [], []
    for name in sources:
        root = source_root(roots, name, raw_dir)
        meta = read_cohen_style(root / "metadata.csv", name)
        rows, report = filter_positives(meta, frontal_views, excluded, root=root)
        log.info(
            "%s: %d rows, %d COVID-19 X-ray rows -> kept %d images of %d patients; removed %s",
            name,
            report["rows"],
            report["covid_xray_rows"],
            report["kept"],
            report["kept_patients"],
            ", ".join(f"{k}: {v}" for k, v in report["removed"].items()),
        )
        kept.append(rows)
        reports.append(report)
    return pd.concat(kept, ignore_index=True), reports
