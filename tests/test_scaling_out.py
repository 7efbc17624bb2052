"""Working beyond one machine, as docs/scaling.md's "Scaling out" shows it: a DVC remote for the cache
(a local folder standing in for S3, GCS or SSH: push, a fresh clone, pull, status clean) and an
MLflow tracking server bound to 127.0.0.1 receiving a run of the project's own tracking code."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ENV = {
    **os.environ,
    "DVC_NO_ANALYTICS": "1",
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@localhost",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@localhost",
}


def _run(*cmd, cwd) -> str:
    proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout[-1500:]}{proc.stderr[-1500:]}"
    return proc.stdout


def _tool(name: str) -> str:
    return shutil.which(name, path=str(Path(sys.executable).parent)) or name


def test_dvc_remote_round_trip(tmp_path):
    dvc = _tool("dvc")
    project, remote, clone = tmp_path / "project", tmp_path / "remote", tmp_path / "clone"
    project.mkdir()
    _run("git", "init", "-q", cwd=project)
    _run(dvc, "init", "-q", cwd=project)
    (project / "make.py").write_text(
        "import sys, pathlib\n"
        "out = pathlib.Path(sys.argv[1]); out.mkdir(exist_ok=True)\n"
        "(out / 'model.bin').write_bytes(bytes(range(256)) * 100)\n"
        "(out / 'model.json').write_text('{\"architecture\": \"x\"}')\n"
    )
    (project / "dvc.yaml").write_text(
        "stages:\n  make:\n    cmd: python make.py models\n    deps: [make.py]\n    outs: [models]\n"
    )
    _run(dvc, "repro", "-q", cwd=project)
    _run(dvc, "remote", "add", "-d", "storage", str(remote), cwd=project)
    _run("git", "add", "-A", cwd=project)
    _run("git", "commit", "-qm", "pipeline", cwd=project)
    _run(dvc, "push", "-q", cwd=project)
    assert any(p.is_file() for p in remote.rglob("*"))
    _run("git", "clone", "-q", str(project), str(clone), cwd=tmp_path)
    assert not (clone / "models").exists()
    _run(dvc, "pull", "-q", cwd=clone)
    assert (clone / "models" / "model.bin").read_bytes() == (project / "models" / "model.bin").read_bytes()
    assert "up to date" in _run(dvc, "status", cwd=clone)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mlflow_server_on_localhost_receives_a_run(tmp_path):
    port = _free_port()
    server = subprocess.Popen(
        [
            _tool("mlflow"),
            "server",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
        ],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if server.poll() is not None:
                    pytest.fail(f"mlflow server exited: {server.stdout.read().decode()[-2000:]}")
                time.sleep(1)
        else:
            pytest.fail("mlflow server did not answer within 120 s")
        # bound to the loopback interface only (mlflow server's default host)
        listening = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout if shutil.which("ss") else ""
        if listening:
            assert f"127.0.0.1:{port}" in listening and f"0.0.0.0:{port}" not in listening, listening
        script = (
            "import sys\nfrom deepcovid.model import tracking\nimport mlflow\n"
            "run = tracking.start_run('scaling-out')\nmlflow.log_metric('auc', 0.5)\n"
            "mlflow.log_text('hello', 'note.txt')\nmlflow.end_run()\nprint(run.info.run_id)\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", script],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env={**ENV, "MLFLOW_TRACKING_URI": url},
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        run_id = proc.stdout.strip().splitlines()[-1]
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=url)
        run = client.get_run(run_id)
        assert run.data.metrics["auc"] == 0.5
        assert [a.path for a in client.list_artifacts(run_id)] == ["note.txt"]
        assert any((tmp_path / "artifacts").rglob("note.txt"))  # stored by the server, not the client
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
