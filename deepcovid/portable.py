"""Exact-operation maths, filters, resampling and random draws: the same bits on every CPU.

NumPy, glibc and oneDNN dispatch ``exp``/``sin``/``power``/convolutions per instruction set, and
their last-place differences change PNG bytes. Everything here uses only IEEE-754 basic
operations (one ufunc or Python operator each, never fused) and integer arithmetic; accuracy
is checked in tests/test_portable.py, the byte identity in tests/test_cross_cpu.py."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import scipy.sparse

from deepcovid.errors import InputError

__all__ = [
    "exp",
    "log",
    "sin",
    "cos",
    "power",
    "hypot",
    "gaussian_filter",
    "resample",
    "resize_uint8",
    "resize_uint8_crops",
    "draw_polylines",
    "Rng",
]

# Cody-Waite split constants (fdlibm): the high parts have trailing zero bits, so k * HI is
# exact for the |k| that occur here.
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e00
_PIO2_HI = 1.57079632673412561417e00
_PIO2_MID = 6.07710050630396597660e-11
_PIO2_LO = 2.02226624879595063154e-21
_TWO_OVER_PI = 6.36619772367581382433e-01
_SQRT_HALF = 0.70710678118654752440


def _as_float64(x):
    """(array as float64, output dtype or None for a Python scalar)."""
    if np.isscalar(x) and not isinstance(x, np.ndarray):
        return np.asarray(float(x), dtype=np.float64), None
    a = np.asarray(x)
    out = a.dtype if a.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    return a.astype(np.float64), out


def _back(r: np.ndarray, dtype):
    if dtype is None:
        return float(r)
    return r.astype(dtype, copy=False)


def _horner(x: np.ndarray, coeffs: Sequence[float]) -> np.ndarray:
    """coeffs[0] + coeffs[1] x + ... evaluated as nested products (highest first)."""
    acc = np.full_like(x, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        acc = acc * x + c
    return acc


_EXP_COEFFS = [1.0 / math.factorial(i) for i in range(14)]  # |r| <= ln2/2: error < 1e-17
_SIN_COEFFS = [(-1.0) ** i / math.factorial(2 * i + 1) for i in range(9)]  # in r^2, times r
_COS_COEFFS = [(-1.0) ** i / math.factorial(2 * i) for i in range(10)]  # in r^2
_ATANH_COEFFS = [1.0 / (2 * i + 1) for i in range(12)]  # in s^2, times 2s; |s| <= 0.172


def exp(x):
    """e**x (float64 accuracy about 2 ulp); the dtype of ``x`` is kept, scalars give floats."""
    a, dtype = _as_float64(x)
    a = np.clip(a, -745.0, 709.0)
    k = np.rint(a * _INV_LN2)
    r = (a - k * _LN2_HI) - k * _LN2_LO
    return _back(np.ldexp(_horner(r, _EXP_COEFFS), k.astype(np.int64)), dtype)


def log(x):
    """Natural logarithm for x > 0 (x <= 0 gives nan / -inf as np.log)."""
    a, dtype = _as_float64(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        m, e = np.frexp(a)  # a = m * 2**e, 0.5 <= m < 1 (exact)
        small = m < _SQRT_HALF
        m = np.where(small, m * 2.0, m)
        e = (e - small.astype(e.dtype)).astype(np.float64)
        f = m - 1.0
        s = f / (2.0 + f)
        s2 = s * s
        lm = 2.0 * s * _horner(s2, _ATANH_COEFFS)
        r = e * _LN2_HI + (lm + e * _LN2_LO)
        r = np.where(a > 0, r, np.where(a == 0, -np.inf, np.nan))
        r = np.where(np.isinf(a) & (a > 0), np.inf, r)
    return _back(r, dtype)


def _reduce_pio2(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """r = a - k * pi/2 with |r| <= pi/4 (three-part Cody-Waite; |a| up to about 1e6)."""
    if np.any(np.abs(a) > 1e6):
        raise InputError("portable sin/cos: argument too large (|x| > 1e6)")
    k = np.rint(a * _TWO_OVER_PI)
    r = ((a - k * _PIO2_HI) - k * _PIO2_MID) - k * _PIO2_LO
    return r, k.astype(np.int64) & 3


def _sin_cos_reduced(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r2 = r * r
    return r * _horner(r2, _SIN_COEFFS), _horner(r2, _COS_COEFFS)


def sin(x):
    a, dtype = _as_float64(x)
    r, q = _reduce_pio2(a)
    s, c = _sin_cos_reduced(r)
    out = np.select([q == 0, q == 1, q == 2], [s, c, -s], -c)
    return _back(out, dtype)


def cos(x):
    a, dtype = _as_float64(x)
    r, q = _reduce_pio2(a)
    s, c = _sin_cos_reduced(r)
    out = np.select([q == 0, q == 1, q == 2], [c, -s, -c], s)
    return _back(out, dtype)


def power(x, y):
    """x ** y for x >= 0 (0 ** y = 0 for y > 0, 1 for y == 0); y a scalar or array."""
    a, dtype = _as_float64(x)
    yy = np.asarray(y, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = exp(log(np.where(a > 0, a, 1.0)) * yy)
    out = np.where(a > 0, out, np.where(yy == 0, 1.0, 0.0))
    if np.any(a < 0):
        raise InputError("portable power: negative base")
    return _back(np.asarray(out, np.float64), dtype)


def hypot(x, y):
    """sqrt(x*x + y*y) (no overflow protection: the values here are small)."""
    a, dtype = _as_float64(x)
    b = np.asarray(y, dtype=np.float64)
    return _back(np.sqrt(a * a + b * b), dtype)


# --------------------------------------------------------------------------- filtering


def gaussian_filter(img: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """Separable Gaussian blur of a 2-D array, edges extended ("nearest"), like
    ``scipy.ndimage.gaussian_filter(img, sigma, mode="nearest")`` (to ~1e-7), but summing
    the taps in a fixed order with exact operations. Returns the input's float dtype."""
    out_dtype = img.dtype if img.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = exp(-0.5 / (float(sigma) * float(sigma)) * (x * x))
    w = w / math.fsum(w.tolist())
    a = img.astype(np.float64)
    for axis in (0, 1):
        n = a.shape[axis]
        acc = np.zeros_like(a)
        for j, wj in enumerate(w.tolist()):
            idx = np.clip(np.arange(n) + (j - radius), 0, n - 1)
            acc = acc + wj * np.take(a, idx, axis=axis)
        a = acc
    return a.astype(out_dtype)


