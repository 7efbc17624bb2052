"""Tests of deepcovid.model.training: cached-feature head training, best-epoch selection, the
shuffled-label control, exact resume after a SIGKILL, checkpoints read with
weights_only=True (an unusable one is set aside), DDP on CPU, device resolution.

Everything is small (random-init networks, tiny images) and runs on 1-2 CPU threads.
The full fine-tuning runs happen in subprocesses (tests/_full_train_script.py).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from deepcovid.model.architectures import split_backbone_head
from deepcovid.model.environment import resolve_device
from deepcovid.model.features import extract_features
from deepcovid.model.training import train_full, train_head
from deepcovid.model.weights import build_model

torch.set_num_threads(2)

SCRIPT = Path(__file__).with_name("_full_train_script.py")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def one_thread():
    """Tiny linear heads: a second thread only adds synchronisation on busy cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _clone(state: dict) -> dict:
    return {k: v.detach().clone() for k, v in state.items()}


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


# ------------------------------------------------------------------ a. cached == paper's path


@pytest.mark.parametrize(
    "arch,weights,size", [("efficientnet_lite0", "imagenet", 224), ("resnet18", "none", 64), ("squeezenet", "none", 96)]
)
def test_onnx_runtime_features_equal_pytorch_features(arch, weights, size):
    """The featurize stage's ONNX Runtime pass gives PyTorch's features within float rounding,
    in the same order, for a batch that does not divide the set."""
    torch.manual_seed(0)
    model, _ = build_model(arch, weights)
    backbone, _ = split_backbone_head(model, arch)
    images = torch.randn(11, 3, size, size)
    data = TensorDataset(images, torch.zeros(11, dtype=torch.long))
    ref = extract_features(copy.deepcopy(backbone), data, batch_size=4, progress=False)
    got = extract_features(
        copy.deepcopy(backbone), data, batch_size=4, progress=False, runtime="onnxruntime", image_size=size
    )
    assert got.shape == ref.shape and got.dtype == np.float32
    assert np.max(np.abs(got - ref)) <= 1e-4 * max(1.0, float(np.max(np.abs(ref))))
    assert np.max(np.abs(got[3] - ref[4])) > 1e-3  # rows differ: an order mix-up would show


def test_feature_runtime_auto_is_onnx_runtime_on_the_cpu_only():
    from deepcovid.errors import InputError
    from deepcovid.model.features import resolve_runtime

    assert resolve_runtime("auto", torch.device("cpu")) == "onnxruntime"
    assert resolve_runtime("auto", torch.device("cuda")) == "torch"
    assert resolve_runtime("torch", torch.device("cpu")) == "torch"
    with pytest.raises(InputError, match="train.feature_runtime"):
        resolve_runtime("onnxruntime", torch.device("cuda"))


