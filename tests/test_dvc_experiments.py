"""DVC end to end on a tiny configuration, in a scratch git repository: the data stages' outputs
come from the tests' shared tiny pipeline (`tiny_trained`: the same parameters, its stages run outside
DVC) and are recorded with `dvc commit`, `dvc repro` builds the rest, `dvc status` is then clean
(the SIGKILL test below reruns every data stage under DVC and must find the same outputs), and
changing `model` (as
`dvc exp run -S model=...` does) re-runs only the stages that depend on the model. Every data
stage and the training, SIGKILLed at a random point under `dvc repro` and rerun, gives the
uninterrupted run's outputs and leaves no temporary files and no orphan processes."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from workspace import REPO, TINY, TINY_DATA_STAGES, stage_outputs

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
MODEL_STAGES = {"featurize", "train"}


def _sh(cmd, cwd, env):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_trained):
    root = tmp_path_factory.mktemp("project")
    for item in ("dvc.yaml", "params.yaml", "stages", "deepcovid", "curation", ".dvcignore"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, root / item)
    params = yaml.safe_load((root / "params.yaml").read_text())
    for key, value in {**TINY, "train.mode": "last_layer", "mlflow.enabled": False}.items():
        node = params
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "GIT_CONFIG_GLOBAL": os.devnull,
    }
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    _sh(git + ["init", "-q"], root, env)
    _sh([str(BIN / "dvc"), "init", "-q"], root, env)
    (root / ".gitignore").write_text("__pycache__/\nmlflow.db\nmlartifacts/\ncheckpoints/\n")
    _sh(git + ["add", "-A"], root, env)
    _sh(git + ["commit", "-qm", "init"], root, env)
    for stage in TINY_DATA_STAGES:
        for rel in stage_outputs(stage):
            src, dst = tiny_trained / rel, root / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    _sh([str(BIN / "dvc"), "commit", "-f", *TINY_DATA_STAGES], root, env)
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
        data_stages = {"fetch", "filter", "negatives", "duplicates", "split", "segment", "preprocess", "augment"}
        assert not (stale & data_stages), f"data stages would re-run: {stale & data_stages}"
        dry = _sh([str(BIN / "dvc"), "repro", "--dry"], root, env)
        assert "Running stage 'featurize'" in dry and "Running stage 'fetch'" not in dry
    finally:
        params_path.write_text(original)
    assert _stale(root, env) == set()


KILLED_STAGES = ["fetch", "filter", "negatives", "duplicates", "split", "preprocess", "augment", "featurize", "train"]
# what deepcovid's writers leave while running: atomic_path's folders, downloads' partial files
TEMPORARY = re.compile(r"^\..+\.\d+\.(?:[a-z0-9_]{8}\.tmp|old|part)$")


def _stage_processes(stage: str, root: Path) -> list[int]:
    """Live (not zombie) processes running ``stages/<stage>.py`` in ``root``: the stage and any worker
    it forked. Only this project's: another test (another xdist worker) may run the same stage elsewhere."""
    found, script, here = [], f"stages/{stage}.py".encode(), str(root.resolve())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:  # the command line first: the other two reads only for a stage's processes
            if not any(arg.endswith(script) for arg in (entry / "cmdline").read_bytes().split(b"\0")):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cwd = os.readlink(entry / "cwd")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if state != "Z" and cwd == here:
            found.append(int(entry.name))
    return sorted(found)


def _temporaries(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob(".*")
        if TEMPORARY.match(p.name) and not {".git", ".dvc"} & set(p.relative_to(root).parts)
    )


def _untracked(root, env) -> str:
    return subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"], cwd=root, env=env, capture_output=True, text=True
    ).stdout


