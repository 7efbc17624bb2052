"""Exact numbers of the negatives sampling and the patient-level split.

What the code promises (deepcovid/data/split.py, deepcovid/data/negatives.py), checked to the image:

- make_split: patients joined by a shared file (same source/relpath) or by identical content
  (same sha256) form one group with ALL their images; groups never cross parts.
- make_split: COVID test images are whole groups adding up to ``covid_test_images``; the
  remaining COVID images and the negatives' training pool (groups without a COVID image) each
  send whole groups adding up to ``round(val_fraction * images)`` to validation (as close
  below as the group sizes allow, never above); the negatives' test pool goes to test; a
  negative image in a group with a COVID image follows that group.
- sample_chexpert: per category, exactly the asked counts (no_finding / per_category for the
  train and test pools) when the category holds enough images; otherwise what exists, shared
  in proportion to the requests: test = min(asked_test, round(available * asked_test / asked_total)),
  train = min(asked_train, available - that share).
- assign_pools_by_patient / the public dataset: each (source, patient), never each image, is
  put in the test pool with probability ``public_test_fraction``: the i-th patient in sorted
  (source, patient) order goes to test when the i-th draw of default_rng(seed).random() is below
  the fraction.

The stage tests build data/raw by hand (metadata only, plus a few image files for the split
stage's sha256) and run stages/negatives.py and stages/split.py as DVC would.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deepcovid.data.negatives import assign_pools_by_patient, sample_chexpert
from deepcovid.data.split import check_no_leak, make_split
from deepcovid.labels import CHEXPERT_CATEGORIES
from workspace import make_workspace, read, run_stage, write_raw_images

# ------------------------------------------------------------------------------ builders


def _pos(patient: str, relpath: str, sha: str | None = None, source: str = "cohen") -> dict:
    return {
        "source": source,
        "relpath": relpath,
        "patient": patient,
        "finding": "COVID-19",
        "view": "PA",
        "label": 1,
        "group": "covid",
        "category": "COVID-19",
        "sha256": f"sha-{source}-{relpath}" if sha is None else sha,
    }


def _neg(patient: str, relpath: str, pool: str, sha: str | None = None, source: str = "chexpert") -> dict:
    return {
        "source": source,
        "relpath": relpath,
        "patient": patient,
        "finding": "",
        "view": "AP",
        "label": 0,
        "group": "normal",
        "category": "No Finding",
        "pool": pool,
        "sha256": f"sha-{source}-{relpath}" if sha is None else sha,
    }


def _patients(prefix: str, sizes: dict[int, int], make, **kw) -> list[dict]:
    """``sizes`` = {images per patient: number of patients}."""
    rows, n = [], 0
    for size, count in sizes.items():
        for _ in range(count):
            rows += [make(f"{prefix}{n:03d}", f"{prefix}{n:03d}/{k}.png", **kw) for k in range(size)]
            n += 1
    return rows


# ------------------------------------------------------------------------------ groups


def _joined_tables(shared_sha: str | None):
    """``shared_sha``: the digest of the files listed under two patients; "" is what the split
    stage records for a file it cannot read, and then only the file's name can join them."""
    a1 = e0 = shared_sha
    pos = [
        # A has three images of its own; B two of its own and A's file a/1.png under its id
        *[_pos("A", f"a/{k}.png", sha=a1 if k == 1 else None) for k in range(3)],
        *[_pos("B", f"b/{k}.png") for k in range(2)],
        _pos("B", "a/1.png", sha=a1),
        # C and D: each with own images, D's d/2.png byte-identical to C's c/1.png
        *[_pos("C", f"c/{k}.png") for k in range(2)],
        *[_pos("D", f"d/{k}.png") for k in range(2)],
        _pos("D", "d/2.png", sha="sha-cohen-c/1.png"),
        # a chain: E shares a file with F, F shares content with G (each with own images)
        *[_pos("E", f"e/{k}.png", sha=e0 if k == 0 else None) for k in range(2)],
        *[_pos("F", f"f/{k}.png") for k in range(2)],
        _pos("F", "e/0.png", sha=e0),
        _pos("F", "f/9.png", sha="sha-cohen-g/0.png"),
        *[_pos("G", f"g/{k}.png") for k in range(2)],
        # H, a COVID patient, whose image is byte-identical to one of negative patient N's
        *[_pos("H", f"h/{k}.png") for k in range(2)],
    ]
    pos += _patients("p", {1: 30, 2: 6}, _pos)
    neg = [
        *[_neg("patient90000", f"train/patient90000/s{k}/v.jpg", "test") for k in range(2)],
        _neg("patient90000", "train/patient90000/s9/v.jpg", "test", sha="sha-cohen-h/1.png"),
    ]
    neg += _patients("n", {1: 20, 2: 5}, _neg, pool="train") + _patients("t", {1: 10}, _neg, pool="test")
    return pd.DataFrame(pos), pd.DataFrame(neg)


