"""Validation of the training parameters (model, weights, train.*), before any long work."""

from __future__ import annotations

from pathlib import Path

from deepcovid.model.architectures import ARCHITECTURES, ModelError
from deepcovid.params import ParamsError, get, require_choice, require_float, require_int

MODES = ("last_layer", "full")


def validate_train_params(params: dict) -> None:
    model = get(params, "model")
    if model not in ARCHITECTURES:
        raise ModelError(f"unknown model {model!r} (parameter model); valid: {', '.join(ARCHITECTURES)}")
    weights = get(params, "weights")
    if not isinstance(weights, str) or not weights:
        raise ParamsError(f"parameter weights must be imagenet, none or a file path; got {weights!r}")
    if weights not in ("imagenet", "none") and not Path(weights).is_file():
        raise ParamsError(f"parameter weights: {weights} is neither imagenet, none nor an existing file")
    require_choice(params, "train.mode", MODES)
    require_int(params, "train.image_size", 32)
    require_int(params, "train.epochs", 1)
    require_int(params, "train.batch_size", 1)
    require_float(params, "train.lr", 1e-8, 1.0)
    require_float(params, "train.weight_decay", 0.0, 1.0)
    require_int(params, "train.patience", 0)
    require_int(params, "train.num_workers", 0)
    require_int(params, "train.feature_batch_size", 1)
    if not isinstance(get(params, "train.shuffle_labels"), bool):
        raise ParamsError("parameter train.shuffle_labels must be true or false")
    if not isinstance(get(params, "train.device"), str):
        raise ParamsError("parameter train.device must be a string such as auto, cpu or cuda")
