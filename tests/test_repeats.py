"""Repeated patient-grouped splits (deepcovid/evaluation/repeats.py, stage repeats).

The grouped split against the split stage's rules (property-based), the spread statistics against
numpy and the statistics module, the retraining on planted features (signal found, group
memorisation impossible, the pipeline's own split used as given), and the stage's outputs and
one-line errors on a tiny synthetic pipeline.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import statistics

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepcovid.config import load_config
from deepcovid.evaluation import repeats as R
from workspace import REPO, copy_without, error_line, run_stage

TRAIN = load_config(REPO / "params.yaml").train.model_copy(
    update=dict(
        mode="last_layer",
        epochs=30,
        batch_size=20,
        lr=0.01,
        weight_decay=0.0,
        patience=0,
        shuffle_labels=False,
        class_weight="none",
    )
)


def _table(sizes_pos: list[int], sizes_neg: list[int], neg_in_pos: int = 0) -> pd.DataFrame:
    """One row per image: COVID-19 groups (``neg_in_pos`` negatives added to the first ones) and
    negative-only groups."""
    rows = []
    for g, n in enumerate(sizes_pos):
        rows += [{"split_group": f"p{g}", "label": 1}] * n
        if g < neg_in_pos:
            rows.append({"split_group": f"p{g}", "label": 0})
    for g, n in enumerate(sizes_neg):
        rows += [{"split_group": f"n{g}", "label": 0}] * n
    return pd.DataFrame(rows)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 4), min_size=4, max_size=30),
    st.lists(st.integers(1, 3), min_size=4, max_size=40),
    st.integers(0, 3),
    st.floats(0.0, 0.5),
    st.integers(0, 2**32 - 1),
)
def test_grouped_split_keeps_groups_whole_and_never_exceeds_targets(pos, neg, neg_in_pos, val_fraction, seed):
    table = _table(pos, neg, neg_in_pos)
    test_pos, test_neg = sum(pos) // 3, sum(neg) // 3
    split = R.grouped_split(table, test_pos, test_neg, val_fraction, np.random.default_rng(seed))
    assert split.isin(["train", "val", "test"]).all()
    assert (split.groupby(table["split_group"]).nunique() == 1).all()  # no group on two sides
    covid_group = table["split_group"].str.startswith("p")
    test = split == "test"
    assert (table["label"] == 1)[test].sum() <= test_pos
    assert (~covid_group & test).sum() <= test_neg
    if max(pos) == 1:  # single-image groups always fill the target exactly
        assert (table["label"] == 1)[test].sum() == test_pos
    again = R.grouped_split(table, test_pos, test_neg, val_fraction, np.random.default_rng(seed))
    assert again.equals(split)


def test_grouped_split_counts_covid_groups_by_their_covid_images_and_checks_labels():
    # 10 COVID-19 groups of 1 COVID-19 image + 1 negative of that patient; 30 negative-only images
    table = _table([1] * 10, [1] * 30, neg_in_pos=10)
    split = R.grouped_split(table, 4, 9, 0.25, np.random.default_rng(0))
    covid_group = table["split_group"].str.startswith("p")
    assert ((table["label"] == 1) & (split == "test")).sum() == 4
    assert (~covid_group & (split == "test")).sum() == 9
    # validation: round(0.25 * 6) COVID-19 groups and round(0.25 * 21) negative-only images
    assert ((table["label"] == 1) & (split == "val")).sum() == 2
    assert (~covid_group & (split == "val")).sum() == 5
    with pytest.raises(R.RepeatsError, match="integer labels"):
        R.grouped_split(table.astype({"label": str}), 4, 9, 0.25, np.random.default_rng(0))


def test_spread_against_numpy_and_statistics():
    values = [0.9, 0.7, 0.8, 1.0, 0.6]
    s = R.spread(values)
    assert s["mean"] == pytest.approx(statistics.mean(values))
    assert s["sd"] == pytest.approx(statistics.stdev(values))
    assert s["median"] == pytest.approx(statistics.median(values))
    assert (s["min"], s["max"]) == (0.6, 1.0)
    # linear interpolation: position 0.025 * 4 = 0.1 between 0.6 and 0.7; 3.9 between 0.9 and 1.0
    assert s["p2_5"] == pytest.approx(0.61) and s["p97_5"] == pytest.approx(0.99)
    assert R.spread([0.5])["sd"] == 0.0
    with pytest.raises(R.RepeatsError):
        R.spread([0.5, float("nan")])


def _head(dim: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Dropout(0.0), torch.nn.Linear(dim, 2))


def _planted(n_groups: int = 120, signal: float = 2.0, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Groups of 1-3 images with one label each; feature 0 carries the label with ``signal``."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 4, n_groups)
    labels = (np.arange(n_groups) % 3 == 0).astype(int)
    table = pd.DataFrame(
        {"split_group": np.repeat([f"g{i}" for i in range(n_groups)], sizes), "label": np.repeat(labels, sizes)}
    )
    split = R.grouped_split(
        table, int(table["label"].sum() // 3), int((table["label"] == 0).sum() // 3), 0.25, np.random.default_rng(seed)
    )
    features = rng.standard_normal((len(table), 4))
    features[:, 0] += signal * table["label"].to_numpy()
    return table.assign(split=split.to_numpy()), features


def test_repeats_find_the_signal_and_spread_over_distinct_splits():
    table, features = _planted()
    summary, rows = R.repeated_splits(
        table, features, _head(4), splits=5, seed=3, val_fraction=0.25, train=TRAIN, target_sensitivity=0.9
    )
    assert list(rows["split"]) == ["pipeline"] + [f"repeat-{i}" for i in range(1, 6)]
    assert rows["auc"].min() > 0.8 and summary["repeats"]["auc"]["sd"] > 0  # splits differ, signal found
    assert rows["seed"].nunique() == 6
    pipeline = rows.iloc[0]
    assert pipeline["train_images"] == (table["split"] == "train").sum()  # the given split, used as given
    assert pipeline["test_covid"] == table.loc[table["split"] == "test", "label"].sum()
    assert summary["pipeline_split"]["auc"] == pytest.approx(pipeline["auc"])
    r = summary["repeats"]
    assert r["splits"] == 5 and r["augmented_copies"] is False
    assert r["auc"]["min"] <= r["auc"]["p2_5"] <= r["auc"]["mean"] <= r["auc"]["max"]
    assert r["test_covid"]["max"] <= r["test_covid_asked"]
    # deterministic
    again, _ = R.repeated_splits(
        table, features, _head(4), splits=5, seed=3, val_fraction=0.25, train=TRAIN, target_sensitivity=0.9
    )
    assert again == summary


def test_repeats_give_the_same_numbers_in_worker_processes():
    table, features = _planted(n_groups=60)
    kw = dict(splits=3, seed=5, val_fraction=0.25, train=TRAIN.model_copy(update={"epochs": 5}), target_sensitivity=0.9)
    serial, rows = R.repeated_splits(table, features, _head(4), **kw)
    parallel, rows2 = R.repeated_splits(table, features, _head(4), workers=2, **kw)
    pd.testing.assert_frame_equal(rows, rows2)
    assert serial == parallel


def test_repeats_cannot_memorise_groups():
    """Each group has a random label and a one-hot feature naming it: a split that put a group on
    both sides would let the head recall its label; whole-group splits give AUCs near 0.5."""
    rng = np.random.default_rng(5)
    n = 150
    labels = (rng.random(n) < 0.4).astype(int)
    table = pd.DataFrame({"split_group": np.repeat([f"g{i}" for i in range(n)], 2), "label": np.repeat(labels, 2)})
    table["split"] = R.grouped_split(table, 20, 30, 0.2, np.random.default_rng(0)).to_numpy()
    features = np.eye(n)[np.repeat(np.arange(n), 2)] * 5
    summary, _ = R.repeated_splits(
        table,
        features,
        _head(n),
        splits=4,
        seed=0,
        val_fraction=0.2,
        train=TRAIN.model_copy(update={"epochs": 60}),
        target_sensitivity=0.9,
    )
    assert 0.3 < summary["repeats"]["auc"]["mean"] < 0.7


def test_shuffled_labels_and_class_weight_are_honoured():
    table, features = _planted(signal=4.0)
    features = np.c_[features, np.random.default_rng(9).standard_normal((len(features), 20))]  # noise to fit
    kw = dict(splits=5, seed=1, val_fraction=0.25, target_sensitivity=0.9)
    shuffled, _ = R.repeated_splits(
        table, features, _head(24), train=TRAIN.model_copy(update={"shuffle_labels": True}), **kw
    )
    plain, _ = R.repeated_splits(table, features, _head(24), train=TRAIN, **kw)
    assert plain["repeats"]["auc"]["mean"] > 0.95 and shuffled["repeats"]["auc"]["mean"] < 0.8
    balanced, _ = R.repeated_splits(
        table, features, _head(24), train=TRAIN.model_copy(update={"class_weight": "balanced"}), **kw
    )
    assert balanced["repeats"]["threshold"] != plain["repeats"]["threshold"]


def test_single_class_validation_is_one_clear_error():
    table, features = _planted()
    table.loc[(table["split"] == "val") & (table["label"] == 1), "split"] = "train"
    with pytest.raises(R.RepeatsError, match="val part holds a single class"):
        R.repeated_splits(
            table, features, _head(4), splits=0, seed=0, val_fraction=0.25, train=TRAIN, target_sensitivity=0.9
        )


# ------------------------------------------------------------------------------ the stage


@contextlib.contextmanager
def _params(ws, splits: str):
    """``repeats.splits`` set to ``splits`` in the workspace's params.yaml, then restored."""
    path = ws / "params.yaml"
    saved = path.read_text()
    assert "repeats:\n  splits: 20" in saved
    path.write_text(saved.replace("repeats:\n  splits: 20", f"repeats:\n  splits: {splits}"))
    try:
        yield
    finally:
        path.write_text(saved)


