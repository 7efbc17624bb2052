"""MLflow tracking: one run per execution of the train stage, with its parameters, losses,
metrics and model.

Default store: ``sqlite:///<repository root>/mlflow.db`` as an absolute URI, so queued
``dvc exp run`` executions (which run in a temporary copy under ``.dvc/tmp/exps/``) log to
the repository's own database. ``MLFLOW_TRACKING_URI`` (or params ``mlflow.tracking_uri``)
overrides. Runs are tagged with the DVC experiment name and the git revision.
"""

from __future__ import annotations

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


def finish_training_run(metrics: dict, environment: dict, seconds: float, *, plot, model_json, model) -> None:
    """Log the numeric metrics (the environment is logged as parameters), the wall time, the
    loss curve, model.json and the model itself; end the run."""
    import mlflow
    import mlflow.pytorch
    import torch

    mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                        and v is not None and k not in environment})
    mlflow.log_metric("train_seconds", round(seconds, 1))
    mlflow.log_artifact(str(plot))
    mlflow.log_artifact(str(model_json))
    # pickle format: the pt2 default traces the graph, which needs an input example and
    # does not support every architecture here (efficientnet-lite's own modules)
    mlflow.pytorch.log_model(model.cpu(), name="model", serialization_format="pickle",
                             pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
    mlflow.end_run()
