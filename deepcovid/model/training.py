"""Training loops, plain and explicit (in the style of torchvision's references).

- :func:`train_head`: the paper's last-layer fine-tuning. The head trains on inputs that
  are either cached backbone features, or images passed through ``encode`` (the frozen
  backbone) every batch -- the paper's code path. Both consume the same random numbers in
  the same order, so from the same seed they give the same head (tested to 1e-5).
- :func:`train_full`: end-to-end fine-tuning with a DataLoader, AMP and channels_last on
  CUDA, a checkpoint every epoch and exact resume, DistributedDataParallel under torchrun.
  Checkpoints hold only state_dicts, tensors and plain numbers/lists, and are read with
  ``torch.load(weights_only=True)``; an unreadable one is set aside (``<name>.corrupt``)
  and training starts over.

Both keep the state of the epoch with the lowest validation loss (never test data).
Randomness is re-seeded from (seed, epoch) at every epoch, so a resumed run draws the
same batches, augmentations and dropout masks as an uninterrupted one.

Reproducibility: :func:`seed_everything` seeds Python, NumPy and torch and (by default)
calls :func:`enable_determinism`, which makes torch use deterministic algorithms strictly:
an operation without a deterministic implementation raises instead of silently varying
(``DEEPCOVID_DETERMINISTIC=warn`` turns that into a warning, recorded as such). Results
are then bitwise identical on the same machine, software and thread count;
:func:`compute_environment` records what they still depend on (thread count, the CPU
kernels in use). :func:`checkpoint_inputs` / :func:`checkpoint_key` name a full
fine-tuning checkpoint after everything that changes the result.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepcovid.files import sha256_file

log = logging.getLogger(__name__)


@dataclass
class EpochLog:
    epoch: int
    train_loss: float
    val_loss: float
    seconds: float


DETERMINISM_ENV = "DEEPCOVID_DETERMINISTIC"
_DETERMINISM_MODES = {"strict": False, "warn": True}


def enable_determinism() -> str:
    """Make torch use deterministic algorithms; return the mode ("strict" or "warn").

    Strict by default: an operation that only has a nondeterministic implementation (some
    CUDA backward passes, see ``torch.use_deterministic_algorithms``) raises a RuntimeError
    rather than quietly giving other numbers on every run. ``DEEPCOVID_DETERMINISTIC=warn``
    lets such a run proceed with a warning (and :func:`compute_environment` records
    ``deterministic_algorithms: warn``). On CPU every operation used here has a
    deterministic implementation. Also: cuDNN autotuning off, cuDNN deterministic, and the
    fixed cuBLAS workspace that deterministic CUDA matrix products need (set before cuBLAS
    starts, unless the environment already sets it).
    """
    mode = (os.environ.get(DETERMINISM_ENV) or "strict").strip().lower()
    if mode not in _DETERMINISM_MODES:
        raise ValueError(f"environment variable {DETERMINISM_ENV}={mode!r}: expected one of "
                         f"{', '.join(_DETERMINISM_MODES)}")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=_DETERMINISM_MODES[mode])
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    return mode


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python's ``random``, NumPy and torch (CPU and every CUDA device); with
    ``deterministic`` (the default) also :func:`enable_determinism`."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        enable_determinism()


def compute_environment() -> dict:
    """What a bitwise result still depends on besides data, code and parameters.

    ``torch_threads`` (reductions split differently with another thread count),
    ``cpu_capability`` (the ATen CPU kernels in use: DEFAULT, AVX2, AVX512...), the
    ``ONEDNN_MAX_CPU_ISA`` and ``ATEN_CPU_CAPABILITY`` environment variables that cap them
    (None when unset), and ``deterministic_algorithms`` (strict, warn or off). Recorded in
    metrics/train.json and MLflow -- never in a DVC output, which must not differ between
    machines.
    """
    if not torch.are_deterministic_algorithms_enabled():
        deterministic = "off"
    else:
        deterministic = "warn" if torch.is_deterministic_algorithms_warn_only_enabled() else "strict"
    return {
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY"),
        "deterministic_algorithms": deterministic,
    }


# --------------------------------------------------------------------------- checkpoint key

def tree_digest(folder: str | os.PathLike) -> str | None:
    """SHA-256 over the sorted (relative path, size, sha256) of every file under ``folder``
    (None when it does not exist). Independent of where the folder lies and of file dates."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    h = hashlib.sha256()
    files = sorted((p.relative_to(folder).as_posix(), p) for p in folder.rglob("*") if p.is_file())
    for rel, path in files:
        h.update(json.dumps([rel, path.stat().st_size, sha256_file(path)]).encode() + b"\n")
    return h.hexdigest()


