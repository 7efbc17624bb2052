"""Near-duplicate detection (deepcovid/data/duplicates.py), the `deepcovid duplicates` command and
the split keeping near-duplicates together.

The hash is checked against an independent float reference (scipy's DCT and rank functions),
the pairwise distance against a plain loop, robustness on transformed copies of real X-rays, and
the chosen threshold on the real Cohen / Actualmed copy in ../shared/data (the groups found there
were checked by eye: docs/audit.md, "Duplicates").
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.fft import dct
from scipy.stats import rankdata

from deepcovid.config import ConfigError, load_config
from deepcovid.data import duplicates as dup
from deepcovid.data.split import SplitError, check_no_leak, make_split
from workspace import run_python

REPO = Path(__file__).resolve().parents[1]


def _gray(seed: int, size=(90, 120)) -> np.ndarray:
    """A smooth random image (low frequencies dominate, as in radiographs)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(6, 8), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize(size[::-1], Image.BICUBIC))


def test_equalise_is_twice_the_average_rank_minus_one():
    thumb = np.random.default_rng(0).integers(0, 40, size=(64, 64), dtype=np.uint8)  # many ties
    want = 2 * rankdata(thumb.ravel(), method="average") - 1
    np.testing.assert_array_equal(dup.equalise(thumb).ravel(), want)
    # any increasing change of grey values gives the same equalised thumbnail
    np.testing.assert_array_equal(dup.equalise(thumb), dup.equalise((thumb.astype(int) * 3 + 7).astype(np.uint8)))
    # a stack: each thumbnail on its own histogram
    stack = np.stack([thumb, 255 - thumb, np.zeros_like(thumb), np.full_like(thumb, 255)])
    np.testing.assert_array_equal(dup.equalise(stack), np.stack([dup.equalise(t) for t in stack]))
    assert set(np.unique(dup.equalise(stack[2]))) == {4096}


def test_low_frequencies_are_the_exact_integers_at_the_extremes():
    """The float64 (BLAS) DCT gives the exact integer products up to the largest magnitudes a
    thumbnail can take (2 ** 13, equalised or centred), including inputs that follow the signs of
    the DCT's rows, where the sums pass 2 ** 50."""
    sign = np.sign(dup._DCT)
    inputs = [np.full((2, 64, 64), 8192), np.full((2, 64, 64), -8192)]
    inputs += [np.broadcast_to(8192 * np.outer(sign[k], sign[v]), (2, 64, 64)) for k in range(16) for v in range(16)]
    inputs.append(np.random.default_rng(1).integers(-8192, 8193, (2, 64, 64)))
    largest = 0
    for x in inputs:
        exact = [[int(v) for v in (dup._DCT @ t.astype(object) @ dup._DCT.T).ravel()[1:]] for t in x]
        largest = max(largest, max(abs(v) for row in exact for v in row))
        assert dup._low_frequencies(np.asarray(x, dtype=np.int64)).tolist() == exact
    assert largest > 2**50


def test_integer_hash_matches_a_float_dct_reference():
    """The fixed-point DCT hash agrees with scipy's float DCT-II on the same centred thumbnails,
    except for coefficients within rounding of the median (at most 2 of 255 bits)."""
    thumbs = np.stack([dup.thumbnails(_gray(s)) for s in range(12)])
    hashes = dup.hash_thumbnails(thumbs)
    mean = thumbs.sum(axis=0, dtype=np.int64) // len(thumbs)
    flips = []
    for i in range(len(thumbs)):
        for v in (0, 5, len(dup.CROPS) - 1):
            centred = (thumbs[i, v].astype(np.int64) - mean[v]).astype(np.float64)
            coeff = dct(dct(centred, type=2, axis=0), type=2, axis=1)[:16, :16].ravel()[1:]
            bits = np.append(coeff > np.median(coeff), False)
            got = np.unpackbits(hashes[i, v].astype(">u8").view(np.uint8))
            flips.append(int((got != bits).sum()))
    assert max(flips) <= 2 and np.mean(flips) < 0.5, flips