@pytest.mark.slow
def test_stage_writes_the_spread_beside_the_single_split(tiny_trained, tmp_path):
    ws = copy_without(tiny_trained, tmp_path / "ws", [])
    with _params(ws, "3"):
        run_stage(ws, "repeats")
    out = json.loads((ws / "metrics/repeats.json").read_text())
    evaluation = json.loads((ws / "metrics/evaluate.json").read_text())
    rows = pd.read_csv(ws / "metrics/repeats.csv")
    assert len(rows) == 4 and out["repeats"]["splits"] == 3
    assert out["single_split"]["auc"] == evaluation["test"]["auc"]
    assert out["single_split"]["specificity_low"] == evaluation["test"]["specificity_low"]
    assert out["repeats"]["auc"]["mean"] == pytest.approx(rows["auc"][1:].mean())
    assert (rows["test_covid"][1:] <= evaluation["test"]["n_pos"]).all()


@pytest.mark.slow
def test_stage_skips_and_fails_in_one_line(tiny_trained, tmp_path):
    ws = copy_without(tiny_trained, tmp_path / "ws", [])
    with _params(ws, "0"):
        run_stage(ws, "repeats")
        assert json.loads((ws / "metrics/repeats.json").read_text()) == {"skipped": "repeats.splits is 0"}
    with _params(ws, "-1"):
        proc = run_stage(ws, "repeats", check=False)
        assert proc.returncode == 2 and "repeats.splits" in error_line(proc)
    shutil.move(ws / "metrics/evaluate.json", tmp_path / "evaluate.json")
    try:
        with _params(ws, "2"):
            proc = run_stage(ws, "repeats", check=False)
        assert proc.returncode != 0 and "metrics/evaluate.json not found" in error_line(proc)
        assert "Traceback" not in proc.stderr
    finally:
        shutil.move(tmp_path / "evaluate.json", ws / "metrics/evaluate.json")