def _kernel(name: str):
    if name == "bicubic":  # Keys, a = -0.5 (Pillow's and Catmull-Rom's)

        def f(x):
            x = np.abs(x)
            near = ((1.5 * x - 2.5) * x) * x + 1.0
            far = ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0
            return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))

        return f, 2.0
    if name == "bilinear":
        return (lambda x: np.maximum(0.0, 1.0 - np.abs(x))), 1.0
    raise InputError(f"unknown resampling kernel {name!r}; valid: bicubic, bilinear")


def _taps(n_in: int, n_out: int, kernel: str) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and normalised weights (n_out, k) of an antialiased resampling from
    n_in to n_out samples (pixel centres aligned; taps outside the image are dropped and
    the rest renormalised, as Pillow does)."""
    f, support = _kernel(kernel)
    scale = n_in / n_out
    fscale = max(scale, 1.0)
    reach = support * fscale
    k = int(math.ceil(reach)) * 2 + 2
    centre = (np.arange(n_out, dtype=np.float64) + 0.5) * scale
    first = np.floor(centre - reach).astype(np.int64)
    idx = first[:, None] + np.arange(k)[None, :]
    w = f((idx + 0.5 - centre[:, None]) / fscale)
    w = np.where((idx >= 0) & (idx < n_in), w, 0.0)
    total = np.zeros(n_out)
    for j in range(k):  # fixed summation order
        total = total + w[:, j]
    w = w / total[:, None]
    return np.clip(idx, 0, n_in - 1), w


def resample(arr: np.ndarray, width: int, height: int, kernel: str = "bicubic") -> np.ndarray:
    """Resize a 2-D float array to ``height`` x ``width`` (antialiased when shrinking).
    The role of Pillow's mode-F ``resize``; float32 in, float32 out."""
    out_dtype = arr.dtype if arr.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    a = arr.astype(np.float64)
    for axis, n_out in ((1, width), (0, height)):
        idx, w = _taps(a.shape[axis], n_out, kernel)
        acc = None
        for j in range(idx.shape[1]):
            shape = [1, 1]
            shape[axis] = n_out
            term = np.take(a, idx[:, j], axis=axis) * w[:, j].reshape(shape)
            acc = term if acc is None else acc + term
        a = acc
    return a.astype(out_dtype)


