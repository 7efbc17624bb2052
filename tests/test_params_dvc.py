"""params.yaml validation and the shape of the DVC pipeline."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deepcovid.params import ParamsError, get, load_params, validate_data_params

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def params():
    return load_params(REPO / "params.yaml")


def test_committed_params_are_valid(params):
    validate_data_params(params)
    assert params["dataset"] == "synthetic"


@pytest.mark.parametrize("key,value,fragment", [
    ("dataset", "chexpert", "parameter dataset must be one of synthetic, paper, public"),
    ("split.val_fraction", 1.5, "parameter split.val_fraction must be a number in [0.0, 0.9]"),
    ("split.covid_test_images", 0, "parameter split.covid_test_images must be an integer >= 1"),
    ("preprocess.resize", "crop", "parameter preprocess.resize must be one of stretch, pad"),
    ("filter.frontal_views", ["PA", "L"], "must not contain a lateral view"),
])
def test_bad_params_named(params, key, value, fragment):
    node = params
    *parents, last = key.split(".")
    for p in parents:
        node = node[p]
    node[last] = value
    with pytest.raises(ParamsError) as err:
        validate_data_params(params)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_missing_param_and_bad_yaml(tmp_path, params):
    del params["split"]["val_fraction"]
    with pytest.raises(ParamsError, match="split.val_fraction is missing"):
        validate_data_params(params)
    bad = tmp_path / "params.yaml"
    bad.write_text("dataset: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_unknown_dataset_source(params):
    params["datasets"]["public"]["negatives"] = ["mimic"]
    params["dataset"] = "public"
    with pytest.raises(ParamsError, match="unknown source 'mimic'"):
        validate_data_params(params)


def test_dvc_yaml_params_exist(params):
    """Every params key a stage depends on exists in params.yaml."""
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    for name, stage in pipeline["stages"].items():
        for key in stage.get("params", []):
            for dotted in (key if isinstance(key, dict) else {None: [key]}).values():
                for k in dotted:
                    get(params, k)  # raises ParamsError when missing
        assert stage["cmd"].startswith("python stages/"), name
        script = stage["cmd"].split()[1]
        assert script in stage["deps"], f"stage {name} does not depend on its own script"


def test_dvc_dag(tmp_path):
    """`dvc dag` shows the data stages in order (runs DVC on a copy of the pipeline files)."""
    dvc = shutil.which("dvc", path=str(Path(sys.executable).parent)) or "dvc"
    for f in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / f, tmp_path / f)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True, env=env)
    out = subprocess.run([dvc, "dag", "--md"], cwd=tmp_path, check=True, capture_output=True, text=True, env=env).stdout
    names = dict(re.findall(r'(node\d+)\["([^"]+)"\]', out))
    edges = {(names[a], names[b]) for a, b in re.findall(r"(node\d+)-->(node\d+)", out)}
    for edge in [("fetch", "filter"), ("fetch", "negatives"), ("filter", "split"), ("negatives", "split"),
                 ("split", "preprocess"), ("preprocess", "augment")]:
        assert edge in edges, out
