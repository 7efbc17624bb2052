"""Tests of the synthetic data generator (deepcovid.synthetic)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from deepcovid import portable as pm
from deepcovid.files import sha256_file
from deepcovid.synthetic import layouts as syn
from deepcovid.synthetic import render as rd

PARAMS = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())["synthetic"]


def cohen_cfg(**changes) -> dict:
    """params.yaml's synthetic.cohen with changes (the generator takes the complete, validated section)."""
    return {**PARAMS["cohen"], **changes}


def chexpert_cfg(**changes) -> dict:
    return {**PARAMS["chexpert"], **changes}


SMALL_COHEN = cohen_cfg(covid_patients=8, other_patients=8, images_per_patient=[1, 3], ct_rows=3, size_range=[200, 320])
SMALL_CHEXPERT = chexpert_cfg(train_patients=30, valid_patients=4)


def _tree_digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cohen(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("cohen")
    return root, syn.generate_cohen(root, SMALL_COHEN, seed=7)


@pytest.fixture(scope="module")
def chexpert(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("chexpert")
    return root, syn.generate_chexpert(root, SMALL_CHEXPERT, seed=8)


# --- columns and headers --------------------------------------------------------------------


def test_column_constants():
    assert len(syn.COHEN_COLUMNS) == 29 and syn.COHEN_COLUMNS[-1] == ""
    assert ",".join(syn.COHEN_COLUMNS) == (
        "patientid,offset,sex,age,finding,survival,intubated,intubation_present,went_icu,in_icu,"
        "needed_supplemental_O2,extubated,temperature,pO2_saturation,leukocyte_count,neutrophil_count,"
        "lymphocyte_count,view,modality,date,location,folder,filename,doi,url,license,clinical_notes,"
        "other_notes,"
    )
    assert ",".join(syn.CHEXPERT_COLUMNS) == (
        "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
        "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,"
        "Pleural Effusion,Pleural Other,Fracture,Support Devices"
    )
    assert syn.CHEXPERT_CATEGORIES == syn.CHEXPERT_COLUMNS[5:] and len(syn.CHEXPERT_CATEGORIES) == 14
    from deepcovid.labels import CHEXPERT_CATEGORIES

    assert syn.CHEXPERT_CATEGORIES == CHEXPERT_CATEGORIES


def test_only_exact_arithmetic():
    """Nothing CPU-dispatched decides a pixel: no NumPy transcendentals, powers, SciPy or Pillow
    float filters and drawing in the generator (deepcovid.portable has exact versions)."""
    import re

    for module in (rd, syn):
        source = Path(module.__file__).read_text()
        found = re.findall(
            r"np\.(?:exp|log|sin|cos|tan|arctan2?|hypot|power|float_power)\b|[\w)\]]\s*\*\*|scipy|ImageDraw|"
            r"\.resize\(|\.filter\(|\.sum\(\)\s*/|\.mean\(",
            source,
        )
        assert not found, (module.__name__, found)


def test_cohen_header_and_rows(cohen):
    root, summary = cohen
    raw = (root / "metadata.csv").read_bytes()
    assert b"\r" not in raw
    assert raw.split(b"\n", 1)[0].decode() == ",".join(syn.COHEN_COLUMNS)
    with open(root / "metadata.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert all(len(r) == 29 and r[-1] == "" for r in rows)
    frame = pd.read_csv(root / "metadata.csv", dtype=str, keep_default_na=False)
    assert list(frame.columns) == syn.COHEN_COLUMNS[:-1] + ["Unnamed: 28"]
    assert len(frame) == summary["images"]
    assert set(frame["folder"]) == {"images"}
    assert frame["filename"].is_unique
    for name in frame["filename"]:
        assert (root / "images" / name).is_file()


def test_cohen_content(cohen):
    root, _ = cohen
    frame = pd.read_csv(root / "metadata.csv", dtype=str, keep_default_na=False)
    findings = set(frame["finding"])
    assert {"COVID-19", "", "todo"} <= findings
    assert (frame["finding"] == "COVID-19").sum() > len(frame) / 3
    assert findings & {"SARS", "Pneumocystis", "Streptococcus", "Pneumonia", "ARDS", "No Finding"}
    xray = frame[frame["modality"] == "X-ray"]
    assert (xray["view"] == "L").any()
    assert set(xray["view"]) <= {"PA", "AP", "AP Supine", "L"}
    ct = frame[frame["modality"] == "CT"]
    assert len(ct) == SMALL_COHEN["ct_rows"] and set(ct["view"]) == {"Axial"}
    assert set(frame["modality"]) == {"X-ray", "CT"}
    per_patient = frame.groupby("patientid").size()
    assert (per_patient >= 2).any()
    assert frame["date"].str.match(r"^$|^[A-Z][a-z]+ \d{1,2}, 2020$").all()
    assert set(frame["sex"]) <= {"M", "F", ""}


def test_cohen_image_modes(cohen):
    root, summary = cohen
    frame = pd.read_csv(root / "metadata.csv", dtype=str, keep_default_na=False)
    modes, png_as_jpg = set(), 0
    for name in frame["filename"]:
        with Image.open(root / "images" / name) as img:
            modes.add(img.mode)
            if img.mode == "RGBA":
                assert np.asarray(img)[..., 3].min() == 255
            if img.format == "PNG" and name.lower().endswith((".jpg", ".jpeg")):
                png_as_jpg += 1
    assert {"L", "RGB", "RGBA", "P"} <= modes
    assert modes & {"I;16", "I"}
    assert png_as_jpg >= 1 and summary["png_named_jpg"] == png_as_jpg


def test_cohen_truth_and_masks(cohen):
    root, _ = cohen
    truth = pd.read_csv(root / "annotations" / "synthetic_truth.csv", dtype=str, keep_default_na=False)
    meta = pd.read_csv(root / "metadata.csv", dtype=str, keep_default_na=False)
    assert list(truth["filename"]) == list(meta["filename"])
    assert list(truth.columns[:9]) == [
        "filename",
        "patientid",
        "finding",
        "view",
        "modality",
        "severity",
        "lung_mask",
        "lesion_mask",
        "lesion_pixels",
    ]
    for row in truth.itertuples():
        with Image.open(root / "images" / row.filename) as img:
            size = img.size
        for rel in (row.lung_mask, row.lesion_mask):
            with Image.open(root / rel) as m:
                assert m.mode == "L" and m.size == size
                assert set(np.unique(np.asarray(m))) <= {0, 255}
        with Image.open(root / row.lesion_mask) as m:
            assert int((np.asarray(m) > 0).sum()) == int(row.lesion_pixels)
        if row.drawn == "No Finding":
            assert int(row.lesion_pixels) == 0 and float(row.severity) == 0.0


def test_rejects_unknown_findings_and_views():  # the cfg itself is validated by deepcovid.config
    with pytest.raises(ValueError, match="unknown finding"):
        rd.render(pm.Rng(0), 64, 64, ["Flu"], 0.5)
    with pytest.raises(ValueError, match="unknown view"):
        rd.render(pm.Rng(0), 64, 64, [], 0.0, view="XY")


# --- determinism ----------------------------------------------------------------------------


def test_determinism(tmp_path):
    cfg_c = cohen_cfg(covid_patients=3, other_patients=2, ct_rows=1, size_range=[128, 200])
    cfg_x = chexpert_cfg(train_patients=6, valid_patients=2)
    digests = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        syn.generate_cohen(tmp_path / name / "cohen", cfg_c, seed)
        syn.generate_chexpert(tmp_path / name / "chexpert", cfg_x, seed)
        digests.append(_tree_digests(tmp_path / name))
    assert digests[0] == digests[1]
    assert len(digests[0]) > 20
    common = set(digests[0]) & set(digests[2])
    assert any(digests[0][k] != digests[2][k] for k in common) or set(digests[0]) != set(digests[2])
    assert digests[0]["chexpert/CheXpert-v1.0-small/train.csv"] != digests[2]["chexpert/CheXpert-v1.0-small/train.csv"]


def test_style_shift_keeps_content(tmp_path):
    base = cohen_cfg(
        covid_patients=2,
        other_patients=0,
        images_per_patient=[1, 1],
        lateral_fraction=0.0,
        ct_rows=0,
        size_range=[128, 160],
    )
    a = syn.generate_cohen(tmp_path / "a", base, 3)
    b = syn.generate_cohen(tmp_path / "b", {**base, "style_shift": 1.0}, 3)
    assert a["images"] == b["images"]
    ta = (tmp_path / "a" / "annotations" / "synthetic_truth.csv").read_text()
    tb = (tmp_path / "b" / "annotations" / "synthetic_truth.csv").read_text()
    assert ta == tb  # same anatomy, findings and mask sizes
    for name in pd.read_csv(tmp_path / "a" / "metadata.csv", dtype=str)["filename"]:
        ia = np.asarray(Image.open(tmp_path / "a" / "images" / name).convert("L"), dtype=float)
        ib = np.asarray(Image.open(tmp_path / "b" / "images" / name).convert("L"), dtype=float)
        assert ib.mean() > ia.mean() + 5  # Cohen-style: brighter
        stem = Path(name).stem
        for kind in ("lung", "lesion"):
            rel = f"annotations/synthetic-masks/{stem}_{kind}.png"
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    # CheXpert-style: darker and flatter, from the same draws
    x = chexpert_cfg(train_patients=3, valid_patients=0)
    syn.generate_chexpert(tmp_path / "xa", x, 3)
    syn.generate_chexpert(tmp_path / "xb", {**x, "style_shift": 1.0}, 3)
    for rel in pd.read_csv(tmp_path / "xa" / "CheXpert-v1.0-small" / "train.csv", dtype=str)["Path"]:
        ia = np.asarray(Image.open(tmp_path / "xa" / rel), dtype=float)
        ib = np.asarray(Image.open(tmp_path / "xb" / rel), dtype=float)
        assert ib.mean() < ia.mean() - 5 and ib.std() < ia.std()


@pytest.mark.parametrize("share", [1.0, 0.5])
def test_marker_tags_a_bottom_corner_outside_the_lungs_and_changes_nothing_else(tmp_path, share):
    """``marker``: the source's tag (Cohen bottom left, CheXpert bottom right) on that share of the
    X-rays, never on a CT, never in a lung mask; every other pixel, mask and row as without it."""
    base = cohen_cfg(covid_patients=4, other_patients=2, ct_rows=2, size_range=[128, 200])
    syn.generate_cohen(tmp_path / "a", base, 3)
    syn.generate_cohen(tmp_path / "b", {**base, "marker": share}, 3)
    x = chexpert_cfg(train_patients=6, valid_patients=0)
    syn.generate_chexpert(tmp_path / "xa", x, 3)
    syn.generate_chexpert(tmp_path / "xb", {**x, "marker": share}, 3)
    pairs = []
    for name, modality in pd.read_csv(tmp_path / "a" / "metadata.csv", dtype=str)[["filename", "modality"]].values:
        lung = f"annotations/synthetic-masks/{Path(name).stem}_lung.png"
        pairs.append(("cohen", modality, tmp_path / "a" / "images" / name, tmp_path / "b" / "images" / name, lung))
    for rel in pd.read_csv(tmp_path / "xa" / "CheXpert-v1.0-small" / "train.csv", dtype=str)["Path"]:
        lung = f"CheXpert-v1.0-small/synthetic-masks/{rel[len('CheXpert-v1.0-small/') : -4]}_lung.png"
        pairs.append(("chexpert", "X-ray", tmp_path / "xa" / rel, tmp_path / "xb" / rel, lung))
    tagged = {"cohen": 0, "chexpert": 0}
    for source, modality, a, b, lung in pairs:
        ia = np.asarray(Image.open(a).convert("L"), dtype=int)
        ib = np.asarray(Image.open(b).convert("L"), dtype=int)
        changed = np.abs(ia - ib) > 12  # JPEG re-encoding spreads a few levels around the tag
        if not changed.any():
            continue
        assert modality == "X-ray"
        tagged[source] += 1
        rows, cols = np.nonzero(changed)
        h, w = ia.shape
        assert rows.min() >= 0.85 * h
        assert cols.max() < 0.25 * w if source == "cohen" else cols.min() > 0.75 * w
        root = tmp_path / ("a" if source == "cohen" else "xa")
        assert not (changed & (np.asarray(Image.open(root / lung)) > 0)).any()
    xrays = {s: sum(1 for p in pairs if p[0] == s and p[1] == "X-ray") for s in tagged}
    if share == 1.0:
        assert tagged == xrays
    else:
        assert all(0 < tagged[s] < xrays[s] for s in tagged), (tagged, xrays)
    for truth in ("annotations/synthetic_truth.csv",):
        assert (tmp_path / "a" / truth).read_bytes() == (tmp_path / "b" / truth).read_bytes()


# --- CheXpert -------------------------------------------------------------------------------


def _read_chexpert(root: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(root / "CheXpert-v1.0-small" / name, dtype=str, keep_default_na=False)


def test_chexpert_layout(chexpert):
    root, summary = chexpert
    for name in ("train.csv", "valid.csv"):
        frame = _read_chexpert(root, name)
        assert list(frame.columns) == syn.CHEXPERT_COLUMNS
        split = name[:-4]
        assert (
            frame["Path"]
            .str.match(rf"^CheXpert-v1\.0-small/{split}/patient\d{{5}}/study\d+/view\d_(frontal|lateral)\.jpg$")
            .all()
        )
        for rel in frame["Path"]:
            assert (root / rel).is_file()
        lateral = frame["Frontal/Lateral"] == "Lateral"
        assert frame["Path"].str.contains("_lateral").eq(lateral).all()
        assert set(frame.loc[~lateral, "AP/PA"]) <= {"AP", "PA"}
        assert set(frame.loc[lateral, "AP/PA"]) <= {""}
        assert set(frame["Sex"]) <= {"Male", "Female", "Unknown"}
        assert frame["Age"].str.fullmatch(r"\d+").all()
        labels = set(frame[syn.CHEXPERT_CATEGORIES].to_numpy().ravel())
        if name == "train.csv":
            assert labels == {"1.0", "0.0", "-1.0", ""}
            assert lateral.any()
        else:
            assert labels <= {"1.0", "0.0"}
    train = _read_chexpert(root, "train.csv")
    with Image.open(root / train["Path"].iloc[0]) as img:
        assert img.format == "JPEG" and img.mode == "L"
        assert img.width == 320 and 320 <= img.height <= 390
    assert summary["train"]["rows"] == len(train)


def test_chexpert_masks_match_images(chexpert):
    root, _ = chexpert
    truth = pd.read_csv(root / "CheXpert-v1.0-small" / "synthetic_truth.csv", dtype=str, keep_default_na=False)
    train = _read_chexpert(root, "train.csv")
    assert set(train["Path"]) <= set(truth["Path"])
    for row in truth.head(25).itertuples():
        with Image.open(root / row.Path) as img, Image.open(root / row.lesion_mask) as m:
            assert m.size == img.size
        if row.findings == "No Finding":
            assert int(row.lesion_pixels) == 0


def _single_positive_frontal(frame: pd.DataFrame) -> pd.Series:
    labels = frame[syn.CHEXPERT_CATEGORIES].replace("", np.nan).astype(float).to_numpy()
    positive = labels == 1.0
    keep = (positive.sum(axis=1) == 1) & (frame["Frontal/Lateral"] == "Frontal").to_numpy()
    return pd.Series([syn.CHEXPERT_CATEGORIES[i] for i in positive[keep].argmax(axis=1)]).value_counts()


def test_chexpert_default_counts():
    """The default configuration yields enough single-positive frontal images per category.

    Checked on the plan (what generate_chexpert writes, without rendering: fast).
    """
    plan = syn.plan_chexpert(PARAMS["chexpert"], seed=43)
    train = pd.DataFrame(
        [
            {"Path": im["Path"], "Frontal/Lateral": im["Frontal/Lateral"], **im["labels"]}
            for im in plan
            if im["split"] == "train"
        ]
    )
    counts = _single_positive_frontal(train)
    assert counts.get("No Finding", 0) >= 130
    for cat in syn.CHEXPERT_CATEGORIES[1:]:
        assert counts.get(cat, 0) >= 25, cat
    labels = train[syn.CHEXPERT_CATEGORIES].replace("", np.nan).astype(float).to_numpy()
    frontal = (train["Frontal/Lateral"] == "Frontal").to_numpy()
    assert ((labels == 1.0).sum(axis=1)[frontal] >= 2).sum() >= 30  # multi-positive, to be rejected
    assert (((labels == 1.0).sum(axis=1) == 0) & (labels == -1.0).any(axis=1))[frontal].sum() >= 20  # uncertain only
    assert (~frontal).sum() >= 50


def test_chexpert_files_follow_the_plan(chexpert):
    root, summary = chexpert
    plan = syn.plan_chexpert(SMALL_CHEXPERT, seed=8)
    written = pd.concat([_read_chexpert(root, "train.csv"), _read_chexpert(root, "valid.csv")], ignore_index=True)
    assert list(written["Path"]) == [im["Path"] for im in plan]
    labels = written[syn.CHEXPERT_CATEGORIES].to_numpy().tolist()
    assert labels == [[im["labels"][c] for c in syn.CHEXPERT_CATEGORIES] for im in plan]
    train = written[written["Path"].str.contains("/train/")]
    counts = _single_positive_frontal(train)
    assert summary["train"]["single_positive_frontal_by_category"] == {
        c: int(counts.get(c, 0)) for c in syn.CHEXPERT_CATEGORIES
    }


# --- rendering ------------------------------------------------------------------------------


def _lesion_stats(findings, severity, n=12, seed=0):
    stats = []
    for k in range(n):
        r = rd.render(pm.Rng([seed, k]), 240, 220, findings, severity, "PA")
        stats.append(r)
    return stats


def test_render_shapes_and_normal():
    for view in rd.VIEWS:
        r = rd.render(pm.Rng(1), 150, 170, ["No Finding"], 0.0, view)
        assert r.image.shape == r.lung_mask.shape == r.lesion_mask.shape == (150, 170)
        assert r.image.dtype == np.uint8 and r.lung_mask.dtype == bool
        assert not r.lesion_mask.any()
        assert 0.05 < r.lung_mask.mean() < 0.6


def test_covid_lesions_bilateral_peripheral_lower():
    for r in _lesion_stats(["COVID-19"], 0.6):
        les, lung = r.lesion_mask, r.lung_mask
        assert les.sum() > 50
        assert (les & lung).sum() / les.sum() > 0.9
        h, w = les.shape
        cols = np.nonzero(lung.any(axis=0))[0]
        mid = (cols.min() + cols.max()) / 2
        assert les[:, : int(mid)].sum() > 0 and les[:, int(mid) :].sum() > 0  # both lungs
    # more lesion area in the lower half of the lungs, pooled over images
    upper = lower = 0
    for r in _lesion_stats(["COVID-19"], 0.6, n=16, seed=1):
        rows = np.nonzero(r.lung_mask.any(axis=1))[0]
        mid = (rows.min() + rows.max()) // 2
        upper += r.lesion_mask[:mid].sum()
        lower += r.lesion_mask[mid:].sum()
    assert lower > 1.5 * upper


def test_findings_change_the_image():
    """Each finding draws something (with the same rng, only the finding differs)."""
    normal = rd.render(pm.Rng(3), 200, 200, [], 0.0)
    for finding in rd.FINDINGS:
        if finding == "No Finding":
            continue
        r = rd.render(pm.Rng(3), 200, 200, [finding], 0.8)
        assert r.lesion_mask.any(), finding
        if finding not in ("Cardiomegaly", "Enlarged Cardiomediastinum", "Fracture"):
            assert np.abs(r.image.astype(int) - normal.image.astype(int))[r.lesion_mask].mean() > 3, finding


def test_separable_but_not_trivially():
    """A linear model on 16x16 thumbnails beats chance clearly, but is far from perfect."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(11)
    others = ["No Finding"] * 6 + [c for c in syn.CHEXPERT_CATEGORIES[1:]]
    x, y = [], []
    for k in range(220):
        covid = k % 2 == 0
        finding = "COVID-19" if covid else others[int(rng.integers(len(others)))]
        severity = 0.0 if finding == "No Finding" else 0.15 + 0.85 * rng.beta(1.2, 1.8)
        view = str(rng.choice(["PA", "AP", "AP Supine"]))
        r = rd.render(pm.Rng([11, k]), 128, 128, [finding], severity, view)
        thumb = np.asarray(Image.fromarray(r.image).resize((16, 16), Image.Resampling.BOX), dtype=float)
        x.append(thumb.ravel() / 255.0)
        y.append(int(covid))
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000))
    auc = cross_val_score(model, np.array(x), np.array(y), cv=5, scoring="roc_auc").mean()
    assert 0.6 < auc < 0.95, auc
