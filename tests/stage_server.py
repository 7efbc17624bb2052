"""Run stage scripts and ``python -m deepcovid`` for the tests without paying the interpreter's
start and the third-party imports (torch, pandas, scikit-learn...: 2-4 s) each time.

A server process imports those libraries once, never runs any of their computations, and
``fork()``s a child per request; the child becomes what ``python SCRIPT ARGS`` would be (working
folder, environment, ``sys.argv``, ``sys.path[0]``, fresh stdout/stderr on files) and runs the
script with :mod:`runpy` as ``__main__``. The project's own modules are imported by the child,
from the files as they are then, exactly as a new interpreter would.

What cannot be the same in a forked child goes to a real subprocess: environment variables
read when a library is imported (thread counts, instruction sets, hash seed); everything when
``DEEPCOVID_TEST_SUBPROCESS=1``. Tests of signals, process trees or start-up itself call
:mod:`subprocess` directly.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from multiprocessing.connection import Client, Listener
from pathlib import Path

#: Imported by the server once; none of them is used before a fork.
PRELOAD = (
    "numpy",
    "pandas",
    "scipy.stats",
    "sklearn.metrics",
    "sklearn.linear_model",
    "sklearn.model_selection",
    "statsmodels.stats.proportion",
    "PIL.Image",
    "torch",
    "torchvision",
    "torchvision.transforms.v2",
    "pydantic",
    "yaml",
    "tqdm",
    "pydicom",
)
#: Environment variables that only take effect when a library is imported or the interpreter starts.
AT_START = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "ATEN_CPU_CAPABILITY",
    "PYTHONHASHSEED",
    "PYTHONPATH",
    "LD_PRELOAD",
    "CUDA_VISIBLE_DEVICES",
    "TORCH_",
    "MKL_",
    "KMP_",
)


def _import_time_settings_differ(env: dict, started: dict) -> bool:
    changed = {k for k in set(env) | set(started) if env.get(k) != started.get(k)}
    return any(k.startswith(prefix) for k in changed for prefix in AT_START)


def _child(request: dict) -> None:
    """In the forked child: become ``python <argv>`` and never return."""
    code = 1
    try:
        os.setsid()  # its own process group, as a subprocess started by the test would not share ours
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        out = os.open(request["stdout"], os.O_WRONLY | os.O_TRUNC)
        err = os.open(request["stderr"], os.O_WRONLY | os.O_TRUNC)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", closefd=False, buffering=1)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False, buffering=1)  # noqa: SIM115
        import runpy

        argv = request["argv"]
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            sys.path[0] = request["cwd"]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            sys.path[0] = str(Path(argv[0]).resolve().parent)
            runpy.run_path(argv[0], run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001  (what an uncaught exception does in a new interpreter)
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve(address: str) -> None:
    """The server's loop: one request at a time (a test waits for its stage)."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    with Listener(address, family="AF_UNIX") as listener:
        print("ready", flush=True)
        while True:
            with listener.accept() as conn:
                request = conn.recv()
                if request is None:
                    return
                pid = os.fork()
                if pid == 0:
                    _child(request)
                conn.send(pid)
                _, status = os.waitpid(pid, 0)
                conn.send(os.waitstatus_to_exitcode(status))


class StageServer:
    """A running server; :meth:`run` is ``subprocess.run([sys.executable, *argv], ...)``."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="stage-server-"))
        self.started_env = dict(os.environ)
        self.address = str(self.folder / "socket")
        here = str(Path(__file__).parent)
        start = f"import sys; sys.path.insert(0, {here!r}); import stage_server; stage_server.serve({self.address!r})"
        self.process = subprocess.Popen([sys.executable, "-c", start], stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "ready", "the stage server did not start"

    def run(
        self, argv: list[str], *, cwd, env: dict | None = None, timeout: float = 900
    ) -> subprocess.CompletedProcess:
        env = dict(os.environ if env is None else env)
        if (
            os.environ.get("DEEPCOVID_TEST_SUBPROCESS") == "1"
            or _import_time_settings_differ(env, self.started_env)
            or self.process.poll() is not None
        ):
            return subprocess.run(
                [sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
            )
        out, err = (tempfile.NamedTemporaryFile(dir=self.folder, delete=False) for _ in range(2))
        out.close()
        err.close()
        try:
            with Client(self.address, family="AF_UNIX") as conn:
                conn.send(
                    {
                        "argv": [str(a) for a in argv],
                        "cwd": str(cwd),
                        "env": env,
                        "stdout": out.name,
                        "stderr": err.name,
                    }
                )
                pid = conn.recv()
                if not conn.poll(timeout):
                    os.killpg(pid, signal.SIGKILL)
                    conn.recv()
                    raise subprocess.TimeoutExpired([sys.executable, *argv], timeout)
                code = conn.recv()
            return subprocess.CompletedProcess(
                [sys.executable, *argv],
                code,
                Path(out.name).read_text(errors="replace"),
                Path(err.name).read_text(errors="replace"),
            )
        finally:
            os.unlink(out.name)
            os.unlink(err.name)

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                with Client(self.address, family="AF_UNIX") as conn:
                    conn.send(None)
                self.process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
        shutil.rmtree(self.folder, ignore_errors=True)
