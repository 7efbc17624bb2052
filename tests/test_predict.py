"""`deepcovid predict` (deepcovid/model/predict.py) on PNG, 16-bit PNG, JPEG and DICOM files.

It must reproduce the pipeline's own scores (the test images' raw files against
data/predictions.csv, to 1e-6), prepare a DICOM file exactly as the same pixels in a PNG, label
at the model's operating point, keep going past unreadable files (a row with the reason, exit
status 1) and warn about lateral views and small images.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from deepcovid.model import predict as P
from dicom_files import chest, write_dicom
from workspace import REPO, read, run_python


def _predict(ws, *args, timeout=600):
    return run_python(
        [
            "-m",
            "deepcovid",
            "predict",
            *map(str, args),
            "--model",
            str(ws / "models"),
            "--evaluation",
            str(ws / "metrics/evaluate.json"),
            "--params",
            str(ws / "params.yaml"),
        ],
        cwd=REPO,
        timeout=timeout,
    )


def _raw_paths(ws, image_ids):
    from deepcovid.data.sources import image_path, read_sources

    manifest = read(ws / "data/manifest.csv").set_index("image_id")
    roots = read_sources(ws / "data/raw")
    return [
        str(image_path(roots, manifest.loc[i, "source"], manifest.loc[i, "relpath"], ws / "data/raw"))
        for i in image_ids
    ]


def test_predict_reproduces_the_pipeline_predictions(tiny_trained, tmp_path):
    pred = pd.read_csv(tiny_trained / "data/predictions.csv", dtype={"image_id": str})
    pred = pred[pred["split"] == "test"].reset_index(drop=True)
    paths = _raw_paths(tiny_trained, pred["image_id"])
    out = tmp_path / "scores.csv"
    proc = _predict(tiny_trained, *paths, "--out", out, "--batch-size", 7)
    assert proc.returncode == 0, proc.stderr
    got = pd.read_csv(out, keep_default_na=False)
    assert list(got.columns) == P.COLUMNS and list(got["path"]) == paths
    np.testing.assert_allclose(got["score"].astype(float), pred["score"], atol=1e-6, rtol=0)
    threshold = json.loads((tiny_trained / "metrics/evaluate.json").read_text())["test"]["threshold"]
    want = np.where(pred["score"] >= threshold, "COVID-19", "non-COVID")
    assert (got["label"].to_numpy() == want).all() and (got["error"] == "").all()
    assert f"{len(paths)} files, {len(paths)} scored, 0 unreadable" in proc.stderr


def test_dicom_png_and_16_bit_png_of_the_same_pixels_score_alike(tiny_trained, tmp_path):
    pixels = chest(160, 140, bits=8, seed=3)
    pixels = (pixels - pixels.min()) * 255 // (pixels.max() - pixels.min())  # full 8-bit range
    Image.fromarray(pixels.astype(np.uint8), "L").save(tmp_path / "a.png")
    write_dicom(tmp_path / "b.dcm", pixels, bits_stored=8)
    # MONOCHROME1 with the inverted values is the same picture
    write_dicom(tmp_path / "c.dcm", 255 - pixels, bits_stored=8, photometric="MONOCHROME1")
    deep = pixels.astype(np.uint16) * 257  # 16 bit, same picture after min..max scaling
    Image.fromarray(deep).save(tmp_path / "d.png")  # mode I;16
    Image.fromarray(pixels.astype(np.uint8), "L").save(tmp_path / "e.jpg", quality=100)
    table = P.predict_files(P.collect_files([tmp_path]), models=tiny_trained / "models", threshold=0.5)
    scores = table.set_index(table["path"].map(lambda p: p.rsplit("/", 1)[-1]))["score"]
    assert scores[["b.dcm", "c.dcm", "d.png"]].to_numpy() == pytest.approx([scores["a.png"]] * 3, abs=1e-7)
    assert abs(scores["e.jpg"] - scores["a.png"]) < 0.05 and scores.notna().all()
    assert (table["warning"].str.contains("smaller than the model input") == False).all()  # noqa: E712


def test_bad_files_get_a_row_with_the_reason_and_the_rest_is_scored(tiny_trained, tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(chest(300, 260, bits=8).astype(np.uint8), "L").save(folder / "ok.png")
    write_dicom(
        folder / "sub" / "lateral", chest(300, 300, bits=12), bits_stored=12, window=(2000.0, 3000.0), ViewPosition="LL"
    )  # no suffix: found by content
    Image.fromarray(chest(60, 50, bits=8).astype(np.uint8), "L").save(folder / "small.png")
    write_dicom(folder / "cine.dcm", np.stack([chest()] * 2), bits_stored=12, frames=2)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (folder / "notes.txt").write_text("not an image")  # not taken from a folder
    (folder / ".hidden.png").write_bytes(b"")
    out = tmp_path / "scores.csv"
    proc = _predict(tiny_trained, folder, tmp_path / "missing.png", "--out", out)
    assert proc.returncode == 1, proc.stderr  # some files failed
    rows = pd.read_csv(out, keep_default_na=False).set_index("path")
    assert len(rows) == 6
    name = {p.rsplit("/", 1)[-1]: p for p in rows.index}
    assert rows.loc[name["ok.png"], "error"] == "" and rows.loc[name["ok.png"], "label"] in P.LABELS
    assert "lateral view" in rows.loc[name["lateral"], "warning"]
    assert "smaller than the model input" in rows.loc[name["small.png"], "warning"]
    assert "multi-frame" in rows.loc[name["cine.dcm"], "error"] and rows.loc[name["cine.dcm"], "score"] == ""
    assert rows.loc[name["broken.jpg"], "error"] != "" and rows.loc[name["missing.png"], "error"] == "file not found"
    assert "6 files, 3 scored, 3 unreadable, 2 with warnings" in proc.stderr


def test_threshold_explain_and_one_line_errors(tiny_trained, tmp_path):
    image = tmp_path / "x.png"
    Image.fromarray(chest(240, 240, bits=8).astype(np.uint8), "L").save(image)
    proc = _predict(tiny_trained, image, "--threshold", "0", "--explain", tmp_path / "maps")
    assert proc.returncode == 0, proc.stderr
    rows = pd.read_csv(__import__("io").StringIO(proc.stdout), keep_default_na=False)
    assert rows["label"].tolist() == ["COVID-19"] and (tmp_path / "maps" / "x_occlusion.png").is_file()
    assert rows["explanation"].tolist() == [str(tmp_path / "maps" / "x_occlusion.png")]
    bad = run_python(
        [
            "-m",
            "deepcovid",
            "predict",
            str(image),
            "--model",
            str(tiny_trained / "models"),
            "--evaluation",
            str(tmp_path / "none.json"),
        ],
        cwd=REPO,
        timeout=300,
    )
    assert bad.returncode == 2 and "none.json not found" in bad.stderr.strip().splitlines()[-1]
    assert "Traceback" not in bad.stderr
    out_of_range = _predict(tiny_trained, image, "--threshold", "1.5")
    assert out_of_range.returncode == 2 and "threshold 1.5" in out_of_range.stderr.strip().splitlines()[-1]


def test_collect_files_walks_folders_in_order(tmp_path):
    (tmp_path / "b").mkdir()
    for name in ("b/2.PNG", "a.jpg", "c.dcm", "z.csv"):
        (tmp_path / name).write_bytes(b"x")
    write_dicom(tmp_path / "b" / "img", chest(), bits_stored=12)
    (tmp_path / "b" / "other").write_bytes(b"no marker")
    got = [p.rsplit(str(tmp_path), 1)[-1] for p in P.collect_files([tmp_path])]
    assert got == ["/a.jpg", "/b/2.PNG", "/b/img", "/c.dcm"]
    assert P.collect_files([tmp_path / "z.csv"]) == [str(tmp_path / "z.csv")]  # named files are always tried