def test_distances_equal_a_plain_loop():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2**63, size=(3, len(dup.CROPS), 4), dtype=np.uint64)
    b = rng.integers(0, 2**63, size=(4, len(dup.CROPS), 4), dtype=np.uint64)
    b[1, 7] = a[2, 0]  # b[1] cropped (crop 7) equals a[2] whole
    a[0, 3] = b[3, 0] ^ np.array([0b111, 0, 0, 0], dtype=np.uint64)  # a[0] cropped: 3 bits from b[3] whole

    def bits(x, y):
        return sum(bin(int(p) ^ int(q)).count("1") for p, q in zip(x, y))

    want = np.array(
        [
            [
                min(
                    min(bits(a[i, v], b[j, 0]) for v in range(len(dup.CROPS))),
                    min(bits(a[i, 0], b[j, v]) for v in range(len(dup.CROPS))),
                )
                for j in range(4)
            ]
            for i in range(3)
        ]
    )
    np.testing.assert_array_equal(dup.distances(a, b), want)
    assert want[2, 1] == 0 and want[0, 3] <= 3
    pairs = dup.near_pairs(np.concatenate([a, b]), max_distance=3)
    assert {(2, 4), (0, 6)} <= set(zip(pairs["i"], pairs["j"]))
    assert (pairs["distance"] <= 3).all() and (pairs["i"] < pairs["j"]).all()


def test_groups_are_connected_components_with_closest_member():
    h = np.zeros((5, len(dup.CROPS), 4), dtype=np.uint64)
    h[:, :, 0] = np.array([0, 0b1, 0b111, 2**40 - 1, 2**62 - 1], dtype=np.uint64)[:, None]
    groups, pairs = dup.duplicate_groups(list("abcde"), h, max_distance=2)
    # a-b (1 bit), b-c (2 bits) chain into one group; a-c is 3 bits apart; d, e are far
    assert groups["group"].tolist() == ["d00000"] * 3
    assert dict(zip(groups["name"], groups["closest"])) == {"a": "b", "b": "a", "c": "b"}
    assert dict(zip(groups["name"], groups["similarity"])) == {
        "a": round(1 - 1 / 255, 4),
        "b": round(1 - 1 / 255, 4),
        "c": round(1 - 2 / 255, 4),
    }
    assert len(pairs) == 2
    none, _ = dup.duplicate_groups(list("abcde"), h, max_distance=0, skip=[1])
    assert none.empty
    with pytest.raises(ValueError, match="max_distance"):
        dup.near_pairs(h, 255)


