"""Synthetic chest images with lung and lesion masks: frontal and lateral radiographs, CT slices.

An image is drawn on a GRID x GRID canvas in anatomy coordinates (U to the image's right, V
down, about -1..1) under a random rotation, scale and shift: body, elliptic lungs, heart,
mediastinum, ribs and smooth-noise texture. Findings are Gaussian blobs or fields placed in
lung coordinates (height 0 top .. 1 base, depth 0 inner .. 1 outer edge) and are also written
to the lesion mask; normal variants are drawn unmarked. Then blur, noise and a random tone,
and a resize to the file's size. Only exactly rounded operations (deepcovid.portable) decide
a pixel, so the bytes are the same on every CPU. ``style_shift`` changes the tone of one
source on purpose (a shortcut to audit) without drawing random numbers: the same seed gives
the same anatomy, findings and masks with or without it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from deepcovid import portable as pm
from deepcovid.errors import InputError
from deepcovid.labels import CHEXPERT_CATEGORIES

GRID = 256
FINDINGS = ("COVID-19", "ARDS", "SARS", "Pneumocystis", "Streptococcus", "Pneumonia", *CHEXPERT_CATEGORIES)
VIEWS = {"PA": "frontal", "AP": "frontal", "AP Supine": "frontal", "L": "lateral", "Axial": "ct"}
_GLYPHS = {
    "R": [[(0, 1), (0, 0), (0.6, 0), (0.8, 0.2), (0.6, 0.5), (0, 0.5)], [(0.3, 0.5), (0.8, 1)]],
    "L": [[(0, 0), (0, 1), (0.7, 1)]],
}


class Radiograph(NamedTuple):
    image: np.ndarray  # uint8 H x W
    lung_mask: np.ndarray  # bool H x W: the lung fields as drawn
    lesion_mask: np.ndarray  # bool H x W: where findings were drawn (empty when normal)


def _step(e0: float, e1: float, x):
    """Smoothstep from 0 at e0 to 1 at e1 (falling when e0 > e1)."""
    t = np.clip((x - e0) * (1.0 / (e1 - e0)), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _ell(U, V, cx, cy, rx, ry):
    """((U - cx) / rx)^2 + ((V - cy) / ry)^2: below 1 inside the ellipse."""
    a, b = (U - cx) / rx, (V - cy) / ry
    return a * a + b * b


def _noise(rng: pm.Rng, n: int, cells: int) -> np.ndarray:
    """Smooth unit-variance random field with about ``cells`` features across n x n."""
    return pm.resample(rng.standard_normal((cells, cells), dtype=np.float32), n, n, "bicubic")


class _Canvas:
    """Coordinates of one image, its lungs, and the findings' density and lesion mask."""

    def __init__(self, rng: pm.Rng, n: int):
        a, self.scale = rng.uniform(-0.09, 0.09), rng.uniform(0.88, 1.04)
        self.tx, self.ty = rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.06)
        self.size, self.ca, self.sa = n, pm.cos(a), pm.sin(a)
        c = ((np.arange(n) + 0.5) * (2.0 / n) - 1.0).astype(np.float32)
        x, y = c[None, :] - np.float32(self.tx), c[:, None] - np.float32(self.ty)
        self.u_grid = (self.ca * x + self.sa * y) / self.scale
        self.v_grid = (self.ca * y - self.sa * x) / self.scale
        self.density = np.zeros((n, n), np.float32)
        self.lesion = np.zeros((n, n), bool)

    def pixel(self, u: float, v: float) -> tuple[float, float]:
        x = self.tx + self.scale * (self.ca * u - self.sa * v)
        y = self.ty + self.scale * (self.sa * u + self.ca * v)
        return (x + 1) / 2 * self.size - 0.5, (y + 1) / 2 * self.size - 0.5

    def set_lungs(self, lungs: list[tuple], cut) -> None:
        """Lung fields: (cx, cy, rx, ry, outward direction, flare) ellipses, ``flare`` times wider
        at the base, multiplied by the field ``cut`` (no heart, diaphragm...)."""
        self.lungs = lungs
        self.ellipses = [
            _ell(self.u_grid, self.v_grid, cx, cy, rx * (1 + f * (self.v_grid - cy) / ry), ry)
            for cx, cy, rx, ry, _, f in lungs
        ]
        self.fields = [_step(1.08, 0.92, e) * cut for e in self.ellipses]
        self.lung = np.maximum(self.fields[0], self.fields[-1])

    def point(self, k: int, h: float, q: float) -> tuple[float, float]:
        """Lung k's point at height h (0 top .. 1 base) and depth q (0 inner .. 1 outer edge)."""
        cx, cy, rx, ry, out, f = self.lungs[k]
        t = 0.85 * (2 * h - 1)
        return cx + out * (2 * q - 1) * 0.85 * rx * (1 + f * t) * math.sqrt(1 - t * t), cy + ry * t

    def blob(self, u, v, su, sv, amp, angle=0.0, texture=0.4, mark=0.3, sharp=False, confine=True):
        """Add an anisotropic Gaussian (or a soft disk, ``sharp``) of brightness ``amp``."""
        col, row = self.pixel(u, v)
        r = 3.0 * max(su, sv) * self.scale * self.size / 2 + 2
        win = (
            slice(max(int(row - r), 0), max(int(row + r) + 1, 0)),
            slice(max(int(col - r), 0), max(int(col + r) + 1, 0)),
        )
        du, dv = self.u_grid[win] - np.float32(u), self.v_grid[win] - np.float32(v)
        if du.size == 0:
            return
        ca, sa = pm.cos(angle), pm.sin(angle)
        a, b = (ca * du + sa * dv) / su, (ca * dv - sa * du) / sv
        g = _step(1.3, 0.7, a * a + b * b) if sharp else pm.exp(-0.5 * (a * a + b * b))
        if confine:
            g = g * self.lung[win]
        self.density[win] += amp * g * ((1 - texture) + texture * self.texture[win])
        if mark:
            self.lesion[win] |= g > mark

    def field(self, values: np.ndarray, mark: np.ndarray) -> None:
        self.density += values.astype(np.float32)
        self.lesion |= mark


