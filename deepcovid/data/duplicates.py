"""Near-duplicate radiographs: the same image re-encoded, rescaled, slightly cropped or with another
contrast, under another file name or patient id.

Each image gets a perceptual hash (pHash as ``imagehash.phash`` computes it: the 2-D DCT of a grey
thumbnail, each low frequency above or below their median; here 255 bits of a 64 x 64 thumbnail
equalised by rank and centred on the set's mean thumbnail), of the whole image and of 27 crops of
it, in integer arithmetic only, so the same bits on every CPU (the split is an exact stage). Two
images are near-duplicates when one, whole, is within ``max_distance`` bits of the other whole or
cropped (found through a multi-index, :mod:`deepcovid.data.hamming`, not by comparing every pair)
and the pixels of their thumbnails agree (:func:`pixel_correlation` at least ``min_correlation``);
the groups are the connected components of the confirmed pairs; ``similarity`` is
``1 - distance / 255``. The thresholds and their measurement on real data: docs/audit.md, "Duplicates"."""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from deepcovid import portable
from deepcovid.data import hamming
from deepcovid.data.images import ImageReadError, read_image
from deepcovid.data.sources import image_path, read_sources
from deepcovid.errors import InputError, MissingInputError
from deepcovid.runner import die_with_parent

log = logging.getLogger("duplicates")

HASH_BITS = 255  # the 16 x 16 lowest DCT frequencies but the constant one
_WORDS = 4  # stored as four uint64 words (the last bit always 0)
_WORK = 256  # images are first reduced to this longer side (one resize)
_THUMB = 64
_LOW = 16
_PREC = 12  # fixed-point bits of the DCT matrix
_MAX_THUMBS = 4096  # thumbnails held at once by the pixel check (about 0.9 GB)
# Crops (left, top, right, bottom fractions) hashed besides the whole image, so that a copy
# cropped by a few percent on some sides still matches one of them: all sides, one side, two
# sides meeting at a corner, each by 2, 4 and 6%.
_FRACTIONS = (0.02, 0.04, 0.06)
CROPS = (
    (0, 0, 0, 0),
    *[(c, c, c, c) for c in _FRACTIONS],
    *[tuple(c if k == side else 0 for k in range(4)) for c in _FRACTIONS for side in range(4)],
    *[
        (c * (k in (0, 3)), c * (k in (0, 1)), c * (k in (1, 2)), c * (k in (2, 3)))
        for c in _FRACTIONS
        for k in range(4)
    ],
)


def _dct_matrix() -> np.ndarray:
    """The unnormalised DCT-II matrix (as scipy's ``dct(type=2)``: 2 cos(pi k (2n+1) / 2N)),
    its first 16 rows, in 12-bit fixed point."""
    k = np.arange(_LOW, dtype=np.float64)[:, None]
    n = np.arange(_THUMB, dtype=np.float64)[None, :]
    angle = (np.pi * k) * (2.0 * n + 1.0) / (2.0 * _THUMB)
    return np.rint(2.0 * portable.cos(angle) * (1 << _PREC)).astype(np.int64)


_DCT = _dct_matrix()
_DCT_FLOAT = _DCT.astype(np.float64)  # the same integers, for BLAS (see _low_frequencies)


def equalise(thumb: np.ndarray) -> np.ndarray:
    """Twice the mid-rank of each pixel among the thumbnail's pixels (uint16): the same for any
    monotonic change of contrast, brightness or gamma. A stack ``(..., 64, 64)`` is equalised
    thumbnail by thumbnail."""
    thumb = np.asarray(thumb)
    flat = thumb.reshape(-1, thumb.shape[-2] * thumb.shape[-1])
    offsets = 256 * np.arange(len(flat))[:, None]  # one histogram per thumbnail, in one count
    counts = np.bincount((flat + offsets).ravel(), minlength=256 * len(flat)).reshape(len(flat), 256)
    below = np.cumsum(counts, axis=1) - counts
    ranked = np.take_along_axis(2 * below + counts, flat.astype(np.intp), axis=1)
    return ranked.astype(np.uint16).reshape(thumb.shape)