def _file_digest(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None


CODE_FILES = ("training.py", "architectures.py", "datasets.py")  # the train stage's code in deepcovid/model/


def checkpoint_inputs(params: dict, provenance: dict, *, manifest: str | os.PathLike,
                      preprocessed: str | os.PathLike, augmented: str | os.PathLike | None,
                      device: str | torch.device = "cpu", world_size: int = 1,
                      code_files: Iterable[str | os.PathLike] = ()) -> dict:
    """Everything that changes the result of full fine-tuning, as a JSON-able dict.

    Parameters (model, weights, seed and the train, augment and preprocess sections), the
    sha256 of the weights file (``provenance["weights_sha256"]`` from ``build_model``), the
    data (sha256 of the manifest and of the preprocessed and augmented index.csv files, plus
    a :func:`tree_digest` of both folders), the device type, the number of DDP processes,
    the torch version and the sha256 of the code (``CODE_FILES`` of this package and
    ``code_files``, by file name).
    """
    preprocessed = Path(preprocessed)
    augmented = Path(augmented) if augmented is not None else None
    package = Path(__file__).resolve().parent
    code = [package / name for name in CODE_FILES] + [Path(p) for p in code_files]
    return {
        "model": params["model"],
        "weights": str(params["weights"]),
        "weights_sha256": provenance.get("weights_sha256"),
        "seed": int(params["seed"]),
        "train": params["train"],
        "augment": params.get("augment"),
        "preprocess": params.get("preprocess"),
        "data": {
            "manifest": sha256_file(Path(manifest)),
            "preprocessed_index": _file_digest(preprocessed / "index.csv"),
            "preprocessed_files": tree_digest(preprocessed),
            "augmented_index": _file_digest(augmented / "index.csv") if augmented is not None else None,
            "augmented_files": tree_digest(augmented) if augmented is not None else None,
        },
        "device": torch.device(device).type,
        "world_size": int(world_size),
        "torch": torch.__version__,
        "code": {p.name: _file_digest(p) for p in code},
    }


def checkpoint_key(inputs: dict) -> str:
    """SHA-256 (hex) of ``inputs`` (see :func:`checkpoint_inputs`) as canonical JSON: any
    change to any input gives another key, and so another checkpoint file."""
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA, then MPS, then CPU; or an explicit torch device string."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"parameter train.device: {name!r} is not a device (auto, cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"parameter train.device is {name!r} but CUDA is not available")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) is not None
                                     and torch.backends.mps.is_available()):
        raise ValueError(f"parameter train.device is {name!r} but MPS is not available")
    return device


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2**63 - 1)


@torch.no_grad()
def _mean_loss(head: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, encode: Callable | None) -> float:
    head.eval()
    total = 0.0
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        if encode is not None:
            xb = encode(xb)
        total += F.cross_entropy(head(xb), y[i:i + batch_size], reduction="sum").item()
    return total / max(len(x), 1)


