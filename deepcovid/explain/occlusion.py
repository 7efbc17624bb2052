"""Occlusion maps (Zeiler & Fergus, 2014; the paper's Fig. 14): slide an N x N occluder with
stride S over the model input and record the COVID-19 probability of each occluded copy.

Window positions follow Captum's ``Occlusion``: starts ``0, S, 2S, ...`` up to and including
``ceil((size - N) / S) * S``; a last window that would pass the edge is cut there. The per-pixel
map is Captum's: the mean probability drop over every window that covers the pixel.

Three ways to compute the scores: ``batched`` (one forward pass per occluded copy, the plain
reference), ``exact`` (the same scores by incremental inference, :mod:`deepcovid.explain.incremental`)
and ``approximate`` (coarse to fine: exact scores on every ``coarse``-th window position, linear
interpolation between them, then exact scores again at the ``refine`` fraction of positions where
the interpolation is least certain: the largest spread of the scores within a coarse step).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from scipy.interpolate import RegularGridInterpolator
from scipy.ndimage import maximum_filter, minimum_filter
from torch import nn
from torchvision.transforms.v2 import functional as TF

from deepcovid.errors import InputError
from deepcovid.explain.incremental import IncrementalOcclusion
from deepcovid.model.inference import covid_probability

METHODS = ("exact", "approximate", "batched")
FILLS = ("zero", "mean", "blur")


class ExplainError(InputError):
    """Bad explain settings or input (one-line message)."""


def starts(size: int, window: int, stride: int) -> np.ndarray:
    """Window starts along one axis of ``size`` pixels (Captum's positions)."""
    if not 1 <= window <= size:
        raise ExplainError(f"occluder window {window} must be between 1 and the input size {size}")
    if not 1 <= stride <= window:
        raise ExplainError(f"occluder stride {stride} must be between 1 and the window {window}")
    return np.arange(math.ceil((size - window) / stride) + 1) * stride


def baseline(image: torch.Tensor, fill: str, value: float | None = None, sigma: float | None = None) -> torch.Tensor:
    """What the occluder shows, as a (1, C, H, W) tensor in the model's input space:
    ``zero`` (0 after normalisation), ``mean`` (``value``: a normalised intensity, e.g. the
    dataset mean) or ``blur`` (a Gaussian-blurred copy of ``image``, standard deviation
    ``sigma`` pixels)."""
    if fill == "zero":
        return torch.zeros_like(image)
    if fill == "mean":
        if value is None or not math.isfinite(value):
            raise ExplainError("fill 'mean' needs the dataset mean")
        return torch.full_like(image, float(value))
    if fill == "blur":
        if sigma is None or not sigma > 0:
            raise ExplainError(f"fill 'blur' needs a positive blur sigma, got {sigma!r}")
        k = 2 * math.ceil(3 * sigma) + 1
        return TF.gaussian_blur(image, [k, k], [sigma, sigma])
    raise ExplainError(f"unknown occluder fill {fill!r}; valid: {', '.join(FILLS)}")


def in_threads(fn, items: list) -> list:
    """``[fn(item) for item in items]`` (in inference mode), in as many threads as torch has
    intra-op threads (at most one per item), each running its operations on one thread. Batches of
    occluded copies are independent, and the many small operations of incremental inference hold
    Python's lock between the large ones: two batches side by side on two cores keep the cores busier
    than one batch on both (measured in docs/explanations.md). The scores
    equal those of one thread up to float rounding (the summation order of a product may differ)."""
    threads = min(torch.get_num_threads(), len(items))
    if threads <= 1:
        return [fn(item) for item in items]

    def work(item):
        with torch.inference_mode():
            return fn(item)

    before = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(threads, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            return list(pool.map(work, items))
    finally:
        torch.set_num_threads(before)  # also the default of threads started later, which the workers' set


@dataclass
class OcclusionMap:
    """One image's occlusion result. ``scores[i, j]``: the COVID-19 probability with the window
    at rows ``ys[i]..`` and columns ``xs[j]..`` hidden; ``base``: the unoccluded probability."""

    base: float
    scores: np.ndarray
    ys: np.ndarray
    xs: np.ndarray
    window: int
    size: tuple[int, int]

    @property
    def drops(self) -> np.ndarray:
        """Probability drop per window position (positive: hiding the region lowers the score)."""
        return self.base - self.scores

    def flips(self, threshold: float) -> np.ndarray:
        """Where hiding the region changes the predicted label at ``threshold``."""
        return (self.scores >= threshold) != (self.base >= threshold)

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Row and column of each window's centre (windows cut at the edge: of the part left)."""
        return tuple(
            (s + np.minimum(s + self.window, n)) / 2 - 0.5
            for s, n in ((self.ys, self.size[0]), (self.xs, self.size[1]))
        )

    def pixel_map(self) -> np.ndarray:
        """(H, W) mean drop over the windows covering each pixel (Captum's ``Occlusion``)."""
        return pixel_map(self.drops, self.ys, self.xs, self.window, self.size)


def pixel_map(drops: np.ndarray, ys: np.ndarray, xs: np.ndarray, window: int, size: tuple[int, int]) -> np.ndarray:
    total = np.zeros(size, dtype=np.float64)
    count = np.zeros(size, dtype=np.int64)
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            total[y : y + window, x : x + window] += drops[i, j]
            count[y : y + window, x : x + window] += 1
    return total / count  # every pixel is covered: the last window reaches the edge


class Occluder:
    """Occlusion maps of one model: ``Occluder(model, window=32, stride=8)(image, fill)``.

    ``model`` maps (N, C, H, W) to logits (eval mode, not changed); ``score`` maps them to the
    explained score, (N,) or (N, M) for M maps at once (:meth:`maps`). ``method``: ``exact``,
    ``approximate`` (with ``coarse`` and ``refine``) or ``batched``; ``batch_size`` occluded
    copies per pass; ``runtime`` of the exact and approximate modes' whole-map layers
    (:class:`~deepcovid.explain.incremental.IncrementalOcclusion`)."""

    def __init__(
        self,
        model: nn.Module,
        window: int,
        stride: int,
        method: str = "exact",
        batch_size: int = 64,
        score=covid_probability,
        coarse: int = 3,
        refine: float = 0.1,
        runtime: str = "onnxruntime",
    ) -> None:
        if method not in METHODS:
            raise ExplainError(f"unknown occlusion method {method!r}; valid: {', '.join(METHODS)}")
        if isinstance(coarse, bool) or not isinstance(coarse, int) or coarse < 1:
            raise ExplainError(f"coarse must be a positive integer, got {coarse!r}")
        if not 0 <= refine <= 1:
            raise ExplainError(f"refine must be a fraction in [0, 1], got {refine!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ExplainError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.model, self.window, self.stride, self.method, self.batch_size = (
            model.eval(),
            window,
            stride,
            method,
            batch_size,
        )
        self.score, self.coarse, self.refine = score, coarse, refine
        self.engine = None if method == "batched" else IncrementalOcclusion(model, runtime)

    def __call__(self, image: torch.Tensor, fill: torch.Tensor) -> OcclusionMap:
        """The map of ``image`` with occluder content ``fill`` (:func:`baseline`), both (1, C, H, W)."""
        return self.maps(image, fill)[0]

    @torch.inference_mode()
    def maps(self, image: torch.Tensor, fill: torch.Tensor) -> list[OcclusionMap]:
        """One map per score the ``score`` function returns, from the same occluded passes."""
        if image.ndim != 4 or image.shape[0] != 1 or fill.shape != image.shape:
            raise ExplainError(
                f"expected one (1, C, H, W) image and a fill of its shape, got {tuple(image.shape)} "
                f"and {tuple(fill.shape)}"
            )
        h, w = image.shape[-2:]
        ys, xs = starts(h, self.window, self.stride), starts(w, self.window, self.stride)
        logits = self.engine.set_image(image) if self.engine is not None else self.model(image)
        base = self.score(logits).reshape(1, -1)[0].tolist()
        run = lambda cells: self._at(image, fill, [(ys[i], xs[j]) for i, j in cells], len(base))  # noqa: E731
        if self.method == "approximate":
            scores = self._coarse_to_fine(run, len(ys), len(xs))
        else:
            scores = run([(i, j) for i in range(len(ys)) for j in range(len(xs))]).reshape(len(ys), len(xs), -1)
        return [OcclusionMap(b, scores[:, :, m], ys, xs, self.window, (h, w)) for m, b in enumerate(base)]

    def _coarse_to_fine(self, run, ny: int, nx: int) -> np.ndarray:
        rows = np.unique(np.r_[np.arange(0, ny, self.coarse), ny - 1])
        cols = np.unique(np.r_[np.arange(0, nx, self.coarse), nx - 1])
        coarse = run([(i, j) for i in rows for j in cols]).reshape(len(rows), len(cols), -1)
        grid = np.stack(np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij"), -1)
        points = (rows, cols) if len(rows) > 1 and len(cols) > 1 else None
        scores = np.stack(
            [
                RegularGridInterpolator(points, coarse[:, :, m])(grid)
                if points
                else np.broadcast_to(coarse[:, :, m].mean(), (ny, nx))
                for m in range(coarse.shape[2])
            ],
            -1,
        )
        known = np.zeros((ny, nx), bool)
        known[np.ix_(rows, cols)] = True
        # refined first: where the interpolation is least certain, the largest spread of the scores
        # within a coarse step around the position (the highest drops were refined first before:
        # the maps correlated less with the exact ones, 0.966 against 0.979 at coarse 2 on real X-rays)
        size = 2 * self.coarse - 1
        spread = maximum_filter(scores[:, :, 0], size=size) - minimum_filter(scores[:, :, 0], size=size)
        order = np.argsort(-spread, axis=None, kind="stable")
        refine = [divmod(int(k), nx) for k in order[: math.ceil(self.refine * ny * nx)] if not known.flat[k]]
        if refine:
            scores[tuple(np.array(refine).T)] = run(refine)
        scores[np.ix_(rows, cols)] = coarse
        return scores

    def _at(self, image, fill, positions, m: int) -> np.ndarray:
        """(n, m) scores with the window at each ``(y, x)`` of ``positions``, in batches."""
        h, w = image.shape[-2:]
        # positions at the same offset modulo the networks' total stride (32) next to each other:
        # their patches then sit alike in every layer's windows, and a batch moves them as slices
        order = sorted(range(len(positions)), key=lambda k: (positions[k][0] % 32, positions[k][1] % 32, k))
        ordered = [positions[k] for k in order]
        chunks = [ordered[k : k + self.batch_size] for k in range(0, len(ordered), self.batch_size)]
        one = lambda c: self._scores(image, fill, c, h, w)  # noqa: E731
        # the plain reference stays on the caller's threads: its large passes ran slower in threads
        scores = in_threads(one, chunks) if self.engine is not None else [one(c) for c in chunks]
        scores = torch.cat([s.reshape(-1, m) for s in scores])
        out = torch.empty_like(scores)
        out[torch.tensor(order)] = scores
        return out.numpy()

    def _scores(self, image, fill, chunk, h, w) -> torch.Tensor:
        n = self.window
        if self.engine is None:
            copies = image.repeat(len(chunk), 1, 1, 1)
            for b, (y, x) in enumerate(chunk):
                copies[b, :, y : y + n, x : x + n] = fill[0, :, y : y + n, x : x + n]
            return self.score(self.model(copies.contiguous(memory_format=torch.channels_last)))
        # the changed box is n x n, moved inside the image for a window cut at the edge
        y = torch.tensor([min(y, h - n) for y, _ in chunk])
        x = torch.tensor([min(x, w - n) for _, x in chunk])
        data = torch.stack([image[0, :, yy : yy + n, xx : xx + n] for yy, xx in zip(y.tolist(), x.tolist())])
        for b, (y0, x0) in enumerate(chunk):  # the occluded part of the box
            data[b, :, y0 - int(y[b]) :, x0 - int(x[b]) :] = fill[0, :, y0 : y0 + n, x0 : x0 + n]
        return self.score(self.engine(data, y, x))