def _frontal(cv: _Canvas, rng: pm.Rng, fs: set, sev: float, view: str) -> np.ndarray:
    U, V, u = cv.u_grid, cv.v_grid, rng.uniform
    X = np.abs(U)
    bw, cy, ry, depth = u(0.84, 0.95), u(-0.06, 0.0), u(0.56, 0.62), u(0.25, 0.36)
    dome = cy + (0.66 - 0.05 * (view == "AP Supine")) * ry + 0.12 * np.clip((X - 0.2) * 2, 0, 1)
    k = 1.0 + 0.06 * (view != "PA") + ("cardiomegaly" in fs) * (0.28 + 0.25 * sev)
    hx, hy = u(0.06, 0.11), u(0.27, 0.33) - 0.04 * (view == "AP Supine")
    cv.heart = _step(1.1, 0.9, _ell(U, V, hx, hy, u(0.29, 0.33) * k, u(0.2, 0.24) * math.sqrt(k))) * _step(
        0.06, -0.04, V - cy - 0.66 * ry - 0.12
    )
    mw = u(0.1, 0.13) + ("enlarged cardiomediastinum" in fs) * (0.05 + 0.07 * sev)
    cv.mediast = _step(mw + 0.02, mw - 0.02, X) * _step(-0.8, -0.7, V) * _step(0.15, 0.05, V)
    cv.set_lungs(
        [(o * u(0.37, 0.42), cy, u(0.24, 0.28), ry, o, 0.3) for o in (-1, 1)],
        (1 - cv.heart) * (1 - cv.mediast) * _step(0.02, -0.02, V - dome),
    )  # diaphragm: lower laterally
    body = _step(0.03, -0.03, X - bw + 0.55 * bw * _step(-0.75, -1.05, V))
    img = 0.05 + 0.42 * body + 0.08 * _step(0.3, 0.9, V) * body + 0.1 * _step(0.12, 0.08, X) * body
    img = img - depth * cv.lung * (1 - 0.3 * _step(-0.3, -0.8, V)) + u(0.0, 0.05) * cv.lung * _step(-0.2, 0.5, V)
    sp, ph, rk = u(0.11, 0.13), u(0.0, 1.0), u(0.5, 0.68)
    y = (
        V + 0.45 * rk * X - 1.6 * rk * _ell(np.clip(X - 0.5, 0, None), 0, 0, 0, 1, 1)
    )  # posterior ribs, rising laterally
    phi = y / sp - ph
    thorax = body * _step(0.78, 0.7, X) * _step(-0.92, -0.82, V) * _step(0.1, -0.05, V - dome) * (0.5 + 0.5 * cv.lung)
    img = img + 0.055 * _step(0.22, 0.15, np.abs(phi - np.rint(phi))) * thorax
    dc = np.abs(V + 0.62 + 0.2 * (X - 0.06))  # clavicles
    img = img + 0.09 * _step(0.03, 0.018, dc) * _step(0.04, 0.1, X) * _step(0.7, 0.6, X) * body
    hila = pm.exp(-2.2 * _ell(X, V, 0.17, -0.02, 1, 1))
    img = img + cv.lung * hila * (0.05 + 0.06 * np.clip(_noise(rng, cv.size, 40), 0, None))  # vessels
    return img


