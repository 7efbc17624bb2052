"""Tests of fetching sources (deepcovid.data.fetch, .download, .archive; files.tree_digest): downloads,
retries, safe extraction, tree digests, git and local_dir.

No test reaches the network: downloads come from a scripted HTTP server on 127.0.0.1
(port 0) and git sources are repositories created in a temporary folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import warnings
import zipfile
from pathlib import Path

import pytest

import deepcovid.data.fetch as fetch_mod
from deepcovid.data.archive import safe_extract_zip
from deepcovid.data.download import download
from deepcovid.data.errors import FetchError
from deepcovid.data.fetch import fetch_source
from deepcovid.files import TreeError, file_digests, tree_digest
from localserver import ScriptedServer

COMMIT = "ad999d56bdc8fde4a75367dc00323fa2e9d49f73"
TOP = f"covid-chestxray-dataset-{COMMIT}/"
MiB = 1 << 20


@pytest.fixture(autouse=True)
def _no_proxy_no_user_git(monkeypatch):
    """Talk to 127.0.0.1 directly and keep the user's git configuration out of the tests."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


# ----------------------------------------------------------------------------- HTTP server


@pytest.fixture
def server():
    srv = ScriptedServer()
    yield srv
    srv.close()


@pytest.fixture
def refused_url():
    """A URL on a port that is bound but not listening: connections are refused at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/archive.zip"
    sock.close()


# ----------------------------------------------------------------------------- helpers


def make_zip(path: Path, members: dict[str, bytes], *, top: str | None = TOP, comment: bytes = b"") -> Path:
    """A GitHub-like archive: every member below ``top`` (with folder entries)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        if top:
            zf.writestr(top, b"")
        for name, data in members.items():
            zf.writestr((top or "") + name, data)
        zf.comment = comment
    return path


