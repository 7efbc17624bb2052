"""Full fine-tuning checkpoints: a plain dict of state_dicts, tensors, numbers and lists, read
with ``torch.load(weights_only=True)``, named after everything that changes the result
(:func:`checkpoint_inputs`, :func:`checkpoint_key`); an unusable one is set aside.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from deepcovid import config
from deepcovid.errors import InputError, StateError
from deepcovid.files import sha256_file, tree_digest

log = logging.getLogger(__name__)

PACKAGE = Path(__file__).resolve().parents[1]  # deepcovid/
# The code of full fine-tuning (relative to deepcovid/), whose sha256 goes into the key.
CODE_FILES = (
    "model/architectures.py",
    "model/weights.py",
    "model/datasets.py",
    "model/presets.py",
    "model/environment.py",
    "model/checkpoints.py",
    "model/training.py",
    "model/train_run.py",
    "data/augment.py",
    "portable.py",
)
KEYS = ("epoch", "model", "optimizer", "scaler", "history", "best_loss", "best_epoch", "best_state")


def _file_digest(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None


def _folder_digest(path: Path | None) -> str | None:
    """:func:`deepcovid.files.tree_digest` of a folder; None when there is none."""
    return tree_digest(path) if path is not None and path.is_dir() else None


def checkpoint_inputs(
    params: config.Params,
    provenance: dict,
    *,
    manifest: str | os.PathLike,
    preprocessed: str | os.PathLike,
    augmented: str | os.PathLike | None,
    device: str | torch.device = "cpu",
    world_size: int = 1,
    code_files: Iterable[str | os.PathLike] = (),
) -> dict:
    """Everything that changes the result of full fine-tuning, as a JSON-able dict.

    Parameters (model, weights, seed and the train, augment and preprocess sections), the
    sha256 of the weights file (``provenance["weights_sha256"]`` from ``build_model``), the
    data (sha256 of the manifest and of the preprocessed and augmented index.csv files, plus
    a :func:`deepcovid.files.tree_digest` of both folders), the device type, the number of DDP processes,
    the torch version and the sha256 of the code (:data:`CODE_FILES` and ``code_files``).
    """
    preprocessed = Path(preprocessed)
    augmented = Path(augmented) if augmented is not None else None
    code = {name: _file_digest(PACKAGE / name) for name in CODE_FILES}
    code.update({Path(p).name: _file_digest(Path(p)) for p in code_files})
    return {
        "model": params.model,
        "weights": params.weights,
        "weights_sha256": provenance.get("weights_sha256"),
        "seed": params.seed,
        "train": params.train.as_dict(),
        "augment": params.augment.as_dict(),
        "preprocess": params.preprocess.as_dict(),
        "data": {
            "manifest": sha256_file(Path(manifest)),
            "preprocessed_index": _file_digest(preprocessed / "index.csv"),
            "preprocessed_files": _folder_digest(preprocessed),
            "augmented_index": _file_digest(augmented / "index.csv") if augmented is not None else None,
            "augmented_files": _folder_digest(augmented),
        },
        "device": torch.device(device).type,
        "world_size": int(world_size),
        "torch": torch.__version__,
        "code": code,
    }


def checkpoint_key(inputs: dict) -> str:
    """SHA-256 (hex) of ``inputs`` (see :func:`checkpoint_inputs`) as canonical JSON: any
    change to any input gives another key, and so another checkpoint file."""
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def save_checkpoint(checkpoint: dict, path: Path) -> None:
    """Write the checkpoint dict (:data:`KEYS`) atomically: a crash leaves the previous one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def _same_layout(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        isinstance(a[k], torch.Tensor) and a[k].shape == b[k].shape and a[k].dtype == b[k].dtype for k in a
    )


def load_checkpoint(path: Path, model: nn.Module, epochs: int, device: torch.device) -> dict:
    """Read a checkpoint (weights only) and check that it fits ``model`` and a run of
    ``epochs`` epochs; raise on anything unexpected. Loads nothing into the model."""
    state = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(state, dict):
        raise TypeError(f"expected a dict, found {type(state).__name__}")
    missing = set(KEYS) - state.keys()
    if missing:
        raise KeyError(f"missing entries {sorted(missing)}")
    epoch, best_epoch = state["epoch"], state["best_epoch"]
    if (
        not isinstance(epoch, int)
        or not isinstance(best_epoch, int)
        or not 1 <= epoch <= epochs
        or not 0 <= best_epoch <= epoch
    ):
        raise InputError(f"epoch {epoch!r} / best epoch {best_epoch!r} out of range for {epochs} epochs")
    if not isinstance(state["history"], list) or [
        h.get("epoch") if isinstance(h, dict) else None for h in state["history"]
    ] != list(range(1, epoch + 1)):
        raise InputError("history does not match the epoch count")
    if not _same_layout(state["best_state"], model.state_dict()):
        raise InputError("best_state does not fit the model")
    return state


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line; for a refused weights-only load, the unpickler's reason
    (e.g. ``Unsupported global: GLOBAL foo.Bar``) rather than torch's long explanation."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation of torch.load")[0]
        text = "weights-only load refused: " + text.split(" was not an allowed global")[0]
    text = " ".join(text.split())
    text = f"{type(exc).__name__}: {text}" if text else f"{type(exc).__name__} (empty or cut short?)"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def set_aside(path: Path, reason: str) -> Path:
    """Rename an unusable checkpoint to ``<name>.corrupt`` (replacing an older one) and log why."""
    path = Path(path)
    target = path.with_name(path.name + ".corrupt")
    try:
        os.replace(path, target)
    except OSError as exc:
        raise StateError(
            f"checkpoint {path} cannot be used ({reason}) and cannot be set aside ({one_line(exc)}): remove it"
        ) from None
    log.warning("checkpoint %s cannot be used (%s); set aside as %s, training starts over", path, reason, target)
    return target
