"""Small file helpers: atomic writes (nothing half-written survives a crash) and hashing
(of one file, or the content of a folder: :func:`tree_digest`)."""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath

from deepcovid.errors import InputError, MissingInputError, OutputError

#: The OS errors of an output that a user fixes (space, a read-only or foreign folder, a quota).
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG})


def output_error(path: str | os.PathLike, exc: OSError) -> OutputError:
    """The one-line error of an OS error met writing the output ``path``."""
    return OutputError(f"{path}: cannot be written ({exc.strerror or exc}); nothing was replaced")


def check_writable(path: str | os.PathLike) -> None:
    """Fail now, in one line, if the file ``path`` could not be written (its folder missing and
    not creatable, read-only, not ours, full): before long work whose result would be lost."""
    parent = Path(path).parent
    blocker = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise OutputError(f"{path}: cannot be written ({blocker} is a file, not a folder)")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{Path(path).name}.", suffix=".probe") as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        raise output_error(path, exc) from None


class TreeError(InputError):
    """A folder holds something its content digest cannot vouch for (a symlink, a device...)."""


class UnsafePathError(InputError):
    """A path read from a file (metadata, manifest) would lead outside the folder it must stay in."""


def unsafe_relpath(relpath: str) -> str | None:
    """Why ``relpath`` cannot name a file below a folder, or None when it can: empty, absolute (POSIX
    or Windows, with a drive), a ``..`` component (either separator), or a NUL / control character."""
    if not relpath:
        return "empty path"
    if any(ord(c) < 32 for c in relpath):
        return "control character in path"
    windows = PureWindowsPath(relpath)
    if PurePosixPath(relpath).is_absolute() or windows.is_absolute() or windows.drive or windows.root:
        return "absolute path"
    if ".." in PurePosixPath(relpath).parts or ".." in windows.parts:
        return "'..' in path"
    return None


def inside(root: str | os.PathLike, relpath: str) -> Path:
    """``root / relpath``, after checking that it stays inside ``root`` once symlinks are resolved.

    Raises :class:`UnsafePathError` naming the path and the reason otherwise."""
    reason = unsafe_relpath(str(relpath))
    full = Path(root) / str(relpath)
    if reason is None:
        real_root = os.path.realpath(root)
        if os.path.commonpath([real_root, os.path.realpath(full)]) != real_root:
            reason = "a symlink leads outside"
    if reason:
        raise UnsafePathError(f"{str(relpath)!r}: {reason}; refusing a path outside {root}")
    return full


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    Works for files and directories: whatever the caller creates at the yielded path
    replaces ``path`` atomically (``os.replace``; a directory target is removed first).
    The temporary folder's name carries the writer's process id: leftovers of a writer that was
    killed (SIGKILL, power loss: no ``finally`` runs) are removed by the next writer of ``path``
    (:func:`remove_stale_temporaries`).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        if exc.errno in WRITE_ERRNOS:
            raise output_error(path, exc) from None
        raise
    target = tmp / (path.name + suffix)
    try:
        try:
            yield target
        except OSError as exc:  # writing the output (not reading an input: that error names its own file)
            mine = exc.filename is None or str(exc.filename).startswith(str(tmp))
            if exc.errno in WRITE_ERRNOS and mine and not isinstance(exc, OutputError):
                raise output_error(path, exc) from None
            raise
        if not target.exists():
            raise FileNotFoundError(f"nothing was written to {target}")
        if target.is_dir() and path.is_dir():
            old = path.with_name(f".{path.name}.{os.getpid()}.old")
            os.replace(path, old)
            os.replace(target, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sweep_stale_temporaries(folders) -> list[Path]:
    """:func:`remove_stale_temporaries` for everything below ``folders`` (those that exist): what any
    killed writer left there, whatever it was writing."""
    removed = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in [*dirnames, *filenames]:
                match = _STALE_NAME.fullmatch(name)
                if match:
                    removed += remove_stale_temporaries(Path(dirpath) / match.group(1))
            dirnames[:] = [d for d in dirnames if not _STALE_NAME.fullmatch(d)]
    return removed


# what a writer of <name> leaves after the prefix ".<name>.": atomic_path's "<pid>.<mkdtemp's 8
# characters>.tmp" and "<pid>.old", a download's "<pid>.part" (deepcovid.data.download, model.weights)
_STALE = re.compile(r"(\d+)\.(?:[a-z0-9_]{8}\.tmp|old|part)")
_STALE_NAME = re.compile(r"\.(.+)\.\d+\.(?:[a-z0-9_]{8}\.tmp|old|part)")


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove what killed writers of ``path`` left beside it: ``.<name>.<pid>.*.tmp`` and
    ``.<name>.<pid>.old`` folders and ``.<name>.<pid>.part`` downloads of processes that no longer
    run (a live writer's are kept).
    Returns what was removed."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    removed = []
    prefix = f".{path.name}."
    for entry in path.parent.iterdir():
        match = _STALE.fullmatch(entry.name[len(prefix) :]) if entry.name.startswith(prefix) else None
        if not match:
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or _alive(pid):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_json(path: str | os.PathLike, stage: str = "the stage that writes it"):
    """A JSON input; missing or invalid: one line naming the file (and ``stage``, to run)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MissingInputError(f"{path} not found: run {stage} first") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None


def write_json(path: str | os.PathLike, obj, indent: int = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, sort_keys=False, allow_nan=False) + "\n")


#: What a spreadsheet reads as the start of a formula (OWASP "CSV injection"): such a cell from
#: outside data (a file name, a patient id, a finding) would run when the report is opened.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise_formulas(frame):
    """A copy of ``frame`` in which every text cell that starts with one of
    :data:`FORMULA_STARTS` gets a leading ``'`` (OWASP's rule: shown as text, never evaluated).
    Numeric columns are untouched (a negative number stays a number)."""
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    out = frame.copy()
    for column in out.columns:
        values = out[column]
        if is_numeric_dtype(values) or is_bool_dtype(values):
            continue
        out[column] = [f"'{v}" if isinstance(v, str) and v.startswith(FORMULA_STARTS) else v for v in values]
    return out


def write_csv(path: str | os.PathLike, frame, *, report: bool = False) -> None:
    """Write a pandas DataFrame as CSV atomically (no index, LF line endings).

    ``report=True`` for the tables written for people (predict's output, rejected files,
    duplicate groups, external evaluations): text cells that a spreadsheet would run as a formula
    are neutralised (:func:`neutralise_formulas`). Tables the pipeline reads back (manifests,
    indexes, predictions) keep the sources' values exactly."""
    if report:
        frame = neutralise_formulas(frame)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, lineterminator="\n")


