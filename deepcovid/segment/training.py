"""Training the lung segmenter, and the Dice overlap it is judged by."""

from __future__ import annotations

import logging

import numpy as np
import torch
from tqdm import tqdm

from deepcovid.segment.network import build, standardise

log = logging.getLogger("segment")


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice overlap 2|A and B| / (|A| + |B|) of two boolean masks (1.0 when both are empty)."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    if pred.shape != ref.shape:
        raise ValueError(f"masks of different shapes {pred.shape} and {ref.shape}")
    total = int(pred.sum()) + int(ref.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & ref).sum()) / total


def _augment(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random left-right flips and gamma (0.7 to 1.4) per image, before standardisation."""
    flip = torch.rand(len(x), generator=gen) < 0.5
    x, y = x.clone(), y.clone()
    x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
    gamma = torch.exp(torch.empty(len(x), 1, 1).uniform_(np.log(0.7), np.log(1.4), generator=gen))
    return (x / 255.0) ** gamma * 255.0, y


def fit(
    images: np.ndarray, masks: np.ndarray, *, features, epochs: int, batch_size: int, lr: float, seed: int
) -> tuple[torch.nn.Module, list[float]]:
    """A BasicUNet (``features``) trained on uint8 N x S x S ``images`` and their boolean lung ``masks``:
    Adam, Dice + cross-entropy loss (MONAI's DiceCELoss), shuffled batches, flips and gamma drawn from
    ``seed``. Returns the network (eval mode) and the mean loss of each epoch."""
    from monai.losses import DiceCELoss

    if len(images) == 0:
        raise ValueError("no images to train the segmenter on")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = build(features)
    loss_fn = DiceCELoss(sigmoid=True)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    x_all = torch.as_tensor(images, dtype=torch.float32)
    y_all = torch.as_tensor(masks, dtype=torch.float32)
    losses = []
    for epoch in tqdm(range(epochs), desc="segment: train", mininterval=5):
        net.train()
        order = torch.randperm(len(images), generator=gen)
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            x, y = _augment(x_all[idx], y_all[idx], gen)
            opt.zero_grad()
            loss = loss_fn(net(standardise(x)), y.unsqueeze(1))
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(images))
        log.debug("epoch %d: loss %.4f", epoch + 1, losses[-1])
    return net.eval(), losses
