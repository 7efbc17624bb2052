"""Exact Hamming-radius search (deepcovid/data/hamming.py) against comparing every pair, and the
near-duplicate pairs it gives (deepcovid/data/duplicates.py) against the exhaustive search: on
random strings with planted near copies, on hypothesis-drawn sets, and on the real X-rays."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepcovid.data import duplicates as dup
from deepcovid.data import hamming as hm


def _flip(words: np.ndarray, bits, rng) -> np.ndarray:
    out = words.copy()
    for b in rng.choice(64 * len(words), size=bits, replace=False):
        out[b // 64] ^= np.uint64(1) << np.uint64(63 - b % 64)
    return out


def _planted(rng, n_queries, n_entries, words, radius):
    """Random strings, a third of the entries copies of a query with 0 .. radius + 2 bits flipped
    (so pairs sit on both sides of the radius)."""
    q = rng.integers(0, 2**64, size=(n_queries, words), dtype=np.uint64)
    e = rng.integers(0, 2**64, size=(n_entries, words), dtype=np.uint64)
    for k in range(0, n_entries, 3):
        e[k] = _flip(q[rng.integers(n_queries)], int(rng.integers(0, min(radius + 3, 64 * words + 1))), rng)
    return q, e


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("words,radius", [(4, 36), (4, 0), (4, 5), (4, 60), (1, 3), (2, 20), (3, 100)])
def test_radius_pairs_equal_the_exhaustive_search(words, radius):
    rng = np.random.default_rng(words * 1000 + radius)
    q, e = _planted(rng, 150, 1200, words, radius)
    got = hm.radius_pairs(q, e, radius, workers=2)
    want = hm.radius_pairs_exhaustive(q, e, radius)
    assert _same(got, want)
    assert len(got[0]) >= 0.7 * 400 * (radius + 1) / (radius + 3)  # the planted copies within the radius
    assert (got[2] <= radius).all()


def test_every_plan_gives_the_same_pairs():
    """Forced plans (many small parts, parts left out for threshold -1, a few large ones) give
    exactly the chosen plan's pairs: the plan changes the cost only."""
    rng = np.random.default_rng(7)
    q, e = _planted(rng, 80, 600, 4, 30)
    want = hm.radius_pairs_exhaustive(q, e, 30)
    for m in (11, 16, 31, 40, 64):
        sizes = [256 // m + (p < 256 % m) for p in range(m)]
        spare = 30 - m + 1
        thresholds = [spare // m + (p < spare % m) for p in range(m)]
        starts = np.cumsum([0, *sizes[:-1]])
        parts = tuple(hm.Part(int(s), b, t) for s, b, t in zip(starts, sizes, thresholds) if t >= 0)
        assert _same(hm.radius_pairs(q, e, 30, parts=parts), want), m


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(0, 80), st.integers(0, 2**32 - 1), st.integers(0, 60), st.integers(0, 300))
def test_radius_pairs_property(words, radius, seed, n_queries, n_entries):
    rng = np.random.default_rng(seed)
    q, e = _planted(rng, max(n_queries, 1), n_entries, words, radius)
    q = q[:n_queries]
    assert _same(hm.radius_pairs(q, e, radius), hm.radius_pairs_exhaustive(q, e, radius))


def test_plan_prefers_the_index_for_large_sets_and_pairs_for_small_ones():
    assert hm.plan_parts(256, 36, 10, 280) is None
    parts = hm.plan_parts(256, 36, 30_000, 840_000)
    assert parts is not None and all(p.bits <= 24 for p in parts)
    assert sum(p.threshold + 1 for p in parts) >= 36 + 1 - (256 - sum(p.bits for p in parts))


def _hashes_with_copies(rng, n, radius):
    """(n, 28, 4) image hashes (last bit 0) with near copies planted both ways: whole against
    whole, whole against a crop, a crop against whole, at distances around the radius."""
    h = rng.integers(0, 2**64, size=(n, len(dup.CROPS), 4), dtype=np.uint64)
    h[..., 3] &= ~np.uint64(1)
    for k in range(0, n - 1, 4):
        a, b = k, int(rng.integers(k + 1, n))
        crop = int(rng.integers(0, len(dup.CROPS)))
        src = h[a, 0] if k % 8 else h[b, crop]
        flipped = _flip(src, int(rng.integers(0, radius + 3)), rng)
        flipped[3] &= ~np.uint64(1)
        if k % 8:
            h[b, crop] = flipped  # b cropped is near a whole
        else:
            h[a, 0] = flipped  # a whole is near b cropped
    return h


@pytest.mark.parametrize("n,radius", [(300, 36), (900, 36), (400, 12)])
def test_near_pairs_through_the_index_equal_the_exhaustive_search(n, radius):
    h = _hashes_with_copies(np.random.default_rng(n + radius), n, radius)
    skip = [3, 17, n - 1]
    got = dup.near_pairs(h, radius, skip=skip, workers=2)
    want = dup.near_pairs_exhaustive(h, radius, skip=skip)
    pd_equal = got.reset_index(drop=True).equals(want.reset_index(drop=True))
    assert pd_equal, (len(got), len(want))
    assert len(got) >= n // 8
    assert not set(skip) & (set(got["i"]) | set(got["j"]))


def test_near_pairs_equal_the_exhaustive_search_on_the_real_xrays(shared_data):
    """All 624 real Cohen and Actualmed images, at the default threshold and at wider ones where
    hundreds of pairs of different radiographs fall in."""
    paths = sorted((shared_data / "cohen" / "images").iterdir()) + sorted(
        (shared_data / "actualmed" / "images").iterdir()
    )
    hashes, errors, _ = dup.hash_files(paths)
    assert not errors
    for radius in (36, 64, 90):
        got = dup.near_pairs(hashes, radius, workers=2)
        want = dup.near_pairs_exhaustive(hashes, radius)
        assert got.equals(want), radius
    assert len(got) > 300


# --------------------------------------------------------------------------- one pass, bounded memory


def test_streamed_hashes_equal_the_in_memory_ones_and_skip_unreadable_files(tmp_path):
    """hash_files (one pass: DCT coefficients kept, the mean's subtracted at the end) gives the
    bits of hash_thumbnails over all thumbnails at once, with blocks smaller than the set."""
    rng = np.random.default_rng(5)
    paths = []
    for k in range(23):
        coarse = rng.integers(0, 256, size=(5, 7), dtype=np.uint8)
        from PIL import Image

        img = Image.fromarray(coarse).resize((int(rng.integers(60, 400)), int(rng.integers(60, 400))), Image.BICUBIC)
        paths.append(tmp_path / f"{k}.png")
        img.save(paths[-1])
    (tmp_path / "bad.png").write_bytes(b"not a png")
    paths.insert(7, tmp_path / "bad.png")
    thumbs, errors = dup.read_thumbnails(paths)
    ok = [i for i in range(len(paths)) if i not in errors]
    want = np.zeros((len(paths), len(dup.CROPS), 4), dtype=np.uint64)
    want[ok] = dup.hash_thumbnails(thumbs[ok])
    got = dup.hash_files(paths, workers=2, block=5)
    assert list(got.errors) == [7] == list(errors)
    np.testing.assert_array_equal(got.hashes, want)
    np.testing.assert_array_equal(got.mean, thumbs[ok].sum(axis=0, dtype=np.int64) // len(ok))


# --------------------------------------------------------------------------- the pixel check


def test_pixel_correlation_is_the_best_pearson_correlation_over_crops_both_ways():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 8192, size=(len(dup.CROPS), 64, 64)).astype(np.uint16)
    b = rng.integers(0, 8192, size=(len(dup.CROPS), 64, 64)).astype(np.uint16)
    mean = rng.integers(0, 8192, size=(len(dup.CROPS), 64, 64)).astype(np.int64)
    b[5] = np.clip(a[0].astype(np.int64) + rng.integers(-300, 300, size=(64, 64)), 0, 8191)  # b cropped ~ a whole

    def pearson_about(x, y):  # the correlation with the given centre (not the sample mean)
        return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))

    want = max(
        [pearson_about(a[0].astype(float) - mean[k], b[k].astype(float) - mean[k]) for k in range(len(dup.CROPS))]
        + [pearson_about(b[0].astype(float) - mean[k], a[k].astype(float) - mean[k]) for k in range(len(dup.CROPS))]
    )
    terms = dup.pixel_correlation(a, b, mean)
    assert abs(dup.ratio(terms) - want) < 1e-4 and want > 0.9
    exact = terms[0] / math.sqrt(terms[1] * terms[2])
    assert dup.at_least(terms, round(exact - 1e-6, 7)) and not dup.at_least(terms, round(exact + 1e-6, 7))
    assert not dup.at_least((-5, 4, 9), 0.1) and not dup.at_least((0, 0, 9), 0.5)