def _copies(image: Image.Image) -> dict[str, Image.Image]:
    w, h = image.size
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=40)
    a = np.asarray(image).astype(np.float64) / 255
    return {
        "jpeg40": Image.open(io.BytesIO(buf.getvalue())),
        "half": image.resize((w // 2, h // 2), Image.BILINEAR),
        "crop3": image.crop((int(w * 0.03), int(h * 0.03), w, h)),
        "crop4": image.crop((int(w * 0.04), int(h * 0.04), w - int(w * 0.04), h - int(h * 0.04))),
        "gamma": Image.fromarray(np.round(255 * a**0.7).astype(np.uint8)),
    }


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return sorted({d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"})


def _report_blas_threads(path, max_pixels):
    """Stands in for the reading of one file: reports the BLAS threads of the process it runs in."""
    return None, f"{os.getpid()} {_blas_threads()}"


@pytest.mark.parametrize("workers", [1, 2])
def test_hashing_workers_run_with_one_blas_thread(tmp_path, monkeypatch, workers):
    """OpenBLAS's own threads on top of the hashing workers made the stage several times slower on a
    busy machine (bench/busy_machine.py): where the files are read BLAS has one thread (in worker
    processes, or in this one for ``workers=1``), and after the stream this process has its threads back."""
    from threadpoolctl import threadpool_limits

    monkeypatch.setattr(dup, "_thumbnails_of_file", _report_blas_threads)
    with threadpool_limits(2, user_api="blas"):  # as on any machine with 2 cores or more
        assert _blas_threads() == [2]
        seen = [err for _, _, err in dup._thumbnail_stream([str(tmp_path / f"{i}.png") for i in range(6)], workers)]
        assert _blas_threads() == [2]
    pids = {s.split()[0] for s in seen}
    assert len(seen) == 6 and all(s.endswith(" [1]") for s in seen), seen
    assert (str(os.getpid()) in pids) == (workers == 1), seen


def test_transformed_copies_of_real_xrays_are_found_and_nothing_else(shared_data, tmp_path):
    """Re-encoded, rescaled, cropped and gamma-changed copies of 4 real radiographs are grouped
    with their original under new names; 56 other real radiographs (one per patient) stay alone."""
    meta = pd.read_csv(shared_data / "cohen" / "metadata.csv", dtype=str, keep_default_na=False)
    frontal = meta[meta["view"].isin(["PA", "AP"])].drop_duplicates("patientid").drop_duplicates("filename")
    names = frontal["filename"].iloc[::3].tolist()[:60]
    for k, name in enumerate(names):
        image = Image.open(shared_data / "cohen" / "images" / name).convert("L")
        image.save(tmp_path / f"orig{k:02d}.png")
        if k < 4:
            for tag, copy in _copies(image).items():
                copy.convert("L").save(tmp_path / f"copy{k:02d}_{tag}.png")
    cfg = load_config(REPO / "params.yaml").duplicates
    groups, unreadable, n = dup.audit_paths([str(tmp_path)], cfg.max_distance, cfg.min_correlation)
    assert not unreadable and n == 60 + 4 * 5
    members = groups.groupby("group")["path"].apply(lambda p: sorted(Path(x).name for x in p)).tolist()
    want = [
        sorted([f"orig{k:02d}.png", *[f"copy{k:02d}_{t}.png" for t in ("jpeg40", "half", "crop3", "crop4", "gamma")]])
        for k in range(4)
    ]
    assert sorted(members) == sorted(want)


def test_cli_finds_the_checked_duplicates_of_the_real_data(shared_data, tmp_path):
    """`deepcovid duplicates` on the real Cohen and Actualmed images with the default threshold finds
    the 10 groups checked by eye (docs/audit.md, "Duplicates"): the same radiographs under other names
    and patient ids, and no pair of different radiographs; paths are as given."""
    (tmp_path / "notes.txt").write_text("not an image")
    out = tmp_path / "dup.csv"
    folders = [str(shared_data / "cohen" / "images"), str(shared_data / "actualmed" / "images")]
    proc = run_python(
        ["-m", "deepcovid", "duplicates", *folders, str(tmp_path / "notes.txt"), "--out", str(out)],
        cwd=REPO,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "notes.txt: left out (not a recognised image format)" in proc.stderr
    assert "10 groups of near-duplicates (21 of 624 images" in proc.stdout
    table = pd.read_csv(out, dtype=str)
    assert list(table.columns) == ["group", "path", "similarity", "closest"]
    assert all(p.startswith(folders[0] + "/") for p in table["path"])
    found = sorted(sorted(Path(p).name for p in g) for _, g in table.groupby("group")["path"])
    ards = "covid-19-rapidly-progressive-acute-respiratory-distress-syndrome-ards-"
    assert found == sorted(
        [
            ["16660_2_1.jpg", ards + "admission.jpg"],
            ["16660_3_1.jpg", ards + "day-1.jpg"],
            ["16660_4_1.jpg", ards + "day-2.jpg"],
            ["16660_5_1.jpg", ards + "day-3.jpg"],
            ["2-chest-filmc.jpg", "7-fatal-covid19.jpg"],
            ["353889E0-A1E8-4F9E-A0B8-F24F36BCFBFB.jpeg", "case_72_RX-TORACE1.jpg"],
            ["35AF5C3B-D04D-4B4B-92B7-CB1F67D83085.jpeg", "D5ACAA93-C779-4E22-ADFA-6A220489F840.jpeg"],
            ["A7E260CE-8A00-4C5F-A7F5-27336527A981.jpeg", "case_76_1-3.png"],
            ["AR-1.jpg", "AR-2.jpg", "extubation-1.jpg"],
            ["E63574A7-4188-4C8D-8D17-9D67A18A1AFA.jpeg", "F4341CE7-73C9-45C6-99C8-8567A5484B63.jpeg"],
        ]
    )
    missing = run_python(
        ["-m", "deepcovid", "duplicates", str(tmp_path / "nowhere"), "--out", str(out)],
        cwd=REPO,
        timeout=60,
    )
    assert (
        missing.returncode == 2
        and missing.stderr.strip().splitlines()[-1]
        == f"duplicates: error: {tmp_path / 'nowhere'}: no such file or folder"
    )


def test_bad_threshold_parameter_is_named(tmp_path):
    text = (REPO / "params.yaml").read_text().replace("max_distance: 36", "max_distance: 300")
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ConfigError, match="duplicates.max_distance"):
        load_config(tmp_path / "params.yaml")


# --------------------------------------------------------------------------- the split with near-duplicates


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
        "sha256": "",
    }


def _tables():
    pos = pd.DataFrame([_row("cohen", f"p{i}/{k}.png", f"p{i}", 1) for i in range(20) for k in range(2)]).drop(
        columns="pool"
    )
    neg = pd.DataFrame(
        [_row("chexpert", f"n{i}/v.jpg", f"n{i}", 0, "test" if i < 10 else "train") for i in range(30)]
        + [_row("cohen", "p3/neg.png", "p3", 0)]
    )  # a negative image of COVID patient p3
    return pos, neg


def _groups(*members):
    rows = []
    for g, ids in enumerate(members):
        for image_id in ids:
            source, rel = image_id.split("/", 1)
            rows.append(
                {
                    "group": f"d{g:05d}",
                    "image_id": image_id,
                    "source": source,
                    "patient": rel.split("/")[0],
                    "label": int(source == "cohen" and not rel.endswith("neg.png")),
                }
            )
    return pd.DataFrame(rows)


@pytest.mark.parametrize("seed", range(6))
def test_near_duplicates_across_patients_share_a_split(seed):
    pos, neg = _tables()
    near = _groups(["cohen/p1/0.png", "cohen/p8/1.png", "cohen/p15/0.png"], ["chexpert/n2/v.jpg", "chexpert/n20/v.jpg"])
    manifest, report = make_split(pos, neg, covid_test_images=14, val_fraction=0.25, seed=seed, duplicates=near)
    where = manifest.groupby("patient")["split"].first()
    assert where["p1"] == where["p8"] == where["p15"]
    assert manifest.loc[manifest["patient"].isin(["p1", "p8", "p15"]), "split_group"].nunique() == 1
    assert where["n2"] == where["n20"] == "test"  # joined to a test-pool patient
    assert report["near_duplicates"] == {
        "groups": 2,
        "images": 5,
        "groups_of_several_patients": 2,
        "groups_of_both_labels": 0,
        "images_in_manifest": 5,
    }
    without, _ = make_split(pos, neg, covid_test_images=14, val_fraction=0.25, seed=seed)
    assert (
        without.groupby("patient")["split_group"].first().nunique()
        > manifest.groupby("patient")["split_group"].first().nunique()
    )


def test_check_no_leak_fails_on_a_near_duplicate_group_in_two_splits():
    pos, neg = _tables()
    manifest, _ = make_split(pos, neg, covid_test_images=14, val_fraction=0.25, seed=0)
    test_id = manifest.loc[(manifest["split"] == "test") & (manifest["label"] == 1), "image_id"].iloc[0]
    train_id = manifest.loc[(manifest["split"] == "train") & (manifest["label"] == 1), "image_id"].iloc[0]
    check_no_leak(manifest, _groups([test_id]))
    with pytest.raises(SplitError, match=f"near-duplicate group d00000 \\(.*{test_id}.*\\) appears in test and train"):
        check_no_leak(manifest, _groups([test_id, train_id]))


@pytest.mark.parametrize("exclude", [True, False])
def test_negatives_of_covid_patients_are_left_out_or_follow(exclude):
    """A negative of a COVID-19 patient (p3) and a negative that is a near-duplicate of a COVID-19
    image (n12) are counted, and left out or kept with that patient."""
    pos, neg = _tables()
    near = _groups(["cohen/p5/0.png", "chexpert/n12/v.jpg"])
    manifest, report = make_split(
        pos,
        neg,
        covid_test_images=14,
        val_fraction=0.25,
        seed=1,
        duplicates=near,
        exclude_negatives_of_covid_patients=exclude,
    )
    shared = ["chexpert/n12/v.jpg", "cohen/p3/neg.png"]
    assert report["negatives_of_covid_patients"] == {"images": 2, "excluded": exclude, "image_ids": shared}
    assert manifest["image_id"].isin(shared).sum() == (0 if exclude else 2)
    assert len(manifest) == len(pos) + len(neg) - (2 if exclude else 0)
    if not exclude:
        where = manifest.set_index("image_id")["split"]
        assert where["chexpert/n12/v.jpg"] == where["cohen/p5/0.png"]
        assert where["cohen/p3/neg.png"] == where["cohen/p3/0.png"]
