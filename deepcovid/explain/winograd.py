"""Winograd minimal filtering for 3 x 3, stride-1 convolutions (Lavin & Gray, "Fast Algorithms for
Convolutional Neural Networks", CVPR 2016), used by the exact occlusion mode on the large patches
of wide layers, where a direct convolution is arithmetic-bound.

F(m, 3) computes ``m`` outputs of a 3-tap correlation from ``m + 2`` inputs with ``m + 2``
multiplications instead of ``3 m``: ``y = A^T [(G g) * (B^T d)]``. Nested in two dimensions, an
``m_h x m_w`` output tile of a ``C -> O`` convolution costs ``(m_h + 2)(m_w + 2) C O`` multiply-adds
instead of ``9 m_h m_w C O`` (4 x fewer for 4 x 4 tiles), in one batched matrix product per tile
element; the input and output transforms are matrix products along one axis, then the other.

The transforms interpolate at the points 0, 1, -1, 2, -2, 1/2, -1/2 and infinity. The result equals
the direct convolution up to float rounding, which grows with the tile (measured relative to the
output's magnitude in float32: about 1e-6 for 2 x 2 tiles, 1e-5 for 5 x 5); tiles are at most 5 x 5.
No library offers this on the CPU: PyTorch's oneDNN convolutions are direct, and its NNPACK build
(Winograd inside) was slower than them here.
"""

from __future__ import annotations

import functools
import math
import threading

import numpy as np
import torch
import torch.nn.functional as F

from deepcovid.explain.channels_last import pad_maps

POINTS = (0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5)
TILES = (2, 3, 4, 5)  # output tile sizes considered (larger ones lose float accuracy)
MIN_CHANNELS = 256  # narrower layers: the transforms cost about what the products save (128: 0.9-1.0x)
MIN_GAIN = 1.5  # multiply-adds saved, at least, for a map to be computed this way


