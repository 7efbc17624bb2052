"""Training loops, plain and explicit (in the style of torchvision's references/classification).

:func:`train_head` trains the last layer on cached features (or on images through the frozen
backbone, the paper's code path: same random numbers, same head). :func:`train_full` fine-tunes
end to end with :func:`train_one_epoch` and :func:`evaluate`, a checkpoint every epoch and
exact resume, AMP and channels_last on CUDA, DDP under torchrun. Both keep the epoch with the
lowest validation loss, and re-seed from (seed, epoch) every epoch, so a resumed run draws the
same batches, augmentations and dropout masks as an uninterrupted one.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepcovid.errors import InputError, StateError
from deepcovid.model.checkpoints import load_checkpoint, one_line, save_checkpoint, set_aside
from deepcovid.model.environment import is_distributed, process_rank
from deepcovid.model.inference import covid_probability

log = logging.getLogger(__name__)


@dataclass
class EpochLog:
    epoch: int
    train_loss: float
    val_loss: float
    seconds: float


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's random numbers (batch order; +1: dropout and augmentation)."""
    return (seed * 1_000_003 + epoch) % (2**63 - 1)


def class_weights(labels, mode: str) -> torch.Tensor | None:
    """Cross-entropy class weights: None for ``none`` (the paper's plain loss); for ``balanced``
    ``n / (2 n_c)`` per class over the training labels (scikit-learn's "balanced")."""
    if mode == "none":
        return None
    if mode != "balanced":
        raise InputError(f"train.class_weight: unknown value {mode!r}; valid: none, balanced")
    counts = torch.bincount(torch.as_tensor(np.asarray(labels), dtype=torch.long), minlength=2).double()
    if len(counts) != 2 or (counts == 0).any():
        raise InputError(f"train.class_weight balanced needs both classes in training (counts {counts.tolist()})")
    return (counts.sum() / (2 * counts)).float()


# ------------------------------------------------------------------------- last layer


@torch.no_grad()
def _mean_loss(
    head: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    encode: Callable | None,
    weight: torch.Tensor | None = None,
) -> float:
    """Mean cross-entropy over ``x`` (weighted by ``weight[y]`` when given)."""
    head.eval()
    total = 0.0
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size]
        if encode is not None:
            xb = encode(xb)
        total += F.cross_entropy(head(xb), y[i : i + batch_size], weight=weight, reduction="sum").item()
    norm = len(x) if weight is None else float(weight[y].sum())
    return total / max(norm, 1)


def train_head(
    head: nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    weight_decay: float = 0.0,
    patience: int = 0,
    encode: Callable | None = None,
    class_weight: torch.Tensor | None = None,
    on_epoch: Callable[[EpochLog], None] | None = None,
) -> tuple[nn.Module, list[EpochLog], int]:
    """Train ``head`` with Adam and cross-entropy; return (head at best epoch, history, best epoch).

    ``train_x``/``val_x`` are features, or images when ``encode`` (the frozen backbone in
    eval mode) is given. ``patience`` > 0 stops after that many epochs without a better
    validation loss; 0 trains all ``epochs`` (the paper) and still keeps the best epoch.
    ``class_weight`` (:func:`class_weights`) weights both the training and the validation loss.
    """
    optimizer = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    train_y, val_y = train_y.long(), val_y.long()
    history: list[EpochLog] = []
    best = (math.inf, 0, copy.deepcopy(head.state_dict()))
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        gen = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        torch.manual_seed(epoch_seed(seed, epoch) + 1)  # dropout in the head
        order = torch.randperm(len(train_x), generator=gen)
        head.train()
        total = 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            xb = train_x[idx]
            if encode is not None:
                with torch.no_grad():
                    xb = encode(xb)
            loss = F.cross_entropy(head(xb), train_y[idx], weight=class_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        val_loss = _mean_loss(head, val_x, val_y, 256, encode, class_weight) if len(val_x) else math.nan
        entry = EpochLog(epoch, total / len(order), val_loss, time.perf_counter() - start)
        history.append(entry)
        if on_epoch:
            on_epoch(entry)
        if len(val_x) == 0 or val_loss < best[0]:
            best = (val_loss, epoch, copy.deepcopy(head.state_dict()))
        elif patience and epoch - best[1] >= patience:
            log.info("early stop at epoch %d (best %d)", epoch, best[1])
            break
    head.load_state_dict(best[2])
    head.eval()
    return head, history, best[1]


# ------------------------------------------------------------------------- full fine-tuning


def _loader(dataset, batch_size: int, shuffle: bool, num_workers: int, seed: int, epoch: int, device: torch.device):
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    gen = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    sampler = None
    if is_distributed():
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=False)
        sampler.set_epoch(epoch)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        generator=gen,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )


def _batches(loader, device: torch.device, channels_last: bool):
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        yield images, labels


def train_one_epoch(
    net: nn.Module,
    optimizer,
    scaler,
    loader,
    device: torch.device,
    *,
    channels_last: bool,
    amp: bool,
    class_weight: torch.Tensor | None = None,
) -> float:
    """One pass over ``loader``; return the mean training loss (over all processes under DDP)."""
    net.train()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    weight = None if class_weight is None else class_weight.to(device)
    for images, labels in _batches(loader, device, channels_last):
        with torch.autocast(device.type, enabled=amp):
            loss = F.cross_entropy(net(images).float(), labels, weight=weight)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total[0] += loss.detach().double() * len(labels)
        total[1] += len(labels)
    if is_distributed():
        torch.distributed.all_reduce(total)
    return (total[0] / total[1]).item()


