"""Helpers for tests that run stage scripts in a scratch copy of the project's configuration."""

from __future__ import annotations

import atexit
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from stage_server import StageServer

REPO = Path(__file__).resolve().parents[1]


_REGISTRY_SCORES = (
    "import json, pickle, sys\n"
    "def refuse(*a, **k):\n    raise AssertionError('unpickling attempted')\n"
    "pickle.load = pickle.loads = refuse\n"
    "import mlflow\n"
    "mlflow.set_tracking_uri(sys.argv[1])\n"
    "model = mlflow.pyfunc.load_model(sys.argv[2])\n"
    "print(json.dumps(model.predict(sys.argv[3:])['score'].tolist()))\n"
)


def registry_scores(tracking_uri: str, model_uri: str, paths, cwd: Path) -> list[float]:
    """The scores of image files by an MLflow model (``models:/NAME/latest``) loaded as a user would,
    in a new Python process where unpickling raises."""
    proc = subprocess.run(
        [sys.executable, "-c", _REGISTRY_SCORES, tracking_uri, model_uri, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def override_params(source: Path, target: Path, overrides: dict) -> None:
    """Write ``source`` (a params.yaml) to ``target`` with dotted-key overrides applied."""
    params = yaml.safe_load(source.read_text())
    for key, value in overrides.items():
        node = params
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    target.write_text(yaml.safe_dump(params, sort_keys=False))


def make_workspace(tmp: Path, **overrides) -> Path:
    """A copy of the project's configuration in ``tmp``, with dotted-key overrides."""
    override_params(REPO / "params.yaml", tmp / "params.yaml", overrides)
    shutil.copytree(REPO / "curation", tmp / "curation")
    return tmp


def write_raw_images(raw: Path, roots: dict, *frames: pd.DataFrame) -> None:
    """A stand-in file for every (source, relpath) row under ``raw/<root of source>``; each file's
    bytes are its own name, so distinct rows have distinct content."""
    for frame in frames:
        for source, rel in zip(frame["source"], frame["relpath"]):
            path = raw / roots[source] / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f"{source}/{rel}".encode())


def stage_argv(stage: str) -> list[str]:
    """The stage's command line exactly as dvc.yaml writes it (paths from argv), minus ``python``."""
    cmd = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]["cmd"]
    argv = shlex.split(cmd)
    assert argv[0] == "python" and argv[1].startswith("stages/"), cmd
    return [str(REPO / argv[1]), *argv[2:]]


_SERVER: StageServer | None = None


def stage_server() -> StageServer:
    """This test process's :class:`StageServer` (started on first use, stopped at exit)."""
    global _SERVER
    if _SERVER is None:
        _SERVER = StageServer()
        atexit.register(_SERVER.close)
    return _SERVER


def run_python(
    argv: list,
    *,
    cwd=None,
    env: dict | None = None,
    timeout: float = 900,
    check: bool = False,
) -> subprocess.CompletedProcess:
    """``subprocess.run([sys.executable, *argv], capture_output=True, text=True, ...)`` through the
    stage server (``argv``: ``["-m", "deepcovid", ...]`` or a script and its arguments)."""
    proc = stage_server().run([str(a) for a in argv], cwd=cwd or os.getcwd(), env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, proc.args, proc.stdout, proc.stderr)
    return proc


def evaluate_external(folder, trained: Path, out: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m deepcovid evaluate-external FOLDER` with the workspace ``trained``'s model, evaluation, params."""
    return run_python(
        [
            "-m",
            "deepcovid",
            "evaluate-external",
            str(folder),
            "--model",
            str(trained / "models"),
            "--evaluation",
            str(trained / "metrics/evaluate.json"),
            "--out-dir",
            str(out),
            "--params",
            str(trained / "params.yaml"),
        ],
        cwd=REPO,
        timeout=timeout,
    )


def run_stage(
    ws: Path, stage: str, check: bool = True, args: tuple = (), env: dict | None = None, timeout: float = 900
) -> subprocess.CompletedProcess:
    """Run the stage's command of dvc.yaml in ``ws`` as DVC would (fetch: after fetch_params, its input)."""
    if stage == "fetch":
        proc = run_stage(ws, "fetch_params", check=check, env=env, timeout=timeout)
        if proc.returncode != 0:
            return proc
    proc = run_python([*stage_argv(stage), *args], cwd=ws, timeout=timeout, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"stage {stage} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def stage_outputs(stage: str) -> list[str]:
    """Every path the stage writes, as dvc.yaml lists them (outs, metrics, plots)."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]
    return [
        next(iter(o)) if isinstance(o, dict) else o for key in ("outs", "metrics", "plots") for o in spec.get(key, [])
    ]


def copy_without(src: Path, dst: Path, stages: list[str]) -> Path:
    """A copy of the workspace ``src`` at ``dst`` without what ``stages`` wrote."""
    shutil.copytree(src, dst)
    for stage in stages:
        for rel in stage_outputs(stage):
            path = dst / rel
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    return dst


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.strip().splitlines() if ": error: " in line]
    assert len(lines) == 1, proc.stderr
    return lines[0]


# A configuration small enough for a test: the real stages on little synthetic data.
TINY = {
    "synthetic.cohen.covid_patients": 24,
    "synthetic.cohen.other_patients": 4,
    "synthetic.chexpert.train_patients": 160,
    "synthetic.chexpert.valid_patients": 8,
    "negatives.counts.synthetic.train": {"no_finding": 16, "per_category": 2},
    "negatives.counts.synthetic.test": {"no_finding": 24, "per_category": 2},
    "split.covid_test_images": 12,
    "augment.copies": 2,
    "preprocess.cache_size": 64,
    "train.image_size": 64,
    "train.epochs": 3,
    "train.num_workers": 0,
    "segment.size": 32,
    "segment.epochs": 2,
    "segment.max_train_images": 24,
}

#: The tiny synthetic pipeline trained up to evaluate (``tiny_trained`` in conftest.py: ResNet18, random
#: weights, no MLflow), shared by the tests of the data stages, predict, evaluate-external, explain,
#: the repeats stage and the DVC project. Its fetch runs fetch_params first (:func:`run_stage`).
TINY_TRAINED_STAGES = [
    "fetch",
    "filter",
    "negatives",
    "duplicates",
    "split",
    "segment",
    "preprocess",
    "augment",
    "featurize",
    "train",
    "evaluate",
]
#: Its stages that do not depend on the model: the same outputs for any ``model`` and ``weights``.
TINY_DATA_STAGES = ["fetch_params", *TINY_TRAINED_STAGES[: TINY_TRAINED_STAGES.index("featurize")]]