def zip_of_tree(root: Path, path: Path, top: str = TOP, commit: str = COMMIT) -> Path:
    """Zip a folder as GitHub does (top-level folder, folder entries, commit as comment)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(top, b"")
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel_dir = Path(dirpath).relative_to(root)
            if rel_dir != Path("."):
                zf.writestr(top + rel_dir.as_posix() + "/", b"")
            for f in sorted(filenames):
                zf.write(Path(dirpath, f), top + (rel_dir / f).as_posix())
        zf.comment = commit.encode()
    return path


def small_tree(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "metadata.csv").write_text("patientid,filename\n1,a.png\n", encoding="utf-8")
    (root / "images" / "a.png").write_bytes(b"\x89PNG fake image")
    return root


def prefilled(dest: Path) -> Path:
    """A destination from an earlier fetch, with a marker file that must survive failures."""
    dest.mkdir(parents=True)
    (dest / "MARKER").write_text("previous fetch", encoding="utf-8")
    return dest


def assert_untouched(dest: Path) -> None:
    assert sorted(p.name for p in dest.iterdir()) == ["MARKER"]
    assert (dest / "MARKER").read_text(encoding="utf-8") == "previous fetch"
    leftovers = [p.name for p in dest.parent.iterdir() if p != dest]
    assert leftovers == [], f"temporary files left next to the destination: {leftovers}"


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and text.strip() == text and text
    return text


def git(*args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(
        [
            "git",
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.org",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "init.defaultBranch=main",
            *args,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.strip()


needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


@pytest.fixture
def git_repo(tmp_path) -> tuple[Path, list[str]]:
    """A local repository with two commits; returns (path, [first, second])."""
    repo = small_tree(tmp_path / "upstream")
    git("init", "-q", str(repo))
    git("add", ".", cwd=repo)
    git("commit", "-q", "-m", "first", cwd=repo)
    first = git("rev-parse", "HEAD", cwd=repo)
    (repo / "images" / "b.png").write_bytes(b"second image")
    git("add", ".", cwd=repo)
    git("commit", "-q", "-m", "second", cwd=repo)
    second = git("rev-parse", "HEAD", cwd=repo)
    return repo, [first, second]


# ----------------------------------------------------------------------------- digests


def test_tree_digest_definition_and_git_ignored(tmp_path):
    root = small_tree(tmp_path / "t")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ignored", encoding="utf-8")
    (root / "images" / ".git").write_text("gitdir: ignored (submodule)", encoding="utf-8")
    digests = file_digests(root)
    assert list(digests) == ["images/a.png", "metadata.csv"]
    assert digests["metadata.csv"] == hashlib.sha256((root / "metadata.csv").read_bytes()).hexdigest()
    lines = "".join(f"{p}\0{digests[p]}\n" for p in sorted(digests))
    assert tree_digest(root) == hashlib.sha256(lines.encode()).hexdigest()
    (root / "images" / "a.png").write_bytes(b"changed")
    assert tree_digest(root) != hashlib.sha256(lines.encode()).hexdigest()


def test_file_digests_refuses_symlinks(tmp_path):
    root = small_tree(tmp_path / "t")
    (root / "link").symlink_to(root / "metadata.csv")
    with pytest.raises(TreeError, match="symlink"):
        file_digests(root)
    with pytest.raises(FetchError, match="symlink") as exc:  # fetch reports it as its own error
        fetch_source("cohen", {"local_dir": str(root)}, tmp_path / "d", log=lambda m: None)
    assert str(root / "link") in one_line(exc)
    assert not (tmp_path / "d").exists()


# ----------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def cohen_zip(shared_data, tmp_path_factory) -> Path:
    return zip_of_tree(shared_data / "cohen", tmp_path_factory.mktemp("zip") / f"{COMMIT}.zip")


def test_real_cohen_archive_fetch_record_then_verify(shared_data, cohen_zip, server, tmp_path):
    server.script = [("file", cohen_zip)]
    cfg = {
        "url": server.url("/ieee8023/covid-chestxray-dataset/archive/{commit}.zip"),
        "commit": COMMIT,
        "tree_sha256": "",
        "backoff": 0,
    }
    lines: list[str] = []
    dest = tmp_path / "raw" / "cohen"
    rec = fetch_source("cohen", cfg, dest, log=lines.append)

    expected = tree_digest(shared_data / "cohen")
    assert rec["tree_sha256"] == expected
    assert rec["checksum_status"] == "recorded"
    assert rec["method"] == "archive" and rec["commit"] == COMMIT
    assert rec["url"].endswith(f"/archive/{COMMIT}.zip")
    assert server.requests == [f"/ieee8023/covid-chestxray-dataset/archive/{COMMIT}.zip"]
    assert f"record it in params.yaml: fetch.cohen.tree_sha256: {expected}" in "\n".join(lines)
    assert (dest / "metadata.csv").read_bytes() == (shared_data / "cohen" / "metadata.csv").read_bytes()
    images = sorted(p.name for p in (dest / "images").iterdir())
    assert len(images) == 570
    assert images == sorted(p.name for p in (shared_data / "cohen" / "images").iterdir())
    assert rec["n_files"] == len(file_digests(shared_data / "cohen"))
    assert rec["n_bytes"] == sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    assert sorted(p.name for p in dest.parent.iterdir()) == ["cohen"]  # no temporary leftovers

    # Second fetch with the recorded digest: verified, destination replaced in place.
    (dest / "stale.txt").write_text("from an older fetch", encoding="utf-8")
    rec2 = fetch_source("cohen", {**cfg, "tree_sha256": rec["tree_sha256"]}, dest, log=lines.append)
    assert rec2["checksum_status"] == "verified"
    assert rec2["tree_sha256"] == expected
    assert not (dest / "stale.txt").exists()
    json.dumps(rec2)  # JSON-serialisable


def test_real_cohen_local_copy_verifies(shared_data, tmp_path):
    digest = tree_digest(shared_data / "cohen")
    rec = fetch_source(
        "cohen",
        {"local_dir": str(shared_data / "cohen"), "tree_sha256": digest},
        tmp_path / "cohen",
        log=lambda m: None,
    )
    assert rec["method"] == "local_dir" and rec["checksum_status"] == "verified"
    assert len(list((tmp_path / "cohen" / "images").iterdir())) == 570


# ----------------------------------------------------------------------------- download


def test_retry_after_server_errors(server, tmp_path):
    payload = os.urandom(3 * MiB + 17)
    server.script = [(500,), (503,), ("bytes", payload)]
    out = download(server.url(), tmp_path / "a.zip", retries=3, backoff=0, name="cohen")
    assert out.read_bytes() == payload
    assert len(server.requests) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip"]


def test_retry_on_429_timeout_and_truncated_body(server, tmp_path):
    server.script = [(429,), ("sleep", 1.0, b"late"), ("truncate", b"short"), ("bytes", b"complete")]
    out = download(server.url(), tmp_path / "a.zip", retries=4, backoff=0, timeout=0.3, name="cohen")
    assert out.read_bytes() == b"complete"
    assert len(server.requests) == 4


@pytest.mark.parametrize("retries, ok", [(4, True), (3, False)])
def test_broken_bodies_and_server_errors_share_one_budget(server, tmp_path, retries, ok):
    server.script = [(500,), ("truncate", b"short"), (503,), ("bytes", b"complete")]
    if ok:
        assert download(server.url(), tmp_path / "a.zip", retries=retries, backoff=0).read_bytes() == b"complete"
    else:
        with pytest.raises(FetchError, match=r"after 3 attempts \(HTTP 503"):
            download(server.url(), tmp_path / "a.zip", retries=retries, backoff=0, name="cohen")
    assert len(server.requests) == retries


@pytest.mark.parametrize("code", [404, 403])
def test_client_errors_fail_at_once(server, tmp_path, code):
    server.script = [(code,)]
    with pytest.raises(FetchError) as exc:
        download(server.url(), tmp_path / "a.zip", retries=3, backoff=0, name="cohen")
    text = one_line(exc)
    assert f"HTTP {code}" in text and "cohen" in text and server.url() in text
    assert len(server.requests) == 1
    assert list(tmp_path.iterdir()) == []


def test_server_errors_exhaust_retries(server, tmp_path):
    server.script = [(502,)]
    with pytest.raises(FetchError) as exc:
        download(server.url(), tmp_path / "a.zip", retries=2, backoff=0, name="cohen")
    assert "after 2 attempts (HTTP 502" in one_line(exc)
    assert len(server.requests) == 2


def test_connection_refused_says_offline(refused_url, tmp_path):
    with pytest.raises(FetchError) as exc:
        download(refused_url, tmp_path / "a.zip", retries=3, backoff=0, name="cohen")
    text = one_line(exc)
    assert text.startswith(f"cannot download cohen from {refused_url} after 3 attempts (")
    assert "are you offline? Set fetch.cohen.local_dir to an existing clone" in text
    assert list(tmp_path.iterdir()) == []


def test_fetch_source_offline_keeps_destination(refused_url, tmp_path):
    dest = prefilled(tmp_path / "raw" / "cohen")
    with pytest.raises(FetchError, match="are you offline"):
        fetch_source("cohen", {"url": refused_url, "retries": 2, "backoff": 0}, dest, log=lambda m: None)
    assert_untouched(dest)


def test_download_size_cap(server, tmp_path):
    server.script = [("bytes", b"x" * 5000)]
    with pytest.raises(FetchError) as exc:
        download(server.url(), tmp_path / "a.zip", max_bytes=1000, backoff=0, name="cohen")
    assert "max_bytes=1000" in one_line(exc)
    assert len(server.requests) == 1
    assert list(tmp_path.iterdir()) == []


def test_download_file_url_and_bad_scheme(tmp_path):
    src = tmp_path / "src.zip"
    src.write_bytes(b"zip bytes")
    assert download(src.as_uri(), tmp_path / "out" / "a.zip").read_bytes() == b"zip bytes"
    with pytest.raises(FetchError, match="unsupported URL scheme"):
        download("ftp://127.0.0.1/x.zip", tmp_path / "b.zip")
    with pytest.raises(FetchError, match="cannot download"):  # missing local file: no retries
        download((tmp_path / "missing.zip").as_uri(), tmp_path / "c.zip", retries=3, backoff=5)


# ----------------------------------------------------------------------------- checksum


def test_wrong_checksum_keeps_previous_destination(server, tmp_path):
    server.script = [("file", make_zip(tmp_path / "a.zip", {"metadata.csv": b"a,b\n"}))]
    dest = prefilled(tmp_path / "raw" / "cohen")
    cfg = {"url": server.url(), "tree_sha256": "0" * 64}
    with pytest.raises(FetchError) as exc:
        fetch_source("cohen", cfg, dest, log=lambda m: None)
    text = one_line(exc)
    assert "fetch.cohen.tree_sha256" in text and "0" * 64 in text
    assert_untouched(dest)


def test_require_checksum_with_empty_digest_fails_before_download(server, tmp_path):
    dest = prefilled(tmp_path / "raw" / "cohen")
    with pytest.raises(FetchError) as exc:
        fetch_source("cohen", {"url": server.url(), "tree_sha256": "", "require_checksum": True}, dest)
    text = one_line(exc)
    assert "fetch.cohen.tree_sha256 is empty" in text and "fetch.cohen.require_checksum" in text
    assert server.requests == []
    assert_untouched(dest)


def test_empty_digest_logs_record_line(server, tmp_path):
    server.script = [("file", make_zip(tmp_path / "a.zip", {"metadata.csv": b"a,b\n", "images/x.png": b"x"}))]
    lines: list[str] = []
    rec = fetch_source("actualmed", {"url": server.url(), "tree_sha256": None}, tmp_path / "am", log=lines.append)
    assert rec["checksum_status"] == "recorded" and rec["n_files"] == 2 and rec["n_bytes"] == 5
    record_lines = [ln for ln in lines if "record it in params.yaml" in ln]
    assert len(record_lines) == 1
    assert record_lines[0].endswith(f"record it in params.yaml: fetch.actualmed.tree_sha256: {rec['tree_sha256']}")
    assert rec["tree_sha256"] == tree_digest(tmp_path / "am")


def test_zip_comment_must_match_pinned_commit(server, tmp_path):
    other = "1" * 40
    server.script = [("file", make_zip(tmp_path / "a.zip", {"m.csv": b"1"}, comment=other.encode()))]
    with pytest.raises(FetchError, match=f"fetch.cohen.commit={COMMIT}"):
        fetch_source("cohen", {"url": server.url("/{commit}.zip"), "commit": COMMIT}, tmp_path / "d")


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({}, "set url"),
        ({"url": "http://127.0.0.1/{commit}.zip"}, "fetch.cohen.commit is empty"),
        ({"url": "http://127.0.0.1/x.zip", "tree_sha": "ab"}, "unknown option"),
        ({"url": "http://127.0.0.1/x.zip", "tree_sha256": "xyz"}, "fetch.cohen.tree_sha256 must be 64 hex"),
        ({"url": "http://127.0.0.1/x.zip", "method": "svn"}, "fetch.cohen.method"),
        ({"url": "http://127.0.0.1/x.zip", "method": "git", "commit": "main"}, "fetch.cohen.commit must be a full"),
        ({"url": "http://127.0.0.1/x.zip", "retries": 0}, "fetch.cohen.retries"),
        ({"local_dir": "/nonexistent/cohen"}, "fetch.cohen.local_dir"),
    ],
)
def test_bad_options(cfg, message, tmp_path):
    with pytest.raises(FetchError) as exc:
        fetch_source("cohen", cfg, tmp_path / "d", log=lambda m: None)
    assert message in one_line(exc)
    assert not (tmp_path / "d").exists()


# ----------------------------------------------------------------------------- safe extraction


def _zip_with(path: Path, build) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name case
        zf.writestr(TOP, b"")
        zf.writestr(TOP + "metadata.csv", b"a,b\n")
        build(zf)
    return path


def _symlink(zf: zipfile.ZipFile) -> None:
    info = zipfile.ZipInfo(TOP + "link")
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    zf.writestr(info, "/etc/passwd")


def _fifo(zf: zipfile.ZipFile) -> None:
    info = zipfile.ZipInfo(TOP + "fifo")
    info.create_system = 3
    info.external_attr = (stat.S_IFIFO | 0o644) << 16
    zf.writestr(info, b"")


def _zeros(zf: zipfile.ZipFile) -> None:
    zf.writestr(TOP + "zeros.bin", bytes(8 * MiB))


def _lying_sizes(zf: zipfile.ZipFile) -> None:
    zf.writestr(TOP + "zeros.bin", bytes(8 * MiB))
    zf.getinfo(TOP + "zeros.bin").file_size = 10  # declared size lies (central directory)


MALICIOUS = {
    "dotdot": (lambda zf: zf.writestr(TOP + "../../evil", b"pwned"), "'..'"),
    "dotdot_top": (lambda zf: zf.writestr("../evil", b"pwned"), "'..'"),
    "absolute": (lambda zf: zf.writestr("/etc/x", b"pwned"), "absolute"),
    "backslash": (lambda zf: zf.writestr(TOP + "..\\evil", b"pwned"), "backslash"),
    "drive": (lambda zf: zf.writestr("C:/evil", b"pwned"), "drive letter"),
    "symlink": (_symlink, "symlink"),
    "dotgit": (lambda zf: zf.writestr(TOP + ".git/hooks/post-checkout", b"#!/bin/sh"), ".git"),
    "fifo": (_fifo, "not a regular file"),
    "duplicate": (lambda zf: zf.writestr(TOP + "metadata.csv", b"other"), "appears twice"),
    "two_tops": (lambda zf: zf.writestr("other-top/file", b"x"), "single top-level folder"),
    "too_big": (lambda zf: zf.writestr(TOP + "big.bin", os.urandom(300_000)), "max_bytes"),
    "zeros_ratio": (_zeros, "compression ratio"),
    "lying_sizes": (_lying_sizes, "corrupt"),
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_safe_extract_refuses(case, tmp_path):
    build, message = MALICIOUS[case]
    archive = _zip_with(tmp_path / "archive.zip", build)
    work = tmp_path / "work"
    dest = prefilled(work / "dest")
    with pytest.raises(FetchError) as exc:
        safe_extract_zip(archive, dest, max_bytes=200_000 if case == "too_big" else 64 * MiB)
    assert message in one_line(exc)
    assert_untouched(dest)
    assert [p.name for p in tmp_path.rglob("*evil*")] == []
    assert not (tmp_path / "work" / "evil").exists() and not Path("/etc/x").exists()


def test_safe_extract_limits_members_and_counts_written_bytes(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {f"f{i}.txt": b"x" for i in range(10)})
    with pytest.raises(FetchError, match="max_members=5"):
        safe_extract_zip(archive, tmp_path / "d", max_bytes=MiB, max_members=5)
    assert safe_extract_zip(archive, tmp_path / "d", max_bytes=MiB) == 10
    # Many small files of zeros: fine below the ratio threshold...
    ok = make_zip(tmp_path / "ok.zip", {"notes.txt": bytes(200_000)})
    assert safe_extract_zip(ok, tmp_path / "ok", max_bytes=MiB) == 1
    # ...and the whole-archive ratio catches members that each look harmless.
    many = make_zip(tmp_path / "many.zip", {f"z{i}.bin": bytes(900_000) for i in range(4)})
    with pytest.raises(FetchError, match="zip bomb"):
        safe_extract_zip(many, tmp_path / "many", max_bytes=64 * MiB)
    assert not (tmp_path / "many").exists()


def test_safe_extract_without_strip_and_not_a_zip(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"x/y.txt": b"y", "z.txt": b"z"}, top=None)
    assert safe_extract_zip(archive, tmp_path / "d", max_bytes=MiB, strip_top_level=False) == 2
    assert (tmp_path / "d" / "x" / "y.txt").read_bytes() == b"y"
    bogus = tmp_path / "bogus.zip"
    bogus.write_bytes(b"<html>not a zip</html>")
    with pytest.raises(FetchError, match="not a readable zip"):
        safe_extract_zip(bogus, tmp_path / "e", max_bytes=MiB)


def test_fetch_source_refuses_traversal_archive(server, tmp_path):
    archive = _zip_with(tmp_path / "archive.zip", MALICIOUS["dotdot"][0])
    server.script = [("file", archive)]
    dest = prefilled(tmp_path / "raw" / "cohen")
    with pytest.raises(FetchError, match="'..'"):
        fetch_source("cohen", {"url": server.url()}, dest, log=lambda m: None)
    assert_untouched(dest)
    assert list(tmp_path.rglob("*evil*")) == []


# ----------------------------------------------------------------------------- local_dir and git


def test_local_dir_plain_copy(tmp_path, monkeypatch):
    src = small_tree(tmp_path / "copy")
    digest = tree_digest(src)
    monkeypatch.chdir(tmp_path)  # relative local_dir is relative to the working directory
    rec = fetch_source(
        "cohen",
        {"local_dir": "copy", "commit": COMMIT, "tree_sha256": digest},
        tmp_path / "raw" / "cohen",
        log=lambda m: None,
    )
    assert rec == {
        "name": "cohen",
        "method": "local_dir",
        "local_dir": "copy",
        "commit": COMMIT,
        "tree_sha256": digest,
        "checksum_status": "verified",
        "n_files": 2,
        "n_bytes": rec["n_bytes"],
    }
    assert tree_digest(tmp_path / "raw" / "cohen") == digest
    dest = prefilled(tmp_path / "raw2" / "cohen")
    with pytest.raises(FetchError, match="fetch.cohen.tree_sha256 mismatch"):
        fetch_source("cohen", {"local_dir": "copy", "tree_sha256": "f" * 64}, dest, log=lambda m: None)
    assert_untouched(dest)


@needs_git
def test_local_dir_git_clone_commit_checked(git_repo, tmp_path):
    repo, (first, second) = git_repo
    digest = tree_digest(repo)
    rec = fetch_source(
        "cohen",
        {"local_dir": str(repo), "commit": second, "tree_sha256": digest},
        tmp_path / "raw" / "cohen",
        log=lambda m: None,
    )
    assert rec["commit"] == second and rec["checksum_status"] == "verified"
    assert not (tmp_path / "raw" / "cohen" / ".git").exists()
    assert (tmp_path / "raw" / "cohen" / "images" / "b.png").is_file()

    dest = prefilled(tmp_path / "raw2" / "cohen")
    with pytest.raises(FetchError) as exc:
        fetch_source("cohen", {"local_dir": str(repo), "commit": first}, dest, log=lambda m: None)
    text = one_line(exc)
    assert f"at commit {second}, not fetch.cohen.commit={first}" in text
    assert_untouched(dest)


@needs_git
def test_local_dir_plain_folder_inside_a_repository(git_repo, tmp_path):
    """A copy that merely lives inside some other repository is not mistaken for a clone."""
    repo, _ = git_repo
    inner = small_tree(repo / "copy")
    rec = fetch_source("cohen", {"local_dir": str(inner), "commit": COMMIT}, tmp_path / "d", log=lambda m: None)
    assert rec["commit"] == COMMIT and rec["n_files"] == 2


@needs_git
def test_method_git_file_url(git_repo, tmp_path):
    repo, (first, second) = git_repo
    git("-C", str(repo), "checkout", "-q", first)
    digest_first = tree_digest(repo)
    git("-C", str(repo), "checkout", "-q", "main")
    cfg = {"url": repo.as_uri(), "method": "git", "commit": first, "tree_sha256": digest_first}
    rec = fetch_source("cohen", cfg, tmp_path / "raw" / "cohen", log=lambda m: None)
    assert rec["method"] == "git" and rec["commit"] == first and rec["checksum_status"] == "verified"
    dest = tmp_path / "raw" / "cohen"
    assert not (dest / ".git").exists() and not (dest / "images" / "b.png").exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["cohen"]

    dest2 = prefilled(tmp_path / "raw2" / "cohen")
    with pytest.raises(FetchError) as exc:
        fetch_source("cohen", {**cfg, "commit": "1" * 40, "retries": 3, "backoff": 5}, dest2, log=lambda m: None)
    assert "cannot git fetch cohen" in one_line(exc)  # permanent: failed without waiting for retries
    assert_untouched(dest2)


@needs_git
def test_method_git_checks_head(git_repo, tmp_path, monkeypatch):
    """Should git ever check out something else than the pinned commit, the fetch fails."""
    repo, (first, _) = git_repo
    monkeypatch.setattr(fetch_mod, "_git_head", lambda path, what: "2" * 40)
    dest = prefilled(tmp_path / "raw" / "cohen")
    with pytest.raises(FetchError, match=f"git HEAD is {'2' * 40}, not fetch.cohen.commit={first}"):
        fetch_source("cohen", {"url": repo.as_uri(), "method": "git", "commit": first}, dest, log=lambda m: None)
    assert_untouched(dest)