def test_a_link_the_pixels_do_not_confirm_joins_nothing():
    """a-b and b-c within the distance: linked into one group; the same with the b-c link refused
    by the check: only a-b remain, c alone (no chaining through an unconfirmed link)."""
    h = np.zeros((4, len(dup.CROPS), 4), dtype=np.uint64)
    h[:, :, 0] = np.array([0, 0b1, 0b11, 2**40 - 1], dtype=np.uint64)[:, None]
    groups, _ = dup.duplicate_groups(list("abcd"), h, max_distance=1)
    assert sorted(groups["name"]) == ["a", "b", "c"] and groups["group"].nunique() == 1

    def refuse_bc(pairs):
        return pairs.assign(correlation=0.5, same=~((pairs["i"] == 1) & (pairs["j"] == 2)))

    groups, pairs = dup.duplicate_groups(list("abcd"), h, max_distance=1, check=refuse_bc)
    assert sorted(groups["name"]) == ["a", "b"]
    assert pairs["same"].tolist() == [True, False] and len(pairs) == 2


def test_pixel_check_with_a_small_thumbnail_cache_gives_the_same_answers(tmp_path, monkeypatch):
    """verify_pairs holds at most _MAX_THUMBS thumbnails; with room for 3 it decodes again as it
    goes and still gives every pair's correlation, in order; an image gone since hashing fails
    its pairs (not confirmed) instead of stopping the stage."""
    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(9)
    base = rng.integers(0, 256, size=(6, 8), dtype=np.uint8)
    paths = []
    for k in range(7):
        img = base if k % 2 == 0 else rng.integers(0, 256, size=(6, 8), dtype=np.uint8)
        paths.append(tmp_path / f"{k}.png")
        Image.fromarray(img).resize((120 + k, 100), Image.BICUBIC).save(paths[-1])
    hashes = dup.hash_files(paths)
    pairs = pd.DataFrame({"i": [0, 0, 1, 2, 3, 4, 0], "j": [2, 4, 5, 6, 6, 6, 6], "distance": [0] * 7})
    full = dup.verify_pairs(paths, pairs, hashes.mean, 0.94)
    assert full["same"].tolist()[:2] == [True, True] and not full["same"].iloc[2]
    monkeypatch.setattr(dup, "_MAX_THUMBS", 3)
    small = dup.verify_pairs(paths, pairs, hashes.mean, 0.94, workers=1)
    pd.testing.assert_frame_equal(small, full)
    paths[6].unlink()
    gone = dup.verify_pairs(paths, pairs, hashes.mean, 0.94)
    assert gone["same"].tolist() == [True, True, False, False, False, False, False]