def _output_folders(root: Path, stage: str) -> list[Path]:
    """The folders in which the stage's outputs (outs and metrics of dvc.yaml) are written."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text())["stages"][stage]
    paths = [next(iter(o)) if isinstance(o, dict) else o for key in ("outs", "metrics") for o in spec.get(key, [])]
    return sorted({(root / p).parent for p in paths})


def _writing(folders: list[Path]) -> bool:
    return any(TEMPORARY.match(name) for folder in folders if folder.is_dir() for name in os.listdir(folder))


def _start_repro(dvc, root, env, stage) -> subprocess.Popen:
    """`dvc repro -f -s STAGE` started in its own session (the tests signal dvc alone or its group)."""
    return subprocess.Popen(
        [dvc, "repro", "-f", "-s", stage],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _kill_while_writing(pid: int, folders: list[Path], extra_slices: int) -> bool:
    """Let the stage run in 1 ms slices (stopped between them, SIGSTOP/SIGCONT) until its temporary
    output exists, then ``extra_slices`` more, and SIGKILL it (while stopped: the moment is exact).
    False when it ended first."""
    seen = 0
    try:
        while True:
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.001)
            os.kill(pid, signal.SIGSTOP)
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return False
            if _writing(folders) or seen:
                seen += 1
                if seen > extra_slices:
                    os.kill(pid, signal.SIGKILL)
                    return True
    except (ProcessLookupError, FileNotFoundError):
        return False


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc to find the stage processes")
@pytest.mark.parametrize("stage", ["preprocess", "train"])
def test_sigterm_to_dvc_alone_stops_the_stage_and_its_workers(project, stage):
    """What `timeout`, a CI cancel or a scheduler does: SIGTERM to the `dvc repro` process only
    (not its process group). The stage and its workers must stop within seconds, not finish
    re-parented after dvc is gone; the committed outputs (dvc.lock) stay as they were."""
    root, env = project
    dvc = str(BIN / "dvc")
    lock = (root / "dvc.lock").read_text()
    repro = _start_repro(dvc, root, env, stage)
    try:
        deadline = time.monotonic() + 120
        while not _stage_processes(stage, root) and repro.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _stage_processes(stage, root), f"{stage} never started"
        time.sleep(0.5)  # into its work (imports, workers started)
        repro.send_signal(signal.SIGTERM)
        repro.wait(timeout=60)
        stop_by = time.monotonic() + 15
        while _stage_processes(stage, root) and time.monotonic() < stop_by:
            time.sleep(0.05)
        assert _stage_processes(stage, root) == [], f"{stage}: still running after dvc was terminated"
    finally:
        if repro.poll() is None:
            os.killpg(repro.pid, signal.SIGKILL)
        for pid in _stage_processes(stage, root):
            os.kill(pid, signal.SIGKILL)
    assert (root / "dvc.lock").read_text() == lock
    _sh([dvc, "repro", "-s", stage], root, env)  # what DVC removed before the stage ran (run cache)
    assert (root / "dvc.lock").read_text() == lock
    assert _stale(root, env) == set()


def _repro_and_kill(dvc, root, env, stage, folders, extra) -> tuple[bool, int]:
    """`dvc repro -f -s STAGE`, its stage SIGKILLed ``extra`` 1 ms slices after its temporary output
    appears; (whether it was killed, dvc's exit status)."""
    repro = _start_repro(dvc, root, env, stage)
    killed, deadline = False, time.monotonic() + 300
    try:
        while repro.poll() is None and time.monotonic() < deadline:
            pids = _stage_processes(stage, root)
            if pids:  # the stage itself (the lowest pid: forked workers come later)
                killed = _kill_while_writing(pids[0], folders, extra)
                break
            time.sleep(0.005)
        return killed, repro.wait(timeout=120)
    finally:
        if repro.poll() is None:
            os.killpg(repro.pid, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc to find the stage processes")
def test_sigkill_each_stage_under_dvc_repro_then_rerun(project):
    """For each stage: `dvc repro -f -s STAGE`, and SIGKILL the stage process at a random moment
    while it writes its outputs (a random number, 0 to 20, of 1 ms run slices after its temporary
    output appears; fewer if the stage finished first). Then no process of the stage may remain,
    and `dvc repro -f -s --no-run-cache STAGE` must leave dvc.lock (every output hash) as the
    uninterrupted run did, with no temporary files and nothing new in `git status`."""
    root, env = project
    dvc = str(BIN / "dvc")
    lock, untracked = (root / "dvc.lock").read_text(), _untracked(root, env)
    rng = random.Random(20261130)
    outcome = {}
    for stage in KILLED_STAGES:
        folders, drawn = _output_folders(root, stage), rng.randint(0, 20)
        # a fast stage on an idle machine may finish its writing within the drawn slices: then the
        # (complete, uninterrupted) run is repeated with half as many, down to none
        for extra in sorted({drawn, drawn // 2, drawn // 4, 0}, reverse=True):
            killed, status = _repro_and_kill(dvc, root, env, stage, folders, extra)
            if killed:
                break
        assert killed, f"{stage}: finished before it could be killed (dvc exit {status})"
        assert status != 0, f"{stage}: dvc repro succeeded although its stage was killed"
        left_by_kill = _temporaries(root)
        wait_until = time.monotonic() + 10
        while _stage_processes(stage, root) and time.monotonic() < wait_until:
            time.sleep(0.1)
        assert _stage_processes(stage, root) == [], f"{stage}: processes outlived the killed stage"
        # the killed run never replaced the earlier outputs, so DVC would find the stage unchanged and
        # skip it (the leftovers would then go with the next stage that runs): force the stage's code
        # to run again, not restored from DVC's run cache
        _sh([dvc, "repro", "-f", "-s", "--no-run-cache", stage], root, env)
        assert _temporaries(root) == [], f"{stage}: temporary files left after the rerun"
        assert (root / "dvc.lock").read_text() == lock, (
            f"{stage}: the rerun's outputs differ from the uninterrupted run"
        )
        assert _untracked(root, env) == untracked
        outcome[stage] = f"killed {extra} ms into writing; left {left_by_kill}, removed by the rerun"
    print("\n".join(f"{k}: {v}" for k, v in outcome.items()))
    assert _stale(root, env) == set()
