"""Occlusion maps are exact: incremental inference equals one forward pass per occluded copy on
every architecture, the per-pixel map equals Captum's ``Occlusion``, and the approximate mode is
exact where it computes and close elsewhere."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import Occlusion

from deepcovid.config import ARCHITECTURES
from deepcovid.errors import InputError
from deepcovid.explain.channels_last import pad_maps, repeat
from deepcovid.explain.incremental import WHOLE, IncrementalOcclusion, Patch, _whole, fold_batchnorm, fold_padding
from deepcovid.explain.occlusion import (
    ExplainError,
    Occluder,
    OcclusionMap,
    baseline,
    covid_probability,
    in_threads,
    starts,
)
from deepcovid.explain.tail import Tail, extract, segment
from deepcovid.model.architectures import SPECS, construct, replace_head
from deepcovid.model.weights import build_model


def _model(name: str, seed: int = 0) -> torch.nn.Module:
    """A 2-class head on random weights with BatchNorm statistics that are not the identity, or
    for EfficientNet-Lite on its ImageNet weights (offline; random ones give a constant output)."""
    torch.manual_seed(seed)
    if SPECS[name].family == "efficientnet_lite":
        return build_model(name, "imagenet")[0].eval()
    model = construct(name)
    replace_head(model, name, 2)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def margin(logits: torch.Tensor) -> torch.Tensor:
    """The logit difference: a score that random weights cannot saturate (unlike a probability)."""
    return logits[:, 1] - logits[:, 0]


def _close(a, b, spread):
    """Equal up to float32 rounding: 1e-5 of the values' magnitude (or of the map's spread)."""
    np.testing.assert_allclose(a, b, atol=1e-5 * max(1.0, spread, float(np.abs(b).max())), rtol=0)


def _image(h: int, w: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, h, w, generator=g) * 0.5


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_incremental_equals_one_forward_pass_per_copy(name):
    model = _model(name)
    x = _image(72, 69)  # 69: the last window is cut at the edge
    for fill in (baseline(x, "zero"), baseline(x, "blur", sigma=3.0)):
        ref = Occluder(model, 16, 7, "batched", score=margin)(x, fill)
        exact = Occluder(model, 16, 7, "exact", batch_size=13, score=margin)(x, fill)  # a last batch of 9
        assert ref.scores.shape == (len(starts(72, 16, 7)), len(starts(69, 16, 7))) == exact.scores.shape
        spread = np.ptp(ref.scores)
        assert spread > 1e-3 * max(1.0, abs(ref.base)), "the test needs a map that varies"
        _close(exact.scores, ref.scores, spread)
        with torch.inference_mode():
            plain = margin(model(x)).item()
        _close(np.array([exact.base, ref.base]), np.array([plain, plain]), spread)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_exact_mode_convolves_wide_layers_by_winograd(name):
    """The networks with 3 x 3 convolutions of 256 channels and more: the exact mode takes them, and
    uses them on this small input, so that the exactness tests above cover Winograd's algorithm."""
    model = _model(name)
    x = _image(72, 69)
    exact = Occluder(model, 16, 7, "exact", batch_size=13, score=margin)
    ref = Occluder(model, 16, 7, "batched", score=margin)(x, baseline(x, "zero"))
    _close(exact(x, baseline(x, "zero")).scores, ref.scores, np.ptp(ref.scores))
    convs = exact.engine.winograd.values()
    assert len(convs) == {"resnet18": 6, "resnet50": 7}[name]  # layer3 and 4, their unstrided 3 x 3s
    assert sum(c.calls for c in convs) > 0


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18"])
def test_whole_map_layers_run_in_onnxruntime_where_depthwise(name):
    """Once the patches cover half their maps, the layers after them run on whole maps in ONNX
    Runtime, for networks with depthwise convolutions only; same scores as PyTorch and as one
    forward pass per copy, and their multiply-adds counted (as whole maps)."""
    model = _model(name)
    x = _image(72, 69)
    fill = baseline(x, "zero")
    ref = Occluder(model, 16, 7, "batched", score=margin)(x, fill)
    runs = {
        rt: Occluder(model, 16, 7, "exact", batch_size=13, score=margin, runtime=rt) for rt in ("onnxruntime", "torch")
    }
    maps = {rt: occ(x, fill) for rt, occ in runs.items()}
    spread = np.ptp(ref.scores)
    for result in maps.values():
        _close(result.scores, ref.scores, spread)
    tails = runs["onnxruntime"].engine._tails
    assert not runs["torch"].engine._tails
    if name == "resnet18":  # dense convolutions only: PyTorch (and Winograd's algorithm) throughout
        assert not tails and runs["onnxruntime"].engine.macs == runs["torch"].engine.macs
        return
    assert tails and all(t._sessions for t, _ in tails.values())
    engine = runs["onnxruntime"].engine
    nodes = list(engine.gm.graph.nodes)
    for tail, macs in tails.values():  # every segment holds a depthwise convolution, ends on tensors
        assert macs > 0 and any(
            n.op == "call_function" and n.target is F.conv2d and n.args[6] > 1
            for n in nodes[tail.segment.start : tail.segment.end]
        )
    # the whole maps cost at least what the patches cost, never more than plain passes
    positions = ref.scores.size
    assert runs["torch"].engine.macs <= engine.macs <= positions * engine.image_macs
    with pytest.raises(InputError, match="unknown runtime 'tvm'"):
        Occluder(model, 16, 7, "exact", runtime="tvm")


