"""Exact Hamming-radius search: every (query, entry) pair of bit strings within ``radius`` bits,
without comparing every pair.

Multi-index hashing (Norouzi, Punjani and Fleet, "Fast exact search in Hamming space with
multi-index hashing", TPAMI 2014) with the generalised pigeonhole principle (Qin et al., ICDE
2018): the bits are cut into ``m`` parts, part ``p`` given a threshold ``t_p`` with
``sum(t_p) = radius - m + 1``. Two strings within ``radius`` bits then agree within ``t_p`` bits
on at least one part ``p`` (were every part ``t_p + 1`` or more apart, the whole would be at least
``radius + 1``). Each part indexes the entries by its value; a query looks up every value within
``t_p`` bits of its own in each part (a few thousand look-ups), and only the entries found there
are compared in full. The result is exactly the exhaustive search's (tested against it); only the
cost differs: look-ups grow with the number of queries, compared candidates with queries times
entries times the share of the value space one query's look-ups cover (about 1e-3 at 36 of 255
bits), so the quadratic term is a thousand times smaller than comparing every pair.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from math import comb

import numpy as np

__all__ = ["radius_pairs", "radius_pairs_exhaustive", "plan_parts", "popcount"]

_WORD = 64
_MAX_PART_BITS = 24  # a part's table: 2 ** bits counts (int64), at most 128 MiB
_CANDIDATES_PER_BLOCK = 4_000_000


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each row of uint64 words (the last axis summed)."""
    return np.bitwise_count(x).sum(axis=-1, dtype=np.int64)


@dataclass(frozen=True)
class Part:
    start: int  # first bit (0 = the most significant bit of word 0)
    bits: int
    threshold: int  # look up every value within this many bits of the query's