def test_no_pair_within_the_distance_gives_no_group_through_the_check(tmp_path):
    """The pixel check on an empty pair list (nothing near, or every image unreadable) keeps the
    table's columns and types: no group, no error."""
    h = np.random.default_rng(0).integers(0, 2**63, size=(5, len(dup.CROPS), 4), dtype=np.uint64)
    groups, pairs = dup.duplicate_groups(list("abcde"), h, 3, check=lambda p: dup.verify_pairs([], p, None, 0.94))
    assert groups.empty and list(groups.columns) == ["group", "name", "similarity", "closest"]
    assert pairs.empty and pairs["same"].dtype == bool


def test_generated_radiographs_that_hash_alike_are_not_linked_but_planted_copies_are(tmp_path):
    """Generated CheXpert-style radiographs are drawn from one template: many pairs of different
    images fall within a wide hash distance. The pixel check links none of them, and links each
    planted copy (re-encoded, rescaled, cropped, contrast-changed, under another name) with its
    original: the groups are exactly the planted ones."""
    import io

    import yaml
    from PIL import Image

    from deepcovid.synthetic import generate_chexpert

    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())["synthetic"]["chexpert"]
    generate_chexpert(tmp_path / "x", {**cfg, "train_patients": 70, "valid_patients": 0, "lateral_fraction": 0.0}, 5)
    originals = sorted((tmp_path / "x").rglob("view*_frontal.jpg"))
    assert len(originals) >= 80
    planted = {}
    for k, src in enumerate(originals[:12:2]):
        image = Image.open(src).convert("L")
        w, h = image.size
        copy = [
            image.resize((w // 2, h // 2), Image.BILINEAR),
            image.crop((0, 0, w - int(0.04 * w), h)),
            Image.eval(image, lambda v: min(255, int(v * 1.2))),
        ][k % 3]
        buf = io.BytesIO()
        copy.save(buf, "JPEG", quality=60)
        path = tmp_path / f"copy{k}.jpg"
        path.write_bytes(buf.getvalue())
        planted[str(path)] = str(src)
    paths = [str(p) for p in originals] + list(planted)
    hashed = dup.hash_files(paths)
    wide = dup.near_pairs(hashed.hashes, 60, workers=2)
    copy_pairs = {(paths.index(b), paths.index(a)) for a, b in planted.items()}
    different = wide[[(i, j) not in copy_pairs for i, j in zip(wide["i"], wide["j"])]]
    assert len(different) >= 10  # different radiographs that hash alike: the hard case
    checked = dup.verify_pairs(paths, wide, hashed.mean, 0.94)
    confirmed = {(i, j) for i, j, same in zip(checked["i"], checked["j"], checked["same"]) if same}
    assert confirmed == copy_pairs
    groups, _ = dup.duplicate_groups(
        paths, hashed.hashes, 60, workers=2, check=lambda p: dup.verify_pairs(paths, p, hashed.mean, 0.94)
    )
    found = sorted(sorted(g) for g in groups.groupby("group")["name"].apply(list))
    assert found == sorted(sorted([a, b]) for a, b in planted.items())