def _lateral(cv: _Canvas, rng: pm.Rng, fs: set, sev: float) -> np.ndarray:
    U, V, u = cv.u_grid, cv.v_grid, rng.uniform
    body = _step(1.04, 0.96, _ell(U, V, 0, 0.15, u(0.78, 0.88), u(1.05, 1.2)))
    k = 1.0 + ({"cardiomegaly", "enlarged cardiomediastinum"} & fs != set()) * 0.3 * sev
    cv.heart = _step(1.1, 0.9, _ell(U, V, u(-0.32, -0.22), u(0.24, 0.32), 0.28 * k, 0.26 * math.sqrt(k)))
    cv.mediast = cv.heart
    dome = 0.42 + 0.18 * _step(-0.2, 0.5, U) + u(-0.04, 0.04)
    lung = (u(-0.02, 0.08), u(-0.08, 0.0), u(0.52, 0.6), u(0.58, 0.68), 1, 0.0)  # posterior: +U
    cv.set_lungs([lung, lung], (1 - 0.8 * cv.heart) * _step(0.02, -0.02, V - dome))
    img = 0.05 + 0.45 * body + 0.08 * _step(0.35, 0.9, V) * body - u(0.22, 0.3) * cv.lung + 0.04 * cv.heart
    spine = _step(0.1, 0.07, np.abs(U - 0.55 - 0.08 * V)) * (
        0.5 + 0.5 * _step(0.25, 0.35, np.abs((V / 0.12) % 1 - 0.5))
    )
    return img + 0.1 * spine * body + 0.05 * cv.lung * np.clip(_noise(rng, cv.size, 30), 0, None)


def _ct(cv: _Canvas, rng: pm.Rng, fs: set, sev: float) -> np.ndarray:
    U, V, u = cv.u_grid, cv.v_grid, rng.uniform
    bw, bh = u(0.78, 0.88), u(0.55, 0.65)
    e = _ell(U, V, 0, 0.02, bw, bh)
    k = 1.0 + ({"cardiomegaly", "enlarged cardiomediastinum"} & fs != set()) * 0.3 * sev
    cv.heart = _step(1.1, 0.9, _ell(U, V, 0.05, -0.12, 0.24 * k, 0.2 * k))
    cv.mediast = cv.heart
    cv.set_lungs([(o * 0.36, 0.03, u(0.27, 0.31), u(0.38, 0.44), o, 0.0) for o in (-1, 1)], 1 - cv.heart)
    img = 0.02 + _step(1.03, 0.97, e) * (0.55 - 0.12 * _step(0.75, 0.85, e)) - 0.5 * cv.lung
    img = img + 0.35 * _step(0.012, 0.004, np.abs(V - 0.1 - bh - 0.1 * U * U))  # table
    spine = pm.hypot(U, V - 0.4)
    img = img + 0.35 * _step(0.11, 0.09, spine) - 0.15 * _step(0.07, 0.05, spine)
    return img + 0.08 * cv.lung * np.clip(_noise(rng, cv.size, 30) - 0.5, 0, None)  # vessels