def test_onnx_segment_stops_before_a_python_number_and_computes_the_same():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.b = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.fc = torch.nn.Linear(8, 2)

        def forward(self, x):
            n = x.size(0)
            y = torch.relu(self.a(x))
            z = F.relu6(self.b(y)) + y
            return self.fc(F.adaptive_avg_pool2d(z, 1).view(n, -1))

    torch.manual_seed(0)
    gm = torch.fx.symbolic_trace(Net().eval())
    nodes = list(gm.graph.nodes)
    x = torch.randn(1, 3, 10, 10)
    base = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            base[n] = super().run_node(n)
            return base[n]

    Recorder(gm).run(x)
    start = [n.name for n in nodes].index("a")
    seg = segment(gm, base, start, lambda inside: True)
    names = [n.name for n in nodes]
    assert names[seg.end] == "view" and [n.name for n in seg.inputs] == ["x"]  # view reads n = x.size(0)
    assert [n.name for n in seg.outputs] == ["adaptive_avg_pool2d"]
    assert segment(gm, base, start, lambda inside: False) is None
    assert segment(gm, base, names.index("view"), lambda inside: True) is None  # nothing before a number
    batch = torch.randn(4, 3, 10, 10)
    with torch.inference_mode():
        expected = F.adaptive_avg_pool2d(F.relu6(gm.b(y := torch.relu(gm.a(batch)))) + y, 1)
        (pooled,) = extract(gm, seg)(batch)
        (in_onnx,) = Tail(gm, seg, base)([batch.contiguous(memory_format=torch.channels_last)])
    torch.testing.assert_close(pooled, expected)
    torch.testing.assert_close(in_onnx, expected, rtol=0, atol=1e-5)


def test_patches_covering_enough_of_their_map_count_as_whole():
    base = torch.zeros(1, 4, 20, 10)  # 200 positions
    zero = torch.zeros(3, dtype=torch.long)
    rows = int(WHOLE * 20)  # a patch of these rows and all columns covers WHOLE of the map
    assert _whole(Patch(base, torch.zeros(3, 4, rows, 10), zero, zero))
    assert not _whole(Patch(base, torch.zeros(3, 4, rows, 9), zero, zero))
    assert _whole(torch.zeros(3, 4, 20, 10)) and not _whole(3)


def test_batches_run_in_threads_one_thread_each():
    seen = []

    def fn(item):
        seen.append((torch.get_num_threads(), torch.is_inference_mode_enabled()))
        return item * 2

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert in_threads(fn, list(range(7))) == [2 * k for k in range(7)]
        assert set(seen) == {(1, True)} and torch.get_num_threads() == 2
        with pytest.raises(ZeroDivisionError):
            in_threads(lambda item: 1 / item, [1, 0, 2])
        assert torch.get_num_threads() == 2
        seen.clear()
        torch.set_num_threads(1)  # one thread: run in the caller's, as it is
        assert in_threads(fn, [1, 2]) == [2, 4] and seen == [(1, False)] * 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0"])
