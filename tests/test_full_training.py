"""Full fine-tuning (deepcovid/model/training.py: train_full, _loader, _batches, train_one_epoch,
evaluate) checked in process against values, not only against another run of the same code:
an independent, hand-written training loop (same DataLoader order, same per-epoch seeds, Adam,
batch-size-weighted mean cross-entropy) gives the numbers train_full must reproduce.

Written to kill the surviving mutants of mutation testing (bench/mutation.sh): the subprocess
stage tests exercise the same code, but mutmut cannot see inside a subprocess. Everything is
tiny (3x4x4 "images", a few hundred weights) and runs on one CPU thread in a few seconds.
"""

from __future__ import annotations

import copy
import logging
import math
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler, TensorDataset

from deepcovid.model import training
from deepcovid.model.training import EpochLog, _batches, _loader, epoch_seed, evaluate, train_full, train_one_epoch

CPU = torch.device("cpu")
TRAIN_N, VAL_N, BATCH = 11, 5, 4  # batches of 4, 4, 3 (training) and 4, 1 (validation)


@pytest.fixture(autouse=True)
def one_thread():
    """One thread: tiny tensors, and bitwise-stable reductions between the run and the reference."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ helpers


def _data(n: int, seed: int, shift: float = 1.0) -> TensorDataset:
    """n images 3x4x4, labels 0,1,0,1...; class 1 brighter in channel 0."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = torch.randn(n, 3, 4, 4, generator=gen)
    images[:, 0] += shift * (2 * labels - 1).float()[:, None, None]
    return TensorDataset(images, labels)