def thumbnails(gray: np.ndarray) -> np.ndarray:
    """``(len(CROPS), 64, 64)`` equalised thumbnails (:func:`equalise`) of a 2-D uint8 image
    and of each of its crops in ``CROPS`` (integer arithmetic)."""
    if gray.ndim != 2 or gray.dtype != np.uint8 or min(gray.shape) < 1:
        raise TypeError(f"thumbnails needs a non-empty 2-D uint8 array, got {gray.dtype} {gray.shape}")
    h, w = gray.shape
    if max(h, w) > _WORK:
        scale = _WORK / max(h, w)
        gray = portable.resize_uint8(gray, max(1, round(w * scale)), max(1, round(h * scale)))
        h, w = gray.shape
    boxes = []
    for left, top, right, bottom in CROPS:
        box = (int(h * top), h - int(h * bottom), int(w * left), w - int(w * right))
        boxes.append(box if box[0] < box[1] and box[2] < box[3] else (0, h, 0, w))  # an empty crop: the whole
    resized = portable.resize_uint8_crops(np.ascontiguousarray(gray), boxes, _THUMB, _THUMB)
    return equalise(resized)


def read_thumbnails(
    paths: Sequence, workers: int = 2, max_pixels: int | None = None
) -> tuple[np.ndarray, dict[int, str]]:
    """``(len(paths), len(CROPS), 64, 64)`` thumbnails of image files (decoded as the
    preprocess stage decodes them, grey), and ``{index: reason}`` for the files that cannot be
    read (their thumbnails are zero; leave them out with ``skip``). All in memory (229 KB an
    image): for tests and benchmarks; the stage streams through :func:`hash_files`."""
    thumbs = np.zeros((len(paths), len(CROPS), _THUMB, _THUMB), dtype=np.uint16)
    errors: dict[int, str] = {}
    for i, t, err in _thumbnail_stream(paths, workers, max_pixels):
        if err:
            errors[i] = err
        else:
            thumbs[i] = t
    return thumbs, errors


def _thumbnails_of_file(path, max_pixels: int | None) -> tuple[np.ndarray | None, str]:
    """(thumbnails, "") of one image file, or (None, the reason it cannot be read)."""
    try:
        image = read_image(path, grayscale=True, max_pixels=max_pixels)
        return thumbnails(np.asarray(image.convert("L"))), ""
    except ImageReadError as exc:
        return None, exc.reason


def _start_worker(parent: int) -> None:
    die_with_parent(parent)
    # one BLAS thread in each worker: OpenBLAS's own threads on top of ours, on a machine with
    # other work, made hashing several times slower (bench/busy_machine.py)
    threadpool_limits(1, user_api="blas")


def _thumbnail_stream(paths: Sequence, workers: int, max_pixels: int | None = None):
    """``(index, thumbnails or None, error)`` for each file, in order, decoded in ``workers``
    processes (none for 1: in this one); images above ``max_pixels`` (``preprocess.max_pixels``;
    None: Pillow's limit) are refused from their header, before decoding. At most a few images
    are decoded ahead of the consumer: memory does not grow with the set."""
    progress = tqdm(range(len(paths)), desc="thumbnails", mininterval=2)
    if workers <= 1 or len(paths) <= 1:
        with threadpool_limits(1, user_api="blas"):
            for i in progress:
                yield (i, *_thumbnails_of_file(paths[i], max_pixels))
        return
    with ProcessPoolExecutor(max_workers=workers, initializer=_start_worker, initargs=(os.getpid(),)) as pool:
        window = 4 * workers
        pending = [pool.submit(_thumbnails_of_file, paths[i], max_pixels) for i in range(min(window, len(paths)))]
        for i in progress:
            result = pending.pop(0).result()
            if i + window < len(paths):
                pending.append(pool.submit(_thumbnails_of_file, paths[i + window], max_pixels))
            yield (i, *result)


