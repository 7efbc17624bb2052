"""Synthetic data in the upstream layouts: Cohen's covid-chestxray-dataset and CheXpert-v1.0-small.

Both write the real metadata headers, image formats and folder layouts (laterals, CT rows, PNG
named .jpg, 16-bit, tinted RGB...), ground truth (``synthetic_truth.csv``) and lung and lesion
masks (``synthetic-masks/``). ``cfg`` is the validated ``synthetic.<source>`` section of
params.yaml; every draw comes from a portable.Rng seeded by (seed, source, image).
"""

from __future__ import annotations

import csv
import datetime
import functools
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from deepcovid import portable as pm
from deepcovid.files import atomic_path
from deepcovid.labels import CHEXPERT_CATEGORIES
from deepcovid.synthetic.render import Radiograph, render

COHEN_COLUMNS = [
    "patientid",
    "offset",
    "sex",
    "age",
    "finding",
    "survival",
    "intubated",
    "intubation_present",
    "went_icu",
    "in_icu",
    "needed_supplemental_O2",
    "extubated",
    "temperature",
    "pO2_saturation",
    "leukocyte_count",
    "neutrophil_count",
    "lymphocyte_count",
    "view",
    "modality",
    "date",
    "location",
    "folder",
    "filename",
    "doi",
    "url",
    "license",
    "clinical_notes",
    "other_notes",
    "",
]
CHEXPERT_COLUMNS = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_CATEGORIES]
_COHEN_OTHER = ["No Finding", "SARS", "Streptococcus", "Pneumocystis", "Pneumonia", "ARDS"]
# (format, Pillow mode, extension): each at least once, then by weight
_COHEN_FORMATS = [
    ("JPEG", "L", ".jpg"),
    ("JPEG", "RGB", ".jpeg"),
    ("PNG", "RGB", ".png"),
    ("PNG", "RGBA", ".png"),
    ("PNG", "P", ".png"),
    ("PNG", "I;16", ".png"),
    ("PNG", "L", ".jpg"),
    ("PNG", "L", ".png"),
]
_COHEN_FORMAT_WEIGHTS = [0.30, 0.28, 0.14, 0.06, 0.05, 0.04, 0.05, 0.08]
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_CHEX = "CheXpert-v1.0-small"
_PATHOLOGIES = CHEXPERT_CATEGORIES[1:]


def _rng(seed: int, *keys: int) -> pm.Rng:
    return pm.Rng(np.random.SeedSequence([int(seed), *keys]))


def _severity(rng: pm.Rng, lo: float, hi: float) -> float:
    """Per-patient severity, skewed towards mild."""
    return float(lo + (hi - lo) * rng.beta(1.2, 1.8))


def _save(gray: np.ndarray, path: Path, fmt: str = "JPEG", mode: str = "L", tint=None) -> None:
    """Save a uint8 grey image as ``fmt`` in Pillow ``mode`` (RGB modes tinted by ``tint``)."""
    if mode == "I;16":  # 12-bit grey in 16 bits
        img = Image.fromarray(np.round(gray.astype(np.float64) * (4095 / 255)).astype(np.uint16))
    elif mode in ("RGB", "RGBA"):
        chans = [np.clip(np.round(gray * k), 0, 255).astype(np.uint8) for k in tint or (1.0, 1.0, 1.0)]
        img = Image.fromarray(np.stack(chans + [np.full_like(gray, 255)] * (mode == "RGBA"), axis=-1), mode)
    else:
        img = Image.fromarray(gray, "L").convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "JPEG":
        img.save(path, "JPEG", quality=90, subsampling=0, optimize=False, progressive=False)
    else:
        img.save(path, "PNG", compress_level=1, optimize=False)