def plan_parts(total_bits: int, radius: int, n_queries: int, n_entries: int) -> tuple[Part, ...] | None:
    """The parts that minimise the expected work (look-ups plus compared candidates, for
    uniformly random strings) with every part's table at most ``2 ** 24`` values (parts whose
    threshold would be -1 are left out: the pigeonhole needs only the others). Any plan gives
    the same pairs; this only chooses the fastest. ``None`` where comparing every pair is
    cheaper. Needs ``0 <= radius < total_bits``."""
    best, best_cost = None, 4.0 * n_queries * n_entries  # None: compare every pair
    for m in range(-(-total_bits // _MAX_PART_BITS), total_bits + 1):
        sizes = [total_bits // m + (p < total_bits % m) for p in range(m)]
        spare = radius - m + 1  # below 0: some parts get threshold -1 and are not looked up
        thresholds = [spare // m + (p < spare % m) for p in range(m)]
        lookups = sum(sum(comb(b, k) for k in range(t + 1)) for b, t in zip(sizes, thresholds))
        share = sum(sum(comb(b, k) for k in range(t + 1)) / 2.0**b for b, t in zip(sizes, thresholds))
        tables = sum((1 << b) + 3 * n_entries for b, t in zip(sizes, thresholds) if t >= 0)
        cost = n_queries * (lookups + 4.0 * n_entries * share) + tables
        if cost < best_cost:
            starts = np.cumsum([0, *sizes[:-1]])
            best, best_cost = tuple(Part(int(s), b, t) for s, b, t in zip(starts, sizes, thresholds) if t >= 0), cost
    return best


def _field(words: np.ndarray, start: int, bits: int) -> np.ndarray:
    """Bits ``start .. start + bits - 1`` of each row of ``(n, W)`` uint64 words (bit 0 = the
    most significant bit of word 0), as int64."""
    w, offset = divmod(start, _WORD)
    if offset + bits <= _WORD:
        value = words[:, w] >> np.uint64(_WORD - offset - bits)
    else:
        low = offset + bits - _WORD
        value = (words[:, w] << np.uint64(low)) | (words[:, w + 1] >> np.uint64(_WORD - low))
    return (value & np.uint64((1 << bits) - 1)).astype(np.int64)


def _masks(bits: int, threshold: int) -> np.ndarray:
    """Every value of ``bits`` bits with at most ``threshold`` bits set (int64)."""
    out = [0]
    for k in range(1, threshold + 1):
        out += [sum(1 << b for b in chosen) for chosen in itertools.combinations(range(bits), k)]
    return np.array(out, dtype=np.int64)


class _Table:
    """One part's index: the entries sorted by the part's value, and where each value starts."""

    def __init__(self, entries: np.ndarray, part: Part):
        self.part = part
        values = _field(entries, part.start, part.bits)
        self.order = np.argsort(values, kind="stable").astype(np.int32 if len(entries) < 2**31 else np.int64)
        counts = np.bincount(values, minlength=1 << part.bits)
        self.counts = counts.astype(np.int32)
        self.starts = (np.cumsum(counts) - counts).astype(np.int64 if len(entries) >= 2**31 else np.int32)
        self.masks = _masks(part.bits, part.threshold)


def _candidates(table: _Table, query_values: np.ndarray):
    """(row in the query block, entry) for every entry whose part value is within the part's
    threshold of the query's."""
    probes = query_values[:, None] ^ table.masks[None, :]
    counts = table.counts[probes].ravel().astype(np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    ends = np.cumsum(counts)
    positions = np.repeat(table.starts[probes].ravel().astype(np.int64) - (ends - counts), counts) + np.arange(total)
    rows = np.repeat(np.repeat(np.arange(len(query_values)), len(table.masks)), counts)
    return rows, table.order[positions].astype(np.int64)


def radius_pairs(
    queries: np.ndarray, entries: np.ndarray, radius: int, workers: int = 1, parts: tuple[Part, ...] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(query, entry, distance)`` for every pair of rows of ``queries`` ``(nq, W)`` and
    ``entries`` ``(ne, W)`` (uint64 words) within ``radius`` differing bits, sorted by query,
    then entry. The same result as :func:`radius_pairs_exhaustive`."""
    queries = np.ascontiguousarray(queries, dtype=np.uint64)
    entries = np.ascontiguousarray(entries, dtype=np.uint64)
    if queries.ndim != 2 or entries.ndim != 2 or queries.shape[1] != entries.shape[1]:
        raise ValueError(f"queries and entries must be (n, words) alike, got {queries.shape} and {entries.shape}")
    empty = (np.zeros(0, dtype=np.int64),) * 3
    if len(queries) == 0 or len(entries) == 0:
        return empty
    if radius < 0:
        return empty
    total_bits = queries.shape[1] * _WORD
    if radius >= total_bits:
        return radius_pairs_exhaustive(queries, entries, radius)
    parts = parts or plan_parts(total_bits, radius, len(queries), len(entries))
    if parts is None:
        return radius_pairs_exhaustive(queries, entries, radius)
    tables = [_Table(entries, p) for p in parts]
    query_values = [_field(queries, p.start, p.bits) for p in parts]
    # Queries per block: about _CANDIDATES_PER_BLOCK look-ups and candidates together.
    expected = sum(len(t.masks) + len(entries) * len(t.masks) / float(1 << t.part.bits) for t in tables)
    block = int(max(1, min(len(queries), _CANDIDATES_PER_BLOCK // max(1.0, expected))))

    def run(start: int):
        stop = min(start + block, len(queries))
        found = []
        for table, values in zip(tables, query_values):
            rows, ids = _candidates(table, values[start:stop])
            if len(rows) == 0:
                continue
            dist = popcount(queries[start + rows] ^ entries[ids])
            keep = dist <= radius
            found.append(np.stack([rows[keep] + start, ids[keep], dist[keep]], axis=1))
        if not found:
            return np.zeros((0, 3), dtype=np.int64)
        hits = np.concatenate(found)
        return np.unique(hits, axis=0)  # an entry found through several parts counts once

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        blocks = list(pool.map(run, range(0, len(queries), block)))
    hits = np.concatenate(blocks) if blocks else np.zeros((0, 3), dtype=np.int64)
    return hits[:, 0], hits[:, 1], hits[:, 2]


def radius_pairs_exhaustive(
    queries: np.ndarray, entries: np.ndarray, radius: int, chunk: int = 64
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference: every query compared with every entry (quadratic)."""
    queries = np.asarray(queries, dtype=np.uint64)
    entries = np.asarray(entries, dtype=np.uint64)
    found = [np.zeros((0, 3), dtype=np.int64)]
    for start in range(0, len(queries), chunk):
        dist = popcount(queries[start : start + chunk, None, :] ^ entries[None, :, :])
        q, e = np.nonzero(dist <= radius)
        found.append(np.stack([q + start, e, dist[q, e]], axis=1))
    hits = np.concatenate(found)
    return hits[:, 0], hits[:, 1], hits[:, 2]