def read_text_table(data: bytes | str, name: str, encoding_errors: str = "strict"):
    """A CSV table (bytes or text) as a pandas DataFrame of stripped strings, read strictly.

    Where pandas is lenient, this refuses with :class:`InputError` naming ``name`` and the line:
    a record with another field count than the header (a stray quote makes the parser swallow the
    following fields and lines into one cell; pandas would fill or shift the columns silently), a
    quote that never closes, a NUL byte, an empty file, a column named twice, bytes that are not
    UTF-8 (unless ``encoding_errors="replace"``: U+FFFD). A UTF-8 BOM is dropped; blank lines and
    unnamed columns (a trailing separator) are skipped. ``frame.attrs["lines"]`` holds the line
    each row starts on (:func:`line_of`)."""
    import pandas as pd

    def unreadable(why: str) -> InputError:
        return InputError(f"{name}: not a readable CSV file ({why})")

    if isinstance(data, bytes):
        nul = data.find(b"\0")
        if nul >= 0:
            raise unreadable(f"NUL byte at offset {nul}; not a text file")
        try:
            data = data.decode("utf-8", errors=encoding_errors)
        except UnicodeDecodeError as exc:
            raise unreadable(f"not UTF-8: {exc}") from None
    elif "\0" in data:
        raise unreadable("NUL character; not a text file")
    reader = csv.reader(io.StringIO(data.removeprefix("\ufeff"), newline=""), strict=True)
    try:
        records = list(reader)
    except csv.Error as exc:
        raise unreadable(f"line {reader.line_num}: {exc}") from None
    if not records or not any(cell.strip() for cell in records[0]):
        raise unreadable("empty: no header line")
    header, starts = records[0], [1]
    for record in records:  # the physical line each record starts on
        starts.append(starts[-1] + sum(cell.count("\n") for cell in record) + 1)
    rows, lines = [], []
    for i, record in enumerate(records[1:], start=1):
        if not record:  # a blank line
            continue
        if len(record) != len(header):
            raise InputError(
                f"{name}: line {starts[i]} has {len(record)} fields where the header has "
                f"{len(header)} (a stray quote or separator?)"
            )
        rows.append([cell.strip() for cell in record])
        lines.append(starts[i])
    names = [column.strip() for column in header]
    keep = [i for i, column in enumerate(names) if column]
    seen = [names[i] for i in keep]
    twice = next((column for column in seen if seen.count(column) > 1), None)
    if twice is not None:
        raise InputError(f"{name}: column {twice!r} appears twice in the header")
    frame = pd.DataFrame([[row[i] for i in keep] for row in rows], columns=seen, dtype=str)
    frame.attrs["lines"] = lines
    return frame


def line_of(frame, i: int) -> int:
    """The line on which row ``i`` of a :func:`read_text_table` frame starts (``i + 2`` without the record)."""
    lines = frame.attrs.get("lines")
    return lines[i] if lines is not None and i < len(lines) else i + 2


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
