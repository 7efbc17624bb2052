"""MLflow tracking: one run per execution of the train stage.

Default store: ``sqlite:///<repository root>/mlflow.db`` as an absolute URI, so queued
``dvc exp run`` executions (which run in a temporary copy under ``.dvc/tmp/exps/``) log to
the repository's own database. ``MLFLOW_TRACKING_URI`` (or params ``mlflow.tracking_uri``)
overrides. Runs are tagged with the DVC experiment name and the git revision.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


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
