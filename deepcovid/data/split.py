"""Patient-level split into train / val / test, and the manifest every later stage reads.

Images sharing a patient, a file (one file listed under two patient ids), their bytes or a
near-duplicate group (the duplicates stage) are grouped (connected components) and never cross
parts. Negatives grouped with a COVID-19 image (the same patient, or the same radiograph) are
left out, or follow it, by a parameter. COVID test images are drawn group by group up to
``covid_test_images``; the rest and the negatives' training pool are split into train and val by
``val_fraction``; :func:`check_no_leak` verifies the result independently."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from tqdm import tqdm

from deepcovid.data.duplicates import group_summary
from deepcovid.data.sources import image_path, read_sources
from deepcovid.errors import StateError
from deepcovid.files import sha256_file

log = logging.getLogger("split")

MANIFEST_COLUMNS = [
    "image_id",
    "source",
    "relpath",
    "patient",
    "split_group",
    "label",
    "group",
    "category",
    "finding",
    "view",
    "pool",
    "split",
    "sha256",
]
SPLITS = ("train", "val", "test", "external")


class SplitError(StateError):
    """The split would leak a patient between parts, or cannot be made."""


def group_images(table: pd.DataFrame, duplicates: dict[str, str] | None = None) -> pd.Series:
    """A ``split_group`` label per row (connected patients / files / identical content /
    near-duplicates).

    Groups are the connected components of a graph linking each row's (source, patient)
    to its image id, when known its content digest, and its near-duplicate group
    (``duplicates``: image id -> group). They are named ``g00000``, ``g00001``... in the order
    of their first row.
    """
    duplicates = duplicates or {}
    if table.empty:
        return pd.Series([], index=table.index, dtype=object)
    nodes: dict[tuple, int] = {}
    patient_nodes, edges = [], []
    for source, patient, image_id, digest in zip(table["source"], table["patient"], table["image_id"], table["sha256"]):
        p = nodes.setdefault(("patient", source, patient), len(nodes))
        patient_nodes.append(p)
        edges.append((p, nodes.setdefault(("image", image_id), len(nodes))))
        if digest:
            edges.append((p, nodes.setdefault(("content", digest), len(nodes))))
        if image_id in duplicates:
            edges.append((p, nodes.setdefault(("near", duplicates[image_id]), len(nodes))))
    rows, cols = np.array(edges, dtype=np.int64).reshape(-1, 2).T
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(len(nodes), len(nodes)))
    _, component = connected_components(graph, directed=False)
    names: dict[int, str] = {}
    for c in component[patient_nodes]:
        names.setdefault(int(c), f"g{len(names):05d}")
    return pd.Series([names[int(c)] for c in component[patient_nodes]], index=table.index)


def take_groups_until(sizes: pd.Series, target: int, rng: np.random.Generator) -> list:
    """Pick groups in one pass in random order, taking each one that still fits under ``target``,
    until the target is reached. Never above it; may stop below it even when another choice of
    groups would reach it exactly (a large group drawn early can block a closer fit)."""
    order = sizes.index[rng.permutation(len(sizes))]
    taken, total = [], 0
    for g in order:
        if total >= target:
            break
        if total + sizes[g] <= target:
            taken.append(g)
            total += sizes[g]
    return taken


def make_split(
    positives: pd.DataFrame,
    negatives: pd.DataFrame,
    covid_test_images: int,
    val_fraction: float,
    seed: int,
    duplicates: pd.DataFrame | None = None,
    exclude_negatives_of_covid_patients: bool = False,
    external_sources: list[str] = (),
) -> tuple[pd.DataFrame, dict]:
    """Build the manifest from the positives and negatives (both with ``sha256``) and the
    near-duplicate groups (``duplicates``: ``group, image_id``; none when None). The images of
    ``external_sources`` get the split ``external`` (never train, val or test), except those
    grouped with an internal image (the same patient or radiograph), which are left out."""
    rng = np.random.default_rng(seed)
    pos = positives.assign(pool="")
    table = pd.concat([pos, negatives], ignore_index=True)
    table["image_id"] = table["source"] + "/" + table["relpath"]
    duplicated = table["image_id"].duplicated(keep="first")
    n_listed_twice = int(duplicated.sum())
    near = {} if duplicates is None else dict(zip(duplicates["image_id"], duplicates["group"]))
    table["split_group"] = group_images(table, near)
    table = table[~duplicated].reset_index(drop=True)
    if table["image_id"].duplicated().any():  # pragma: no cover - guarded above
        raise SplitError("duplicate image ids after de-duplication")

    is_external = table["source"].isin(list(external_sources))
    internal_groups = set(table.loc[~is_external, "split_group"])
    linked = is_external & table["split_group"].isin(internal_groups)
    linked_ids = sorted(table.loc[linked, "image_id"])
    external = table[is_external & ~linked].assign(split="external")
    table = table[~is_external].reset_index(drop=True)

    covid_groups = set(table.loc[table["label"] == 1, "split_group"])
    sharing = (table["label"] == 0) & table["split_group"].isin(covid_groups)
    shared_ids = sorted(table.loc[sharing, "image_id"])
    if exclude_negatives_of_covid_patients:
        table = table[~sharing].reset_index(drop=True)
    split_of: dict[str, str] = {}
    covid_sizes = table[table["label"] == 1].groupby("split_group").size().sort_index()
    for g in take_groups_until(covid_sizes, covid_test_images, rng):
        split_of[g] = "test"
    rest = covid_sizes.drop(index=[g for g in split_of])
    for g in take_groups_until(rest, int(round(val_fraction * rest.sum())), rng):
        split_of[g] = "val"
    for g in rest.index:
        split_of.setdefault(g, "train")

    neg_only = table[~table["split_group"].isin(covid_groups)]
    pools = neg_only.groupby("split_group")["pool"].agg(lambda p: "test" if (p == "test").any() else "train")
    for g in pools.index[pools == "test"]:
        split_of[g] = "test"
    train_pool = neg_only[neg_only["split_group"].isin(pools.index[pools == "train"])]
    sizes = train_pool.groupby("split_group").size().sort_index()
    for g in take_groups_until(sizes, int(round(val_fraction * sizes.sum())), rng):
        split_of[g] = "val"
    for g in sizes.index:
        split_of.setdefault(g, "train")

    table["split"] = table["split_group"].map(split_of)
    table = pd.concat([table, external], ignore_index=True)
    manifest = table.reindex(columns=MANIFEST_COLUMNS).fillna("")
    manifest["label"] = manifest["label"].astype(int)
    manifest = manifest.sort_values(["split", "label", "image_id"], ascending=[True, False, True]).reset_index(
        drop=True
    )
    check_no_leak(manifest, duplicates)
    report = summarize(manifest)
    report["rows_listed_twice"] = n_listed_twice
    report["negatives_of_covid_patients"] = {
        "images": len(shared_ids),
        "excluded": bool(exclude_negatives_of_covid_patients),
        "image_ids": shared_ids,
    }
    report["near_duplicates"] = duplicate_summary(duplicates, manifest)
    report["external_linked_to_internal"] = {"images": len(linked_ids), "image_ids": linked_ids}
    report["covid_test_images_asked"] = int(covid_test_images)
    return manifest, report


def duplicate_summary(duplicates: pd.DataFrame | None, manifest: pd.DataFrame) -> dict:
    """:func:`~deepcovid.data.duplicates.group_summary` and how many of those images the manifest holds."""
    duplicates = (
        pd.DataFrame(columns=["group", "image_id", "source", "patient", "label"]) if duplicates is None else duplicates
    )
    return {
        **group_summary(duplicates),
        "images_in_manifest": int(manifest["image_id"].isin(duplicates["image_id"]).sum()),
    }


def check_no_leak(manifest: pd.DataFrame, duplicates: pd.DataFrame | None = None) -> None:
    """Fail loudly if a patient, group, image or near-duplicate group appears in two parts."""
    if manifest["image_id"].duplicated().any():
        dup = manifest.loc[manifest["image_id"].duplicated(), "image_id"].iloc[0]
        raise SplitError(f"image {dup} appears twice in the manifest")
    bad = set(manifest["split"]) - set(SPLITS)
    if bad:
        raise SplitError(f"unknown split values {sorted(bad)}")
    for key in (["source", "patient"], ["split_group"]):
        parts = manifest.groupby(key)["split"].nunique()
        if (parts > 1).any():
            who = parts.index[parts > 1][0]
            raise SplitError(f"{'/'.join(map(str, np.atleast_1d(who)))} appears in more than one split")
    if "sha256" in manifest and (manifest["sha256"] != "").all():
        parts = manifest.groupby("sha256")["split"].nunique()
        if (parts > 1).any():
            raise SplitError(f"identical image content {parts.index[parts > 1][0][:12]} appears in more than one split")
    if duplicates is not None and not duplicates.empty:
        placed = duplicates.merge(manifest[["image_id", "split"]], on="image_id")
        parts = placed.groupby("group")["split"].unique()
        for group, where in parts.items():
            if len(where) > 1:
                ids = placed.loc[placed["group"] == group, "image_id"]
                raise SplitError(
                    f"near-duplicate group {group} ({', '.join(ids)}) appears in {' and '.join(sorted(where))}"
                )


def summarize(manifest: pd.DataFrame) -> dict:
    """Counts of images and patients per split and group (JSON-friendly)."""
    out = {}
    for split in SPLITS:
        part = manifest[manifest["split"] == split]
        out[split] = {
            "images": int(len(part)),
            "patients": int(part[["source", "patient"]].drop_duplicates().shape[0]),
            **{g: int((part["group"] == g).sum()) for g in ("covid", "normal", "other-disease")},
        }
    return out


def _digest(path) -> str:
    try:
        return sha256_file(path)
    except OSError:
        return ""  # missing or unreadable: preprocess rejects it with the reason


def split_dataset(
    raw_dir,
    positives_csv,
    negatives_csv,
    duplicates_csv,
    covid_test_images: int,
    val_fraction: float,
    seed: int,
    exclude_negatives_of_covid_patients: bool,
    external_sources: list[str] = (),
) -> tuple[pd.DataFrame, dict]:
    """The split stage: hash every image (byte-identical files share a group), read the
    near-duplicate groups, then :func:`make_split`."""
    roots = read_sources(raw_dir)
    frames = []
    for path in (positives_csv, negatives_csv):
        frame = pd.read_csv(path, dtype=str, keep_default_na=False).astype({"label": int})
        paths = [image_path(roots, s, r, raw_dir) for s, r in zip(frame["source"], frame["relpath"])]
        with ThreadPoolExecutor(max_workers=4) as pool:
            digests = list(tqdm(pool.map(_digest, paths), total=len(paths), desc="hashing", mininterval=2))
        frames.append(frame.assign(sha256=digests))
    duplicates = pd.read_csv(duplicates_csv, dtype=str, keep_default_na=False)
    missing = {"group", "image_id", "source", "patient", "label"} - set(duplicates.columns)
    if missing:
        raise SplitError(f"{duplicates_csv}: missing columns {', '.join(sorted(missing))}")
    duplicates = duplicates.astype({"label": int})
    manifest, report = make_split(
        frames[0],
        frames[1],
        covid_test_images,
        val_fraction,
        seed,
        duplicates,
        exclude_negatives_of_covid_patients,
        external_sources,
    )
    if report["external_linked_to_internal"]["images"]:
        log.warning(
            "%d external images share a patient or a radiograph with internal ones: left out",
            report["external_linked_to_internal"]["images"],
        )
    shared = report["negatives_of_covid_patients"]
    if shared["images"]:
        log.warning(
            "%d negative images share a patient or a radiograph with COVID-19 images: %s",
            shared["images"],
            "left out" if shared["excluded"] else "kept with that patient",
        )
    if report["test"]["covid"] < report["covid_test_images_asked"]:
        log.warning(
            "only %d COVID test images (asked for %d): the positives hold too few patients",
            report["test"]["covid"],
            report["covid_test_images_asked"],
        )
    for split in SPLITS:
        r = report[split]
        log.info(
            "%-5s %5d images, %4d patients (covid %d, normal %d, other disease %d)",
            split,
            r["images"],
            r["patients"],
            r["covid"],
            r["normal"],
            r["other-disease"],
        )
    return manifest, report
