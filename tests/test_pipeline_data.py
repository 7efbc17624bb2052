"""Integration: the data stages run as DVC runs them (python stages/<name>.py in the workspace).

- generated data (the tiny configuration), end to end through augment;
- the all-public configuration on the real files in ../shared/data, with Cohen fetched as a
  download from a local HTTP server and Actualmed from a local directory;
- bad input: nothing already built is lost, errors are one line.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from deepcovid.data.split import check_no_leak
from localserver import github_style_zip, serve_directory
from workspace import error_line, make_workspace, read, run_stage

COMMIT = "ad999d56bdc8fde4a75367dc00323fa2e9d49f73"


@pytest.fixture
def synthetic_ws(tiny_trained):
    """The data stages of the tiny generated configuration, run by the shared fixture (read only).
    The default configuration's data stages are CI's check: `make repro`, then their outputs byte
    for byte against the committed dvc.lock (deepcovid check-reproduction)."""
    return tiny_trained


def test_synthetic_data_stages_end_to_end(synthetic_ws):
    ws = synthetic_ws
    params = yaml.safe_load((ws / "params.yaml").read_text())
    manifest = read(ws / "data/manifest.csv")
    check_no_leak(manifest)
    assert {"image_id", "source", "relpath", "patient", "label", "group", "category", "split"} <= set(manifest.columns)
    assert set(manifest["group"]) == {"covid", "normal", "other-disease"}
    covid = manifest[manifest["label"] == "1"]
    assert (covid["split"] == "test").sum() == params["split"]["covid_test_images"]
    assert {"train", "val"} <= set(covid["split"])
    # lateral and CT rows of the generated Cohen data were filtered out
    report = json.loads((ws / "data/filtered/report.json").read_text())["sources"][0]
    assert report["removed"]["not frontal"] > 0 and report["removed"]["not X-ray"] > 0
    assert not manifest["view"].str.upper().isin(["L", "LATERAL"]).any()
    # negatives: counts per params or a logged shortfall; normal vs other disease recorded
    neg = read(ws / "data/negatives/negatives.csv")
    want = params["negatives"]["counts"]["synthetic"]
    assert (neg.query("pool == 'train' and category == 'No Finding'").shape[0]) == want["train"]["no_finding"]
    # every image decoded into the cache at the configured size
    index = read(ws / "data/preprocessed/index.csv")
    assert len(read(ws / "data/preprocessed/rejected.csv")) == 0
    assert set(index["image_id"]) == set(manifest["image_id"])
    size = params["preprocess"]["cache_size"]
    for rel in index["cache_path"].sample(10, random_state=0):
        with Image.open(ws / "data/preprocessed" / rel) as img:
            assert img.mode == "RGB" and img.size == (size, size)
    # 5x augmentation of COVID training images only, each with its parent
    aug = read(ws / "data/augmented/index.csv")
    parents = covid[covid["split"] == "train"]
    assert len(aug) == params["augment"]["copies"] * len(parents)
    assert set(aug["parent"]) == set(parents["image_id"])
    assert all((ws / "data/augmented" / p).is_file() for p in aug["cache_path"])
    counts = json.loads((ws / "metrics/data.json").read_text())
    assert counts["test"]["covid"] == params["split"]["covid_test_images"]


def test_synthetic_rerun_is_identical(synthetic_ws, tmp_path):
    """Same inputs, same bytes: the split of the default data does not depend on the run. (Every
    data stage rerun byte for byte, also under other CPU kernels, is tests/test_cross_cpu.py's
    check on the tiny configuration; CI compares the default's data stages with dvc.lock.)"""
    ws = tmp_path / "ws"
    shutil.copytree(synthetic_ws, ws, ignore=shutil.ignore_patterns("preprocessed", "augmented"))
    (ws / "data/manifest.csv").unlink()
    run_stage(ws, "split")
    assert (ws / "data/manifest.csv").read_bytes() == (synthetic_ws / "data/manifest.csv").read_bytes()


def test_missing_chexpert_stops_at_once_and_keeps_raw(synthetic_ws, tmp_path):
    ws = make_workspace(tmp_path, dataset="paper")
    marker = ws / "data/raw/marker.txt"
    marker.parent.mkdir(parents=True)
    marker.write_text("built earlier")
    proc = run_stage(ws, "fetch", check=False)
    assert proc.returncode == 2
    assert "fetch.chexpert.path" in error_line(proc)
    assert marker.read_text() == "built earlier"


def test_unreadable_images_rejected_and_run_continues(synthetic_ws, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(synthetic_ws, ws, ignore=shutil.ignore_patterns("preprocessed", "augmented"))
    manifest = read(ws / "data/manifest.csv")
    sources = json.loads((ws / "data/raw/sources.json").read_text())
    victims = manifest.iloc[:2]
    paths = [ws / "data/raw" / sources["roots"][s] / r for s, r in zip(victims["source"], victims["relpath"])]
    paths[0].write_bytes(b"\x89PNG\r\n\x1a\n garbage, not an image")
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) // 3])  # truncated
    run_stage(ws, "preprocess")
    rejected = read(ws / "data/preprocessed/rejected.csv")
    assert set(rejected["image_id"]) == set(victims["image_id"])
    assert all(rejected["reason"] != "")
    assert len(read(ws / "data/preprocessed/index.csv")) == len(manifest) - 2


def test_metadata_missing_column_keeps_previous_output(synthetic_ws, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(synthetic_ws, ws, ignore=shutil.ignore_patterns("preprocessed", "augmented"))
    before = (ws / "data/filtered/positives.csv").read_bytes()
    meta = ws / "data/raw/cohen/metadata.csv"
    frame = pd.read_csv(meta, dtype=str, keep_default_na=False)
    frame.drop(columns=["finding"]).to_csv(meta, index=False)
    proc = run_stage(ws, "filter", check=False)
    assert proc.returncode == 2
    line = error_line(proc)
    assert "metadata.csv" in line and "'finding'" in line
    assert (ws / "data/filtered/positives.csv").read_bytes() == before


# --- real data: the all-public configuration on ../shared/data ------------------------------


@pytest.fixture(scope="module")
def public_ws(shared_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("public")
    served = tmp / "served"
    served.mkdir()
    github_style_zip(shared_data / "cohen", served / f"{COMMIT}.zip", f"covid-chestxray-dataset-{COMMIT}")
    (tmp / "ws").mkdir()
    ws = make_workspace(
        tmp / "ws", **{"dataset": "public", "fetch.actualmed.local_dir": str(shared_data / "actualmed")}
    )
    with serve_directory(served) as url:
        params = yaml.safe_load((ws / "params.yaml").read_text())
        params["fetch"]["cohen"]["url"] = url + "/{commit}.zip"
        (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        for stage in ["fetch", "filter", "negatives", "duplicates", "split", "preprocess"]:
            run_stage(ws, stage)
    return ws


def test_public_real_data(public_ws, shared_data):
    ws = public_ws
    sources = json.loads((ws / "data/raw/sources.json").read_text())
    assert sources["records"]["cohen"]["commit"] == COMMIT
    assert len(list((ws / "data/raw/cohen/images").iterdir())) == 570
    report = {r["source"]: r for r in json.loads((ws / "data/filtered/report.json").read_text())["sources"]}
    assert report["cohen"]["covid_xray_rows"] == 451 and report["cohen"]["kept"] == 427
    assert report["cohen"]["removed"]["not frontal"] == 24
    assert report["actualmed"]["kept"] == 26
    manifest = read(ws / "data/manifest.csv")
    check_no_leak(manifest)
    # 5 Cohen files are listed under two patient ids: one manifest row each, patients joined
    assert manifest["image_id"].is_unique
    for a, b in [("285", "339"), ("287", "340")]:
        rows = manifest[(manifest["source"] == "cohen") & manifest["patient"].isin([a, b])]
        assert rows["split"].nunique() <= 1
    # the negatives of Cohen's patients who also have COVID-19 images are left out and listed
    report_split = json.loads((ws / "metrics/data.json").read_text())
    shared = report_split["negatives_of_covid_patients"]
    assert shared["excluded"] and shared["images"] >= 11, shared
    assert not manifest["image_id"].isin(shared["image_ids"]).any()
    mixed = manifest[manifest["source"] == "cohen"].groupby("patient")["label"].nunique()
    assert (mixed > 1).sum() == 0
    # near-duplicates: the ARDS films of patient 97 reappear as patient 178's: one group, one part
    near = read(ws / "data/duplicates.csv")
    assert report_split["near_duplicates"]["groups"] == near["group"].nunique() >= 5
    joined = manifest[(manifest["source"] == "cohen") & manifest["patient"].isin(["97", "178"])]
    assert len(joined) >= 8 and joined["split_group"].nunique() == 1 and joined["split"].nunique() == 1
    covid = manifest[manifest["label"] == "1"]
    assert (covid["split"] == "test").sum() == 100
    assert set(manifest.loc[manifest["label"] == "0", "group"]) == {"normal", "other-disease"}
    assert set(manifest.loc[manifest["label"] == "0", "source"]) == {"cohen", "actualmed"}
    # every kept image decodes (the real data has PNGs named .jpg, palette, RGBA and 16-bit files)
    assert len(read(ws / "data/preprocessed/rejected.csv")) == 0
    index = read(ws / "data/preprocessed/index.csv")
    assert set(index["image_id"]) == set(manifest["image_id"])
    arr = np.asarray(Image.open(ws / "data/preprocessed" / index["cache_path"].iloc[0]))
    assert arr.shape == (256, 256, 3) and arr.dtype == np.uint8


def test_public_wrong_checksum_keeps_raw(public_ws, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(public_ws, ws, ignore=shutil.ignore_patterns("preprocessed"))
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["fetch"]["cohen"]["local_dir"] = str(public_ws / "data/raw/cohen")
    params["fetch"]["cohen"]["tree_sha256"] = "0" * 64
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    before = sorted(p.relative_to(ws) for p in (ws / "data/raw").rglob("*"))
    proc = run_stage(ws, "fetch", check=False)
    assert proc.returncode == 2
    assert "fetch.cohen.tree_sha256" in error_line(proc)
    assert sorted(p.relative_to(ws) for p in (ws / "data/raw").rglob("*")) == before