class Probe(nn.Module):
    """Identity that records, for every batch it sees: training mode, device type, and whether
    the batch is in channels_last layout (and not also in the default one)."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[bool, str, bool]] = []

    def forward(self, x):
        self.seen.append(
            (self.training, x.device.type, x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        )
        return x


class SmallBatchBias(nn.Module):
    """Adds a learnt bias to the logits of batches smaller than ``full`` only (the last,
    smaller batch of an epoch): in the other batches the parameter gets no gradient, and Adam
    must leave it alone (zero_grad(set_to_none=True))."""

    def __init__(self, full: int):
        super().__init__()
        self.full = full
        self.bias = nn.Parameter(torch.tensor([0.3, -0.2]))

    def forward(self, x):
        return x + self.bias if len(x) < self.full else x


def _net(seed: int = 0, *, bias: bool = True, dropout: float = 0.25, extra: nn.Module | None = None) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = [
        Probe(),
        nn.Conv2d(3, 4, 3, padding=1, bias=bias),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(64, 2, bias=bias),
    ]
    if extra is not None:
        layers.append(extra)
    return nn.Sequential(*layers)


def _clone(state: dict) -> dict:
    return {k: v.detach().clone() for k, v in state.items()}


def _equal(a: dict, b: dict) -> bool:
    assert a.keys() == b.keys()
    return all(torch.equal(a[k], b[k]) for k in a)


def _reference(
    net: nn.Module,
    train_set,
    val_set,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    weight_decay: float = 0.0,
    patience: int = 0,
    amp: bool = False,
) -> dict:
    """train_full written out by hand (one process, CPU): per epoch, the global seed
    epoch_seed+1, a shuffled DataLoader on a generator seeded with epoch_seed, Adam steps,
    the training loss weighted by batch size, the validation loss as sum / count; keep the
    epoch of the lowest validation loss (every epoch when there is no validation set)."""
    for p in net.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    history, states = [], {}
    best_loss, best_epoch, best_state = math.inf, 0, _clone(net.state_dict())
    for epoch in range(1, epochs + 1):
        if patience and best_epoch and epoch - best_epoch > patience:
            break
        torch.manual_seed(epoch_seed(seed, epoch) + 1)
        order = DataLoader(
            train_set,
            batch_size=batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)),
        )
        net.train()
        loss_sum, count = 0.0, 0
        for x, y in order:
            with torch.autocast("cpu", enabled=amp):
                logits = net(x)
            loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(y)
            count += len(y)
        train_loss = loss_sum / count
        if len(val_set):
            net.eval()
            val_sum, val_count = 0.0, 0
            with torch.no_grad():
                for x, y in DataLoader(val_set, batch_size=batch_size, shuffle=False):
                    with torch.autocast("cpu", enabled=amp):
                        logits = net(x)
                    val_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
                    val_count += len(y)
            val_loss = val_sum / val_count
        else:
            val_loss = math.nan
        history.append((epoch, train_loss, val_loss))
        states[epoch] = _clone(net.state_dict())
        if len(val_set) == 0 or val_loss < best_loss:
            best_loss, best_epoch, best_state = val_loss, epoch, states[epoch]
    return {
        "history": history,
        "best_epoch": best_epoch,
        "best_state": best_state,
        "states": states,
        "optimizer": copy.deepcopy(optimizer.state_dict()),
    }


def _same_losses(history: list[EpochLog], want: list[tuple]) -> None:
    got = [(h.epoch, h.train_loss, h.val_loss) for h in history]
    assert [g[0] for g in got] == [w[0] for w in want]
    for (_, gt, gv), (_, wt, wv) in zip(got, want, strict=True):
        assert isinstance(gt, float) and gt == pytest.approx(wt, rel=1e-12, abs=0)
        if math.isnan(wv):
            assert isinstance(gv, float) and math.isnan(gv)
        else:
            assert isinstance(gv, float) and gv == pytest.approx(wv, rel=1e-12, abs=0)


def _run(net, train_set, val_set, **kw):
    """train_full, with on_epoch recording its entries and the weights at that moment."""
    calls, snapshots = [], []

    def on_epoch(entry):
        calls.append(entry)
        snapshots.append(_clone(net.state_dict()))

    start = time.perf_counter()
    model, history, best = train_full(net, train_set, val_set, on_epoch=on_epoch, **kw)
    elapsed = time.perf_counter() - start
    run = history[len(history) - len(calls) :]  # the epochs of this call (after a resume: the last ones)
    assert calls and all(c is h for c, h in zip(calls, run, strict=True))  # once per epoch, with the entry
    assert all(isinstance(h.seconds, float) and 0.0 <= h.seconds <= elapsed for h in run)
    return model, history, best, snapshots


# ------------------------------------------------------------------ _loader and _batches


def test_loader_settings_and_order():
    """Shuffled: the order of a DataLoader on Generator().manual_seed(epoch_seed(seed, epoch)),
    whatever the global RNG; in order when not shuffled; batch size, workers, no pinned memory
    on CPU (pinned for CUDA), no persistent workers."""
    ds = TensorDataset(torch.arange(11), torch.zeros(11, dtype=torch.long))
    torch.manual_seed(123)  # the global RNG must not matter
    loader = _loader(ds, 4, True, 2, 5, 3, CPU)
    assert loader.batch_size == 4 and loader.num_workers == 2
    assert loader.pin_memory is False and loader.persistent_workers is False
    assert isinstance(loader.sampler, RandomSampler)
    assert loader.generator is not None and loader.generator.initial_seed() == epoch_seed(5, 3)

    loader = _loader(ds, 4, True, 0, 5, 3, CPU)
    torch.manual_seed(456)
    got = [x.tolist() for x, _ in loader]
    want = [
        x.tolist()
        for x, _ in DataLoader(
            ds, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(epoch_seed(5, 3))
        )
    ]
    assert got == want and [len(b) for b in got] == [4, 4, 3]
    assert sorted(sum(got, [])) == list(range(11)) and sum(got, []) != list(range(11))
    other = [x.tolist() for x, _ in _loader(ds, 4, True, 0, 5, 4, CPU)]  # another epoch, another order
    assert other != got

    loader = _loader(ds, 4, False, 0, 5, 3, CPU)
    assert isinstance(loader.sampler, SequentialSampler)
    assert [x.tolist() for x, _ in loader] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    assert loader.pin_memory is False and loader.persistent_workers is False and loader.num_workers == 0

    cuda = _loader(ds, 4, False, 0, 5, 3, torch.device("cuda"))  # built only, never iterated
    assert cuda.pin_memory is True


class _Recorder:
    """Stands in for a tensor: records the .to / .contiguous calls."""

    def __init__(self, calls: list):
        self.calls = calls

    def to(self, *args, **kwargs):
        self.calls.append(("to", args, kwargs))
        return self

    def contiguous(self, *args, **kwargs):
        self.calls.append(("contiguous", args, kwargs))
        return self


def test_batches_move_to_device_and_layout():
    x = torch.randn(2, 3, 4, 4)
    y = torch.tensor([0, 1])
    [(xb, yb)] = list(_batches([(x, y)], torch.device("meta"), False))
    assert xb.device.type == "meta" and yb.device.type == "meta"
    [(xb, yb)] = list(_batches([(x, y)], CPU, True))
    assert xb.is_contiguous(memory_format=torch.channels_last) and not xb.is_contiguous()
    assert torch.equal(xb, x) and torch.equal(yb, y)
    [(xb, _)] = list(_batches([(x, y)], CPU, False))
    assert xb.is_contiguous()

    images, labels = [], []
    device = torch.device("meta")
    out = list(_batches([(_Recorder(images), _Recorder(labels))], device, True))
    assert len(out) == 1
    assert images == [
        ("to", (device,), {"non_blocking": True}),
        ("contiguous", (), {"memory_format": torch.channels_last}),
    ]
    assert labels == [("to", (device,), {"non_blocking": True})]


# ------------------------------------------------------------------ train_one_epoch and evaluate


def _batch_list(ds: TensorDataset, size: int) -> list:
    x, y = ds.tensors
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def test_train_one_epoch_against_hand_written_loop():
    """Two epochs: the returned loss is the batch-size-weighted mean (last batch smaller), in
    float64, without autocast when amp=False, and the weights are those of plain Adam steps
    (a parameter used only by the smaller batch is not stepped by the others)."""
    batches = _batch_list(_data(TRAIN_N, 1), BATCH)
    net = _net(3, extra=SmallBatchBias(BATCH))
    ref = copy.deepcopy(net)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    net.eval()  # train_one_epoch must switch to training mode (dropout on)
    for epoch in (1, 2):
        torch.manual_seed(epoch)
        got = train_one_epoch(net, opt, scaler, batches, CPU, channels_last=False, amp=False)
        torch.manual_seed(epoch)
        ref.train()
        losses = []
        for x, y in batches:
            loss = F.cross_entropy(ref(x), y)
            ref_opt.zero_grad(set_to_none=True)
            loss.backward()
            ref_opt.step()
            losses.append(loss.item())
        want = (losses[0] * 4 + losses[1] * 4 + losses[2] * 3) / 11
        assert isinstance(got, float) and got == pytest.approx(want, rel=1e-12, abs=0)
        assert abs(got - sum(losses) / 3) > 1e-6  # not the unweighted mean
        assert _equal(net.state_dict(), ref.state_dict())
    assert net.training
    assert net[0].seen[-1] == (True, "cpu", False)


def test_train_one_epoch_layout_and_autocast():
    """channels_last=True reaches the batches; amp=True on CPU is bfloat16 autocast (another
    loss than amp=False)."""
    batches = _batch_list(_data(TRAIN_N, 1), BATCH)
    losses = {}
    for amp, channels_last in ((False, True), (True, False)):
        net = _net(3, dropout=0.0)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        losses[amp] = train_one_epoch(
            net, opt, torch.amp.GradScaler("cpu", enabled=False), batches, CPU, channels_last=channels_last, amp=amp
        )
        assert [s[2] for s in net[0].seen] == [channels_last] * 3
    assert abs(losses[True] - losses[False]) > 1e-5


def test_accumulators_live_on_the_given_device():
    """The sums are created on ``device``, not on the default device (here "meta", where
    .item() fails): train_one_epoch and evaluate still work."""
    batches = _batch_list(_data(TRAIN_N, 1), BATCH)
    net = _net(3, dropout=0.0)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    with torch.device("meta"):
        loss = train_one_epoch(net, opt, scaler, batches, CPU, channels_last=False, amp=False)
        val = evaluate(net, batches, CPU, channels_last=False, amp=False)
    assert math.isfinite(loss) and math.isfinite(val)


def test_train_one_epoch_and_evaluate_pass_device_and_layout_to_batches(monkeypatch):
    seen = []
    original = training._batches

    def spy(loader, device, channels_last):
        seen.append((device, channels_last))
        return original(loader, device, channels_last)

    monkeypatch.setattr(training, "_batches", spy)
    batches = _batch_list(_data(5, 1), 4)
    net = _net(3, dropout=0.0)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    train_one_epoch(net, opt, torch.amp.GradScaler("cpu", enabled=False), batches, CPU, channels_last=True, amp=False)
    evaluate(net, batches, CPU, channels_last=True, amp=False)
    assert seen == [(CPU, True), (CPU, True)]


def test_evaluate_is_sum_over_count():
    """Mean cross-entropy over all items (batches of 4, 4, 1: not a mean of batch means), in
    float64, eval mode, no autocast when amp=False; one item: its own loss; no items: 0."""
    ds = _data(9, 2)
    net = _net(4, dropout=0.5)
    net.train()
    x, y = ds.tensors
    with torch.no_grad():
        net.eval()
        per_item = F.cross_entropy(net(x), y, reduction="none")
        net.train()
    batches = _batch_list(ds, 4)
    got = evaluate(net, batches, CPU, channels_last=False, amp=False)
    want = sum(F.cross_entropy(net.eval()(bx), by, reduction="sum").item() for bx, by in batches) / 9
    net.train()
    assert isinstance(got, float) and got == pytest.approx(want, rel=1e-12, abs=0)
    assert got == pytest.approx(per_item.double().mean().item(), rel=1e-6)
    batch_means = [F.cross_entropy(net.eval()(bx), by).item() for bx, by in batches]
    assert abs(got - sum(batch_means) / 3) > 1e-4
    assert not net.training

    one = evaluate(net, [(x[:1], y[:1])], CPU, channels_last=False, amp=False)
    assert one == pytest.approx(per_item[0].item(), rel=1e-6) and one > 0.05
    assert evaluate(net, [], CPU, channels_last=False, amp=False) == 0.0

    with_amp = evaluate(net, batches, CPU, channels_last=False, amp=True)  # bfloat16 on CPU
    assert abs(with_amp - got) > 1e-5


# ------------------------------------------------------------------ train_full against the reference


@pytest.mark.parametrize("weight_decay", [None, 0.05])
def test_train_full_matches_reference_loop(weight_decay):
    """3 epochs with dropout and a smaller last batch: history, best epoch and weights equal
    the hand-written loop's; default settings (no weight decay, patience 0, no AMP and no
    channels_last on CPU, no workers); a frozen parameter is trained too; eval mode at the end."""
    train_set, val_set = _data(TRAIN_N, 1), _data(VAL_N, 2)
    net = _net(7)
    net[1].weight.requires_grad_(False)
    ref = _reference(
        copy.deepcopy(net),
        train_set,
        val_set,
        epochs=3,
        batch_size=BATCH,
        lr=0.02,
        seed=9,
        weight_decay=weight_decay or 0.0,
    )
    kw = {} if weight_decay is None else {"weight_decay": weight_decay}
    model, history, best, snapshots = _run(
        net, train_set, val_set, epochs=3, batch_size=BATCH, lr=0.02, seed=9, device=CPU, **kw
    )
    assert model is net and not model.training
    assert all(p.requires_grad for p in model.parameters())
    _same_losses(history, ref["history"])
    assert best == ref["best_epoch"]
    assert _equal(model.state_dict(), ref["best_state"])
    for epoch, snap in enumerate(snapshots, 1):
        assert _equal(snap, ref["states"][epoch])
    # the data went through the net as plain NCHW batches: 3 training and 2 validation per epoch
    assert (
        net[0].seen
        == [(True, "cpu", False)] * 3
        + [(False, "cpu", False)] * 2
        + [(True, "cpu", False)] * 3
        + [(False, "cpu", False)] * 2
        + [(True, "cpu", False)] * 3
        + [(False, "cpu", False)] * 2
    )


def test_weight_decay_changes_the_result():
    train_set, val_set = _data(TRAIN_N, 1), _data(VAL_N, 2)
    kw = dict(epochs=2, batch_size=BATCH, lr=0.02, seed=9, device=CPU)
    _, plain, _ = train_full(_net(7), train_set, val_set, **kw)
    _, decayed, _ = train_full(_net(7), train_set, val_set, weight_decay=0.5, **kw)
    assert abs(plain[-1].train_loss - decayed[-1].train_loss) > 1e-6


def test_train_full_passes_its_settings_to_loader(monkeypatch):
    calls = []
    original = training._loader

    def spy(dataset, batch_size, shuffle, num_workers, seed, epoch, device):
        calls.append((dataset, batch_size, shuffle, num_workers, seed, epoch, device))
        return original(dataset, batch_size, shuffle, num_workers, seed, epoch, device)

    monkeypatch.setattr(training, "_loader", spy)
    train_set, val_set = _data(TRAIN_N, 1), _data(VAL_N, 2)
    train_full(_net(7), train_set, val_set, epochs=2, batch_size=BATCH, lr=0.02, seed=9, device=CPU)
    assert calls == [
        (train_set, BATCH, True, 0, 9, 1, CPU),
        (val_set, BATCH, False, 0, 9, 1, CPU),
        (train_set, BATCH, True, 0, 9, 2, CPU),
        (val_set, BATCH, False, 0, 9, 2, CPU),
    ]


def test_amp_on_cpu_is_bfloat16_autocast_without_scaler(tmp_path):
    """amp=True on CPU: autocast (the reference with autocast, not the float32 one) and a
    disabled GradScaler (its saved state is empty)."""
    train_set, val_set = _data(TRAIN_N, 1), _data(VAL_N, 2)
    net = _net(7)
    ref = _reference(copy.deepcopy(net), train_set, val_set, epochs=2, batch_size=BATCH, lr=0.02, seed=9, amp=True)
    fp32 = _reference(copy.deepcopy(net), train_set, val_set, epochs=2, batch_size=BATCH, lr=0.02, seed=9)
    ckpt = tmp_path / "ckpt.pt"
    model, history, best, _ = _run(
        net, train_set, val_set, epochs=2, batch_size=BATCH, lr=0.02, seed=9, device=CPU, amp=True, checkpoint=ckpt
    )
    _same_losses(history, ref["history"])
    assert abs(history[0].train_loss - fp32["history"][0][1]) > 1e-5
    assert best == ref["best_epoch"] and _equal(model.state_dict(), ref["best_state"])
    assert torch.load(ckpt, weights_only=True)["scaler"] == {}


def test_channels_last_on_cpu_same_numbers():
    """channels_last=True: the net gets channels_last batches (training and validation) and
    channels_last weights, and the numbers are those of channels_last=False."""
    train_set, val_set = _data(TRAIN_N, 1), _data(VAL_N, 2)
    kw = dict(epochs=2, batch_size=BATCH, lr=0.02, seed=9, device=CPU)
    plain_net, last_net = _net(7), _net(7)
    plain, hist_plain, best_plain, _ = _run(plain_net, train_set, val_set, channels_last=False, **kw)
    last, hist_last, best_last, _ = _run(last_net, train_set, val_set, channels_last=True, **kw)
    assert [s[2] for s in plain_net[0].seen] == [False] * 10
    assert [(s[0], s[2]) for s in last_net[0].seen] == ([(True, True)] * 3 + [(False, True)] * 2) * 2
    weight = last[1].weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert best_plain == best_last
    for a, b in zip(hist_plain, hist_last, strict=True):
        assert a.epoch == b.epoch
        assert a.train_loss == pytest.approx(b.train_loss, abs=1e-6)
        assert a.val_loss == pytest.approx(b.val_loss, abs=1e-6)
    for k, v in plain.state_dict().items():
        assert torch.allclose(v, last.state_dict()[k], atol=1e-5)


# ------------------------------------------------------------------ best epoch, patience, odd validation sets


def _flipped_problem():
    """Validation = the training images with the other label: the better the net fits the
    training set, the worse the validation loss (best epoch 1, then rising)."""
    train_set = _data(TRAIN_N, 1, shift=2.0)
    x, y = train_set.tensors
    return train_set, TensorDataset(x.clone(), 1 - y)


@pytest.mark.parametrize("patience", [None, 1, 2])
def test_patience_stops_at_the_exact_epoch(patience, caplog):
    train_set, val_set = _flipped_problem()
    net = _net(7, dropout=0.0)
    ref = _reference(
        copy.deepcopy(net), train_set, val_set, epochs=6, batch_size=BATCH, lr=0.05, seed=9, patience=patience or 0
    )
    kw = {} if patience is None else {"patience": patience}
    with caplog.at_level(logging.INFO, logger="deepcovid.model.training"):
        result = _run(net, train_set, val_set, epochs=6, batch_size=BATCH, lr=0.05, seed=9, device=CPU, **kw)
    assert isinstance(result, tuple)
    model, history, best, snapshots = result
    val = [h.val_loss for h in history]
    assert all(b > a for a, b in zip(val, val[1:]))  # rising from the first epoch
    assert best == ref["best_epoch"] == 1
    expected = 6 if patience is None else 1 + patience
    assert [h.epoch for h in history] == list(range(1, expected + 1))
    _same_losses(history, ref["history"])
    assert _equal(model.state_dict(), snapshots[0]) and not _equal(model.state_dict(), snapshots[-1])
    stops = [m for m in caplog.messages if "early stop" in m]
    assert stops == ([] if patience is None else [f"early stop before epoch {expected + 1} (best 1)"])


def test_equal_validation_losses_keep_the_first_epoch():
    """A bias-free net on all-zero validation images: logits 0, the same loss (ln 2) every
    epoch; a tie is not an improvement."""
    train_set = _data(TRAIN_N, 1)
    val_set = TensorDataset(torch.zeros(3, 3, 4, 4), torch.tensor([0, 1, 0]))
    net = _net(7, bias=False, dropout=0.0)
    model, history, best, snapshots = _run(
        net, train_set, val_set, epochs=3, batch_size=BATCH, lr=0.05, seed=9, device=CPU
    )
    assert [h.val_loss for h in history] == [pytest.approx(math.log(2), rel=1e-6)] * 3
    assert len({h.val_loss for h in history}) == 1
    assert best == 1
    assert _equal(model.state_dict(), snapshots[0]) and not _equal(model.state_dict(), snapshots[-1])


def test_empty_validation_set_keeps_the_last_epoch():
    train_set = _data(TRAIN_N, 1)
    val_set = TensorDataset(torch.zeros(0, 3, 4, 4), torch.zeros(0, dtype=torch.long))
    net = _net(7)
    ref = _reference(copy.deepcopy(net), train_set, val_set, epochs=3, batch_size=BATCH, lr=0.02, seed=9)
    model, history, best, snapshots = _run(
        net, train_set, val_set, epochs=3, batch_size=BATCH, lr=0.02, seed=9, device=CPU, patience=1
    )
    assert all(math.isnan(h.val_loss) for h in history)
    _same_losses(history, ref["history"])
    assert best == 3
    assert _equal(model.state_dict(), ref["states"][3]) and _equal(model.state_dict(), snapshots[-1])
    assert not [s for s in net[0].seen if not s[0]]  # never evaluated


def _nan_validation():
    x, y = _data(VAL_N, 2).tensors
    x = x.clone()
    x[0, 0, 0, 0] = math.nan
    return TensorDataset(x, y)


def test_no_finite_validation_loss_returns_the_initial_weights():
    """Every validation loss NaN: no epoch is ever better than the start, so the result is
    epoch 0 with the initial weights, and patience never stops the run."""
    train_set, val_set = _data(TRAIN_N, 1), _nan_validation()
    net = _net(7)
    initial = _clone(net.state_dict())
    model, history, best, snapshots = _run(
        net, train_set, val_set, epochs=4, batch_size=BATCH, lr=0.02, seed=9, device=CPU, patience=1
    )
    assert [h.epoch for h in history] == [1, 2, 3, 4]
    assert all(math.isnan(h.val_loss) and math.isfinite(h.train_loss) for h in history)
    assert best == 0
    assert _equal(model.state_dict(), initial) and not _equal(snapshots[-1], initial)
    assert not model.training


# ------------------------------------------------------------------ checkpoints


def test_resume_matches_the_reference(tmp_path):
    """2 epochs, then the same call for 4 resumes at epoch 3: the uninterrupted reference's
    history, best epoch, weights and optimiser state."""
    train_set, val_set = _data(TRAIN_N, 1), _data(VAL_N, 2)
    kw = dict(batch_size=BATCH, lr=0.02, seed=9, device=CPU, weight_decay=0.05)
    ref = _reference(_net(7), train_set, val_set, epochs=4, batch_size=BATCH, lr=0.02, seed=9, weight_decay=0.05)
    ckpt = tmp_path / "ckpt.pt"
    train_full(_net(7), train_set, val_set, epochs=2, checkpoint=ckpt, **kw)
    net = _net(7)
    calls = []
    model, history, best = train_full(net, train_set, val_set, epochs=4, checkpoint=ckpt, on_epoch=calls.append, **kw)
    assert [c.epoch for c in calls] == [3, 4] and calls == history[2:]
    assert len(net[0].seen) == 2 * 5  # only epochs 3 and 4 were run
    _same_losses(history, ref["history"])
    assert best == ref["best_epoch"] and _equal(model.state_dict(), ref["best_state"])
    saved = torch.load(ckpt, weights_only=True)
    assert saved["epoch"] == 4 and saved["scaler"] == {}
    assert _equal(saved["model"], ref["states"][4])
    for a, b in zip(saved["optimizer"]["state"].values(), ref["optimizer"]["state"].values(), strict=True):
        assert _equal(a, b)


def test_corrupt_checkpoint_is_set_aside_and_training_starts_over(tmp_path, caplog):
    """An unusable checkpoint (entries missing): renamed <name>.corrupt, a warning naming the
    reason, then a fresh run with the same optimiser (weight decay) and a disabled scaler."""
    train_set, val_set = _data(TRAIN_N, 1), _data(VAL_N, 2)
    kw = dict(epochs=2, batch_size=BATCH, lr=0.02, seed=9, device=CPU, weight_decay=0.5, amp=True)
    ref = _reference(
        _net(7), train_set, val_set, epochs=2, batch_size=BATCH, lr=0.02, seed=9, weight_decay=0.5, amp=True
    )
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"epoch": 1, "best_epoch": 0}, ckpt)
    bad = ckpt.read_bytes()
    with caplog.at_level(logging.WARNING, logger="deepcovid.model"):
        model, history, best, _ = _run(_net(7), train_set, val_set, checkpoint=ckpt, **kw)
    warnings = [m for m in caplog.messages if "set aside" in m]
    assert len(warnings) == 1
    assert "KeyError" in warnings[0] and "missing entries" in warnings[0] and "'history'" in warnings[0]
    assert (tmp_path / "ckpt.pt.corrupt").read_bytes() == bad
    _same_losses(history, ref["history"])
    assert best == ref["best_epoch"] and _equal(model.state_dict(), ref["best_state"])
    saved = torch.load(ckpt, weights_only=True)
    assert saved["epoch"] == 2 and saved["scaler"] == {}


def test_corrupt_checkpoint_then_no_finite_validation_loss(tmp_path):
    """After a set-aside checkpoint the best epoch starts again from 0 (no epoch yet), like a
    fresh run: with NaN validation losses the result is epoch 0, the initial weights."""
    train_set, val_set = _data(TRAIN_N, 1), _nan_validation()
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(b"not a checkpoint")
    net = _net(7)
    initial = _clone(net.state_dict())
    model, history, best, _ = _run(
        net, train_set, val_set, epochs=3, batch_size=BATCH, lr=0.02, seed=9, device=CPU, checkpoint=ckpt, patience=1
    )
    assert (tmp_path / "ckpt.pt.corrupt").exists()
    assert [h.epoch for h in history] == [1, 2, 3]
    assert best == 0 and _equal(model.state_dict(), initial)
