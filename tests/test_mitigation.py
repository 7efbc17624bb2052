"""The mitigation study (deepcovid/evaluation/mitigation.py, `deepcovid mitigation`): the report's numbers
come from each variant's runs, its paired tests are DeLong's on the images both scored, Holm-adjusted;
the runner runs every declared variant twice with its own parameters, validates them all before
anything runs, resumes, and restores params.yaml."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from statsmodels.stats.multitest import multipletests

from deepcovid.errors import InputError
from deepcovid.evaluation import mitigation as M
from deepcovid.evaluation.delong import delong_paired_test
from workspace import REPO, run_python

VARIANTS = {
    "baseline": {},
    "lungs_mask": {"preprocess.lungs": "mask"},
    "equalize": {"preprocess.intensity": "equalize"},
}


def _write_run(folder: Path, run: str, scores: pd.DataFrame, auc: float, extra: float) -> None:
    (folder / "metrics").mkdir(parents=True)
    (folder / "data").mkdir()
    section = {
        "auc": auc,
        "auc_low": auc - 0.1,
        "auc_high": min(1.0, auc + 0.1),
        "sensitivity": 0.9,
        "specificity": 0.2,
    }
    evaluate = {"test": section} if run == "internal" else {"test": section, "external": section}
    (folder / "metrics/evaluate.json").write_text(json.dumps(evaluate))
    if run == "internal":
        quantiles = {"mean": auc - 0.02, "p2_5": auc - 0.1, "p97_5": auc + 0.05}
        (folder / "metrics/repeats.json").write_text(json.dumps({"repeats": {"auc": quantiles}}))
        audit = {
            "source_readability": {"positives": {"auc": 0.9 - extra}, "negatives": {"auc": 0.8 - extra}},
            "style_baseline": {"difference": 0.1},
            "metadata_baseline": {"difference": 0.05},
        }
        (folder / "metrics/audit.json").write_text(json.dumps(audit))
        explain = {"lung_mass": 0.4 + extra, "lung_area": 0.3, "pointing_lung": 0.1, "random_pointing_lung": 0.14}
        (folder / "metrics/explain.json").write_text(json.dumps(explain))
    scores.to_csv(folder / "data/predictions.csv", index=False)


def _study(tmp_path: Path) -> tuple[Path, dict]:
    rng = np.random.default_rng(0)
    n = 60
    label = np.r_[np.ones(n // 2, int), np.zeros(n // 2, int)]
    truth = {}
    for k, name in enumerate(VARIANTS):
        for run, split in (("internal", "test"), ("external", "external")):
            score = np.clip(label * (0.2 + 0.1 * k) + rng.normal(0.4, 0.2, n), 0, 1)
            frame = pd.DataFrame(
                {"image_id": [f"i{j}" for j in range(n)], "split": split, "label": label, "score": score}
            )
            if name == "lungs_mask":
                frame = frame.drop(index=[3])  # an image this variant rejected (no lungs found)
            val = frame.assign(split="val", image_id=[f"v{j}" for j in range(len(frame))])  # never compared
            _write_run(tmp_path / name / run, run, pd.concat([frame, val]), 0.6 + 0.1 * k, 0.05 * k)
            truth[name, run] = frame.set_index("image_id")
    return tmp_path, truth


def test_the_report_takes_each_number_from_its_run_and_tests_on_the_same_images(tmp_path):
    study, truth = _study(tmp_path / "study")
    table = M.study_table(study, VARIANTS, "baseline").set_index("variant")
    assert list(table.index) == list(VARIANTS)
    assert table.loc["equalize", "internal_auc"] == pytest.approx(0.8)
    assert table.loc["equalize", "external_auc_low"] == pytest.approx(0.7)
    assert table.loc["lungs_mask", "source_from_features_covid"] == pytest.approx(0.85)
    assert table.loc["equalize", "lung_mass"] == pytest.approx(0.5)
    assert table.loc["baseline", "overrides"] == "(none)"
    for run in M.RUNS:
        p = []
        for name in ("lungs_mask", "equalize"):
            base, other = truth["baseline", run], truth[name, run]
            common = base.index.intersection(other.index)
            want = delong_paired_test(
                base.loc[common, "label"].to_numpy(), other.loc[common, "score"], base.loc[common, "score"]
            )
            assert table.loc[name, f"{run}_vs_baseline_difference"] == pytest.approx(want["difference"])
            assert table.loc[name, f"{run}_vs_baseline_p_value"] == pytest.approx(want["p_value"])
            assert table.loc[name, f"{run}_vs_baseline_images"] == len(common)
            p.append(want["p_value"])
        holm = multipletests(p, method="holm")[1]
        assert list(table.loc[["lungs_mask", "equalize"], f"{run}_vs_baseline_p_holm"]) == pytest.approx(list(holm))
        assert table.loc["lungs_mask", f"{run}_vs_baseline_not_scored"] == 1
        assert table.loc["baseline", f"{run}_vs_baseline_p_holm"] is None
    markdown = M.study_markdown(table.reset_index())
    assert markdown.count("\n") == 2 + len(VARIANTS) and "(baseline)" in markdown and "p_Holm" in markdown


def test_the_report_files_and_its_refusals(tmp_path):
    study, _ = _study(tmp_path / "study")
    M.write_study(study, VARIANTS, "baseline", tmp_path / "out")
    for name in ("table.csv", "table.md", "study.json", "external_auc.png"):
        assert (tmp_path / "out" / name).stat().st_size > 100, name
    record = json.loads((tmp_path / "out/study.json").read_text())
    assert record["variants"] == VARIANTS and len(record["rows"]) == 3
    with pytest.raises(InputError, match="not among the variants"):
        M.study_table(study, VARIANTS, "nothing")
    (study / "equalize" / "external" / "data" / "predictions.csv").unlink()
    with pytest.raises(InputError, match="run is incomplete"):
        M.study_table(study, VARIANTS, "baseline")


FAKE_REPRO = """
import json, sys, yaml
from pathlib import Path
p = yaml.safe_load(open("params.yaml"))
seen = [p["preprocess"]["lungs"], p["preprocess"]["intensity"], p["split"]["external_sources"]]
with open("runs.log", "a") as log:
    log.write(json.dumps(seen) + "\\n")
