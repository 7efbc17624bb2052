"""Shared plumbing for the stage scripts and the ``deepcovid`` command: logging and one-line errors."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from collections.abc import Callable

from deepcovid import files
from deepcovid.errors import DeepCovidError

# where the stages write (dvc.yaml's outs): swept at every start for temporaries of killed runs, which
# the killed stage's own rerun cannot remove when DVC restores its outputs from the run cache instead
OUTPUT_FOLDERS = ("data", "models", "metrics", "plots", "checkpoints")

# A file the user named that is missing or cannot be opened: the OS's message names it.
_FILE_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def is_user_error(exc: BaseException) -> bool:
    """True for the errors a user can fix from a one-line message: the project's own
    (:class:`deepcovid.errors.DeepCovidError`), an OS error about a file it names, and a full disk,
    a read-only folder or a missing permission (:data:`deepcovid.files.WRITE_ERRNOS`). Anything else
    (a ``ValueError`` from deep inside a library, a ``KeyError``...) is a bug or a surprise and keeps
    its traceback."""
    if isinstance(exc, DeepCovidError):
        return True
    if isinstance(exc, OSError) and exc.errno in files.WRITE_ERRNOS:  # a full disk, a read-only folder
        return True
    return isinstance(exc, _FILE_ERRORS) and getattr(exc, "filename", None) is not None


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _find_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# looked up once, at import: after a fork (preexec_fn) only the call itself runs
_PRCTL = _find_prctl()


def die_with_parent(parent_pid: int | None = None) -> None:
    """Make the calling process receive SIGKILL when its parent dies (Linux ``prctl``;
    elsewhere nothing). Used as the initializer of the stages' worker processes (and as the
    ``preexec_fn`` of their child programs), so that killing a stage, even with SIGKILL,
    leaves no orphans behind. ``parent_pid``: exit at once if the parent is already gone."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a cancelled job, a closed terminal, ``timeout``), or the parent that
    started the stage gone (``dvc`` killed): stop like Ctrl-C, writing nothing more."""

    def __init__(self, number: int):
        super().__init__(signal.Signals(number).name)
        self.number, self.signal = number, signal.Signals(number).name


def _raise_terminated(number, _frame):
    # worker processes first: a process pool's shutdown would otherwise wait for every queued job
    import multiprocessing

    for child in multiprocessing.active_children():
        child.kill()
    raise Terminated(number)


def _stop_on_signals() -> None:
    """SIGTERM and SIGHUP raise :class:`Terminated` in the main thread; the parent's death sends
    SIGTERM (Linux ``prctl``), so a stage does not outlive the ``dvc repro`` that started it."""
    parent = os.getppid()
    for number in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, _raise_terminated)
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            raise Terminated(signal.SIGTERM)


def _end_tracking_run(status: str) -> None:
    """Mark an MLflow run the stage left open (KILLED, FAILED) instead of letting MLflow's exit
    hook record it as FINISHED."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None:
        return
    try:
        if mlflow.active_run() is not None:
            mlflow.end_run(status)
    except Exception:  # noqa: BLE001 - the stage's own error matters more than the record's
        logging.getLogger(__name__).warning("could not mark the MLflow run %s", status)


def run(main: Callable[[], int | None], stage: str) -> None:
    """Run ``main`` with ``stage: `` logging on stderr. Exits with the status ``main`` returns when it is
    not 0 / None, with 2 after printing a user error in one line (:func:`is_user_error`), with 130
    when interrupted (128 + the signal for SIGTERM / SIGHUP or the parent's death); any other
    exception propagates with its traceback (exit status 1). An MLflow run left open is marked
    KILLED or FAILED."""
    logging.basicConfig(level=logging.INFO, format=f"{stage}: %(message)s", stream=sys.stderr)
    _stop_on_signals()
    if os.path.isfile("dvc.yaml"):  # a stage (or a tool) in the project: sweep what killed runs left
        for path in files.sweep_stale_temporaries(OUTPUT_FOLDERS):
            logging.getLogger(stage).info("removed %s, left by a killed run", path)
    try:
        status = main()
    except KeyboardInterrupt as exc:
        _end_tracking_run("KILLED")
        what = f"stopped by {exc.signal}" if isinstance(exc, Terminated) else "interrupted"
        print(
            f"{stage}: {what}; this run wrote none of its outputs (those `dvc repro` removed before the "
            "stage ran come back with `dvc checkout`, uncached metrics with `dvc repro`)",
            file=sys.stderr,
        )
        sys.exit(128 + exc.number if isinstance(exc, Terminated) else 130)
    except SystemExit:
        raise
    except BaseException as exc:
        _end_tracking_run("FAILED")
        if not isinstance(exc, Exception) or not is_user_error(exc):
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{stage}: error: {message}", file=sys.stderr)
        sys.exit(2)
    if status:
        sys.exit(status)
