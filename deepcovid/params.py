"""Load params.yaml and validate it before any long work starts.

Every error is a :class:`ParamsError` whose message is one line naming the parameter
(dotted path, as used by ``dvc exp run -S``) and what is wrong with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DATASETS = ("synthetic", "paper", "public")
SOURCES = ("cohen", "actualmed", "chexpert")


class ParamsError(ValueError):
    """A parameter is missing or invalid."""


def load_params(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            params = yaml.safe_load(f)
    except FileNotFoundError:
        raise ParamsError(f"{path}: parameter file not found") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    return params


def get(params: dict, dotted: str, default: Any = ...) -> Any:
    """``get(params, "split.val_fraction")``; raises ParamsError when missing and no default."""
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is ...:
                raise ParamsError(f"parameter {dotted} is missing from params.yaml")
            return default
        node = node[part]
    return node


def require_int(params: dict, dotted: str, minimum: int = 0) -> int:
    value = get(params, dotted)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ParamsError(f"parameter {dotted} must be an integer >= {minimum}, got {value!r}")
    return value


def require_float(params: dict, dotted: str, low: float, high: float) -> float:
    value = get(params, dotted)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ParamsError(f"parameter {dotted} must be a number in [{low}, {high}], got {value!r}")
    return float(value)


def require_choice(params: dict, dotted: str, choices: tuple[str, ...]) -> str:
    value = get(params, dotted)
    if value not in choices:
        raise ParamsError(f"parameter {dotted} must be one of {', '.join(choices)}; got {value!r}")
    return value


def dataset_sources(params: dict) -> dict[str, list[str]]:
    """The configured sources of positives and negatives for the chosen dataset."""
    dataset = require_choice(params, "dataset", DATASETS)
    spec = get(params, f"datasets.{dataset}")
    out = {}
    for role in ("positives", "negatives"):
        names = spec.get(role) if isinstance(spec, dict) else None
        if not isinstance(names, list) or not names:
            raise ParamsError(f"parameter datasets.{dataset}.{role} must be a non-empty list of sources")
        for name in names:
            if name not in SOURCES:
                raise ParamsError(
                    f"parameter datasets.{dataset}.{role} names unknown source {name!r}; valid: {', '.join(SOURCES)}"
                )
        out[role] = list(names)
    return out


def needed_sources(params: dict) -> list[str]:
    roles = dataset_sources(params)
    return sorted(set(roles["positives"]) | set(roles["negatives"]), key=SOURCES.index)


def validate_data_params(params: dict) -> None:
    """Check every data-stage parameter up front (called by each data stage)."""
    dataset_sources(params)
    require_int(params, "seed")
    require_int(params, "split.covid_test_images", 1)
    require_float(params, "split.val_fraction", 0.0, 0.9)
    require_int(params, "preprocess.cache_size", 32)
    require_choice(params, "preprocess.resize", ("stretch", "pad"))
    require_int(params, "preprocess.workers", 1)
    require_int(params, "augment.copies", 0)
    require_float(params, "augment.hflip_p", 0.0, 1.0)
    require_float(params, "augment.rotation_degrees", 0.0, 45.0)
    require_float(params, "negatives.public_test_fraction", 0.0, 0.9)
    for dataset in ("paper", "synthetic"):
        for pool in ("train", "test"):
            require_int(params, f"negatives.counts.{dataset}.{pool}.no_finding")
            require_int(params, f"negatives.counts.{dataset}.{pool}.per_category")
    views = get(params, "filter.frontal_views")
    if not isinstance(views, list) or not views:
        raise ParamsError("parameter filter.frontal_views must be a non-empty list of view names")
    if any(str(v).strip().upper() in {"L", "LATERAL"} for v in views):
        raise ParamsError("parameter filter.frontal_views must not contain a lateral view")


def flatten(d: dict, prefix: str = "") -> dict:
    """``{"test": {"auc": 0.9}}`` -> ``{"test.auc": 0.9}`` (keys already dotted are kept)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
