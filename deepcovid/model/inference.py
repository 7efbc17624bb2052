"""A trained model applied to image files, exactly as the pipeline prepares its own images.

:func:`load_model` reads the train stage's folder (``model.pt``, ``model.json``);
:func:`score_files` decodes each file as the preprocess stage does (the settings recorded in
``model.json``; with ``preprocess.lungs`` crop or mask, the lung mask of the segmenter it records,
:func:`load_segmenter`), applies the evaluation transform and returns the COVID-19 probability
(:func:`covid_probability`, the score every stage reports). Used by ``deepcovid predict``,
``deepcovid explain`` and ``deepcovid evaluate-external``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from deepcovid.data.images import ImageReadError, read_image
from deepcovid.data.lungs import apply_lungs
from deepcovid.errors import MissingInputError
from deepcovid.files import sha256_file
from deepcovid.model.architectures import ModelError
from deepcovid.model.presets import eval_transform
from deepcovid.model.weights import load_trained
from deepcovid.segment.network import Segmenter
from deepcovid.segment.network import load_segmenter as _load_segmenter

#: What a non-finite model output is reported as (a row's error, never a score).
NON_FINITE = "the model gave a non-finite score (NaN or infinity) for this image"


def covid_probability(logits: torch.Tensor) -> torch.Tensor:
    """The score the pipeline reports: softmax probability of class 1 (COVID-19)."""
    return torch.softmax(logits.float(), dim=1)[:, 1]


def read_record(model_json: str | os.PathLike, model_pt: str | os.PathLike) -> dict:
    """``model.json`` after checking that ``model_pt`` is the file it was written for: the
    SHA-256 it records (``model_sha256``) must be the file's. Raises a one-line
    :class:`~deepcovid.model.architectures.ModelError` otherwise (files of two different runs,
    a model.pt replaced by hand, a record written before the digest was recorded)."""
    model_json, model_pt = Path(model_json), Path(model_pt)
    try:
        record = json.loads(model_json.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MissingInputError(f"{model_json} not found: run the train stage first") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{model_json}: not a model record ({type(exc).__name__}: {exc})") from None
    missing = [
        k
        for k in ("architecture", "classes", "preprocessing", "train", "model_sha256")
        if not isinstance(record, dict) or k not in record
    ]
    if missing:
        raise ModelError(
            f"{model_json}: no {', '.join(missing)} (a record of another version or not the "
            f"train stage's): rerun the train stage"
        )
    if not model_pt.is_file():
        raise MissingInputError(f"{model_pt} not found: run the train stage (or dvc checkout) first")
    digest = sha256_file(model_pt)
    if digest != record["model_sha256"]:
        raise ModelError(
            f"{model_pt}: SHA-256 {digest[:16]}... is not the {str(record['model_sha256'])[:16]}... "
            f"that {model_json.name} records: the two files come from different runs "
            f"(dvc checkout models, or train again)"
        )
    return record


def load_files(model_pt: str | os.PathLike, model_json: str | os.PathLike) -> tuple[torch.nn.Module, dict]:
    """The trained model of ``model_pt`` as ``model_json`` describes it (checked by
    :func:`read_record`; loaded by :func:`~deepcovid.model.weights.load_trained`, which never
    builds a new head), in eval mode, and the record."""
    record = read_record(model_json, model_pt)
    return load_trained(record["architecture"], model_pt, num_classes=len(record["classes"])), record


def load_model(models: str | os.PathLike) -> tuple[torch.nn.Module, dict]:
    """The trained model of the train stage's folder (model.pt, model.json), in eval mode."""
    models = Path(models)
    return load_files(models / "model.pt", models / "model.json")


def model_sha256(models: str | os.PathLike) -> str:
    """The SHA-256 of the train stage folder's model.pt, checked against its model.json."""
    models = Path(models)
    return read_record(models / "model.json", models / "model.pt")["model_sha256"]


