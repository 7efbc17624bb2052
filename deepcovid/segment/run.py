"""The segment stage: learn the lungs from the sources' own masks, then give every manifest image its mask.

Images with a lung mask (the generator's ``synthetic_truth.csv``, Cohen's ``annotations/lungVAE-masks``:
:func:`deepcovid.data.annotations.annotation_index`; box annotations are not masks and are not used)
are the segmenter's data. It learns from those in the classifier's train and validation splits and is
judged on those in its test (and external) split: the split is by patient and near-duplicate group, so
the held-out Dice is on patients it never saw. Every manifest image then gets its predicted mask (the
same network for all, as for a new image in ``deepcovid predict``), written with its lung fraction.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from tqdm import tqdm

from deepcovid import config, files
from deepcovid.data.annotations import annotation_index, load_mask
from deepcovid.data.images import ImageReadError, read_image
from deepcovid.data.lungs import MIN_LUNG_FRACTION, mask_at, segment_input, write_mask
from deepcovid.data.sources import image_path, read_sources, source_root
from deepcovid.errors import InputError
from deepcovid.runner import die_with_parent
from deepcovid.segment import network
from deepcovid.segment.training import dice, fit

log = logging.getLogger("segment")

LEARN_FROM, JUDGED_ON = ("train", "val"), ("test", "external")
INDEX_COLUMNS = ["image_id", "mask_path", "lung_fraction", "reference", "role", "dice", "reason"]


def _decode(job):
    """(segmenter input, reference mask at its size or None, reason the image cannot be read)."""
    path, reference, size, max_pixels = job
    if path is None:
        return None, None, reference
    try:
        image = read_image(path, grayscale=True, max_pixels=max_pixels)
    except ImageReadError as exc:
        return None, None, exc.reason
    ref = None
    if reference is not None:
        try:
            ref = mask_at(load_mask(reference, image.size), size)
        except ImageReadError as exc:
            log.warning("reference mask of %s not used: %s", path.name, exc.reason)
    return segment_input(image, size), ref, ""


def _jobs(raw, manifest: pd.DataFrame, size: int, max_pixels: int) -> list[tuple]:
    sources = read_sources(raw)
    index = {name: annotation_index(source_root(sources, name, raw)) for name in manifest["source"].unique()}
    jobs = []
    for source, relpath in zip(manifest["source"], manifest["relpath"]):
        try:
            path = image_path(sources, source, relpath, raw)
        except files.UnsafePathError as exc:
            jobs.append((None, str(exc), size, max_pixels))
            continue
        how, value, *_ = index[source].get(path, {}).get("lung", (None, None))
        jobs.append((path, value if how == "mask" else None, size, max_pixels))
    return jobs


def _grouped_interval(values: np.ndarray, groups: np.ndarray, alpha: float, seed: int) -> list[float]:
    """Percentile bootstrap interval of the mean Dice, resampling whole groups (patients)."""
    keys, inverse = np.unique(groups, return_inverse=True)
    if len(keys) < 2:
        return [None, None]
    sums, counts = np.bincount(inverse, weights=values), np.bincount(inverse)
    res = stats.bootstrap(
        (sums, counts),
        lambda s, c: s.sum() / c.sum(),
        paired=True,
        vectorized=False,
        n_resamples=2000,
        confidence_level=1 - alpha,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return [float(res.confidence_interval.low), float(res.confidence_interval.high)]


def _summary(values: np.ndarray, groups: np.ndarray, seed: int) -> dict:
    if not len(values):
        return {"images": 0}
    return {
        "images": int(len(values)),
        "patients": int(len(np.unique(groups))),
        "mean": float(values.mean()),
        "ci95": _grouped_interval(values, groups, 0.05, seed),
        "median": float(np.median(values)),
        "p10": float(np.percentile(values, 10)),
        "min": float(values.min()),
    }


def run_segment(cfg: config.Segment, *, seed: int, max_pixels: int, raw, manifest, out, models, metrics, plots) -> dict:
    """Train the segmenter, write every manifest image's mask into ``out`` (``masks/<image_id>.png``,
    ``index.csv``), the network into ``models`` (:func:`deepcovid.segment.network.save`), the
    held-out Dice into ``metrics`` and a figure into ``plots``; returns the metrics."""
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    jobs = _jobs(raw, table, cfg.size, max_pixels)
    with ProcessPoolExecutor(max_workers=2, initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
        decoded = list(tqdm(pool.map(_decode, jobs, chunksize=8), total=len(jobs), desc="segment: read", mininterval=2))
    ok = np.array([x is not None for x, _, _ in decoded], dtype=bool)
    has_ref = np.array([r is not None for _, r, _ in decoded], dtype=bool)
    split = table["split"].to_numpy()
    learn = np.flatnonzero(has_ref & np.isin(split, LEARN_FROM))
    judged = np.flatnonzero(has_ref & np.isin(split, JUDGED_ON))
    if not len(learn):
        raise InputError(
            f"segment: none of the {int(ok.sum())} readable manifest images of the train and validation splits has a "
            f"lung mask to learn from (Cohen's annotations/lungVAE-masks, the generator's synthetic_truth.csv)"
        )
    if len(learn) > cfg.max_train_images:
        learn = np.sort(np.random.default_rng(seed).choice(learn, cfg.max_train_images, replace=False))
    images = np.zeros((len(table), cfg.size, cfg.size), dtype=np.uint8)
    for i in np.flatnonzero(ok):
        images[i] = decoded[i][0]
    refs = {int(i): decoded[i][1] for i in np.flatnonzero(has_ref)}
    log.info("training on %d masks (%d held out), %d epochs", len(learn), len(judged), cfg.epochs)
    net, losses = fit(
        images[learn],
        np.stack([refs[int(i)] for i in learn]),
        features=cfg.features,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=seed,
    )
    masks = np.zeros(images.shape, dtype=bool)
    readable = np.flatnonzero(ok)
    for start in tqdm(range(0, len(readable), 256), desc="segment: predict", mininterval=2):
        chunk = readable[start : start + 256]
        masks[chunk] = network.predict(net, images[chunk], threshold=cfg.threshold)
    scores = np.full(len(table), np.nan)
    for i in judged:
        scores[i] = dice(masks[i], refs[int(i)])
    role = np.full(len(table), "", dtype=object)
    role[learn], role[judged] = "train", "held_out"
    fraction = masks.mean(axis=(1, 2))
    out = Path(out)
    (out / "masks").mkdir(parents=True)
    paths = []
    for i, image_id in enumerate(table["image_id"]):
        if not ok[i]:
            paths.append("")
            continue
        rel = f"masks/{image_id}.png"
        target = files.inside(out, rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_mask(target, masks[i])
        paths.append(rel)
    index = pd.DataFrame(
        {
            "image_id": table["image_id"],
            "mask_path": paths,
            "lung_fraction": np.where(ok, np.round(fraction, 6), np.nan),
            "reference": has_ref.astype(int),
            "role": role,
            "dice": np.round(scores, 6),
            "reason": [reason for _, _, reason in decoded],
        },
        columns=INDEX_COLUMNS,
    )
    files.write_csv(out / "index.csv", index)
    groups, sources = table["split_group"].to_numpy(), table["source"].to_numpy()
    result = {
        "network": network.NETWORK,
        "size": cfg.size,
        "train_images": int(len(learn)),
        "train_patients": int(len(np.unique(groups[learn]))),
        "epochs": cfg.epochs,
        "final_loss": float(losses[-1]),
        "held_out_dice": _summary(scores[judged], groups[judged], seed),
        "held_out_dice_by_source": {
            source: _summary(scores[judged[of]], groups[judged[of]], seed)
            for source in sorted(set(sources[judged]))
            for of in [sources[judged] == source]
        },
        "masked_images": int(ok.sum()),
        "unreadable_images": int((~ok).sum()),
        "no_lungs_found": int((ok & (fraction < MIN_LUNG_FRACTION)).sum()),
        "mean_lung_fraction": float(fraction[ok].mean()) if ok.any() else None,
    }
    saved = network.save(
        net,
        models,
        {
            "size": cfg.size,
            "features": list(cfg.features),
            "threshold": cfg.threshold,
            "seed": seed,
            "train_images": result["train_images"],
            "held_out_dice": result["held_out_dice"].get("mean"),
        },
    )
    files.write_json(out / "report.json", {"size": cfg.size, "segmenter_sha256": saved["segment_sha256"]})
    files.write_json(metrics, result)
    from deepcovid.segment.figures import mask_figure

    Path(plots).mkdir(parents=True, exist_ok=True)
    mask_figure(images, masks, refs, scores, judged, Path(plots) / "masks.png")
    summary = result["held_out_dice"]
    log.info(
        "held-out Dice %.3f (%d images of %d patients); %d images without lungs found",
        summary.get("mean") or float("nan"),
        summary["images"],
        summary.get("patients", 0),
        result["no_lungs_found"],
    )
    return result
