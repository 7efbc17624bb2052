"""Deterministic synthetic chest radiographs written in the upstream dataset layouts.

The synthetic dataset lets the whole pipeline run offline. Two generators write data in
the *exact* layouts of the real sources, so the project's real loaders read it unchanged:

``generate_cohen(root, cfg, seed)`` -- the ieee8023 covid-chestxray-dataset::

    root/metadata.csv          29-column header of the real file (ends with a comma),
                               written with the csv module (LF line endings, minimal quoting)
    root/images/<filename>     JPEG and PNG files of mixed modes: L, RGB (some tinted),
                               RGBA (alpha 255), P (palette), I;16 (12-bit grey in 16 bits),
                               and PNG files named ``.jpg`` as upstream has
    root/annotations/synthetic_truth.csv
    root/annotations/synthetic-masks/<stem>_lung.png, <stem>_lesion.png

  Several images per patient (``offset`` in days), frontal (PA / AP / AP Supine) and lateral
  (``L``) X-rays, a few CT slices (modality ``CT``, view ``Axial``), COVID-19 (the majority,
  some ``COVID-19, ARDS``) and other findings (SARS, Pneumocystis, Streptococcus,
  Pneumonia, ARDS, No Finding), plus rows with an empty finding and one ``todo``.
  A few images carry figure-panel artefacts (an arrow, a panel letter).

``generate_chexpert(root, cfg, seed)`` -- CheXpert-v1.0-small::

    root/CheXpert-v1.0-small/train.csv, valid.csv     the 19 real columns
    root/CheXpert-v1.0-small/{train,valid}/patientNNNNN/studyK/viewJ_{frontal,lateral}.jpg
    root/CheXpert-v1.0-small/synthetic_truth.csv
    root/CheXpert-v1.0-small/synthetic-masks/<same relative path>_{lung,lesion}.png

  ``Path`` values start with ``CheXpert-v1.0-small/`` (relative to ``root``) as upstream.
  train.csv labels are ``1.0``, ``0.0``, ``-1.0`` (uncertain) or blank; valid.csv holds
  only ``1.0``/``0.0``. Frontal studies get label profiles by quota so that every one of
  the 14 categories has images positive for it alone; there are also multi-positive and
  uncertain-only rows for the selection logic to reject. Positive findings are drawn, and
  about half of the uncertain (-1.0) ones, faintly. :func:`plan_chexpert` returns the rows
  and labels without rendering (for fast checks of the counts).

Ground truth (``synthetic_truth.csv``; every path in it is relative to ``root``):

- ``lung_mask``: the anatomical lung fields as drawn (the two dark lung regions in a frontal
  view, the lung field of a lateral view, both lungs of a CT slice); pleural fluid or a
  pneumothorax lie *inside* it.
- ``lesion_mask``: the pixels where the image's findings were drawn (opacities, nodule,
  effusion, pneumothorax space, enlarged heart or mediastinum, fracture site, and the
  devices of a ``Support Devices`` finding). Empty for normal images. Burned-in markers
  (laterality letter, arrows, panel letters) are never part of it.
- Both are PNG, mode L, 0/255, the size of the image. ``lesion_pixels`` counts the lesion.
- ``severity`` in [0, 1] scales how visible the findings are (0 for normal images).
- Cohen's truth adds ``drawn``: the finding rendered (rows with an empty or ``todo``
  finding show either a normal chest or a pneumonia); CheXpert's has ``findings``, the
  ``;``-joined findings rendered ("No Finding" when none), and ``split``.

Rendering (:func:`render_radiograph`): every image is drawn on a square canonical grid of
``GRID`` pixels in normalised coordinates, with a random rotation/shift/scale of the whole
anatomy, random body and organ proportions, detector noise, vignetting and a random global
contrast/gamma/brightness, and is then resized to the file's size. The style therefore has
one distribution for every source and label; only ``style_shift`` > 0 changes it on purpose
(Cohen-style images: brighter, more contrast, blurrier; CheXpert-style: darker, flatter),
for shortcut audits. The RNG draws do not depend on ``style_shift``: the same seed gives the
same anatomy and findings with or without it.

Determinism, on any CPU: all randomness comes from :class:`deepcovid.portable.Rng` seeded from
``seed`` and the image's index, and every value that decides a pixel is computed with exactly
rounded operations only (:mod:`deepcovid.portable`: its own exp/log/sin/cos/power, Gaussian
blur, resampling and line drawing instead of NumPy's CPU-dispatched transcendentals, SciPy's
and Pillow's float filters). Encoders run with fixed options (libjpeg-turbo's integer DCT, whose
SIMD paths are bit-exact, and zlib-ng), so the same seed gives byte-identical files on every
machine with the pinned Pillow (``tests/test_cross_cpu.py``).
"""

from __future__ import annotations

import csv
import functools
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from deepcovid import portable as pm
from deepcovid.files import atomic_path

__all__ = [
    "COHEN_COLUMNS", "CHEXPERT_COLUMNS", "CHEXPERT_CATEGORIES", "FINDINGS", "GRID",
    "Radiograph", "render_radiograph", "generate_cohen", "generate_chexpert", "plan_chexpert",
    "DEFAULT_COHEN_CFG", "DEFAULT_CHEXPERT_CFG",
]

COHEN_COLUMNS: list[str] = [
    "patientid", "offset", "sex", "age", "finding", "survival", "intubated", "intubation_present",
    "went_icu", "in_icu", "needed_supplemental_O2", "extubated", "temperature", "pO2_saturation",
    "leukocyte_count", "neutrophil_count", "lymphocyte_count", "view", "modality", "date",
    "location", "folder", "filename", "doi", "url", "license", "clinical_notes", "other_notes", "",
]

CHEXPERT_CATEGORIES: list[str] = [
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
]
CHEXPERT_COLUMNS: list[str] = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_CATEGORIES]

DEFAULT_COHEN_CFG: dict = dict(
    covid_patients=80, other_patients=30, images_per_patient=[1, 3], lateral_fraction=0.1,
    ct_rows=6, size_range=[256, 640], severity=[0.15, 1.0], style_shift=0.0,
)
DEFAULT_CHEXPERT_CFG: dict = dict(
    train_patients=700, valid_patients=40, images_per_patient=[1, 2], lateral_fraction=0.15,
    width=320, height_range=[320, 390], severity=[0.15, 1.0], style_shift=0.0,
)

#: side of the square canonical grid every image is rendered on before resizing
GRID = 256

#: finding names understood by render_radiograph (compared case-insensitively)
FINDINGS = (
    "COVID-19", "ARDS", "SARS", "Pneumocystis", "Streptococcus", "Pneumonia",
    *CHEXPERT_CATEGORIES,
)
_KNOWN = {f.lower() for f in FINDINGS} | {"normal", ""}

_VIEWS_FRONTAL = {"PA", "AP", "AP SUPINE", "AP SEMI ERECT", "AP ERECT"}
_VIEWS_LATERAL = {"L", "LATERAL", "LL", "RL"}
_VIEWS_CT = {"AXIAL", "CT", "CORONAL"}

_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # 2020


@dataclass
class Radiograph:
    """One rendered image with the masks of what was drawn where."""

    image: np.ndarray        # uint8 H x W
    lung_mask: np.ndarray    # bool H x W: the lung fields
    lesion_mask: np.ndarray  # bool H x W: where findings were drawn (all False when normal)


# --- small numeric helpers ----------------------------------------------------------------

