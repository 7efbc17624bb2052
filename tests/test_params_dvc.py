"""params.yaml validation and the shape of the DVC pipeline."""

import copy
import importlib.util
import operator
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def params():
    return yaml.safe_load((REPO / "params.yaml").read_text())


def get(params: dict, dotted: str):
    for part in dotted.split("."):
        params = params[part]
    return params


def _resolve(template: str, params: dict) -> str:
    """dvc.yaml's ${dotted.key} templating, with values from params."""
    return re.sub(r"\$\{([^}]*)\}", lambda m: str(get(params, m.group(1))), template)


@pytest.mark.parametrize("dataset", ["synthetic", "paper", "public"])
def test_dvc_yaml_params_exist(params, dataset):
    """Every params key a stage depends on exists in params.yaml, for every dataset."""
    params["dataset"] = dataset
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    made = set()  # what earlier stages write: a dependency on it need not exist in a clean clone
    for name, stage in pipeline["stages"].items():
        for key in stage.get("params", []):
            for dotted in (key if isinstance(key, dict) else {None: [key]}).values():
                for k in dotted:
                    get(params, _resolve(k, params))  # raises ParamsError when missing
        for dep in stage["deps"]:
            written = any(dep == out or dep.startswith(out.rstrip("/") + "/") for out in made)
            assert (REPO / _resolve(dep, params)).exists() or written, f"{name}: {dep}"
        for out in stage.get("outs", []) + stage.get("metrics", []):
            made.add(next(iter(out)) if isinstance(out, dict) else out)
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
    for edge in [
        ("fetch_params", "fetch"),
        ("fetch", "filter"),
        ("fetch", "negatives"),
        ("filter", "split"),
        ("negatives", "split"),
        ("filter", "duplicates"),
        ("negatives", "duplicates"),
        ("duplicates", "split"),
        ("split", "preprocess"),
        ("split", "segment"),
        ("segment", "preprocess"),
        ("preprocess", "augment"),
    ]:
        assert edge in edges, out


# ---- which stages a parameter change re-runs ---------------------------------------------------
# A scratch DVC repository holds the real dvc.yaml, params.yaml and code, dummy data and a dvc.lock
# committed for one dataset (`dvc commit -f`; the real fetch_params stage writes its file). Each
# case changes parameters and asks DVC (`dvc status`) which stages have changed dependencies:
# the stages whose params changed, and fetch when its dataset's parameters changed (it depends
# on data/fetch_params.json, rewritten first as `dvc exp run` would). Nothing else runs.

