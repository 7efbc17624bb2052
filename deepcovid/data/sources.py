"""Where each raw source lives once the fetch stage has run.

The fetch stage writes ``data/raw/sources.json``: the dataset it prepared, the root folder of
each source (CheXpert stays where the user keeps it) and the fetch records (commit, digest).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from deepcovid import files
from deepcovid.errors import MissingInputError

log = logging.getLogger(__name__)
RAW_DIR = Path("data/raw")
SOURCES_FILE = RAW_DIR / "sources.json"


def read_sources(raw_dir: str | Path = RAW_DIR) -> dict:
    path = Path(raw_dir) / "sources.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MissingInputError(f"{path} not found: run the fetch stage first (dvc repro fetch)") from None


def source_root(sources: dict, name: str, raw_dir: str | Path = RAW_DIR) -> Path:
    """Root folder of source ``name``; relative roots are relative to ``raw_dir``."""
    try:
        root = Path(sources["roots"][name])
    except KeyError:
        raise KeyError(f"source {name!r} was not fetched for dataset {sources.get('dataset')!r}") from None
    return root if root.is_absolute() else Path(raw_dir) / root


def image_path(sources: dict, source: str, relpath: str, raw_dir: str | Path = RAW_DIR) -> Path:
    """The image file of a manifest row; raises :class:`deepcovid.files.UnsafePathError` when
    ``relpath`` would lead outside the source's root (``..``, absolute, or through a symlink)."""
    return files.inside(source_root(sources, source, raw_dir), relpath)


def unsafe_rows(relpaths: pd.Series, root: Path, source: str) -> tuple[pd.Series, list[dict]]:
    """Which metadata rows name a file inside ``root``: the mask of rows to keep, and for each other
    row ``{"source", "relpath", "reason"}`` (each also logged as a warning). Empty paths are kept
    here (a rule of their own counts them)."""
    rejected = []
    for relpath in relpaths:
        if relpath:
            try:
                files.inside(root, relpath)
            except files.UnsafePathError as exc:
                rejected.append({"source": source, "relpath": relpath, "reason": str(exc)})
                log.warning("%s: rejected metadata row: %s", source, exc)
    bad = {r["relpath"] for r in rejected}
    return ~relpaths.isin(bad), rejected