def load_segmenter(models: str | os.PathLike, record: dict) -> Segmenter | None:
    """The lung segmenter a model was trained with (``models/segment``, checked against the SHA-256
    that ``model.json`` records), or None for a model of ``preprocess.lungs: none``."""
    return segmenter_from(Path(models) / "segment", record)


def segmenter_from(folder: str | os.PathLike, record: dict) -> Segmenter | None:
    """:func:`load_segmenter` from the segmenter's own ``folder`` (e.g. an MLflow model's artifact)."""
    prep = record.get("preprocessing", {})
    if prep.get("lungs", "none") == "none":
        return None
    if "segmenter_sha256" not in prep:
        raise ModelError("model.json: preprocess.lungs is set but no segmenter_sha256 is recorded: train again")
    return _load_segmenter(folder, prep["segmenter_sha256"])


def prepare(
    path: str | os.PathLike, record: dict, notes: list[str] | None = None, segmenter: Segmenter | None = None
) -> torch.Tensor:
    """The model input of one image file (3 x size x size), as the pipeline prepares it:
    decoded and cached (:func:`~deepcovid.data.lungs.apply_lungs`: with a model of
    ``preprocess.lungs`` crop or mask, the ``segmenter``'s lung mask first), then the evaluation
    transform. Raises :class:`~deepcovid.data.images.ImageReadError` (also when no lungs are
    found). ``notes``, when given, receives warnings: the DICOM header's (a lateral view, ...) and
    an image smaller than the model input."""
    prep = record["preprocessing"]
    size = int(record["train"]["image_size"])
    lungs = prep.get("lungs", "none")
    if lungs != "none" and segmenter is None:
        raise ModelError(f"the model was trained on images with preprocess.lungs {lungs!r}: its segmenter is needed")
    image = read_image(path, grayscale=prep["grayscale"], notes=notes, max_pixels=prep["max_pixels"])
    if notes is not None and min(image.size) < size:
        notes.append(f"image {image.size[0]}x{image.size[1]} px, smaller than the model input ({size} px): upscaled")
    mask = None if lungs == "none" else segmenter.mask(image)
    cached = apply_lungs(
        image,
        mask,
        lungs=lungs,
        margin=float(prep.get("lung_margin", 0.0)),
        cache_size=int(prep["cache_size"]),
        resize=prep["resize"],
        intensity=prep.get("intensity", "none"),
    )
    return eval_transform(prep, size)(cached)


@torch.no_grad()
def score_files(
    model: torch.nn.Module,
    record: dict,
    paths: Sequence[str | os.PathLike],
    batch_size: int = 32,
    *,
    device: torch.device | None = None,
    warnings: dict[int, str] | None = None,
    segmenter: Segmenter | None = None,
) -> tuple[np.ndarray, dict[int, str]]:
    """COVID-19 probabilities of image files (NaN for the unreadable ones) and
    ``{index: reason}`` for those (a non-finite model output is such a reason, never a score). The batches
    run on ``device`` (the model must be there; default CPU); ``warnings``, when given, receives
    ``{index: "; "-joined notes}`` of the files :func:`prepare` had a warning for; ``segmenter``:
    :func:`load_segmenter`'s, for a model trained with lung masks."""
    scores = np.full(len(paths), np.nan)
    errors: dict[int, str] = {}
    model = model.eval()
    for start in tqdm(
        range(0, len(paths), batch_size), desc="scoring", mininterval=2, disable=len(paths) <= batch_size
    ):
        batch, where = [], []
        for i in range(start, min(start + batch_size, len(paths))):
            notes: list[str] = []
            try:
                batch.append(
                    prepare(paths[i], record, notes=notes if warnings is not None else None, segmenter=segmenter)
                )
                where.append(i)
            except ImageReadError as exc:
                errors[i] = exc.reason
            if notes:
                warnings[i] = "; ".join(notes)
        if batch:
            x = torch.stack(batch) if device is None else torch.stack(batch).to(device)
            out = covid_probability(model(x)).cpu().numpy().astype(np.float64)
            for i, score in zip(where, out):
                if np.isfinite(score):
                    scores[i] = score
                else:
                    errors[i] = NON_FINITE
    return scores, errors
