"""deepcovid.checks.reproduction and `deepcovid check-reproduction`: exact data outputs, toleranced metrics."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from deepcovid.checks.reproduction import compare_metrics, compare_outputs, flatten_numbers
from workspace import run_python

REPO = Path(__file__).resolve().parents[1]


def _lock(**hashes):
    return {
        "schema": "2.0",
        "stages": {
            stage: {"outs": [{"path": f"data/{stage}", "md5": h, "size": 1, "nfiles": 2}]}
            for stage, h in hashes.items()
        },
    }


def test_compare_outputs():
    committed = _lock(fetch="a", split="b", train="c")
    assert compare_outputs(committed, _lock(fetch="a", split="b", train="OTHER"), ["fetch", "split"]) == []
    problems = compare_outputs(committed, _lock(fetch="a", split="X", train="c"), ["fetch", "split"])
    assert len(problems) == 1 and problems[0].startswith("split: data/split differs")
    assert compare_outputs(committed, _lock(fetch="a"), ["split"]) == ["split: not in the rebuilt dvc.lock"]


def test_compare_metrics_tolerances_and_coverage():
    committed = {"test": {"auc": 0.9, "n_pos": 100, "sens": 0.5}, "torch_threads": 2, "flag": True}
    tol = {"torch_threads": None, "*.n_pos": 0, "test.*": 0.01}
    rows = {
        r["metric"]: r
        for r in compare_metrics(
            committed, {**committed, "torch_threads": 8, "test": {"auc": 0.905, "n_pos": 100, "sens": 0.52}}, tol
        )
    }
    assert set(rows) == {"test.auc", "test.n_pos", "test.sens"}  # threads ignored, bools skipped
    assert rows["test.auc"]["status"] == "ok" and abs(rows["test.auc"]["difference"] - 0.005) < 1e-12
    assert rows["test.sens"]["status"] == "FAIL"
    rows = compare_metrics(committed, {"test": {"auc": 0.9, "n_pos": 101}}, tol)
    assert {r["metric"]: r["status"] for r in rows} == {"test.auc": "ok", "test.n_pos": "FAIL", "test.sens": "MISSING"}
    # a metric no pattern covers is reported, never silently skipped
    assert compare_metrics({"val": {"auc": 1.0}}, {"val": {"auc": 1.0}}, tol)[0]["status"] == "NO TOLERANCE"
    assert flatten_numbers({"a": {"b": 1, "c": "x", "d": False}}) == {"a.b": 1.0}


def test_check_reproduction_command(tmp_path):
    committed = tmp_path / "committed"
    current = tmp_path / "metrics"
    committed.mkdir(), current.mkdir()
    evaluate = {"test": {"auc": 0.9, "n_pos": 100}}
    train = {"test_auc": 0.9, "torch_threads": 2, "best_epoch": 10}
    explain = {"images": 8, "lung_mass": 0.3, "pointing_lung": 0.5, "architecture": "resnet18"}
    audit = {"source_readability": {"all": {"auc": 0.9, "n_pos": 10}}, "verdict": "text", "flags": {"any": True}}
    repeats = {"repeats": {"splits": 20, "sensitivity": {"mean": 0.95, "min": 0.9}}}
    for d in (committed, current):
        (d / "repeats.json").write_text(json.dumps(repeats))
        (d / "evaluate.json").write_text(json.dumps(evaluate))
        (d / "train.json").write_text(json.dumps(train))
        (d / "explain.json").write_text(json.dumps(explain))
        (d / "audit.json").write_text(json.dumps(audit))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    stages = params["reproduction"]["exact_stages"]
    (tmp_path / "a.lock").write_text(yaml.safe_dump(_lock(**{s: "h" for s in stages}, train="1")))
    (tmp_path / "b.lock").write_text(yaml.safe_dump(_lock(**{s: "h" for s in stages}, train="2")))

    def run(lock="b.lock"):  # in process (mutation testing sees it), as the command calls it
        import contextlib
        import io
        import types

        from deepcovid.checks.reproduction import check_reproduction
        from deepcovid.config import load_config

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = check_reproduction(
                load_config(tmp_path / "params.yaml").reproduction,
                tmp_path / "a.lock",
                tmp_path / lock,
                committed,
                current,
            )
        return types.SimpleNamespace(returncode=code, stdout=out.getvalue())

    ok = run()
    assert ok.returncode == 0, ok.stdout
    assert ok.stdout.splitlines() == [
        f"data stages ({', '.join(stages)}): outputs identical to the committed dvc.lock",
        "metrics/evaluate.json: 2/2 within tolerance (largest difference 0.00 of its tolerance)",
        "metrics/train.json: 2/2 within tolerance (largest difference 0.00 of its tolerance)",
        "metrics/explain.json: 3/3 within tolerance (largest difference 0.00 of its tolerance)",
        "metrics/audit.json: 2/2 within tolerance (largest difference 0.00 of its tolerance)",
        "metrics/repeats.json: 3/3 within tolerance (largest difference 0.00 of its tolerance)",
        "ok: data stages byte-identical, model metrics within the measured tolerance",
    ]
    (current / "train.json").write_text(json.dumps({**train, "test_auc": 0.95, "torch_threads": 1}))
    bad = run()
    assert bad.returncode == 1 and "test_auc" in bad.stdout and "torch_threads" not in bad.stdout
    (current / "train.json").write_text(json.dumps(train))
    (current / "explain.json").write_text(json.dumps({**explain, "pointing_lung": 0.625}))  # one image of 8
    half = run()
    assert half.returncode == 0
    assert "metrics/explain.json: 3/3 within tolerance (largest difference" in half.stdout
    assert "(largest difference 0.00 of its tolerance)" not in half.stdout.splitlines()[3]
    (current / "explain.json").write_text(json.dumps({**explain, "lung_mass": 0.31}))
    moved = run()
    assert moved.returncode == 1 and "lung_mass" in moved.stdout
    (current / "explain.json").write_text(json.dumps(explain))
    (current / "audit.json").write_text(json.dumps({**audit, "source_readability": {"all": {"auc": 0.9, "n_pos": 11}}}))
    moved = run()
    assert moved.returncode == 1 and "source_readability.all.n_pos" in moved.stdout
    (current / "audit.json").write_text(json.dumps(audit))
    # repeats: one test COVID-19 image (1/100) crossing in the worst split is tolerated, two are not
    (current / "repeats.json").write_text(
        json.dumps({"repeats": {"splits": 20, "sensitivity": {"mean": 0.9495, "min": 0.89}}})
    )
    assert run().returncode == 0
    (current / "repeats.json").write_text(
        json.dumps({"repeats": {"splits": 20, "sensitivity": {"mean": 0.95, "min": 0.88}}})
    )
    moved = run()
    assert moved.returncode == 1 and "repeats.sensitivity.min" in moved.stdout
    (current / "repeats.json").write_text(json.dumps(repeats))
    (current / "train.json").write_text(json.dumps(train))
    (tmp_path / "c.lock").write_text(yaml.safe_dump(_lock(**{s: "h" for s in stages[:-1]}, **{stages[-1]: "z"})))
    bad = run("c.lock")
    assert bad.returncode == 1 and f"{stages[-1]}: data/{stages[-1]} differs" in bad.stdout
    assert "ok: data stages byte-identical" in ok.stdout and "NOT REPRODUCED" in bad.stdout
    missing = run_python(
        [
            "-m",
            "deepcovid",
            "check-reproduction",
            "--committed-lock",
            "a.lock",
            "--lock",
            "nope.lock",
            "--committed-metrics",
            "committed",
        ],
        cwd=tmp_path,
    )
    assert missing.returncode == 2 and "nope.lock: dvc.lock not found" in missing.stderr
    assert missing.stderr.strip().splitlines()[-1].startswith("check-reproduction: error:")
    usage = run_python(
        ["-m", "deepcovid", "check-reproduction"],
        cwd=tmp_path,
    )
    assert usage.returncode == 2 and "--committed-lock" in usage.stderr


def test_every_committed_metric_has_a_tolerance():
    """Each numeric leaf of the committed metrics files that check-reproduction compares is
    covered by a reproduction.tolerances pattern (none reported as NO TOLERANCE)."""
    from deepcovid.checks.reproduction import METRIC_FILES
    from deepcovid.config import load_config

    tolerances = load_config(REPO / "params.yaml").reproduction.tolerances
    for name in METRIC_FILES:
        metrics = json.loads((REPO / "metrics" / name).read_text())
        rows = compare_metrics(metrics, metrics, tolerances)
        assert rows and {r["status"] for r in rows} == {"ok"}, (
            name,
            [r["metric"] for r in rows if r["status"] != "ok"],
        )


def test_ci_scripts_keep_every_metrics_file_the_check_compares():
    """.ci/run and the GitHub workflow copy the committed metrics before `make repro` rewrites them:
    each file check-reproduction compares must be among the copied ones."""
    from deepcovid.checks.reproduction import METRIC_FILES

    for script in (REPO / ".ci/run", REPO / ".github/workflows/ci.yml"):
        text = script.read_text()
        missing = [name for name in METRIC_FILES if f"metrics/{name}" not in text]
        assert not missing, f"{script.relative_to(REPO)} does not copy {missing}"


def test_lock_outputs_reads_every_hash_kind_and_refuses_other_files():
    import pytest

    from deepcovid.checks.reproduction import lock_outputs
    from deepcovid.errors import InputError

    lock = {
        "stages": {
            "a": {"outs": [{"path": "x", "md5": "m", "size": 3, "nfiles": 2}, {"path": "y", "hash": "h"}]},
            "b": {"outs": [{"path": "z", "etag": "e", "size": 1}]},
            "c": {"cmd": "no outputs"},
        }
    }
    assert lock_outputs(lock) == {"a": {"x": "m:3:2", "y": "h::"}, "b": {"z": "e:1:"}, "c": {}}
    for bad in ({"schema": "2.0"}, {"stages": ["a"]}, ["stages"]):
        with pytest.raises(InputError, match="not a dvc.lock file"):
            lock_outputs(bad)
    assert compare_outputs(_lock(fetch="a"), _lock(fetch="a", split="b"), ["split"]) == [
        "split: not in the committed dvc.lock"
    ]
    committed, rebuilt = _lock(fetch="a"), _lock(fetch="a")
    rebuilt["stages"]["fetch"]["outs"].append({"path": "data/extra", "md5": "q"})
    assert compare_outputs(committed, rebuilt, ["fetch"]) == ["fetch: data/extra differs (committed None, rebuilt q::)"]


def test_the_most_specific_tolerance_applies_and_the_boundary_is_inclusive():
    tol = {"*": 0.5, "test.*": 0.1, "test.auc": 0.01, "test.skip": None}
    rows = {
        r["metric"]: r
        for r in compare_metrics(
            {"test": {"auc": 0.5, "sens": 0.5, "skip": 1.0}, "other": 1.0},
            {"test": {"auc": 0.51, "sens": 0.65, "skip": 9.0}, "other": 1.4},
            tol,
        )
    }
    assert set(rows) == {"test.auc", "test.sens", "other"}
    assert rows["test.auc"]["tolerance"] == 0.01 and rows["test.auc"]["status"] == "ok"  # exactly at it
    assert rows["test.sens"]["tolerance"] == 0.1 and rows["test.sens"]["status"] == "FAIL"
    assert rows["other"]["tolerance"] == 0.5 and rows["other"]["status"] == "ok"
    nan = compare_metrics({"test": {"auc": float("nan")}}, {"test": {"auc": float("nan")}}, tol)
    assert nan[0]["status"] == "ok" and nan[0]["difference"] == 0.0
    just_over = compare_metrics({"test": {"auc": 0.5}}, {"test": {"auc": 0.5 + 0.01 + 1e-9}}, tol)
    assert just_over[0]["status"] == "FAIL"


def test_unreadable_inputs_are_named(tmp_path):
    import pytest

    from deepcovid.checks.reproduction import _load
    from deepcovid.errors import InputError, MissingInputError

    with pytest.raises(MissingInputError, match=r"nope.json: metrics file not found"):
        _load(tmp_path / "nope.json", "metrics file")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match=r"bad.json: not a valid metrics file \(JSONDecodeError\)"):
        _load(tmp_path / "bad.json", "metrics file")
    (tmp_path / "bad.lock").write_text("a: [b\n")
    with pytest.raises(InputError, match=r"bad.lock: not a valid dvc.lock \(\w*Error\)"):
        _load(tmp_path / "bad.lock", "dvc.lock")
    (tmp_path / "good.lock").write_text("stages: {}\n")
    assert _load(tmp_path / "good.lock", "dvc.lock") == {"stages": {}}
