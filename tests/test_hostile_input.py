"""Hostile input: the probes of the hostile-input issue, each ending in a clear message or a recorded
rejection. Paths from metadata stay inside their source, outputs inside their stage's folder; corrupt
JPEG/PNG data is rejected with the decoder's reason; malformed metadata is refused with its line;
an MLflow store that cannot be opened is one line naming the URI; only the project's own errors are
one-liners (anything else keeps its traceback)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from deepcovid import files
from deepcovid.data.cache import build_cache
from deepcovid.data.images import ImageReadError, read_image
from deepcovid.data.metadata import MetadataError, read_cohen_style
from deepcovid.data.negatives import drop_unsafe
from deepcovid.data.positives import filter_positives, read_exclusions
from deepcovid.errors import DeepCovidError
from workspace import run_python

HEADER = "patientid,finding,view,modality,folder,filename"


def _png(path: Path, seed: int = 0, size=(48, 40)) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size[::-1], dtype=np.uint8), mode="L").save(path)
    return path


# --- paths from metadata ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "relpath, reason",
    [
        ("../outside.png", "'..'"),
        ("images/../../outside.png", "'..'"),
        ("/etc/passwd", "absolute"),
        ("C:\\x\\y.png", "absolute"),
        ("..\\..\\x.png", "'..'"),
        ("images/a\x00.png", "control character"),
        ("", "empty"),
    ],
)
def test_unsafe_relpaths_named(tmp_path, relpath, reason):
    assert reason in files.unsafe_relpath(relpath)
    with pytest.raises(files.UnsafePathError, match="refusing a path outside"):
        files.inside(tmp_path, relpath)


def test_safe_relpaths_accepted(tmp_path):
    for relpath in ("images/a.png", "a..b.png", "images/./x.jpg", ".hidden/x.png"):
        assert files.unsafe_relpath(relpath) is None
        assert files.inside(tmp_path, relpath) == tmp_path / relpath


def test_symlink_out_of_the_source_refused(tmp_path):
    root, outside = tmp_path / "source", tmp_path / "secret"
    _png(outside / "x.png")
    (root / "images").mkdir(parents=True)
    (root / "images" / "link").symlink_to(outside)
    with pytest.raises(files.UnsafePathError, match="symlink leads outside"):
        files.inside(root, "images/link/x.png")


def _hostile_source(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    root = tmp_path / "raw" / "cohen"
    _png(root / "images" / "ok.png")
    _png(tmp_path / "raw" / "outside.png")  # a real file the escaping rows point at
    rows = [
        "1,COVID-19,PA,X-ray,images,ok.png",
        "2,COVID-19,PA,X-ray,images,../../outside.png",
        "3,COVID-19,PA,X-ray,..,outside.png",
        f"4,COVID-19,PA,X-ray,{tmp_path / 'raw'},outside.png",
    ]
    (root / "metadata.csv").write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    return root, read_cohen_style(root / "metadata.csv", "cohen")


def test_filter_rejects_escaping_rows_with_reason(tmp_path):
    root, meta = _hostile_source(tmp_path)
    exclusions = tmp_path / "excl.csv"
    exclusions.write_text("filename,decision,reason,reviewer\n")
    kept, report = filter_positives(meta, ["PA"], read_exclusions(exclusions), root=root)
    assert list(kept["relpath"]) == ["images/ok.png"]
    assert report["removed"]["path outside the source"] == 3
    assert [u["relpath"] for u in report["unsafe_paths"]] == [
        "images/../../outside.png",
        "../outside.png",
        f"{tmp_path / 'raw'}/outside.png",
    ]
    assert all("refusing a path outside" in u["reason"] for u in report["unsafe_paths"])


def test_negatives_drop_escaping_rows(tmp_path):
    root, meta = _hostile_source(tmp_path)
    report: dict = {}
    kept = drop_unsafe(meta, root, "cohen", report)
    assert list(kept["relpath"]) == ["images/ok.png"] and len(report["unsafe_paths"]) == 3
    assert {u["source"] for u in report["unsafe_paths"]} == {"cohen"}


def test_preprocess_rejects_escaping_manifest_rows_and_writes_nothing_outside(tmp_path):
    raw = tmp_path / "raw"
    root, _ = _hostile_source(tmp_path)
    (raw / "sources.json").write_text(json.dumps({"dataset": "public", "roots": {"cohen": "cohen"}}))
    manifest = pd.DataFrame(
        {
            "image_id": ["cohen/images/ok.png", "cohen/../../../../escaped", "cohen/x"],
            "source": "cohen",
            "relpath": ["images/ok.png", "images/ok.png", "../outside.png"],
            "split": "train",
            "label": "1",
            "group": "covid",
        }
    )
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    out = tmp_path / "work" / "deep" / "preprocessed"
    out.parent.mkdir(parents=True)
    before = sorted(p for p in tmp_path.rglob("*"))
    report = build_cache(
        raw,
        tmp_path / "manifest.csv",
        out,
        cache_size=32,
        resize="stretch",
        grayscale=True,
        workers=1,
        max_pixels=50_000_000,
    )
    assert report == {"cache_size": 32, "resize": "stretch", "grayscale": True, "decoded": 1, "rejected": 2}
    rejected = pd.read_csv(out / "rejected.csv", dtype=str)
    assert list(rejected["image_id"]) == ["cohen/../../../../escaped", "cohen/x"]
    assert all("refusing a path outside" in r for r in rejected["reason"])
    created = sorted(set(tmp_path.rglob("*")) - set(before))
    assert all(p.is_relative_to(out) for p in created), created


# --- corrupt image data -------------------------------------------------------------------------


def _jpeg_bytes(seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    smooth = np.cumsum(rng.normal(size=(256, 256)), axis=1)
    img = ((smooth - smooth.min()) / np.ptp(smooth) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_jpeg_with_corrupt_middle_rejected_though_pillow_decodes_it(tmp_path):
    """The issue's probe: 400 bytes overwritten in the middle. Pillow decodes such files with wrong
    pixels and no error; libjpeg-turbo's strict mode names the corruption."""
    data = _jpeg_bytes()
    found = 0
    for seed in range(40):
        bad = bytearray(data)
        mid = len(bad) // 2
        bad[mid : mid + 400] = np.random.default_rng(seed).integers(0, 256, 400, dtype=np.uint8).tobytes()
        try:
            Image.open(io.BytesIO(bytes(bad))).load()
        except Exception:  # Pillow itself refuses this one: not the case under test
            continue
        path = tmp_path / f"bad{seed}.jpg"
        path.write_bytes(bytes(bad))
        with pytest.raises(ImageReadError, match="corrupt JPEG data.*Corrupt JPEG data"):
            read_image(path)
        found += 1
    assert found >= 3  # the case exists: Pillow silently accepted at least 3 of the 40


