"""The one error the fetch modules (download, archive, fetch) raise."""

from __future__ import annotations


class FetchError(RuntimeError):
    """A fetch failed; ``str(err)`` is always one line naming the source, file or parameter."""

    def __init__(self, message: object) -> None:
        lines = [line.strip() for line in str(message).splitlines() if line.strip()]
        super().__init__("; ".join(lines) or "fetch failed")
