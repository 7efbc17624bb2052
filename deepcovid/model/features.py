"""Backbone features, computed once: the frozen part of a last-layer model never changes,
so its output for each image is cached and the head trains on the cache.

Features are stored as one float32 ``.npy`` array plus an index CSV (the row order) and a
JSON record of what produced them (architecture, weights and their sha256, preprocessing),
so they can be reused by later stages and tools (e.g. occlusion or a shortcut audit).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm


@torch.inference_mode()
def extract_features(backbone: torch.nn.Module, dataset: Dataset, batch_size: int = 64, num_workers: int = 0,
                     device: str | torch.device = "cpu", channels_last: bool = True,
                     progress: bool = True) -> np.ndarray:
    """Run ``backbone`` (in eval mode) over ``dataset``; return an (N, D) float32 array."""
    device = torch.device(device)
    backbone = backbone.eval().to(device)
    if channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    out = []
    for images, _ in tqdm(loader, desc="features", disable=not progress, mininterval=2):
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        feats = backbone(images)
        out.append(torch.flatten(feats, 1).float().cpu().numpy())
    dim = out[0].shape[1] if out else 0
    return np.concatenate(out) if out else np.zeros((0, dim), dtype=np.float32)


def state_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state (names and tensor bytes): ties cached features to weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