def train_head(head: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor,
               val_y: torch.Tensor, *, epochs: int, batch_size: int, lr: float, seed: int,
               weight_decay: float = 0.0, patience: int = 0, encode: Callable | None = None,
               on_epoch: Callable[[EpochLog], None] | None = None) -> tuple[nn.Module, list[EpochLog], int]:
    """Train ``head`` with Adam and cross-entropy; return (head at best epoch, history, best epoch).

    ``train_x``/``val_x`` are features, or images when ``encode`` (the frozen backbone in
    eval mode) is given. ``patience`` > 0 stops after that many epochs without a better
    validation loss; 0 trains all ``epochs`` (the paper) and still keeps the best epoch.
    """
    optimizer = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    train_y, val_y = train_y.long(), val_y.long()
    history: list[EpochLog] = []
    best = (math.inf, 0, copy.deepcopy(head.state_dict()))
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        gen = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
        torch.manual_seed(_epoch_seed(seed, epoch) + 1)  # dropout in the head
        order = torch.randperm(len(train_x), generator=gen)
        head.train()
        total = 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            xb = train_x[idx]
            if encode is not None:
                with torch.no_grad():
                    xb = encode(xb)
            loss = F.cross_entropy(head(xb), train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        val_loss = _mean_loss(head, val_x, val_y, 256, encode) if len(val_x) else math.nan
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


# --------------------------------------------------------------------------- full fine-tuning

def _is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _rank() -> int:
    return torch.distributed.get_rank() if _is_distributed() else 0


def init_distributed(device: torch.device) -> bool:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or _is_distributed():
        return _is_distributed()
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend=backend)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return True


def _save_atomic(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line; for a refused weights-only load, the unpickler's reason
    (e.g. ``Unsupported global: GLOBAL foo.Bar``) rather than torch's long explanation."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation of torch.load")[0]
        text = "weights-only load refused: " + text.split(" was not an allowed global")[0]
    text = " ".join(text.split())
    text = f"{type(exc).__name__}: {text}" if text else f"{type(exc).__name__} (empty or cut short?)"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def set_aside(path: Path, reason: str) -> Path:
    """Rename an unusable checkpoint to ``<name>.corrupt`` (replacing an older one) and log why."""
    path = Path(path)
    target = path.with_name(path.name + ".corrupt")
    try:
        os.replace(path, target)
    except OSError as exc:
        raise RuntimeError(f"checkpoint {path} cannot be used ({reason}) and cannot be set aside "
                           f"({_one_line(exc)}): remove it") from None
    log.warning("checkpoint %s cannot be used (%s); set aside as %s, training starts over", path, reason, target)
    return target


def _same_layout(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        isinstance(a[k], torch.Tensor) and a[k].shape == b[k].shape and a[k].dtype == b[k].dtype for k in a)


def _restore(state, model: nn.Module, optimizer, scaler, epochs: int) -> tuple[list[EpochLog], float, int, dict, int]:
    """Load a checkpoint's contents into model, optimizer and scaler; raise on anything unexpected."""
    if not isinstance(state, dict):
        raise TypeError(f"expected a dict, found {type(state).__name__}")
    missing = {"epoch", "model", "optimizer", "scaler", "history", "best_loss", "best_epoch",
               "best_state"} - state.keys()
    if missing:
        raise KeyError(f"missing entries {sorted(missing)}")
    epoch, best_epoch = state["epoch"], state["best_epoch"]
    if not isinstance(epoch, int) or not isinstance(best_epoch, int) or not 1 <= epoch <= epochs \
            or not 0 <= best_epoch <= epoch:
        raise ValueError(f"epoch {epoch!r} / best epoch {best_epoch!r} out of range for {epochs} epochs")
    history = [EpochLog(**h) for h in state["history"]]
    if [h.epoch for h in history] != list(range(1, epoch + 1)):
        raise ValueError("history does not match the epoch count")
    if not _same_layout(state["best_state"], model.state_dict()):
        raise ValueError("best_state does not fit the model")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    return history, float(state["best_loss"]), best_epoch, state["best_state"], epoch + 1


def _loader(dataset, batch_size: int, shuffle: bool, num_workers: int, seed: int, epoch: int, device: torch.device):
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    gen = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
    sampler = None
    if _is_distributed():
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=False)
        sampler.set_epoch(epoch)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=num_workers, generator=gen, pin_memory=device.type == "cuda",
                      persistent_workers=False)


def _evaluate_loss(model: nn.Module, loader, device: torch.device, channels_last: bool, amp: bool) -> float:
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    with torch.no_grad():
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, enabled=amp):
                logits = model(images)
            total[0] += F.cross_entropy(logits.float(), labels, reduction="sum").double()
            total[1] += len(labels)
    if _is_distributed():
        torch.distributed.all_reduce(total)
    return (total[0] / total[1].clamp(min=1)).item()