def _blobs(cv, rng, n, both, h, q, size, amp, texture, elong=(0.8, 1.4), jitter=0.0):
    """n blobs in one lung, or in both (at least one each) when ``both``; h, q: draws of height
    and depth (see point), size: (least, random extra), jitter: a cluster around one point."""
    side = int(rng.integers(0, 2))
    sides = ([0, 1] + [int(rng.integers(0, 2)) for _ in range(n - 2)]) if both and n >= 2 else [side] * n
    u0, v0 = cv.point(side, h(), q())
    for k in sides:
        u, v = (u0 + rng.normal(0, jitter), v0 + rng.normal(0, jitter)) if jitter else cv.point(k, h(), q())
        s = size[0] + rng.uniform(0, size[1])
        cv.blob(
            u, v, s, s * rng.uniform(*elong), amp * rng.uniform(0.7, 1.1), angle=rng.uniform(-1, 1), texture=texture
        )


def _findings(cv: _Canvas, rng: pm.Rng, keys: list[str], sev: float, depth: float = 0.3) -> None:
    U, V, un, beta = cv.u_grid, cv.v_grid, rng.uniform, rng.beta
    for f in keys:
        if f == "covid-19":  # bilateral, peripheral, lower-zone ground glass
            _blobs(
                cv,
                rng,
                3 + round(7 * sev) + int(rng.integers(0, 3)),
                True,
                lambda: beta(2.8, 1.3),
                lambda: 0.62 + 0.38 * beta(2.2, 1.2),
                (0.05 + 0.06 * sev, 0.035),
                0.02 + 0.09 * sev,
                0.5,
                (1.1, 1.7),
            )
        elif f == "sars":  # multifocal, more central and less basal: a hard confounder
            _blobs(
                cv,
                rng,
                3 + round(6 * sev) + int(rng.integers(0, 3)),
                rng.random() < 0.6,
                lambda: un(0.15, 0.95),
                lambda: un(0.2, 0.85),
                (0.05 + 0.06 * sev, 0.035),
                0.035 + 0.1 * sev,
                0.45,
            )
        elif f in ("pneumonia", "streptococcus", "consolidation"):  # one dense lobar cluster
            _blobs(
                cv,
                rng,
                int(rng.integers(3, 6)),
                False,
                lambda: un(0.1, 0.95),
                lambda: un(0.25, 0.85),
                (0.05 + 0.04 * sev, 0.03),
                0.08 + 0.14 * sev,
                0.25,
                jitter=0.05,
            )
        elif f == "lung opacity":
            _blobs(
                cv,
                rng,
                int(rng.integers(1, 5)),
                rng.random() < 0.5,
                lambda: un(0.1, 0.95),
                lambda: un(0.15, 0.95),
                (0.05 + 0.05 * sev, 0.04),
                0.05 + 0.11 * sev,
                0.4,
            )
        elif f == "pneumocystis":  # bilateral perihilar haze
            _blobs(
                cv,
                rng,
                6,
                True,
                lambda: un(0.25, 0.75),
                lambda: un(0.0, 0.45),
                (0.1 + 0.06 * sev, 0.0),
                0.04 + 0.08 * sev,
                0.6,
            )
        elif f == "edema":  # central bat-wing haze
            _blobs(
                cv,
                rng,
                2,
                True,
                lambda: un(0.4, 0.6),
                lambda: un(0.05, 0.25),
                (0.15 + 0.04 * sev, 0.0),
                0.08 + 0.12 * sev,
                0.3,
                (1.2, 1.4),
            )
        elif f == "atelectasis":  # plate-like linear density at a base
            for _ in range(int(rng.integers(1, 3))):
                u, v = cv.point(int(rng.integers(0, 2)), un(0.6, 0.92), un(0.3, 0.75))
                cv.blob(u, v, 0.12 + 0.06 * sev, 0.014 + 0.014 * sev, 0.12 + 0.12 * sev, un(-0.35, 0.35), 0.15)
        elif f == "lung lesion":  # a nodule
            u, v = cv.point(int(rng.integers(0, 2)), un(0.1, 0.9), un(0.2, 0.85))
            r = 0.025 + 0.04 * sev
            cv.blob(u, v, r, r * un(0.85, 1.15), 0.14 + 0.12 * sev, texture=0.1, sharp=True, mark=0.5)
        elif f == "ards":  # diffuse bilateral, denser in the dependent lung
            cv.field(
                (0.1 + 0.13 * sev) * cv.lung * (0.65 + 0.35 * cv.texture) * (0.7 + 0.3 * _step(-0.6, 0.4, V)),
                cv.lung > 0.5,
            )
        elif f in ("pleural effusion", "pneumothorax", "pleural other"):
            k = int(rng.integers(0, 2))
            cx, cy, rx, ry, out, _ = cv.lungs[k]
            lung, q = cv.fields[k], np.clip((U - cx) * (out / rx), 0, 1)  # q: 0 centre .. 1 outer edge
            if f == "pleural effusion":  # fluid at the base, meniscus rising laterally
                level = cy + ry * (0.75 - (0.2 + 0.6 * sev) * un(0.85, 1.1)) - 0.25 * ry * q * q
                fluid = _step(-0.03, 0.04, V - level) * lung
                cv.field(0.95 * depth * fluid, fluid > 0.5)
            elif f == "pneumothorax":  # avascular air between the collapsed lung and the wall, edge line
                c = 1 - (0.12 + 0.3 * sev)
                upper = lung * _step(0.3, 0.0, (V - cy) / ry)
                space = _step(c * c - 0.02, c * c + 0.02, cv.ellipses[k]) * upper
                edge = _step(0.03, 0.0, np.abs(cv.ellipses[k] - c * c)) * upper
                cv.field(0.08 * edge - (0.07 + 0.04 * cv.texture) * space, space > 0.5)
            else:  # pleural thickening along a stretch of the outer wall
                v0 = un(-0.7, 0.0)
                band = (
                    _step(0.72, 0.82, cv.ellipses[k])
                    * lung
                    * _step(v0, v0 + 0.05, (V - cy) / ry)
                    * _step(v0 + 0.9, v0 + 0.8, (V - cy) / ry)
                    * (q > 0.3)
                )
                cv.field(0.7 * depth * band, band > 0.5)
        elif f in ("cardiomegaly", "enlarged cardiomediastinum"):
            cv.lesion |= (cv.heart if f == "cardiomegaly" else cv.mediast) > 0.5
        elif f == "fracture":  # callus at a rib of the outer chest wall
            u, v = cv.point(int(rng.integers(0, 2)), un(0.15, 0.6), 1.12)
            cv.blob(u, v, 0.03, 0.022, 0.06 + 0.08 * sev, un(-1, 1), 0.0, 0.2, sharp=True, confine=False)
        elif f == "support devices":  # tubes, a line, ECG leads
            p, o, n = cv.pixel, 1 if rng.random() < 0.5 else -1, cv.size
            lines = [
                ([p(0.01, -1.1), p(0.03, -0.48)], round(0.018 * n)),  # endotracheal tube, central line
                ([p(0.75 * o * (1 - t), -0.72 + 0.06 * t + 0.4 * t * t) for t in np.linspace(0, 1, 8)], 3),
            ]
            lines += [([p(un(-0.8, 0.8), un(-0.7, 0.6))], round(0.04 * n)) for _ in range(int(rng.integers(0, 4)))]
            dev = pm.draw_polylines((n, n), lines)
            cv.field(0.3 * dev, dev > 0.5)


