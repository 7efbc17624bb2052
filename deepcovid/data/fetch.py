"""Bring one raw source into the workspace (``fetch_source``): from a zip archive (download +
safe extraction), a shallow git fetch or a local folder, verified by its content digest
(``files.tree_digest``, pinned as ``fetch.<name>.tree_sha256`` in params.yaml)."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from deepcovid import synthetic
from deepcovid.data.archive import safe_extract_zip
from deepcovid.data.download import DEFAULT_RETRIES, DEFAULT_TIMEOUT, download
from deepcovid.data.errors import FetchError
from deepcovid.files import TreeError, atomic_path, tree_digest, walk_files
from deepcovid.runner import die_with_parent

DEFAULT_MAX_BYTES = 5 * 1024**3

# The options of fetch.<name>; all optional except one of url / local_dir. Unknown keys are
# errors, so that a misspelt tree_sha256 cannot silently disable the check. Defaults:
# method archive, require_checksum false, max_bytes 5 GiB (caps the download and the
# extracted size), retries 3 (attempts), timeout 60 s (per network operation), backoff 1 s
# (doubled after each failed attempt).
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
        if opts["local_dir"] is not None:  # local_dir takes precedence over url
            commit = _from_local_dir(name, opts, tmp, log)
            record.update(method="local_dir", local_dir=str(opts["local_dir_raw"]), commit=commit)
        elif opts["method"] == "git":
            _from_git(name, opts, tmp, log)
            record.update(method="git", url=opts["url"], commit=opts["commit"])
        else:
            _from_archive(name, opts, tmp, log)
            record.update(method="archive", url=opts["url"], commit=opts["commit"])
        try:
            sizes = [full.stat().st_size for _, full in walk_files(tmp)]
            if not sizes:
                raise FetchError(f"{name}: no files found in {record.get('url') or record.get('local_dir')}")
            n_files, n_bytes = len(sizes), sum(sizes)
            if n_bytes > opts["max_bytes"]:
                raise FetchError(f"{name} holds {n_bytes} bytes, more than fetch.{name}.max_bytes={opts['max_bytes']}")
            digest = tree_digest(tmp)
        except TreeError as exc:
            raise FetchError(exc) from None
        # An empty tree_sha256 is recorded (the log line says what to copy into params.yaml);
        # a pinned one is verified, and any difference fails.
        if expected:
            if digest != expected:
                raise FetchError(
                    f"fetch.{name}.tree_sha256 mismatch for {name}: expected {expected}, got {digest} "
                    f"({n_files} files from {record.get('url') or record.get('local_dir')}); "
                    f"{dest} was left unchanged"
                )
            status = "verified"
            log(f"{name}: tree digest verified ({n_files} files, {n_bytes} bytes)")
        else:
            status = "recorded"
            log(f"{name}: no digest pinned yet; record it in params.yaml: fetch.{name}.tree_sha256: {digest}")
    record.update(tree_sha256=digest, checksum_status=status, n_files=n_files, n_bytes=n_bytes)
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
    # e.g. https://github.com/ieee8023/covid-chestxray-dataset/archive/{commit}.zip; GitHub
    # writes the commit id as the zip comment (checked) and adds one top-level folder
    # <repo>-<commit>/ (stripped). Its tree digest equals a checkout's unless the repository
    # uses export-ignore / export-subst attributes or Git LFS (Cohen and Actualmed do not).
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
    # git init, fetch --depth 1 <url> <commit>, checkout; HEAD must be the pinned commit (git's
    # own content hash). .git is removed afterwards: the destination holds just the files.
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
    # An existing clone or a plain copy (a relative path is relative to the working directory,
    # the repository root under DVC). A git work tree must be at the pinned commit.
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
    try:
        for rel, full in walk_files(src):
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(full, target)
            n += 1
    except TreeError as exc:
        raise FetchError(exc) from None
    log(f"{name}: copied {n} files")
    return commit


def _git(args: list[str]) -> subprocess.CompletedProcess:
    if shutil.which("git") is None:
        raise FetchError("git is not installed (needed for method: git and for checking a local_dir clone)")
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", LC_ALL="C")
    return subprocess.run(
        ["git", "-c", "core.autocrlf=false", "-c", "advice.detachedHead=false", *args],
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=die_with_parent,  # git ends with a killed fetch stage
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


def _generator_pool() -> ProcessPoolExecutor:
    """Processes for the generator, one per available core (at most 8): the images are the same
    bytes for any number of them, so this is not a parameter. They die with the stage."""
    workers = max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
    return ProcessPoolExecutor(max_workers=workers, initializer=die_with_parent, initargs=(os.getpid(),))


def fetch_dataset(selection: dict, out: str | os.PathLike, *, log: Callable[[str], object] = print) -> dict:
    """The fetch stage: bring the sources of ``selection`` (from
    :meth:`deepcovid.config.Params.fetch_selection`) into ``out`` atomically,
    with ``sources.json`` recording each source's root and fetch record."""
    from deepcovid import files
    from deepcovid.data.metadata import chexpert_root

    dataset, sources = selection["dataset"], selection.get("sources", [])
    roots, records = {}, {}
    if "chexpert" in sources:  # needs no download: a missing CheXpert stops at once
        path = selection["fetch"]["chexpert"]["path"]
        if not path:
            raise FetchError(
                f"dataset={dataset} needs CheXpert: set parameter fetch.chexpert.path to your "
                "CheXpert-v1.0-small (or CheXpert-v1.0) folder"
            )
        if not Path(path).exists():
            raise FetchError(f"parameter fetch.chexpert.path: {path} does not exist")
        roots["chexpert"] = str(chexpert_root(path).resolve())
        records["chexpert"] = {"name": "chexpert", "method": "user_path", "path": roots["chexpert"]}
    with atomic_path(out) as tmp:
        tmp.mkdir()
        if dataset == "synthetic":
            seed, cfg = selection["seed"], selection["synthetic"]
            records["cohen"] = synthetic.generate_cohen(tmp / "cohen", cfg["cohen"], seed)
            with _generator_pool() as pool:
                records["chexpert"] = synthetic.generate_chexpert(
                    tmp / "chexpert", cfg["chexpert"], seed + 1, map=functools.partial(pool.map, chunksize=16)
                )
            roots["cohen"], roots["chexpert"] = "cohen", "chexpert/CheXpert-v1.0-small"
        else:
            for name in sources:
                if name != "chexpert":
                    records[name] = fetch_source(name, selection["fetch"][name], tmp / name, log=log)
                    roots[name] = name
        files.write_json(tmp / "sources.json", {"dataset": dataset, "roots": roots, "records": records})
    return roots