def _tag(image: np.ndarray, source: str, share: float, rng: pm.Rng) -> np.ndarray:
    """``image`` with the source's burned-in tag (a white label with two dark lines of "text") in
    a bottom corner, Cohen's on the left, CheXpert's on the right, with probability ``share``.
    The corner lies below every generated lung (their lowest row is at 81% of the height), so the
    tag is never in a lung mask. ``rng`` is the image's own tag stream: the rest of the image
    draws nothing from it, so a tagged image is its untagged twin plus the tag."""
    if share <= 0 or rng.random() >= share:
        return image
    h, w = image.shape
    y0, y1, width = round(0.9 * h), round(0.97 * h), round(0.16 * w)
    x0 = round(0.03 * w) if source == "cohen" else w - round(0.03 * w) - width
    out = image.copy()
    out[y0:y1, x0 : x0 + width] = 245
    for k in (1, 2):  # two lines of "text"
        y = y0 + k * (y1 - y0) // 3
        out[y : y + max(1, (y1 - y0) // 8), x0 + width // 8 : x0 + width - width // 8] = 20
    return out


def _save_masks(root: Path, folder: str, stem: str, rad: Radiograph) -> list[str]:
    rels = [f"{folder}/{stem}_lung.png", f"{folder}/{stem}_lesion.png"]
    for rel, mask in zip(rels, (rad.lung_mask, rad.lesion_mask)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L").save(root / rel, "PNG", compress_level=3)
    return rels


def _write_rows(path: Path, header: list[str], rows: list[list]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([header, *rows])


def generate_cohen(root: Path, cfg: dict, seed: int) -> dict:
    """Write a covid-chestxray-dataset lookalike under ``root``; return a summary."""
    root, rng, (lo, hi) = Path(root), _rng(seed, 1000), cfg["severity"]
    special = ["", "", "todo"] if cfg["other_patients"] >= 8 else []
    findings = ["COVID-19, ARDS" if i % 10 == 9 else "COVID-19" for i in range(cfg["covid_patients"])] + special
    findings += [_COHEN_OTHER[i % len(_COHEN_OTHER)] for i in range(cfg["other_patients"] - len(special))]
    findings = [findings[i] for i in rng.permutation(len(findings))]
    numbers = sorted(int(x) for x in rng.permutation(np.arange(1, 4 * len(findings) + 10))[: len(findings)])
    pids = [f"{x}{'ab'[int(rng.integers(0, 2))]}" if rng.random() < 0.06 else str(x) for x in numbers]
    images = []  # [patient, offset, modality]: X-rays a few days apart, then CT rows
    for p in range(len(findings)):
        offset = int(rng.integers(0, 4))
        for _ in range(int(rng.integers(cfg["images_per_patient"][0], cfg["images_per_patient"][1] + 1))):
            images.append([p, offset, "X-ray"])
            offset += int(rng.integers(2, 6))
    covid = [p for p, f in enumerate(findings) if "COVID" in f]
    eligible = [p for p, f in enumerate(findings) if f not in ("", "todo")]
    for i in range(cfg["ct_rows"]):
        pool = covid if i % 3 != 2 and covid else eligible
        if pool:
            images.append([pool[int(rng.integers(0, len(pool)))], int(rng.integers(0, 10)), "CT"])
    images.sort()
    # views: a quota of laterals (one of them COVID-19), frontal views otherwise
    xray = [i for i, im in enumerate(images) if im[2] == "X-ray"]
    n_lat = min(len(xray), max(1, round(cfg["lateral_fraction"] * len(xray)))) if cfg["lateral_fraction"] else 0
    lateral = {int(i) for i in rng.choice(xray, size=n_lat, replace=False)} if n_lat else set()
    covid_xray = [i for i in xray if "COVID" in findings[images[i][0]]]
    if lateral and covid_xray and not lateral & set(covid_xray):
        lateral = (lateral - {min(lateral)}) | {covid_xray[int(rng.integers(0, len(covid_xray)))]}
    views = [
        "Axial"
        if im[2] == "CT"
        else "L"
        if i in lateral
        else str(rng.choice(["PA", "AP", "AP Supine"], p=[0.45, 0.38, 0.17]))
        for i, im in enumerate(images)
    ]
    n = len(images)
    fmts = list(range(len(_COHEN_FORMATS)))[:n]
    fmts += [int(x) for x in rng.choice(len(_COHEN_FORMATS), size=n - len(fmts), p=_COHEN_FORMAT_WEIGHTS)]
    fmts = [fmts[i] for i in rng.permutation(n)]
    pat = [
        dict(
            sex=str(rng.choice(["M", "F", ""], p=[0.55, 0.4, 0.05])),
            age="" if rng.random() < 0.08 else str(int(rng.integers(20, 90))),
            sev=_severity(rng, lo, hi),
            start=int(rng.integers(19, 110)),
            location=["Synthetic Hospital A", "Synthetic Clinic B", ""][int(rng.integers(0, 3))],
            drawn=f if f not in ("", "todo") else str(rng.choice(["No Finding", "Pneumonia"])),
        )
        for f in findings
    ]
    meta, truth, modes = [], [], Counter()
    for i, ((p, offset, modality), view) in enumerate(zip(images, views)):
        irng, info = _rng(seed, 1, i), pat[p]
        sev = 0.0 if info["drawn"] == "No Finding" else float(np.clip(info["sev"] + irng.normal(0, 0.08), lo, hi))
        side = int(irng.integers(cfg["size_range"][0], cfg["size_range"][1] + 1))
        aspect = 1.0 if modality == "CT" else pm.exp(irng.uniform(pm.log(0.8), pm.log(1.3)))
        h, w = (side, max(8, round(side / aspect))) if aspect >= 1 else (max(8, round(side * aspect)), side)
        rad = render(irng, h, w, [info["drawn"]], sev, view, ("cohen", float(cfg["style_shift"])))
        if modality == "X-ray":
            rad = rad._replace(image=_tag(rad.image, "cohen", float(cfg["marker"]), _rng(seed, 3, i)))
        fmt, mode, ext = _COHEN_FORMATS[fmts[i]]
        tint = tuple(irng.uniform(0.9, 1.0, size=3).tolist()) if mode[:3] == "RGB" and irng.random() < 0.2 else None
        name = f"synth-{pids[p]}-{i:04d}-{dict(L='L', Axial='CT').get(view, view.replace(' Supine', 'S'))}{ext}"
        _save(rad.image, root / "images" / name, fmt, mode, tint)
        masks = _save_masks(root, "annotations/synthetic-masks", Path(name).stem, rad)
        day = datetime.date(2020, 1, 1) + datetime.timedelta(days=info["start"] + offset)
        row = dict(
            patientid=pids[p],
            offset="" if irng.random() < 0.05 else str(offset),
            sex=info["sex"],
            age=info["age"],
            finding=findings[p],
            view=view,
            modality=modality,
            date="" if irng.random() < 0.05 else f"{_MONTHS[day.month - 1]} {day.day}, 2020",
            location=info["location"],
            folder="images",
            filename=name,
            doi=f"10.0000/synthetic.{p + 1}",
            url=f"https://example.org/synthetic/{pids[p]}",
            license="synthetic (CC0)",
            clinical_notes=f"Synthetic case: {info['drawn']}.",
        )
        meta.append([row.get(c, "") for c in COHEN_COLUMNS])
        truth.append(
            [
                name,
                pids[p],
                findings[p],
                view,
                modality,
                f"{sev:.4f}",
                *masks,
                int(rad.lesion_mask.sum()),
                info["drawn"],
            ]
        )
        modes[f"{fmt} {mode}"] += 1
    _write_rows(root / "metadata.csv", COHEN_COLUMNS, meta)
    _write_rows(
        root / "annotations" / "synthetic_truth.csv",
        [
            "filename",
            "patientid",
            "finding",
            "view",
            "modality",
            "severity",
            "lung_mask",
            "lesion_mask",
            "lesion_pixels",
            "drawn",
        ],
        truth,
    )
    count = lambda col: dict(sorted(Counter(r[col] or "(empty)" for r in truth).items()))  # noqa: E731
    return {
        "generator": "deepcovid.synthetic.generate_cohen",
        "seed": int(seed),
        "cfg": cfg,
        "patients": len(findings),
        "images": n,
        "by_finding": count(2),
        "by_view": count(3),
        "by_modality": count(4),
        "by_mode": dict(sorted(modes.items())),
        "png_named_jpg": sum(1 for f in fmts if _COHEN_FORMATS[f] == ("PNG", "L", ".jpg")),
    }


def _profiles(rng: pm.Rng, n: int, valid: bool) -> list[tuple[str, list[str]]]:
    """(kind, positives) for n frontal studies: quotas of single positives, multi, uncertain."""
    out = [("single", ["No Finding"])] * round(0.31 * n)
    out += [("single", [c]) for c in _PATHOLOGIES for _ in range(round(0.037 * n))]
    out += [("multi", _multi(rng, int(rng.integers(2, 4)))) for _ in range(round(0.12 * n))]
    out += [] if valid else [("uncertain", [])] * round(0.06 * n)
    out = (out + [_random_profile(rng, valid) for _ in range(n - len(out))])[:n]
    return [out[i] for i in rng.permutation(n)]


def _multi(rng: pm.Rng, k: int) -> list[str]:
    return sorted(rng.choice(_PATHOLOGIES, size=k, replace=False).tolist(), key=CHEXPERT_CATEGORIES.index)


def _random_profile(rng: pm.Rng, valid: bool) -> tuple[str, list[str]]:
    r = rng.random()
    return (
        ("single", ["No Finding"])
        if r < 0.35
        else ("single", [str(rng.choice(_PATHOLOGIES))])
        if r < 0.8 or valid
        else ("multi", _multi(rng, 2))
        if r < 0.92
        else ("uncertain", [])
    )


def _labels(rng: pm.Rng, kind: str, positives: list[str], valid: bool) -> dict[str, str]:
    """Cells as upstream writes them: "1.0", "0.0", "-1.0" or "" (not mentioned)."""
    values = {}
    for cat in CHEXPERT_CATEGORIES:
        r = 1.0 if cat in positives or valid or cat == "No Finding" else rng.random()
        values[cat] = (
            "1.0"
            if cat in positives
            else "0.0"
            if valid or r < 0.15
            else "-1.0"
            if r < 0.18 and positives != ["No Finding"]
            else ""
        )
    if kind == "uncertain":
        values.update({str(c): "-1.0" for c in rng.choice(_PATHOLOGIES, size=int(rng.integers(1, 3)), replace=False)})
    return values


def plan_chexpert(cfg: dict, seed: int) -> list[dict]:
    """The images generate_chexpert writes, in order, without rendering: split, Path, Sex, Age,
    Frontal/Lateral, AP/PA, labels, drawn (findings rendered), severity, index (RNG stream)."""
    rng, (lo, hi), plan = _rng(seed, 2000), cfg["severity"], []
    for split in ("train", "valid"):
        first = 1 if split == "train" else max(64541, cfg["train_patients"] + 1)
        studies = []  # [patient, study, [lateral?, ...]]: a lateral right after a frontal joins its study
        for k in range(cfg[f"{split}_patients"]):
            count = 0  # this patient's studies so far (patients come in order)
            for lat in (
                rng.random() < cfg["lateral_fraction"]
                for _ in range(int(rng.integers(cfg["images_per_patient"][0], cfg["images_per_patient"][1] + 1)))
            ):
                if lat and studies and studies[-1][0] == first + k and studies[-1][2] == [False]:
                    studies[-1][2].append(True)
                else:
                    count += 1
                    studies.append([first + k, count, [bool(lat)]])
        if studies and cfg["lateral_fraction"] > 0 and not any(any(s[2]) for s in studies):
            studies[-1][2].append(True)
        frontal = [i for i, s in enumerate(studies) if not s[2][0]]
        profile = dict(zip(frontal, _profiles(rng, len(frontal), split == "valid")))
        people: dict[int, tuple] = {}
        for i, (pnum, snum, views) in enumerate(studies):
            kind, positives = profile.get(i) or _random_profile(rng, split == "valid")
            labels = _labels(rng, kind, positives, split == "valid")
            if pnum not in people:
                people[pnum] = (
                    str(rng.choice(["Male", "Female", "Unknown"], p=[0.56, 0.43, 0.01])),
                    int(rng.integers(18, 91)),
                )
            sev = _severity(rng, lo, hi)
            positive = [c for c in _PATHOLOGIES if labels[c] == "1.0"]
            drawn = positive + [c for c in _PATHOLOGIES if labels[c] == "-1.0" and rng.random() < 0.5]
            sev *= 1.0 if positive else 0.5  # uncertain findings only: drawn faintly
            ap = str(rng.choice(["AP", "PA"], p=[0.7, 0.3]))
            for j, lat in enumerate(views):
                plan.append(
                    {
                        "split": split,
                        "Sex": people[pnum][0],
                        "Age": people[pnum][1],
                        "Path": f"{_CHEX}/{split}/patient{pnum:05d}/study{snum}/view{j + 1}_"
                        f"{'lateral' if lat else 'frontal'}.jpg",
                        "Frontal/Lateral": "Lateral" if lat else "Frontal",
                        "AP/PA": "" if lat else ap,
                        "labels": labels,
                        "drawn": drawn,
                        "severity": sev if drawn else 0.0,
                        "index": len(plan),
                    }
                )
    return plan


def _chexpert_image(root: Path, cfg: dict, seed: int, im: dict) -> list:
    """Render and write one planned image (its own RNG stream: any order, any process); its
    truth row."""
    irng, lateral = _rng(seed, 2, im["index"]), im["Frontal/Lateral"] == "Lateral"
    height = int(irng.integers(cfg["height_range"][0], cfg["height_range"][1] + 1))
    rad = render(
        irng,
        height,
        cfg["width"],
        im["drawn"],
        im["severity"],
        "L" if lateral else im["AP/PA"],
        ("chexpert", float(cfg["style_shift"])),
    )
    _save(_tag(rad.image, "chexpert", float(cfg["marker"]), _rng(seed, 4, im["index"])), root / im["Path"])
    masks = _save_masks(root, f"{_CHEX}/synthetic-masks", im["Path"][len(_CHEX) + 1 : -4], rad)
    return [
        im["Path"],
        im["split"],
        im["Frontal/Lateral"],
        ";".join(im["drawn"]) or "No Finding",
        f"{im['severity']:.4f}",
        *masks,
        int(rad.lesion_mask.sum()),
    ]


def generate_chexpert(root: Path, cfg: dict, seed: int, map=map) -> dict:
    """Write a CheXpert-v1.0-small lookalike under ``root``/CheXpert-v1.0-small; return a summary.
    ``map``: how the images are rendered (a process pool's ``map`` to use several cores; the same
    bytes either way, each image drawing from its own RNG stream)."""
    root, plan, rows = Path(root), plan_chexpert(cfg, seed), {"train": [], "valid": []}
    truth = list(map(functools.partial(_chexpert_image, root, cfg, seed), plan))
    for im in plan:
        rows[im["split"]].append([im[c] for c in CHEXPERT_COLUMNS[:5]] + [im["labels"][c] for c in CHEXPERT_CATEGORIES])
    for split in rows:
        _write_rows(root / _CHEX / f"{split}.csv", CHEXPERT_COLUMNS, rows[split])
    _write_rows(
        root / _CHEX / "synthetic_truth.csv",
        ["Path", "split", "Frontal/Lateral", "findings", "severity", "lung_mask", "lesion_mask", "lesion_pixels"],
        truth,
    )
    summary = {"generator": "deepcovid.synthetic.generate_chexpert", "seed": int(seed), "cfg": cfg, "images": len(plan)}
    for split in rows:
        pos = [[c for j, c in enumerate(CHEXPERT_CATEGORIES) if r[5 + j] == "1.0"] for r in rows[split]]
        frontal = [r[3] == "Frontal" for r in rows[split]]
        single = Counter(p[0] for p, f in zip(pos, frontal) if f and len(p) == 1)
        summary[split] = {
            "patients": cfg[f"{split}_patients"],
            "rows": len(rows[split]),
            "lateral": frontal.count(False),
            "single_positive_frontal_by_category": {c: single[c] for c in CHEXPERT_CATEGORIES},
        }
    return summary
