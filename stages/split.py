"""Stage split: patient-level train/val/test split; writes the manifest every later stage reads."""

import argparse
import logging
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
from tqdm import tqdm

from deepcovid import runner

from deepcovid import files
from deepcovid.params import get, load_params, validate_data_params
from deepcovid.data.sources import image_path, read_sources
from deepcovid.data.split import make_split

log = logging.getLogger("split")


def _digest(path) -> str:
    try:
        return files.sha256_file(path)
    except OSError:
        return ""  # missing or unreadable: preprocess rejects it with the reason


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--raw", default="data/raw")
    ap.add_argument("--positives", default="data/filtered/positives.csv")
    ap.add_argument("--negatives", default="data/negatives/negatives.csv")
    ap.add_argument("--out", default="data/manifest.csv")
    ap.add_argument("--report", default="metrics/data.json")
    args = ap.parse_args()

    params = load_params(args.params)
    validate_data_params(params)
    sources = read_sources(args.raw)
    read = dict(dtype=str, keep_default_na=False)
    positives = pd.read_csv(args.positives, **read).astype({"label": int})
    negatives = pd.read_csv(args.negatives, **read).astype({"label": int})
    frames = []
    for frame in (positives, negatives):
        paths = [image_path(sources, s, r, args.raw) for s, r in zip(frame["source"], frame["relpath"])]
        with ThreadPoolExecutor(max_workers=4) as pool:
            digests = list(tqdm(pool.map(_digest, paths), total=len(paths), desc="hashing", mininterval=2))
        frames.append(frame.assign(sha256=digests))
    manifest, report = make_split(frames[0], frames[1], get(params, "split.covid_test_images"),
                                  get(params, "split.val_fraction"), int(params["seed"]))
    if report["test"]["covid"] < report["covid_test_images_asked"]:
        log.warning("only %d COVID test images (asked for %d): the positives hold too few patients",
                    report["test"]["covid"], report["covid_test_images_asked"])
    for split in ("train", "val", "test"):
        r = report[split]
        log.info("%-5s %5d images, %4d patients (covid %d, normal %d, other disease %d)", split,
                 r["images"], r["patients"], r["covid"], r["normal"], r["other-disease"])
    report = {"dataset": params["dataset"], **report}
    files.write_csv(args.out, manifest)
    files.write_json(args.report, report)


if __name__ == "__main__":
    runner.run(main, "split")
