"""OS errors on an output are one line naming the path (a full disk, a read-only folder, no
permission); predict checks that its --out can be written before it scores anything."""

from __future__ import annotations

import errno
import tempfile

import pytest

from deepcovid import files, runner
from deepcovid.errors import OutputError
from workspace import REPO, run_python


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT])
def test_a_write_error_inside_an_atomic_output_names_the_output(tmp_path, code):
    out = tmp_path / "metrics" / "evaluate.json"
    out.parent.mkdir()
    out.write_text("{}")
    with pytest.raises(OutputError, match=r"evaluate.json: cannot be written \(.+\); nothing was replaced"):
        with files.atomic_path(out):
            raise OSError(code, "simulated")
    assert out.read_text() == "{}"  # the earlier output is untouched
    assert runner.is_user_error(OutputError("x"))


def test_a_read_only_output_folder_is_one_line(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", kwargs.get("dir"))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    with pytest.raises(OutputError, match=r"model.pt: cannot be written \(Read-only file system\)"):
        with files.atomic_path(tmp_path / "model.pt"):
            pass


def test_a_read_error_of_an_input_keeps_its_own_name(tmp_path):
    """EACCES while reading an input inside an output's block is the input's error, not the output's."""
    with pytest.raises(PermissionError) as caught:
        with files.atomic_path(tmp_path / "out.csv"):
            raise PermissionError(errno.EACCES, "Permission denied", "/data/raw/x.png")
    assert not isinstance(caught.value, OutputError) and caught.value.filename == "/data/raw/x.png"


def test_full_disk_without_a_path_is_still_one_line():
    assert runner.is_user_error(OSError(errno.ENOSPC, "No space left on device"))
    assert not runner.is_user_error(OSError(errno.EIO, "Input/output error"))  # a surprise keeps its traceback


def test_predict_refuses_an_unwritable_out_before_scoring(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = run_python(
        [
            "-m",
            "deepcovid",
            "predict",
            str(tmp_path),
            "--model",
            str(tmp_path / "no-model"),
            "--threshold",
            "0.5",
            "--out",
            str(blocker / "scores.csv"),
        ],
        cwd=REPO,
        timeout=120,
    )
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "scores.csv: cannot be written" in last and "a-file is a file, not a folder" in last  # before the model
    files.check_writable(tmp_path / "new" / "scores.csv")  # a folder that can be made is fine
