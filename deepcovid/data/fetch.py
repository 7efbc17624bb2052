"""Bring raw sources into the workspace: download, safe extraction and content integrity.

Sources
-------
Each source (``fetch.<name>`` in params.yaml) comes from one of three places:

``method: archive`` (default)
    ``url`` (``{commit}`` is replaced by ``commit``) is downloaded to a temporary file, e.g.
    ``https://github.com/ieee8023/covid-chestxray-dataset/archive/{commit}.zip``, and
    extracted safely (see below). The single top-level folder GitHub adds
    (``<repo>-<commit>/``) is stripped. When the zip comment is a commit id (GitHub writes
    one) it must equal ``commit``.
``method: git``
    ``git init``, ``git fetch --depth 1 <url> <commit>``, checkout, then ``git rev-parse
    HEAD`` must equal the pinned ``commit`` (git's own content hash). The ``.git`` folder
    is removed afterwards so that the destination holds just the files.
``local_dir``
    An existing clone or a plain copy (relative paths are relative to the current working
    directory, the repository root when DVC runs a stage). When the folder is itself a git
    work tree (it has its own ``.git``) and ``commit`` is set, its HEAD must equal
    ``commit``. Its files (without ``.git``) are copied to the destination. ``local_dir``
    takes precedence over ``url``.

Options of ``fetch.<name>`` (all optional except one of ``url`` / ``local_dir``):
``url``, ``commit``, ``method`` (archive | git), ``local_dir``, ``tree_sha256`` (expected
digest; empty = record it), ``require_checksum`` (false), ``max_bytes`` (5 GiB; caps the
download and the extracted size), ``retries`` (3 attempts), ``timeout`` (60 s per network
operation), ``backoff`` (1 s, doubled after each failed attempt). Unknown keys are errors,
so that a misspelt ``tree_sha256`` cannot silently disable the check.

Integrity: the tree digest
--------------------------
GitHub's generated archives are not byte-stable (compression and timestamps may change),
so integrity is checked on *content*. The tree digest of a folder is::

    sha256( "".join(sorted(f"{relpath}\\0{sha256(file)}\\n" for every regular file)) )

where ``relpath`` is the POSIX path relative to the folder (UTF-8), lines are sorted by
``relpath`` and anything inside a ``.git`` folder is ignored. Symlinks and other
non-regular files are refused. The same digest results from the archive, a git checkout
or a local copy of the same commit, so one recorded value checks all three (unless the
repository uses ``export-ignore`` / ``export-subst`` attributes or Git LFS, which make
archives differ from checkouts; the Cohen and Actualmed repositories use neither as far
as we know).

Recording a digest
------------------
The expected digest lives in ``fetch.<name>.tree_sha256``. When it is empty, the first
fetch computes it and logs one line::

    record it in params.yaml: fetch.cohen.tree_sha256: <digest>

Copy that value into params.yaml; later fetches then verify it (``checksum_status:
verified``) and fail on any difference. With ``require_checksum: true`` an empty digest is
an error instead (for CI or paranoid setups).

Safety
------
Extraction refuses absolute paths, ``..`` components, backslashes and drive letters,
``.git`` entries (the digest ignores them), symlinks, non-regular and encrypted members,
duplicate or conflicting names, more than ``max_members`` members, more than ``max_bytes``
in total (counted as actually written: declared sizes are not trusted) and suspicious
compression ratios (zip bombs). Everything is built in a temporary folder next to the
destination, verified, and only then renamed onto the destination: after any failure the
previous destination is untouched. Downloads stream to a temporary file (``max_bytes``
cap, progress bar on a terminal) and are retried with exponential backoff on connection
errors, timeouts, truncated bodies, HTTP 5xx and 429, but not on other HTTP errors such
as 404 or 403.

Every :class:`FetchError` message is one line naming the source, file or parameter.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Callable

from deepcovid import __version__
from deepcovid.files import atomic_path, sha256_file

try:  # progress bars are a nicety, never a requirement
    from tqdm import tqdm as _tqdm
except ImportError:  # pragma: no cover
    _tqdm = None

DEFAULT_MAX_BYTES = 5 * 1024**3
DEFAULT_RETRIES = 3
DEFAULT_TIMEOUT = 60.0
CHUNK = 1 << 20
# The compression-ratio check applies once a member (or the archive) has produced this
# many bytes: small text files legitimately compress very well.
RATIO_MIN_BYTES = 1 << 20
USER_AGENT = f"deepcovid-fetch/{__version__}"

CFG_KEYS = frozenset(
    {
        "url",
        "commit",
        "method",
        "local_dir",
        "tree_sha256",
        "require_checksum",
        "max_bytes",
        "retries",
        "timeout",
        "backoff",
    }
)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")  # SHA-1 or SHA-256 object id
_DRIVE = re.compile(r"^[A-Za-z]:")
_LOCAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


class FetchError(RuntimeError):
    """A fetch failed; ``str(err)`` is always one line naming the source, file or parameter."""

    def __init__(self, message: object) -> None:
        lines = [line.strip() for line in str(message).splitlines() if line.strip()]
        super().__init__("; ".join(lines) or "fetch failed")


class _Retryable(Exception):
    """Internal: a transient download failure (connection, timeout, 5xx, 429)."""

    def __init__(self, reason: str, offline: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.offline = offline  # the network looked unreachable (vs. a server error)


# --------------------------------------------------------------------------- download


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
    attempts = max(1, int(retries))
    dest.parent.mkdir(parents=True, exist_ok=True)
    last: _Retryable | None = None
    for attempt in range(attempts):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            _download_once(url, dest, timeout=timeout, max_bytes=max_bytes, name=name)
            return dest
        except _Retryable as exc:
            last = exc
    assert last is not None
    hint = (
        f"are you offline? Set fetch.{name}.local_dir to an existing clone"
        if last.offline
        else f"try again later or set fetch.{name}.local_dir to an existing clone"
    )
    plural = "attempt" if attempts == 1 else "attempts"
    raise FetchError(f"cannot download {name} from {url} after {attempts} {plural} ({last.reason}); {hint}")


def _download_once(url: str, dest: Path, *, timeout: float, max_bytes: int | None, name: str) -> None:
    part = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            exc.close()
            reason = f"HTTP {exc.code} {exc.reason}"
            if exc.code >= 500 or exc.code == 429:
                raise _Retryable(reason, offline=False) from None
            raise FetchError(f"cannot download {name} from {url}: {reason}") from None
        with response:
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.strip().isdigit() else None
            if max_bytes is not None and expected is not None and expected > max_bytes:
                raise FetchError(
                    f"refusing to download {name} from {url}: {expected} bytes is over "
                    f"fetch.{name}.max_bytes={max_bytes}"
                )
            received = 0
            bar = _progress(expected, name)
            try:
                with open(part, "wb") as out:
                    while True:
                        block = response.read(CHUNK)
                        if not block:
                            break
                        received += len(block)
                        if max_bytes is not None and received > max_bytes:
                            raise FetchError(
                                f"refusing to download {name} from {url}: more than "
                                f"fetch.{name}.max_bytes={max_bytes} bytes"
                            )
                        out.write(block)
                        if bar is not None:
                            bar.update(len(block))
            finally:
                if bar is not None:
                    bar.close()
            if expected is not None and received != expected:
                raise _Retryable(f"truncated download: {received} of {expected} bytes", offline=False)
        os.replace(part, dest)
    except FetchError:
        raise
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ssl.SSLCertVerificationError) or getattr(reason, "filename", None):
            # a bad certificate or a missing file:// path: retrying cannot help
            raise FetchError(f"cannot download {name} from {url}: {reason}") from None
        raise _Retryable(str(reason), offline=not isinstance(reason, (socket.timeout, TimeoutError))) from None
    except (TimeoutError, socket.timeout) as exc:
        raise _Retryable(str(exc) if "timed out" in str(exc) else f"timed out: {exc}", offline=False) from None
    except (ConnectionError, http.client.HTTPException, OSError) as exc:
        local = not isinstance(exc, ConnectionError) and (
            getattr(exc, "filename", None) is not None or getattr(exc, "errno", None) in _LOCAL_ERRNOS
        )
        if local:  # writing the temporary file failed (disk full, permissions): retrying cannot help
            raise FetchError(f"cannot download {name} to {dest}: {exc}") from None
        raise _Retryable(f"{type(exc).__name__}: {exc}", offline=isinstance(exc, ConnectionRefusedError)) from None
    finally:
        part.unlink(missing_ok=True)


def _progress(total: int | None, name: str):
    if _tqdm is None:
        return None
    # disable=None: shown on a terminal only (quiet in DVC logs and CI)
    return _tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name, disable=None, leave=False)


# --------------------------------------------------------------------------- extraction


def _member_path(raw: str, archive: Path) -> PurePosixPath:
    """Validate a zip member name and return it as a relative path (may be empty: '.')."""
    where = f"archive {archive.name}: member {raw!r}"
    if "\0" in raw or any(ord(ch) < 32 for ch in raw):
        raise FetchError(f"{where} has control characters in its name; refusing to extract")
    if "\\" in raw:
        raise FetchError(f"{where} has a backslash in its path; refusing to extract")
    if raw.startswith("/"):
        raise FetchError(f"{where} is an absolute path; refusing to extract")
    if _DRIVE.match(raw):
        raise FetchError(f"{where} has a drive letter; refusing to extract")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise FetchError(f"{where} has a '..' component; refusing to extract")
    if ".git" in parts:  # the tree digest ignores .git, so nothing unverified may hide there
        raise FetchError(f"{where} is inside a .git folder; refusing to extract")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _check_kind(info: zipfile.ZipInfo, archive: Path) -> None:
    where = f"archive {archive.name}: member {info.filename!r}"
    if info.flag_bits & 0x1:
        raise FetchError(f"{where} is encrypted; refusing to extract")
    mode = info.external_attr >> 16
    if info.create_system == 3 and mode:  # Unix attributes present
        if stat.S_ISLNK(mode):
            raise FetchError(f"{where} is a symlink; refusing to extract")
        kind = stat.S_IFMT(mode)
        if kind and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise FetchError(f"{where} is not a regular file or folder (mode {oct(mode)}); refusing to extract")
        if stat.S_ISDIR(mode) and not info.is_dir():
            raise FetchError(f"{where} is a folder without a trailing '/'; refusing to extract")
    if info.external_attr & 0x10 and not info.is_dir():  # MS-DOS directory bit on a file name
        raise FetchError(f"{where} is marked as a folder without a trailing '/'; refusing to extract")


def safe_extract_zip(
    archive: Path,
    dest: Path,
    *,
    max_bytes: int,
    max_members: int = 200_000,
    max_ratio: float = 200.0,
    strip_top_level: bool = True,
) -> int:
    """Extract ``archive`` safely into ``dest`` and return the number of files written.

    All member names are validated before anything is written. Bytes are counted as they
    are written (declared sizes are not trusted). The content is built in a temporary
    folder next to ``dest`` and renamed onto it only on success (an existing ``dest`` is
    replaced as a whole); on any failure ``dest`` is untouched. With ``strip_top_level``
    the archive must hold a single top-level folder, whose contents become ``dest``.
    """
    archive, dest = Path(archive), Path(dest)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise FetchError(f"archive {archive.name} is not a readable zip file: {exc}") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > max_members:
            raise FetchError(f"archive {archive.name} has {len(infos)} members, more than max_members={max_members}")
        plan = _plan_members(infos, archive, strip_top_level)
        declared = sum(info.file_size for info, _ in plan)
        if declared > max_bytes:
            raise FetchError(
                f"archive {archive.name} declares {declared} bytes uncompressed, more than max_bytes={max_bytes}"
            )
        for info, _ in plan:
            if info.file_size > RATIO_MIN_BYTES and info.file_size > max_ratio * max(info.compress_size, 1):
                raise FetchError(
                    f"archive {archive.name}: member {info.filename!r} has a suspicious compression ratio "
                    f"({info.file_size} / {info.compress_size} bytes, over max_ratio={max_ratio:g}); possible zip bomb"
                )
        archive_size = max(archive.stat().st_size, 1)
        with atomic_path(dest) as tmp:
            tmp.mkdir()
            total = 0
            n_files = 0
            for info, rel in plan:
                target = tmp.joinpath(*rel.parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                written = 0
                try:
                    with zf.open(info) as src, open(target, "xb") as out:
                        while True:
                            block = src.read(CHUNK)
                            if not block:
                                break
                            written += len(block)
                            total += len(block)
                            if total > max_bytes:
                                raise FetchError(
                                    f"archive {archive.name} expands to more than max_bytes={max_bytes} bytes; refusing"
                                )
                            if written > RATIO_MIN_BYTES and written > max_ratio * max(info.compress_size, 1):
                                raise FetchError(
                                    f"archive {archive.name}: member {info.filename!r} expands over "
                                    f"max_ratio={max_ratio:g} times its compressed size; possible zip bomb"
                                )
                            if total > RATIO_MIN_BYTES and total > max_ratio * archive_size:
                                raise FetchError(
                                    f"archive {archive.name} expands over max_ratio={max_ratio:g} times its "
                                    "size; possible zip bomb"
                                )
                            out.write(block)
                except FetchError:
                    raise
                except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
                    raise FetchError(f"archive {archive.name}: member {info.filename!r} is corrupt: {exc}") from None
                except OSError as exc:
                    raise FetchError(
                        f"archive {archive.name}: cannot extract member {info.filename!r}: {exc}"
                    ) from None
                n_files += 1
    return n_files


def _plan_members(
    infos: list[zipfile.ZipInfo], archive: Path, strip_top_level: bool
) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Validate all members and map each to its path below the destination."""
    checked = []
    for info in infos:
        _check_kind(info, archive)
        checked.append((info, _member_path(info.filename, archive)))
    if strip_top_level:
        tops = {rel.parts[0] for _, rel in checked if rel.parts and rel != PurePosixPath(".")}
        files_at_top = [i.filename for i, rel in checked if not i.is_dir() and len(rel.parts) == 1]
        if len(tops) != 1 or files_at_top:
            shown = ", ".join(sorted(tops)[:3]) or "nothing"
            raise FetchError(
                f"archive {archive.name} should hold a single top-level folder (as GitHub archives do), "
                f"found {shown}{' ...' if len(tops) > 3 else ''}"
            )
    plan = []
    files: set[PurePosixPath] = set()
    dirs: set[PurePosixPath] = set()
    for info, rel in checked:
        parts = rel.parts[1:] if strip_top_level else (() if rel == PurePosixPath(".") else rel.parts)
        if not parts:
            if not info.is_dir():
                raise FetchError(f"archive {archive.name}: member {info.filename!r} has no usable path")
            continue  # the top-level folder itself
        path = PurePosixPath(*parts)
        if info.is_dir():
            dirs.add(path)
        else:
            if path in files:
                raise FetchError(f"archive {archive.name}: member {info.filename!r} appears twice; refusing to extract")
            files.add(path)
        dirs.update(path.parents)
        plan.append((info, path))
    clash = files & dirs
    if clash:
        raise FetchError(
            f"archive {archive.name}: {sorted(map(str, clash))[0]!r} is both a file and a folder; refusing to extract"
        )
    return plan


