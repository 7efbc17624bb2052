"""ruff's lint and format checks (configured in pyproject.toml) pass on the whole repository, so that
the README's test command fails on code that `make lint` would refuse."""

from __future__ import annotations

import subprocess
import sys

from workspace import REPO


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_ruff_lint_is_clean():
    proc = _ruff("check", "--no-cache", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format_is_clean():
    proc = _ruff("format", "--check", "--no-cache", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_finds_what_it_is_configured_for(tmp_path):
    """The configuration is read and enforced: a file with an unused import, an over-long line and
    unformatted code fails both checks (so the two tests above cannot pass by checking nothing)."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nx = {  'a':1}\ny = '" + "z" * 130 + "'\n")
    proc = _ruff("check", "--no-cache", "--config", str(REPO / "pyproject.toml"), str(bad))
    assert proc.returncode == 1 and "F401" in proc.stdout and "E501" in proc.stdout, proc.stdout
    proc = _ruff("format", "--check", "--no-cache", "--config", str(REPO / "pyproject.toml"), str(bad))
    assert proc.returncode == 1 and "bad.py" in proc.stdout, proc.stdout
