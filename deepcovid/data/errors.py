"""The one error the fetch modules (download, archive, fetch) raise."""

from __future__ import annotations

from deepcovid.errors import DeepCovidError


class FetchError(DeepCovidError, RuntimeError):
    """A fetch failed; ``str(err)`` is always one line naming the source, file or parameter."""

    def __init__(self, message: object) -> None:
        super().__init__(message if str(message).strip() else "fetch failed")
