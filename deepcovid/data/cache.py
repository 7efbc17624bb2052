"""The preprocess stage: decode every manifest image once into a square 8-bit RGB PNG cache
(cropped to the lungs or blacked out around them with the segment stage's masks, ``preprocess.lungs``)."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from deepcovid import files
from deepcovid.data.images import ImageReadError, read_image
from deepcovid.data.lungs import apply_lungs, mask_files, read_mask
from deepcovid.data.sources import image_path, read_sources
from deepcovid.runner import die_with_parent

log = logging.getLogger("preprocess")


def _job(roots, raw_dir, out_dir: Path, source: str, relpath: str, cache_path: str, mask, *settings):
    """One decode job; a path that leads outside the source or the cache carries its reason instead."""
    try:
        return (image_path(roots, source, relpath, raw_dir), files.inside(out_dir, cache_path), mask, *settings)
    except files.UnsafePathError as exc:
        return (None, str(exc), mask, *settings)


def _process(job):
    src, dst, mask_path, size, mode, grayscale, max_pixels, lungs, margin, mask_size, intensity = job
    if src is None:
        return None, None, dst
    try:
        img = read_image(src, grayscale=grayscale, max_pixels=max_pixels)
        mask = None if lungs == "none" else read_mask(mask_path, mask_size)
        out = apply_lungs(img, mask, lungs=lungs, margin=margin, cache_size=size, resize=mode, intensity=intensity)
    except ImageReadError as exc:
        return None, None, exc.reason
    width, height = img.size
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    out.save(dst, format="PNG", optimize=False, compress_level=3)
    return width, height, ""


def _lung_masks(lungs_dir, manifest: pd.DataFrame) -> tuple[list, int, str]:
    """Each manifest image's mask file from the segment stage (None where it has none), the masks'
    size and the segmenter's SHA-256."""
    paths, size, segmenter = mask_files(lungs_dir)
    return [paths.get(i) for i in manifest["image_id"]], size, segmenter


def build_cache(
    raw_dir,
    manifest_csv,
    out_dir,
    *,
    cache_size: int,
    resize: str,
    grayscale: bool,
    workers: int,
    max_pixels: int,
    lungs: str = "none",
    lung_margin: float = 0.0,
    lungs_dir=None,
    intensity: str = "none",
) -> dict:
    """Write ``images/<image_id>.png``, ``index.csv``, ``rejected.csv`` (with the reason) and
    ``report.json`` into the new folder ``out_dir``; returns the report. Images above
    ``max_pixels`` are refused from their header, before decoding, so that the stage's memory
    is bounded by ``workers`` x the budget. With ``lungs`` crop or mask, the segment stage's
    folder ``lungs_dir`` gives each image's lung mask (:func:`deepcovid.data.lungs.apply_lungs`);
    an image without lungs found is rejected. ``intensity``: ``preprocess.intensity``."""
    out_dir = Path(out_dir)
    roots = read_sources(raw_dir)
    manifest = pd.read_csv(manifest_csv, dtype=str, keep_default_na=False)
    rel = [f"images/{i}.png" for i in manifest["image_id"]]
    masks, mask_size, segmenter = [None] * len(manifest), 0, ""
    if lungs != "none":
        masks, mask_size, segmenter = _lung_masks(lungs_dir, manifest)
    out_dir.mkdir()
    settings = (cache_size, resize, grayscale, max_pixels, lungs, lung_margin, mask_size, intensity)
    jobs = [
        _job(roots, raw_dir, out_dir, s, r, p, m, *settings)
        for s, r, p, m in zip(manifest["source"], manifest["relpath"], rel, masks)
    ]
    with ProcessPoolExecutor(max_workers=workers, initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
        results = list(tqdm(pool.map(_process, jobs, chunksize=8), total=len(jobs), desc="preprocess", mininterval=2))
    table = manifest[["image_id", "split", "label", "group"]].assign(
        cache_path=rel, width=[r[0] for r in results], height=[r[1] for r in results], reason=[r[2] for r in results]
    )
    rejected = table[table["reason"] != ""].drop(columns=["cache_path", "width", "height"])
    index = table[table["reason"] == ""].drop(columns="reason")
    files.write_csv(out_dir / "index.csv", index.astype({"width": int, "height": int}))
    files.write_csv(out_dir / "rejected.csv", rejected, report=True)
    report = {
        "cache_size": cache_size,
        "resize": resize,
        "grayscale": grayscale,
        # recorded only when used: the paper's cache (lungs: none) keeps its bytes
        **({"lungs": lungs, "lung_margin": lung_margin, "segmenter_sha256": segmenter} if lungs != "none" else {}),
        **({"intensity": intensity} if intensity != "none" else {}),
        "decoded": int(len(index)),
        "rejected": int(len(rejected)),
    }
    files.write_json(out_dir / "report.json", report)
    for row in rejected.itertuples():
        log.warning("rejected %s: %s", row.image_id, row.reason)
    log.info("cached %d images at %dx%d (%s); rejected %d", len(index), cache_size, cache_size, resize, len(rejected))
    return report