def test_threaded_map_equals_the_single_threaded_one(name):
    model = _model(name)
    x = _image(72, 69)
    fill = baseline(x, "zero")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        threaded = Occluder(model, 16, 7, "exact", batch_size=13, score=margin)(x, fill)
        torch.set_num_threads(1)
        single = Occluder(model, 16, 7, "exact", batch_size=13, score=margin)(x, fill)
    finally:
        torch.set_num_threads(before)
    _close(threaded.scores, single.scores, np.ptp(single.scores))


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0", "densenet121"])
def test_exact_with_batches_of_one_leaves_image_and_unoccluded_pass_intact(name):
    """A batch of one copy once pasted its patch into the cached unoccluded maps (a view, not a
    copy, for one copy) and so into the caller's image: every later score was wrong."""
    model = _model(name)
    x = _image(40, 40)
    x_before = x.clone()
    fill = baseline(x, "zero")
    ref = Occluder(model, 12, 7, "batched", score=margin)(x, fill)
    spread = np.ptp(ref.scores)
    for batch_size in (1, 4, 8):  # 25 positions: the last batch of 4 and of 8 holds one copy
        occluder = Occluder(model, 12, 7, "exact", batch_size=batch_size, score=margin)
        for _ in range(2):  # the same engine twice: nothing of the first map stays behind
            _close(occluder(x, fill).scores, ref.scores, spread)
        assert torch.equal(x, x_before)
    channels_last = x.contiguous(memory_format=torch.channels_last)  # the engine's own layout: no copy made
    _close(Occluder(model, 12, 7, "exact", batch_size=1, score=margin)(channels_last, fill).scores, ref.scores, spread)
    assert torch.equal(channels_last, x_before)


def test_reference_is_one_forward_pass_per_occluded_copy():
    model = _model("resnet18")
    x = _image(40, 40)
    fill = baseline(x, "blur", sigma=2.0)
    result = Occluder(model, 12, 10, "batched", batch_size=5)(x, fill)
    assert result.ys.tolist() == [0, 10, 20, 30]  # 30: a window cut at the edge (30..40)
    for i, y in enumerate(result.ys):
        for j, x0 in enumerate(result.xs):
            copy = x.clone()
            copy[..., y : y + 12, x0 : x0 + 12] = fill[..., y : y + 12, x0 : x0 + 12]
            with torch.inference_mode():
                assert result.scores[i, j] == pytest.approx(covid_probability(model(copy)).item(), abs=1e-6)


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0", "densenet121"])
def test_pixel_map_equals_captum(name):
    model = _model(name)
    x = _image(61, 60)
    forward = lambda t: margin(model(t))  # noqa: E731
    for fill in (baseline(x, "zero"), baseline(x, "blur", sigma=2.0), baseline(x, "mean", value=0.3)):
        ours = Occluder(model, 12, 5, "exact", score=margin)(x, fill).pixel_map()
        with torch.inference_mode():
            theirs = Occlusion(forward).attribute(
                x, sliding_window_shapes=(3, 12, 12), strides=(3, 5, 5), baselines=fill, perturbations_per_eval=16
            )[0]
        assert np.ptp(ours) > 1e-3
        for channel in range(3):  # Captum gives every channel the same value (the window spans all)
            _close(ours, theirs[channel].numpy(), 10 * np.ptp(ours))


def test_fold_batchnorm_keeps_outputs():
    for name in ("resnet18", "densenet121", "efficientnet_lite0"):
        model = _model(name)
        folded = fold_batchnorm(model)
        modules = dict(folded.named_modules())
        norms = [
            n
            for n in folded.graph.nodes
            if n.op == "call_module" and isinstance(modules[n.target], torch.nn.BatchNorm2d)
        ]
        convs = [n for n in folded.graph.nodes if n.target is torch.nn.functional.conv2d]
        assert convs and (not norms or name == "densenet121")  # densenet: BatchNorm before its convolutions
        if name == "densenet121":
            assert len(norms) == 121 - 1 - 58  # folded: the one after the stem and each layer's norm2
        x = _image(64, 64)
        with torch.inference_mode():
            np.testing.assert_allclose(folded(x).numpy(), model(x).numpy(), atol=1e-4, rtol=1e-4)


def test_padding_and_repeating_helpers_match_torch():
    x = _image(7, 6).repeat(2, 1, 1, 1).contiguous(memory_format=torch.channels_last)
    for top, bottom, left, right in itertools.product([-2, 0, 3], [-1, 0, 2], [-3, 0, 2], [1, 0, -1]):
        out = pad_maps(x, top, bottom, left, right, -1.5)
        torch.testing.assert_close(out, F.pad(x, (left, right, top, bottom), value=-1.5), rtol=0, atol=0)
        assert out.is_contiguous(memory_format=torch.channels_last)
    one = x[:1, :, 1:5, 2:6]
    for n in (1, 3):
        copies = repeat(one, n)
        assert torch.equal(copies, one.expand(n, -1, -1, -1))
        assert copies.is_contiguous(memory_format=torch.channels_last)
        copies += 1  # a copy, also of one: the engine pastes patches into it
        assert torch.equal(one, x[:1, :, 1:5, 2:6]) and not torch.equal(copies[:1], one)