Path("metrics").mkdir(exist_ok=True)
Path("metrics/evaluate.json").write_text(json.dumps({"lungs": p["preprocess"]["lungs"]}))
if p["preprocess"]["intensity"] == "equalize" and p["split"]["external_sources"] and "fail" in sys.argv:
    sys.exit(3)
"""


def test_the_runner_runs_each_variant_twice_with_its_parameters_and_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["dataset"] = "public"
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    original = Path("params.yaml").read_text()
    Path("fake.py").write_text(FAKE_REPRO)
    repro = [sys.executable, "fake.py"]
    M.run_study("study", variants=VARIANTS, external_sources=["actualmed"], repro=repro)
    runs = [json.loads(line) for line in Path("runs.log").read_text().splitlines()]
    assert runs == [
        ["none", "none", []],
        ["mask", "none", []],
        ["none", "equalize", []],
        ["none", "none", ["actualmed"]],
        ["mask", "none", ["actualmed"]],
        ["none", "equalize", ["actualmed"]],
    ]  # the split changes once: all internal runs first
    assert json.loads(Path("study/lungs_mask/external/metrics/evaluate.json").read_text()) == {"lungs": "mask"}
    assert Path("params.yaml").read_text() == original
    M.run_study("study", variants=VARIANTS, external_sources=["actualmed"], repro=repro)
    assert len(Path("runs.log").read_text().splitlines()) == 6  # everything done: nothing runs again
    # a failing run stops the study in one line, naming it; params.yaml is restored
    with pytest.raises(InputError, match="the external run of variant 'equalize' failed"):
        M.run_study("study2", variants=VARIANTS, external_sources=["actualmed"], repro=[*repro, "fail"])
    assert Path("params.yaml").read_text() == original


@pytest.mark.parametrize(
    "variants, message",
    [
        ({"baseline": {}, "typo": {"preprocess.lung": "mask"}}, "preprocess.lung is not a parameter"),
        ({"baseline": {}, "bad": {"preprocess.lungs": "outline"}}, "preprocess.lungs"),
        ({"baseline": {}, "deep": {"nothing.lungs": "mask"}}, "nothing.lungs is not a parameter"),
    ],
)
def test_every_variant_is_validated_before_anything_runs(tmp_path, monkeypatch, variants, message):
    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["dataset"] = "public"
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    Path("fake.py").write_text(FAKE_REPRO)
    with pytest.raises(InputError, match=message):
        M.run_study("study", variants=variants, external_sources=["actualmed"], repro=[sys.executable, "fake.py"])
    assert not Path("runs.log").exists()


def test_the_declared_study_is_valid_and_the_cli_reports_an_existing_study(tmp_path):
    from deepcovid.config import load_config

    declared = load_config(REPO / "params.yaml").mitigation
    assert {"baseline", "lungs_crop", "lungs_mask", "equalize"} <= set(declared.variants)
    assert any(len(v) > 1 for v in declared.variants.values())  # a combination
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["dataset"] = "public"
    for run in M.RUNS:
        for overrides in declared.variants.values():
            M.run_params(params, overrides, run, declared.external_sources)
    study, _ = _study(tmp_path / "study")
    params["mitigation"]["variants"] = VARIANTS
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = run_python(
        ["-m", "deepcovid", "mitigation", "--study", str(study), "--out-dir", str(tmp_path / "out"), "--report-only",
         "--params", str(tmp_path / "params.yaml")],
        cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "| lungs_mask (`preprocess.lungs=mask`)" in proc.stdout and (tmp_path / "out/table.md").is_file()


def test_ci_fails_when_a_variants_auc_falls_below_the_committed_report(tmp_path):
    study, _ = _study(tmp_path / "study")
    table = M.write_study(study, VARIANTS, "baseline", tmp_path / "out")
    failures, lines = M.regressions(table, tmp_path / "out/study.json", 0.03)
    assert failures == [] and len(lines) == 3 * len(M.CHECKED)
    worse = table.copy()
    worse.loc[worse["variant"] == "equalize", "external_auc"] -= 0.05
    worse.loc[worse["variant"] == "baseline", "internal_auc"] -= 0.02  # within the tolerance
    failures, _ = M.regressions(worse, tmp_path / "out/study.json", 0.03)
    assert len(failures) == 1 and failures[0].startswith("equalize.external_auc") and "worse by more" in failures[0]
    better = table.copy()
    better["external_auc"] += 0.2
    assert M.regressions(better, tmp_path / "out/study.json", 0.03)[0] == []
    fewer = table[table["variant"] != "equalize"]
    assert M.regressions(fewer, tmp_path / "out/study.json", 0.03)[0] == ["equalize: not run"]


def test_a_quick_study_stops_every_run_at_evaluate_and_ci_compares_what_it_computed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["dataset"] = "public"
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    Path("fake.py").write_text(FAKE_REPRO)
    import subprocess

    commands, real_run = [], subprocess.run

    def record(command, check=False):
        commands.append(command[2:])  # after `dvc repro`
        return real_run([sys.executable, "fake.py"], check=check)

    monkeypatch.setattr(subprocess, "run", record)
    M.run_study("study", variants=VARIANTS, external_sources=["actualmed"], quick=True)
    assert commands == [["evaluate"]] * 6
    commands.clear()
    M.run_study("study", variants=VARIANTS, external_sources=["actualmed"])  # a full study over the quick one
    assert commands == [[]] * 3  # the internal runs again, to the end; the external ones are the same
    study, _ = _study(tmp_path / "full")
    full = M.write_study(study, VARIANTS, "baseline", tmp_path / "out")
    for name in VARIANTS:  # a quick study's internal runs have no audit, heatmaps or repeats
        for rel in ("audit.json", "explain.json", "repeats.json"):
            (study / name / "internal/metrics" / rel).unlink()
    quick = M.study_table(study, VARIANTS, "baseline")
    assert quick["repeats_auc_mean"].isna().all() and quick["lung_mass"].isna().all()
    assert list(quick["external_auc"]) == list(full["external_auc"])
    failures, lines = M.regressions(quick, tmp_path / "out/study.json", 0.03)
    assert failures == [] and len(lines) == 2 * len(VARIANTS)  # internal and external AUC only
