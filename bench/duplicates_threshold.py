"""How the near-duplicate thresholds (duplicates.max_distance, duplicates.min_correlation) were
chosen, on the real data.

    python bench/duplicates_threshold.py [--data ../shared/data] [--images 100]

1. Hashes every image of the Cohen and Actualmed copies (as `deepcovid duplicates` does) and
   lists the closest pairs with their distance, their pixel correlation (the stage's second
   check) and whether they share a patient id: every pair
   at or under the threshold should be the same radiograph (checked by eye), the pairs just
   above it different radiographs or serial films of one patient.
2. Counts the pairs of different patients under each candidate threshold: the false positives
   among them are what the threshold costs (the rest are real copies).
3. Writes transformed copies of ``--images`` real radiographs (JPEG quality 40, half size, crops
   of 2-6% on one, two or all sides, gamma 0.7 / 1.4, contrast x1.3) and prints, per transform,
   the largest distance to the original and the share found at the threshold (recall), with
   the copies hashed among all the real images (the hash is centred on the set's mean).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deepcovid.config import load_config  # noqa: E402
from deepcovid.data import duplicates as dup  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _table(data: Path) -> pd.DataFrame:
    rows = []
    for source in ("cohen", "actualmed"):
        meta = pd.read_csv(data / source / "metadata.csv", dtype=str, keep_default_na=False)
        column = "filename" if "filename" in meta else "imagename"
        for name, patient in zip(meta[column], meta["patientid"]):
            rows.append((source, patient, name, str(data / source / "images" / name)))
    return (
        pd.DataFrame(rows, columns=["source", "patient", "file", "path"]).drop_duplicates("path").reset_index(drop=True)
    )


def _copies(image: Image.Image) -> dict[str, Image.Image]:
    w, h = image.size
    out = {}
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=40)
    out["JPEG quality 40"] = Image.open(io.BytesIO(buf.getvalue())).convert("L")
    out["half size"] = image.resize((w // 2, h // 2), Image.BILINEAR)
    for c in (0.02, 0.04, 0.06):
        dx, dy = int(w * c), int(h * c)
        out[f"crop {c:.0%} all sides"] = image.crop((dx, dy, w - dx, h - dy))
        out[f"crop {c:.0%} one side"] = image.crop((0, 0, w - dx, h))
        out[f"crop {c:.0%} two sides"] = image.crop((dx, dy, w, h))
    a = np.asarray(image).astype(np.float64) / 255
    for g in (0.7, 1.4):
        out[f"gamma {g}"] = Image.fromarray(np.round(255 * a**g).astype(np.uint8))
    out["contrast x1.3"] = Image.fromarray(np.clip(np.round((a - 0.5) * 1.3 * 255 + 127.5), 0, 255).astype(np.uint8))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--images", type=int, default=100, help="real images to transform")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cfg = load_config(REPO / "params.yaml").duplicates
    threshold, min_corr = cfg.max_distance, cfg.min_correlation
    table = _table(Path(args.data))
    thumbs, errors = dup.read_thumbnails(list(table["path"]))
    assert not errors, errors
    hashes = dup.hash_thumbnails(thumbs)
    pairs = dup.near_pairs(hashes, 64)
    key = (table["source"] + "/" + table["patient"]).to_numpy()
    pairs["same_patient"] = key[pairs["i"]] == key[pairs["j"]]
    n = len(table)
    distinct = int(sum((key[:, None] != key[None, :])[np.triu_indices(n, 1)]))
    print(
        f"{n} images, {distinct} pairs of different patients; threshold {threshold} "
        f"(similarity >= {dup.similarity(threshold):.4f})\n"
    )
    mean = thumbs.sum(axis=0, dtype=np.int64) // n
    print(f"closest pairs (distance, pixel correlation, same patient, files; min_correlation {min_corr}):")
    above = False
    for i, j, d, same in pairs.sort_values(["distance", "i", "j"]).itertuples(index=False):
        if d > threshold + 12:
            break
        if d > threshold and not above:
            print(f"  ---- max_distance {threshold} ----")
            above = True
        r = dup.ratio(dup.pixel_correlation(thumbs[i], thumbs[j], mean))
        print(f"  {d:3d}  {r:.4f}  {'same' if same else 'diff'}  {table['file'][i]}  |  {table['file'][j]}")
    print("\npairs of different patients at or under each distance:")
    for t in range(threshold - 8, threshold + 25, 4):
        print(f"  <= {t:3d}: {int(((pairs['distance'] <= t) & ~pairs['same_patient']).sum())}")

    rng = np.random.default_rng(args.seed)
    chosen = rng.choice(n, size=min(args.images, n), replace=False)
    names, copy_thumbs = [], []
    for k in chosen:
        image = Image.open(table["path"][k]).convert("L")
        for tag, copy in _copies(image).items():
            names.append((k, tag))
            copy_thumbs.append(dup.thumbnails(np.asarray(copy.convert("L"))))
    everything = np.concatenate([thumbs, np.stack(copy_thumbs)])
    all_hashes = dup.hash_thumbnails(everything)
    all_mean = everything.sum(axis=0, dtype=np.int64) // len(everything)
    result: dict[str, list[tuple[int, float]]] = {}
    for m, (k, tag) in enumerate(names):
        d = int(dup.distances(all_hashes[k : k + 1], all_hashes[n + m : n + m + 1])[0, 0])
        r = dup.ratio(dup.pixel_correlation(everything[k], everything[n + m], all_mean))
        result.setdefault(tag, []).append((d, r))
    print(f"\ntransformed copies of {len(chosen)} real images (distance and pixel correlation to the original):")
    print(f"  {'transform':22s} {'median':>6s} {'max':>4s} {'min r':>7s}  found (<= {threshold} bits, r >= {min_corr})")
    for tag, values in result.items():
        d, r = np.array([v[0] for v in values]), np.array([v[1] for v in values])
        print(
            f"  {tag:22s} {np.median(d):6.0f} {d.max():4d} {r.min():7.4f}  "
            f"{np.mean((d <= threshold) & (r >= min_corr)):.3f}"
        )


if __name__ == "__main__":
    main()