@pytest.mark.parametrize("arch,size,ntr,nval,epochs", [("resnet18", 32, 30, 10, 3), ("squeezenet", 224, 24, 4, 2)])
def test_cached_features_give_the_same_head_as_encoding_every_epoch(arch, size, ntr, nval, epochs):
    """Head trained on features extracted once (channels_last, batch 64: the featurize
    stage's settings) == head trained on images passed through the frozen backbone every
    batch (the paper's code path), to 1e-5. SqueezeNet's head has dropout, so this also
    checks that both paths draw the same random numbers."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(ntr + nval, 3, size, size, generator=gen)
    labels = torch.arange(ntr + nval) % 2
    torch.manual_seed(1)
    model, _ = build_model(arch, "none")
    kw = dict(epochs=epochs, batch_size=20, lr=1e-4)  # 2 batches an epoch: the shuffled order matters

    backbone, head = split_backbone_head(copy.deepcopy(model), arch)
    init = _clone(head.state_dict())
    feats = torch.from_numpy(extract_features(backbone, TensorDataset(images, labels), progress=False))
    head, hist_cached, best_cached = train_head(
        head, feats[:ntr], labels[:ntr], feats[ntr:], labels[ntr:], seed=3, **kw
    )
    cached = _clone(head.state_dict())

    backbone, head = split_backbone_head(copy.deepcopy(model), arch)
    backbone.eval()
    head, hist_naive, best_naive = train_head(
        head, images[:ntr], labels[:ntr], images[ntr:], labels[ntr:], seed=3, encode=backbone, **kw
    )
    naive = _clone(head.state_dict())

    assert _max_diff(cached, init) > 1e-5  # the head did train
    assert _max_diff(cached, naive) < 1e-5
    assert best_cached == best_naive
    for a, b in zip(hist_cached, hist_naive, strict=True):
        assert a.train_loss == pytest.approx(b.train_loss, abs=1e-5)
        assert a.val_loss == pytest.approx(b.val_loss, abs=1e-5)

    # negative control: another seed (another batch order / dropout) gives another head
    _, head = split_backbone_head(copy.deepcopy(model), arch)
    head, _, _ = train_head(head, feats[:ntr], labels[:ntr], feats[ntr:], labels[ntr:], seed=4, **kw)
    assert _max_diff(cached, _clone(head.state_dict())) > 1e-4


# ------------------------------------------------------------------ b. best epoch


def _overfitting_problem():
    """40 training points in 100 dimensions, the signal in 10 of them: the validation
    loss falls for a few epochs, then rises as the head fits the noise."""
    gen = torch.Generator().manual_seed(0)

    def make(n):
        y = torch.arange(n) % 2
        x = torch.randn(n, 100, generator=gen)
        x[:, :10] += 0.5 * (2 * y - 1)[:, None]
        return x, y

    return make(40), make(400)


def _zero_head() -> nn.Linear:
    head = nn.Linear(100, 2)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


@pytest.mark.parametrize("patience", [0, 3])
def test_returns_the_head_of_the_lowest_validation_loss_epoch(patience, one_thread):
    (xtr, ytr), (xva, yva) = _overfitting_problem()
    head = _zero_head()
    snapshots = []
    head, history, best = train_head(
        head,
        xtr,
        ytr,
        xva,
        yva,
        epochs=30,
        batch_size=20,
        lr=1e-2,
        seed=0,
        patience=patience,
        on_epoch=lambda entry: snapshots.append(_clone(head.state_dict())),
    )
    val = [h.val_loss for h in history]
    assert [h.epoch for h in history] == list(range(1, len(history) + 1))
    assert len(snapshots) == len(history)
    assert best == int(np.argmin(val)) + 1
    assert 1 < best < len(history)  # a real minimum: it falls, then rises
    assert val[-1] > min(val) + 0.01
    if patience:
        assert len(history) == best + patience  # stopped after `patience` epochs without progress
    else:
        assert len(history) == 30
    returned = _clone(head.state_dict())
    assert _max_diff(returned, snapshots[best - 1]) == 0.0
    assert _max_diff(returned, snapshots[-1]) > 1e-3
    assert not head.training


# ------------------------------------------------------------------ c. shuffled labels


def test_shuffled_training_labels_give_chance_auc(one_thread):
    """Gaussian clusters in 512 dimensions (resnet18's feature size), the class shifting
    the mean: real labels are learnt (AUC > 0.9); with permuted training labels (the
    train stage's shuffle_labels control) the test AUC is chance."""
    from sklearn.metrics import roc_auc_score

    dim = 512
    direction = torch.ones(dim) / dim**0.5
    gen = torch.Generator().manual_seed(0)

    def make(n):
        y = torch.arange(n) % 2
        return torch.randn(n, dim, generator=gen) + 2.0 * (2 * y - 1)[:, None].float() * direction, y

    (xtr, ytr), (xva, yva), (xte, yte) = make(400), make(200), make(2000)

    def auc(train_labels, seed):
        torch.manual_seed(seed)
        head, _, _ = train_head(
            nn.Linear(dim, 2), xtr, train_labels, xva, yva, epochs=20, batch_size=20, lr=1e-3, seed=seed
        )
        with torch.no_grad():
            scores = torch.softmax(head(xte), 1)[:, 1].numpy()
        return roc_auc_score(yte.numpy(), scores)

    assert auc(ytr, 0) > 0.9
    shuffled = []
    for seed in range(3):
        perm = np.random.default_rng(seed).permutation(len(ytr))  # as stages/train.py does
        shuffled.append(auc(ytr[torch.from_numpy(perm)], seed))
    assert all(abs(a - 0.5) < 0.15 for a in shuffled), shuffled
    assert abs(np.mean(shuffled) - 0.5) < 0.1, shuffled


# ------------------------------------------------------------------ d/e. full fine-tuning in subprocesses


@pytest.fixture(scope="module")
def png_data(tmp_path_factory) -> Path:
    """16 training and 8 validation PNGs (40x40), class 1 with a bright square."""
    from PIL import Image

    root = tmp_path_factory.mktemp("pngs")
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("val", 8)):
        (root / split).mkdir()
        for i in range(n):
            label = i % 2
            pixels = rng.integers(0, 120, (40, 40), dtype=np.uint8)
            if label:
                pixels[10:30, 10:30] += 100
            Image.fromarray(pixels).convert("RGB").save(root / split / f"{label}_{i:03d}.png")
    return root


def _env(**extra) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def _cmd(data: Path, out: Path, epochs: int, num_workers: int = 0) -> list[str]:
    return [
        sys.executable,
        str(SCRIPT),
        "--data",
        str(data),
        "--out",
        str(out),
        "--checkpoint",
        str(out / "ckpt.pt"),
        "--epochs",
        str(epochs),
        "--num-workers",
        str(num_workers),
    ]


def _checkpoint_epoch(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except (FileNotFoundError, EOFError, RuntimeError):
        return 0


def _popen(cmd: list[str], **env) -> subprocess.Popen:
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        env=_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process started by _popen and its DataLoader workers (its own session)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


RESUME_EPOCHS = 4
RESUME_WORKERS = (0, 2)


@pytest.fixture(scope="module")
def resume_runs(png_data, tmp_path_factory) -> dict:
    """For num_workers 0 and 2: an uninterrupted run, and a run SIGKILLed once its
    checkpoint holds epoch 2 (it sleeps 1 s after each epoch, so it is mid-run), then run
    again with the same command. The runs of a phase go concurrently: importing torch is
    single-threaded and most of the cost, so this halves the wall time on 2 cores."""
    root = tmp_path_factory.mktemp("resume")
    outs = {nw: (root / f"uninterrupted-{nw}", root / f"interrupted-{nw}") for nw in RESUME_WORKERS}
    procs = {}
    results: dict = {nw: {} for nw in RESUME_WORKERS}
    try:
        for nw, (ref_out, run_out) in outs.items():
            procs[("ref", nw)] = _popen(_cmd(png_data, ref_out, RESUME_EPOCHS, nw))
            procs[("victim", nw)] = _popen(_cmd(png_data, run_out, RESUME_EPOCHS, nw), DEEPCOVID_TEST_EPOCH_SLEEP="1")
        deadline = time.monotonic() + 300
        pending = set(RESUME_WORKERS)
        while pending:
            for nw in list(pending):
                victim, ckpt = procs[("victim", nw)], outs[nw][1] / "ckpt.pt"
                if _checkpoint_epoch(ckpt) >= 2:
                    os.killpg(victim.pid, signal.SIGKILL)  # the process and its DataLoader workers
                    victim.wait(timeout=30)
                    results[nw]["victim_returncode"] = victim.returncode
                    results[nw]["killed_after_epoch"] = _checkpoint_epoch(ckpt)
                    results[nw]["victim_final_exists"] = (outs[nw][1] / "final.pt").exists()
                    pending.discard(nw)
                elif victim.poll() is not None:
                    pytest.fail(
                        f"num_workers={nw}: the run ended before it could be killed:\n{victim.stderr.read()[-3000:]}"
                    )
            assert time.monotonic() < deadline, "no checkpoint of epoch 2 within 300 s"
            time.sleep(0.05)
        for nw, (_, run_out) in outs.items():  # phase 2: the same commands again
            procs[("resumed", nw)] = _popen(_cmd(png_data, run_out, RESUME_EPOCHS, nw))
        for (kind, nw), proc in procs.items():
            if kind == "victim":
                continue
            stdout, stderr = proc.communicate(timeout=300)
            results[nw][kind] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    finally:
        for proc in procs.values():
            _kill_group(proc)
    for nw, (ref_out, run_out) in outs.items():
        results[nw]["ref_out"], results[nw]["run_out"] = ref_out, run_out
    return results


def _epochs_run(stdout: str) -> list[int]:
    return [int(line.split()[1]) for line in stdout.splitlines() if line.startswith("epoch ")]


@pytest.mark.parametrize("num_workers", RESUME_WORKERS)
def test_full_training_resumes_exactly_after_sigkill(resume_runs, num_workers):
    res = resume_runs[num_workers]
    ref, resumed, run_out = res["ref"], res["resumed"], res["run_out"]
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert _epochs_run(ref.stdout) == list(range(1, RESUME_EPOCHS + 1))
    assert "resumed" not in ref.stderr

    # it was killed mid-run, between checkpoints
    assert res["victim_returncode"] == -signal.SIGKILL
    done = res["killed_after_epoch"]
    assert 2 <= done < RESUME_EPOCHS
    assert not res["victim_final_exists"]

    # the same command resumes: only the missing epochs are trained
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {run_out / 'ckpt.pt'} at epoch {done + 1}" in resumed.stderr
    assert _epochs_run(resumed.stdout) == list(range(done + 1, RESUME_EPOCHS + 1))

    got = torch.load(run_out / "final.pt", weights_only=True)
    want = torch.load(res["ref_out"] / "final.pt", weights_only=True)
    assert [h["epoch"] for h in got["history"]] == list(range(1, RESUME_EPOCHS + 1))
    for a, b in zip(got["history"], want["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-9)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-9)
    assert got["best_epoch"] == want["best_epoch"]
    assert _max_diff(got["state"], want["state"]) <= 1e-6  # in practice bit-identical on CPU
    # the last epoch's weights and optimiser state too, not only the best epoch's
    last = torch.load(run_out / "ckpt.pt", weights_only=True)  # plain tensors and numbers only
    last_ref = torch.load(res["ref_out"] / "ckpt.pt", weights_only=True)
    assert last["epoch"] == last_ref["epoch"] == RESUME_EPOCHS
    assert _max_diff(last["model"], last_ref["model"]) <= 1e-6
    for pa, pb in zip(last["optimizer"]["state"].values(), last_ref["optimizer"]["state"].values(), strict=True):
        assert _max_diff(pa, pb) <= 1e-6


def test_ddp_on_cpu_with_torchrun(png_data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        *_cmd(png_data, out, epochs=2)[1:],
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    reports = {r: json.loads((out / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)}
    assert all(rep["world_size"] == 2 for rep in reports.values())
    # only rank 0 writes checkpoints (one per epoch), calls on_epoch and writes the output
    assert reports[0]["checkpoint_saves"] == 2 and reports[1]["checkpoint_saves"] == 0
    assert reports[0]["on_epoch_calls"] == 2 and reports[1]["on_epoch_calls"] == 0
    assert sorted(p.name for p in out.iterdir()) == ["ckpt.pt", "final.pt", "ranks"]
    assert torch.load(out / "ckpt.pt", weights_only=True)["epoch"] == 2
    # DDP keeps the replicas identical; the losses are all-reduced, so equal on both ranks
    assert reports[0]["state_sha256"] == reports[1]["state_sha256"]
    assert reports[0]["history"] == reports[1]["history"]
    final = torch.load(out / "final.pt", weights_only=True)
    assert [h["epoch"] for h in final["history"]] == [1, 2]
    assert all(math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"]) for h in final["history"])
    assert all(torch.isfinite(v).all() for v in final["state"].values() if v.is_floating_point())


# ------------------------------------------------------------------ e2. checkpoints in one process


@pytest.fixture
def deterministic():
    """Deterministic algorithms, as the stages run (restored afterwards: the mode is global)."""
    from deepcovid.model.environment import enable_determinism

    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    enable_determinism()
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def _tiny_run(checkpoint: Path | None, epochs: int):
    """A small conv net (batch norm, dropout) trained with train_full on random tensors."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(36, 3, 12, 12, generator=gen)
    labels = torch.arange(36) % 2
    images[labels == 1, 0] += 0.5
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(6, 2),
    )
    return train_full(
        model,
        TensorDataset(images[:28], labels[:28]),
        TensorDataset(images[28:], labels[28:]),
        epochs=epochs,
        batch_size=8,
        lr=1e-2,
        seed=3,
        device=torch.device("cpu"),
        checkpoint=checkpoint,
    )


def _assert_same_run(a, b) -> None:
    (model_a, hist_a, best_a), (model_b, hist_b, best_b) = a, b
    assert best_a == best_b
    assert [(h.epoch, h.train_loss, h.val_loss) for h in hist_a] == [
        (h.epoch, h.train_loss, h.val_loss) for h in hist_b
    ]
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)  # bitwise


def test_resume_in_process_is_bitwise_identical(tmp_path, one_thread, deterministic, caplog):
    reference = _tiny_run(tmp_path / "ref.pt", 4)
    ckpt = tmp_path / "ckpt.pt"
    _tiny_run(ckpt, 2)  # an interrupted run: its checkpoint holds epoch 2
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] == 2
    # plain contents: state_dicts of tensors, numbers, lists
    assert isinstance(state["history"], list) and isinstance(state["best_loss"], float)
    with caplog.at_level(logging.INFO, logger="deepcovid.model"):
        resumed = _tiny_run(ckpt, 4)
    assert f"resumed from {ckpt} at epoch 3" in caplog.text
    assert [h.epoch for h in resumed[1]] == [1, 2, 3, 4]
    _assert_same_run(resumed, reference)
    last, last_ref = torch.load(ckpt, weights_only=True), torch.load(tmp_path / "ref.pt", weights_only=True)
    assert all(torch.equal(last["model"][k], last_ref["model"][k]) for k in last["model"])


class _NotAllowed:  # a pickled object that weights_only=True refuses
    pass


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BAD_CHECKPOINTS = {
    "truncated": _truncated,
    "garbage": lambda path: path.write_bytes(b"\x00\x01 not a checkpoint " * 50),
    "empty": lambda path: path.write_bytes(b""),
    "arbitrary object": lambda path: torch.save({"epoch": 1, "model": _NotAllowed()}, path),
    "other structure": lambda path: torch.save({"epoch": 1, "weights": torch.zeros(3)}, path),
    "other model": lambda path: torch.save(
        {**torch.load(path, weights_only=True), "model": {"w": torch.zeros(2)}}, path
    ),
}


@pytest.mark.parametrize("kind", list(BAD_CHECKPOINTS))
def test_unusable_checkpoint_is_set_aside_and_training_starts_over(kind, tmp_path, one_thread, deterministic, caplog):
    reference = _tiny_run(None, 3)
    ckpt = tmp_path / "ckpt.pt"
    _tiny_run(ckpt, 2)
    BAD_CHECKPOINTS[kind](ckpt)
    bad = ckpt.read_bytes()
    with caplog.at_level(logging.INFO, logger="deepcovid.model"):
        result = _tiny_run(ckpt, 3)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "resumed" not in caplog.text
    message = warnings[0].getMessage()
    assert "\n" not in message and f"set aside as {ckpt}.corrupt" in message and "training starts over" in message
    assert (tmp_path / "ckpt.pt.corrupt").read_bytes() == bad  # kept for inspection
    _assert_same_run(result, reference)  # a fresh run, not a partial resume
    assert torch.load(ckpt, weights_only=True)["epoch"] == 3  # a new, good checkpoint

    # the next run resumes from that one without complaint (and an older .corrupt is replaced later)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="deepcovid.model"):
        again = _tiny_run(ckpt, 3)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    assert f"resumed from {ckpt} at epoch 4" in caplog.text
    _assert_same_run(again, reference)


# ------------------------------------------------------------------ f. devices


def test_resolve_device():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match="train.device") as err:
            resolve_device(name)
        assert "\n" not in str(err.value) and "CUDA" in str(err.value)
    for name in ("nonsense", ""):
        with pytest.raises(ValueError, match="train.device") as err:
            resolve_device(name)
        assert "\n" not in str(err.value)
    if not torch.backends.mps.is_available():
        with pytest.raises(ValueError, match="MPS"):
            resolve_device("mps")