# the stages that read each parameter
SEED = {"negatives", "split", "segment", "augment", "featurize", "train", "evaluate", "explain", "audit", "repeats"}
TRAIN_INPUT = {"featurize", "train"}  # model, weights, train.mode, image_size, device, feature_batch_size
CASES = [  # (dataset of the committed lock, {dotted parameter: new value}, stages to re-run)
    ("synthetic", {"seed": 7}, {"fetch_params", "fetch", *SEED}),
    ("synthetic", {"dataset": "public"}, {"fetch_params", "fetch", "filter", "negatives", "split", "train", "card"}),
    ("synthetic", {"synthetic.cohen.covid_patients": 50}, {"fetch_params", "fetch"}),
    ("synthetic", {"synthetic.chexpert.style_shift": 0.5}, {"fetch_params", "fetch"}),
    ("synthetic", {"fetch.cohen.local_dir": "../covid-chestxray-dataset"}, {"fetch_params"}),
    ("synthetic", {"fetch.cohen.commit": "0" * 40}, {"fetch_params"}),
    ("synthetic", {"fetch.chexpert.path": "/data/CheXpert-v1.0-small"}, {"fetch_params"}),
    ("synthetic", {"datasets.synthetic.positives": ["cohen", "cohen"]}, {"fetch_params", "filter", "card"}),
    ("synthetic", {"datasets.public.positives": ["cohen"]}, set()),
    ("synthetic", {"filter.frontal_views": ["PA", "AP"]}, {"filter", "negatives"}),
    ("synthetic", {"filter.exclusions": "curation/other_exclusions.csv"}, {"filter", "card"}),
    ("synthetic", {"negatives.counts.synthetic.train.no_finding": 50}, {"negatives"}),
    ("synthetic", {"negatives.use_valid_csv": False}, {"negatives"}),
    ("synthetic", {"split.covid_test_images": 50}, {"split"}),
    ("synthetic", {"split.val_fraction": 0.25}, {"split", "repeats"}),
    ("synthetic", {"split.exclude_negatives_of_covid_patients": operator.not_}, {"split"}),
    ("synthetic", {"duplicates.max_distance": 20}, {"duplicates"}),
    ("synthetic", {"duplicates.workers": 1}, {"duplicates"}),
    ("synthetic", {"preprocess.cache_size": 300}, {"preprocess", "train"}),
    ("synthetic", {"preprocess.workers": 1}, {"preprocess", "train"}),
    ("synthetic", {"preprocess.max_pixels": 40_000_000}, {"duplicates", "segment", "preprocess", "train"}),
    ("synthetic", {"preprocess.lungs": "mask"}, {"preprocess", "train"}),
    ("synthetic", {"segment.epochs": 3}, {"segment"}),
    ("synthetic", {"augment.copies": 2}, {"augment", "train", "card"}),
    ("synthetic", {"augment.elastic_alpha": 1.5}, {"augment", "train"}),
    ("synthetic", {"model": "densenet161"}, {*TRAIN_INPUT, "repeats"}),
    ("synthetic", {"weights": "models/pretrained.pt"}, TRAIN_INPUT),
    ("synthetic", {"train.mode": "full"}, {*TRAIN_INPUT, "repeats"}),
    ("synthetic", {"train.image_size": 96}, TRAIN_INPUT),
    ("synthetic", {"train.device": "cpu-test"}, TRAIN_INPUT),
    ("synthetic", {"train.feature_batch_size": 7}, TRAIN_INPUT),
    ("synthetic", {"train.feature_runtime": "torch"}, TRAIN_INPUT),
    ("synthetic", {"train.normalization": "imagenet"}, TRAIN_INPUT),
    ("synthetic", {"preprocess.intensity": "clahe"}, {"preprocess", "train"}),
    ("synthetic", {"train.epochs": 3}, {"train", "repeats"}),
    ("synthetic", {"train.lr": 0.5}, {"train", "repeats"}),
    ("synthetic", {"train.shuffle_labels": operator.not_}, {"train", "repeats"}),
    ("synthetic", {"train.class_weight": "balanced"}, {"train", "repeats"}),
    ("synthetic", {"train.num_workers": 5}, {"train"}),
    ("synthetic", {"mlflow.experiment": "other"}, {"train", "card"}),
    ("synthetic", {"mlflow.enabled": False}, {"train", "card"}),
    ("synthetic", {"mlflow.tracking_uri": "sqlite:///other.db"}, {"train", "card"}),
    ("synthetic", {"evaluate.alpha": 0.1}, {"evaluate", "audit"}),
    ("synthetic", {"evaluate.ci_method": "clopper-pearson"}, {"evaluate", "audit"}),
    ("synthetic", {"evaluate.thresholds": [0.5]}, {"evaluate"}),
    ("synthetic", {"audit.flag_auc": 0.8}, {"audit"}),
    ("synthetic", {"repeats.splits": 5}, {"repeats"}),
    ("synthetic", {"repeats.workers": 1}, {"repeats"}),
    ("synthetic", {"evaluate.target_sensitivity": 0.9}, {"evaluate", "repeats", "card"}),
    ("synthetic", {"explain.window": 16}, {"explain"}),
    ("synthetic", {"explain.method": "approximate"}, {"explain"}),
    ("synthetic", {"regression.tolerances.test.auc": 0.5}, set()),
    ("synthetic", {"reproduction.tolerances.sanity_spearman": 0.5}, set()),
    ("public", {"seed": 7}, {"fetch_params", *SEED}),
    ("public", {"synthetic.cohen.covid_patients": 50}, {"fetch_params"}),
    ("public", {"fetch.cohen.local_dir": "../covid-chestxray-dataset"}, {"fetch_params", "fetch"}),
    ("public", {"fetch.actualmed.commit": "0" * 40}, {"fetch_params", "fetch"}),
    ("public", {"fetch.chexpert.path": "/data/CheXpert-v1.0-small"}, {"fetch_params"}),
    ("public", {"datasets.public.positives": ["cohen"]}, {"fetch_params", "filter", "card"}),  # same sources
    ("public", {"datasets.public.negatives": ["actualmed"]}, {"fetch_params", "negatives", "card"}),
    ("public", {"datasets.synthetic.positives": ["actualmed"]}, set()),
    ("public", {"negatives.public_test_fraction": 0.5}, {"negatives"}),
    ("paper", {"seed": 7}, {"fetch_params", *SEED}),
    ("paper", {"fetch.chexpert.path": "/data/CheXpert-v1.0-small"}, {"fetch_params", "fetch"}),
    ("paper", {"fetch.cohen.retries": 9}, {"fetch_params", "fetch"}),
    ("paper", {"fetch.actualmed.retries": 9}, {"fetch_params"}),
    ("paper", {"synthetic.chexpert.width": 100}, {"fetch_params"}),
]


