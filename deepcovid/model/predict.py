"""``deepcovid predict``: score new X-ray files (PNG, JPEG, 16-bit PNG, DICOM) with a trained model.

Each file is decoded and prepared exactly as the pipeline prepares its own images (the
settings recorded in ``models/model.json``; :func:`deepcovid.model.inference.prepare`), scored
in batches on the chosen device, and labelled at the model's operating point (chosen on
validation by the evaluate stage). A file that cannot be read gets a row with the reason; the
others are still scored. Warnings: a lateral view, a modality or body part that is not a chest
radiograph (from the DICOM header), an image smaller than the model input.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from deepcovid.data.dicom import is_dicom
from deepcovid.errors import InputError
from deepcovid.model.environment import resolve_device
from deepcovid.model.inference import load_model, load_segmenter, score_files

log = logging.getLogger(__name__)

#: Files taken from folders (a file named on the command line is always tried); DICOM files
#: without a suffix are recognised by their "DICM" marker.
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".dic", ".tif", ".tiff", ".bmp"}
COLUMNS = ["path", "score", "label", "warning", "error"]
LABELS = ("non-COVID", "COVID-19")


class PredictError(InputError):
    """Inputs predict cannot use (one line, names the input)."""


def collect_files(paths: Sequence[str | os.PathLike]) -> list[str]:
    """The files to score, in the order given; folders are walked recursively (sorted), taking
    files with an image or DICOM suffix and suffix-less DICOM files; hidden entries are skipped."""
    out: list[str] = []
    for arg in paths:
        p = Path(arg)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                rel = f.relative_to(p).parts
                if any(part.startswith(".") for part in rel) or not f.is_file():
                    continue
                if f.suffix.lower() in IMAGE_SUFFIXES or (f.suffix == "" and is_dicom(f)):
                    out.append(str(f))
        else:
            out.append(str(p))  # a missing file gets its row with the reason
    return out


def predict_files(
    paths: Sequence[str], *, models: str | os.PathLike, threshold: float, batch_size: int = 8, device: str = "auto"
) -> pd.DataFrame:
    """One row per path: ``path, score, label, warning, error`` (score and label empty when the
    file could not be read, with the reason in ``error``)."""
    if not 0.0 <= threshold <= 1.0:
        raise PredictError(f"threshold {threshold}: must lie in [0, 1]")
    if batch_size < 1:
        raise PredictError(f"--batch-size {batch_size}: must be at least 1")
    model, record = load_model(models)
    dev = resolve_device(device)
    warnings: dict[int, str] = {}
    scores, errors = score_files(
        model.to(dev),
        record,
        list(paths),
        batch_size,
        device=dev,
        warnings=warnings,
        segmenter=load_segmenter(models, record),
    )
    scored = ~np.isnan(scores)
    return pd.DataFrame(
        {
            "path": list(paths),
            "score": scores,
            "label": np.where(scored, np.where(scores >= threshold, LABELS[1], LABELS[0]), ""),
            "warning": [warnings.get(i, "") for i in range(len(paths))],
            "error": [errors.get(i, "") for i in range(len(paths))],
        },
        columns=COLUMNS,
    )