def evaluate(
    net: nn.Module,
    loader,
    device: torch.device,
    *,
    channels_last: bool,
    amp: bool,
    class_weight: torch.Tensor | None = None,
) -> float:
    """The mean cross-entropy over ``loader`` (weighted by ``class_weight[label]`` when given;
    over all processes under DDP)."""
    net.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    weight = None if class_weight is None else class_weight.to(device)
    with torch.no_grad():
        for images, labels in _batches(loader, device, channels_last):
            with torch.autocast(device.type, enabled=amp):
                logits = net(images)
            total[0] += F.cross_entropy(logits.float(), labels, weight=weight, reduction="sum").double()
            total[1] += len(labels) if weight is None else weight[labels].double().sum()
    if is_distributed():
        torch.distributed.all_reduce(total)
    return (total[0] / total[1].clamp(min=1)).item()


def train_full(
    model: nn.Module,
    train_set,
    val_set,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device,
    checkpoint: Path | None = None,
    num_workers: int = 0,
    weight_decay: float = 0.0,
    patience: int = 0,
    amp: bool | None = None,
    channels_last: bool | None = None,
    class_weight: torch.Tensor | None = None,
    on_epoch: Callable[[EpochLog], None] | None = None,
) -> tuple[nn.Module, list[EpochLog], int]:
    """End-to-end fine-tuning; resumes from ``checkpoint`` when it exists. ``class_weight``:
    as in :func:`train_head`.

    A checkpoint that cannot be read or does not fit (truncated, garbage, another format or
    model) is renamed to ``<name>.corrupt`` with a one-line warning, and training starts over.
    AMP (bfloat16/float16 autocast) and channels_last are on by default on CUDA only. Under
    torchrun the model is wrapped in DistributedDataParallel and rank 0 writes checkpoints.
    Returns the model (unwrapped, at its best validation epoch), the history and that epoch.
    """
    cuda = device.type == "cuda"
    amp = cuda if amp is None else amp
    channels_last = cuda if channels_last is None else channels_last
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and cuda)
    history: list[EpochLog] = []
    best_loss, best_epoch, best_state = math.inf, 0, copy.deepcopy(model.state_dict())
    start_epoch = 1
    if checkpoint is not None and Path(checkpoint).is_file():
        initial = best_state
        try:
            state = load_checkpoint(Path(checkpoint), model, epochs, device)
            history = [EpochLog(**h) for h in state["history"]]
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            best_loss, best_epoch, best_state = float(state["best_loss"]), state["best_epoch"], state["best_state"]
            start_epoch = state["epoch"] + 1
        except Exception as exc:  # anything in the file: set it aside, start over
            if process_rank() == 0:
                set_aside(Path(checkpoint), one_line(exc))
            model.load_state_dict(initial)  # undo a partial restore
            optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
            scaler = torch.amp.GradScaler(device.type, enabled=amp and cuda)
            history, best_loss, best_epoch, best_state, start_epoch = [], math.inf, 0, initial, 1
        else:
            log.info("resumed from %s at epoch %d", checkpoint, start_epoch)
    if is_distributed():  # every rank must have resumed from the same epoch
        check = torch.tensor([start_epoch, -start_epoch], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(check, op=torch.distributed.ReduceOp.MAX)
        if check[0].item() != -check[1].item():
            raise StateError(
                f"the processes resumed from different epochs ({-check[1].item():.0f} to "
                f"{check[0].item():.0f}); remove {checkpoint} and start again"
            )
    net = model
    if is_distributed():
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    for epoch in range(start_epoch, epochs + 1):
        if patience and best_epoch and epoch - best_epoch > patience:
            log.info("early stop before epoch %d (best %d)", epoch, best_epoch)
            break
        t0 = time.perf_counter()
        torch.manual_seed(epoch_seed(seed, epoch) + 1 + process_rank())  # dropout, augmentation
        train_loss = train_one_epoch(
            net,
            optimizer,
            scaler,
            _loader(train_set, batch_size, True, num_workers, seed, epoch, device),
            device,
            channels_last=channels_last,
            amp=amp,
            class_weight=class_weight,
        )
        val_loss = (
            evaluate(
                net,
                _loader(val_set, batch_size, False, num_workers, seed, epoch, device),
                device,
                channels_last=channels_last,
                amp=amp,
                class_weight=class_weight,
            )
            if len(val_set)
            else math.nan
        )
        entry = EpochLog(epoch, train_loss, val_loss, time.perf_counter() - t0)
        history.append(entry)
        if len(val_set) == 0 or val_loss < best_loss:
            best_loss, best_epoch, best_state = val_loss, epoch, copy.deepcopy(model.state_dict())
        if on_epoch and process_rank() == 0:
            on_epoch(entry)
        if checkpoint is not None and process_rank() == 0:
            save_checkpoint(
                {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "history": [asdict(h) for h in history],
                    "best_loss": best_loss,
                    "best_epoch": best_epoch,
                    "best_state": best_state,
                },
                Path(checkpoint),
            )
    model.load_state_dict(best_state)
    model.eval()
    return model, history, best_epoch


@torch.no_grad()
def predict_scores(
    model: nn.Module, dataset, batch_size: int, device: torch.device, num_workers: int = 0
) -> np.ndarray:
    """COVID probability (softmax of class 1) for every item of ``dataset``."""
    from torch.utils.data import DataLoader

    model = model.eval().to(device)
    out = []
    for images, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers):
        out.append(covid_probability(model(images.to(device))).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)
