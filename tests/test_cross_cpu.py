"""The data stages give the same bytes on any CPU: emulated here with the dispatch switches.

NumPy (``NPY_DISABLE_CPU_FEATURES``), libjpeg-turbo (``JSIMD_FORCENONE`` / ``JSIMD_FORCESSE2``),
PyTorch (``ATEN_CPU_CAPABILITY``), oneDNN (``ONEDNN_MAX_CPU_ISA``) and glibc
(``GLIBC_TUNABLES``) pick instruction-set-specific code at run time. The data stages
(``fetch`` with the synthetic generator, ``filter``, ``negatives``, ``split``,
``preprocess``, ``augment``) are run on a small configuration as is, as on an AVX2 machine
with one thread and one worker, and as on a baseline x86-64 machine with every dispatch held
back; every output must hash the same. On this machine (AVX-512) the old generator failed
exactly this (its float32 ``**`` differed in the last place).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deepcovid.files import sha256_file
from deepcovid.files import tree_digest as folder_digest
from workspace import TINY, make_workspace, run_stage

DATA_STAGES = ["fetch", "filter", "negatives", "duplicates", "split", "preprocess", "augment"]
OUTPUTS = [
    "data/raw",
    "data/filtered",
    "data/negatives",
    "data/duplicates.csv",
    "data/manifest.csv",
    "metrics/data.json",
    "data/preprocessed",
    "data/augmented",
]

_THREADS_1 = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
VARIANTS = {
    "as-is": ({}, 2),
    "avx2-1-thread": (
        {
            "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
            "ATEN_CPU_CAPABILITY": "avx2",
            "ONEDNN_MAX_CPU_ISA": "AVX2",
            "JSIMD_FORCESSE2": "1",
            **_THREADS_1,
        },
        1,
    ),
    "baseline-x86-64": (
        {
            "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR",
            "ATEN_CPU_CAPABILITY": "default",
            "ONEDNN_MAX_CPU_ISA": "SSE41",
            "JSIMD_FORCENONE": "1",
            "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F,-AVX2,-FMA,-AVX",
        },
        2,
    ),
}


def tree_digest(path: Path) -> str:
    return sha256_file(path) if path.is_file() else folder_digest(path)


def _run_data_stages(tmp: Path, env: dict, workers: int) -> dict[str, str]:
    tmp.mkdir()
    ws = make_workspace(tmp, **TINY, **{"preprocess.workers": workers})
    for stage in DATA_STAGES:
        run_stage(ws, stage, env=env)
    return {out: tree_digest(ws / out) for out in OUTPUTS}


def test_switches_take_effect():
    """The emulation is real: under the switches NumPy and torch report the reduced CPU."""
    env = {**os.environ, **VARIANTS["baseline-x86-64"][0]}
    code = (
        "import json, torch\n"
        "from numpy._core._multiarray_umath import __cpu_features__ as f\n"
        "print(json.dumps({'v3': f.get('X86_V3'), 'v4': f.get('X86_V4'),"
        " 'torch': torch.backends.cpu.get_cpu_capability()}))"
    )
    out = json.loads(
        subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True).stdout
    )
    assert out == {"v3": False, "v4": False, "torch": "DEFAULT"}


@pytest.mark.slow
def test_data_stages_same_bytes_under_cpu_emulation(tmp_path):
    digests = {name: _run_data_stages(tmp_path / name, env, workers) for name, (env, workers) in VARIANTS.items()}
    reference = digests["as-is"]
    for name, got in digests.items():
        differ = [out for out in OUTPUTS if got[out] != reference[out]]
        assert not differ, f"{name}: outputs differ from the as-is run: {differ}"