_PREC = 12  # fixed-point bits of the integer resampling weights


def _int_taps(n_in: int, n_out: int, kernel: str) -> tuple[np.ndarray, np.ndarray]:
    idx, w = _taps(n_in, n_out, kernel)
    wi = np.rint(w * (1 << _PREC)).astype(np.int64)
    # make every row sum to exactly 1.0 in fixed point (flat areas stay exactly flat)
    fix = (1 << _PREC) - wi.sum(axis=1)
    wi[np.arange(n_out), np.argmax(w, axis=1)] += fix
    return idx, wi


@functools.lru_cache(maxsize=256)
def _int_matrix(n_in: int, n_out: int, kernel: str) -> scipy.sparse.csr_array:
    """``(n_out, n_in)`` sparse matrix of the fixed-point taps (repeated taps of the clipped edge
    summed): row ``i`` holds the integer weights output sample ``i`` takes from the input. Stored
    as float64 (twice as fast as int64 in SciPy's products) holding integers: see :func:`resize_uint8`."""
    idx, wi = _int_taps(n_in, n_out, kernel)
    rows = np.repeat(np.arange(n_out), idx.shape[1])
    m = scipy.sparse.coo_array((wi.ravel().astype(np.float64), (rows, idx.ravel())), shape=(n_out, n_in)).tocsr()
    m.sum_duplicates()
    return m


def _finish(acc: np.ndarray) -> np.ndarray:
    """uint8 of the integer sums of both passes (weights ``2 ** _PREC`` each): one rounding."""
    half = 1 << (2 * _PREC - 1)
    return np.clip((acc.astype(np.int64) + half) >> (2 * _PREC), 0, 255).astype(np.uint8)


def resize_uint8(img: np.ndarray, width: int, height: int, kernel: str = "bicubic") -> np.ndarray:
    """Resize a uint8 image (H x W or H x W x C), antialiased, in integer arithmetic:
    weights in 12-bit fixed point, integer sums (exact in any order), one rounding at
    the end. The role of Pillow's 8-bit ``resize``, with no platform-dependent step.

    Each pass is a product with a sparse matrix of the taps (:func:`_int_matrix`), in float64 of
    integers: every product and partial sum is an integer below 2 ** 35 (255 x 4096 x 1.25, times
    4096 x 1.25 again), exactly representable, so any order of the sums or a fused multiply-add
    gives the exact integers of the tap sums (tested against them)."""
    if img.dtype != np.uint8:
        raise TypeError(f"resize_uint8 needs a uint8 array, got {img.dtype}")
    h, w = img.shape[:2]
    rest = img.shape[2:]
    a = img.astype(np.float64).reshape(h, -1)
    a = _int_matrix(h, height, kernel) @ a  # (height, w * C)
    a = np.ascontiguousarray(a.reshape(height, w, -1).transpose(1, 0, 2)).reshape(w, -1)
    a = _int_matrix(w, width, kernel) @ a  # (width, height * C)
    return _finish(a.reshape(width, height, -1).transpose(1, 0, 2).reshape((height, width) + rest))


def resize_uint8_crops(img: np.ndarray, boxes, width: int, height: int, kernel: str = "bicubic") -> np.ndarray:
    """``(len(boxes), height, width)`` uint8: each ``img[top:bottom, left:right]`` of ``boxes``
    (``(top, bottom, left, right)``) resized as :func:`resize_uint8` resizes it, byte for byte
    (the same integer sums). For many small crops (the duplicates' 28 thumbnails of a
    256-pixel image): boxes that share their columns share the horizontal pass."""
    if img.dtype != np.uint8 or img.ndim != 2:
        raise TypeError(f"resize_uint8_crops needs a 2-D uint8 array, got {img.dtype} {img.shape}")
    a = np.ascontiguousarray(img.T).astype(np.float64)  # (W, H): the horizontal pass on rows
    columns: dict[tuple[int, int], np.ndarray] = {}
    out = np.empty((len(boxes), height, width), dtype=np.float64)
    for k, (top, bottom, left, right) in enumerate(boxes):
        if (left, right) not in columns:  # (H, width)
            columns[left, right] = np.ascontiguousarray((_int_matrix(right - left, width, kernel) @ a[left:right]).T)
        out[k] = _int_matrix(bottom - top, height, kernel) @ columns[left, right][top:bottom]
    return _finish(out)