def _normalise(findings: Sequence[str]) -> list[str]:
    known = {f.lower() for f in FINDINGS} | {"normal", ""}
    out = []
    for part in (p.strip() for item in findings for p in str(item).split(",")):
        if part.lower() not in known:
            raise InputError(f"unknown finding {part!r}; known: {', '.join(FINDINGS)}")
        if part.lower() not in ("", "no finding", "normal") and part.lower() not in out:
            out.append(part.lower())
    return out


def _tone(img: np.ndarray, rng: pm.Rng, n: int, style: tuple[str, float]) -> np.ndarray:
    """Blur, vignetting, noise, a random tone; then the source's ``style_shift`` (no draws)."""
    img = pm.gaussian_filter(img, rng.uniform(0.5, 0.9))
    c = ((np.arange(n) + 0.5) * (2.0 / n) - 1.0).astype(np.float32)
    img = img * (1 - rng.uniform(0.03, 0.15) * (c[None, :] * c[None, :] + c[:, None] * c[:, None]))
    img = img + 0.02 * _noise(rng, n, 4) + rng.uniform(0.008, 0.022) * rng.standard_normal((n, n), np.float32)
    contrast, bright, gamma = rng.uniform(0.85, 1.2), rng.uniform(-0.05, 0.05), rng.uniform(0.8, 1.25)
    img = pm.power(np.clip((img - 0.4) * contrast + 0.4 + bright, 0, 1), gamma)
    kind, shift = style
    if shift > 0 and kind == "cohen":  # brighter, more contrast, blurrier
        img = (pm.gaussian_filter(img, 1.2 * shift) - 0.5) * (1 + 0.3 * shift) + 0.5 + 0.08 * shift
    elif shift > 0:  # darker, flatter
        img = (img - 0.5) * (1 - 0.25 * shift) + 0.5 - 0.08 * shift
    return np.clip(img, 0, 1).astype(np.float32)


