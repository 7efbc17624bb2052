"""The evaluation: operating point, metrics file, plot files, figures, DVC plots, compare, regression check.

No DVC pipeline runs here: the evaluate stage script and the ``deepcovid`` command run on small
synthetic prediction tables.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import evaluate_to
from deepcovid.checks import regression
from deepcovid.config import ConfigError
from deepcovid.evaluation import compare
from deepcovid.evaluation import delong as D
from deepcovid.evaluation import proportions as P
from deepcovid.evaluation import ranking as R
from deepcovid.evaluation.compare import compare_models
from deepcovid.evaluation.evaluate import evaluate
from deepcovid.evaluation.predictions import load_predictions
from deepcovid.evaluation.report import OutputPaths, write_outputs

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
COLUMNS = ["image_id", "source", "patient", "label", "group", "category", "split", "score"]


def _rows(split, scores, label, groups):
    return [
        {
            "image_id": f"{split}-{label}-{i}",
            "source": "synthetic",
            "patient": f"{split}-p{label}-{i}",
            "label": label,
            "group": g,
            "category": g,
            "split": split,
            "score": float(s),
        }
        for i, (s, g) in enumerate(zip(scores, groups))
    ]


def planted_predictions() -> pd.DataFrame:
    """Validation: 50 COVID-19 images, one at 0.10 and 49 at 0.40..0.88, so that the highest threshold
    reaching sensitivity 0.98 (49 of 50) is exactly 0.40. Test, at 0.40: 95 of 100 COVID-19 at or above
    (one exactly at 0.40), 180 of 200 non-COVID below: sensitivity 0.95, specificity 0.90."""
    val_pos = [0.10] + [0.40 + 0.01 * i for i in range(49)]
    val_neg = np.linspace(0.0, 0.45, 100)
    test_pos = [0.05, 0.10, 0.15, 0.20, 0.25] + [0.40] + list(np.linspace(0.45, 0.99, 94))
    test_neg = list(np.linspace(0.0, 0.39, 180)) + list(np.linspace(0.41, 0.95, 20))
    neg_groups = lambda n: ["normal" if i % 2 else "other-disease" for i in range(n)]  # noqa: E731
    rows = (
        _rows("val", val_pos, 1, ["covid"] * 50)
        + _rows("val", val_neg, 0, neg_groups(100))
        + _rows("test", test_pos, 1, ["covid"] * 100)
        + _rows("test", test_neg, 0, neg_groups(200))
    )
    return pd.DataFrame(rows, columns=COLUMNS)


def random_predictions(seed: int, n_val=(30, 120), n_test=(60, 240), shift=2.5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for split, (npos, nneg) in (("val", n_val), ("test", n_test)):
        pos = 1 / (1 + np.exp(-(rng.normal(size=npos) + shift / 2)))
        neg = 1 / (1 + np.exp(-(rng.normal(size=nneg) - shift / 2)))
        rows += _rows(split, pos, 1, ["covid"] * npos)
        rows += _rows(split, neg, 0, ["normal" if i % 3 else "other-disease" for i in range(nneg)])
    return pd.DataFrame(rows, columns=COLUMNS)


@pytest.fixture(scope="module")
def planted(tmp_path_factory, cfg):
    """The planted table evaluated in-process and written under a temporary root."""
    root = tmp_path_factory.mktemp("planted")
    _, result, _ = evaluate_to(root, planted_predictions(), cfg)
    return root, result


# --------------------------------------------------------------------------- operating point


def test_planted_operating_point(planted, cfg):
    _, result = planted
    m = result.details
    assert cfg.target_sensitivity == 0.98
    assert m["settings"]["operating_point_chosen_on"] == "val"
    assert m["val"]["threshold"] == pytest.approx(0.40)
    assert m["val"]["sensitivity"] == 0.98
    t = m["test"]
    assert t["threshold"] == m["val"]["threshold"]  # chosen on val, applied unchanged to test
    assert (t["tp"], t["fn"], t["tn"], t["fp"]) == (95, 5, 180, 20)
    assert t["sensitivity"] == 0.95 and t["specificity"] == 0.90
    assert (t["sensitivity_low"], t["sensitivity_high"]) == pytest.approx(P.proportion_ci(95, 100, "wilson"))
    assert (t["specificity_low"], t["specificity_high"]) == pytest.approx(P.proportion_ci(180, 200, "wilson"))
    r = P.paper_interval(95, 100).radius
    assert (t["paper_sensitivity_low"], t["paper_sensitivity_high"]) == pytest.approx((0.95 - r, 0.95 + r))
    assert t["paper_interval_outside_unit"] is False
    # the paper's choice on test: the 98th highest COVID-19 test score, reported apart
    p = m["paper_style"]
    assert p["paper_style_test_threshold"] == pytest.approx(0.15)
    assert p["sensitivity"] == 0.98
    assert "threshold" not in p
    # confusion plot rows agree with the counts
    cm = result.confusion.groupby(["actual", "predicted"]).size().to_dict()
    assert cm == {
        ("COVID-19", "COVID-19"): 95,
        ("COVID-19", "non-COVID"): 5,
        ("non-COVID", "COVID-19"): 20,
        ("non-COVID", "non-COVID"): 180,
    }


def test_paper_interval_outside_unit_is_flagged(cfg, caplog):
    df = planted_predictions()
    # every test COVID-19 image above 0.40 but one: sensitivity 0.99, 0.99 + 1.96 * sqrt(.99 * .01 / 100) > 1
    df.loc[(df["split"] == "test") & (df["label"] == 1), "score"] = [0.05] + [0.9] * 99
    with caplog.at_level("WARNING", logger="evaluate"):
        result = evaluate(df, cfg)
    t = result.details["test"]
    assert t["sensitivity"] == 0.99
    assert t["paper_sensitivity_high"] > 1.0 and t["paper_sensitivity_high_clipped"] == 1.0
    assert t["paper_sensitivity_outside_unit"] is True and t["paper_interval_outside_unit"] is True
    assert any("outside [0, 1]" in r.getMessage() and "sensitivity" in r.getMessage() for r in caplog.records)
    assert result.thresholds["paper_interval_outside_unit"].any()


def test_thresholds_table_matches_metrics(planted, cfg):
    _, result = planted
    table = result.thresholds
    assert table["threshold"].tolist() == list(cfg.thresholds)
    y = planted_predictions().query("split == 'test'")
    for row in table.itertuples():
        c = P.confusion_at_threshold(y["label"], y["score"], row.threshold)
        assert (row.tp, row.fn, row.tn, row.fp) == (c["tp"], c["fn"], c["tn"], c["fp"])
        assert (row.sensitivity, row.specificity) == pytest.approx((c["tp"] / 100, c["tn"] / 200))
    assert {
        "paper_sensitivity_low",
        "paper_sensitivity_high",
        "paper_specificity_low_clipped",
        "paper_interval_outside_unit",
        "sensitivity_low",
        "specificity_high",
    } <= set(table.columns)


# --------------------------------------------------------------------------- output files


def _no_nan_constant(name):
    raise AssertionError(f"non-finite JSON constant {name}")


def test_metrics_json_keys_numeric(planted):
    root, _ = planted
    data = json.loads((root / "out" / "metrics" / "evaluate.json").read_text(), parse_constant=_no_nan_constant)
    headline = [
        "auc",
        "auc_low",
        "auc_high",
        "ap",
        "sensitivity",
        "sensitivity_low",
        "sensitivity_high",
        "specificity",
        "specificity_low",
        "specificity_high",
        "threshold",
        "ece",
    ]
    for section in ("test", "val"):
        for key in headline:
            v = data[section][key]
            assert isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v), (section, key)
    assert {"paper_style_test_threshold", "sensitivity", "specificity"} <= set(data["paper_style"])
    assert data["test"]["threshold_chosen_on_val"] is True
    assert data["test"]["auc_low"] <= data["test"]["auc"] <= data["test"]["auc_high"]
    # compact: sections of plain numbers (and the two flags), nothing nested, no strings
    assert set(data) == {"test", "val", "paper_style"}
    flat = [v for section in data.values() for v in section.values()]
    assert all(isinstance(v, (int, float)) for v in flat) and len(flat) <= 50
    details = json.loads(
        (root / "out" / "metrics" / "evaluate_details.json").read_text(), parse_constant=_no_nan_constant
    )
    assert details["settings"]["ci_method"] == "wilson" and details["settings"]["auc_ci_method"] == "delong"
    assert details["settings"]["operating_point_chosen_on"] == "val"
    assert (details["test"]["tp"], details["test"]["tn"]) == (95, 180)
    assert details["test"]["paper_sensitivity_high_clipped"] <= 1.0


def test_plot_files_finite(planted):
    root, _ = planted
    paths = OutputPaths.under(root / "out")
    files = [paths.thresholds, paths.roc, paths.pr, paths.confusion, paths.scores, paths.calibration]
    for f in files:
        text = f.read_text()
        assert "inf" not in text.lower().replace("non-covid", "") and "nan" not in text.lower(), f
        frame = pd.read_csv(f)
        assert len(frame) > 0, f
        numeric = frame.select_dtypes(include=[np.number]).to_numpy(dtype=float)
        assert np.isfinite(numeric).all(), f
    roc = pd.read_csv(paths.roc)
    assert list(roc.columns) == ["fpr", "tpr", "threshold"]
    assert roc["threshold"].iloc[0] == 1.0 and roc["threshold"].is_monotonic_decreasing
    assert list(pd.read_csv(paths.pr).columns)[:2] == ["recall", "precision"]
    scores = pd.read_csv(paths.scores)
    assert {"score", "covid", "normal", "other_disease"} <= set(scores.columns)
    assert scores[["covid", "normal", "other_disease"]].to_numpy().sum() == 300
    pngs = sorted(p.name for p in paths.figures.glob("*.png"))
    assert pngs == ["confusion_matrix.png", "pr.png", "reliability.png", "roc.png", "score_histograms.png"]
    for p in paths.figures.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_outputs_deterministic(tmp_path, planted, cfg):
    """Same predictions, same bytes, figures included (the CI compares rebuilt outputs with dvc.lock)."""
    root, _ = planted
    again = evaluate(load_predictions(root / "predictions.csv"), cfg, name=str(root / "predictions.csv"))
    write_outputs(again, OutputPaths.under(tmp_path))
    files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert len(files) == 13
    for rel in files:
        assert (tmp_path / rel).read_bytes() == (root / "out" / rel).read_bytes(), rel


def test_dvc_stage_outs_match_writer():
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["evaluate"]
    declared = set()
    for section in ("outs", "metrics"):
        for entry in stage.get(section, []):
            ((path, opts),) = entry.items() if isinstance(entry, dict) else ((entry, {}),)
            assert opts.get("cache") is False, path
            declared.add(path)
    written = {str(p) for p in vars(OutputPaths.under(".")).values()}
    assert {str(Path(p)) for p in declared} == written
    assert "data/predictions.csv" in stage["deps"] and "evaluate" in stage["params"]


# --------------------------------------------------------------------------- the stage script


def _run(args, cwd=REPO, check_rc=None):
    proc = subprocess.run([PY, *map(str, args)], cwd=cwd, capture_output=True, text=True, env=ENV)
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stdout + proc.stderr
    return proc


def test_evaluate_cli_outside_dvc(tmp_path):
    """Any predictions file, outputs in the folders given, settings from the --params file."""
    pred = tmp_path / "preds.csv"
    random_predictions(1).to_csv(pred, index=False)
    _run(
        [
            REPO / "stages" / "evaluate.py",
            pred,
            tmp_path / "res" / "metrics",
            tmp_path / "res" / "plots",
            "--params",
            REPO / "params.yaml",
        ],
        cwd=tmp_path,
        check_rc=0,
    )
    data = json.loads((tmp_path / "res" / "metrics" / "evaluate.json").read_text())
    assert data["test"]["threshold_chosen_on_val"] is True and "val" in data
    for rel in (
        "metrics/thresholds.csv",
        "plots/roc.csv",
        "plots/pr.csv",
        "plots/confusion.csv",
        "plots/scores.csv",
        "plots/calibration.csv",
        "plots/figures/roc.png",
    ):
        assert (tmp_path / "res" / rel).is_file(), rel
    assert not (tmp_path / "metrics").exists()


def _cli(args) -> int:
    """Run ``deepcovid ARGS`` in-process (deepcovid.cli.main); returns its exit status."""
    from deepcovid import cli

    try:
        return cli.main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)


def _main(script, args, monkeypatch) -> int:
    """Run a stage script in-process (as ``python stages/SCRIPT.py ARGS``); returns its exit status."""
    import runpy

    monkeypatch.setattr(sys, "argv", [str(REPO / "stages" / f"{script}.py"), *map(str, args)])
    try:
        runpy.run_path(str(REPO / "stages" / f"{script}.py"), run_name="__main__")
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_evaluate_cli_missing_column(tmp_path, monkeypatch, capsys):
    pred = tmp_path / "preds.csv"
    random_predictions(1).drop(columns=["score"]).to_csv(pred, index=False)
    rc = _main(
        "evaluate",
        [pred, tmp_path / "res" / "metrics", tmp_path / "res" / "plots", "--params", REPO / "params.yaml"],
        monkeypatch,
    )
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert lines[0].startswith("evaluate: error:") and str(pred) in lines[0] and "'score'" in lines[0]
    assert not (tmp_path / "res").exists()


@pytest.mark.parametrize(
    "change,fragment",
    [
        (lambda d: d.assign(label=d["label"].replace(1, 2)), "column 'label' must hold 0 or 1"),
        (lambda d: d.assign(score=d["score"] * 2), "column 'score' must be a probability"),
        (lambda d: pd.concat([d, d.iloc[:1]]), "column 'image_id' repeats"),
        (lambda d: d.query("split == 'val'"), "no 'test' rows"),
    ],
)
def test_bad_predictions_named(tmp_path, change, fragment):
    pred = tmp_path / "p.csv"
    change(random_predictions(2)).to_csv(pred, index=False)
    with pytest.raises(ValueError, match=fragment) as err:
        load_predictions(pred)
    assert str(pred) in str(err.value)


def test_test_split_only_falls_back_to_paper_style(tmp_path, cfg, caplog):
    df = planted_predictions().query("split == 'test'").drop(columns=["group"])
    with caplog.at_level("WARNING", logger="evaluate"):
        path = tmp_path / "p.csv"
        df.to_csv(path, index=False)
        result = evaluate(load_predictions(path), cfg)
    m = result.details
    assert m["settings"]["operating_point_chosen_on"] == "test" and "val" not in m
    assert result.metrics["test"]["threshold_chosen_on_val"] is False
    assert m["test"]["threshold"] == m["paper_style"]["paper_style_test_threshold"] == pytest.approx(0.15)
    assert any("paper-style" in r.getMessage() and "TEST" in r.getMessage() for r in caplog.records)
    assert list(result.scores.columns)[3:] == ["covid", "non_covid"]  # group derived from the label


def test_bootstrap_auc_interval(cfg):

    df = random_predictions(4)
    cfg = cfg.model_copy(update=dict(auc_ci="bootstrap", bootstrap_resamples=200))
    a, b = evaluate(df, cfg).details, evaluate(df, cfg).details
    assert a["settings"]["auc_ci_method"] == "bootstrap" and a["settings"]["bootstrap_resamples"] == 200
    assert a["test"] == b["test"]  # seeded
    ref = R.auc_bootstrap(
        df.query("split == 'test'")["label"], df.query("split == 'test'")["score"], n_resamples=200, seed=cfg.seed
    )
    assert (a["test"]["auc_low"], a["test"]["auc_high"]) == pytest.approx((ref["low"], ref["high"]))


def test_clopper_pearson_option(cfg):

    cfg = cfg.model_copy(update=dict(ci_method="clopper-pearson"))
    t = evaluate(planted_predictions(), cfg).metrics["test"]
    assert (t["sensitivity_low"], t["sensitivity_high"]) == pytest.approx(P.proportion_ci(95, 100, "clopper-pearson"))


# --------------------------------------------------------------------------- regression check


def test_regression_check_script(tmp_path, planted):
    root, _ = planted
    current = root / "out" / "metrics" / "evaluate.json"
    baseline = tmp_path / "baseline" / "default.json"
    script = "-m", "deepcovid", "check-regression"
    common = ["--params", REPO / "params.yaml", "--metrics", current, "--baseline", baseline]
    _run([*script, *common, "--write-baseline"], check_rc=0)
    assert json.loads(baseline.read_text()) == json.loads(current.read_text())
    ok = _run([*script, *common], check_rc=0)
    assert "test.auc" in ok.stdout and "FAIL" not in ok.stdout
    # plant a drop: the baseline AUC is 0.1 higher than the current one (tolerance 0.03)
    data = json.loads(baseline.read_text())
    data["test"]["auc"] = min(1.0, data["test"]["auc"] + 0.1)
    baseline.write_text(json.dumps(data))
    bad = _run([*script, *common], check_rc=1)
    row = next(line for line in bad.stdout.splitlines() if line.startswith("test.auc"))
    assert "FAIL" in row and "0.0300" in row
    for header in ("metric", "baseline", "current", "drop", "tolerance", "status"):
        assert header in bad.stdout
    usage = _run([*script, "--no-such-option"], check_rc=2)
    assert "usage:" in usage.stderr
    missing = _run([*script, "--params", REPO / "params.yaml", "--metrics", tmp_path / "none.json"], check_rc=2)
    assert missing.stderr.strip().splitlines()[-1].startswith("check-regression: error:")


def test_regression_rows_directions():
    check = regression
    cur = {"test": {"auc": 0.90, "ece": 0.10, "specificity": 0.80}}
    base = {"test": {"auc": 0.92, "ece": 0.02, "specificity": 0.90}}
    tol = {"test": {"auc": 0.03, "ece": 0.05, "specificity": 0.05}, "val.auc": 0.01}
    rows = {r["metric"]: r for r in check.regression_rows(cur, base, tol, ["test.ece"])}
    assert rows["test.auc"]["status"] == "ok"  # dropped 0.02 <= 0.03
    assert rows["test.auc"]["drop"] == pytest.approx(0.02)
    assert rows["test.ece"]["status"] == "FAIL"  # lower is better: rose by 0.08
    assert rows["test.specificity"]["status"] == "FAIL"
    assert rows["val.auc"]["status"] == "MISSING"
    text = check.format_rows(list(rows.values()))
    assert text.splitlines()[0].split() == ["metric", "baseline", "current", "drop", "tolerance", "status"]
    with pytest.raises(ConfigError, match="lower_is_better names metrics without a tolerance: test.ap"):
        check.regression_rows(cur, base, tol, ["test.ap"])


# --------------------------------------------------------------------------- compare


def test_compare_paired_tests(cfg):
    a, b = random_predictions(5), random_predictions(6)
    b["image_id"] = a["image_id"]  # same images and labels, different scores
    table, _ = compare_models({"a": a, "b": b, "a2": a.copy()}, cfg)
    rows = table.set_index("run")
    assert bool(rows.loc["a", "reference"]) and pd.isna(rows.loc["a", "p_value"])
    assert 0.0 < rows.loc["b", "p_value"] <= 1.0
    assert rows.loc["a2", "p_value"] == 1.0 and rows.loc["a2", "auc_diff"] == 0.0
    y, sb, sa = (
        a.query("split == 'test'")["label"],
        b.query("split == 'test'")["score"],
        a.query("split == 'test'")["score"],
    )
    assert rows.loc["b", "p_value"] == pytest.approx(D.delong_paired_test(y, sb, sa)["p_value"])


def test_compare_rejects_different_test_images(cfg):
    a, b = random_predictions(5), random_predictions(6)
    b = b.drop(index=b.index[-3:])  # three test images not scored by b
    with pytest.raises(ValueError, match="did not score the same test images"):
        compare_models({"a": a, "b": b}, cfg)


def test_compare_command(tmp_path, capsys):
    a, b = random_predictions(7), random_predictions(8)
    b["image_id"] = a["image_id"]
    a.to_csv(tmp_path / "a.csv", index=False)
    b.to_csv(tmp_path / "b.csv", index=False)
    out = tmp_path / "cmp"
    rc = _cli(
        [
            "compare",
            "--run",
            f"resnet18={tmp_path / 'a.csv'}",
            "--run",
            f"squeezenet={tmp_path / 'b.csv'}",
            "--params",
            REPO / "params.yaml",
            "--out-dir",
            out,
        ]
    )
    assert rc == 0
    table = pd.read_csv(out / "table.csv").set_index("run")
    assert 0 < table.loc["squeezenet", "p_value"] <= 1 and pd.isna(table.loc["resnet18", "p_value"])
    md = (out / "table.md").read_text()
    assert "| resnet18 |" in md and "reference" in md and "ΔAUC vs resnet18" in md
    assert md in capsys.readouterr().out
    for name in ("roc.png", "pr.png", "reliability_resnet18.png", "reliability_squeezenet.png", "compare.json"):
        assert (out / name).is_file(), name
    json.loads((out / "compare.json").read_text(), parse_constant=_no_nan_constant)
    # different test images: a one-line error, exit status 2
    b.iloc[:-3].to_csv(tmp_path / "c.csv", index=False)
    rc = _cli(
        [
            "compare",
            "--run",
            f"a={tmp_path / 'a.csv'}",
            "--run",
            f"c={tmp_path / 'c.csv'}",
            "--params",
            REPO / "params.yaml",
            "--out-dir",
            tmp_path / "cmp2",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("compare: error:") and "did not score the same test images" in err[-1]


# --------------------------------------------------------------------------- DVC plots


def test_dvc_plots_render(tmp_path, planted):
    """`dvc plots show` renders every top-level plot of dvc.yaml from the evaluate outputs."""
    root, _ = planted
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}, sort_keys=False))
    shutil.copytree(root / "out" / "plots", tmp_path / "plots")
    pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [0.7, 0.5, 0.4], "val_loss": [0.6, 0.55, 0.5]}).to_csv(
        tmp_path / "plots" / "train_loss.csv", index=False
    )
    (tmp_path / "plots" / "explain").mkdir()  # the explain stage's figures: two stand-ins
    for name in ("00_top.png", "01_false_positive.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / "plots" / "explain" / name)
    (tmp_path / "plots" / "segment").mkdir()  # the segment stage's figure: a stand-in
    Image.new("RGB", (8, 8)).save(tmp_path / "plots" / "segment" / "masks.png")
    expected_images = {"plots/figures": 5, "plots/explain": 2, "plots/segment": 1}
    dvc = shutil.which("dvc", path=str(Path(PY).parent)) or "dvc"
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True, env=ENV)
    proc = subprocess.run([dvc, "plots", "show", "--json"], cwd=tmp_path, capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert not shown.get("errors"), shown.get("errors")
    data = shown["data"]
    ids = [next(iter(p)) if isinstance(p, dict) else p for p in plots]
    images = [i for i in ids if not isinstance(plots[ids.index(i)], dict)]
    for plot_id in ids:
        if plot_id in images:
            found = [k for k in data if k.startswith(plot_id)]
            assert len(found) == expected_images[plot_id], (plot_id, list(data))
            for k in found:
                assert all(e["type"] == "image" and Path(e["url"]).is_file() for e in data[k]), k
            continue
        (entry,) = data[plot_id]
        assert entry["type"] == "vega", plot_id
        spec = json.loads(json.dumps(entry["content"]))  # a valid JSON document
        values = spec["data"]["values"]
        assert values, plot_id
        definition = plots[ids.index(plot_id)][plot_id]
        ys = [f for v in definition["y"].values() for f in ([v] if isinstance(v, str) else v)]
        for f in [definition["x"]] + ys:
            assert all(f in row for row in values), (plot_id, f)
        if len(ys) > 1:  # one series per y column
            assert {row["field"] for row in values} == set(ys), plot_id
        if definition.get("template") != "confusion":
            numbers = [float(row[f]) for row in values for f in [definition["x"]] + ys]
            assert all(math.isfinite(v) for v in numbers), plot_id


def test_top_level_plot_fields_exist(planted):
    """Every x / y field named in dvc.yaml's top-level plots is a column of the written file."""
    root, _ = planted
    written = {f"plots/{p.name}": p for p in (root / "out" / "plots").glob("*.csv")}
    written["plots/train_loss.csv"] = None  # the train stage's file: epoch, train_loss, val_loss
    for entry in yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]:
        if not isinstance(entry, dict):
            continue
        ((plot_id, definition),) = entry.items()
        for path, fields in definition["y"].items():
            assert path in written, (plot_id, path)
            columns = (
                ["epoch", "train_loss", "val_loss"]
                if written[path] is None
                else list(pd.read_csv(written[path], nrows=0).columns)
            )
            for f in [definition["x"]] + ([fields] if isinstance(fields, str) else list(fields)):
                assert f in columns, (plot_id, path, f)


