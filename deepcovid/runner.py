"""Shared plumbing for the stage scripts: logging and one-line errors."""

from __future__ import annotations

import logging
import sys
from typing import Callable

# Errors a user can fix (bad parameter, missing file, checksum, leak...): print one line, exit 2.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, RuntimeError, FileNotFoundError, OSError)


def run(main: Callable[[], None], stage: str) -> None:
    logging.basicConfig(level=logging.INFO, format=f"{stage}: %(message)s", stream=sys.stderr)
    try:
        main()
    except KeyboardInterrupt:
        print(f"{stage}: interrupted; outputs of earlier runs are untouched", file=sys.stderr)
        sys.exit(130)
    except USER_ERRORS as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{stage}: error: {message}", file=sys.stderr)
        sys.exit(2)