@functools.cache
def transforms(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(A^T, G, B^T)`` of F(m, 3), float64, shapes (m, n), (n, 3), (n, n) with n = m + 2:
    ``A^T ((G g) * (B^T d))`` is the correlation ``y_i = sum_k d[i + k] g[k]`` for every ``d``, ``g``."""
    r, n = 3, m + 2
    if not 1 <= m <= len(POINTS) - 1:  # n - 1 finite points
        raise ValueError(f"no Winograd transform for tiles of {m}")
    points = POINTS[: n - 1]
    at, g = np.zeros((m, n)), np.zeros((n, r))
    for j, p in enumerate(points):  # Lagrange interpolation at the points, and the point at infinity
        at[:, j] = [p**i for i in range(m)]
        g[j] = [p**k / math.prod(p - q for q in points if q != p) for k in range(r)]
    at[m - 1, n - 1] = g[n - 1, r - 1] = 1.0
    # B^T is then fixed: column l of it solves sum_j at[i, j] g[j, k] bt[j, l] = [l == i + k]
    system = np.stack([at[i] * g[:, k] for i in range(m) for k in range(r)])
    targets = np.array([[float(j == i + k) for j in range(n)] for i in range(m) for k in range(r)])
    bt = np.linalg.lstsq(system, targets, rcond=None)[0]
    if not np.allclose(system @ bt, targets, atol=1e-9):
        raise ValueError(f"the interpolation points give no exact F({m}, 3)")
    return at, g, bt


def tile(size: int) -> tuple[int, int]:
    """(tile, multiply-adds per output column) for ``size`` outputs along one axis: the tile of
    :data:`TILES` with the fewest multiplications, ``ceil(size / m) (m + 2)``, the smaller on ties."""
    return min(((m, -(-size // m) * (m + 2)) for m in TILES), key=lambda t: (t[1], t[0]))


class Conv3x3:
    """A 3 x 3 convolution without padding, stride or dilation, of weight (O, C, 3, 3) and
    ``bias``, computed by Winograd's algorithm where it saves at least :data:`MIN_GAIN` of the
    multiply-adds, directly elsewhere. Call it on (B, C, H, W) maps; the result is channels_last."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        if weight.ndim != 4 or tuple(weight.shape[-2:]) != (3, 3):
            raise ValueError(f"expected a (O, C, 3, 3) weight, got {tuple(weight.shape)}")
        self.weight, self.bias = weight, bias
        self._kernels: dict[tuple[int, int], tuple[torch.Tensor, ...]] = {}  # by tile size
        self._lock = threading.Lock()
        self.calls = 0  # maps computed by Winograd's algorithm (for tests and benchmarks)

    @staticmethod
    def useful(weight: torch.Tensor, stride, dilation, groups: int) -> bool:
        """Whether a convolution of these settings is one this class can speed up."""
        return (
            tuple(weight.shape[-2:]) == (3, 3)
            and tuple(stride) == (1, 1)
            and tuple(dilation) == (1, 1)
            and groups == 1
            and min(weight.shape[:2]) >= MIN_CHANNELS
        )

    def _kernel(self, mh: int, mw: int):
        """(U, B_h^T, B_w^T, A_h^T, A_w^T) for ``mh x mw`` tiles, made once (U: (nh nw, C, O), float32)."""
        if (mh, mw) not in self._kernels:
            (ath, gh, bth), (atw, gw, btw) = transforms(mh), transforms(mw)
            w = self.weight.detach().double()  # G g G^T in float64, then rounded once
            u = torch.einsum("ak,ockl,bl->abco", torch.from_numpy(gh), w, torch.from_numpy(gw))
            u = u.reshape(-1, w.shape[1], w.shape[0]).float().contiguous()
            self._kernels[mh, mw] = (u, *(torch.from_numpy(t).float() for t in (bth, btw, ath, atw)))
        return self._kernels[mh, mw]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        oh, ow = h - 2, w - 2
        (mh, cost_h), (mw, cost_w) = tile(oh), tile(ow)
        if oh < 1 or ow < 1 or 9 * oh * ow < MIN_GAIN * cost_h * cost_w:
            return F.conv2d(x.contiguous(memory_format=torch.channels_last), self.weight, self.bias)
        with self._lock:  # batches may run in threads
            self.calls += 1
            u, bth, btw, ath, atw = self._kernel(mh, mw)
        nh, nw, th, tw = mh + 2, mw + 2, -(-oh // mh), -(-ow // mw)
        hp, wp = mh * th + 2, mw * tw + 2
        if (hp, wp) != (h, w):  # zeros below and to the right, up to whole tiles
            x = pad_maps(x, 0, hp - h, 0, wp - w)
        d = x.permute(0, 2, 3, 1).contiguous()  # (B, H, W, C): the channels_last memory as it lies
        s = d.stride()
        tiles = torch.empty(nh, nw, b, th, tw, c, dtype=x.dtype)  # copy_ into it: faster than reshape
        tiles.copy_(d.as_strided(tiles.shape, (s[1], s[2], s[0], mh * s[1], mw * s[2], s[3])))
        n = b * th * tw
        # B^T d B for every tile and channel: one axis, then the other (fewer operations than their
        # Kronecker product at once)
        v = torch.matmul(btw, (bth @ tiles.view(nh, nw * n * c)).view(nh, nw, n * c))
        o = u.shape[-1]
        m = torch.bmm(v.view(nh * nw, n, c), u)  # the products of each tile element: (nh nw, n, O)
        y = torch.matmul(atw, (ath @ m.view(nh, nw * n * o)).view(mh, nw, n * o))  # A^T M A
        y = y.view(mh, mw, b, th, tw, o).permute(2, 3, 0, 4, 1, 5)  # (B, th, mh, tw, mw, O)
        if (mh * th, mw * tw) == (oh, ow):
            out = torch.empty(b, oh, ow, o, dtype=y.dtype)
            out6 = out.view(b, th, mh, tw, mw, o)
            if self.bias is None:
                out6.copy_(y)
            else:
                torch.add(y, self.bias, out=out6)
        else:
            out = y.reshape(b, mh * th, mw * tw, o)[:, :oh, :ow]
            out = out + self.bias if self.bias is not None else out.contiguous()
        return out.permute(0, 3, 1, 2)