def test_valid_jpeg_and_png_still_decode(tmp_path):
    (tmp_path / "ok.jpg").write_bytes(_jpeg_bytes())
    assert read_image(tmp_path / "ok.jpg").size == (256, 256)
    assert read_image(_png(tmp_path / "ok.png")).size == (48, 40)


def _chunk(data: bytes, kind: bytes) -> tuple[int, int]:
    """(start of the data, its length) of the first chunk ``kind`` of a PNG."""
    i = 8
    while i < len(data):
        length = int.from_bytes(data[i : i + 4], "big")
        if data[i + 4 : i + 8] == kind:
            return i + 8, length
        i += 12 + length
    raise AssertionError(kind)


def test_png_with_corrupt_idat_rejected(tmp_path):
    data = bytearray(_png(tmp_path / "src.png", size=(200, 120)).read_bytes())
    start, length = _chunk(bytes(data), b"IDAT")
    data[start + length // 2] ^= 0x10
    (tmp_path / "bad.png").write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match="cannot decode"):
        read_image(tmp_path / "bad.png")


def test_real_shared_images_all_pass_the_corruption_checks(shared_data):
    paths = sorted((shared_data / "cohen" / "images").iterdir())[:120]
    for path in paths:
        assert read_image(path).mode == "RGB"


def test_corruption_recorded_in_rejected_csv(tmp_path):
    raw = tmp_path / "raw"
    (raw / "src" / "images").mkdir(parents=True)
    good = _jpeg_bytes(1)
    bad = bytearray(good)
    for seed in range(40):
        bad = bytearray(good)
        bad[len(bad) // 2 : len(bad) // 2 + 400] = (
            np.random.default_rng(seed).integers(0, 256, 400, dtype=np.uint8).tobytes()
        )
        try:
            Image.open(io.BytesIO(bytes(bad))).load()
            break
        except Exception:
            continue
    (raw / "src" / "images" / "good.jpg").write_bytes(good)
    (raw / "src" / "images" / "bad.jpg").write_bytes(bytes(bad))
    (raw / "sources.json").write_text(json.dumps({"dataset": "public", "roots": {"src": "src"}}))
    pd.DataFrame(
        {
            "image_id": ["src/good", "src/bad"],
            "source": "src",
            "relpath": ["images/good.jpg", "images/bad.jpg"],
            "split": "test",
            "label": "0",
            "group": "normal",
        }
    ).to_csv(tmp_path / "m.csv", index=False)
    build_cache(
        raw,
        tmp_path / "m.csv",
        tmp_path / "out",
        cache_size=32,
        resize="stretch",
        grayscale=True,
        workers=1,
        max_pixels=50_000_000,
    )
    rejected = pd.read_csv(tmp_path / "out" / "rejected.csv", dtype=str)
    assert list(rejected["image_id"]) == ["src/bad"] and "Corrupt JPEG data" in rejected["reason"].iloc[0]