def test_compare_lists_dvc_experiments(monkeypatch):
    """--from-dvc-exps parses `dvc exp show --json` (DVC 3.67 layout), skipping queued runs and runs
    without predictions."""

    def rev(sha, name, model, out=True):
        outs = {"data/predictions.csv": {"hash": "ab" * 16, "size": 10}} if out else {}
        return {
            "rev": sha,
            "name": name,
            "error": None,
            "experiments": None,
            "data": {"rev": sha, "params": {"params.yaml": {"data": {"model": model}}}, "outs": outs},
        }

    shown = [
        {**rev("workspace", None, "x"), "rev": "workspace"},
        {
            **rev("b" * 40, "main", "resnet18"),
            "experiments": [
                {"name": "exp-a", "executor": None, "revs": [rev("c" * 40, "exp-a", "squeezenet")]},
                {"name": "exp-q", "executor": {"state": "queued"}, "revs": [rev("d" * 40, "exp-q", "densenet121")]},
                {"name": "exp-s", "executor": {"state": "success"}, "revs": [rev("e" * 40, "exp-s", "resnet50")]},
                {"name": "exp-n", "executor": None, "revs": [rev("f" * 40, "exp-n", "resnet50", out=False)]},
            ],
        },
    ]

    class Done:
        returncode, stdout, stderr = 0, json.dumps(shown), ""

    monkeypatch.setattr(compare.subprocess, "run", lambda *a, **k: Done())
    found = compare.dvc_experiments(".", "data/predictions.csv")
    assert [(e["name"], e["rev"][0], e["model"]) for e in found] == [
        ("main", "b", "resnet18"),
        ("exp-a", "c", "squeezenet"),
        ("exp-s", "e", "resnet50"),
    ]
    assert [e["name"] for e in compare.dvc_experiments(".", "data/predictions.csv", include_baseline=False)] == [
        "exp-a",
        "exp-s",
    ]
