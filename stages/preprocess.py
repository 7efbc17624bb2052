"""Stage preprocess: decode every manifest image once into the uniform 8-bit RGB cache.

Unreadable or truncated files are listed in rejected.csv with the reason; the run goes on.
"""

import argparse
import logging
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from deepcovid import runner

from deepcovid import files
from deepcovid.data.images import ImageReadError, read_image, resize_square
from deepcovid.params import get, load_params, validate_data_params
from deepcovid.data.sources import image_path, read_sources

log = logging.getLogger("preprocess")


def _process(job):
    src, dst, size, mode, grayscale = job
    try:
        img = read_image(src, grayscale=grayscale)
    except ImageReadError as exc:
        return None, None, str(exc)
    width, height = img.size
    out = resize_square(img, size, mode)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    out.save(dst, format="PNG", optimize=False, compress_level=3)
    return width, height, ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--raw", default="data/raw")
    ap.add_argument("--manifest", default="data/manifest.csv")
    ap.add_argument("--out", default="data/preprocessed")
    args = ap.parse_args()

    params = load_params(args.params)
    validate_data_params(params)
    size, mode = get(params, "preprocess.cache_size"), get(params, "preprocess.resize")
    grayscale, workers = bool(get(params, "preprocess.grayscale")), get(params, "preprocess.workers")
    sources = read_sources(args.raw)
    manifest = pd.read_csv(args.manifest, dtype=str, keep_default_na=False)
    with files.atomic_path(args.out) as tmp:
        rel = [f"images/{i}.png" for i in manifest["image_id"]]
        jobs = [(image_path(sources, s, r, args.raw), tmp / p, size, mode, grayscale)
                for s, r, p in zip(manifest["source"], manifest["relpath"], rel)]
        tmp.mkdir()
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(tqdm(pool.map(_process, jobs, chunksize=8), total=len(jobs), desc="preprocess", mininterval=2))
        table = manifest[["image_id", "split", "label", "group"]].assign(
            cache_path=rel,
            width=[r[0] for r in results],
            height=[r[1] for r in results],
            reason=[r[2] for r in results],
        )
        rejected = table[table["reason"] != ""].drop(columns=["cache_path", "width", "height"])
        index = table[table["reason"] == ""].drop(columns="reason")
        files.write_csv(tmp / "index.csv", index.astype({"width": int, "height": int}))
        files.write_csv(tmp / "rejected.csv", rejected)
        files.write_json(tmp / "report.json", {"cache_size": size, "resize": mode, "grayscale": grayscale,
                                            "decoded": int(len(index)), "rejected": int(len(rejected))})
    for row in rejected.itertuples():
        log.warning("rejected %s: %s", row.image_id, row.reason)
    log.info("cached %d images at %dx%d (%s); rejected %d", len(index), size, size, mode, len(rejected))


if __name__ == "__main__":
    runner.run(main, "preprocess")
