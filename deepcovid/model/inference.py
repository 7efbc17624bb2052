"""A trained model applied to image files, exactly as the pipeline prepares its own images.

:func:`load_model` reads the train stage's folder (``model.pt``, ``model.json``);
:func:`score_files` decodes each file as the preprocess stage does (the settings recorded in
``model.json``), applies the evaluation transform and returns the COVID-19 probability
(:func:`covid_probability`, the score every stage reports). Used by ``deepcovid predict``,
``deepcovid explain`` and ``deepcovid evaluate-external``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from deepcovid.data.images import ImageReadError, read_image, resize_square
from deepcovid.errors import MissingInputError
from deepcovid.model.presets import eval_transform
from deepcovid.model.weights import build_model


def covid_probability(logits: torch.Tensor) -> torch.Tensor:
    """The score the pipeline reports: softmax probability of class 1 (COVID-19)."""
    return torch.softmax(logits.float(), dim=1)[:, 1]


def load_model(models: str | os.PathLike) -> tuple[torch.nn.Module, dict]:
    """The trained model of the train stage's folder (model.pt, model.json), in eval mode."""
    models = Path(models)
    try:
        record = json.loads((models / "model.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MissingInputError(f"{models / 'model.json'} not found: run the train stage first") from None
    model, _ = build_model(record["architecture"], str(models / "model.pt"), num_classes=len(record["classes"]))
    return model.eval(), record


def prepare(path: str | os.PathLike, record: dict, notes: list[str] | None = None) -> torch.Tensor:
    """The model input of one image file (3 x size x size), as the pipeline prepares it:
    decoded and cached (:func:`~deepcovid.data.images.resize_square`), then the evaluation
    transform. Raises :class:`~deepcovid.data.images.ImageReadError`. ``notes``, when given,
    receives warnings: the DICOM header's (a lateral view, ...) and an image smaller than the
    model input."""
    prep = record["preprocessing"]
    size = int(record["train"]["image_size"])
    image = read_image(path, grayscale=prep["grayscale"], notes=notes)
    if notes is not None and min(image.size) < size:
        notes.append(f"image {image.size[0]}x{image.size[1]} px, smaller than the model input ({size} px): upscaled")
    cached = resize_square(image, int(prep["cache_size"]), prep["resize"])
    return eval_transform(prep, size)(cached)


@torch.no_grad()
def score_files(model: torch.nn.Module, record: dict, paths: Sequence[str | os.PathLike], batch_size: int = 32,
                *, device: torch.device | None = None,
                warnings: dict[int, str] | None = None) -> tuple[np.ndarray, dict[int, str]]:
    """COVID-19 probabilities of image files (NaN for the unreadable ones) and
    ``{index: reason}`` for those. The batches run on ``device`` (the model must be there;
    default CPU); ``warnings``, when given, receives ``{index: "; "-joined notes}`` of the files
    :func:`prepare` had a warning for."""
    scores = np.full(len(paths), np.nan)
    errors: dict[int, str] = {}
    model = model.eval()
    for start in tqdm(range(0, len(paths), batch_size), desc="scoring", mininterval=2,
                      disable=len(paths) <= batch_size):
        batch, where = [], []
        for i in range(start, min(start + batch_size, len(paths))):
            notes: list[str] = []
            try:
                batch.append(prepare(paths[i], record, notes=notes if warnings is not None else None))
                where.append(i)
            except ImageReadError as exc:
                errors[i] = exc.reason
            if notes:
                warnings[i] = "; ".join(notes)
        if batch:
            x = torch.stack(batch) if device is None else torch.stack(batch).to(device)
            scores[where] = covid_probability(model(x)).cpu().numpy()
    return scores, errors
