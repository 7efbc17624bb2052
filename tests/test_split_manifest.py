"""The split stage's entry point and the manifest's exact form (deepcovid/data/split.py), in process.

The stage tests run stages/split.py in a subprocess; these call split_dataset, make_split and
check_no_leak directly, so that a mutation tool sees them too.
"""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest

from deepcovid.data.split import MANIFEST_COLUMNS, SplitError, check_no_leak, make_split, split_dataset
from workspace import write_raw_images

COLUMNS = ["source", "relpath", "patient", "finding", "view", "label", "group", "category"]


def _row(source, relpath, patient, label, pool=""):
    return {
        "source": source,
        "relpath": relpath,
        "patient": patient,
        "finding": "COVID-19" if label else "",
        "view": "PA",
        "label": label,
        "group": "covid" if label else "normal",
        "category": "COVID-19" if label else "No Finding",
        "pool": pool,
    }


def _tables():
    pos = pd.DataFrame([_row("cohen", f"p{i}/{k}.png", f"p{i}", 1) for i in range(6) for k in range(2)])
    neg = pd.DataFrame([_row("chexpert", f"n{i}/v.jpg", f"n{i}", 0, "test" if i < 4 else "train") for i in range(12)])
    return pos, neg


def test_split_dataset_hashes_the_files_and_splits_as_make_split(tmp_path):
    pos, neg = _tables()
    raw = tmp_path / "raw"
    roots = {"cohen": "cohen", "chexpert": "chexpert"}
    write_raw_images(raw, roots, pos, neg)
    (raw / "chexpert/n5/v.jpg").write_bytes((raw / "cohen/p0/0.png").read_bytes())  # same radiograph
    (raw / "cohen/p1/1.png").unlink()  # missing: no digest, preprocess rejects it later
    (raw / "sources.json").write_text(json.dumps({"dataset": "synthetic", "roots": roots}))
    pos.drop(columns="pool").to_csv(tmp_path / "positives.csv", index=False)
    neg.to_csv(tmp_path / "negatives.csv", index=False)

    pd.DataFrame(columns=["group", "image_id", "source", "patient", "label"]).to_csv(tmp_path / "dup.csv", index=False)
    manifest, report = split_dataset(
        raw, tmp_path / "positives.csv", tmp_path / "negatives.csv", tmp_path / "dup.csv", 4, 0.25, 3, False
    )

    def digest(source, rel):
        path = raw / roots[source] / rel
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""

    sha = manifest.set_index("image_id")["sha256"]
    assert sha["cohen/p1/1.png"] == ""
    assert sha["chexpert/n5/v.jpg"] == sha["cohen/p0/0.png"] == digest("cohen", "p0/0.png")
    expected_pos = pd.read_csv(tmp_path / "positives.csv", dtype=str, keep_default_na=False).astype({"label": int})
    expected_neg = pd.read_csv(tmp_path / "negatives.csv", dtype=str, keep_default_na=False).astype({"label": int})
    for frame in (expected_pos, expected_neg):
        frame["sha256"] = [digest(s, r) for s, r in zip(frame["source"], frame["relpath"])]
    want, want_report = make_split(expected_pos, expected_neg, 4, 0.25, 3)
    pd.testing.assert_frame_equal(manifest, want)
    assert report == want_report and report["covid_test_images_asked"] == 4
    groups = manifest.groupby("image_id")["split_group"].first()
    assert groups["chexpert/n5/v.jpg"] == groups["cohen/p0/0.png"]  # joined by content


def test_manifest_form():
    pos, neg = _tables()
    for frame in (pos, neg):
        frame["sha256"] = [f"sha-{r}" for r in frame["relpath"]]
    manifest, report = make_split(pos.drop(columns="pool"), neg, 4, 0.25, 0)
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert manifest.index.equals(pd.RangeIndex(len(manifest)))
    assert manifest["label"].dtype == int and not manifest.isna().any().any()
    assert (manifest.loc[manifest["label"] == 1, "pool"] == "").all()  # positives carry no pool
    order = manifest.sort_values(["split", "label", "image_id"], ascending=[True, False, True], ignore_index=True)
    pd.testing.assert_frame_equal(manifest, order)  # by split, COVID-19 first, then image id
    assert report["covid_test_images_asked"] == 4 and report["test"]["covid"] == 4


def _manifest(changes: dict | None = None) -> pd.DataFrame:
    rows = [
        {
            "image_id": f"s/{i}",
            "source": "s",
            "patient": f"p{i}",
            "split_group": f"g{i}",
            "split": split,
            "sha256": f"h{i}",
        }
        for i, split in enumerate(["train", "val", "test", "train"])
    ]
    frame = pd.DataFrame(rows)
    for (i, column), value in (changes or {}).items():
        frame.loc[i, column] = value
    return frame


def test_check_no_leak_accepts_a_clean_manifest():
    check_no_leak(_manifest())
    check_no_leak(_manifest({(3, "sha256"): "h0"}))  # same content, same part: fine


@pytest.mark.parametrize(
    "changes, message",
    [
        ({(3, "image_id"): "s/0"}, "image s/0 appears twice"),
        ({(3, "split"): "holdout"}, r"unknown split values \['holdout'\]"),
        ({(1, "patient"): "p0"}, "s/p0 appears in more than one split"),
        ({(1, "split_group"): "g0"}, "g0 appears in more than one split"),
        ({(2, "sha256"): "h0"}, "identical image content h0 appears in more than one split"),
    ],
)
def test_check_no_leak_names_what_leaks(changes, message):
    with pytest.raises(SplitError, match=message):
        check_no_leak(_manifest(changes))


def test_content_check_needs_every_digest():
    """A file without a digest (unreadable) leaves the content check to the group check."""
    check_no_leak(_manifest({(2, "sha256"): "h0", (3, "sha256"): ""}))
