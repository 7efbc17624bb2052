"""The compute environment of a run: seeding and deterministic algorithms, the device, the
torchrun process group, and a record of what a bitwise result still depends on (thread
count, CPU kernels). Same machine, software and thread count: bitwise identical results.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from deepcovid.errors import InputError

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
        raise InputError(
            f"environment variable {DETERMINISM_ENV}={mode!r}: expected one of {', '.join(_DETERMINISM_MODES)}"
        )
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
        raise InputError(f"parameter train.device: {name!r} is not a device (auto, cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"parameter train.device is {name!r} but CUDA is not available")
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise InputError(f"parameter train.device is {name!r} but MPS is not available")
    return device


def is_distributed() -> bool:
    """A torchrun process group is initialised."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def process_rank() -> int:
    """This process's rank under torchrun; 0 otherwise."""
    return torch.distributed.get_rank() if is_distributed() else 0


def init_distributed(device: torch.device) -> bool:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return is_distributed()
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend=backend)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return True
