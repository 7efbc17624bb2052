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
import shutil
import subprocess
import tempfile
from pathlib import Path

from deepcovid.config import Params, flatten
from deepcovid.errors import DeepCovidError


class TrackingError(DeepCovidError):
    """The MLflow store cannot be opened or written."""


def _store_failure(uri: str, exc: BaseException) -> TrackingError:
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return TrackingError(
        f"MLflow store {uri} cannot be used ({type(exc).__name__}: {first}); set "
        "mlflow.tracking_uri (or MLFLOW_TRACKING_URI) to a store you can write, or "
        "mlflow.enabled: false to train without MLflow"
    )


def open_store(experiment: str, configured_uri: str = "") -> str:
    """Open the tracking store and make sure ``experiment`` exists in it, before any long work: a store
    that cannot be opened (an unwritable folder, a server that does not answer...) is a one-line
    :class:`TrackingError` naming the URI. HTTP stores are tried once, not with MLflow's minutes of
    retries. Returns the URI."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no network calls from runs
    import mlflow

    uri = tracking_uri(configured_uri)
    patience = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
    saved = {k: os.environ.get(k) for k in patience}
    os.environ.update(patience)
    try:
        mlflow.set_tracking_uri(uri)
        if mlflow.get_experiment_by_name(experiment) is None:
            location = None
            if uri.startswith("sqlite:"):
                # artifacts beside the database (absolute), not in the cwd: a queued DVC experiment
                # runs in a temporary copy that is deleted afterwards
                location = (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").as_uri()
            mlflow.create_experiment(experiment, artifact_location=location)
    except Exception as exc:  # whatever the backend raises (sqlalchemy, requests, MlflowException)
        raise _store_failure(uri, exc) from exc
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return uri


def repository_root(cwd: str | Path | None = None) -> Path:
    """The user's repository root, also from inside a DVC experiment's temporary copy."""
    cwd = Path(cwd or os.getcwd()).resolve()
    parts = cwd.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
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
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def start_run(experiment: str, configured_uri: str = "", run_name: str | None = None):
    """Open the store (:func:`open_store`), set the experiment, and start a run tagged with DVC/git
    information."""
    import mlflow

    uri = open_store(experiment, configured_uri)
    tags = {
        "git_revision": git_revision(),
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "dvc_exp_baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", ""),
    }
    try:
        mlflow.set_experiment(experiment)
        return mlflow.start_run(
            run_name=run_name or os.environ.get("DVC_EXP_NAME") or None, tags={k: v for k, v in tags.items() if v}
        )
    except Exception as exc:
        raise _store_failure(uri, exc) from exc


def start_training_run(params: Params, device, provenance: dict, environment: dict):
    """Start the train stage's run (params ``mlflow``) and log its parameters, device, weights
    source and compute environment."""
    import mlflow

    run = start_run(params.mlflow.experiment, params.mlflow.tracking_uri)
    mlflow.log_params(
        flatten(
            {
                "model": params.model,
                "weights": params.weights,
                "seed": params.seed,
                "dataset": params.dataset,
                "train": params.train.as_dict(),
            }
        )
    )
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


def finish_training_run(
    metrics: dict, environment: dict, seconds: float, *, plot, model_json, model_pt, segmenter=None
) -> None:
    """Log the numeric metrics (the environment is logged as parameters), the wall time, the
    loss curve, model.json and the model, and register the model; end the run.

    The model is logged as MLflow "model from code": a state_dict (``model_pt``) and
    ``model.json`` (with a model of ``preprocess.lungs`` crop or mask, the ``segmenter`` folder too:
    its weights and record, checked on loading against model.json's digest), loaded without
    unpickling anything, by :mod:`deepcovid.model.mlflow_loader`,
    which imports the installed deepcovid package (no copy of the package is logged); registered as
    :func:`registered_name`. The run is tagged with the state_dict's SHA-256 (``model_sha256``) so later
    stages find it (the model card)."""
    import mlflow
    import mlflow.pyfunc
    import torch
    import torchvision
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from deepcovid import files
    from deepcovid.model import mlflow_loader  # the file MLflow runs on loading (nothing pickled)

    record = json.loads(Path(model_json).read_text(encoding="utf-8"))
    mlflow.log_metrics(
        {
            k: v
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None and k not in environment
        }
    )
    mlflow.log_metric("train_seconds", round(seconds, 1))
    mlflow.log_artifact(str(plot))
    mlflow.log_artifact(str(model_json))
    mlflow.set_tag("model_sha256", record["model_sha256"])  # model.pt's, as model.json records it
    loader = Path(mlflow_loader.__file__)
    loader_sha256 = files.sha256_file(loader)
    mlflow.set_tag("loader_sha256", loader_sha256)
    signature = ModelSignature(inputs=Schema([ColSpec("string")]), outputs=Schema([ColSpec("double", "score")]))
    requirements = [
        f"torch=={torch.__version__.split('+')[0]}",
        f"torchvision=={torchvision.__version__.split('+')[0]}",
        "pillow",
        "numpy",
        "pandas",
        "pydicom",
        "simplejpeg",
    ]
    if record["architecture"].startswith("efficientnet_lite"):
        requirements.append("efficientnet-lite-pytorch==0.1.0")
    artifacts = {"state_dict": os.path.relpath(model_pt), "model_json": os.path.relpath(model_json)}
    if segmenter is not None:
        import monai

        artifacts["segmenter"] = os.path.relpath(segmenter)
        requirements.append(f"monai=={monai.__version__}")
    # No absolute path of this checkout in what is logged: artifacts relative to the working
    # directory, the loader from a temporary copy (MLflow records the loader's resolved path).
    # No code_paths: loading imports the installed deepcovid package, not a copy stored in the artifact.
    staging = Path(tempfile.mkdtemp(prefix="deepcovid-mlflow-"))
    try:
        shutil.copyfile(loader, staging / loader.name)
        mlflow.pyfunc.log_model(
            name="model",
            python_model=str(staging / loader.name),
            artifacts=artifacts,
            signature=signature,
            pip_requirements=requirements,
            registered_model_name=registered_name(record["architecture"]),
            metadata={
                "architecture": record["architecture"],
                "preprocessing": record["preprocessing"],
                "classes": record["classes"],
                "model_sha256": record["model_sha256"],
                "loader_sha256": loader_sha256,
                "intended_use": "research only; not for clinical diagnosis",
            },
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    mlflow.end_run()


def log_to_training_run(path: str | Path, model_sha256: str, experiment: str, configured_uri: str = "") -> str | None:
    """Log the file ``path`` to the training run of the model whose state_dict has this SHA-256
    (the run's ``model_sha256`` tag; the newest if several); return its run id, or None when
    the store holds no such run (trained without MLflow)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(configured_uri)
    client = MlflowClient(tracking_uri=uri)
    try:
        exp = client.get_experiment_by_name(experiment)
    except Exception as exc:
        raise _store_failure(uri, exc) from exc
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.model_sha256 = '{model_sha256}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return None
    client.log_artifact(runs[0].info.run_id, str(path))
    return runs[0].info.run_id