def render(
    rng: pm.Rng,
    height: int,
    width: int,
    findings: Sequence[str],
    severity: float,
    view: str = "PA",
    style: tuple[str, float] = ("", 0.0),
) -> Radiograph:
    """One image of ``height`` x ``width`` with its masks.

    ``findings``: names of FINDINGS, any case ("COVID-19, ARDS" is split; "", "No Finding" and
    "normal" draw nothing); ``severity`` in [0, 1] scales their extent and contrast; ``view``:
    a key of VIEWS; ``style``: (source kind "cohen" or "chexpert", style_shift).
    """
    if view not in VIEWS:
        raise InputError(f"unknown view {view!r}; known: {', '.join(VIEWS)}")
    keys, sev, n = _normalise(findings), float(np.clip(severity, 0.0, 1.0)), GRID
    cv = _Canvas(rng, n)
    kind, fs = VIEWS[view], set(keys)
    img = (
        _frontal(cv, rng, fs, sev, view)
        if kind == "frontal"
        else _lateral(cv, rng, fs, sev)
        if kind == "lateral"
        else _ct(cv, rng, fs, sev)
    )
    cv.texture = np.clip(0.5 + 0.5 * _noise(rng, n, 22), 0, 1)
    for _ in range(int(rng.integers(0, 4))):  # normal variants, never marked
        u, v = cv.point(int(rng.integers(0, 2)), rng.uniform(0.1, 0.95), rng.uniform(0.1, 0.95))
        s = rng.uniform(0.04, 0.08)
        cv.blob(u, v, s, s * rng.uniform(0.8, 1.5), rng.uniform(0.01, 0.035), rng.uniform(-1, 1), 0.5, mark=0)
    _findings(cv, rng, keys, sev)
    out = pm.resample(_tone(img + cv.density, rng, n, style), width, height, "bicubic")
    image = np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
    if kind != "ct" and rng.random() < 0.25:  # a burned-in laterality letter, never in a mask
        size, letter = rng.uniform(0.04, 0.07) * min(height, width), str(rng.choice(["R", "L"]))
        x = rng.uniform(0.04, 0.12) * width if rng.random() < 0.5 else width - size - rng.uniform(0.04, 0.12) * width
        y, w = rng.uniform(0.03, 0.1) * height, max(1, int(round(size / 7)))
        mark = pm.draw_polylines(
            image.shape, [([(x + a * size, y + b * size) for a, b in s], w) for s in _GLYPHS[letter]]
        )
        image = np.where(mark > 0, np.uint8(rng.integers(215, 256)), image)
    masks = [pm.resample(m.astype(np.float32), width, height, "bilinear") > 0.5 for m in (cv.lung > 0.5, cv.lesion)]
    return Radiograph(image, *masks)
