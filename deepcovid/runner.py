"""Shared plumbing for the stage scripts and the ``deepcovid`` command: logging and one-line errors."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from typing import Callable

from deepcovid import files
from deepcovid.errors import DeepCovidError

# where the stages write (dvc.yaml's outs): swept at every start for temporaries of killed runs, which
# the killed stage's own rerun cannot remove when DVC restores its outputs from the run cache instead
OUTPUT_FOLDERS = ("data", "models", "metrics", "plots", "checkpoints")

# A file the user named that is missing or cannot be opened: the OS's message names it.
_FILE_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def is_user_error(exc: BaseException) -> bool:
    """True for the errors a user can fix from a one-line message: the project's own
    (:class:`deepcovid.errors.DeepCovidError`) and an OS error about a file it names. Anything else
    (a ``ValueError`` from deep inside a library, a ``KeyError``...) is a bug or a surprise and keeps
    its traceback."""
    if isinstance(exc, DeepCovidError):
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


def run(main: Callable[[], int | None], stage: str) -> None:
    """Run ``main`` with ``stage: `` logging on stderr. Exits with the status ``main`` returns when it is
    not 0 / None, with 2 after printing a user error in one line (:func:`is_user_error`), with 130
    when interrupted; any other exception propagates with its traceback (exit status 1)."""
    logging.basicConfig(level=logging.INFO, format=f"{stage}: %(message)s", stream=sys.stderr)
    if os.path.isfile("dvc.yaml"):  # a stage (or a tool) in the project: sweep what killed runs left
        for path in files.sweep_stale_temporaries(OUTPUT_FOLDERS):
            logging.getLogger(stage).info("removed %s, left by a killed run", path)
    try:
        status = main()
    except KeyboardInterrupt:
        print(f"{stage}: interrupted; outputs of earlier runs are untouched", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        if not is_user_error(exc):
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{stage}: error: {message}", file=sys.stderr)
        sys.exit(2)
    if status:
        sys.exit(status)