# --- metadata files -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        (HEADER + "\n", "no rows below the header"),
        ("", "not a readable CSV file (empty: no header line)"),
        (
            HEADER + '\n1,COVID-19,PA,"X-ray,images,a.png\n2,COVID-19,PA,X-ray,images,b.png\n',
            "not a readable CSV file (line 3: unexpected end of data)",
        ),  # a quote that never closes
        (
            HEADER + '\n1,COVID-19,PA,"X-ray,images,a.png\n2,COVID-19",PA,X-ray,images,b.png\n',
            "line 2 has 8 fields where the header has 6 (a stray quote or separator?)",
        ),  # one that closes later
        (HEADER + "\n1,COVID-19,PA,X-ray,images\n", "line 2 has 5 fields"),
        (HEADER + "\n1,COVID-19,PA,X-ray,images,a.png,extra\n", "line 2 has 7 fields"),
        ("patientid,finding,view,view,filename\n1,C,PA,PA,a\n", "column 'view' appears twice"),
        (HEADER + "\n1,COVID\x00,PA,X-ray,images,a.png\n", "not a readable CSV file (NUL byte at offset 55"),
    ],
)
def test_malformed_metadata_refused_in_one_line(tmp_path, text, message):
    path = tmp_path / "metadata.csv"
    path.write_text(text)
    with pytest.raises(MetadataError) as info:
        read_cohen_style(path, "cohen")
    assert message in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def test_stray_quote_line_number_counts_physical_lines(tmp_path):
    path = tmp_path / "metadata.csv"
    rows = [
        '1,COVID-19,PA,X-ray,images,"a\nb.png"',
        "2,COVID-19,PA,X-ray,images,b.png",
        '3,"COVID-19,PA,X-ray,images,c.png',
        '4",COVID-19,PA,X-ray,images,d.png',
    ]
    path.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    with pytest.raises(MetadataError, match="line 5 has 7 fields"):
        read_cohen_style(path, "cohen")


def test_well_formed_quotes_bom_and_blank_lines_read(tmp_path):
    path = tmp_path / "metadata.csv"
    path.write_bytes(
        (
            "\ufeff" + HEADER + '\n1,"COVID-19, ARDS",PA,X-ray,images," a.png "\n\n'
            '2,"said ""no""",AP,X-ray,images,b.png\n'
        ).encode("utf-8")
    )
    meta = read_cohen_style(path, "cohen")
    assert list(meta["finding"]) == ["COVID-19, ARDS", 'said "no"'] and list(meta["relpath"]) == [
        "images/a.png",
        "images/b.png",
    ]


# --- one line for the project's errors, a traceback for anything else ---------------------------

RUNNER = textwrap.dedent("""
    import sys
    from deepcovid import runner
    from deepcovid.errors import InputError
    kind = sys.argv[1]
    def main():
        if kind == "project":
            raise InputError("params.yaml: train.lr must be > 0\\n(second line)")
        if kind == "missing":
            open("no-such-file.csv")
        if kind == "bug":
            return {}["key"]
        if kind == "library":
            raise ValueError("invalid literal for int() with base 10: ''")
        return 0
    runner.run(main, "stage")
""")


