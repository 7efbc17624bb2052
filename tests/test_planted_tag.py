"""Issue 28's proof on generated data: a shortcut planted outside the lungs (Cohen's burned-in tag,
``synthetic.cohen.marker``) is flagged by the audit, and ``preprocess.lungs: mask`` removes it.

One tiny pipeline with every Cohen X-ray tagged (COVID-19 and Cohen's other pneumonias, which join
the CheXpert negatives), run twice from the same split: ``lungs: none`` and ``lungs: mask``. Both
models are then scored on a new Cohen-layout folder where the tag's link to the label is reversed
(COVID-19 untagged, the other findings tagged), as a new hospital breaks a source's look."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from deepcovid.config import load_config
from deepcovid.evaluation.mitigation import paired_against
from deepcovid.synthetic import generate_cohen
from workspace import REPO, TINY, copy_without, evaluate_external, make_workspace, override_params, run_stage

pytestmark = pytest.mark.slow

SETTINGS = {
    **TINY,
    "synthetic.cohen.other_patients": 16,
    "datasets.synthetic.negatives": ["chexpert", "cohen"],
    "synthetic.cohen.marker": 1.0,
    "segment.size": 48,
    "segment.epochs": 8,
    "train.epochs": 100,
    "mlflow.enabled": False,
}
DATA = ["fetch", "filter", "negatives", "duplicates", "split"]
MODEL = ["preprocess", "augment", "featurize", "train", "evaluate", "audit"]


def _reversed_folder(root: Path, seed: int) -> Path:
    """A Cohen-layout folder: COVID-19 images without the tag, every other finding with it."""
    cfg = load_config(REPO / "params.yaml").synthetic.cohen.model_dump()
    cfg.update(ct_rows=0, lateral_fraction=0.0)
    parts = []
    for marker, keep_covid in ((0.0, True), (1.0, False)):
        src = root / f"generated-{marker}"
        counts = {"covid_patients": 40 * keep_covid, "other_patients": 40 * (not keep_covid)}
        generate_cohen(src, {**cfg, **counts, "marker": marker}, seed)
        meta = pd.read_csv(src / "metadata.csv", dtype=str, keep_default_na=False)
        covid = meta["finding"].str.contains("COVID-19")
        meta = meta[covid if keep_covid else ~covid & ~meta["finding"].isin(["", "todo"])].copy()
        for name in meta["filename"]:
            (root / "external" / "images").mkdir(parents=True, exist_ok=True)
            shutil.copy(src / "images" / name, root / "external" / "images" / f"m{marker:g}-{name}")
        meta["filename"] = [f"m{marker:g}-{n}" for n in meta["filename"]]
        meta["patientid"] = [f"m{marker:g}-{p}" for p in meta["patientid"]]
        parts.append(meta)
    pd.concat(parts).to_csv(root / "external" / "metadata.csv", index=False)
    return root / "external"


def _external(ws: Path, folder: Path) -> dict:
    out = ws / "external-eval"
    proc = evaluate_external(folder, ws, out)
    assert proc.returncode == 0, proc.stderr
    scores = pd.read_csv(out / "predictions.csv").set_index("image_id")[["label", "score"]]
    return {**json.loads((out / "evaluate.json").read_text())["test"], "scores": scores}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("planted-tag")
    (root / "none").mkdir()
    plain = make_workspace(root / "none", **SETTINGS)
    for stage in DATA + MODEL:
        run_stage(plain, stage)
    masked = copy_without(plain, root / "mask", MODEL)
    override_params(plain / "params.yaml", masked / "params.yaml", {"preprocess.lungs": "mask"})
    for stage in ["segment", *MODEL]:
        run_stage(masked, stage)
    folder = _reversed_folder(root, seed=7)
    return {
        name: {
            "audit": json.loads((ws / "metrics/audit.json").read_text()),
            "internal": json.loads((ws / "metrics/evaluate.json").read_text())["test"],
            "external": _external(ws, folder),
            "segment": json.loads((ws / "metrics/segment.json").read_text()) if name == "mask" else None,
        }
        for name, ws in (("none", plain), ("mask", masked))
    }


def test_the_audit_flags_the_tag_and_masking_the_lungs_hides_it(runs):
    none, mask = runs["none"]["audit"], runs["mask"]["audit"]
    print({k: (runs[k]["audit"]["source_readability"], runs[k]["segment"]) for k in runs})
    assert none["flags"]["image_shows_source"]
    readable = {k: runs[k]["audit"]["source_readability"]["negatives"]["auc"] for k in runs}
    assert readable["none"] > 0.8 and readable["mask"] < readable["none"] - 0.15, readable
    assert not mask["flags"]["image_shows_source"]


def test_masking_the_lungs_restores_the_auc_where_the_tag_is_reversed(runs):
    external = {k: runs[k]["external"] for k in runs}
    internal = {k: runs[k]["internal"]["auc"] for k in runs}
    print("external", {k: (v["auc"], v["auc_low"], v["auc_high"], v["n_pos"], v["n_neg"]) for k, v in external.items()})
    print("internal", internal)
    assert external["none"]["n_pos"] >= 15 and external["none"]["n_neg"] >= 15
    # the tag model ranks the tagged (non-COVID) images first: below chance on the reversed folder
    assert external["none"]["auc"] < 0.5
    # without what lies outside the lungs the link cannot be read: the AUC rises above chance, by
    # DeLong's paired test on the same images (the mitigation study's comparison)
    paired = paired_against(external["none"]["scores"], external["mask"]["scores"], alpha=0.05)
    print("paired", paired)
    assert paired["not_scored"] == 0 and paired["difference_low"] > 0
    assert external["mask"]["auc_low"] > 0.5