# --------------------------------------------------------------------------- digests


def file_digests(root: Path) -> dict[str, str]:
    """Map each regular file below ``root`` (POSIX relative path) to its SHA-256.

    Anything inside a ``.git`` folder (or a ``.git`` file, as in submodules) is ignored;
    symlinks and other non-regular files raise :class:`FetchError`.
    """
    root = Path(root)
    if not root.is_dir():
        raise FetchError(f"{root} is not a folder")
    out: dict[str, str] = {}
    for rel, full in _walk_files(root):
        out[rel] = sha256_file(full)
    return dict(sorted(out.items()))


def tree_digest(root: Path) -> str:
    """Content digest of a folder: SHA-256 over sorted ``"<relpath>\\0<sha256>\\n"`` lines."""
    return digest_of(file_digests(root))


def digest_of(digests: dict[str, str]) -> str:
    """Tree digest from a ``relpath -> sha256`` mapping (see :func:`tree_digest`)."""
    h = hashlib.sha256()
    for rel in sorted(digests):
        h.update(f"{rel}\0{digests[rel]}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _walk_files(root: Path):
    """Yield ``(posix relpath, path)`` for regular files below ``root``, skipping ``.git``."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != ".git")
        for d in dirnames:
            full = Path(dirpath, d)
            if full.is_symlink():
                raise FetchError(f"{full} is a symlink; refusing it in a source tree")
        for f in sorted(filenames):
            if f == ".git":
                continue
            full = Path(dirpath, f)
            mode = full.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise FetchError(f"{full} is a symlink; refusing it in a source tree")
            if not stat.S_ISREG(mode):
                raise FetchError(f"{full} is not a regular file; refusing it in a source tree")
            yield full.relative_to(root).as_posix(), full


# --------------------------------------------------------------------------- git helpers


def _git(args: list[str]) -> subprocess.CompletedProcess:
    if shutil.which("git") is None:
        raise FetchError("git is not installed (needed for method: git and for checking a local_dir clone)")
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", LC_ALL="C")
    return subprocess.run(
        ["git", "-c", "core.autocrlf=false", "-c", "advice.detachedHead=false", *args],
        env=env,
        capture_output=True,
        text=True,
    )


def _git_error(proc: subprocess.CompletedProcess) -> str:
    lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
    fatal = [ln for ln in lines if ln.lower().startswith(("fatal", "error"))]
    return (fatal or lines or [f"exit status {proc.returncode}"])[0]


def _git_head(path: Path, what: str) -> str:
    proc = _git(["-c", f"safe.directory={path}", "-C", str(path), "rev-parse", "HEAD"])
    if proc.returncode != 0:
        raise FetchError(f"{what}: cannot read the git HEAD of {path}: {_git_error(proc)}")
    return proc.stdout.strip().lower()


def _same_commit(head: str, commit: str) -> bool:
    commit = commit.strip().lower()
    return head == commit or (len(commit) >= 7 and head.startswith(commit))


# --------------------------------------------------------------------------- fetch_source


def fetch_source(name: str, cfg: dict, dest: Path, *, log: Callable[[str], object] = print) -> dict:
    """Fetch source ``name`` as configured by ``cfg`` (``fetch.<name>``) into ``dest``.

    ``dest`` is replaced atomically, only after the content was verified; on any failure
    it is left untouched. Returns a JSON-serialisable record: name, method, url or
    local_dir, commit, tree_sha256 (computed), checksum_status ('verified' or 'recorded'),
    n_files, n_bytes.
    """
    dest = Path(dest)
    opts = _options(name, cfg)
    expected = opts["tree_sha256"]
    if not expected and opts["require_checksum"]:
        raise FetchError(
            f"fetch.{name}.tree_sha256 is empty but fetch.{name}.require_checksum is true: fetch once with "
            f"require_checksum: false to compute the digest, then record it in params.yaml"
        )
    record: dict = {"name": name}
    with atomic_path(dest) as tmp:
        if opts["local_dir"] is not None:
            commit = _from_local_dir(name, opts, tmp, log)
            record.update(method="local_dir", local_dir=str(opts["local_dir_raw"]), commit=commit)
        elif opts["method"] == "git":
            _from_git(name, opts, tmp, log)
            record.update(method="git", url=opts["url"], commit=opts["commit"])
        else:
            _from_archive(name, opts, tmp, log)
            record.update(method="archive", url=opts["url"], commit=opts["commit"])
        digests = file_digests(tmp)
        if not digests:
            raise FetchError(f"{name}: no files found in {record.get('url') or record.get('local_dir')}")
        n_bytes = sum((tmp / rel).stat().st_size for rel in digests)
        if n_bytes > opts["max_bytes"]:
            raise FetchError(f"{name} holds {n_bytes} bytes, more than fetch.{name}.max_bytes={opts['max_bytes']}")
        digest = digest_of(digests)
        if expected:
            if digest != expected:
                raise FetchError(
                    f"fetch.{name}.tree_sha256 mismatch for {name}: expected {expected}, got {digest} "
                    f"({len(digests)} files from {record.get('url') or record.get('local_dir')}); "
                    f"{dest} was left unchanged"
                )
            status = "verified"
            log(f"{name}: tree digest verified ({len(digests)} files, {n_bytes} bytes)")
        else:
            status = "recorded"
            log(f"{name}: no digest pinned yet; record it in params.yaml: fetch.{name}.tree_sha256: {digest}")
    record.update(tree_sha256=digest, checksum_status=status, n_files=len(digests), n_bytes=n_bytes)
    return record


def _options(name: str, cfg: dict) -> dict:
    if not isinstance(cfg, dict):
        raise FetchError(f"fetch.{name} must be a mapping of options, got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - CFG_KEYS)
    if unknown:
        raise FetchError(f"fetch.{name}: unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(CFG_KEYS))})")

    def text(key: str) -> str:
        value = cfg.get(key)
        return "" if value is None else str(value).strip()

    def positive(key: str, default, kind):
        value = cfg.get(key)
        if value is None:
            return default
        try:
            number = kind(value)
        except (TypeError, ValueError):
            number = 0
        if isinstance(value, bool) or number <= 0:
            raise FetchError(f"fetch.{name}.{key} must be a positive number, got {value!r}")
        return number

    commit = text("commit").lower()
    method = text("method").lower() or "archive"
    if method not in ("archive", "git"):
        raise FetchError(f"fetch.{name}.method must be 'archive' or 'git', got {cfg.get('method')!r}")
    expected = text("tree_sha256").lower()
    if expected and not _HEX64.match(expected):
        raise FetchError(f"fetch.{name}.tree_sha256 must be 64 hex characters (a SHA-256), got {expected!r}")
    require = cfg.get("require_checksum", False)
    if not isinstance(require, bool) and require is not None:
        raise FetchError(f"fetch.{name}.require_checksum must be true or false, got {require!r}")
    local_raw = text("local_dir")
    local_dir = Path(local_raw).expanduser().absolute() if local_raw else None
    url = text("url")
    if local_dir is None:
        if not url:
            raise FetchError(f"fetch.{name}: set url (download) or local_dir (an existing clone or copy)")
        if "{commit}" in url:
            if not commit:
                raise FetchError(f"fetch.{name}.url contains {{commit}} but fetch.{name}.commit is empty")
            url = url.replace("{commit}", commit)
        if method == "git" and not _COMMIT.match(commit):
            raise FetchError(f"fetch.{name}.commit must be a full commit id (40 hex characters) for method: git")
    return {
        "url": url or None,
        "commit": commit or None,
        "method": method,
        "local_dir": local_dir,
        "local_dir_raw": local_raw,
        "tree_sha256": expected,
        "require_checksum": bool(require),
        "max_bytes": positive("max_bytes", DEFAULT_MAX_BYTES, int),
        "retries": positive("retries", DEFAULT_RETRIES, int),
        "timeout": positive("timeout", DEFAULT_TIMEOUT, float),
        "backoff": _backoff(name, cfg.get("backoff")),
    }


def _backoff(name: str, value) -> float:
    """First wait between attempts (seconds, doubled each time); optional key, default 1."""
    if value is None:
        return 1.0
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if isinstance(value, bool) or seconds < 0:
        raise FetchError(f"fetch.{name}.backoff must be a number of seconds >= 0, got {value!r}")
    return seconds


def _from_archive(name: str, opts: dict, tmp: Path, log) -> None:
    archive = tmp.parent / f"{name}.zip"  # inside atomic_path's private temp folder
    log(f"{name}: downloading {opts['url']}")
    download(
        opts["url"],
        archive,
        retries=opts["retries"],
        timeout=opts["timeout"],
        backoff=opts["backoff"],
        max_bytes=opts["max_bytes"],
        name=name,
    )
    commit = opts["commit"]
    try:
        with zipfile.ZipFile(archive) as zf:
            comment = zf.comment.decode("ascii", "replace").strip().lower()
    except (zipfile.BadZipFile, OSError) as exc:
        raise FetchError(f"{name}: the download from {opts['url']} is not a zip file: {exc}") from None
    if commit and _COMMIT.match(comment) and _COMMIT.match(commit) and comment != commit:
        raise FetchError(
            f"{name}: the archive from {opts['url']} is of commit {comment}, not fetch.{name}.commit={commit}"
        )
    n = safe_extract_zip(archive, tmp, max_bytes=opts["max_bytes"])
    archive.unlink()
    log(f"{name}: extracted {n} files")


def _from_git(name: str, opts: dict, tmp: Path, log) -> None:
    url, commit = opts["url"], opts["commit"]
    tmp.mkdir()
    proc = _git(["-c", "init.defaultBranch=main", "init", "-q", str(tmp)])
    if proc.returncode != 0:
        raise FetchError(f"{name}: git init failed: {_git_error(proc)}")
    low_speed = ["-c", "http.lowSpeedLimit=1000", "-c", f"http.lowSpeedTime={max(1, int(opts['timeout']))}"]
    permanent = ("not our ref", "couldn't find remote ref", "not found", "does not appear to be a git repository")
    attempts = opts["retries"]
    log(f"{name}: git fetch {url} {commit}")
    for attempt in range(attempts):
        if attempt:
            time.sleep(opts["backoff"] * 2 ** (attempt - 1))
        proc = _git([*low_speed, "-C", str(tmp), "fetch", "-q", "--depth", "1", "--no-tags", url, commit])
        if proc.returncode == 0:
            break
        reason = _git_error(proc)
        if any(p in reason.lower() for p in permanent):
            raise FetchError(f"cannot git fetch {name} commit {commit} from {url}: {reason}")
    else:
        raise FetchError(
            f"cannot git fetch {name} from {url} after {attempts} attempts ({reason}); "
            f"are you offline? Set fetch.{name}.local_dir to an existing clone"
        )
    proc = _git(["-C", str(tmp), "checkout", "-q", "--detach", "FETCH_HEAD"])
    if proc.returncode != 0:
        raise FetchError(f"{name}: git checkout of {commit} failed: {_git_error(proc)}")
    head = _git_head(tmp, name)
    if head != commit:
        raise FetchError(f"{name}: git HEAD is {head}, not fetch.{name}.commit={commit}")
    log(f"{name}: git verified commit {head}")
    shutil.rmtree(tmp / ".git")


def _from_local_dir(name: str, opts: dict, tmp: Path, log) -> str | None:
    src: Path = opts["local_dir"]
    if not src.is_dir():
        raise FetchError(f"fetch.{name}.local_dir: {src} is not an existing folder")
    if tmp.resolve().is_relative_to(src.resolve()):
        raise FetchError(f"fetch.{name}.local_dir: {src} contains the destination {tmp.parent.parent / tmp.name}")
    commit = opts["commit"]
    if (src / ".git").exists():  # its own work tree, not merely a folder inside some repository
        head = _git_head(src, f"fetch.{name}.local_dir")
        if commit and not _same_commit(head, commit):
            raise FetchError(
                f"fetch.{name}.local_dir: the clone at {src} is at commit {head}, not fetch.{name}.commit={commit}; "
                f"run git -C {src} checkout {commit}"
            )
        status = _git(["-c", f"safe.directory={src}", "-C", str(src), "status", "--porcelain"])
        if status.returncode == 0 and status.stdout.strip():
            log(f"{name}: warning: {src} has uncommitted changes or untracked files; they are copied too")
        log(f"{name}: using the clone {src} at commit {head}")
        commit = head
    else:
        log(f"{name}: using the folder {src} (not a git clone: its commit is not checked, its digest is)")
    tmp.mkdir()
    n = 0
    for rel, full in _walk_files(src):
        target = tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(full, target)
        n += 1
    log(f"{name}: copied {n} files")
    return commit