def _sstep(e0: float, e1: float, x):
    """Smoothstep from 0 (at e0) to 1 (at e1); e0 > e1 gives a falling step."""
    t = np.clip((x - e0) * (1.0 / (e1 - e0)), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _resize_f(arr: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bicubic, antialiased resize of a float array (portable: exact operations only)."""
    return pm.resample(np.asarray(arr, dtype=np.float32), width, height, "bicubic")


@functools.lru_cache(maxsize=64)
def _taps(n_out: int, n_in: int, cubic: bool) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights (n_out, k) of linear (k=2) or Catmull-Rom (k=4) upsampling.

    Pixel centres are aligned as in Pillow; edges are clamped.
    """
    x = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    base = np.floor(x).astype(int)
    f = x - base
    if cubic:
        offsets = np.arange(-1, 3)
        d = np.abs(f[:, None] - offsets[None, :])
        d2 = d * d
        w = np.where(d < 1, 1.5 * d2 * d - 2.5 * d2 + 1,
                     np.where(d < 2, -0.5 * d2 * d + 2.5 * d2 - 4 * d + 2, 0.0))
    else:
        offsets = np.arange(0, 2)
        w = np.stack([1 - f, f], axis=1)
    idx = np.clip(base[:, None] + offsets[None, :], 0, n_in - 1)
    total = w[:, 0].copy()
    for j in range(1, w.shape[1]):  # fixed order, elementwise (no reduction kernel)
        total = total + w[:, j]
    w = w / total[:, None]
    return idx, w.astype(np.float32)


def _upsample_taps(arr: np.ndarray, n: int, cubic: bool) -> np.ndarray:
    idx, w = _taps(n, arr.shape[0], cubic)
    out = arr
    for _ in range(2):  # upsample the rows, transpose; twice
        taps = [np.take(out, idx[:, k], axis=0) * w[:, k, None] for k in range(idx.shape[1])]
        out = np.ascontiguousarray(sum(taps[1:], taps[0]).T)
    return out.astype(np.float32, copy=False)


def _double(a: np.ndarray) -> np.ndarray:
    """Exact 2x bilinear upsampling (pixel centres aligned, edges clamped), by slicing."""
    h, w = a.shape
    pad = np.concatenate([a[:1], a, a[-1:]], axis=0)
    rows = np.empty((2 * h, w), np.float32)
    rows[0::2] = 0.75 * a + 0.25 * pad[:-2]
    rows[1::2] = 0.75 * a + 0.25 * pad[2:]
    pad = np.concatenate([rows[:, :1], rows, rows[:, -1:]], axis=1)
    out = np.empty((2 * h, 2 * w), np.float32)
    out[:, 0::2] = 0.75 * rows + 0.25 * pad[:, :-2]
    out[:, 1::2] = 0.75 * rows + 0.25 * pad[:, 2:]
    return out


def _upsample(arr: np.ndarray, n: int, cubic: bool = False) -> np.ndarray:
    """Upsample a square array to n x n: bilinear, or Catmull-Rom with ``cubic``.

    Uses separable taps and exact 2x steps (no BLAS, no Pillow round trip: cheap).
    """
    arr = arr.astype(np.float32, copy=False)
    if cubic:
        m = n
        while m % 2 == 0 and m // 2 >= 4 * arr.shape[0]:
            m //= 2  # cubic to a quarter-size-or-so grid, then exact doublings
        arr = _upsample_taps(arr, m, True)
    while arr.shape[0] * 2 <= n and n % (arr.shape[0] * 2) == 0:
        arr = _double(arr)
    return arr if arr.shape[0] == n else _upsample_taps(arr, n, False)


def _smooth_noise(rng: pm.Rng, n: int, cells: int) -> np.ndarray:
    """Smooth random field (unit variance at the knots) with ``cells`` features across n x n."""
    return _upsample(rng.standard_normal((cells + 1, cells + 1), dtype=np.float32), n, cubic=True)


def _atan2(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Polynomial arctan2 (error < 1e-5 rad), several times faster than np.arctan2."""
    ax, ay = np.abs(x), np.abs(y)
    a = np.minimum(ax, ay) / np.maximum(np.maximum(ax, ay), 1e-12)
    s = a * a
    r = ((-0.0464964749 * s + 0.15931422) * s - 0.327622764) * s * a + a
    r = np.where(ay > ax, np.float32(np.pi / 2) - r, r)
    r = np.where(x < 0, np.float32(np.pi) - r, r)
    return np.where(y < 0, -r, r)


class _Frame:
    """The canonical pixel grid and the random placement of the anatomy on it.

    ``U``, ``V`` are anatomy coordinates (about -1..1 over the image, V pointing down) of
    every pixel; drawing functions describe shapes in anatomy coordinates so that they move
    with the random rotation / shift / scale.
    """

    def __init__(self, n: int, angle: float, scale: float, tx: float, ty: float):
        self.n, self.angle, self.scale, self.tx, self.ty = n, float(angle), scale, tx, ty
        self.ca, self.sa = pm.cos(self.angle), pm.sin(self.angle)
        c = (np.arange(n, dtype=np.float32) + 0.5) / n * 2 - 1
        uu, vv = np.meshgrid(c, c)
        self.U = ((self.ca * (uu - tx) + self.sa * (vv - ty)) / scale).astype(np.float32)
        self.V = ((-self.sa * (uu - tx) + self.ca * (vv - ty)) / scale).astype(np.float32)

    def half(self) -> "_Frame":
        """The same placement on a grid of half the resolution."""
        return _Frame(self.n // 2, self.angle, self.scale, self.tx, self.ty)

    def upsample(self, arr: np.ndarray) -> np.ndarray:
        """Bilinear upsampling of a half-resolution field to this grid."""
        return _upsample(arr, self.n)

    def rows(self, v0: float, v1: float) -> slice:
        """The band of grid rows holding every pixel with v0 <= V <= v1."""
        hit = np.flatnonzero((self.V.min(axis=1) <= v1) & (self.V.max(axis=1) >= v0))
        return slice(int(hit[0]), int(hit[-1]) + 1) if len(hit) else slice(0, 0)

    def to_pixel(self, u: float, v: float) -> tuple[float, float]:
        """(column, row) of an anatomy point (may lie outside the grid)."""
        x = self.tx + self.scale * (self.ca * u - self.sa * v)
        y = self.ty + self.scale * (self.sa * u + self.ca * v)
        return (x + 1) / 2 * self.n - 0.5, (y + 1) / 2 * self.n - 0.5

    def window(self, u: float, v: float, radius: float) -> tuple[slice, slice] | None:
        """Rows/columns covering the anatomy disk (u, v, radius); None when off the grid."""
        col, row = self.to_pixel(u, v)
        r = radius * self.scale * self.n / 2 + 2
        r0, r1 = max(int(row - r), 0), min(int(row + r) + 1, self.n)
        c0, c1 = max(int(col - r), 0), min(int(col + r) + 1, self.n)
        if r0 >= r1 or c0 >= c1:
            return None
        return slice(r0, r1), slice(c0, c1)


class _Canvas:
    """Accumulates finding densities (added brightness) and the lesion mask."""

    def __init__(self, frame: _Frame, lung: np.ndarray, texture: np.ndarray):
        n = frame.n
        self.f = frame
        self.lung = lung                 # soft lung field 0..1 (confines lung findings)
        self.texture = texture           # mottling 0..1 for ground-glass / consolidation
        self.density = np.zeros((n, n), np.float32)
        self.lesion = np.zeros((n, n), bool)

    def blob(self, u, v, su, sv, amp, angle=0.0, confine=True, texture=0.35, mark=0.3,
             sharp=False):
        """Add an (anisotropic) Gaussian or, with ``sharp``, a soft-edged disk."""
        win = self.f.window(u, v, 3.0 * max(su, sv))
        if win is None:
            return
        du = self.f.U[win] - u
        dv = self.f.V[win] - v
        ca, sa = pm.cos(angle), pm.sin(angle)
        a = (ca * du + sa * dv) / su
        b = (-sa * du + ca * dv) / sv
        r2 = a * a + b * b
        g = _sstep(1.15, 0.85, np.sqrt(r2)) if sharp else pm.exp(-0.5 * r2)
        if confine:
            g = g * self.lung[win]
        d = amp * g * ((1 - texture) + texture * self.texture[win])
        self.density[win] += d
        if mark:
            self.lesion[win] |= g > mark

    def field(self, values: np.ndarray, mark_mask: np.ndarray | None = None):
        self.density += values.astype(np.float32)
        if mark_mask is not None:
            self.lesion |= mark_mask


def _draw_polylines(n: int, lines: list[tuple[list[tuple[float, float]], float]]) -> np.ndarray:
    """Rasterise pixel-space polylines [(points, width_px)] into a 0..1 float array."""
    return pm.draw_polylines((n, n), [(pts, max(1, int(round(width)))) for pts, width in lines])


def _normalise_findings(findings: Sequence[str]) -> list[str]:
    out = []
    for item in findings:
        for part in str(item).split(","):
            key = part.strip().lower()
            if key not in _KNOWN:
                raise ValueError(f"unknown finding {part.strip()!r}; known: {', '.join(FINDINGS)}")
            if key in ("", "no finding", "normal"):
                continue
            if key not in out:
                out.append(key)
    return out


# --- frontal anatomy --------------------------------------------------------------------

class _Anatomy:
    """Random proportions of one frontal chest (anatomy coordinates)."""

    def __init__(self, rng: pm.Rng, view: str):
        u = rng.uniform
        self.body_w = u(0.84, 0.95)
        self.med = u(0.10, 0.13)
        self.mediast_extra = 0.0
        self.lat_max = u(0.72, 0.82)
        self.lat_peak_v = u(0.02, 0.18)
        self.apex = u(-0.82, -0.72)
        peak_r = u(0.24, 0.36)
        self.dome_peak = {-1: peak_r, 1: peak_r + u(0.02, 0.07)}
        self.cp = {s: p + u(0.16, 0.24) for s, p in self.dome_peak.items()}
        self.heart = dict(cx=u(0.06, 0.11), cy=u(0.25, 0.32), w=u(0.29, 0.34), h=u(0.22, 0.27),
                          tilt=u(-0.40, -0.20))
        self.heart_scale = 1.0
        self.rib_sp = u(0.11, 0.13)
        self.rib_ph = u(0.0, 1.0)
        self.rib_k = u(0.50, 0.68)
        self.arib_ph = u(0.0, 1.0)
        self.lung_depth = u(0.25, 0.36)
        # label-independent soft-tissue haze over the lower / outer lungs (body habitus)
        self.soft_haze = u(0.0, 0.05)
        self.bubble = rng.random() < 0.6
        self.breasts = rng.random() < 0.35
        self.vessel_n = u(16, 24)
        self.fracture: dict | None = None
        v = view.upper()
        if v.startswith("AP"):
            self.heart_scale *= 1.06
        if v == "AP SUPINE":
            for s in (-1, 1):
                self.dome_peak[s] -= 0.04
                self.cp[s] -= 0.04
            self.heart_scale *= 1.03

    def lateral_edge(self, V):
        t = np.clip((V - self.apex) / (self.lat_peak_v - self.apex), 0.0, 1.0)
        return self.lat_max * np.sqrt(1.0 - (1.0 - t) ** 2) - 0.05 * np.clip(V - self.lat_peak_v, 0, None)

    def medial_edge(self, V, S):
        knob = np.where(S > 0, 0.05 * pm.exp(-((V + 0.36) / 0.07) ** 2), 0.0)
        return (self.med + self.mediast_extra * _sstep(0.15, -0.15, V) + knob
                + 0.22 * _sstep(-0.45, -0.85, V))

    def dome(self, X, S):
        peak = np.where(S > 0, self.dome_peak[1], self.dome_peak[-1])
        cp = np.where(S > 0, self.cp[1], self.cp[-1])
        return peak + (cp - peak) * ((X - 0.42) / 0.40) ** 2

    def heart_e(self, U, V):
        h = self.heart
        du, dv = U - h["cx"], V - h["cy"]
        ca, sa = pm.cos(h["tilt"]), pm.sin(h["tilt"])
        a = (ca * du + sa * dv) / (h["w"] * self.heart_scale)
        b = (-sa * du + ca * dv) / (h["h"] * math.sqrt(self.heart_scale))
        return a * a + b * b

    def point(self, side: int, h: float, q: float) -> tuple[float, float]:
        """Anatomy point in lung ``side`` at height h (0 apex .. 1 base) and q (0 medial .. 1 lateral)."""
        base = min(self.dome_peak[side], self.cp[side]) + 0.08
        v = self.apex + 0.08 + h * (base - self.apex - 0.08)
        V = np.float32(v)
        lat = float(self.lateral_edge(V))
        med = float(self.medial_edge(V, np.float32(side)))
        if side > 0 and v > 0.0:  # the heart takes the lower medial left lung
            med = max(med, self.heart["cx"] + 0.7 * self.heart["w"] * self.heart_scale)
        elif side < 0 and v > 0.05:
            med = max(med, -(self.heart["cx"] - 0.8 * self.heart["w"] * self.heart_scale))
        med = min(med, lat - 0.05)
        return side * (med + q * (lat - med)), v


def _rib_curve(an: _Anatomy, X):
    """Posterior rib centre lines: rising laterally from the spine, curving down at the wall."""
    return -0.45 * an.rib_k * X + 1.6 * an.rib_k * np.clip(X - 0.5, 0, None) ** 2


def _frontal_fields(frame: _Frame, an: _Anatomy, rng: pm.Rng):
    """Return (base image, soft lung field, lung darkness at half resolution, vessel field).

    Smooth structures (body, heart, lungs, trachea, spine) are computed on a half-resolution
    grid and upsampled; fine ones (ribs, clavicles, vessels) at full resolution.
    """
    hf = frame.half()
    U, V = hf.U, hf.V
    X = np.abs(U)
    S = np.where(U >= 0, 1.0, -1.0).astype(np.float32)

    # body: torso, shoulders sloping to the neck
    w = 0.25 + (an.body_w + 0.04 - 0.25) * _sstep(-1.1, -0.72, V) - 0.04 * _sstep(-0.72, -0.3, V)
    body = _sstep(0.035, -0.035, X - w)
    img = 0.05 + 0.40 * body
    img += body * (0.10 * pm.exp(-(U / 0.28) ** 2) + 0.07 * _sstep(0.3, 0.9, V))
    # humeral heads
    for s in (-1, 1):
        d = pm.hypot(U - s * (an.body_w - 0.02), V + 0.80)
        img += 0.10 * _sstep(0.12, 0.09, d) * body

    # heart and lungs
    heart = _sstep(1.1, 0.9, an.heart_e(U, V))
    lat = an.lateral_edge(V)
    med = an.medial_edge(V, S)
    e = 0.028
    lung = (_sstep(-e, e, X - med) * _sstep(e, -e, X - lat) * _sstep(e, -e, V - an.dome(X, S))
            * (1 - heart))
    profile = (1 - 0.35 * _sstep(-0.35, -0.85, V)) * (1 - 0.25 * _sstep(0.0, 0.5, V))
    img -= an.lung_depth * lung * profile
    img += an.soft_haze * lung * _sstep(-0.2, 0.5, V) * (0.5 + 0.5 * _sstep(0.3, 0.8, X / np.maximum(lat, 0.3)))
    img += 0.02 * heart * body
    # trachea and main bronchi: air in the upper mediastinum
    carina = -0.28
    tr = _sstep(0.04, 0.025, np.abs(U - 0.01 * (V - carina))) * _sstep(carina + 0.02, carina - 0.04, V)
    t = np.clip((V - carina) / 0.16, 0, 1)
    in_br = _sstep(carina - 0.03, carina + 0.02, V) * _sstep(carina + 0.17, carina + 0.12, V)
    for s in (-1, 1):
        tr = np.maximum(tr, _sstep(0.028, 0.015, np.abs(U - s * 0.10 * t)) * in_br)
    img -= 0.09 * tr * body
    # spine with faint vertebral segmentation
    spine = _sstep(0.075, 0.05, X) * body
    img += spine * (0.04 + 0.02 * pm.cos(2 * np.pi * V / 0.11)) * (1 - 0.5 * lung)
    # stomach bubble under the left dome; breast shadows over the lower lungs
    if an.bubble:
        db = ((U - 0.40) / 0.09) ** 2 + ((V - an.cp[1] + 0.02) / 0.05) ** 2
        img -= 0.10 * _sstep(1.2, 0.8, db) * body
    if an.breasts:
        lower = 0.20 + 0.30 * ((X - 0.55) / 0.35) ** 2
        img += 0.05 * _sstep(lower - 0.05, lower + 0.03, V) * _sstep(0.25, 0.45, X) * _sstep(0.95, 0.8, X) * body
    cpmax = max(an.cp.values())
    thor = (_sstep(0.06, -0.01, X - np.maximum(lat, 0.25) - 0.02) * _sstep(an.apex - 0.14, an.apex - 0.04, V)
            * _sstep(cpmax + 0.12, cpmax, V) * _sstep(0.04, 0.09, X))
    thor *= 0.45 + 0.55 * lung  # ribs show best over the lungs
    fade = thor * (1 - 0.45 * _sstep(0.45, 0.85, X / np.maximum(lat, 0.3)))  # posterior ribs fade laterally
    img += 0.05 * lung * pm.exp(-((X - 0.17) ** 2 + (V + 0.02) ** 2) / 0.0049)  # hilar shadows
    dark_half = an.lung_depth * lung * profile

    # vessels fanning out of the hila (radial streaks, modulated by smooth noise)
    n_low = _smooth_noise(rng, hf.n, 5)
    n_mid = _smooth_noise(rng, hf.n, 28)
    dx, dy = (U - S * 0.17) * S, V + 0.02
    r = np.sqrt(dx * dx + dy * dy)
    p = 0.5 + 0.5 * pm.cos(an.vessel_n * _atan2(dy, dx) + 3.0 * n_low + 6.0 * r)
    p2 = p * p
    vessel = (p2 * p2 * p * pm.exp(-r / 0.42) * _sstep(0.03, 0.12, r)
              * np.clip(0.6 + 0.6 * n_mid, 0, 1.5) * lung)

    up = frame.upsample
    img, lung, thor, fade, vessel = (up(a) for a in (img, lung, thor, fade, vessel))

    # full resolution: ribs (posterior arching down laterally, fainter anterior), clavicles
    U, V = frame.U, frame.V
    X = np.abs(U)
    S = np.where(U >= 0, 1.0, -1.0).astype(np.float32)
    y = V - _rib_curve(an, X)
    phi = (y + 0.12 * y * y) / an.rib_sp - an.rib_ph
    if an.fracture is not None:
        fr = an.fracture
        seg = ((S == fr["side"]) & (X > fr["x"]) & (X < fr["x"] + fr["len"])
               & (np.abs(V - fr["v"]) < 0.6 * an.rib_sp))
        phi = np.where(seg, phi + fr["shift"], phi)
    dd = np.abs(phi - np.round(phi))
    cortex = np.clip(1 - ((dd - 0.19) / 0.045) ** 2, 0, 1)
    rib = _sstep(0.22, 0.15, dd) + 0.6 * cortex * cortex
    phia = (V + 0.38 * X) / (1.3 * an.rib_sp) - an.arib_ph
    dda = np.abs(phia - np.round(phia))
    arib = _sstep(0.16, 0.10, dda) * _sstep(0.22, 0.35, X)
    img += 0.055 * rib * fade + 0.022 * arib * thor
    if an.fracture is not None:
        fr = an.fracture
        gap = (S == fr["side"]) & (np.abs(X - fr["x"]) < 0.008) & (np.abs(V - fr["v"]) < 0.6 * an.rib_sp)
        img -= 0.05 * gap * thor
    rows = frame.rows(-0.95, -0.45)  # clavicles: only the rows that can hold them
    x, Vc = X[rows] - 0.06, V[rows]
    vc = -0.63 - 0.20 * x + 0.06 * pm.sin(np.pi * np.clip(x, 0, 0.7) / 0.7)
    dc = np.abs(Vc - vc)
    ccx = np.clip(1 - ((dc - 0.026) / 0.009) ** 2, 0, 1)
    clav = (_sstep(0.032, 0.02, dc) + 0.5 * ccx * ccx) * _sstep(-0.02, 0.03, x) * _sstep(0.70, 0.62, x)
    img[rows] += 0.10 * clav
    return img, lung, dark_half, vessel


# --- frontal findings ----------------------------------------------------------------------

def _both_sides(rng, n: int) -> list[int]:
    """n lung sides (-1: image left, +1: image right), both present when n >= 2."""
    if n < 2:
        return [int(rng.choice([-1, 1]))] * n
    return [-1, 1] + [int(rng.choice([-1, 1])) for _ in range(n - 2)]


def _f_covid(cv, an, rng, sev):
    """Bilateral, peripheral, lower-zone ground-glass opacities."""
    n = 3 + int(round(7 * sev)) + int(rng.integers(0, 3))
    for side in _both_sides(rng, n):
        h = rng.beta(2.8, 1.3)
        q = 0.62 + 0.38 * rng.beta(2.2, 1.2)
        u, v = an.point(side, h, q)
        s = 0.05 + 0.06 * sev + rng.uniform(0, 0.035)
        cv.blob(u, v, s, s * rng.uniform(1.1, 1.7), (0.02 + 0.09 * sev) * rng.uniform(0.7, 1.1),
                angle=side * rng.uniform(-0.4, 0.2), texture=0.5)


def _f_diffuse(cv, an, rng, sev, amp):
    """ARDS: diffuse bilateral opacity, denser in the dependent and perihilar lung."""
    tex = 0.65 + 0.35 * cv.texture
    grad = 0.7 + 0.3 * _sstep(-0.6, 0.4, cv.f.V)
    a = amp * (0.10 + 0.13 * sev)
    cv.field(a * cv.lung * tex * grad, cv.lung > 0.5)


def _f_sars(cv, an, rng, sev):
    """Multifocal opacities, more central and less basal than COVID-19 (a hard confounder)."""
    n = 3 + int(round(6 * sev)) + int(rng.integers(0, 3))
    bilateral = rng.random() < 0.6
    side0 = int(rng.choice([-1, 1]))
    sides = _both_sides(rng, n) if bilateral else [side0] * n
    for side in sides:
        u, v = an.point(side, rng.uniform(0.15, 0.95), rng.uniform(0.2, 0.85))
        s = 0.05 + 0.06 * sev + rng.uniform(0, 0.035)
        cv.blob(u, v, s, s * rng.uniform(0.9, 1.4), (0.035 + 0.10 * sev) * rng.uniform(0.7, 1.1),
                angle=rng.uniform(-1, 1), texture=0.45)


def _f_consolidation(cv, an, rng, sev, dense=1.0):
    """Focal dense consolidation in one lobe (sometimes both lungs)."""
    sides = [int(rng.choice([-1, 1]))]
    if rng.random() < 0.15:
        sides.append(-sides[0])
    for side in sides:
        h, q = rng.uniform(0.1, 0.95), rng.uniform(0.25, 0.85)
        cu, cvv = an.point(side, h, q)
        for _ in range(int(rng.integers(3, 6))):
            u = cu + rng.normal(0, 0.05)
            v = cvv + rng.normal(0, 0.05)
            s = 0.05 + 0.04 * sev + rng.uniform(0, 0.03)
            cv.blob(u, v, s, s * rng.uniform(0.8, 1.3), dense * (0.08 + 0.14 * sev) * rng.uniform(0.8, 1.1),
                    texture=0.25)


def _f_opacity(cv, an, rng, sev):
    """Lung opacity: one to four patches anywhere, half of the time in both lungs."""
    n = int(rng.integers(1, 5))
    bilateral = rng.random() < 0.5
    side0 = int(rng.choice([-1, 1]))
    sides = _both_sides(rng, n) if bilateral else [side0] * n
    for side in sides:
        u, v = an.point(side, rng.uniform(0.1, 0.95), rng.uniform(0.15, 0.95))
        s = 0.05 + 0.05 * sev + rng.uniform(0, 0.04)
        cv.blob(u, v, s, s * rng.uniform(0.8, 1.5), (0.05 + 0.11 * sev) * rng.uniform(0.7, 1.1),
                angle=rng.uniform(-1, 1), texture=0.4)


def _f_pneumocystis(cv, an, rng, sev):
    """Bilateral perihilar haze with a fine reticular texture."""
    for side in (-1, 1):
        for _ in range(3):
            u, v = an.point(side, rng.uniform(0.25, 0.75), rng.uniform(0.0, 0.45))
            s = 0.08 + 0.05 * sev
            cv.blob(u, v, s * 1.2, s, (0.04 + 0.08 * sev) * rng.uniform(0.8, 1.1), texture=0.6)


def _f_edema(cv, an, rng, sev):
    """Perihilar bat-wing haze (central, not peripheral), Kerley lines at the bases."""
    for side in (-1, 1):
        u, v = an.point(side, rng.uniform(0.4, 0.6), rng.uniform(0.05, 0.25))
        cv.blob(u, v, 0.15 + 0.04 * sev, 0.20 + 0.04 * sev, (0.07 + 0.12 * sev) * rng.uniform(0.85, 1.1),
                texture=0.3)
        for _ in range(int(round(2 + 3 * sev))):
            u, v = an.point(side, rng.uniform(0.75, 0.95), rng.uniform(0.85, 1.0))
            cv.blob(u, v, 0.035, 0.004, 0.10 + 0.05 * sev, texture=0.1, mark=0.5)


def _f_effusion(cv, an, dark, rng, sev):
    """Fluid at a lung base: meniscus rising laterally, blunted costophrenic angle."""
    U, V = cv.f.U, cv.f.V
    X = np.abs(U)
    sides = [int(rng.choice([-1, 1]))]
    if rng.random() < 0.3:
        sides.append(-sides[0])
    for side in sides:
        base = an.cp[side]
        top = base - (0.10 + 0.32 * sev) * rng.uniform(0.85, 1.1)
        lat = np.maximum(an.lateral_edge(V), 0.3)
        q = np.clip((X - an.med) / (lat - an.med), 0, 1)
        level = top - 0.25 * q ** 2
        fluid = _sstep(level - 0.03, level + 0.04, V) * (np.sign(U) == side)
        cv.field(0.95 * dark * fluid, (fluid > 0.5) & (cv.lung > 0.5))


def _f_pneumothorax(cv, an, rng, sev, vessel_mult):
    """Air between the collapsed lung edge and the chest wall: dark, avascular, edge line."""
    U, V = cv.f.U, cv.f.V
    X = np.abs(U)
    side = int(rng.choice([-1, 1]))
    c = 0.05 + 0.18 * sev
    edge = an.lateral_edge(V - 0.6 * c) - c  # the collapsed lung's edge, also lower at the apex
    on_side = np.sign(U) == side
    space = _sstep(-0.01, 0.01, X - edge) * cv.lung * on_side
    line = pm.exp(-((X - edge) / 0.006) ** 2) * cv.lung * on_side * _sstep(0.0, 0.05, edge)
    vessel_mult *= 1 - space
    cv.field(-0.05 * space + 0.08 * line, space > 0.5)


def _f_atelectasis(cv, an, rng, sev):
    """Plate-like linear density (one or two) at the lung bases."""
    for _ in range(int(rng.integers(1, 3))):
        side = int(rng.choice([-1, 1]))
        u, v = an.point(side, rng.uniform(0.6, 0.92), rng.uniform(0.3, 0.75))
        cv.blob(u, v, 0.12 + 0.06 * sev, 0.014 + 0.014 * sev, 0.12 + 0.12 * sev,
                angle=rng.uniform(-0.35, 0.35), texture=0.15)


def _f_nodule(cv, an, rng, sev):
    side = int(rng.choice([-1, 1]))
    u, v = an.point(side, rng.uniform(0.1, 0.9), rng.uniform(0.2, 0.85))
    r = 0.025 + 0.04 * sev
    cv.blob(u, v, r, r * rng.uniform(0.85, 1.15), 0.14 + 0.12 * sev, texture=0.1, sharp=True, mark=0.5)


def _f_pleural_other(cv, an, rng, sev):
    """Pleural thickening along a stretch of the lateral chest wall."""
    U, V = cv.f.U, cv.f.V
    X = np.abs(U)
    side = int(rng.choice([-1, 1]))
    t = 0.02 + 0.035 * sev
    v0 = rng.uniform(an.apex + 0.05, 0.0)
    lat = an.lateral_edge(V)
    band = (_sstep(-t - 0.01, -t + 0.01, X - lat) * (np.sign(U) == side)
            * _sstep(v0 - 0.02, v0 + 0.03, V) * _sstep(v0 + 0.45, v0 + 0.40, V) * cv.lung)
    cv.field(0.7 * an.lung_depth * band, band > 0.5)


def _devices(frame: _Frame, rng: pm.Rng) -> np.ndarray:
    """Tubes, lines, ECG leads and a pacemaker, as a 0..1 field."""
    tp = frame.to_pixel
    n = frame.n
    px = n / 2 * frame.scale
    lines = []
    kinds = [k for k in ("ett", "ng", "line", "ecg", "pacer") if rng.random() < 0.45] or ["ett"]
    if "ett" in kinds:
        lines.append(([tp(0.01 + 0.02 * t, -1.1 + 0.62 * t) for t in np.linspace(0, 1, 8)], 0.018 * px))
    if "ng" in kinds:
        pts = [tp(-0.03 + 0.04 * t, -1.1 + 1.5 * t) for t in np.linspace(0, 1, 6)]
        pts += [tp(0.01 + 0.35 * t, 0.4 + 0.25 * t * t) for t in np.linspace(0, 1, 6)]
        lines.append((pts, 0.014 * px))
    if "line" in kinds:
        s = int(rng.choice([-1, 1]))
        lines.append(([tp(s * (0.75 - 0.7 * t), -0.72 + 0.06 * t + 0.4 * t * t) for t in np.linspace(0, 1, 10)],
                      0.012 * px))
    if "ecg" in kinds:
        for _ in range(int(rng.integers(2, 5))):
            u, v = rng.uniform(-0.8, 0.8), rng.uniform(-0.7, 0.6)
            c, r = tp(u, v), 0.03 * px
            lines.append(([(c[0] + r * pm.cos(a), c[1] + r * pm.sin(a)) for a in np.linspace(0, 2 * math.pi, 13)],
                          0.008 * px))
            lines.append(([c, tp(u + rng.uniform(-0.5, 0.5), v + rng.uniform(0.3, 0.8))], 0.006 * px))
    if "pacer" in kinds:
        s = int(rng.choice([-1, 1]))
        bu, bv = s * 0.55, -0.62
        lines.append(([tp(bu - 0.08, bv), tp(bu + 0.08, bv)], 0.10 * px))
        lines.append(([tp(bu - s * 0.5 * t, bv + 0.95 * t * t) for t in np.linspace(0, 1, 10)], 0.010 * px))
    return _draw_polylines(n, lines)


# --- lateral and CT ------------------------------------------------------------------------

def _lateral_fields(frame: _Frame, rng):
    """A lateral chest view: patient facing left, spine on the right."""
    U, V = frame.U, frame.V
    u = rng.uniform
    bw, bh = u(0.78, 0.88), u(1.05, 1.2)
    body = _sstep(1.04, 0.96, (U / bw) ** 2 + ((V - 0.15) / bh) ** 2)
    img = 0.05 + 0.45 * body + 0.08 * _sstep(0.35, 0.9, V) * body
    # raised arms over the upper anterior chest
    for off in (0.0, 0.12):
        d = np.abs((U + 0.25 - off) + 0.55 * (V + 0.4))
        img += 0.08 * _sstep(0.12, 0.06, d) * _sstep(-0.2, -0.45, V) * body
    lx, ly, la, lb = u(-0.02, 0.08), u(-0.08, 0.0), u(0.52, 0.6), u(0.58, 0.68)
    lungE = ((U - lx) / la) ** 2 + ((V - ly) / lb) ** 2
    dome = 0.42 + 0.18 * _sstep(-0.2, 0.5, U) + u(-0.04, 0.04)
    heart_c = (u(-0.32, -0.22), u(0.24, 0.32))
    return dict(body=body, img=img, lungE=lungE, dome=dome, heart_c=heart_c,
                lung_depth=u(0.22, 0.3), shape=(lx, ly, la, lb))


def _render_lateral(frame, rng, findings, sev):
    U, V = frame.U, frame.V
    L = _lateral_fields(frame, rng)
    hs = 1.0 + (0.3 * sev if {"cardiomegaly", "enlarged cardiomediastinum"} & set(findings) else 0.0)
    hx, hy = L["heart_c"]
    heartE = ((U - hx) / (0.28 * hs)) ** 2 + ((V - hy) / (0.26 * math.sqrt(hs))) ** 2
    heart = _sstep(1.1, 0.9, heartE)
    lung = _sstep(1.05, 0.95, L["lungE"]) * _sstep(0.02, -0.02, V - L["dome"]) * (1 - 0.8 * heart)
    img = L["img"] - L["lung_depth"] * lung + 0.04 * heart * L["body"]
    # vertebral bodies with discs, sternum
    spine_x = 0.55 + 0.08 * V
    vert = _sstep(0.1, 0.07, np.abs(U - spine_x)) * (0.5 + 0.5 * _sstep(0.25, 0.35, np.abs(((V / 0.12) % 1) - 0.5)))
    img += 0.10 * vert * L["body"]
    img += 0.06 * _sstep(0.03, 0.015, np.abs(U + 0.72 - 0.1 * V)) * _sstep(-0.7, -0.6, V) * _sstep(0.4, 0.3, V)
    texture = np.clip(0.5 + 0.5 * _smooth_noise(rng, frame.n, 24), 0, 1)
    cv = _Canvas(frame, lung, texture)
    lx, ly, la, lb = L["shape"]
    lesion_like = [f for f in findings if f not in ("support devices", "cardiomegaly", "enlarged cardiomediastinum",
                                                    "fracture")]
    for f in lesion_like:
        n = 2 + int(round(4 * sev))
        for _ in range(n):
            if f in ("covid-19", "pleural effusion"):
                u, v = lx + la * rng.uniform(0.0, 0.8), ly + lb * rng.uniform(0.3, 0.85)
            else:
                u, v = lx + la * rng.uniform(-0.7, 0.7), ly + lb * rng.uniform(-0.7, 0.8)
            s = 0.05 + 0.06 * sev
            cv.blob(u, v, s, s, (0.04 + 0.12 * sev) * rng.uniform(0.7, 1.1))
    if {"cardiomegaly", "enlarged cardiomediastinum"} & set(findings):
        cv.lesion |= heart > 0.5
    if "support devices" in findings:
        dev = _draw_polylines(frame.n, [([frame.to_pixel(-0.55 + 0.1 * t, -1.1 + 0.7 * t) for t in np.linspace(0, 1, 5)],
                                         0.015 * frame.n)])
        cv.field(0.3 * dev, dev > 0.5)
    return img + cv.density, lung, cv.lesion


def _render_ct(frame, rng, findings, sev):
    """An axial CT slice at lung level (lung window)."""
    U, V = frame.U, frame.V
    u = rng.uniform
    bw, bh = u(0.78, 0.88), u(0.55, 0.65)
    bodyE = (U / bw) ** 2 + ((V - 0.02) / bh) ** 2
    body = _sstep(1.03, 0.97, bodyE)
    fat = _sstep(0.75, 0.85, bodyE)
    img = 0.02 + 0.55 * body - 0.12 * fat * body
    img += 0.35 * _sstep(0.012, 0.004, np.abs(V - (0.02 + bh + 0.08) - 0.1 * U ** 2))  # table
    lung = np.zeros_like(U)
    for s in (-1, 1):
        e = ((U - s * 0.36) / u(0.27, 0.31)) ** 2 + ((V - 0.03) / u(0.38, 0.44)) ** 2
        notch = _sstep(0.14, 0.08, pm.hypot(U - s * 0.1, V + 0.02))
        lung = np.maximum(lung, _sstep(1.05, 0.95, e) * (1 - notch))
    heart = _sstep(1.1, 0.9, ((U - 0.05) / 0.24) ** 2 + ((V + 0.12) / 0.2) ** 2)
    lung = lung * (1 - heart)
    img -= 0.5 * lung
    spine = pm.hypot(U, V - 0.40)
    img += 0.35 * _sstep(0.11, 0.09, spine) - 0.15 * _sstep(0.07, 0.05, spine)
    img += 0.15 * _sstep(0.075, 0.06, pm.hypot(U - 0.12, V - 0.24))  # aorta
    # ribs: bright dots just inside the body outline
    for k in range(14):
        a = 2 * np.pi * (k + u(-0.2, 0.2)) / 14
        ru, rv = 0.9 * bw * pm.cos(a), 0.02 + 0.88 * bh * pm.sin(a)
        img += 0.4 * _sstep(0.035, 0.02, pm.hypot(U - ru, V - rv))
    texture = np.clip(0.5 + 0.5 * _smooth_noise(rng, frame.n, 30), 0, 1)
    img += 0.08 * lung * np.clip(texture - 0.75, 0, None)  # vessels
    cv = _Canvas(frame, lung, texture)
    if findings:
        covid = "covid-19" in findings
        for _ in range(3 + int(round(6 * sev))):
            s = int(rng.choice([-1, 1]))
            a = rng.uniform(-0.2, 1.2) * np.pi if covid else rng.uniform(0, 2 * np.pi)
            rr = rng.uniform(0.7, 0.95) if covid else rng.uniform(0.2, 0.9)
            cu, cvv = s * 0.36 + s * 0.26 * rr * pm.cos(a), 0.03 + 0.38 * rr * abs(pm.sin(a))
            cv.blob(cu, cvv, 0.06 + 0.04 * sev, 0.05 + 0.04 * sev, (0.10 + 0.2 * sev) * rng.uniform(0.7, 1.1))
    return img + cv.density, lung, cv.lesion


# --- the renderer --------------------------------------------------------------------------

def _render_frontal(frame, rng, findings, sev, view):
    an = _Anatomy(rng, view)
    fs = set(findings)
    if "cardiomegaly" in fs:
        an.heart_scale *= 1.28 + 0.25 * sev
    if "enlarged cardiomediastinum" in fs:
        an.mediast_extra = 0.05 + 0.07 * sev
        an.heart_scale *= 1.06
    if "fracture" in fs:
        side = int(rng.choice([-1, 1]))
        x = rng.uniform(0.35, 0.6)
        f = float(_rib_curve(an, np.float32(x)))
        y_lo, y_hi = an.apex + 0.15 - f, 0.15 - f
        m_lo = math.ceil((y_lo + 0.12 * y_lo * y_lo) / an.rib_sp - an.rib_ph)
        m_hi = math.floor((y_hi + 0.12 * y_hi * y_hi) / an.rib_sp - an.rib_ph)
        m = int(rng.integers(m_lo, max(m_lo, m_hi) + 1))
        z = (m + an.rib_ph) * an.rib_sp  # solve y + 0.12 y^2 = z for the rib's centre line
        v = f + (-1 + math.sqrt(1 + 0.48 * z)) / 0.24
        an.fracture = dict(side=side, x=x, v=v, len=rng.uniform(0.1, 0.2), shift=0.15 + 0.2 * sev)
    img, lung, dark_half, vessel = _frontal_fields(frame, an, rng)
    texture = np.clip(0.5 + 0.5 * _smooth_noise(rng, frame.n, 22), 0, 1).astype(np.float32)
    cv = _Canvas(frame, lung, texture)
    vessel_mult = np.ones_like(lung)
    # normal variants, in every image and never marked: faint patchy overlaps (vessels end-on,
    # skin folds) anywhere in the lungs, sometimes nipple shadows over the lower zones
    for _ in range(int(rng.integers(0, 4))):
        u, v = an.point(int(rng.choice([-1, 1])), rng.uniform(0.1, 0.95), rng.uniform(0.1, 0.95))
        sz = rng.uniform(0.04, 0.08)
        cv.blob(u, v, sz, sz * rng.uniform(0.8, 1.5), rng.uniform(0.01, 0.035), angle=rng.uniform(-1, 1),
                texture=0.5, mark=0)
    if rng.random() < 0.3:
        h, q, amp = rng.uniform(0.65, 0.85), rng.uniform(0.45, 0.75), rng.uniform(0.03, 0.06)
        for side in (-1, 1):
            u, v = an.point(side, h + rng.normal(0, 0.02), q + rng.normal(0, 0.03))
            cv.blob(u, v, 0.025, 0.025, amp, texture=0.0, sharp=True, mark=0)
    for f in findings:
        if f == "covid-19":
            _f_covid(cv, an, rng, sev)
        elif f == "ards":
            _f_diffuse(cv, an, rng, sev, 1.0)
        elif f == "sars":
            _f_sars(cv, an, rng, sev)
        elif f in ("pneumonia", "streptococcus"):
            _f_consolidation(cv, an, rng, sev, 0.9)
        elif f == "consolidation":
            _f_consolidation(cv, an, rng, sev, 1.1)
        elif f == "lung opacity":
            _f_opacity(cv, an, rng, sev)
        elif f == "pneumocystis":
            _f_pneumocystis(cv, an, rng, sev)
        elif f == "edema":
            _f_edema(cv, an, rng, sev)
        elif f == "pleural effusion":
            _f_effusion(cv, an, frame.upsample(dark_half), rng, sev)
        elif f == "pneumothorax":
            _f_pneumothorax(cv, an, rng, sev, vessel_mult)
        elif f == "atelectasis":
            _f_atelectasis(cv, an, rng, sev)
        elif f == "lung lesion":
            _f_nodule(cv, an, rng, sev)
        elif f == "pleural other":
            _f_pleural_other(cv, an, rng, sev)
        elif f == "cardiomegaly":
            cv.lesion |= (an.heart_e(frame.U, frame.V) < 1.0) & (frame.V < max(an.cp.values()))
        elif f == "enlarged cardiomediastinum":
            X = np.abs(frame.U)
            cv.lesion |= (X < an.medial_edge(frame.V, np.sign(frame.U))) & (frame.V > an.apex) & (frame.V < 0.1)
        elif f == "fracture":
            fr = an.fracture
            cv.blob(fr["side"] * (fr["x"] + 0.02), fr["v"], 0.025, 0.02, 0.03 * sev, confine=False, mark=0.1)
        elif f == "support devices":
            dev = _devices(frame, rng)
            cv.field(0.30 * dev, dev > 0.5)
    img = img + 0.075 * vessel * vessel_mult + cv.density
    return img, lung, cv.lesion


def _style(img: np.ndarray, rng: pm.Rng, n: int, style: dict | None) -> np.ndarray:
    """Blur, vignetting, noise, global tone; then the optional source-specific shift."""
    img = pm.gaussian_filter(img, rng.uniform(0.5, 0.9))
    c = (np.arange(n, dtype=np.float32) + 0.5) / n * 2 - 1
    r2 = c[None, :] ** 2 + c[:, None] ** 2
    img = img * (1 - rng.uniform(0.03, 0.15) * r2) + 0.02 * _smooth_noise(rng, n, 3)
    img = img + np.float32(rng.uniform(0.008, 0.022)) * rng.standard_normal((n, n), dtype=np.float32)
    contrast, bright, gamma = rng.uniform(0.85, 1.2), rng.uniform(-0.05, 0.05), rng.uniform(0.8, 1.25)
    img = pm.power(np.clip((img - 0.4) * contrast + 0.4 + bright, 0, 1), gamma)
    if style:
        ss = float(style.get("shift", 0.0))
        if ss > 0 and style.get("kind") == "cohen":
            img = pm.gaussian_filter(img, 1.2 * ss)
            img = (img - 0.5) * (1 + 0.3 * ss) + 0.5 + 0.08 * ss
        elif ss > 0:
            img = (img - 0.5) * (1 - 0.25 * ss) + 0.5 - 0.08 * ss
    return np.clip(img, 0, 1).astype(np.float32)


_GLYPHS = {
    "R": [[(0, 1), (0, 0), (0.6, 0), (0.8, 0.15), (0.8, 0.35), (0.6, 0.5), (0, 0.5)], [(0.35, 0.5), (0.85, 1)]],
    "L": [[(0, 0), (0, 1), (0.7, 1)]],
    "A": [[(0, 1), (0.4, 0), (0.8, 1)], [(0.15, 0.62), (0.65, 0.62)]],
    "B": [[(0, 0), (0, 1), (0.6, 1), (0.8, 0.85), (0.8, 0.62), (0.6, 0.5), (0, 0.5)],
          [(0, 0), (0.55, 0), (0.75, 0.12), (0.75, 0.38), (0.55, 0.5)]],
    "C": [[(0.8, 0.1), (0.6, 0), (0.2, 0), (0, 0.2), (0, 0.8), (0.2, 1), (0.6, 1), (0.8, 0.9)]],
}


def _draw_glyph(img: np.ndarray, letter: str, x: float, y: float, size: float, fill: int) -> np.ndarray:
    """Burn a stroke letter into a uint8 image (returns a new array)."""
    w = max(1, int(round(size / 7)))
    mask = pm.draw_polylines(img.shape, [([(x + px * size, y + py * size) for px, py in stroke], w)
                                         for stroke in _GLYPHS[letter]]) > 0
    return np.where(mask, np.uint8(fill), img)


def _laterality_marker(img: np.ndarray, rng: pm.Rng) -> np.ndarray:
    """A burned-in "R"/"L" marker in an upper corner (same rate for every source and label)."""
    h, w = img.shape
    size = rng.uniform(0.04, 0.07) * min(h, w)
    x = rng.uniform(0.04, 0.12) * w if rng.random() < 0.5 else w - size - rng.uniform(0.04, 0.12) * w
    y = rng.uniform(0.03, 0.1) * h
    return _draw_glyph(img, str(rng.choice(["R", "L"])), x, y, size, int(rng.integers(215, 256)))


def _resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    return pm.resample(mask.astype(np.float32), width, height, "bilinear") > 0.5


def _render(rng: pm.Rng, height: int, width: int, findings: Sequence[str], severity: float,
            view: str = "PA", style: dict | None = None) -> Radiograph:
    if height < 8 or width < 8:
        raise ValueError(f"image size {width}x{height} is too small")
    keys = _normalise_findings(findings)
    sev = float(np.clip(severity, 0.0, 1.0))
    n = GRID
    v = " ".join(str(view).replace("_", " ").replace("-", " ").upper().split())
    if v in _VIEWS_CT:
        frame = _Frame(n, rng.uniform(-0.05, 0.05), rng.uniform(0.92, 1.05), rng.uniform(-0.04, 0.04),
                       rng.uniform(-0.04, 0.04))
        img, lung, lesion = _render_ct(frame, rng, keys, sev)
    elif v in _VIEWS_LATERAL:
        frame = _Frame(n, rng.uniform(-0.09, 0.09), rng.uniform(0.88, 1.04), rng.uniform(-0.05, 0.05),
                       rng.uniform(-0.05, 0.06))
        img, lung, lesion = _render_lateral(frame, rng, keys, sev)
    elif v in _VIEWS_FRONTAL:
        frame = _Frame(n, rng.uniform(-0.09, 0.09), rng.uniform(0.88, 1.04), rng.uniform(-0.05, 0.05),
                       rng.uniform(-0.05, 0.06))
        img, lung, lesion = _render_frontal(frame, rng, keys, sev, v)
    else:
        raise ValueError(f"unknown view {view!r}: use PA, AP, AP Supine, L (lateral) or Axial (CT)")
    img = _style(img, rng, n, style)
    out = _resize_f(img, width, height)
    image = np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)
    lung_mask = _resize_mask(lung > 0.5, width, height)
    lesion_mask = _resize_mask(lesion, width, height)
    if v not in _VIEWS_CT and rng.random() < 0.25:
        image = _laterality_marker(image, rng)
    return Radiograph(image=image, lung_mask=lung_mask, lesion_mask=lesion_mask)


def render_radiograph(rng: pm.Rng, height: int, width: int, findings: Sequence[str],
                      severity: float, view: str = "PA") -> Radiograph:
    """Render one synthetic image of ``height`` x ``width`` pixels.

    ``findings``: names from :data:`FINDINGS` (case-insensitive; "COVID-19, ARDS" is split on
    commas; empty, "No Finding" or "normal" draw nothing). ``severity`` in [0, 1] scales the
    findings' extent and contrast. ``view``: "PA", "AP", "AP Supine" (frontal), "L"
    (lateral) or "Axial" (a CT slice).
    """
    return _render(rng, height, width, findings, severity, view)


# --- writing files -------------------------------------------------------------------------

_JPEG = dict(quality=90, subsampling=0, optimize=False, progressive=False)
_PNG = dict(compress_level=1, optimize=False)  # fast; sizes matter less than time here
_PNG_MASK = dict(compress_level=3, optimize=False)


def _save_image(gray: np.ndarray, path: Path, fmt: str, mode: str, tint: tuple[float, float, float] | None):
    """Save a uint8 grey image as ``fmt`` (JPEG/PNG) in Pillow ``mode``."""
    if mode == "L":
        img = Image.fromarray(gray, "L")
    elif mode == "I;16":
        img = Image.fromarray(np.round(gray.astype(np.float64) * (4095 / 255)).astype(np.uint16))
    elif mode == "P":
        img = Image.fromarray(gray, "L").convert("P")
    else:
        t = tint or (1.0, 1.0, 1.0)
        rgb = np.stack([np.clip(np.round(gray * k), 0, 255).astype(np.uint8) for k in t], axis=-1)
        if mode == "RGBA":
            rgb = np.concatenate([rgb, np.full(gray.shape + (1,), 255, np.uint8)], axis=-1)
        img = Image.fromarray(rgb, mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "JPEG":
        img.save(path, "JPEG", **_JPEG)
    else:
        img.save(path, "PNG", **_PNG)


def _save_mask(mask: np.ndarray, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L").save(path, "PNG", **_PNG_MASK)


def _write_rows(path: Path, header: list[str], rows: list[list]):
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)


def _merge_cfg(defaults: dict, cfg: dict | None, name: str) -> dict:
    out = dict(defaults)
    if cfg:
        unknown = sorted(set(cfg) - set(defaults))
        if unknown:
            raise ValueError(f"synthetic.{name}: unknown parameter(s) {', '.join(unknown)}; "
                             f"valid: {', '.join(defaults)}")
        out.update(cfg)
    for key, value in out.items():
        default = defaults[key]
        if isinstance(default, list):
            if not isinstance(value, (list, tuple)) or len(value) != 2 or value[0] > value[1]:
                raise ValueError(f"synthetic.{name}.{key} must be a [low, high] pair, got {value!r}")
            out[key] = list(value)
        elif isinstance(default, int) and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"synthetic.{name}.{key} must be an integer >= 0, got {value!r}")
        elif isinstance(default, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"synthetic.{name}.{key} must be a number, got {value!r}")
    for key in ("lateral_fraction",):
        if not 0.0 <= float(out[key]) <= 1.0:
            raise ValueError(f"synthetic.{name}.{key} must be in [0, 1], got {out[key]!r}")
    lo, hi = out["severity"]
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"synthetic.{name}.severity must satisfy 0 <= low <= high <= 1, got {out['severity']!r}")
    if out["images_per_patient"][0] < 1:
        raise ValueError(f"synthetic.{name}.images_per_patient must be >= 1")
    if out["style_shift"] < 0:
        raise ValueError(f"synthetic.{name}.style_shift must be >= 0")
    return out


def _severity(rng: pm.Rng, lo: float, hi: float) -> float:
    """Per-patient severity: skewed towards mild, so a good share of cases is subtle."""
    return float(lo + (hi - lo) * rng.beta(1.2, 1.8))


def _image_rng(seed: int, source: int, index: int) -> pm.Rng:
    return pm.Rng(np.random.SeedSequence([int(seed), source, index]))


# --- Cohen-style ---------------------------------------------------------------------------

_COHEN_OTHER = ["No Finding", "SARS", "Streptococcus", "Pneumocystis", "Pneumonia", "ARDS"]
# (format, Pillow mode, extension); the first entries are guaranteed to appear at least once
_COHEN_FORMATS = [
    ("JPEG", "L", ".jpg"), ("JPEG", "RGB", ".jpeg"), ("PNG", "RGB", ".png"), ("PNG", "RGBA", ".png"),
    ("PNG", "P", ".png"), ("PNG", "I;16", ".png"), ("PNG", "L", ".jpg"), ("PNG", "L", ".png"),
]
_COHEN_FORMAT_WEIGHTS = [0.30, 0.28, 0.14, 0.06, 0.05, 0.04, 0.05, 0.08]
_LOCATIONS = ["Synthetic Hospital A", "Synthetic Hospital B", "Synthetic Clinic C", "Synthetic Centre D", ""]
_NOTES = {
    "COVID-19": "Synthetic case: fever and cough; bilateral peripheral ground-glass opacities, lower zones.",
    "COVID-19, ARDS": "Synthetic case: respiratory failure, intubated; diffuse bilateral opacities.",
    "SARS": "Synthetic case: multifocal airspace opacities.",
    "Pneumocystis": "Synthetic case: immunocompromised; perihilar interstitial haze.",
    "Streptococcus": "Synthetic case: lobar consolidation.",
    "Pneumonia": "Synthetic case: focal consolidation.",
    "ARDS": "Synthetic case: diffuse bilateral opacities.",
    "No Finding": "Synthetic case: no acute cardiopulmonary findings.",
}


def _cohen_date(offset: int, start: int) -> str:
    """Format day ``start + offset`` of 2020 (0-based) as "Month D, 2020", locale-independent."""
    day = start + offset  # day of year 2020, 0-based
    month = 0
    while month < 11 and day >= _DAYS_IN_MONTH[month]:
        day -= _DAYS_IN_MONTH[month]
        month += 1
    return f"{_MONTHS[month]} {min(day, _DAYS_IN_MONTH[month] - 1) + 1}, 2020"


def _yn(rng, p_blank=0.6, p_yes=0.4) -> str:
    return "" if rng.random() < p_blank else ("Y" if rng.random() < p_yes else "N")


def generate_cohen(root: Path, cfg: dict | None = None, seed: int = 0) -> dict:
    """Write a Cohen covid-chestxray-dataset lookalike under ``root``; return a summary.

    The caller may write into a temporary folder and rename it (see :func:`io.atomic_path`).
    """
    cfg = _merge_cfg(DEFAULT_COHEN_CFG, cfg, "cohen")
    root = Path(root)
    rng = pm.Rng(np.random.SeedSequence([int(seed), 1000]))
    lo_sev, hi_sev = cfg["severity"]

    # patients and their findings (the "other" list: 2 empty, 1 todo, then cycle)
    findings = []
    for i in range(cfg["covid_patients"]):
        findings.append("COVID-19, ARDS" if i % 10 == 9 else "COVID-19")
    n_other = cfg["other_patients"]
    special = ["", "", "todo"] if n_other >= 8 else []
    findings += special + [_COHEN_OTHER[i % len(_COHEN_OTHER)] for i in range(n_other - len(special))]
    order = rng.permutation(len(findings))
    findings = [findings[i] for i in order]
    numbers = rng.permutation(np.arange(1, 4 * len(findings) + 10))[: len(findings)]
    pids = [f"{num}{'ab'[int(rng.integers(0, 2))]}" if rng.random() < 0.06 else str(num)
            for num in sorted(int(x) for x in numbers)]

    # images: X-rays per patient, then CT rows attached to patients with a finding
    images = []  # dicts: patient index, offset, modality
    for p, _ in enumerate(findings):
        n_img = int(rng.integers(cfg["images_per_patient"][0], cfg["images_per_patient"][1] + 1))
        offset = int(rng.integers(0, 4))
        for k in range(n_img):
            images.append(dict(p=p, offset=offset, modality="X-ray"))
            offset += int(rng.integers(2, 6))
    eligible = [p for p, f in enumerate(findings) if f not in ("", "todo")]
    covid_pat = [p for p, f in enumerate(findings) if "COVID" in f]
    for i in range(cfg["ct_rows"]):
        pool = covid_pat if (i % 3 != 2 and covid_pat) else eligible
        if not pool:
            break
        p = int(pool[int(rng.integers(0, len(pool)))])
        images.append(dict(p=p, offset=int(rng.integers(0, 10)), modality="CT"))
    images.sort(key=lambda im: (im["p"], im["offset"], im["modality"]))

    # views: a quota of laterals (at least one COVID-19 lateral), frontal views otherwise
    xray = [i for i, im in enumerate(images) if im["modality"] == "X-ray"]
    n_lat = min(len(xray), max(1, int(round(cfg["lateral_fraction"] * len(xray))))) if cfg["lateral_fraction"] > 0 else 0
    lateral = set(int(i) for i in rng.choice(xray, size=n_lat, replace=False)) if n_lat else set()
    covid_xray = [i for i in xray if "COVID" in findings[images[i]["p"]]]
    if n_lat and covid_xray and not lateral & set(covid_xray):
        lateral.pop()
        lateral.add(covid_xray[int(rng.integers(0, len(covid_xray)))])
    for i, im in enumerate(images):
        if im["modality"] == "CT":
            im["view"] = "Axial"
        elif i in lateral:
            im["view"] = "L"
        else:
            im["view"] = str(rng.choice(["PA", "AP", "AP Supine"], p=[0.45, 0.38, 0.17]))

    # formats: each kind at least once, the rest by weight
    n = len(images)
    fmt_idx = list(range(len(_COHEN_FORMATS)))[:n]
    fmt_idx += [int(x) for x in rng.choice(len(_COHEN_FORMATS), size=n - len(fmt_idx), p=_COHEN_FORMAT_WEIGHTS)]
    fmt_idx = [fmt_idx[i] for i in rng.permutation(n)]

    # per-patient details
    pat = []
    for p, finding in enumerate(findings):
        pat.append(dict(
            sex=str(rng.choice(["M", "F", ""], p=[0.55, 0.4, 0.05])),
            age="" if rng.random() < 0.08 else str(int(rng.integers(20, 90))),
            severity=_severity(rng, lo_sev, hi_sev),
            start=int(rng.integers(19, 110)), location=_LOCATIONS[int(rng.integers(0, len(_LOCATIONS)))],
            survival=_yn(rng), intubated=_yn(rng, 0.7, 0.3), went_icu=_yn(rng, 0.7, 0.3),
            drawn=finding if finding not in ("", "todo") else str(rng.choice(["No Finding", "Pneumonia"])),
        ))

    style = {"kind": "cohen", "shift": float(cfg["style_shift"])}
    img_dir = root / "images"
    meta_rows, truth_rows = [], []
    counts = dict(by_finding=Counter(), by_view=Counter(), by_modality=Counter(), by_mode=Counter())
    png_as_jpg = 0
    for i, im in enumerate(images):
        p = im["p"]
        info, finding = pat[p], findings[p]
        irng = _image_rng(seed, 1, i)
        drawn = info["drawn"]
        sev = 0.0 if drawn == "No Finding" else float(np.clip(info["severity"] + irng.normal(0, 0.08), lo_sev, hi_sev))
        long_side = int(irng.integers(cfg["size_range"][0], cfg["size_range"][1] + 1))
        aspect = 1.0 if im["modality"] == "CT" else float(pm.exp(irng.uniform(pm.log(0.8), pm.log(1.3))))
        h, w = (long_side, max(8, int(round(long_side / aspect)))) if aspect >= 1 else \
            (max(8, int(round(long_side * aspect))), long_side)
        rad = _render(irng, h, w, [drawn], sev, im["view"], style)
        image = rad.image
        if irng.random() < 0.06:  # figure-panel artefacts: an arrow and a panel letter
            image = _figure_marks(image, rad.lung_mask, irng)
        fmt, mode, ext = _COHEN_FORMATS[fmt_idx[i]]
        tint = None
        if mode in ("RGB", "RGBA") and irng.random() < 0.2:
            tint = tuple(float(x) for x in irng.uniform(0.9, 1.0, size=3))
        tag = {"PA": "PA", "AP": "AP", "AP Supine": "APS", "L": "L", "Axial": "CT"}[im["view"]]
        filename = f"synth-{pids[p]}-{i:04d}-{tag}{ext}"
        stem = Path(filename).stem
        _save_image(image, img_dir / filename, fmt, mode, tint)
        lung_rel = f"annotations/synthetic-masks/{stem}_lung.png"
        lesion_rel = f"annotations/synthetic-masks/{stem}_lesion.png"
        _save_mask(rad.lung_mask, root / lung_rel)
        _save_mask(rad.lesion_mask, root / lesion_rel)
        png_as_jpg += int(fmt == "PNG" and ext == ".jpg")
        offset = "" if irng.random() < 0.05 else str(im["offset"])
        date = "" if irng.random() < 0.05 else _cohen_date(im["offset"], info["start"])
        row = {c: "" for c in COHEN_COLUMNS}
        row.update(
            patientid=pids[p], offset=offset, sex=info["sex"], age=info["age"], finding=finding,
            survival=info["survival"], intubated=info["intubated"], went_icu=info["went_icu"],
            temperature="" if irng.random() < 0.8 else f"{irng.uniform(36.5, 39.8):.1f}",
            pO2_saturation="" if irng.random() < 0.8 else str(int(irng.integers(80, 99))),
            view=im["view"], modality=im["modality"], date=date, location=info["location"],
            folder="images", filename=filename, doi=f"10.0000/synthetic.{p + 1}",
            url=f"https://example.org/synthetic/{pids[p]}", license="synthetic (CC0)",
            clinical_notes=_NOTES.get(finding, "Synthetic case: finding not recorded."),
        )
        meta_rows.append([row[c] for c in COHEN_COLUMNS])
        truth_rows.append([filename, pids[p], finding, im["view"], im["modality"], f"{sev:.4f}",
                           lung_rel, lesion_rel, int(rad.lesion_mask.sum()), drawn])
        counts["by_finding"][finding or "(empty)"] += 1
        counts["by_view"][im["view"]] += 1
        counts["by_modality"][im["modality"]] += 1
        counts["by_mode"][f"{fmt} {mode}"] += 1

    _write_rows(root / "metadata.csv", COHEN_COLUMNS, meta_rows)
    _write_rows(root / "annotations" / "synthetic_truth.csv",
                ["filename", "patientid", "finding", "view", "modality", "severity", "lung_mask",
                 "lesion_mask", "lesion_pixels", "drawn"], truth_rows)
    covid_frontal = sum(1 for r, im in zip(truth_rows, images)
                        if "COVID" in r[2] and im["modality"] == "X-ray" and im["view"] != "L")
    return {
        "generator": "deepcovid.synthetic.generate_cohen", "seed": int(seed), "cfg": cfg,
        "patients": len(findings), "images": len(images), "covid_frontal_xrays": covid_frontal,
        "png_named_jpg": png_as_jpg,
        **{k: dict(sorted(v.items())) for k, v in counts.items()},
    }


def _figure_marks(image: np.ndarray, lung: np.ndarray, rng: pm.Rng) -> np.ndarray:
    """Burn in an arrow pointing into a lung and a panel letter, as in figures of papers."""
    h, w = image.shape
    lines = []
    ys, xs = np.nonzero(lung)
    if len(xs):
        j = int(rng.integers(0, len(xs)))
        tx, ty = float(xs[j]), float(ys[j])
        ang = rng.uniform(0, 2 * np.pi)
        length = 0.12 * min(h, w)
        sx, sy = tx + length * pm.cos(ang), ty + length * pm.sin(ang)
        width = max(2, int(min(h, w) / 120))
        lines.append(([(sx, sy), (tx, ty)], width))
        for da in (0.5, -0.5):
            hx = tx + 0.35 * length * pm.cos(ang + da)
            hy = ty + 0.35 * length * pm.sin(ang + da)
            lines.append(([(tx, ty), (hx, hy)], width))
    image = np.where(pm.draw_polylines(image.shape, lines) > 0, np.uint8(255), image)
    size = 0.08 * min(h, w)
    return _draw_glyph(image, str(rng.choice(["A", "B", "C"])), 0.04 * w, 0.04 * h, size, 255)


# --- CheXpert-style ------------------------------------------------------------------------

_CHEX_ROOT = "CheXpert-v1.0-small"
_PATHOLOGIES = CHEXPERT_CATEGORIES[1:]
# shares of frontal training studies: single-positive quotas, multi-positive, uncertain-only
_SHARE_NO_FINDING = 0.31
_SHARE_EACH_OTHER = 0.037
_SHARE_MULTI = 0.12
_SHARE_UNCERTAIN = 0.06


def _label_profiles(rng: pm.Rng, n: int, valid: bool) -> list[tuple[str, list[str]]]:
    """Quota list of (kind, positive categories) for ``n`` frontal studies, shuffled."""
    profiles: list[tuple[str, list[str]]] = []
    profiles += [("single", ["No Finding"])] * int(round(_SHARE_NO_FINDING * n))
    for cat in _PATHOLOGIES:
        profiles += [("single", [cat])] * int(round(_SHARE_EACH_OTHER * n))
    for _ in range(int(round(_SHARE_MULTI * n))):
        k = int(rng.integers(2, 4))
        profiles.append(("multi", sorted(rng.choice(_PATHOLOGIES, size=k, replace=False).tolist(),
                                         key=CHEXPERT_CATEGORIES.index)))
    if not valid:
        profiles += [("uncertain", [])] * int(round(_SHARE_UNCERTAIN * n))
    while len(profiles) < n:
        profiles.append(_random_profile(rng, valid))
    profiles = profiles[:n]
    return [profiles[i] for i in rng.permutation(n)]


def _random_profile(rng: pm.Rng, valid: bool) -> tuple[str, list[str]]:
    r = rng.random()
    if r < 0.35:
        return ("single", ["No Finding"])
    if r < 0.8 or valid:
        return ("single", [str(rng.choice(_PATHOLOGIES))])
    if r < 0.92:
        return ("multi", sorted(rng.choice(_PATHOLOGIES, size=2, replace=False).tolist(), key=CHEXPERT_CATEGORIES.index))
    return ("uncertain", [])


def _label_values(rng: pm.Rng, kind: str, positives: list[str], valid: bool) -> dict[str, str]:
    """Label cells as upstream writes them: "1.0", "0.0", "-1.0" or "" (not mentioned)."""
    values = {}
    for cat in CHEXPERT_CATEGORIES:
        if cat in positives:
            values[cat] = "1.0"
        elif valid:
            values[cat] = "0.0"
        elif cat == "No Finding":
            values[cat] = ""
        else:
            r = rng.random()
            # "No Finding" rows carry no uncertain pathology (as upstream's labeler)
            may_be_uncertain = positives != ["No Finding"]
            values[cat] = "0.0" if r < 0.15 else ("-1.0" if r < 0.18 and may_be_uncertain else "")
    if kind == "uncertain":
        for cat in rng.choice(_PATHOLOGIES, size=int(rng.integers(1, 3)), replace=False):
            values[str(cat)] = "-1.0"
    return values


def plan_chexpert(cfg: dict | None = None, seed: int = 0) -> list[dict]:
    """The images :func:`generate_chexpert` writes, without rendering anything (fast).

    One dict per image, in file order: ``split`` (train/valid), ``Path``, ``Sex``, ``Age``,
    ``Frontal/Lateral``, ``AP/PA``, ``labels`` (category -> "1.0"/"0.0"/"-1.0"/""),
    ``drawn`` (the findings rendered: the positives and about half of the uncertain ones),
    ``severity`` (0 when nothing is drawn) and ``index`` (the image's RNG stream).
    """
    cfg = _merge_cfg(DEFAULT_CHEXPERT_CFG, cfg, "chexpert")
    rng = pm.Rng(np.random.SeedSequence([int(seed), 2000]))
    lo_sev, hi_sev = cfg["severity"]
    plan: list[dict] = []
    for split in ("train", "valid"):
        valid = split == "valid"
        n_pat = cfg[f"{split}_patients"]
        first = 1 if split == "train" else max(64541, cfg["train_patients"] + 1)
        # studies: each frontal image opens a study; a lateral right after a frontal joins it
        studies: list[tuple[int, int, list[bool]]] = []  # (patient number, study number, [lateral?...])
        any_lateral = False
        for k in range(n_pat):
            n_img = int(rng.integers(cfg["images_per_patient"][0], cfg["images_per_patient"][1] + 1))
            views = [bool(rng.random() < cfg["lateral_fraction"]) for _ in range(n_img)]
            any_lateral |= any(views)
            s = 0
            for lat in views:
                if lat and studies and studies[-1][0] == first + k and studies[-1][2] == [False]:
                    studies[-1][2].append(True)
                    continue
                s += 1
                studies.append((first + k, s, [lat]))
        if not any_lateral and studies and cfg["lateral_fraction"] > 0:
            studies[-1][2].append(True)
        frontal_studies = [i for i, st in enumerate(studies) if not st[2][0]]
        profile_of = dict(zip(frontal_studies, _label_profiles(rng, len(frontal_studies), valid)))
        patient_info: dict[int, tuple[str, int]] = {}
        for i, (pnum, snum, views) in enumerate(studies):
            kind, positives = profile_of.get(i) or _random_profile(rng, valid)
            values = _label_values(rng, kind, positives, valid)
            if pnum not in patient_info:
                sex = str(rng.choice(["Male", "Female", "Unknown"], p=[0.56, 0.43, 0.01]))
                patient_info[pnum] = (sex, int(rng.integers(18, 91)))
            sex, age = patient_info[pnum]
            sev = _severity(rng, lo_sev, hi_sev)
            positive = [c for c in _PATHOLOGIES if values[c] == "1.0"]
            uncertain = [c for c in _PATHOLOGIES if values[c] == "-1.0"]
            drawn = positive + [c for c in uncertain if rng.random() < 0.5]
            if drawn and not positive:
                sev *= 0.5  # uncertain findings only: drawn faintly
            ap = str(rng.choice(["AP", "PA"], p=[0.7, 0.3]))
            for j, lat in enumerate(views):
                name = f"view{j + 1}_{'lateral' if lat else 'frontal'}.jpg"
                plan.append({
                    "split": split, "Path": f"{_CHEX_ROOT}/{split}/patient{pnum:05d}/study{snum}/{name}",
                    "Sex": sex, "Age": age, "Frontal/Lateral": "Lateral" if lat else "Frontal",
                    "AP/PA": "" if lat else ap, "labels": values, "drawn": drawn,
                    "severity": sev if drawn else 0.0, "index": len(plan),
                })
    return plan


def _chexpert_summary(plan: list[dict], split: str) -> dict:
    counts: Counter = Counter()
    single: Counter = Counter()
    for im in plan:
        if im["split"] != split:
            continue
        lat = im["Frontal/Lateral"] == "Lateral"
        counts["lateral" if lat else "frontal"] += 1
        pos = [c for c in CHEXPERT_CATEGORIES if im["labels"][c] == "1.0"]
        if not lat:
            if len(pos) == 1:
                single[pos[0]] += 1
            counts["multi_positive_frontal" if len(pos) > 1 else
                   "no_positive_frontal" if not pos else "single_positive_frontal"] += 1
    return {"rows": counts["frontal"] + counts["lateral"], **dict(sorted(counts.items())),
            "single_positive_frontal_by_category": {c: int(single[c]) for c in CHEXPERT_CATEGORIES}}


def generate_chexpert(root: Path, cfg: dict | None = None, seed: int = 0) -> dict:
    """Write a CheXpert-v1.0-small lookalike under ``root/CheXpert-v1.0-small``; return a summary.

    The images and labels are those of :func:`plan_chexpert` with the same arguments.
    """
    cfg = _merge_cfg(DEFAULT_CHEXPERT_CFG, cfg, "chexpert")
    root = Path(root)
    base = root / _CHEX_ROOT
    style = {"kind": "chexpert", "shift": float(cfg["style_shift"])}
    plan = plan_chexpert(cfg, seed)
    rows: dict[str, list[list]] = {"train": [], "valid": []}
    truth_rows = []
    for im in plan:
        irng = _image_rng(seed, 2, im["index"])
        height = int(irng.integers(cfg["height_range"][0], cfg["height_range"][1] + 1))
        lateral = im["Frontal/Lateral"] == "Lateral"
        rad = _render(irng, height, cfg["width"], im["drawn"], im["severity"], "L" if lateral else im["AP/PA"], style)
        rel = im["Path"]
        _save_image(rad.image, root / rel, "JPEG", "L", None)
        stem = rel[len(_CHEX_ROOT) + 1:-4]
        lung_rel = f"{_CHEX_ROOT}/synthetic-masks/{stem}_lung.png"
        lesion_rel = f"{_CHEX_ROOT}/synthetic-masks/{stem}_lesion.png"
        _save_mask(rad.lung_mask, root / lung_rel)
        _save_mask(rad.lesion_mask, root / lesion_rel)
        rows[im["split"]].append([rel, im["Sex"], im["Age"], im["Frontal/Lateral"], im["AP/PA"],
                                  *[im["labels"][c] for c in CHEXPERT_CATEGORIES]])
        truth_rows.append([rel, im["split"], im["Frontal/Lateral"], ";".join(im["drawn"]) or "No Finding",
                           f"{im['severity']:.4f}", lung_rel, lesion_rel, int(rad.lesion_mask.sum())])
    for split in ("train", "valid"):
        _write_rows(base / f"{split}.csv", CHEXPERT_COLUMNS, rows[split])
    _write_rows(base / "synthetic_truth.csv",
                ["Path", "split", "Frontal/Lateral", "findings", "severity", "lung_mask", "lesion_mask",
                 "lesion_pixels"], truth_rows)
    summary: dict = {"generator": "deepcovid.synthetic.generate_chexpert", "seed": int(seed), "cfg": cfg,
                     "images": len(plan)}
    for split in ("train", "valid"):
        summary[split] = {"patients": cfg[f"{split}_patients"], **_chexpert_summary(plan, split)}
    return summary
