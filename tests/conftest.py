"""Shared pytest fixtures.

Real-data tests use ``../shared/data`` (a downscaled subset of the Cohen and Actualmed
datasets). In a user's clone it is usually absent and those tests skip; CI sets
``DEEPCOVID_REQUIRE_SHARED=1`` so that a missing folder fails instead of skipping.
Override the location with ``DEEPCOVID_SHARED_DATA``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    env = os.environ.get("DEEPCOVID_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of the real test data folder (holding cohen/ and actualmed/)."""
    path = _shared_data_dir()
    if not (path / "cohen" / "metadata.csv").is_file():
        if os.environ.get("DEEPCOVID_REQUIRE_SHARED") == "1":
            pytest.fail(f"real test data required but not found at {path}")
        pytest.skip(f"real test data not found at {path}")
    return path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


def evaluate_to(root: Path, frame, cfg):
    """Run a predictions table through the evaluate stage's steps (load_predictions, evaluate,
    write_outputs) under ``root``; return (loaded frame, result, output paths)."""
    from deepcovid.evaluation.evaluate import evaluate
    from deepcovid.evaluation.predictions import load_predictions
    from deepcovid.evaluation.report import OutputPaths, write_outputs

    path = root / "predictions.csv"
    frame.to_csv(path, index=False)
    df = load_predictions(path)
    result = evaluate(df, cfg, name=str(path))
    paths = OutputPaths.under(root / "out")
    write_outputs(result, paths)
    return df, result, paths


@pytest.fixture(scope="session")
def cfg():
    """The evaluate section of the committed params.yaml."""
    from deepcovid.config import load_config
    from deepcovid.evaluation.evaluate import EvalConfig

    return EvalConfig.from_config(load_config(REPO_ROOT / "params.yaml"))


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory, worker_id) -> Path:
    """Built once per test run: under pytest-xdist the first worker that needs it builds it in the
    run's shared temporary folder while the others wait on a file lock, then all read it. Tests
    must not change its files (copy it first: :func:`workspace.copy_without`)."""
    from filelock import FileLock

    from workspace import TINY, TINY_TRAINED_STAGES, make_workspace, run_stage

    shared = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    root, done = shared / "tiny-trained", shared / "tiny-trained.done"
    with FileLock(shared / "tiny-trained.lock"):
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)  # a build interrupted in another worker
            root.mkdir()
            ws = make_workspace(root, **TINY, model="resnet18", weights="none")
            for stage in TINY_TRAINED_STAGES:
                run_stage(ws, stage, args=("--no-mlflow",) if stage == "train" else ())
            done.touch()
    return root


#: Fixtures that run pipeline stages in a workspace: their tests are marked ``pipeline``.
PIPELINE_FIXTURES = {"tiny_data", "tiny_trained"}


#: The longest modules (a minute or more with their fixtures), run first: under `--dist loadscope`
#: modules are handed out in collection order, and one of these last keeps a worker busy alone.
LONGEST_FIRST = (
    "test_dvc_experiments.py",
    "test_planted_tag.py",
    "test_audit.py",
    "test_training.py",
    "test_train_stage.py",
    "test_explain_occlusion.py",
    "test_cross_cpu.py",
    "test_hostile_input.py",
    "test_repeats.py",
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if PIPELINE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.pipeline)

    def rank(item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each module keeps its own order
