"""Winograd's 3 x 3 convolution (deepcovid.explain.winograd) against an independent reference:
NumPy's correlation for the 1-D transforms, PyTorch's direct convolution for the 2-D one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deepcovid.explain import winograd
from deepcovid.explain.winograd import Conv3x3, tile, transforms


@pytest.mark.parametrize("m", winograd.TILES)
def test_transforms_compute_the_correlation(m):
    at, g, bt = transforms(m)
    assert at.shape == (m, m + 2) and g.shape == (m + 2, 3) and bt.shape == (m + 2, m + 2)
    rng = np.random.default_rng(m)
    for _ in range(20):
        d, k = rng.normal(size=m + 2), rng.normal(size=3)
        np.testing.assert_allclose(at @ ((g @ k) * (bt @ d)), np.correlate(d, k, "valid"), rtol=0, atol=1e-10)


def test_no_transform_beyond_the_interpolation_points():
    with pytest.raises(ValueError, match="no Winograd transform"):
        transforms(len(winograd.POINTS))


def test_tile_minimises_the_multiplications():
    for size in range(1, 40):
        m, cost = tile(size)
        assert cost == -(-size // m) * (m + 2)
        assert cost == min(-(-size // t) * (t + 2) for t in winograd.TILES)
    assert tile(7) == (4, 12) and tile(14) == (5, 21)


def _conv_case(c, o, h, w, batch=2, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, c, h, w, generator=g).relu().contiguous(memory_format=torch.channels_last)
    weight = torch.randn(o, c, 3, 3, generator=g) / (3 * c**0.5)
    return x, weight, (torch.randn(o, generator=g) if bias else None)


@pytest.mark.parametrize("m", winograd.TILES)
@pytest.mark.parametrize("h, w", [(3, 3), (9, 9), (10, 7), (16, 15), (17, 12)])
def test_each_tile_equals_the_direct_convolution(monkeypatch, m, h, w):
    """Every tile size on outputs that fill whole tiles and outputs that do not, with and without bias."""
    monkeypatch.setattr(winograd, "TILES", (m,))
    monkeypatch.setattr(winograd, "MIN_GAIN", 0.0)
    for bias in (True, False):
        x, weight, b = _conv_case(12, 7, h, w, bias=bias, seed=m * 100 + h)
        conv = Conv3x3(weight, b)
        out = conv(x)
        ref = F.conv2d(x, weight, b)
        assert conv.calls == 1 and out.shape == ref.shape
        assert out.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(out, ref, rtol=0, atol=5e-5 * float(ref.abs().max()))


def test_small_outputs_are_convolved_directly():
    x, weight, b = _conv_case(4, 4, 3, 4)  # 1 x 2 outputs: a tile would not save enough
    conv = Conv3x3(weight, b)
    assert torch.equal(conv(x), F.conv2d(x, weight, b)) and conv.calls == 0
    conv(torch.zeros(1, 4, 11, 11))  # 9 x 9 outputs: two 5 x 5 tiles a side
    assert conv.calls == 1


def test_which_convolutions_it_takes():
    wide = torch.zeros(256, 256, 3, 3)
    assert Conv3x3.useful(wide, (1, 1), (1, 1), 1)
    assert not Conv3x3.useful(wide, (2, 2), (1, 1), 1)
    assert not Conv3x3.useful(wide, (1, 1), (2, 2), 1)
    assert not Conv3x3.useful(torch.zeros(256, 1, 3, 3), (1, 1), (1, 1), 256)  # depthwise
    assert not Conv3x3.useful(torch.zeros(256, 256, 1, 1), (1, 1), (1, 1), 1)
    assert not Conv3x3.useful(torch.zeros(128, 256, 3, 3), (1, 1), (1, 1), 1)
    with pytest.raises(ValueError, match="3, 3"):
        Conv3x3(torch.zeros(4, 4, 5, 5), None)
