"""Copies of channels_last maps that PyTorch makes slowly: padding (``F.pad`` on channels_last
maps is slower than writing into a new tensor) and repeating one map along the batch (cloning it
expanded is slower than repeating the rows of its memory). Used by the exact
occlusion mode on every batch."""

from __future__ import annotations

import torch

CL = torch.channels_last  # the memory format of every map of the exact mode: convolutions run fastest on it


def pad_maps(maps: torch.Tensor, top: int, bottom: int, left: int, right: int, value: float = 0.0) -> torch.Tensor:
    """``F.pad(maps, (left, right, top, bottom), value=value)`` (negative amounts cut), channels_last:
    written into a new tensor, which is faster than ``F.pad`` on channels_last maps."""
    h, w = maps.shape[-2:]
    maps = maps[:, :, max(0, -top) : h - max(0, -bottom), max(0, -left) : w - max(0, -right)]
    top, bottom, left, right = max(0, top), max(0, bottom), max(0, left), max(0, right)
    h, w = maps.shape[-2:]
    out = torch.empty(*maps.shape[:2], top + h + bottom, left + w + right, dtype=maps.dtype, memory_format=CL)
    for rows, cols in (
        ((0, top), slice(None)),
        ((top + h, top + h + bottom), slice(None)),
        ((top, top + h), slice(0, left)),
        ((top, top + h), slice(left + w, left + w + right)),
    ):
        out[:, :, rows[0] : rows[1], cols] = value
    out[:, :, top : top + h, left : left + w] = maps
    return out


def repeat(one: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` channels_last copies of the (1, C, h, w) ``one``, always copied (also for ``n`` = 1: patches
    are pasted into them): as rows of its channels_last memory, faster than cloning it expanded."""
    h, w = one.shape[-2:]
    return one.permute(0, 2, 3, 1).reshape(1, -1).expand(n, -1).clone().view(n, h, w, -1).permute(0, 3, 1, 2)
