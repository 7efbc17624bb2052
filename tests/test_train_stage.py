"""The featurize and train stages on tiny synthetic data: outputs, MLflow, the compute
environment record, bitwise reruns, the full-training checkpoint, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from workspace import copy_without, error_line, override_params, read, registry_scores, run_stage

# the tests' model, whatever params.yaml's default: random init (offline, fast)
MODEL = {"model": "resnet18", "weights": "none"}
ENVIRONMENT_KEYS = [
    "torch_threads",
    "cpu_capability",
    "ONEDNN_MAX_CPU_ISA",
    "ATEN_CPU_CAPABILITY",
    "deterministic_algorithms",
]


@pytest.fixture(scope="module")
def tiny_data(tiny_trained, tmp_path_factory):
    """The tiny pipeline after its data stages: the shared tiny trained pipeline (the same parameters:
    TINY and MODEL) without what featurize, train and evaluate wrote."""
    params = yaml.safe_load((tiny_trained / "params.yaml").read_text())
    assert all(params[k] == v for k, v in MODEL.items())
    return copy_without(tiny_trained, tmp_path_factory.mktemp("tiny") / "ws", ["featurize", "train", "evaluate"])


def _with(ws_src, dst, **overrides):
    shutil.copytree(ws_src, dst)
    override_params(dst / "params.yaml", dst / "params.yaml", overrides)
    return dst


def test_last_layer_outputs_and_mlflow(tiny_data, tmp_path):
    ws = _with(tiny_data, tmp_path / "ws", **{"train.mode": "last_layer"})
    db = tmp_path / "mlflow.db"
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{db}", "DVC_EXP_NAME": "unit-exp"}
    run_stage(ws, "featurize")
    meta = json.loads((ws / "data/features/meta.json").read_text())
    assert meta["model"] == "resnet18" and meta["provenance"]["weights"] == "none"
    run_stage(ws, "train", env=env)

    pred = read(ws / "data/predictions.csv")
    assert list(pred.columns) == ["image_id", "source", "patient", "label", "group", "category", "split", "score"]
    manifest = read(ws / "data/manifest.csv")
    held_out = manifest[manifest["split"].isin(["val", "test"])]
    assert set(pred["image_id"]) == set(held_out["image_id"])  # every val/test image, no augmented copy
    scores = pred["score"].astype(float)
    assert scores.between(0, 1).all()
    model = json.loads((ws / "models/model.json").read_text())
    assert model["architecture"] == "resnet18" and model["weights"]["weights"] == "none"
    assert model["classes"] == ["non-COVID", "COVID-19"]
    curve = pd.read_csv(ws / "plots/train_loss.csv")
    assert list(curve["epoch"]) == [1, 2, 3]
    metrics = json.loads((ws / "metrics/train.json").read_text())
    assert 1 <= metrics["best_epoch"] <= 3 and metrics["device"] == "cpu"
    # what bitwise results depend on: in metrics/train.json and MLflow, never in a DVC output
    assert metrics["torch_threads"] >= 1 and metrics["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert metrics["deterministic_algorithms"] == "strict"
    assert {"ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"} <= metrics.keys()
    assert not {"torch_threads", "cpu_capability"} & (set(meta) | set(model))

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name("deep-covid")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["model"] == "resnet18" and run.data.params["train.epochs"] == "3"
    assert run.data.params["train.mode"] == "last_layer"
    for key in ENVIRONMENT_KEYS:
        assert run.data.params[key] == str(metrics[key]), key
        assert key not in run.data.metrics
    assert run.data.tags["dvc_exp_name"] == "unit-exp"
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in history] == [1, 2, 3]
    assert run.data.metrics["test_auc"] == pytest.approx(metrics["test_auc"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"train_loss.csv", "model.json"} <= artifacts

    # the registered model: one version, tagged with the state_dict's digest, loads without unpickling
    from deepcovid.files import sha256_file

    versions = client.search_model_versions("name='deep-covid-resnet18'")
    assert [v.run_id for v in versions] == [run.info.run_id]
    assert run.data.tags["model_sha256"] == sha256_file(ws / "models/model.pt")
    test_ids = pred.loc[pred["split"] == "test", "image_id"].head(3).tolist()
    from deepcovid.data.sources import image_path, read_sources

    rows = manifest.set_index("image_id")
    roots = read_sources(ws / "data/raw")
    paths = [str(image_path(roots, rows.loc[i, "source"], rows.loc[i, "relpath"], ws / "data/raw")) for i in test_ids]
    loaded = registry_scores(f"sqlite:///{db}", "models:/deep-covid-resnet18/latest", paths, tmp_path)
    want = pred.set_index("image_id").loc[test_ids, "score"].astype(float).tolist()
    assert loaded == pytest.approx(want, abs=1e-6)
    import subprocess
    import sys

    listing = (
        "import json, sys\nfrom pathlib import Path\nimport mlflow\nmlflow.set_tracking_uri(sys.argv[1])\n"
        "from mlflow.artifacts import download_artifacts\n"
        "local = Path(download_artifacts('models:/deep-covid-resnet18/latest', dst_path=sys.argv[2]))\n"
        "print(json.dumps([p.relative_to(local).as_posix() for p in local.rglob('*') if p.is_file()]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", listing, f"sqlite:///{db}", str(tmp_path / "logged")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    logged = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert {"MLmodel", "mlflow_loader.py", "artifacts/model.pt", "artifacts/model.json"} <= logged, logged
    assert not [p for p in logged if p.endswith((".pkl", ".pickle"))], logged
    # no copy of the package (loading runs the installed deepcovid), and no absolute path of the
    # checkout in what the project logs (MLflow's own artifact_path is the store's location)
    assert not [p for p in logged if p.startswith("code/") or p.endswith(".py") and p != "mlflow_loader.py"], logged

    mlmodel = yaml.safe_load((tmp_path / "logged" / "MLmodel").read_text())
    flavor = mlmodel["flavors"]["python_function"]
    recorded = [flavor["model_code_path"], *(a["uri"] for a in flavor["artifacts"].values())]
    assert Path(flavor["model_code_path"]).name == "mlflow_loader.py"
    checkouts = (str(ws.resolve()), str(Path(__file__).resolve().parents[1]))
    assert not [p for p in recorded if p.startswith(checkouts)], recorded
    from deepcovid.model import mlflow_loader

    assert mlmodel["metadata"]["loader_sha256"] == sha256_file(mlflow_loader.__file__)
    assert mlmodel["metadata"]["model_sha256"] == sha256_file(ws / "models/model.pt")
    # a state_dict swapped in the artifact is refused on loading (the digest model.json records)
    state = torch.load(tmp_path / "logged/artifacts/model.pt", weights_only=True)
    state["fc.bias"] = state["fc.bias"] + 1
    torch.save(state, tmp_path / "logged/artifacts/model.pt")
    swapped = "import mlflow, sys\nmlflow.pyfunc.load_model(sys.argv[1])\n"
    proc = subprocess.run(
        [sys.executable, "-c", swapped, str(tmp_path / "logged")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode != 0 and "come from different runs" in proc.stderr, proc.stderr[-2000:]

    # the model card, logged to the same run
    run_stage(ws, "evaluate")
    run_stage(ws, "card", env=env)
    card = (ws / "models/MODEL_CARD.md").read_text()
    assert "For research only" in card and "deep-covid-resnet18" in card
    assert "MODEL_CARD.md" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_last_layer_stages_are_bitwise_reproducible(tiny_data, tmp_path):
    """featurize and train twice, in two copies: every output byte for byte the same."""
    outputs = [
        "data/features/features.npy",
        "data/features/index.csv",
        "data/features/meta.json",
        "models/model.pt",
        "models/model.json",
        "data/predictions.csv",
        "plots/train_loss.csv",
        "metrics/train.json",
    ]
    runs = []
    for name in ("a", "b"):
        ws = _with(tiny_data, tmp_path / name, **{"train.mode": "last_layer"})
        run_stage(ws, "featurize")
        run_stage(ws, "train", args=("--no-mlflow",))
        runs.append({out: (ws / out).read_bytes() for out in outputs})
    for out in outputs:
        assert runs[0][out] == runs[1][out], out


def _checkpoint_path(ws: Path) -> Path:
    """Where the train stage keeps its full-training checkpoint for this workspace (CPU)."""
    from deepcovid.config import load_config
    from deepcovid.model.checkpoints import checkpoint_inputs, checkpoint_key
    from deepcovid.model.weights import build_model

    params = load_config(ws / "params.yaml")
    _, provenance = build_model(params.model, params.weights)
    inputs = checkpoint_inputs(
        params,
        provenance,
        manifest=ws / "data/manifest.csv",
        preprocessed=ws / "data/preprocessed",
        augmented=ws / "data/augmented",
        device="cpu",
    )
    return ws / params.train.checkpoint_dir / f"{params.model}-{checkpoint_key(inputs)[:16]}.pt"


def test_full_mode_skips_features_and_cleans_checkpoint(tiny_data, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("the checkpoint's name depends on the device; this test assumes CPU")
    ws = _with(tiny_data, tmp_path / "ws", **{"train.mode": "full", "train.epochs": 2})
    run_stage(ws, "featurize")
    assert json.loads((ws / "data/features/meta.json").read_text())["skipped"] is True
    # a checkpoint left broken by an earlier run: set aside with one warning line, not a traceback
    ckpt = _checkpoint_path(ws)
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"PK\x03\x04 cut short")
    proc = run_stage(ws, "train", args=("--no-mlflow",))
    assert f"checkpoint {ckpt.relative_to(ws)}" in proc.stderr  # the stage logs where it checkpoints
    warnings = [line for line in proc.stderr.splitlines() if "set aside" in line]
    assert len(warnings) == 1 and "training starts over" in warnings[0], proc.stderr[-3000:]
    assert ckpt.with_name(ckpt.name + ".corrupt").read_bytes() == b"PK\x03\x04 cut short"
    assert "resumed" not in proc.stderr and "Traceback" not in proc.stderr
    assert len(pd.read_csv(ws / "plots/train_loss.csv")) == 2
    assert not any((ws / "checkpoints").glob("*.pt"))  # removed after a completed run
    assert len(read(ws / "data/predictions.csv")) > 0
    metrics = json.loads((ws / "metrics/train.json").read_text())
    assert metrics["mode"] == "full" and metrics["deterministic_algorithms"] == "strict"


def test_unknown_model_lists_valid_names(tiny_data, tmp_path):
    ws = _with(tiny_data, tmp_path / "ws", model="vgg16")
    proc = run_stage(ws, "featurize", check=False)
    assert proc.returncode == 2
    line = error_line(proc)
    assert "vgg16" in line and "resnet18" in line and "squeezenet" in line and "efficientnet_lite0" in line


def test_features_from_other_weights_refused(tiny_data, tmp_path):
    ws = _with(tiny_data, tmp_path / "ws", **{"train.mode": "last_layer"})
    run_stage(ws, "featurize")
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["seed"] = params["seed"] + 1  # another random init: cached features no longer match
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = run_stage(ws, "train", check=False, args=("--no-mlflow",))
    assert proc.returncode == 2 and "other backbone weights" in error_line(proc)


def test_unusable_mlflow_store_fails_in_one_line_before_training(tiny_trained, tmp_path):
    ws = copy_without(tiny_trained, tmp_path / "ws", ["train", "evaluate"])  # the features are there
    (tmp_path / "a-file").write_text("not a folder")
    uri = f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}"
    proc = run_stage(ws, "train", check=False, env={"MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"MLflow store {uri} cannot be used" in error_line(proc)
    assert "epoch" not in proc.stderr and not (ws / "models" / "model.pt").exists()  # nothing trained, nothing written
    # mlflow.enabled: false trains without opening any store (the same unusable URI is never touched)
    override_params(ws / "params.yaml", ws / "params.yaml", {"mlflow.enabled": False})
    proc = run_stage(ws, "train", env={"MLFLOW_TRACKING_URI": uri})
    assert (ws / "models/model.pt").is_file() and "MLflow" not in proc.stderr