def test_fold_padding_moves_symmetric_zero_padding_into_the_convolution():
    """EfficientNet-Lite pads with ZeroPad2d before its convolutions: the stride-1 ones (same on
    both sides) become the convolution's padding, the stride-2 ones (one more below and right) stay."""
    model = _model("efficientnet_lite0")
    before, after = fold_batchnorm(model), fold_padding(fold_batchnorm(model))

    def pads(gm):
        modules = dict(gm.named_modules())
        return [
            tuple(modules[n.target].padding)
            for n in gm.graph.nodes
            if n.op == "call_module" and isinstance(modules[n.target], torch.nn.ZeroPad2d)
        ]

    assert len(pads(before)) == 17 and any(p[0] == p[1] for p in pads(before))
    assert pads(after) and all(p[0] != p[1] for p in pads(after))
    padded = [n.args[4] for n in after.graph.nodes if n.target is torch.nn.functional.conv2d and n.args[4] != (0, 0)]
    assert len(padded) == len(pads(before)) - len(pads(after))
    x = _image(64, 64)
    with torch.inference_mode():
        np.testing.assert_allclose(after(x).numpy(), model(x).numpy(), atol=1e-4, rtol=1e-4)


def test_incremental_engine_on_a_single_copy_matches_the_model():
    model = _model("squeezenet")
    engine = IncrementalOcclusion(model)
    x = _image(64, 64)
    engine.set_image(x)
    patch = torch.zeros(1, 3, 9, 11)
    occluded = x.clone()
    occluded[..., 30:39, 5:16] = 0
    with torch.inference_mode():
        expected = model(occluded).numpy()
        np.testing.assert_allclose(
            engine(patch, torch.tensor([30]), torch.tensor([5])).numpy(),
            expected,
            atol=1e-5 * max(1.0, np.abs(expected).max()),
            rtol=0,
        )


def test_multiply_add_count_of_the_engine():
    """The count the benchmark prints: one plain pass counted from the model's own convolutions
    (forward hooks); a patch as large as the image costs as much as plain passes, a small one less."""
    model = _model("resnet18")
    x = _image(48, 48)
    counted = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: counted.append(o.numel() * m.weight[0].numel()))
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    with torch.inference_mode():
        model(x)
    for hook in hooks:
        hook.remove()
    engine = IncrementalOcclusion(model)
    engine.set_image(x)
    assert engine.image_macs == sum(counted) > 0 and engine.macs == 0
    engine(torch.zeros(3, 3, 48, 48), torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    assert engine.macs == 3 * engine.image_macs
    engine.set_image(x)
    engine(torch.zeros(3, 3, 8, 8), torch.tensor([0, 20, 40]), torch.tensor([40, 20, 0]))
    assert 0 < engine.macs < 3 * engine.image_macs


def test_approximate_is_exact_where_computed_and_close_elsewhere():
    model = _model("resnet18")
    x = _image(96, 96)
    fill = baseline(x, "zero")
    exact = Occluder(model, 24, 6, "exact", score=margin)(x, fill)
    approx = Occluder(model, 24, 6, "approximate", coarse=3, refine=0.1, score=margin)(x, fill)
    tol = 1e-5 * max(1.0, np.ptp(exact.scores))
    rows = np.unique(np.r_[np.arange(0, exact.scores.shape[0], 3), exact.scores.shape[0] - 1])
    cols = np.unique(np.r_[np.arange(0, exact.scores.shape[1], 3), exact.scores.shape[1] - 1])
    np.testing.assert_allclose(approx.scores[np.ix_(rows, cols)], exact.scores[np.ix_(rows, cols)], atol=tol)
    computed = np.isclose(approx.scores, exact.scores, rtol=0, atol=tol)
    assert computed.sum() >= len(rows) * len(cols) + 5  # the coarse grid and the refined positions
    assert not np.allclose(approx.scores, exact.scores, atol=tol), "interpolated somewhere"
    assert np.corrcoef(approx.pixel_map().ravel(), exact.pixel_map().ravel())[0, 1] > 0.8
    full = Occluder(model, 24, 6, "approximate", coarse=3, refine=1.0, score=margin)(x, fill)  # all refined
    np.testing.assert_allclose(full.scores, exact.scores, atol=tol)


def test_approximate_computes_fewer_positions(monkeypatch):
    model = _model("resnet18")
    x = _image(96, 96)
    counted = []
    occ = Occluder(model, 24, 6, "approximate", coarse=3, refine=0.1)
    original = occ._scores
    monkeypatch.setattr(
        occ,
        "_scores",
        lambda image, fill, chunk, h, w: counted.append(len(chunk)) or original(image, fill, chunk, h, w),
    )
    result = occ(x, baseline(x, "zero"))
    n = result.scores.size  # 13 x 13 positions; coarse 5 x 5 plus at most 17 refined
    assert 25 < sum(counted) <= 25 + int(np.ceil(0.1 * n))


def test_positions_follow_captum_and_bad_settings_fail():
    assert starts(224, 32, 8).tolist() == list(range(0, 193, 8))
    assert starts(61, 12, 5).tolist() == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50]  # the last cut at 61
    with pytest.raises(ExplainError, match="stride 9 .* window 8"):
        starts(64, 8, 9)
    with pytest.raises(ExplainError, match="window 80"):
        starts(64, 80, 8)
    with pytest.raises(ExplainError, match="unknown occluder fill 'grey'"):
        baseline(_image(8, 8), "grey")
    with pytest.raises(ExplainError, match="method 'fast'"):
        Occluder(_model("resnet18"), 8, 4, "fast")