@pytest.mark.parametrize(
    "kind, status, expected",
    [
        ("project", 2, "stage: error: params.yaml: train.lr must be > 0; (second line)"),
        ("missing", 2, "stage: error: [Errno 2] No such file or directory: 'no-such-file.csv'"),
        ("bug", 1, "Traceback (most recent call last)"),
        ("library", 1, "Traceback (most recent call last)"),
        ("ok", 0, ""),
    ],
)
def test_runner_one_line_only_for_user_errors(tmp_path, kind, status, expected):
    proc = subprocess.run([sys.executable, "-c", RUNNER, kind], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == status, proc.stderr
    if status == 2:
        assert proc.stderr.strip() == expected
    else:
        assert expected in proc.stderr


def test_every_project_error_type_is_a_deepcovid_error():
    import deepcovid.data.dicom as dicom
    import deepcovid.data.split as split
    from deepcovid import config
    from deepcovid.data.augment import AugmentError
    from deepcovid.data.errors import FetchError
    from deepcovid.evaluation.audit import AuditError
    from deepcovid.evaluation.card import CardError
    from deepcovid.evaluation.repeats import RepeatsError
    from deepcovid.explain.occlusion import ExplainError
    from deepcovid.model import tracking
    from deepcovid.model.architectures import ModelError
    from deepcovid.model.predict import PredictError

    for cls in (
        dicom.DicomError,
        split.SplitError,
        config.ConfigError,
        tracking.TrackingError,
        AugmentError,
        FetchError,
        AuditError,
        CardError,
        RepeatsError,
        ExplainError,
        ModelError,
        PredictError,
        MetadataError,
        ImageReadError,
        files.TreeError,
        files.UnsafePathError,
    ):
        assert issubclass(cls, DeepCovidError), cls


# --- constant scores ----------------------------------------------------------------------------


def test_constant_scores_warned(caplog, cfg):
    from deepcovid.evaluation.evaluate import auc_with_ci

    y = np.array([0, 0, 0, 1, 1, 1])
    with caplog.at_level(logging.WARNING, logger="evaluate"):
        r = auc_with_ci(y, np.full(6, 0.3), cfg)
    assert r["auc"] == 0.5 and "all 6 scores are equal" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="evaluate"):
        auc_with_ci(y, np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]), cfg)
    assert "scores are equal" not in caplog.text


# --- MLflow store -------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


OPEN_STORE = (
    "import sys\nfrom deepcovid import runner\nfrom deepcovid.model import tracking\n"
    "runner.run(lambda: print(tracking.open_store('x', sys.argv[1])), 'train')\n"
)


