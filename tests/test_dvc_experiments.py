"""DVC end to end on a tiny configuration, in a scratch git repository:
`dvc repro` builds everything, `dvc status` is then clean, and changing `model` (as
`dvc exp run -S model=...` does) re-runs only the stages that depend on the model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workspace import REPO, TINY

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
MODEL_STAGES = {"featurize", "train"}


def _sh(cmd, cwd, env):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    for item in ("dvc.yaml", "params.yaml", "stages", "deepcovid", "curation", ".dvcignore"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, root / item)
    params = yaml.safe_load((root / "params.yaml").read_text())
    for key, value in {**TINY, "train.mode": "last_layer"}.items():
        node = params
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "GIT_CONFIG_GLOBAL": os.devnull}
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    _sh(git + ["init", "-q"], root, env)
    _sh([str(BIN / "dvc"), "init", "-q"], root, env)
    (root / ".gitignore").write_text("__pycache__/\nmlflow.db\nmlartifacts/\ncheckpoints/\n")
    _sh(git + ["add", "-A"], root, env)
    _sh(git + ["commit", "-qm", "init"], root, env)
    _sh([str(BIN / "dvc"), "repro"], root, env)
    return root, env


def _stale(root, env) -> set:
    out = _sh([str(BIN / "dvc"), "status", "--json"], root, env)
    return set(json.loads(out or "{}"))


def test_repro_then_status_clean(project):
    root, env = project
    assert _stale(root, env) == set()
    assert (root / "data/predictions.csv").is_file() and (root / "models/model.pt").is_file()


def test_changing_model_reruns_only_model_stages(project):
    root, env = project
    params_path = root / "params.yaml"
    original = params_path.read_text()
    try:
        params = yaml.safe_load(original)
        params["model"] = "squeezenet"
        params_path.write_text(yaml.safe_dump(params, sort_keys=False))
        stale = _stale(root, env)
        assert MODEL_STAGES <= stale
        data_stages = {"fetch", "filter", "negatives", "duplicates", "split", "preprocess", "augment"}
        assert not (stale & data_stages), f"data stages would re-run: {stale & data_stages}"
        dry = _sh([str(BIN / "dvc"), "repro", "--dry"], root, env)
        assert "Running stage 'featurize'" in dry and "Running stage 'fetch'" not in dry
    finally:
        params_path.write_text(original)
    assert _stale(root, env) == set()
