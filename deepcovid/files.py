"""Small file helpers: atomic writes (nothing half-written survives a crash) and hashing
(of one file, or the content of a folder: :func:`tree_digest`)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterator


class TreeError(ValueError):
    """A folder holds something its content digest cannot vouch for (a symlink, a device...)."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    Works for files and directories: whatever the caller creates at the yielded path
    replaces ``path`` atomically (``os.replace``; a directory target is removed first).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / (path.name + suffix)
    try:
        yield target
        if not target.exists():
            raise FileNotFoundError(f"nothing was written to {target}")
        if target.is_dir() and path.is_dir():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(target, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj, indent: int = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, sort_keys=False, allow_nan=False) + "\n")


def write_csv(path: str | os.PathLike, frame) -> None:
    """Write a pandas DataFrame as CSV atomically (no index, LF line endings)."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, lineterminator="\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


# The tree digest of a folder (recorded as fetch.<source>.tree_sha256 in params.yaml, so its
# definition must never change):
#     sha256("".join(sorted(f"{relpath}\0{sha256(file)}\n" for every regular file)))
# relpath is the POSIX path relative to the folder (UTF-8); anything in a .git folder (or a
# .git file, as in submodules) is ignored; symlinks and other non-regular files are refused.
# GitHub's archives are not byte-stable, but an archive, a git checkout and a copy of one
# commit give the same digest.


def tree_digest(folder: str | os.PathLike) -> str:
    """Content digest of ``folder``: SHA-256 over its sorted ``"<relpath>\\0<sha256>\\n"`` lines."""
    h = hashlib.sha256()
    for rel, digest in file_digests(folder).items():
        h.update(f"{rel}\0{digest}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def file_digests(folder: str | os.PathLike) -> dict[str, str]:
    """``{posix relpath: sha256}`` of each regular file below ``folder``, sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TreeError(f"{folder} is not a folder")
    return dict(sorted((rel, sha256_file(full)) for rel, full in walk_files(folder)))


def walk_files(folder: str | os.PathLike) -> Iterator[tuple[str, Path]]:
    """Yield ``(posix relpath, path)`` of the regular files below ``folder``, skipping ``.git``.

    Raises :class:`TreeError` on a symlink or any other non-regular file.
    """
    folder = Path(folder)
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d != ".git")
        for d in dirnames:
            full = Path(dirpath, d)
            if full.is_symlink():
                raise TreeError(f"{full} is a symlink; refusing it in a source tree")
        for f in sorted(filenames):
            if f == ".git":
                continue
            full = Path(dirpath, f)
            mode = full.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise TreeError(f"{full} is a symlink; refusing it in a source tree")
            if not stat.S_ISREG(mode):
                raise TreeError(f"{full} is not a regular file; refusing it in a source tree")
            yield full.relative_to(folder).as_posix(), full