@pytest.mark.parametrize(
    "make_uri",
    [
        lambda tmp: f"sqlite:///{tmp / 'a-file' / 'mlflow.db'}",  # below a file: cannot be created
        lambda tmp: f"http://127.0.0.1:{_closed_port()}",  # nobody listens
    ],
)
def test_unusable_store_is_one_line_naming_the_uri(tmp_path, make_uri):
    (tmp_path / "a-file").write_text("not a folder")
    uri = make_uri(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run(
        [sys.executable, "-c", OPEN_STORE, uri], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"train: error: MLflow store {uri} cannot be used") and "mlflow.enabled: false" in last
    assert "Traceback" not in proc.stderr


# --- leftovers of killed writers ----------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_atomic_path_removes_leftovers_of_dead_writers_only(tmp_path):
    dead, alive = _dead_pid(), os.getppid()
    stale = [tmp_path / f".out.{dead}.abcd1234.tmp", tmp_path / f".out.{dead}.old", tmp_path / f".out.{dead}.part"]
    live = tmp_path / f".out.{alive}.efgh5678.tmp"
    other = [tmp_path / f".out.json.{dead}.abcd1234.tmp", tmp_path / f".outer.{dead}.abcd1234.tmp"]
    for p in [*stale[:2], live, *other]:
        (p / "x").mkdir(parents=True)
    stale[2].write_bytes(b"partial")
    files.write_text(tmp_path / "out", "done")
    assert (tmp_path / "out").read_text() == "done"
    assert not any(p.exists() for p in stale)
    assert live.exists() and all(p.exists() for p in other)


def test_any_stage_start_sweeps_what_killed_runs_left(tmp_path):
    """After a kill, `dvc repro` may restore the killed stage from DVC's run cache without running it:
    the next stage that runs removes the leftovers in the project's output folders."""
    dead = _dead_pid()
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    leftovers = [
        tmp_path / "data" / f".raw.{dead}.abcd1234.tmp",
        tmp_path / "data" / "preprocessed" / f".index.csv.{dead}.x1y2z3w4.tmp",
        tmp_path / "models" / f".model.pt.{dead}.old",
    ]
    for p in leftovers:
        (p / "inner").mkdir(parents=True)
    kept = tmp_path / "data" / f".raw.{os.getppid()}.abcd1234.tmp"  # a live writer's
    kept.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", "from deepcovid import runner; runner.run(lambda: 0, 'stage')"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert not any(p.exists() for p in leftovers) and kept.exists()
    assert proc.stderr.count("left by a killed run") == 3


def test_pool_workers_die_with_a_killed_parent(tmp_path):
    """A preprocess-like process pool: SIGKILL the parent; its workers must not outlive it."""
    script = textwrap.dedent("""
        import os, sys, time
        from concurrent.futures import ProcessPoolExecutor
        from deepcovid.runner import die_with_parent
        def work(i):
            time.sleep(60)
        if __name__ == "__main__":
            pool = ProcessPoolExecutor(2, initializer=die_with_parent, initargs=(os.getpid(),))
            futures = [pool.submit(work, i) for i in range(2)]
            time.sleep(1.0)
            print(" ".join(str(p) for p in pool._processes), flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    workers = [int(p) for p in proc.stdout.readline().split()]
    assert len(workers) == 2
    proc.kill()
    proc.wait()
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_running(p) for p in workers):
        time.sleep(0.1)
    assert not any(_running(p) for p in workers)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


# --- model files run no code; the tools neither listen nor reach the network -------------------

PAYLOAD = textwrap.dedent("""
    import pathlib, sys, torch
    class Payload:
        def __reduce__(self):
            return (pathlib.Path.write_text, (pathlib.Path(sys.argv[2]), "code ran"))
    torch.save({"fc.weight": Payload()}, sys.argv[1])
""")


def test_model_file_with_a_pickled_payload_runs_no_code(tiny_trained, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(tiny_trained / "models" / "model.json", models / "model.json")
    marker = tmp_path / "pwned"
    subprocess.run([sys.executable, "-c", PAYLOAD, str(models / "model.pt"), str(marker)], check=True)
    # an attacker who writes model.pt writes model.json too: its digest alone must not be the defence
    record = json.loads((models / "model.json").read_text())
    record["model_sha256"] = hashlib.sha256((models / "model.pt").read_bytes()).hexdigest()
    (models / "model.json").write_text(json.dumps(record))
    image = next((tiny_trained / "data" / "preprocessed" / "images").rglob("*.png"))
    proc = run_python(
        [
            "-m",
            "deepcovid",
            "predict",
            str(image),
            "--model",
            str(models),
            "--threshold",
            "0.5",
            "--out",
            str(tmp_path / "scores.csv"),
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "not a loadable state_dict file" in proc.stderr and "model.pt" in proc.stderr
    assert not marker.exists() and not (tmp_path / "scores.csv").exists()


NO_NETWORK = textwrap.dedent("""
    import runpy, socket, sys
    def refuse(name):
        def guard(self, *args, **kwargs):
            if self.family in (socket.AF_INET, socket.AF_INET6):
                raise AssertionError(f"socket.{name}{args} attempted")
            return getattr(socket_orig, name)(self, *args, **kwargs)
        return guard
    socket_orig = type("orig", (), {n: getattr(socket.socket, n) for n in ("bind", "listen", "connect", "connect_ex")})
    for name in ("bind", "listen", "connect", "connect_ex"):
        setattr(socket.socket, name, refuse(name))
    sys.argv = sys.argv[1:]
    if sys.argv[0].endswith(".py"):
        runpy.run_path(sys.argv[0], run_name="__main__")
    else:
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
""")


def test_train_and_predict_open_no_network_socket(tiny_trained, tmp_path):
    """Train (with MLflow on its default SQLite store: tracking, model registry) and predict: no
    TCP/UDP socket is bound, listened on or connected (telemetry included)."""
    from workspace import stage_argv

    ws = tmp_path / "ws"
    shutil.copytree(tiny_trained, ws, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    for argv in (
        stage_argv("train"),
        ["deepcovid", "predict", "data/preprocessed/images", "--model", "models", "--out", "s.csv"],
    ):
        proc = subprocess.run(
            [sys.executable, "-c", NO_NETWORK, *argv], cwd=ws, capture_output=True, text=True, env=env, timeout=600
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert (ws / "mlflow.db").is_file() and (ws / "s.csv").is_file()


def test_sigterm_ends_a_stage_in_one_line_and_marks_its_mlflow_run_killed(tmp_path):
    """A stage under runner.run with an MLflow run open, sent SIGTERM: exit 143, one line saying
    what happened (no traceback), and the run recorded as KILLED, not FINISHED."""
    script = tmp_path / "stage.py"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    script.write_text(f"""
import sys, time
import mlflow
from deepcovid import runner

def main():
    mlflow.set_tracking_uri({uri!r})
    mlflow.set_experiment("t")
    run = mlflow.start_run()
    print(run.info.run_id, flush=True)
    time.sleep(120)

runner.run(main, "fake")
""")
    proc = subprocess.Popen(
        [sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    run_id = proc.stdout.readline().strip()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert err.strip().splitlines()[-1].startswith("fake: stopped by SIGTERM; this run wrote none of its outputs")
    assert "Traceback" not in err
    from mlflow.tracking import MlflowClient

    assert MlflowClient(tracking_uri=uri).get_run(run_id).info.status == "KILLED"