def train_full(model: nn.Module, train_set, val_set, *, epochs: int, batch_size: int, lr: float, seed: int,
               device: torch.device, checkpoint: Path | None = None, num_workers: int = 0,
               weight_decay: float = 0.0, patience: int = 0, amp: bool | None = None,
               channels_last: bool | None = None,
               on_epoch: Callable[[EpochLog], None] | None = None) -> tuple[nn.Module, list[EpochLog], int]:
    """End-to-end fine-tuning; resumes from ``checkpoint`` when it exists.

    The checkpoint is read with ``weights_only=True``; one that cannot be read or does not
    fit (truncated, garbage, another format or model) is renamed to ``<name>.corrupt`` with
    a one-line warning, and training starts over from the given model.
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
            state = torch.load(checkpoint, map_location=device, weights_only=True)
            history, best_loss, best_epoch, best_state, start_epoch = _restore(state, model, optimizer, scaler,
                                                                               epochs)
        except Exception as exc:  # anything in the file: set it aside, start over
            if _rank() == 0:
                set_aside(Path(checkpoint), _one_line(exc))
            model.load_state_dict(initial)  # undo a partial restore
            optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
            scaler = torch.amp.GradScaler(device.type, enabled=amp and cuda)
            history, best_loss, best_epoch, best_state, start_epoch = [], math.inf, 0, initial, 1
        else:
            log.info("resumed from %s at epoch %d", checkpoint, start_epoch)
    if _is_distributed():  # every rank must have resumed from the same epoch
        check = torch.tensor([start_epoch, -start_epoch], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(check, op=torch.distributed.ReduceOp.MAX)
        if check[0].item() != -check[1].item():
            raise RuntimeError(f"the processes resumed from different epochs ({-check[1].item():.0f} to "
                               f"{check[0].item():.0f}); remove {checkpoint} and start again")
    net = model
    if _is_distributed():
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    for epoch in range(start_epoch, epochs + 1):
        if patience and best_epoch and epoch - best_epoch > patience:
            log.info("early stop before epoch %d (best %d)", epoch, best_epoch)
            break
        t0 = time.perf_counter()
        torch.manual_seed(_epoch_seed(seed, epoch) + 1 + _rank())
        net.train()
        total = torch.zeros(2, dtype=torch.float64, device=device)
        for images, labels in _loader(train_set, batch_size, True, num_workers, seed, epoch, device):
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, enabled=amp):
                loss = F.cross_entropy(net(images).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total[0] += loss.detach().double() * len(labels)
            total[1] += len(labels)
        if _is_distributed():
            torch.distributed.all_reduce(total)
        val_loss = _evaluate_loss(net, _loader(val_set, batch_size, False, num_workers, seed, epoch, device),
                                  device, channels_last, amp) if len(val_set) else math.nan
        entry = EpochLog(epoch, (total[0] / total[1]).item(), val_loss, time.perf_counter() - t0)
        history.append(entry)
        if len(val_set) == 0 or val_loss < best_loss:
            best_loss, best_epoch, best_state = val_loss, epoch, copy.deepcopy(model.state_dict())
        if on_epoch and _rank() == 0:
            on_epoch(entry)
        if checkpoint is not None and _rank() == 0:
            _save_atomic({"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scaler": scaler.state_dict(), "history": [asdict(h) for h in history],
                          "best_loss": best_loss, "best_epoch": best_epoch, "best_state": best_state},
                         Path(checkpoint))
    model.load_state_dict(best_state)
    model.eval()
    return model, history, best_epoch


@torch.no_grad()
def predict_scores(model: nn.Module, dataset, batch_size: int, device: torch.device, num_workers: int = 0) -> np.ndarray:
    """COVID probability (softmax of class 1) for every item of ``dataset``."""
    from torch.utils.data import DataLoader

    model = model.eval().to(device)
    out = []
    for images, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers):
        out.append(torch.softmax(model(images.to(device)).float(), dim=1)[:, 1].cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)
