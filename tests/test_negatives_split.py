"""Negative sampling, the patient-level split and the augmentation leak check."""

import numpy as np
import pandas as pd
import pytest

from deepcovid.config import Augment
from deepcovid.data.augment import AugmentError, augment_image, build_transform, check_augmented, copy_seed
from deepcovid.data.negatives import chexpert_single_label, sample_chexpert
from deepcovid.data.split import SplitError, check_no_leak, make_split
from deepcovid.labels import CHEXPERT_CATEGORIES


def _chexpert_table(n_patients=300, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        for k in range(rng.integers(1, 4)):
            labels = {c: np.nan for c in CHEXPERT_CATEGORIES}
            main = CHEXPERT_CATEGORIES[rng.integers(0, 14)] if rng.random() < 0.6 else "No Finding"
            labels[main] = 1.0
            if rng.random() < 0.15:  # a second positive: not single-label
                labels[CHEXPERT_CATEGORIES[rng.integers(0, 14)]] = 1.0
            if rng.random() < 0.1:
                labels[CHEXPERT_CATEGORIES[rng.integers(0, 14)]] = -1.0
            rows.append(
                {
                    "source": "chexpert",
                    "relpath": f"train/patient{p:05d}/study{k}/view1_frontal.jpg",
                    "patient": f"patient{p:05d}",
                    "frontal": rng.random() > 0.1,
                    "view": "AP",
                    "csv": "train.csv",
                    **labels,
                }
            )
    return pd.DataFrame(rows)


def test_single_label_selection():
    table = _chexpert_table()
    single = chexpert_single_label(table)
    assert single["relpath"].isin(table.loc[table["frontal"], "relpath"]).all()
    merged = table.set_index("relpath").loc[single["relpath"], CHEXPERT_CATEGORIES]
    assert ((merged.to_numpy() == 1.0).sum(axis=1) == 1).all()
    assert (merged.to_numpy().argmax(axis=1) >= 0).all()


def test_sample_counts_pools_disjoint_and_shortfall():
    single = chexpert_single_label(_chexpert_table())
    counts = {"train": {"no_finding": 40, "per_category": 5}, "test": {"no_finding": 60, "per_category": 4}}
    chosen, report = sample_chexpert(single, counts, seed=1)
    by_pool = chosen.groupby(["pool", "category"]).size()
    assert by_pool["train", "No Finding"] == 40 and by_pool["test", "No Finding"] == 60
    assert by_pool["train", "Cardiomegaly"] <= 5
    pools = chosen.groupby("patient")["pool"].nunique()
    assert (pools == 1).all(), "a patient is in both pools"
    assert set(chosen["group"]) == {"normal", "other-disease"}
    assert (chosen.loc[chosen["category"] == "No Finding", "group"] == "normal").all()
    assert not chosen["relpath"].duplicated().any()
    # ask for far more than exists: take what exists and report it
    big = {
        "train": {"no_finding": 10_000, "per_category": 10_000},
        "test": {"no_finding": 10_000, "per_category": 10_000},
    }
    chosen, report = sample_chexpert(single, big, seed=1)
    for rep in report.values():
        assert rep["taken"]["train"] + rep["taken"]["test"] <= rep["available"]
        assert rep["taken"]["train"] < rep["asked"]["train"]
    again, _ = sample_chexpert(single, counts, seed=1)
    assert again.equals(sample_chexpert(single, counts, seed=1)[0])


def _positives(n_patients=60, per=2):
    rows = []
    for p in range(n_patients):
        for k in range(per):
            rows.append(
                {
                    "source": "cohen",
                    "relpath": f"images/p{p}_{k}.jpg",
                    "patient": str(p),
                    "finding": "COVID-19",
                    "view": "PA",
                    "label": 1,
                    "group": "covid",
                    "category": "COVID-19",
                    "sha256": f"c{p}_{k}",
                }
            )
    return pd.DataFrame(rows)


def _negatives(n=80):
    rows = []
    for p in range(n):
        rows.append(
            {
                "source": "chexpert",
                "relpath": f"train/patient{p:05d}/s/v.jpg",
                "patient": f"patient{p:05d}",
                "finding": "",
                "view": "AP",
                "label": 0,
                "group": "normal",
                "category": "No Finding",
                "pool": "test" if p % 3 == 0 else "train",
                "sha256": f"n{p}",
            }
        )
    return pd.DataFrame(rows)


def test_split_counts_and_no_leak():
    manifest, report = make_split(_positives(), _negatives(), covid_test_images=40, val_fraction=0.25, seed=3)
    check_no_leak(manifest)
    assert report["test"]["covid"] == 40
    # whole two-image patients, target round(0.25 * 80) = 20 images: reached exactly
    assert report["val"]["covid"] == 20 and report["train"]["covid"] == 60
    # negatives: 27 in the test pool (p % 3 == 0) all to test; of the 53 in the training pool
    # round(0.25 * 53) = 13 to val (one-image patients: exactly)
    assert report["test"]["normal"] == 27 and report["val"]["normal"] == 13 and report["train"]["normal"] == 40
    assert (manifest.loc[manifest["pool"] == "test", "split"] == "test").all()
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert manifest["image_id"].is_unique
    again, _ = make_split(_positives(), _negatives(), 40, 0.25, seed=3)
    assert again.equals(manifest)


def test_file_under_two_patients_and_identical_content_join():
    pos = _positives(10, 1)
    # the same file listed under a second patient id (as in the real Cohen data)
    twin = pos.iloc[[0]].assign(patient="99")
    # byte-identical content under another name and patient
    copy = pos.iloc[[1]].assign(relpath="images/copy.jpg", patient="98")
    neg = _negatives(6)
    # a negative image of a COVID patient must follow that patient
    neg.loc[0, ["source", "patient", "pool"]] = ["cohen", "0", "train"]
    manifest, report = make_split(pd.concat([pos, twin, copy]), neg, covid_test_images=5, val_fraction=0.2, seed=0)
    assert report["rows_listed_twice"] == 1
    g = manifest.set_index("image_id")["split_group"]
    assert g["cohen/images/p1_0.jpg"] == g["cohen/images/copy.jpg"]
    assert manifest.loc[manifest["patient"].isin(["0", "99"]), "split_group"].nunique() == 1
    assert manifest.loc[manifest["patient"].isin(["0", "99"]), "split"].nunique() == 1
    check_no_leak(manifest)


def test_leak_detected():
    manifest, _ = make_split(_positives(10, 2), _negatives(10), covid_test_images=4, val_fraction=0.2, seed=0)
    broken = manifest.copy()
    row = broken.index[(broken["label"] == 1) & (broken["split"] == "train")][0]
    broken.loc[row, "split"] = "test"
    with pytest.raises(SplitError, match="more than one split"):
        check_no_leak(broken)


def test_augment_deterministic_and_leak_check():
    cfg = {
        "hflip_p": 0.5,
        "rotation_degrees": 10,
        "translate": 0.05,
        "scale": [0.95, 1.05],
        "shear_degrees": 5,
        "elastic_alpha": 3.0,
        "elastic_grid": 5,
    }
    transform = build_transform(Augment(copies=1, **cfg))
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    a = augment_image(image, transform, copy_seed(42, "cohen/x.png", 1))
    b = augment_image(image, transform, copy_seed(42, "cohen/x.png", 1))
    c = augment_image(image, transform, copy_seed(42, "cohen/x.png", 2))
    assert a.shape == image.shape and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c) and not np.array_equal(a, image)

    manifest, _ = make_split(_positives(10, 2), _negatives(10), covid_test_images=4, val_fraction=0.2, seed=0)
    train_parent = manifest.loc[(manifest["split"] == "train") & (manifest["label"] == 1)].iloc[0]
    aug = pd.DataFrame(
        [{"image_id": train_parent["image_id"] + "#aug1", "parent": train_parent["image_id"], "split": "train"}]
    )
    check_augmented(aug, manifest)
    test_parent = manifest.loc[(manifest["split"] == "test") & (manifest["label"] == 1)].iloc[0]
    with pytest.raises(AugmentError, match="not in the training split"):
        check_augmented(aug.assign(parent=test_parent["image_id"]), manifest)
    # a training parent whose patient group also has a held-out image (a corrupted manifest)
    bad = manifest.copy()
    bad.loc[bad["image_id"] == test_parent["image_id"], "split_group"] = train_parent["split_group"]
    with pytest.raises(AugmentError, match="validation or test"):
        check_augmented(aug, bad)
