"""Select the non-COVID images (negatives) and propose a pool (train or test) for each.

CheXpert (paper, synthetic): frontal images positive for exactly one of the 14 categories,
sampled per category into patient-disjoint test and training pools, as the paper did. Public:
Actualmed "No finding" and Cohen's non-COVID frontal X-rays, patients sent to the test pool
with a given probability. A source with fewer images than asked gives what it has (reported)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from deepcovid.config import Negatives
from deepcovid.data.metadata import read_chexpert, read_cohen_style
from deepcovid.data.positives import is_covid, is_frontal, is_xray
from deepcovid.data.sources import read_sources, source_root, unsafe_rows
from deepcovid.labels import CHEXPERT_CATEGORIES

log = logging.getLogger(__name__)
NORMAL = "No Finding"


def chexpert_single_label(frame: pd.DataFrame) -> pd.DataFrame:
    """Frontal rows positive (1.0) for exactly one category; adds ``category``."""
    labels = frame[CHEXPERT_CATEGORIES].to_numpy(dtype=float)
    positive = labels == 1.0
    single = positive.sum(axis=1) == 1
    keep = single & frame["frontal"].to_numpy()
    out = frame.loc[keep, ["source", "relpath", "patient", "view", "csv"]].copy()
    out["category"] = [CHEXPERT_CATEGORIES[i] for i in positive[keep].argmax(axis=1)]
    return out.reset_index(drop=True)


def _with_groups(frame: pd.DataFrame) -> pd.DataFrame:
    normal = frame["category"].str.lower().eq(NORMAL.lower())
    return frame.assign(label=0, group=np.where(normal, "normal", "other-disease"))


def sample_chexpert(candidates: pd.DataFrame, counts: dict, seed: int) -> tuple[pd.DataFrame, dict]:
    """Sample test and training pools per category, with disjoint patients.

    ``counts`` = {"train": {"no_finding": n, "per_category": m}, "test": {...}}.
    Categories are taken from the scarcest to the most common; within a category the test
    pool is filled first from patients not already in the training pool, then the training
    pool from patients not in the test pool. When a category holds fewer images than the two
    pools ask for, what exists is shared between them in proportion to the requests.
    """
    rng = np.random.default_rng(seed)
    pool_of_patient: dict[str, str] = {}
    chosen = []
    report = {}
    sizes = candidates["category"].value_counts()
    order = sorted(CHEXPERT_CATEGORIES, key=lambda c: (int(sizes.get(c, 0)), CHEXPERT_CATEGORIES.index(c)))
    for cat in order:
        key = "no_finding" if cat == NORMAL else "per_category"
        want = {pool: int(counts[pool][key]) for pool in ("test", "train")}
        rows = candidates[candidates["category"] == cat]
        rows = rows.iloc[rng.permutation(len(rows))]
        available = len(rows)
        total = sum(want.values())
        if available < total and total > 0:
            share = int(round(available * want["test"] / total))
            want = {"test": min(want["test"], share), "train": min(want["train"], available - share)}
        got = {}
        for pool in ("test", "train"):
            other = "train" if pool == "test" else "test"
            taken = []
            for idx, patient in zip(rows.index, rows["patient"]):
                if len(taken) >= want[pool]:
                    break
                if pool_of_patient.get(patient, pool) == other:
                    continue
                pool_of_patient[patient] = pool
                taken.append(idx)
            rows = rows.drop(index=taken)
            chosen.append(candidates.loc[taken].assign(pool=pool))
            got[pool] = len(taken)
        asked = {pool: int(counts[pool][key]) for pool in ("train", "test")}
        report[cat] = {"available": available, "asked": asked, "taken": {"train": got["train"], "test": got["test"]}}
        for pool in ("train", "test"):
            if got[pool] < asked[pool]:
                log.warning(
                    "chexpert %r: %d of %d asked for the %s pool (source has %d eligible images)",
                    cat,
                    got[pool],
                    asked[pool],
                    pool,
                    available,
                )
    out = pd.concat(chosen, ignore_index=True) if chosen else candidates.head(0).assign(pool="")
    return _with_groups(out), report


def public_negatives(metas: list[pd.DataFrame], frontal_views: list[str]) -> tuple[pd.DataFrame, dict]:
    """Non-COVID frontal X-rays of Cohen-style sources with a usable finding."""
    frames, report = [], {}
    for meta in metas:
        source = str(meta["source"].iloc[0]) if len(meta) else "?"
        finding = meta["finding"].str.strip()
        usable = finding.ne("") & finding.str.lower().ne("todo")
        keep = is_xray(meta["modality"]) & ~is_covid(meta["finding"]) & is_frontal(meta["view"], frontal_views)
        report[source] = {
            "non_covid_frontal_xrays": int(keep.sum()),
            "dropped_empty_or_todo_finding": int((keep & ~usable).sum()),
        }
        rows = meta[keep & usable]
        frames.append(
            rows.assign(category=rows["finding"].where(~rows["finding"].str.lower().eq("no finding"), NORMAL))
        )
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return _with_groups(out[["source", "relpath", "patient", "view", "finding", "category"]]), report


def assign_pools_by_patient(frame: pd.DataFrame, test_fraction: float, seed: int) -> pd.DataFrame:
    """Put each (source, patient) in the test pool with probability ``test_fraction``."""
    rng = np.random.default_rng(seed)
    keys = sorted(set(zip(frame["source"], frame["patient"])))
    draw = rng.random(len(keys))
    pool = {k: ("test" if d < test_fraction else "train") for k, d in zip(keys, draw)}
    return frame.assign(pool=[pool[k] for k in zip(frame["source"], frame["patient"])])


def drop_unsafe(frame: pd.DataFrame, root, source: str, report: dict) -> pd.DataFrame:
    """``frame`` without the rows whose ``relpath`` leads outside ``root``; each rejected row goes
    into ``report["unsafe_paths"]`` with its reason."""
    inside, rejected = unsafe_rows(frame["relpath"], root, source)
    if rejected:
        report.setdefault("unsafe_paths", []).extend(rejected)
    return frame[inside].reset_index(drop=True)


def select_negatives(
    raw_dir, dataset: str, sources: list[str], cfg: Negatives, frontal_views: list[str], seed: int
) -> tuple[pd.DataFrame, dict]:
    """The negatives stage: CheXpert negatives sampled as the paper did and/or the public ones.

    ``cfg`` is the ``negatives`` section of params.yaml.
    """
    roots = read_sources(raw_dir)
    frames, report = [], {}
    if "chexpert" in sources:
        root = source_root(roots, "chexpert", raw_dir)
        table = drop_unsafe(read_chexpert(root, cfg.use_valid_csv), root, "chexpert", report)
        candidates = chexpert_single_label(table)
        counts = cfg.counts[dataset if dataset in ("paper", "synthetic") else "paper"].model_dump()
        chosen, per_category = sample_chexpert(candidates, counts, seed)
        report["chexpert"] = {
            "rows": int(len(table)),
            "frontal_single_label": int(len(candidates)),
            "categories": per_category,
        }
        frames.append(chosen)
    cohen_style = [n for n in sources if n != "chexpert"]
    if cohen_style:
        metas = [
            drop_unsafe(
                read_cohen_style(source_root(roots, n, raw_dir) / "metadata.csv", n),
                source_root(roots, n, raw_dir),
                n,
                report,
            )
            for n in cohen_style
        ]
        chosen, rep = public_negatives(metas, frontal_views)
        chosen = assign_pools_by_patient(chosen, cfg.public_test_fraction, seed)
        report.update(rep)
        frames.append(chosen)
    negatives = pd.concat(frames, ignore_index=True)
    summary = negatives.groupby(["pool", "group"]).size().unstack(fill_value=0)
    log.info("selected %d negatives:\n%s", len(negatives), summary.to_string())
    report["selected"] = {pool: {g: int(v) for g, v in row.items()} for pool, row in summary.iterrows()}
    return negatives, report
