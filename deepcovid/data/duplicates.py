"""Near-duplicate radiographs: the same image re-encoded, rescaled, slightly cropped or with
another contrast, under another file name or patient id.

Each image gets a perceptual hash (pHash as ``imagehash.phash`` computes it: the 2-D DCT of a grey
thumbnail, each low frequency above or below their median; here 255 bits of a 64 x 64 thumbnail
equalised by rank and centred on the set's mean thumbnail), of the whole image and of 27 crops of
it, in integer arithmetic only, so the same bits on every CPU (the split is an exact stage). Two
images are near-duplicates when one, whole, is within ``max_distance`` bits of the other whole or
cropped; the groups are the connected components of that relation; ``similarity`` is
``1 - distance / 255``. The threshold and its measurement on real data: README, "Duplicates"."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from tqdm import tqdm

from deepcovid import portable
from deepcovid.data.images import ImageReadError, read_image
from deepcovid.data.sources import image_path, read_sources
from deepcovid.errors import InputError, MissingInputError

log = logging.getLogger("duplicates")

HASH_BITS = 255          # the 16 x 16 lowest DCT frequencies but the constant one
_WORDS = 4               # stored as four uint64 words (the last bit always 0)
_WORK = 256              # images are first reduced to this longer side (one resize)
_THUMB = 64
_LOW = 16
_PREC = 12               # fixed-point bits of the DCT matrix
# Crops (left, top, right, bottom fractions) hashed besides the whole image, so that a copy
# cropped by a few percent on some sides still matches one of them: all sides, one side, two
# sides meeting at a corner, each by 2, 4 and 6%.
_FRACTIONS = (.02, .04, .06)
CROPS = ((0, 0, 0, 0), *[(c, c, c, c) for c in _FRACTIONS],
         *[tuple(c if k == side else 0 for k in range(4)) for c in _FRACTIONS for side in range(4)],
         *[(c * (k in (0, 3)), c * (k in (0, 1)), c * (k in (1, 2)), c * (k in (2, 3)))
           for c in _FRACTIONS for k in range(4)])


def _dct_matrix() -> np.ndarray:
    """The unnormalised DCT-II matrix (as scipy's ``dct(type=2)``: 2 cos(pi k (2n+1) / 2N)),
    its first 16 rows, in 12-bit fixed point."""
    k = np.arange(_LOW, dtype=np.float64)[:, None]
    n = np.arange(_THUMB, dtype=np.float64)[None, :]
    angle = (np.pi * k) * (2.0 * n + 1.0) / (2.0 * _THUMB)
    return np.rint(2.0 * portable.cos(angle) * (1 << _PREC)).astype(np.int64)


_DCT = _dct_matrix()


def equalise(thumb: np.ndarray) -> np.ndarray:
    """Twice the mid-rank of each pixel among the thumbnail's pixels (uint16): the same for any
    monotonic change of contrast, brightness or gamma."""
    counts = np.bincount(thumb.ravel(), minlength=256)
    below = np.cumsum(counts) - counts
    return (2 * below[thumb] + counts[thumb]).astype(np.uint16)


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
    out = np.zeros((len(CROPS), _THUMB, _THUMB), dtype=np.uint16)
    for k, (left, top, right, bottom) in enumerate(CROPS):
        part = gray[int(h * top):h - int(h * bottom), int(w * left):w - int(w * right)]
        part = np.ascontiguousarray(part if part.size else gray)
        out[k] = equalise(portable.resize_uint8(part, _THUMB, _THUMB))
    return out


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
        centred = thumbs[start:start + 32].astype(np.int64) - mean
        low = (_DCT @ centred @ _DCT.T).reshape(centred.shape[:2] + (-1,))[..., 1:]
        median = np.sort(low, axis=-1)[..., HASH_BITS // 2:HASH_BITS // 2 + 1]
        bits = np.concatenate([low > median, np.zeros(low.shape[:2] + (1,), dtype=bool)], axis=-1)
        out[start:start + 32] = np.packbits(bits, axis=-1).view(">u8")
    return out


def read_thumbnails(paths: Sequence, workers: int = 2) -> tuple[np.ndarray, dict[int, str]]:
    """``(len(paths), len(CROPS), 64, 64)`` thumbnails of image files (decoded as the
    preprocess stage decodes them, grey), and ``{index: reason}`` for the files that cannot be
    read (their thumbnails are zero; leave them out with ``skip``)."""
    def one(i):
        try:
            return i, thumbnails(np.asarray(read_image(paths[i], grayscale=True).convert("L"))), ""
        except ImageReadError as exc:
            return i, None, exc.reason
    thumbs = np.zeros((len(paths), len(CROPS), _THUMB, _THUMB), dtype=np.uint16)
    errors: dict[int, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, t, err in tqdm(pool.map(one, range(len(paths))), total=len(paths), desc="thumbnails",
                              mininterval=2):
            if err:
                errors[i] = err
            else:
                thumbs[i] = t
    return thumbs, errors


def hash_files(paths: Sequence, workers: int = 2) -> tuple[np.ndarray, dict[int, str]]:
    """Hashes of image files (:func:`hash_thumbnails` over the readable ones) and the errors."""
    thumbs, errors = read_thumbnails(paths, workers)
    ok = np.array([i for i in range(len(paths)) if i not in errors], dtype=np.int64)
    hashes = np.zeros((len(paths), len(CROPS), _WORDS), dtype=np.uint64)
    hashes[ok] = hash_thumbnails(thumbs[ok])
    return hashes, errors


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x).sum(axis=-1, dtype=np.int64)


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(len(a), len(b))`` distances between images: the fewest differing bits between one
    image whole and the other whole or cropped (any crop of ``CROPS``, either way round)."""
    whole_a, whole_b = a[:, None, 0, :], b[None, :, 0, :]
    a_cropped = _popcount(a[:, None, :, :] ^ whole_b[:, :, None, :]).min(axis=2)
    b_cropped = _popcount(b[None, :, :, :] ^ whole_a[:, :, None, :]).min(axis=2)
    return np.minimum(a_cropped, b_cropped)


def near_pairs(hashes: np.ndarray, max_distance: int, skip: Sequence[int] = (), chunk: int = 16) -> pd.DataFrame:
    """Every pair ``i < j`` within ``max_distance`` (:func:`distances`): columns
    ``i, j, distance``, sorted by ``i, j``."""
    if not 0 <= max_distance < HASH_BITS:
        raise InputError(f"duplicates.max_distance must be in 0..{HASH_BITS - 1}, got {max_distance}")
    valid = np.ones(len(hashes), dtype=bool)
    valid[list(skip)] = False
    found = [np.zeros((0, 3), dtype=np.int64)]
    for start in range(0, len(hashes), chunk):
        dist = distances(hashes[start:start + chunk], hashes)
        i, j = np.nonzero(dist <= max_distance)
        keep = (j > i + start) & valid[i + start] & valid[j]
        found.append(np.stack([i[keep] + start, j[keep], dist[i[keep], j[keep]]], axis=1))
    return pd.DataFrame(np.concatenate(found).astype(np.int64), columns=["i", "j", "distance"])


def duplicate_groups(names: Sequence[str], hashes: np.ndarray, max_distance: int,
                     skip: Sequence[int] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(groups, pairs)``: one row per image in a group of two or more near-duplicates
    (``group, name, similarity, closest``: its highest similarity and the member it has it
    with; ties: the first in ``names``), and every near pair (``name_a, name_b, similarity``).
    Groups (connected components) are numbered ``d00000``... in the order of their first member."""
    names = list(names)
    pairs = near_pairs(hashes, max_distance, skip)
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
    groups = pd.DataFrame({
        "group": [labels[int(component[i])] for i in member],
        "name": [names[i] for i in member],
        "similarity": similarity(least[member]),
        "closest": [names[closest[i]] for i in member],
    })
    pair_table = pd.DataFrame({"name_a": [names[i] for i in pairs["i"]], "name_b": [names[j] for j in pairs["j"]],
                               "similarity": similarity(pairs["distance"].to_numpy())})
    return groups.sort_values(["group", "name"], kind="stable").reset_index(drop=True), pair_table


def similarity(distance) -> np.ndarray:
    """``1 - distance / 255``, rounded to 4 decimals (the same text on every machine)."""
    return np.round(1.0 - np.asarray(distance, dtype=np.float64) / HASH_BITS, 4)


def find_duplicates(raw_dir, positives_csv, negatives_csv, max_distance: int,
                    workers: int = 2) -> tuple[pd.DataFrame, dict]:
    """The duplicates stage: near-duplicate groups among every image the split may use.

    Returns one row per image in a group (``group, image_id, source, patient, label,
    similarity, closest``) and a report (counts; images that cannot be read are left out here
    and rejected with the reason by the preprocess stage)."""
    roots = read_sources(raw_dir)
    table = pd.concat([pd.read_csv(p, dtype=str, keep_default_na=False) for p in (positives_csv, negatives_csv)],
                      ignore_index=True)
    table["image_id"] = table["source"] + "/" + table["relpath"]
    table = table.drop_duplicates("image_id").reset_index(drop=True)
    paths = [image_path(roots, s, r, raw_dir) for s, r in zip(table["source"], table["relpath"])]
    hashes, errors = hash_files(paths, workers)
    for i, reason in errors.items():
        log.warning("%s: not hashed (%s)", table["image_id"][i], reason)
    groups, _ = duplicate_groups(table["image_id"], hashes, max_distance, skip=list(errors))
    info = table.set_index("image_id")
    groups = groups.rename(columns={"name": "image_id"})
    groups.insert(2, "source", info.loc[groups["image_id"], "source"].to_numpy())
    groups.insert(3, "patient", info.loc[groups["image_id"], "patient"].to_numpy())
    groups.insert(4, "label", info.loc[groups["image_id"], "label"].astype(int).to_numpy())
    report = {"max_distance": int(max_distance), "min_similarity": float(similarity(max_distance)),
              "images_hashed": int(len(table) - len(errors)), "images_not_hashed": int(len(errors)),
              **group_summary(groups)}
    log.info("%d near-duplicate groups (%d images; %d span patients, %d span labels) at distance <= %d",
             report["groups"], report["images"], report["groups_of_several_patients"],
             report["groups_of_both_labels"], max_distance)
    return groups, report


def group_summary(groups: pd.DataFrame) -> dict:
    """Counts of near-duplicate groups (``group, source, patient, label`` rows): all, their
    images, those joining several patients, those holding both labels."""
    if groups.empty:
        return {"groups": 0, "images": 0, "groups_of_several_patients": 0, "groups_of_both_labels": 0}
    by_group = groups.groupby("group")
    patients = by_group[["source", "patient"]].apply(lambda g: len(g.drop_duplicates()))
    return {"groups": int(by_group.ngroups), "images": int(len(groups)),
            "groups_of_several_patients": int((patients > 1).sum()),
            "groups_of_both_labels": int((by_group["label"].nunique() > 1).sum())}


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


def audit_paths(paths: Sequence[str], max_distance: int,
                workers: int = 2) -> tuple[pd.DataFrame, dict[str, str], int]:
    """``deepcovid duplicates``: groups among the image files in ``paths`` (files and folders):
    ``group, path, similarity, closest``, ``{path: reason}`` for the files that are not
    readable images, and the number of files."""
    names = image_files(paths)
    hashes, errors = hash_files(names, workers)
    groups, _ = duplicate_groups(names, hashes, max_distance, skip=list(errors))
    return groups.rename(columns={"name": "path"}), {names[i]: reason for i, reason in errors.items()}, len(names)
