"""Same results on any machine: the full-training checkpoint key, and bitwise determinism of
the last-layer path (backbone features + head training + scores).

- The checkpoint key (deepcovid.model.checkpoints.checkpoint_inputs / checkpoint_key) changes with
  every input that changes the result, and only with those (not with the folder's location).
- The last-layer path run twice (same seed, same thread count) is bitwise identical, in one
  process and in two; with the CPU kernels capped (ONEDNN_MAX_CPU_ISA=AVX2,
  ATEN_CPU_CAPABILITY=default) it differs by rounding only (scores within 1e-4).

This file is also the script those subprocesses run: ``python tests/test_reproducibility.py
--out result.npz`` writes the features, the head's weights and the scores of one run.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # when run as a script
    sys.path.insert(0, str(REPO))

from deepcovid.config import validate  # noqa: E402
from deepcovid.files import tree_digest  # noqa: E402
from deepcovid.model.checkpoints import checkpoint_inputs, checkpoint_key  # noqa: E402


@pytest.fixture
def deterministic():
    """torch's deterministic-algorithms mode for one test (restored afterwards: it is global)."""
    from deepcovid.model.environment import enable_determinism

    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    enable_determinism()
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    torch.set_num_threads(threads)


def test_determinism_modes_and_the_environment_record(deterministic, monkeypatch):
    from deepcovid.model.environment import DETERMINISM_ENV, compute_environment, enable_determinism

    monkeypatch.delenv(DETERMINISM_ENV, raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    assert enable_determinism() == "strict"
    assert torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"]  # what deterministic cuBLAS needs
    env = compute_environment()
    assert env == {
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "ONEDNN_MAX_CPU_ISA": None,
        "ATEN_CPU_CAPABILITY": None,
        "deterministic_algorithms": "strict",
    }

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    monkeypatch.setenv(DETERMINISM_ENV, "warn")  # the way out, for an op with no deterministic version
    assert enable_determinism() == "warn"
    env = compute_environment()
    assert env["ONEDNN_MAX_CPU_ISA"] == "AVX2" and env["ATEN_CPU_CAPABILITY"] == "default"
    assert env["deterministic_algorithms"] == "warn"
    torch.use_deterministic_algorithms(False)
    assert compute_environment()["deterministic_algorithms"] == "off"

    monkeypatch.setenv(DETERMINISM_ENV, "sometimes")
    with pytest.raises(ValueError, match=DETERMINISM_ENV) as err:
        enable_determinism()
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ a. the checkpoint key


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture
def data_ws(tmp_path) -> Path:
    """A stand-in for the data stages' outputs: manifest, preprocessed and augmented folders."""
    ws = tmp_path / "ws"
    _write(ws / "data/manifest.csv", b"image_id,split,label\na,train,1\nb,val,0\n")
    _write(ws / "data/preprocessed/index.csv", b"image_id,cache_path\na,cohen/a.png\nb,chexpert/b.png\n")
    _write(ws / "data/preprocessed/cohen/a.png", bytes(range(200)))
    _write(ws / "data/preprocessed/chexpert/b.png", bytes(range(100, 250)))
    _write(ws / "data/augmented/index.csv", b"image_id,parent,cache_path\na_aug0,a,a_aug0.png\n")
    _write(ws / "data/augmented/a_aug0.png", bytes(range(50, 220)))
    _write(ws / "code/extra.py", b"# stage code\n")
    return ws


def _params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def _key(ws: Path, params: dict | None = None, provenance: dict | None = None, **kw) -> str:
    kw = {"device": "cpu", "world_size": 1, "code_files": [ws / "code/extra.py"], **kw}
    inputs = checkpoint_inputs(
        validate(params or _params()),
        provenance or {"weights_sha256": None},
        manifest=ws / "data/manifest.csv",
        preprocessed=ws / "data/preprocessed",
        augmented=ws / "data/augmented",
        **kw,
    )
    json.dumps(inputs, allow_nan=False)  # plain JSON
    return checkpoint_key(inputs)


def _flip_byte(path: Path) -> None:  # same size, other content
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _set(dotted: str, *values):
    """Set a dotted parameter to the first of ``values`` that differs from its value now."""

    def change(params):
        node = params
        *parents, last = dotted.split(".")
        for part in parents:
            node = node[part]
        node[last] = next(v for v in values if v != node[last])

    return change


FILE_CHANGES = {
    "manifest": lambda ws: _flip_byte(ws / "data/manifest.csv"),
    "preprocessed index.csv": lambda ws: _flip_byte(ws / "data/preprocessed/index.csv"),
    "preprocessed image content": lambda ws: _flip_byte(ws / "data/preprocessed/cohen/a.png"),
    "preprocessed image renamed": lambda ws: (ws / "data/preprocessed/cohen/a.png").rename(
        ws / "data/preprocessed/cohen/a2.png"
    ),
    "preprocessed image added": lambda ws: _write(ws / "data/preprocessed/cohen/c.png", b"\x89PNG"),
    "augmented index.csv": lambda ws: _flip_byte(ws / "data/augmented/index.csv"),
    "augmented image content": lambda ws: _flip_byte(ws / "data/augmented/a_aug0.png"),
    "augmented folder gone": lambda ws: shutil.rmtree(ws / "data/augmented"),
    "stage code": lambda ws: _flip_byte(ws / "code/extra.py"),
}

PARAM_CHANGES = {
    "augment.copies": _set("augment.copies", 7, 8),
    "augment.rotation_degrees": _set("augment.rotation_degrees", 11, 12),
    "augment.scale": _set("augment.scale", [0.9, 1.1], [0.8, 1.2]),
    "preprocess.cache_size": _set("preprocess.cache_size", 300, 301),
    "preprocess.resize": _set("preprocess.resize", "pad", "stretch"),
    "preprocess.grayscale": _set("preprocess.grayscale", False, True),
    "train.lr": _set("train.lr", 0.0005, 0.0006),
    "train.epochs": _set("train.epochs", 13, 14),
    "train.num_workers": _set("train.num_workers", 0, 1),
    "seed": _set("seed", 43, 44),
    "model": _set("model", "resnet50", "densenet121"),
    "weights": _set("weights", "imagenet", "none"),
}


def test_checkpoint_key_is_stable_and_location_independent(data_ws, tmp_path):
    key = _key(data_ws)
    assert len(key) == 64 and _key(data_ws) == key
    moved = tmp_path / "elsewhere" / "ws"
    shutil.copytree(data_ws, moved)
    assert _key(moved) == key
    # the order of keys in params.yaml does not matter
    params = _params()
    reordered = {
        k: (dict(reversed(list(v.items()))) if isinstance(v, dict) else v) for k, v in reversed(list(params.items()))
    }
    assert _key(data_ws, reordered) == key
    # the digest of a folder covers every file under it, by relative path
    assert tree_digest(data_ws / "data/preprocessed") == tree_digest(moved / "data/preprocessed")


@pytest.mark.parametrize("change", list(FILE_CHANGES))
def test_checkpoint_key_changes_with_the_data(data_ws, change):
    before = _key(data_ws)
    FILE_CHANGES[change](data_ws)
    assert _key(data_ws) != before


@pytest.mark.parametrize("change", list(PARAM_CHANGES))
def test_checkpoint_key_changes_with_the_parameters(data_ws, change):
    params = _params()
    before = _key(data_ws, params)
    changed = copy.deepcopy(params)
    PARAM_CHANGES[change](changed)
    assert _key(data_ws, changed) != before


def test_checkpoint_key_changes_with_device_and_process_count(data_ws):
    keys = {
        _key(data_ws),
        _key(data_ws, device="cuda"),
        _key(data_ws, device=torch.device("cuda", 1)),
        _key(data_ws, world_size=2),
    }
    assert len(keys) == 3  # cuda == cuda:1: the device type matters, not the index


def test_checkpoint_key_changes_with_the_weights_file(data_ws, tmp_path):
    """Same path, other weights: the sha256 that build_model reports changes the key."""
    from deepcovid.model.weights import build_model

    params = _params()
    path = tmp_path / "weights.pt"
    params["weights"] = str(path)
    torch.manual_seed(0)
    model, _ = build_model("squeezenet", "none")
    torch.save(model.state_dict(), path)
    _, prov_a = build_model("squeezenet", str(path))
    torch.manual_seed(1)
    torch.save(build_model("squeezenet", "none")[0].state_dict(), path)
    _, prov_b = build_model("squeezenet", str(path))
    assert prov_a["weights_sha256"] and prov_a["weights_sha256"] != prov_b["weights_sha256"]
    assert _key(data_ws, params, prov_a) != _key(data_ws, params, prov_b)
    assert _key(data_ws, params, prov_a) == _key(data_ws, params, dict(prov_a))


# ------------------------------------------------------------------ b. the last-layer path, bitwise


def last_layer_run(threads: int = 1, seed: int = 11) -> dict[str, np.ndarray]:
    """The last-layer method on a tiny problem: a seeded random-init resnet18's features
    (channels_last, as the featurize stage computes them), a head trained on them (as the
    train stage does) and the test scores. Returns numpy arrays."""
    from torch.utils.data import TensorDataset

    from deepcovid.model.architectures import split_backbone_head
    from deepcovid.model.environment import seed_everything
    from deepcovid.model.features import extract_features
    from deepcovid.model.training import train_head
    from deepcovid.model.weights import build_model

    torch.set_num_threads(threads)
    seed_everything(seed)  # and deterministic algorithms
    model, _ = build_model("resnet18", "none")
    backbone, head = split_backbone_head(model, "resnet18")
    gen = torch.Generator().manual_seed(0)
    n = 48
    labels = torch.arange(n) % 2
    images = torch.randn(n, 3, 64, 64, generator=gen)
    images[labels == 1, :, 16:48, 16:48] += 1.0  # a bright square: class 1
    feats = extract_features(backbone, TensorDataset(images, labels), batch_size=16, progress=False)
    x = torch.from_numpy(feats)
    head, history, best = train_head(
        head, x[:24], labels[:24], x[24:32], labels[24:32], epochs=6, batch_size=8, lr=1e-3, seed=seed
    )
    with torch.no_grad():
        scores = torch.softmax(head(x[32:]), 1)[:, 1].numpy()
    out = {
        "features": feats,
        "scores": scores,
        "val_loss": np.array([h.val_loss for h in history]),
        "best_epoch": np.array(best),
    }
    out.update({f"head.{k}": v.detach().numpy().copy() for k, v in head.state_dict().items()})
    return out


def _assert_bitwise(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), f"{k} differs: max |diff| {np.abs(a[k] - b[k]).max()}"


def test_last_layer_training_is_bitwise_identical_in_one_process(deterministic):
    first = last_layer_run(threads=2)
    second = last_layer_run(threads=2)
    assert len(first["scores"]) == 16 and np.ptp(first["scores"]) > 0  # a real, non-constant result
    _assert_bitwise(first, second)


def _script(out: Path, **env) -> subprocess.Popen:
    full_env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "DNNL_MAX_CPU_ISA")
    }
    full_env.update(OMP_NUM_THREADS="1", ONEDNN_VERBOSE="1", **env)
    return subprocess.Popen(
        [sys.executable, __file__, "--out", str(out)],
        cwd=REPO,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _max_diff(a: dict, b: dict, key: str) -> float:
    return float(np.abs(a[key].astype(np.float64) - b[key].astype(np.float64)).max())


@pytest.mark.slow
@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkldnn.is_available(),
    reason="ONEDNN_MAX_CPU_ISA=AVX2 needs an x86-64 CPU and a torch built with oneDNN",
)
def test_last_layer_training_across_processes_and_cpu_kernels(tmp_path):
    """Four processes, one thread each: the default CPU kernels twice (bitwise identical),
    oneDNN capped at AVX2, ATen's vectorised kernels off (ATEN_CPU_CAPABILITY=default).
    Another instruction set changes rounding only: scores agree within 1e-4."""
    runs = {
        "default": {},
        "default-again": {},
        "onednn-avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
        "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
    }
    procs = {name: _script(tmp_path / f"{name}.npz", **env) for name, env in runs.items()}
    results, isa = {}, {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name}:\n{stderr[-3000:]}"
        with np.load(tmp_path / f"{name}.npz") as npz:
            results[name] = {k: npz[k] for k in npz.files if k != "environment"}
            environment = json.loads(str(npz["environment"]))
        match = re.search(r"onednn_verbose,.*?info,cpu,isa:(.*)", stdout)
        isa[name] = (match.group(1).strip() if match else None, environment["cpu_capability"])
        assert environment["torch_threads"] == 1 and environment["deterministic_algorithms"] == "strict"
        assert "convolution" in stdout, f"{name}: oneDNN ran no convolution"
    # the caps took effect
    assert isa["onednn-avx2"][0] == "Intel AVX2"
    assert isa["aten-default"][1] == "DEFAULT"

    _assert_bitwise(results["default"], results["default-again"])
    ref = results["default"]
    report = {}
    for name in ("onednn-avx2", "aten-default"):
        report[name] = {
            key: _max_diff(ref, results[name], key)
            for key in ("features", "scores", "val_loss", "head.weight", "head.bias")
        }
    print(f"\nCPU kernels (oneDNN isa, ATen capability): {isa}")
    print(f"max |difference| against the default kernels: {json.dumps(report, indent=1)}")
    for name, diffs in report.items():
        assert diffs["scores"] <= 1e-4, (name, diffs)
        assert int(results[name]["best_epoch"]) == int(ref["best_epoch"])


def main() -> None:
    ap = argparse.ArgumentParser(description="one last-layer run, for the subprocess tests")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    from deepcovid.model.environment import compute_environment

    result = last_layer_run(threads=args.threads)
    np.savez(args.out, environment=np.array(json.dumps(compute_environment())), **result)


if __name__ == "__main__":
    main()
