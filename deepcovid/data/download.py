"""Download one file over HTTP(S) (``requests`` with urllib3's ``Retry``) to a local path:
atomically, with a size cap, a timeout, retries with exponential backoff and a progress bar.
``file://`` URLs are copied."""

from __future__ import annotations

import os
import shutil
import time
import urllib.parse
import urllib.request
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import NewConnectionError
from urllib3.util.retry import RequestHistory, Retry

from deepcovid import __version__
from deepcovid.data.errors import FetchError
from deepcovid.files import remove_stale_temporaries

try:  # progress bars are a nicety, never a requirement
    from tqdm import tqdm as _tqdm
except ImportError:  # pragma: no cover
    _tqdm = None

DEFAULT_RETRIES = 3
DEFAULT_TIMEOUT = 60.0
CHUNK = 1 << 20
USER_AGENT = f"deepcovid-fetch/{__version__}"
RETRY_STATUS = frozenset({429, *range(500, 600)})  # other HTTP errors (404, 403...) fail at once


class _Retry(Retry):
    """urllib3's Retry with the k-th wait ``backoff_factor * 2**(k-1)`` (1, 2, 4... s by
    default; urllib3 skips the first wait) and no cap."""

    def get_backoff_time(self) -> float:
        n = len(self.history)
        return self.backoff_factor * 2 ** (n - 1) if n else 0.0


def download(
    url: str,
    dest: Path,
    *,
    retries: int = DEFAULT_RETRIES,
    timeout: float = DEFAULT_TIMEOUT,
    backoff: float = 1.0,
    max_bytes: int | None = None,
    name: str = "source",
) -> Path:
    """Download ``url`` to ``dest`` (atomically: a temp file next to it, renamed on success).

    ``retries`` is the total number of attempts; waits between them are ``backoff * 2**k``
    seconds. Connection errors, timeouts, truncated bodies, HTTP 5xx and 429 are retried;
    other HTTP errors (404, 403...) and a size over ``max_bytes`` fail at once.
    """
    dest = Path(dest)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https", "file"):
        raise FetchError(f"cannot download {name} from {url}: unsupported URL scheme {scheme or '(none)'!r}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(dest)  # a killed earlier download's .part file
    part = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        if scheme == "file":
            _copy_local(url, part, max_bytes=max_bytes, name=name)
        else:
            _http_get(
                url,
                part,
                attempts=max(1, int(retries)),
                timeout=timeout,
                backoff=backoff,
                max_bytes=max_bytes,
                name=name,
            )
        os.replace(part, dest)
    except OSError as exc:  # network errors are FetchErrors by now: writing failed (disk full, permissions)
        raise FetchError(f"cannot download {name} to {dest}: {exc}") from None
    finally:
        part.unlink(missing_ok=True)
    return dest


def _http_get(
    url: str, part: Path, *, attempts: int, timeout: float, backoff: float, max_bytes: int | None, name: str
) -> None:
    # Retry covers everything up to the response headers (connection errors, timeouts, 5xx,
    # 429); a body that breaks off is retried here, from the start, out of the same budget:
    # ``history`` holds every failed attempt so far.
    history: tuple = ()
    while True:
        retry = _Retry(
            total=attempts - 1 - len(history),
            backoff_factor=backoff,
            status_forcelist=RETRY_STATUS,
            raise_on_status=False,
            respect_retry_after_header=False,
            history=history,
        )
        with requests.Session() as session:
            session.mount("http://", HTTPAdapter(max_retries=retry))
            session.mount("https://", HTTPAdapter(max_retries=retry))
            session.headers.update({"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
            try:
                response = session.get(url, stream=True, timeout=timeout)
            except (requests.ConnectionError, requests.Timeout) as exc:  # Retry gave up
                inner = exc.args[0] if exc.args else exc
                inner = getattr(inner, "reason", None) or inner  # MaxRetryError: the last error
                raise _gave_up(name, url, attempts, str(inner), offline=isinstance(inner, NewConnectionError)) from None
            except requests.RequestException as exc:  # a bad URL and the like: retrying cannot help
                raise FetchError(f"cannot download {name} from {url}: {exc}") from None
            with response:
                if response.raw.retries is not None:
                    history = response.raw.retries.history
                if response.status_code >= 400:
                    reason = f"HTTP {response.status_code} {response.reason}"
                    if response.status_code in RETRY_STATUS:  # still failing when the budget ran out
                        raise _gave_up(name, url, attempts, reason, offline=False)
                    raise FetchError(f"cannot download {name} from {url}: {reason}")
                try:
                    _save(response, part, url=url, max_bytes=max_bytes, name=name)
                    return
                except (Urllib3Error, requests.RequestException, ConnectionError, TimeoutError) as exc:
                    failure = exc
        history = (*history, RequestHistory("GET", url, failure, None, None))
        if len(history) >= attempts:
            reason = failure.args[0] if failure.args and isinstance(failure.args[0], str) else str(failure)
            raise _gave_up(name, url, attempts, reason, offline=False)
        time.sleep(backoff * 2 ** (len(history) - 1))


def _save(response: requests.Response, part: Path, *, url: str, max_bytes: int | None, name: str) -> None:
    """Stream the body (as sent: no decoding) to ``part``; raise on a truncated body."""
    length = response.headers.get("Content-Length")
    expected = int(length) if length and length.strip().isdigit() else None
    if max_bytes is not None and expected is not None and expected > max_bytes:
        raise FetchError(
            f"refusing to download {name} from {url}: {expected} bytes is over fetch.{name}.max_bytes={max_bytes}"
        )
    received = 0
    bar = _progress(expected, name)
    try:
        with open(part, "wb") as out:
            for block in response.raw.stream(CHUNK, decode_content=False):
                received += len(block)
                if max_bytes is not None and received > max_bytes:
                    raise FetchError(
                        f"refusing to download {name} from {url}: more than fetch.{name}.max_bytes={max_bytes} bytes"
                    )
                out.write(block)
                if bar is not None:
                    bar.update(len(block))
    finally:
        if bar is not None:
            bar.close()
    if expected is not None and received != expected:
        raise requests.ConnectionError(f"truncated download: {received} of {expected} bytes")


def _copy_local(url: str, part: Path, *, max_bytes: int | None, name: str) -> None:
    path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
    try:
        size = path.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise FetchError(
                f"refusing to download {name} from {url}: {size} bytes is over fetch.{name}.max_bytes={max_bytes}"
            )
        source = open(path, "rb")
    except OSError as exc:  # a missing file: retrying cannot help
        raise FetchError(f"cannot download {name} from {url}: {exc}") from None
    with source, open(part, "wb") as out:
        shutil.copyfileobj(source, out, CHUNK)


def _gave_up(name: str, url: str, attempts: int, reason: str, *, offline: bool) -> FetchError:
    hint = (
        f"are you offline? Set fetch.{name}.local_dir to an existing clone"
        if offline
        else f"try again later or set fetch.{name}.local_dir to an existing clone"
    )
    plural = "attempt" if attempts == 1 else "attempts"
    return FetchError(f"cannot download {name} from {url} after {attempts} {plural} ({reason}); {hint}")


def _progress(total: int | None, name: str):
    if _tqdm is None:
        return None
    # disable=None: shown on a terminal only (quiet in DVC logs and CI)
    return _tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name, disable=None, leave=False)