def draw_polylines(shape: tuple[int, int], lines, value: float = 1.0) -> np.ndarray:
    """Rasterise thick polylines with round joints and caps: every pixel whose centre lies
    within ``width / 2`` of a segment gets ``value``. ``lines``: [(points, width_px)] with
    points as (x, y) pixel coordinates (pixel centres at integers). Float32 0/value image.

    Plays the part of ``ImageDraw.line(..., joint="curve")`` with exact arithmetic only.
    """
    h, w = shape
    out = np.zeros((h, w), dtype=bool)
    for points, width in lines:
        r = max(float(width), 1.0) / 2.0
        pts = [(float(x), float(y)) for x, y in points]
        if len(pts) == 1:
            pts = pts * 2
        for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
            c0, c1 = max(int(math.floor(min(x0, x1) - r)), 0), min(int(math.ceil(max(x0, x1) + r)) + 1, w)
            r0, r1 = max(int(math.floor(min(y0, y1) - r)), 0), min(int(math.ceil(max(y0, y1) + r)) + 1, h)
            if c0 >= c1 or r0 >= r1:
                continue
            yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float64)
            dx, dy = x1 - x0, y1 - y0
            length2 = dx * dx + dy * dy
            px, py = xx - x0, yy - y0
            t = np.clip((px * dx + py * dy) / length2, 0.0, 1.0) if length2 > 0 else np.zeros_like(px)
            ex, ey = px - t * dx, py - t * dy
            out[r0:r1, c0:c1] |= ex * ex + ey * ey <= r * r
    return out.astype(np.float32) * np.float32(value)


# --------------------------------------------------------------------------- random draws


class Rng:
    """A :class:`numpy.random.Generator` whose continuous draws are portable.

    ``random``, ``integers``, ``choice``, ``permutation`` and ``shuffle`` are the
    Generator's own (integer arithmetic and one exact conversion); ``uniform``,
    ``normal``, ``standard_normal`` and ``beta`` are rebuilt on ``random`` with the
    functions of this module. Anything else is refused rather than silently taken from
    the Generator.
    """

    _PASS = frozenset({"random", "integers", "choice", "permutation", "shuffle", "bit_generator"})

    def __init__(self, seed=None):
        self._g = seed._g if isinstance(seed, Rng) else np.random.default_rng(seed)

    def __getattr__(self, name):
        if name in Rng._PASS:
            return getattr(self._g, name)
        raise AttributeError(f"portable.Rng has no {name!r}: add a portable version before using it")

    def uniform(self, low=0.0, high=1.0, size=None):
        u = self._g.random(size)
        if size is None:
            return float(low) + (float(high) - float(low)) * float(u)
        return low + (high - low) * u

    def standard_normal(self, size=None, dtype=np.float64):
        """Box-Muller on two uniforms per pair of values."""
        n = 1 if size is None else int(np.prod(size))
        m = (n + 1) // 2
        u1 = self._g.random(m)
        u2 = self._g.random(m)
        radius = np.sqrt(-2.0 * log(1.0 - u1))  # 1 - u1 in (0, 1]
        angle = (2.0 * math.pi) * u2
        z = np.concatenate([radius * cos(angle), radius * sin(angle)])[:n]
        if size is None:
            return float(z[0])
        return z.reshape(size).astype(dtype)

    def normal(self, loc=0.0, scale=1.0, size=None):
        z = self.standard_normal(size)
        if size is None:
            return float(loc) + float(scale) * z
        return loc + scale * z

    def beta(self, a: float, b: float) -> float:
        """One Beta(a, b) draw (Joehnk's method; a, b > 0)."""
        if not (a > 0 and b > 0):
            raise InputError("beta: a and b must be > 0")
        while True:
            x = power(float(self._g.random()), 1.0 / a)
            y = power(float(self._g.random()), 1.0 / b)
            s = x + y
            if 0.0 < s <= 1.0:
                return x / s