def _set(params: dict, dotted: str, value) -> None:
    """Set a dotted parameter; a callable value maps the old value to the new one."""
    *parents, last = dotted.split(".")
    node = params
    for part in parents:
        node = node[part]
    node[last] = value(node[last]) if callable(value) else value


class _Workspace:
    def __init__(self, root: Path):
        self.root, self.dataset = root, None
        self.base = yaml.safe_load((REPO / "params.yaml").read_text())
        spec = importlib.util.spec_from_file_location("fetch_params_stage", root / "stages" / "fetch_params.py")
        self.fetch_stage = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.fetch_stage)

    def write_params(self, overrides: dict) -> None:
        params = copy.deepcopy(self.base)
        for key, value in overrides.items():
            _set(params, key, value)
        (self.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        # what the fetch_params stage then writes (its script, in process: fast)
        argv = [
            "fetch_params.py",
            str(self.root / "data" / "fetch_params.json"),
            "--params",
            str(self.root / "params.yaml"),
        ]
        with mock.patch.object(sys, "argv", argv):
            self.fetch_stage.main()

    def commit(self, dataset: str) -> None:
        """params.yaml for ``dataset`` and a dvc.lock matching it."""
        if self.dataset == dataset:
            return
        self.write_params({"dataset": dataset})
        from dvc.repo import Repo

        with Repo(str(self.root)) as repo:
            repo.commit(force=True)
        self.dataset = dataset
        assert self.changed() == set(), f"dvc.lock for dataset={dataset} is not clean"

    def changed(self) -> set:
        from dvc.repo import Repo

        with Repo(str(self.root)) as repo:
            status = repo.status()
        return {
            name
            for name, changes in status.items()
            for change in changes
            if isinstance(change, dict) and "changed deps" in change
        }


@pytest.fixture(scope="module")
def dvc_workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("params-dvc")
    for item in ("dvc.yaml", "params.yaml", ".dvcignore", "stages", "deepcovid", "curation"):
        if (REPO / item).is_dir():
            shutil.copytree(REPO / item, root / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / item, root / item)
    shutil.copy(root / "curation/radiologist_exclusions.csv", root / "curation/other_exclusions.csv")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "PYTHONPATH": str(root),
    }
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=root, check=True, env=env)
    # the real fetch_params stage (its cmd, through DVC), then dummy data for every other stage
    proc = subprocess.run([dvc, "repro", "fetch_params"], cwd=root, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        stages = list(repo.index.stages)
    for stage in stages:
        for out in stage.outs:
            path = root / str(out.def_path)
            if not path.exists():
                target = path / "dummy.txt" if not path.suffix else path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(f"{out.def_path}\n")
    for stage in stages:
        for dep in stage.deps:
            path = root / str(dep.def_path)
            if not isinstance(dep, ParamsDependency) and not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(f"{dep.def_path}\n")
    return _Workspace(root)


@pytest.mark.slow
@pytest.mark.parametrize("dataset,overrides,expected", CASES, ids=[f"{d}:{','.join(o)}" for d, o, _ in CASES])
def test_parameter_change_reruns_exactly_its_readers(dvc_workspace, monkeypatch, dataset, overrides, expected):
    monkeypatch.chdir(dvc_workspace.root)  # DVC resolves stage paths against the working directory
    dvc_workspace.commit(dataset)
    try:
        dvc_workspace.write_params({"dataset": dataset, **overrides})
        changed = dvc_workspace.changed()
    finally:
        dvc_workspace.write_params({"dataset": dataset})
    assert changed == expected, (
        f"dataset={dataset}, {overrides}: DVC re-runs {sorted(changed)}, "
        f"expected {sorted(expected)} (extra {sorted(changed - expected)}, "
        f"missing {sorted(expected - changed)})"
    )