def _low_frequencies(thumbs: np.ndarray) -> np.ndarray:
    """``(..., 255)`` int64: the 16 x 16 lowest fixed-point DCT coefficients but the constant one,
    of thumbnails with values of at most 2 ** 13 in magnitude (equalised, or centred on a mean).

    Computed in float64 by BLAS, exactly: the DCT's entries and the thumbnails' values are
    integers of at most 2 ** 13, so every product and partial sum of the first product is an
    integer of at most 64 x 2 ** 26 = 2 ** 32 and of the second at most 2 ** 51 < 2 ** 53, all
    representable: any summation order or fused multiply-add gives the exact integers."""
    low = (_DCT_FLOAT @ thumbs.astype(np.float64) @ _DCT_FLOAT.T).astype(np.int64)
    return low.reshape(low.shape[:-2] + (-1,))[..., 1:]


def _bits(low: np.ndarray) -> np.ndarray:
    """``(..., 4)`` uint64 hashes: each coefficient above the median of its row or not."""
    median = np.sort(low, axis=-1)[..., HASH_BITS // 2 : HASH_BITS // 2 + 1]
    bits = np.concatenate([low > median, np.zeros(low.shape[:-1] + (1,), dtype=bool)], axis=-1)
    return np.packbits(bits, axis=-1).view(">u8").astype(np.uint64)


def hash_thumbnails(thumbs: np.ndarray) -> np.ndarray:
    """``(n, len(CROPS), 4)`` uint64 hashes of ``(n, len(CROPS), 64, 64)`` thumbnails.

    Each thumbnail is centred on the set's mean thumbnail of its crop (all chest X-rays share a
    layout; what tells two apart is how each differs from it), then hashed: each of its 16 x 16
    lowest DCT coefficients but the constant one above their median or not. Integers only (the
    mean rounded down, a fixed-point DCT), so the same bits on every CPU."""
    thumbs = np.asarray(thumbs)
    out = np.zeros(thumbs.shape[:2] + (_WORDS,), dtype=np.uint64)
    if len(thumbs) == 0:
        return out
    mean = thumbs.sum(axis=0, dtype=np.int64) // len(thumbs)
    for start in range(0, len(thumbs), 32):
        out[start : start + 32] = _bits(_low_frequencies(thumbs[start : start + 32].astype(np.int64) - mean))
    return out


class HashSet(NamedTuple):
    hashes: np.ndarray  # (n, len(CROPS), 4) uint64
    errors: dict[int, str]  # {index: reason} of the files that cannot be read (hashes zero)
    mean: np.ndarray  # (len(CROPS), 64, 64) int64: the mean thumbnails the hashes are centred on


def hash_files(paths: Sequence, workers: int = 2, block: int = 256, max_pixels: int | None = None) -> HashSet:
    """Hashes of image files and ``{index: reason}`` for those that cannot be read (their hashes
    are zero), the same bits as :func:`hash_thumbnails` over the readable ones, and the mean
    thumbnails they are centred on.

    One pass over the files, in bounded memory: the DCT is linear, so each thumbnail's
    coefficients are kept (in a temporary file, 57 KB an image) with the running sum of the
    thumbnails, and the mean's coefficients are subtracted at the end: integers, exact."""
    n, coeffs = len(paths), len(CROPS) * HASH_BITS
    total = np.zeros((len(CROPS), _THUMB, _THUMB), dtype=np.int64)
    errors: dict[int, str] = {}
    hashes = np.zeros((n, len(CROPS), _WORDS), dtype=np.uint64)
    with tempfile.TemporaryFile(prefix="deepcovid-dct-") as store:
        batch: list[np.ndarray] = []
        for i, thumbs, err in _thumbnail_stream(paths, workers, max_pixels):
            if err:
                errors[i] = err
                thumbs = np.zeros((len(CROPS), _THUMB, _THUMB), dtype=np.uint16)
            else:
                total += thumbs
            batch.append(_low_frequencies(thumbs))
            if len(batch) == block or i == n - 1:
                store.write(np.stack(batch).tobytes())
                batch = []
        ok = n - len(errors)
        if ok == 0:
            return HashSet(hashes, errors, total)
        mean = total // ok
        mean_low = _low_frequencies(mean)
        store.seek(0)
        for start in range(0, n, block):
            count = min(block, n - start)
            low = np.frombuffer(store.read(count * coeffs * 8), dtype=np.int64).reshape(count, len(CROPS), HASH_BITS)
            hashes[start : start + count] = _bits(low - mean_low)
    if errors:
        hashes[sorted(errors)] = 0
    return HashSet(hashes, errors, mean)


def _correlation_terms(x: np.ndarray, y: np.ndarray) -> tuple[int, int, int]:
    """(sum xy, sum xx, sum yy) of two centred thumbnails, exact integers."""
    x, y = x.astype(np.int64).ravel(), y.astype(np.int64).ravel()
    return int(x @ y), int(x @ x), int(y @ y)


def pixel_correlation(thumbs_a: np.ndarray, thumbs_b: np.ndarray, mean: np.ndarray) -> tuple[int, int, int]:
    """The highest correlation between one image whole and the other whole or cropped (either
    way round), both centred on the set's mean thumbnail of that crop (the framing the two
    share when they are the same radiograph): ``(sum xy, sum xx, sum yy)`` of the
    best, exact integers (compare with :func:`at_least`; turn into a number with :func:`ratio`).
    Ties: the first of a-whole against b's crops in order, then b-whole against a's."""
    best = None
    thumbs_a, thumbs_b = thumbs_a.astype(np.int64), thumbs_b.astype(np.int64)
    for whole, crops in ((thumbs_a[0], thumbs_b), (thumbs_b[0], thumbs_a)):
        for crop, centre in zip(crops, mean):
            terms = _correlation_terms(whole - centre, crop - centre)  # one framing, one centre
            if best is None or _greater(terms, best):
                best = terms
    return best


def _greater(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    """Whether correlation a > correlation b, exactly (signed squares of integers)."""

    def signed(t):
        num, xx, yy = t
        return (num * abs(num), xx * yy)

    (na, da), (nb, db) = signed(a), signed(b)
    if da == 0 or db == 0:
        return db == 0 and da != 0 and na > 0
    return na * db > nb * da


def at_least(terms: tuple[int, int, int], threshold: float) -> bool:
    """Whether the correlation of ``terms`` is at least ``threshold`` (in 0..1, read as the
    exact decimal it prints as), in integers only."""
    num, xx, yy = terms
    if num <= 0 or xx == 0 or yy == 0:
        return threshold <= 0 and num >= 0
    p, q = Fraction(repr(float(threshold))).as_integer_ratio()
    return num * num * q * q >= p * p * xx * yy


def ratio(terms: tuple[int, int, int]) -> float:
    """The correlation as a number, rounded to 4 decimals (for reports)."""
    num, xx, yy = terms
    return round(num / math.sqrt(xx * yy), 4) if xx and yy else 0.0


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(len(a), len(b))`` distances between images: the fewest differing bits between one
    image whole and the other whole or cropped (any crop of ``CROPS``, either way round)."""
    whole_a, whole_b = a[:, None, 0, :], b[None, :, 0, :]
    a_cropped = hamming.popcount(a[:, None, :, :] ^ whole_b[:, :, None, :]).min(axis=2)
    b_cropped = hamming.popcount(b[None, :, :, :] ^ whole_a[:, :, None, :]).min(axis=2)
    return np.minimum(a_cropped, b_cropped)


def _check_distance(max_distance: int) -> None:
    if not 0 <= max_distance < HASH_BITS:
        raise InputError(f"duplicates.max_distance must be in 0..{HASH_BITS - 1}, got {max_distance}")


def near_pairs(hashes: np.ndarray, max_distance: int, skip: Sequence[int] = (), workers: int = 1) -> pd.DataFrame:
    """Every pair ``i < j`` within ``max_distance`` (:func:`distances`): columns
    ``i, j, distance``, sorted by ``i, j``.

    Through a multi-index (:mod:`deepcovid.data.hamming`): each image whole is looked up among
    every image's whole and cropped hashes, so both ways round are covered; the same pairs as
    :func:`near_pairs_exhaustive` (tested), without comparing every pair."""
    _check_distance(max_distance)
    valid = np.setdiff1d(np.arange(len(hashes)), np.asarray(list(skip), dtype=np.int64))
    crops = hashes.shape[1] if hashes.ndim == 3 else 1
    query, entry, dist = hamming.radius_pairs(
        hashes[valid, 0, :], hashes[valid].reshape(-1, hashes.shape[-1]), max_distance, workers=workers
    )
    i, j = valid[query], valid[entry // crops]
    keep = i != j
    found = pd.DataFrame({"i": np.minimum(i, j)[keep], "j": np.maximum(i, j)[keep], "distance": dist[keep]})
    found = found.groupby(["i", "j"], sort=True, as_index=False)["distance"].min()
    return found.astype(np.int64).reset_index(drop=True)


def near_pairs_exhaustive(
    hashes: np.ndarray, max_distance: int, skip: Sequence[int] = (), chunk: int = 16
) -> pd.DataFrame:
    """:func:`near_pairs` by comparing every pair (quadratic): the reference of the tests."""
    _check_distance(max_distance)
    valid = np.ones(len(hashes), dtype=bool)
    valid[list(skip)] = False
    found = [np.zeros((0, 3), dtype=np.int64)]
    for start in range(0, len(hashes), chunk):
        dist = distances(hashes[start : start + chunk], hashes)
        i, j = np.nonzero(dist <= max_distance)
        keep = (j > i + start) & valid[i + start] & valid[j]
        found.append(np.stack([i[keep] + start, j[keep], dist[i[keep], j[keep]]], axis=1))
    return pd.DataFrame(np.concatenate(found).astype(np.int64), columns=["i", "j", "distance"])


def verify_pairs(
    paths: Sequence,
    pairs: pd.DataFrame,
    mean: np.ndarray,
    min_correlation: float,
    workers: int = 2,
    max_pixels: int | None = None,
) -> pd.DataFrame:
    """``pairs`` (``i, j, distance``) with a ``correlation`` column (:func:`pixel_correlation`
    of the two images' thumbnails) and a ``same`` column: whether it reaches ``min_correlation``.

    The second, stricter look at each pair the hashes found: two different radiographs drawn
    alike can agree on the signs of 255 coefficients while their pixels differ; the same
    radiograph re-encoded, rescaled, cropped or with another contrast keeps its pixels. The
    thumbnails of the images in pairs are decoded again, at most ``_MAX_THUMBS`` held at once
    (229 KB each)."""
    pairs = pairs.copy()
    terms: list[tuple[int, int, int]] = []
    thumbs: dict[int, np.ndarray | None] = {}
    start = 0
    while start < len(pairs):  # chunks of pairs whose images fit the cache together
        stop, needed = start, set()
        while stop < len(pairs):
            new = {pairs["i"].iat[stop], pairs["j"].iat[stop]} - needed
            if needed and len(needed) + len(new) > _MAX_THUMBS:
                break
            needed |= new
            stop += 1
        thumbs = {i: t for i, t in thumbs.items() if i in needed}
        missing = sorted(needed - set(thumbs))
        for k, t, err in _thumbnail_stream([paths[i] for i in missing], workers, max_pixels):
            if err:  # was readable when hashed: changed since; the pair cannot be confirmed
                log.warning("%s: not re-read for the pixel check (%s)", paths[missing[k]], err)
            thumbs[missing[k]] = t
        for i, j in zip(pairs["i"].iloc[start:stop], pairs["j"].iloc[start:stop]):
            a, b = thumbs[i], thumbs[j]
            terms.append((0, 0, 0) if a is None or b is None else pixel_correlation(a, b, mean))
        start = stop
    pairs["correlation"] = np.array([ratio(t) for t in terms], dtype=np.float64)
    pairs["same"] = np.array([at_least(t, min_correlation) for t in terms], dtype=bool)
    return pairs


def duplicate_groups(
    names: Sequence[str],
    hashes: np.ndarray,
    max_distance: int,
    skip: Sequence[int] = (),
    check: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
    workers: int = 1,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(groups, pairs)``: one row per image in a group of two or more near-duplicates
    (``group, name, similarity, closest``: its highest similarity and the member it has it
    with; ties: the first in ``names``), and every near pair (``name_a, name_b, similarity``,
    and ``correlation, same`` when checked).

    ``check``: the second look at the pairs within ``max_distance`` (:func:`verify_pairs`);
    only pairs it confirms (``same``) link images. Groups are the connected components of the
    confirmed links, numbered ``d00000``... in the order of their first member."""
    names = list(names)
    found = near_pairs(hashes, max_distance, skip, workers=workers)
    if check is not None:
        found = check(found)
    pairs = found.loc[found["same"].to_numpy(dtype=bool)] if "same" in found else found
    n = len(names)
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs["i"], pairs["j"])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    least = np.full(n, HASH_BITS + 1, dtype=np.int64)
    closest = np.full(n, -1, dtype=np.int64)
    for a, b, d in zip(pairs["i"], pairs["j"], pairs["distance"]):
        for x, y in ((a, b), (b, a)):
            if d < least[x]:
                least[x], closest[x] = d, y
    member = np.nonzero(closest >= 0)[0]
    labels: dict[int, str] = {}
    for i in member:
        labels.setdefault(int(component[i]), f"d{len(labels):05d}")
    groups = pd.DataFrame(
        {
            "group": [labels[int(component[i])] for i in member],
            "name": [names[i] for i in member],
            "similarity": similarity(least[member]),
            "closest": [names[closest[i]] for i in member],
        }
    )
    pair_table = pd.DataFrame(
        {
            "name_a": [names[i] for i in found["i"]],
            "name_b": [names[j] for j in found["j"]],
            "similarity": similarity(found["distance"].to_numpy()),
        }
    )
    for column in ("correlation", "same"):
        if column in found:
            pair_table[column] = found[column].to_numpy()
    return groups.sort_values(["group", "name"], kind="stable").reset_index(drop=True), pair_table


def similarity(distance) -> np.ndarray:
    """``1 - distance / 255``, rounded to 4 decimals (the same text on every machine)."""
    return np.round(1.0 - np.asarray(distance, dtype=np.float64) / HASH_BITS, 4)


def find_duplicates(
    raw_dir,
    positives_csv,
    negatives_csv,
    max_distance: int,
    min_correlation: float,
    workers: int = 2,
    max_pixels: int | None = None,
) -> tuple[pd.DataFrame, dict]:
    """The duplicates stage: near-duplicate groups among every image the split may use.

    Returns one row per image in a group (``group, image_id, source, patient, label,
    similarity, closest``) and a report (counts; images that cannot be read are left out here
    and rejected with the reason by the preprocess stage)."""
    roots = read_sources(raw_dir)
    table = pd.concat(
        [pd.read_csv(p, dtype=str, keep_default_na=False) for p in (positives_csv, negatives_csv)], ignore_index=True
    )
    table["image_id"] = table["source"] + "/" + table["relpath"]
    table = table.drop_duplicates("image_id").reset_index(drop=True)
    paths = [image_path(roots, s, r, raw_dir) for s, r in zip(table["source"], table["relpath"])]
    hashes, errors, mean = hash_files(paths, workers, max_pixels=max_pixels)
    for i, reason in errors.items():
        log.warning("%s: not hashed (%s)", table["image_id"][i], reason)
    groups, pairs = duplicate_groups(
        table["image_id"],
        hashes,
        max_distance,
        skip=list(errors),
        workers=workers,
        check=lambda p: verify_pairs(paths, p, mean, min_correlation, workers, max_pixels),
    )
    info = table.set_index("image_id")
    groups = groups.rename(columns={"name": "image_id"})
    groups.insert(2, "source", info.loc[groups["image_id"], "source"].to_numpy())
    groups.insert(3, "patient", info.loc[groups["image_id"], "patient"].to_numpy())
    groups.insert(4, "label", info.loc[groups["image_id"], "label"].astype(int).to_numpy())
    report = {
        "max_distance": int(max_distance),
        "min_similarity": float(similarity(max_distance)),
        "min_correlation": float(min_correlation),
        "images_hashed": int(len(table) - len(errors)),
        "images_not_hashed": int(len(errors)),
        "pairs_within_distance": int(len(pairs)),
        "pairs_confirmed": int(pairs["same"].sum()),
        **group_summary(groups),
    }
    log.info(
        "%d near-duplicate groups (%d images; %d span patients, %d span labels): %d of %d pairs within "
        "distance %d confirmed by pixels (correlation >= %s)",
        report["groups"],
        report["images"],
        report["groups_of_several_patients"],
        report["groups_of_both_labels"],
        report["pairs_confirmed"],
        report["pairs_within_distance"],
        max_distance,
        min_correlation,
    )
    return groups, report


def group_summary(groups: pd.DataFrame) -> dict:
    """Counts of near-duplicate groups (``group, source, patient, label`` rows): all, their
    images, those joining several patients, those holding both labels."""
    if groups.empty:
        return {"groups": 0, "images": 0, "groups_of_several_patients": 0, "groups_of_both_labels": 0}
    by_group = groups.groupby("group")
    patients = by_group[["source", "patient"]].apply(lambda g: len(g.drop_duplicates()))
    return {
        "groups": int(by_group.ngroups),
        "images": int(len(groups)),
        "groups_of_several_patients": int((patients > 1).sum()),
        "groups_of_both_labels": int((by_group["label"].nunique() > 1).sum()),
    }


def image_files(paths: Sequence[str]) -> list[str]:
    """The files named in ``paths``, and every file under the folders among them (sorted),
    each as given joined with its path inside the folder."""
    found = []
    for given in paths:
        p = Path(given)
        if p.is_dir():
            found += sorted(str(Path(given) / f.relative_to(p)) for f in p.rglob("*") if f.is_file())
        elif p.is_file():
            found.append(str(given))
        else:
            raise MissingInputError(f"{given}: no such file or folder")
    return found


def audit_paths(
    paths: Sequence[str], max_distance: int, min_correlation: float, workers: int = 2, max_pixels: int | None = None
) -> tuple[pd.DataFrame, dict[str, str], int]:
    """``deepcovid duplicates``: groups among the image files in ``paths`` (files and folders):
    ``group, path, similarity, closest``, ``{path: reason}`` for the files that are not
    readable images, and the number of files."""
    names = image_files(paths)
    hashes, errors, mean = hash_files(names, workers, max_pixels=max_pixels)
    groups, _ = duplicate_groups(
        names,
        hashes,
        max_distance,
        skip=list(errors),
        workers=workers,
        check=lambda p: verify_pairs(names, p, mean, min_correlation, workers, max_pixels),
    )
    return groups.rename(columns={"name": "path"}), {names[i]: reason for i, reason in errors.items()}, len(names)
