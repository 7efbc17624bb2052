"""The project's own error types.

Every error a user can fix (a bad parameter, a malformed or missing input file, a store that cannot
be opened...) is a :class:`DeepCovidError`: its message is one line naming the file, parameter or
URI, and the stage scripts and the ``deepcovid`` command print it as that one line (exit status 2,
:func:`deepcovid.runner.run`). Anything else is a bug or an unexpected condition and keeps its
traceback. The subclasses also derive from the matching built-in (``ValueError``,
``FileNotFoundError``, ``RuntimeError``), so callers that catch those, as scikit-learn's validated
functions teach, keep working.
"""

from __future__ import annotations


class DeepCovidError(Exception):
    """An error the user can fix; ``str(err)`` is one line."""

    def __init__(self, message: object = "") -> None:
        lines = [line.strip() for line in str(message).splitlines() if line.strip()]
        super().__init__("; ".join(lines) or type(self).__name__)


class InputError(DeepCovidError, ValueError):
    """An argument, parameter or file content is not acceptable."""


class MissingInputError(DeepCovidError, FileNotFoundError):
    """A file or folder the step needs does not exist (usually: an earlier stage has not run)."""


class FileReadError(DeepCovidError):
    """A file that cannot be read as what it should be. ``reason`` says why (what per-file records such
    as ``rejected.csv`` store, beside the file's own name); the message is ``<path>: <reason>``."""

    def __init__(self, reason: object, path: object = None) -> None:
        self.reason = " ".join(str(reason).split()) or "cannot be read"
        self.path = None if path is None else str(path)
        super().__init__(self.reason if path is None else f"{path}: {self.reason}")


class OutputError(DeepCovidError, OSError):
    """An output cannot be written (a full disk, a read-only folder, no permission): names the path."""


class StateError(DeepCovidError, RuntimeError):
    """Earlier outputs do not fit together (features of another backbone, a checkpoint that cannot be used...)."""
