"""Safe extraction of a zip archive (a GitHub archive of a source): every member is checked
before anything is written; the result replaces the destination only when all went well.
Stricter than zipfile/shutil: no links, no '..', no .git, no zip bombs, sizes counted as written."""

from __future__ import annotations

import lzma
import re
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from deepcovid.data.errors import FetchError
from deepcovid.files import atomic_path

CHUNK = 1 << 20
# The compression-ratio check applies once a member (or the archive) has produced this
# many bytes: small text files legitimately compress very well.
RATIO_MIN_BYTES = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")


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
    if not info.filename:  # zipfile cuts a name at its first NUL byte
        raise FetchError(
            f"archive {archive.name}: a member has an empty name (or one starting with a NUL byte); refusing to extract"
        )
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
    except (zipfile.BadZipFile, OSError, EOFError, UnicodeDecodeError, NotImplementedError, ValueError) as exc:
        # NotImplementedError: a "version needed to extract" zipfile does not know; UnicodeDecodeError:
        # a name flagged UTF-8 that is not
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
                written = 0
                try:
                    if info.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
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
                except (
                    zipfile.BadZipFile,
                    zlib.error,
                    lzma.LZMAError,
                    EOFError,
                    NotImplementedError,
                    RuntimeError,
                    ValueError,
                ) as exc:
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