def test_drops_flips_and_pixel_map_by_hand():
    scores = np.array([[0.9, 0.4], [0.7, 0.2]])
    result = OcclusionMap(0.8, scores, np.array([0, 2]), np.array([0, 2]), 3, (5, 5))
    np.testing.assert_allclose(result.drops, [[-0.1, 0.4], [0.1, 0.6]])
    assert result.flips(0.5).tolist() == [[False, True], [False, True]]
    pixel = result.pixel_map()
    assert pixel[0, 0] == pytest.approx(-0.1)  # one window
    assert pixel[2, 2] == pytest.approx((-0.1 + 0.4 + 0.1 + 0.6) / 4)  # all four
    assert pixel[0, 3] == pytest.approx(0.4) and pixel[4, 4] == pytest.approx(0.6)
    rows, cols = result.centres()
    assert rows.tolist() == [1.0, 3.0] and cols.tolist() == [1.0, 3.0]


class _EveryOp(torch.nn.Module):
    """Each operation the incremental engine patches, at odd sizes: padding, stride, dilation,
    ceil-mode max pooling, average pooling, channel concatenation, addition, a global pool over a
    map larger than any patch, and a flattening head (run on whole maps)."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(8)
        self.pad = torch.nn.ZeroPad2d((0, 1, 0, 1))
        self.down = torch.nn.Conv2d(8, 8, 3, stride=2)
        self.pool = torch.nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)
        self.a = torch.nn.Conv2d(8, 4, 1)
        self.b = torch.nn.Conv2d(8, 4, 3, padding=2, dilation=2)
        self.avg = torch.nn.AvgPool2d(2, 2)
        self.side = torch.nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc = torch.nn.Linear(8, 2)

    def forward(self, x):
        x = torch.relu(self.norm(self.stem(x)))
        x = self.pool(self.down(self.pad(x)))
        x = self.avg(torch.cat([self.a(x), self.b(x)], 1))
        x = torch.nn.functional.relu6(x + self.side(x))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


def test_every_patched_operation_at_odd_sizes():
    torch.manual_seed(3)
    model = _EveryOp().eval()
    with torch.no_grad():
        model.norm.running_mean.uniform_(-0.5, 0.5)
        model.norm.running_var.uniform_(0.5, 2.0)
    x = _image(90, 95)
    for fill in (baseline(x, "zero"), baseline(x, "blur", sigma=2.0)):
        ref = Occluder(model, 5, 3, "batched", score=margin)(x, fill)
        exact = Occluder(model, 5, 3, "exact", batch_size=50, score=margin)(x, fill)
        assert np.ptp(ref.scores) > 1e-4
        _close(exact.scores, ref.scores, np.ptp(ref.scores))
