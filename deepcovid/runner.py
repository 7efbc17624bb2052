"""Shared plumbing for the stage scripts and the ``deepcovid`` command: logging and one-line errors."""

from __future__ import annotations

import logging
import sys
from typing import Callable

# Errors a user can fix (bad parameter, missing file, checksum, leak...): print one line, exit 2.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, RuntimeError, FileNotFoundError, OSError)


def run(main: Callable[[], int | None], stage: str) -> None:
    """Run ``main`` with ``stage: `` logging on stderr. Exits with the status ``main`` returns when it is
    not 0 / None, with 2 after printing a user error in one line, with 130 when interrupted."""
    logging.basicConfig(level=logging.INFO, format=f"{stage}: %(message)s", stream=sys.stderr)
    try:
        status = main()
    except KeyboardInterrupt:
        print(f"{stage}: interrupted; outputs of earlier runs are untouched", file=sys.stderr)
        sys.exit(130)
    except USER_ERRORS as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{stage}: error: {message}", file=sys.stderr)
        sys.exit(2)
    if status:
        sys.exit(status)