JOINED = {  # patients that must share one group, and that group's exact size in images
    "A+B": ({("cohen", "A"), ("cohen", "B")}, 5),
    "C+D": ({("cohen", "C"), ("cohen", "D")}, 5),
    "E+F+G": ({("cohen", "E"), ("cohen", "F"), ("cohen", "G")}, 7),
    "H+N": ({("cohen", "H"), ("chexpert", "patient90000")}, 5),
}


@pytest.mark.parametrize("shared_sha", [None, ""], ids=["digest", "unreadable"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_patients_sharing_a_file_or_content_keep_all_their_images_together(seed, shared_sha):
    pos, neg = _joined_tables(shared_sha)
    manifest, report = make_split(pos, neg, covid_test_images=12, val_fraction=0.3, seed=seed)
    check_no_leak(manifest)
    assert report["rows_listed_twice"] == 2  # a/1.png under B, e/0.png under F: one row each
    assert manifest["image_id"].is_unique and len(manifest) == len(pos) + len(neg) - 2
    key = list(zip(manifest["source"], manifest["patient"]))
    for name, (patients, size) in JOINED.items():
        rows = manifest[[k in patients for k in key]]
        assert rows["split_group"].nunique() == 1, f"{name}: {rows.groupby('patient')['split_group'].unique()}"
        assert rows["split"].nunique() == 1, name
        # the group holds every image of those patients and nothing else
        assert (manifest["split_group"] == rows["split_group"].iloc[0]).sum() == size == len(rows), name
    # the negative patient joined to a COVID patient follows it, whatever its pool said
    hn = manifest[manifest["patient"].isin(["H", "patient90000"])]
    assert report["negatives_of_covid_patients"] == {
        "images": 3,
        "excluded": False,
        "image_ids": sorted(hn.loc[hn["label"] == 0, "image_id"]),
    }
    assert hn["split"].nunique() == 1
    # nobody else was joined: every other patient is a group of its own
    others = manifest[[not any(k in p for p, _ in JOINED.values()) for k in key]]
    assert (others.groupby("split_group")["patient"].nunique() == 1).all()
    assert others.groupby(["source", "patient"])["split_group"].nunique().eq(1).all()


def test_joined_patients_end_in_one_part_even_when_split_apart_would_fit():
    """Sizes chosen so that the test part (3 COVID images) can take B's own two images plus one
    more patient but not the whole A+B group (5): a split that forgot the join would put B
    alone somewhere else than A for some seed. The shared file is unreadable (no digest): only
    its name joins A and B."""
    pos = pd.DataFrame(
        [
            *[_pos("A", f"a/{k}.png", sha="" if k == 1 else None) for k in range(3)],
            *[_pos("B", f"b/{k}.png") for k in range(2)],
            _pos("B", "a/1.png", sha=""),
            *_patients("p", {1: 12}, _pos),
        ]
    )
    neg = pd.DataFrame(_patients("n", {1: 10}, _neg, pool="train"))
    for seed in range(12):
        manifest, _ = make_split(pos, neg, covid_test_images=3, val_fraction=0.4, seed=seed)
        ab = manifest[manifest["patient"].isin(["A", "B"])]
        assert len(ab) == 5 and ab["split"].nunique() == 1, (seed, ab[["image_id", "split"]].values.tolist())
        assert ab["split"].iloc[0] != "test"  # 5 images do not fit in 3


# ------------------------------------------------------------------------------ split counts

# COVID-19: 30 patients with 1 image, 8 with 2, 4 with 3: 58 images, 42 patients.
# Negatives, training pool: 30 x 1, 10 x 2, 5 x 3: 65 images, 45 patients; test pool 12 x 2.
# With at least as many one-image groups as the target, the greedy choice of whole groups
# always reaches the target exactly (if it ended below, every one-image group would be in).
COVID_SIZES, TRAIN_POOL_SIZES, TEST_POOL_SIZES = {1: 30, 2: 8, 3: 4}, {1: 30, 2: 10, 3: 5}, {2: 12}
COVID_TEST = 10
# val_fraction -> (COVID val images, negative val images), by hand:
#   COVID: round(f * (58 - 10) = 48 images): 0.2 -> 9.6 -> 10; 0.27 -> 12.96 -> 13; 0.35 -> 16.8 -> 17
#   negatives: round(f * 65 images): 0.2 -> 13; 0.27 -> 17.55 -> 18; 0.35 -> 22.75 -> 23
# (by patients instead it would be round(f * 32) / round(f * 45) patients: 6 / 9, 9 / 12, 11 / 16)
EXPECTED_VAL = {0.2: (10, 13), 0.27: (13, 18), 0.35: (17, 23)}


def _count_tables():
    pos = pd.DataFrame(_patients("c", COVID_SIZES, _pos))
    neg = pd.DataFrame(
        _patients("n", TRAIN_POOL_SIZES, _neg, pool="train") + _patients("t", TEST_POOL_SIZES, _neg, pool="test")
    )
    return pos, neg


@pytest.mark.parametrize("val_fraction", sorted(EXPECTED_VAL))
@pytest.mark.parametrize("seed", [0, 7])
def test_split_counts_exact(val_fraction, seed):
    pos, neg = _count_tables()
    manifest, report = make_split(pos, neg, covid_test_images=COVID_TEST, val_fraction=val_fraction, seed=seed)
    covid_val, neg_val = EXPECTED_VAL[val_fraction]
    counts = manifest.groupby(["split", "label"]).size()
    assert counts["test", 1] == COVID_TEST == report["test"]["covid"]
    assert counts["val", 1] == covid_val == report["val"]["covid"]
    assert counts["train", 1] == 58 - COVID_TEST - covid_val == report["train"]["covid"]
    assert counts["val", 0] == neg_val == report["val"]["normal"]
    assert counts["train", 0] == 65 - neg_val == report["train"]["normal"]
    assert counts["test", 0] == 24 == report["test"]["normal"]  # the whole test pool, nothing else
    assert (manifest.loc[manifest["pool"] == "test", "split"] == "test").all()
    assert (manifest.loc[manifest["pool"] == "train", "split"] != "test").all()
    patients = manifest.groupby(["split"])["patient"].nunique()
    assert report["val"]["patients"] == patients["val"] and report["test"]["patients"] == patients["test"]


def test_negative_following_covid_patient_adds_to_val_exactly():
    """A negative image of a COVID patient follows that patient and does not count in the
    negatives' own val_fraction: negatives in val = round(f * 65) + those following COVID val groups."""
    pos, neg = _count_tables()
    extra = pd.DataFrame([_neg(p, f"{p}/neg.png", "train", source="cohen") for p in ("c000", "c031", "c040")])
    for seed in range(4):
        manifest, report = make_split(
            pos, pd.concat([neg, extra], ignore_index=True), covid_test_images=COVID_TEST, val_fraction=0.27, seed=seed
        )
        assert report["negatives_of_covid_patients"]["images"] == 3
        covid_split = manifest[manifest["label"] == 1].groupby("patient")["split"].first()
        following_val = sum(covid_split[p] == "val" for p in ("c000", "c031", "c040"))
        assert (manifest["label"].eq(0) & manifest["split"].eq("val")).sum() == 18 + following_val
        assert (manifest["label"].eq(1) & manifest["split"].eq("val")).sum() == 13


@pytest.mark.parametrize("val_fraction, expected", [(0.33, 12), (0.36, 14), (0.05, 2)])
def test_val_never_above_target_when_groups_do_not_fit(val_fraction, expected):
    """Only two-image negative patients (40 images): the target round(f * 40) (13, 14, 2) is
    reached or, when odd, missed by one from below (12), never exceeded."""
    pos = pd.DataFrame(_patients("c", {1: 20}, _pos))
    neg = pd.DataFrame(_patients("n", {2: 20}, _neg, pool="train"))
    for seed in range(3):
        manifest, _ = make_split(pos, neg, covid_test_images=5, val_fraction=val_fraction, seed=seed)
        assert (manifest["label"].eq(0) & manifest["split"].eq("val")).sum() == expected


# ------------------------------------------------------------------------------ CheXpert sampling

COUNTS = {"train": {"no_finding": 15, "per_category": 4}, "test": {"no_finding": 25, "per_category": 5}}
# category -> available frontal single-label images (one per patient); by hand, asked 4 + 5 = 9:
#   enough (>= 9, or >= 40 for No Finding): exactly train 4 / test 5 (No Finding 15 / 25)
#   Fracture 3:       test = min(5, round(3 * 5 / 9) = round(1.67) = 2) = 2, train = min(4, 3 - 2) = 1
#   Pleural Other 7:  test = min(5, round(7 * 5 / 9) = round(3.89) = 4) = 4, train = min(4, 7 - 4) = 3
#   Lung Lesion 0:    0 / 0
#   Edema 9:          exactly enough: 4 / 5
AVAILABLE = {c: 20 for c in CHEXPERT_CATEGORIES} | {
    "No Finding": 100,
    "Fracture": 3,
    "Pleural Other": 7,
    "Lung Lesion": 0,
    "Edema": 9,
}
EXPECTED_TAKEN = {c: {"train": 4, "test": 5} for c in CHEXPERT_CATEGORIES} | {
    "No Finding": {"train": 15, "test": 25},
    "Fracture": {"train": 1, "test": 2},
    "Pleural Other": {"train": 3, "test": 4},
    "Lung Lesion": {"train": 0, "test": 0},
}


def _candidates() -> pd.DataFrame:
    rows, n = [], 0
    for cat in CHEXPERT_CATEGORIES:
        for _ in range(AVAILABLE[cat]):
            rows.append(
                {
                    "source": "chexpert",
                    "relpath": f"train/patient{n:05d}/study1/view1_frontal.jpg",
                    "patient": f"patient{n:05d}",
                    "view": "AP",
                    "csv": "train.csv",
                    "category": cat,
                }
            )
            n += 1
    return pd.DataFrame(rows)


def _check_taken(chosen: pd.DataFrame, report: dict) -> None:
    by = chosen.groupby(["category", "pool"]).size()
    for cat in CHEXPERT_CATEGORIES:
        for pool in ("train", "test"):
            assert by.get((cat, pool), 0) == EXPECTED_TAKEN[cat][pool], (cat, pool)
        key = "no_finding" if cat == "No Finding" else "per_category"
        assert report[cat] == {
            "available": AVAILABLE[cat],
            "asked": {p: COUNTS[p][key] for p in ("train", "test")},
            "taken": EXPECTED_TAKEN[cat],
        }, cat
    assert len(chosen) == sum(t["train"] + t["test"] for t in EXPECTED_TAKEN.values())
    assert chosen.groupby("patient")["pool"].nunique().eq(1).all()
    assert set(chosen.loc[chosen["category"] == "No Finding", "group"]) == {"normal"}
    assert set(chosen.loc[chosen["category"] != "No Finding", "group"]) == {"other-disease"}
    assert (chosen["label"] == 0).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_chexpert_counts_per_category_exact(seed):
    chosen, report = sample_chexpert(_candidates(), COUNTS, seed=seed)
    _check_taken(chosen, report)


def _write_chexpert(root: Path) -> None:
    """A CheXpert train.csv (frontal single-label rows as AVAILABLE, plus rows the selection drops)."""
    rows = []

    def row(path, frontal, labels):
        rows.append(
            {
                "Path": f"CheXpert-v1.0-small/{path}",
                "Sex": "Female",
                "Age": "50",
                "Frontal/Lateral": "Frontal" if frontal else "Lateral",
                "AP/PA": "AP" if frontal else "",
                **{c: labels.get(c, "") for c in CHEXPERT_CATEGORIES},
            }
        )

    for _, r in _candidates().iterrows():
        other = "Fracture" if r["category"] != "Fracture" else "Edema"  # a negative (0.0) label beside it
        row(r["relpath"], True, {r["category"]: "1.0", other: "0.0"})
        row(r["relpath"].replace("view1_frontal", "view2_lateral"), False, {r["category"]: "1.0"})  # lateral
    for n in range(90000, 90030):  # two positive categories, or only uncertain ones: never selected
        cats = CHEXPERT_CATEGORIES
        row(
            f"train/patient{n:05d}/study1/view1_frontal.jpg",
            True,
            {cats[n % 14]: "1.0", cats[(n + 1) % 14]: "1.0"} if n % 2 else {cats[n % 14]: "-1.0"},
        )
    root.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)


def test_negatives_stage_chexpert_counts_exact(tmp_path):
    ws = make_workspace(
        tmp_path, **{"dataset": "synthetic", "negatives.counts.synthetic": COUNTS, "negatives.use_valid_csv": True}
    )
    _write_chexpert(ws / "data/raw/chexpert/CheXpert-v1.0-small")
    (ws / "data/raw/sources.json").write_text(
        json.dumps({"dataset": "synthetic", "roots": {"cohen": "cohen", "chexpert": "chexpert/CheXpert-v1.0-small"}})
    )
    run_stage(ws, "negatives")
    chosen = read(ws / "data/negatives/negatives.csv").astype({"label": int})
    report = json.loads((ws / "data/negatives/report.json").read_text())
    assert report["chexpert"]["frontal_single_label"] == sum(AVAILABLE.values())
    _check_taken(chosen, report["chexpert"]["categories"])


# ------------------------------------------------------------------------------ public test fraction


def _public_rows() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Actualmed and Cohen metadata: 29 + 17 negative patients with 1..5 usable images each,
    plus rows the selection drops (COVID-19, lateral, CT, empty and todo findings)."""
    rng = np.random.default_rng(5)

    def meta(source, n_patients, findings):
        rows = []
        for p in range(n_patients):
            patient = f"{p * 7 % n_patients}"  # ids out of order, and "10" < "2" as text
            for k in range(int(rng.integers(1, 6))):
                rows.append(
                    {
                        "patientid": patient,
                        "finding": findings[p % len(findings)],
                        "view": "PA",
                        "modality": "X-ray",
                        "folder": "images",
                        "filename": f"{source}-{patient}-{k}.png",
                    }
                )
        rows += [  # never negatives: under patient ids of their own
            {
                "patientid": "900",
                "finding": "COVID-19",
                "view": "PA",
                "modality": "X-ray",
                "folder": "images",
                "filename": f"{source}-900.png",
            },
            {
                "patientid": "901",
                "finding": findings[0],
                "view": "L",
                "modality": "X-ray",
                "folder": "images",
                "filename": f"{source}-901.png",
            },
            {
                "patientid": "902",
                "finding": findings[0],
                "view": "PA",
                "modality": "CT",
                "folder": "images",
                "filename": f"{source}-902.png",
            },
            {
                "patientid": "903",
                "finding": "todo",
                "view": "PA",
                "modality": "X-ray",
                "folder": "images",
                "filename": f"{source}-903.png",
            },
            {
                "patientid": "904",
                "finding": "",
                "view": "AP",
                "modality": "X-ray",
                "folder": "images",
                "filename": f"{source}-904.png",
            },
        ]
        return pd.DataFrame(rows)

    return (
        meta("actualmed", 29, ["No finding"]),
        meta("cohen", 17, ["Pneumonia/Viral/SARS", "No Finding", "Pneumonia/Bacterial/Streptococcus"]),
    )


def _expected_test_patients(keys: list[tuple[str, str]], fraction: float, seed: int) -> set:
    """The documented rule, by hand: patients in sorted (source, patient) order, one draw each."""
    keys = sorted(set(keys))
    draws = np.random.default_rng(seed).random(len(keys))
    return {k for k, d in zip(keys, draws) if d < fraction}


@pytest.mark.parametrize("fraction", [0.35, 0.6])
def test_public_test_fraction_by_patient(fraction):
    frame = pd.concat([m.assign(source=name) for name, m in zip(("actualmed", "cohen"), _public_rows())])
    frame = frame[frame["patientid"].astype(int) < 900].rename(columns={"patientid": "patient"})
    out = assign_pools_by_patient(frame, fraction, seed=42)
    assert len(out) == len(frame) and list(out.index) == list(frame.index)
    keys = list(zip(out["source"], out["patient"]))
    assert len(set(keys)) == 46
    pools = out.assign(key=keys).groupby("key")["pool"].agg(set)
    assert pools.map(len).eq(1).all(), "a patient's images in both pools"
    test_patients = {k for k, p in pools.items() if p == {"test"}}
    assert test_patients == _expected_test_patients(keys, fraction, 42)


def test_public_test_fraction_whole_patients_about_the_share():
    """4000 patients, one with 1 image for every one with 9 (in alternation): every patient's
    images in one pool, and about ``fraction`` of the PATIENTS in test (binomial sd 0.0075: 4 sd)."""
    sizes = [1 if p % 2 else 9 for p in range(4000)]
    frame = pd.DataFrame(
        {
            "source": "actualmed",
            "patient": np.repeat([f"{p:05d}" for p in range(4000)], sizes),
            "relpath": [f"i{k}.png" for k in range(sum(sizes))],
        }
    )
    out = assign_pools_by_patient(frame, 0.35, seed=3)
    per_patient = out.groupby("patient")["pool"].agg(lambda p: set(p))
    assert per_patient.map(len).eq(1).all()
    share = (per_patient.map(lambda p: p == {"test"})).mean()
    assert abs(share - 0.35) < 0.03


def test_negatives_stage_public_test_fraction_exact(tmp_path):
    fraction, seed = 0.35, 11
    ws = make_workspace(tmp_path, **{"dataset": "public", "seed": seed, "negatives.public_test_fraction": fraction})
    actualmed, cohen = _public_rows()
    for name, meta in (("actualmed", actualmed), ("cohen", cohen)):
        (ws / "data/raw" / name).mkdir(parents=True)
        meta.to_csv(ws / "data/raw" / name / "metadata.csv", index=False)
    (ws / "data/raw/sources.json").write_text(
        json.dumps({"dataset": "public", "roots": {"cohen": "cohen", "actualmed": "actualmed"}})
    )
    run_stage(ws, "negatives")
    out = read(ws / "data/negatives/negatives.csv")
    # every usable negative image, each once: 29 + 17 patients, no COVID / lateral / CT / todo / empty rows
    usable = {
        (s, f"images/{f}")
        for s, m in (("actualmed", actualmed), ("cohen", cohen))
        for f, p in zip(m["filename"], m["patientid"])
        if int(p) < 900
    }
    assert set(zip(out["source"], out["relpath"])) == usable and len(out) == len(usable)
    keys = list(zip(out["source"], out["patient"]))
    assert len(set(keys)) == 46
    pools = out.assign(key=keys).groupby("key")["pool"].agg(set)
    assert pools.map(len).eq(1).all(), "a patient's images in both pools"
    expected = _expected_test_patients(keys, fraction, seed)
    assert {k for k, p in pools.items() if p == {"test"}} == expected
    report = json.loads((ws / "data/negatives/report.json").read_text())
    n_test_images = sum(k in expected for k in keys)
    assert sum(report["selected"]["test"].values()) == n_test_images
    assert sum(report["selected"]["train"].values()) == len(out) - n_test_images


# ------------------------------------------------------------------------------ the split stage


def test_split_stage_joins_by_real_file_content_and_counts_exact(tmp_path):
    """stages/split.py on hand-made filtered positives and negatives: the sha256 comes from the
    files themselves (two byte-identical files under two patients join them; a missing file
    listed under two patients joins them by its name alone), and the counts follow
    split.covid_test_images and split.val_fraction exactly."""
    ws = make_workspace(
        tmp_path,
        **{
            "dataset": "synthetic",
            "seed": 5,
            "split.covid_test_images": COVID_TEST,
            "split.val_fraction": 0.27,
            "split.exclude_negatives_of_covid_patients": False,
        },
    )
    pos, neg = _count_tables()
    joined = pd.DataFrame(
        [
            *[_pos("A", f"a/{k}.png") for k in range(3)],
            *[_pos("B", f"b/{k}.png") for k in range(2)],
            _pos("B", "a/1.png"),
            *[_pos("C", f"c/{k}.png") for k in range(2)],
            *[_pos("D", f"d/{k}.png") for k in range(3)],
            *[_pos("H", f"h/{k}.png") for k in range(2)],
        ]
    )
    pos = pd.concat([pos, joined], ignore_index=True)
    neg = pd.concat(
        [neg, pd.DataFrame([_neg("patient90000", f"train/patient90000/s{k}/v.jpg", "test") for k in range(3)])],
        ignore_index=True,
    )
    raw = ws / "data/raw"
    roots = {"cohen": "cohen", "chexpert": "chexpert/CheXpert-v1.0-small"}
    write_raw_images(raw, roots, pos, neg)
    (raw / "cohen/a/1.png").unlink()  # listed under A and B, missing: no digest
    (raw / "cohen/d/2.png").write_bytes((raw / "cohen/c/1.png").read_bytes())  # same radiograph, C and D
    (raw / roots["chexpert"] / "train/patient90000/s2/v.jpg").write_bytes((raw / "cohen/h/1.png").read_bytes())
    (raw / "sources.json").write_text(json.dumps({"dataset": "synthetic", "roots": roots}))
    for name, frame in (("filtered/positives.csv", pos), ("negatives/negatives.csv", neg)):
        (ws / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        frame.drop(columns="sha256").to_csv(ws / "data" / name, index=False)
    run_stage(ws, "duplicates")
    run_stage(ws, "split")
    manifest = read(ws / "data/manifest.csv").astype({"label": int})
    report = json.loads((ws / "metrics/data.json").read_text())
    check_no_leak(manifest)
    for patients, size in ((["A", "B"], 5), (["C", "D"], 5), (["H", "patient90000"], 5)):
        rows = manifest[manifest["patient"].isin(patients)]
        assert len(rows) == size and rows["split_group"].nunique() == 1 and rows["split"].nunique() == 1, patients
    assert report["rows_listed_twice"] == 1 and report["negatives_of_covid_patients"]["images"] == 3
    sha = manifest.set_index("image_id")["sha256"]
    assert sha["cohen/d/2.png"] == sha["cohen/c/1.png"] != sha["cohen/c/0.png"]
    assert sha["cohen/a/1.png"] == "" and (sha.drop("cohen/a/1.png") != "").all()
    # COVID: 58 + 12 images, 10 to test, round(0.27 * 60) = 16.2 -> 16 to val.
    # Negatives: the training pool's 65 images give round(0.27 * 65) = 18 to val, plus patient90000's 3
    # images when H is in val; its test pool (24 + patient90000's 3 unless H is elsewhere) to test.
    h_split = manifest.loc[manifest["patient"] == "H", "split"].iloc[0]
    counts = manifest.groupby(["split", "label"]).size()
    assert counts["test", 1] == 10 and counts["val", 1] == 16 and counts["train", 1] == 44
    assert counts["val", 0] == 18 + 3 * (h_split == "val")
    assert counts["test", 0] == 24 + 3 * (h_split == "test")
    assert counts["train", 0] == 65 - 18 + 3 * (h_split == "train")
