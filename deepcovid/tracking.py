"""MLflow tracking: one run per execution of the train stage, with its parameters, losses,
metrics and model.

Default store: ``sqlite:///<repository root>/mlflow.db`` as an absolute URI, so queued
``dvc exp run`` executions (which run in a temporary copy under ``.dvc/tmp/exps/``) log to
the repository's own database. ``MLFLOW_TRACKING_URI`` (or params ``mlflow.tracking_uri``)
overrides. Runs are tagged with the DVC experiment name and the git revision.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from deepcovid.config import flatten


def repository_root(cwd: str | Path | None = None) -> Path:
    """The user's repository root, also from inside a DVC experiment's temporary copy."""
    cwd = Path(cwd or os.getcwd()).resolve()
    parts = cwd.parts
    for i in range(len(parts) - 2):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return cwd


def tracking_uri(configured: str = "", cwd: str | Path | None = None) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if configured:
        return configured
    return f"sqlite:///{repository_root(cwd) / 'mlflow.db'}"


def git_revision(cwd: str | Path | None = None) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def start_run(experiment: str, configured_uri: str = "", run_name: str | None = None):
    """Set the tracking URI and experiment, and start a run tagged with DVC/git information."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no network calls from runs
    import mlflow

    uri = tracking_uri(configured_uri)
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None and uri.startswith("sqlite:"):
        # artifacts beside the database (absolute), not in the cwd: a queued DVC experiment
        # runs in a temporary copy that is deleted afterwards
        store = Path(uri[len("sqlite:///"):]).parent / "mlartifacts"
        mlflow.create_experiment(experiment, artifact_location=store.as_uri())
    mlflow.set_experiment(experiment)
    tags = {"git_revision": git_revision(), "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
            "dvc_exp_baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", "")}
    return mlflow.start_run(run_name=run_name or os.environ.get("DVC_EXP_NAME") or None,
                            tags={k: v for k, v in tags.items() if v})


def start_training_run(params: dict, device, provenance: dict, environment: dict):
    """Start the train stage's run (params ``mlflow``) and log its parameters, device, weights
    source and compute environment."""
    import mlflow


    run = start_run(params["mlflow"]["experiment"], params["mlflow"]["tracking_uri"])
    mlflow.log_params(flatten({"model": params["model"], "weights": params["weights"], "seed": int(params["seed"]),
                               "dataset": params.get("dataset"), "train": params["train"]}))
    mlflow.log_params({"device": str(device), "weights_source": provenance["weights_source"]})
    mlflow.log_params(environment)
    return run


def log_epoch(entry) -> None:
    """The losses of one epoch (a :class:`deepcovid.model.training.EpochLog`)."""
    import mlflow

    mlflow.log_metrics({"train_loss": entry.train_loss, "val_loss": entry.val_loss}, step=entry.epoch)


def registered_name(architecture: str) -> str:
    """The model registry's name of a trained model: one per architecture."""
    return f"deep-covid-{architecture}"


def finish_training_run(metrics: dict, environment: dict, seconds: float, *, plot, model_json, model_pt) -> None:
    """Log the numeric metrics (the environment is logged as parameters), the wall time, the
    loss curve, model.json and the model, and register the model; end the run.

    The model is logged as MLflow "model from code" (:mod:`deepcovid.model.mlflow_model`): a
    state_dict (``model_pt``) and ``model.json``, loaded without unpickling any code, with the
    deepcovid package beside it; registered as :func:`registered_name`. The run is tagged with
    the state_dict's SHA-256 (``model_sha256``) so later stages find it (the model card)."""
    import mlflow
    import mlflow.pyfunc
    import torch
    import torchvision
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from deepcovid import files
    from deepcovid.model import mlflow_model  # the model's code, logged as a file (nothing pickled)

    record = json.loads(Path(model_json).read_text(encoding="utf-8"))
    mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                        and v is not None and k not in environment})
    mlflow.log_metric("train_seconds", round(seconds, 1))
    mlflow.log_artifact(str(plot))
    mlflow.log_artifact(str(model_json))
    mlflow.set_tag("model_sha256", files.sha256_file(model_pt))
    package = Path(files.__file__).resolve().parent
    signature = ModelSignature(inputs=Schema([ColSpec("string")]), outputs=Schema([ColSpec("double", "score")]))
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}",
                    "pillow", "numpy", "pandas", "pydicom"]
    if record["architecture"].startswith("efficientnet_lite"):
        requirements.append("efficientnet-lite-pytorch==0.1.0")
    mlflow.pyfunc.log_model(name="model", python_model=mlflow_model.__file__,
                            artifacts={"state_dict": str(model_pt), "model_json": str(model_json)},
                            code_paths=[str(package)], signature=signature, pip_requirements=requirements,
                            registered_model_name=registered_name(record["architecture"]),
                            metadata={"architecture": record["architecture"], "preprocessing": record["preprocessing"],
                                      "classes": record["classes"], "intended_use": "research only; not for "
                                      "clinical diagnosis"})
    mlflow.end_run()


def log_to_training_run(path: str | Path, model_sha256: str, experiment: str, configured_uri: str = "") -> str | None:
    """Log the file ``path`` to the training run of the model whose state_dict has this SHA-256
    (the run's ``model_sha256`` tag; the newest if several); return its run id, or None when
    the store holds no such run (trained without MLflow)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(configured_uri))
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.model_sha256 = '{model_sha256}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None
    client.log_artifact(runs[0].info.run_id, str(path))
    return runs[0].info.run_id
