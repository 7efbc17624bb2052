"""Incremental occlusion inference (Nakandala et al., "Incremental and Approximate Inference for
Faster Occlusion-based Deep CNN Explanations", SIGMOD 2019): an occluder changes only a patch of
each layer's output, so each layer recomputes that patch of a batch of occluded copies and reuses
the unoccluded pass everywhere else. Exact up to float rounding: the patches of wide 3 x 3
convolutions (256 channels and more) are convolved by Winograd's algorithm
(:mod:`deepcovid.explain.winograd`), which rounds differently from a direct convolution.

The network is traced with ``torch.fx``, BatchNorm folded into the convolution before it and
symmetric zero padding into the convolution after it. Once the patches cover at least half their
maps, the rest of a network with depthwise convolutions runs on whole maps in ONNX Runtime
(:mod:`deepcovid.explain.tail`), which rounds differently again.
Patched: convolutions, zero padding, max and average pooling, element-wise activations, ``add``,
channel ``cat`` and global average pooling (updated from the patch alone). Any other operation
runs on whole maps, which is exact but saves nothing.
"""

from __future__ import annotations

import copy
import itertools
import math
import operator
import threading
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from deepcovid.errors import InputError
from deepcovid.explain.channels_last import CL, pad_maps, repeat
from deepcovid.explain.tail import Tail, segment
from deepcovid.explain.winograd import Conv3x3

RUNTIMES = ("onnxruntime", "torch")
# a patch covering at least this fraction of its map counts as changed as a whole: the rest of the
# network then runs on whole maps in ONNX Runtime (faster than waiting for patches that cover their
# maps; 0.4 and 0.5 alike: docs/explanations.md, bench/occlusion_speed.py)
WHOLE = 0.5

_UNARY_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Dropout, nn.Identity, nn.BatchNorm2d, nn.LeakyReLU)
_UNARY_FUNCTIONS = {F.relu, F.relu6, torch.relu, F.hardtanh, F.dropout, F.leaky_relu}
_ADD = {operator.add, torch.add, operator.iadd}
_ACTIVATIONS = (nn.ReLU, nn.Hardtanh, nn.LeakyReLU)  # nn.ReLU6 is a Hardtanh


def _activation_inplace(module: nn.Module, data: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.Hardtanh):
        return F.hardtanh(data, module.min_val, module.max_val, inplace=True)
    if isinstance(module, nn.LeakyReLU):
        return F.leaky_relu(data, module.negative_slope, inplace=True)
    return data.relu_()


_INPLACE_FUNCTIONS = {
    F.relu: lambda data, inplace=False: data.relu_(),
    torch.relu: lambda data: data.relu_(),
    F.relu6: lambda data, inplace=False: F.hardtanh(data, 0.0, 6.0, inplace=True),
    F.hardtanh: lambda data, min_val=-1.0, max_val=1.0, inplace=False: F.hardtanh(data, min_val, max_val, inplace=True),
    F.leaky_relu: lambda data, negative_slope=0.01, inplace=False: F.leaky_relu(data, negative_slope, inplace=True),
}
# operations whose output may be their input itself (in place, or passed on)
_ALIASING = _ACTIVATIONS + (nn.Identity, nn.Dropout, nn.ZeroPad2d)
_ALIASING_FUNCTIONS = set(_INPLACE_FUNCTIONS) | {F.dropout, F.pad}


def fold_batchnorm(model: nn.Module) -> fx.GraphModule:
    """A traced copy of ``model`` (eval mode) with each BatchNorm2d that follows a convolution
    folded into it (the convolution's only user); same outputs up to rounding."""
    gm = fx.symbolic_trace(copy.deepcopy(model).eval())
    modules = dict(gm.named_modules())
    counter = itertools.count()
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        conv = node.args[0]
        if not isinstance(conv, fx.Node) or len(conv.users) != 1:
            continue
        geometry = _conv_geometry(gm, modules, conv)
        if geometry is None:
            continue
        weight, bias, stride, padding, dilation, groups = geometry
        bn = modules[node.target]
        w, b = fuse_conv_bn_weights(weight, bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
        stem = f"_folded_{next(counter)}"
        gm.register_parameter(stem + "_w", nn.Parameter(w.detach(), requires_grad=False))
        gm.register_parameter(stem + "_b", nn.Parameter(b.detach(), requires_grad=False))
        with gm.graph.inserting_before(node):
            w_node = gm.graph.get_attr(stem + "_w")
            b_node = gm.graph.get_attr(stem + "_b")
            folded = gm.graph.call_function(F.conv2d, (conv.args[0], w_node, b_node, stride, padding, dilation, groups))
        node.replace_all_uses_with(folded)
        gm.graph.erase_node(node)
        gm.graph.erase_node(conv)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm.eval()


def fold_padding(gm: fx.GraphModule) -> fx.GraphModule:
    """``gm`` with each zero padding that is the same on both sides and read only by a convolution
    without padding of its own (EfficientNet-Lite's "same" padding at stride 1) made that
    convolution's padding: the exact mode then convolves whole maps without a padded copy of them.
    Same outputs up to rounding."""
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if len(node.users) != 1:
            continue
        if node.op == "call_module" and type(modules.get(node.target)) is nn.ZeroPad2d:
            pads = tuple(modules[node.target].padding)
        elif node.op == "call_function" and node.target is F.pad and len(node.args) == 2 and not node.kwargs:
            pads = tuple(node.args[1]) if isinstance(node.args[1], (tuple, list)) else ()
        else:
            continue
        conv = next(iter(node.users))
        if (
            len(pads) != 4
            or pads[0] != pads[1]
            or pads[2] != pads[3]
            or min(pads) < 0
            or conv.op != "call_function"
            or conv.target is not F.conv2d
            or conv.args[0] is not node
        ):
            continue
        names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
        values = dict(zip(names, (None, None, None, 1, 0, 1, 1)))
        values.update(zip(names, conv.args))
        values.update(conv.kwargs)
        if isinstance(values["padding"], str) or tuple(torch.nn.modules.utils._pair(values["padding"])) != (0, 0):
            continue
        values.update(input=node.args[0], padding=(pads[2], pads[0]))
        conv.args, conv.kwargs = tuple(values[n] for n in names), {}
        gm.graph.erase_node(node)
    gm.recompile()
    return gm


def _attr(gm: nn.Module, node) -> torch.Tensor | None:
    if node is None:
        return None
    if isinstance(node, fx.Node) and node.op == "get_attr":
        obj = gm
        for part in node.target.split("."):
            obj = getattr(obj, part)
        return obj
    raise TypeError("not a parameter")


def _conv_geometry(gm: nn.Module, modules: dict, node: fx.Node):
    """(weight, bias, stride, padding, dilation, groups) of a 2-D convolution node with numeric
    zero padding, or None."""
    if node.op == "call_module" and type(modules.get(node.target)) is nn.Conv2d:
        m = modules[node.target]
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            return None
        return m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups
    if node.op == "call_function" and node.target is F.conv2d:
        names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
        defaults = (None, None, None, 1, 0, 1, 1)
        values = dict(zip(names, defaults))
        values.update(zip(names, node.args))
        values.update(node.kwargs)
        try:
            weight, bias = _attr(gm, values["weight"]), _attr(gm, values["bias"])
        except TypeError:
            return None
        if isinstance(values["padding"], str):
            return None
        pair = torch.nn.modules.utils._pair
        return weight, bias, pair(values["stride"]), pair(values["padding"]), pair(values["dilation"]), values["groups"]
    return None


@dataclass
class Patch:
    """The batch's values of one map: ``base`` (1, C, H, W) everywhere except the box of
    ``data`` (B, C, h, w) whose top-left corner is at rows ``y`` and columns ``x`` (B,)."""

    base: torch.Tensor
    data: torch.Tensor
    y: torch.Tensor
    x: torch.Tensor

    @property
    def batch(self) -> int:
        return self.data.shape[0]

    def full(self) -> torch.Tensor:
        """The (B, C, H, W) maps."""
        if tuple(self.data.shape[-2:]) == tuple(self.base.shape[-2:]):
            return self.data
        out = repeat(self.base, self.batch)
        zero = torch.zeros_like(self.y)
        return self._paste(out, zero, zero)

    def window(
        self,
        y: torch.Tensor,
        x: torch.Tensor,
        h: int,
        w: int,
        padded: torch.Tensor,
        pad_top: int,
        pad_left: int,
        value: float = 0.0,
    ) -> torch.Tensor:
        """The (B, C, h, w) values at rows ``y..y+h`` and columns ``x..x+w`` (map coordinates,
        negative inside the padding) of the maps; ``padded`` is the base map padded with ``value``
        by ``pad_top`` and ``pad_left`` (and enough on the other sides)."""
        ph, pw = self.data.shape[-2:]
        if (ph, pw) == (h, w) and torch.equal(y, self.y) and torch.equal(x, self.x):
            return self.data  # the window is the patch (a 1 x 1 convolution, a pool without halo)
        if (ph, pw) == tuple(self.base.shape[-2:]) and bool((y == y[0]).all() and (x == x[0]).all()):
            top, left = -int(y[0]), -int(x[0])  # the patch is the whole map: pad (or cut) it alike
            return pad_maps(self.data, top, h - top - ph, left, w - left - pw, value)
        return self._paste(gather(padded, y + pad_top, x + pad_left, h, w), y, x)

    def _paste(self, out: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Write the patch into ``out`` (B, C, h, w), whose top-left corners are at ``(y, x)``:
        one slice assignment per distinct offset of the patch in it."""
        ph, pw = self.data.shape[-2:]
        h, w = out.shape[-2:]
        groups: dict[tuple[int, int], list[int]] = {}
        for b, key in enumerate(zip((self.y - y).tolist(), (self.x - x).tolist())):
            groups.setdefault(key, []).append(b)
        for (oy, ox), members in groups.items():
            a0, a1, b0, b1 = max(0, oy), min(h, oy + ph), max(0, ox), min(w, ox + pw)
            if a1 <= a0 or b1 <= b0:
                continue
            if members[-1] - members[0] + 1 == len(members):  # consecutive copies: a plain slice copy
                m = slice(members[0], members[-1] + 1)
                out[m, :, a0:a1, b0:b1] = self.data[m, :, a0 - oy : a1 - oy, b0 - ox : b1 - ox]
            else:
                index = torch.tensor(members)
                out[index, :, a0:a1, b0:b1] = self.data[index, :, a0 - oy : a1 - oy, b0 - ox : b1 - ox]
        return out


def gather(maps: torch.Tensor, y: torch.Tensor, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The (B, C, h, w) boxes of the (1, C, H, W) ``maps`` at rows ``y`` and columns ``x`` (B,), copied."""
    ys, xs = y.tolist(), x.tolist()
    if len(set(ys)) == 1 and len(set(xs)) == 1:
        return repeat(maps[:, :, ys[0] : ys[0] + h, xs[0] : xs[0] + w], len(ys))
    return torch.cat([maps[:, :, a : a + h, b : b + w] for a, b in zip(ys, xs)])


def _ceil_div(a: torch.Tensor, b: int) -> torch.Tensor:
    return -torch.div(-a, b, rounding_mode="floor")


def _out_box(start: torch.Tensor, size: int, k: int, s: int, p: int, d: int, n_out: int):
    """Output positions ``[o, o + n)`` (one ``n`` for the batch) of a sliding window op (kernel
    ``k``, stride ``s``, padding ``p``, dilation ``d``) whose input changed at ``[start, start + size)``."""
    lo = _ceil_div(start + p - (k - 1) * d, s).clamp(min=0)
    hi = torch.div(start + size - 1 + p, s, rounding_mode="floor").clamp(max=n_out - 1)
    n = int((hi - lo + 1).max())
    return lo.clamp(max=n_out - n), n


class IncrementalOcclusion:
    """Scores of a batch of occluded copies of one image, computing only what each occluder
    changes. ``model`` maps (N, C, H, W) to logits; it is traced and folded once. ``runtime``:
    where the rest of the network runs once every map it reads is changed as a whole
    (:mod:`deepcovid.explain.tail`): ``onnxruntime`` or ``torch``."""

    def __init__(self, model: nn.Module, runtime: str = "onnxruntime") -> None:
        if runtime not in RUNTIMES:
            raise InputError(f"unknown runtime {runtime!r} for the whole-map layers; valid: {', '.join(RUNTIMES)}")
        self.runtime = runtime
        self.gm = fold_padding(fold_batchnorm(model)).to(memory_format=CL)
        self._nodes = list(self.gm.graph.nodes)
        self._segments: dict[tuple, object] = {}  # by start node and image size
        self._tails: dict[tuple, tuple[Tail, int]] = {}  # those run so far: (tail, multiply-adds per copy)
        self.modules = dict(self.gm.named_modules())
        self._overwritable = {node for node in self.gm.graph.nodes if self._sole_owner(node)}
        self._base: dict[fx.Node, object] = {}
        self._padded: dict = {}
        self.winograd = {
            node: Conv3x3(g[0], g[1])
            for node in self.gm.graph.nodes  # the convolutions
            if (g := _conv_geometry(self.gm, self.modules, node)) is not None  # it speeds up
            and Conv3x3.useful(g[0], g[2], g[4], g[5])
        }
        self._lock = threading.Lock()  # batches may run in threads (the multiply-add count)
        self.image_macs = 0  # convolution multiply-adds of one plain forward pass of the image
        self.macs = 0  # those of the occluded passes since :meth:`set_image`

    def _sole_owner(self, node: fx.Node) -> bool:
        """Whether ``node`` may overwrite its input's values: nothing else reads them, and they are
        computed in the occluded pass (not the caller's input or a parameter), also through the
        operations that pass their input on (padding, identity, dropout, activations)."""
        if (
            node.op == "call_module"
            and isinstance(self.modules[node.target], _ACTIVATIONS)
            or node.op == "call_function"
            and node.target in _INPLACE_FUNCTIONS
        ):
            src = node.args[0] if node.args else None
            while isinstance(src, fx.Node) and len(src.users) == 1 and src.op not in ("placeholder", "get_attr"):
                module = self.modules.get(src.target) if src.op == "call_module" else None
                if not (
                    isinstance(module, _ALIASING) or src.op == "call_function" and src.target in _ALIASING_FUNCTIONS
                ):
                    return True
                src = src.args[0]
        return False

    @torch.inference_mode()
    def set_image(self, image: torch.Tensor) -> torch.Tensor:
        """Run the unoccluded (1, C, H, W) ``image`` once; return its output."""
        self._padded.clear()
        image = image.contiguous(memory_format=CL)
        base: dict[fx.Node, object] = {}

        class Recorder(fx.Interpreter):
            def run_node(self, n):
                base[n] = super().run_node(n)
                return base[n]

        out = Recorder(self.gm).run(image)
        self._base = base
        self._size = tuple(image.shape)
        self.macs = 0
        self.image_macs = sum(
            _conv_macs(g[0], base[n])
            for n in self.gm.graph.nodes
            if (g := _conv_geometry(self.gm, self.modules, n)) is not None
        )
        return out

    @torch.inference_mode()
    def __call__(self, data: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Outputs for the image of :meth:`set_image` with its box at ``(y, x)`` replaced by
        ``data`` (B, C, h, w) in each copy."""
        env: dict[fx.Node, object] = {}
        i = 0
        while i < len(self._nodes):
            node = self._nodes[i]
            if (
                self.runtime == "onnxruntime"
                and node.op not in ("placeholder", "get_attr", "output")
                and (tail := self._tail(i, env)) is not None
            ):
                tail, macs = tail
                outs = tail([_full(env[n]) for n in tail.segment.inputs])
                env.update(zip(tail.segment.outputs, outs))
                self._count(macs * data.shape[0])
                i = tail.segment.end
                continue
            i += 1
            if node.op == "placeholder":
                env[node] = Patch(self._base[node], data.contiguous(memory_format=CL), y, x)
            elif node.op == "get_attr":
                env[node] = self._base[node]
            elif node.op == "output":
                return _full(fx.map_arg(node.args[0], lambda n: env[n]))
            else:
                env[node] = self._run(node, env)
        raise RuntimeError("graph without output")

    def _tail(self, start: int, env: dict) -> tuple[Tail, int] | None:
        """The segment starting at node ``start``, run in ONNX Runtime, with its multiply-adds per
        copy, when every map it reads is changed as a whole in ``env``."""
        key = (start, self._size)
        if key not in self._segments:
            self._segments[key] = segment(self.gm, self._base, start, self._worth)
        seg = self._segments[key]
        if seg is None or not all(n in env and _whole(env[n]) for n in seg.inputs):
            return None
        with self._lock:
            if key not in self._tails:
                self._tails[key] = (
                    Tail(self.gm, seg, self._base),
                    sum(
                        _conv_macs(g[0], self._base[n])
                        for n in self._nodes[seg.start : seg.end]
                        if (g := _conv_geometry(self.gm, self.modules, n)) is not None
                    ),
                )
            return self._tails[key]

    def _worth(self, nodes: list[fx.Node]) -> bool:
        """Whether ONNX Runtime is worth it for these nodes: only where they hold a depthwise (grouped)
        convolution. Its gain is in those memory-bound layers and the activations fused around them;
        with dense convolutions alone it was slower than PyTorch or about as fast (ResNet18's layer3
        and layer4 lose Winograd's algorithm there). Measured in docs/explanations.md."""
        return any((g := _conv_geometry(self.gm, self.modules, n)) is not None and g[5] > 1 for n in nodes)

    def _run(self, node: fx.Node, env: dict):
        args = fx.map_arg(node.args, lambda n: env[n])
        kwargs = fx.map_arg(node.kwargs, lambda n: env[n])
        module = self.modules.get(node.target) if node.op == "call_module" else None
        first = args[0] if args else None
        if isinstance(first, Patch) and not any(isinstance(a, Patch) for a in list(args[1:]) + list(kwargs.values())):
            patched = self._patched(node, module, first, args, kwargs)
            if patched is not None:
                return patched
        if node.op == "call_method" and node.target == "size" and isinstance(first, Patch):  # not the full maps
            shape = torch.Size([first.batch, *first.base.shape[1:]])
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            return shape if dim is None else shape[dim]
        if (
            node.op == "call_function"
            and node.target in _ADD
            and len(args) == 2
            and not kwargs
            and all(isinstance(a, Patch) for a in args)
        ):
            return self._union(node, list(args), lambda parts: parts[0] + parts[1])
        if (
            node.op == "call_function"
            and node.target is torch.cat
            and isinstance(first, (list, tuple))
            and all(isinstance(a, Patch) for a in first)
            and _cat_dim(args, kwargs) == 1
        ):
            return self._union(node, list(first), lambda parts: torch.cat(parts, 1))
        args, kwargs = _full(args), _full(kwargs)
        if module is not None:
            out = module(*args, **kwargs)
        elif node.op == "call_method":
            out = getattr(args[0], node.target)(*args[1:], **kwargs)
        else:
            out = node.target(*args, **kwargs)
        if isinstance(module, nn.Conv2d) or node.target is F.conv2d:  # a convolution run on whole maps
            self._count(_conv_macs(module.weight if module is not None else kwargs.get("weight", args[1]), out))
        return out

    def _patched(self, node, module, p: Patch, args, kwargs) -> Patch | torch.Tensor | None:
        base = self._base[node]
        if module is not None and isinstance(module, _UNARY_MODULES) and len(args) == 1 and not kwargs:
            if node in self._overwritable:  # in place: a large batch of patches is not allocated twice
                return Patch(base, _activation_inplace(module, p.data), p.y, p.x)
            return Patch(base, module(p.data), p.y, p.x)
        if node.op == "call_function" and node.target in _UNARY_FUNCTIONS:
            if node in self._overwritable:
                return Patch(base, _INPLACE_FUNCTIONS[node.target](p.data, *args[1:], **kwargs), p.y, p.x)
            return Patch(base, node.target(p.data, *args[1:], **kwargs), p.y, p.x)
        geometry = _conv_geometry(self.gm, self.modules, node)
        if geometry is not None:
            weight, bias, stride, padding, dilation, groups = geometry
            k = weight.shape[-2:]
            if node in self.winograd:  # Winograd's algorithm on large patches (windows only)
                op = lambda win, pads: self.winograd[node](win) if pads == (0, 0) else None  # noqa: E731
            else:
                op = lambda maps, pads: F.conv2d(maps, weight, bias, stride, pads, dilation, groups)  # noqa: E731
            out = self._sliding(node, p, k, stride, padding, dilation, 0.0, op)
            self._count(_conv_macs(weight, out.data))
            return out
        if isinstance(module, nn.ZeroPad2d) or (node.op == "call_function" and node.target is F.pad):
            pads = module.padding if module is not None else args[1]
            mode = "constant" if module is not None else (args[2] if len(args) > 2 else kwargs.get("mode", "constant"))
            value = 0.0 if module is not None else (args[3] if len(args) > 3 else kwargs.get("value", 0.0))
            if len(pads) == 4 and mode == "constant" and not value and min(pads) >= 0:
                if p.data.shape[-2:] == self._base[node.args[0]].shape[-2:]:  # whole maps: pad them (a
                    zero = torch.zeros_like(p.y)  # copy either way, and the smallest)
                    return Patch(base, pad_maps(p.data, pads[2], pads[3], pads[0], pads[1]), zero, zero)
                return Patch(base, p.data, p.y + pads[2], p.x + pads[0])
            return None
        if isinstance(module, nn.MaxPool2d) and not module.return_indices:
            pair = torch.nn.modules.utils._pair
            k, s, pad, d = pair(module.kernel_size), pair(module.stride), pair(module.padding), pair(module.dilation)
            return self._sliding(
                node, p, k, s, pad, d, -math.inf, lambda maps, pads: F.max_pool2d(maps, k, s, pads, d, ceil_mode=False)
            )
        if isinstance(module, nn.AvgPool2d) and not module.ceil_mode and module.divisor_override is None:
            pair = torch.nn.modules.utils._pair
            k, s, pad = pair(module.kernel_size), pair(module.stride), pair(module.padding)
            if module.count_include_pad or pad == (0, 0):
                return self._sliding(
                    node,
                    p,
                    k,
                    s,
                    pad,
                    (1, 1),
                    0.0,
                    lambda maps, pads: F.avg_pool2d(maps, k, s, pads, ceil_mode=False, count_include_pad=True),
                )
            return None
        global_pool = (isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1))) or (
            node.op == "call_function"
            and node.target is F.adaptive_avg_pool2d
            and len(args) == 2
            and args[1] in (1, (1, 1))
            and not kwargs
        )
        if global_pool:
            before = self._base[node.args[0]]
            covered = gather(before, p.y, p.x, *p.data.shape[-2:])
            return base + (p.data - covered).sum(dim=(2, 3), keepdim=True) / before.shape[-2:].numel()
        return None

    def _count(self, macs: int) -> None:
        with self._lock:
            self.macs += macs

    def _pad(self, node, top: int, bottom: int, left: int, right: int, value: float) -> torch.Tensor:
        key = (node, top, bottom, left, right, value)
        if key not in self._padded:
            self._padded[key] = F.pad(self._base[node], (left, right, top, bottom), value=value)
        return self._padded[key]

    def _sliding(self, node, p: Patch, k, s, pad, d, pad_value: float, op) -> Patch:
        """The output patch of a sliding-window operation: ``op(maps, padding)`` runs it on a window
        of the patched maps with ``padding`` (0, 0), or on the whole maps with the layer's own padding
        when the output patch is the whole map (no padded copy; ``op`` may return None to decline)."""
        src = node.args[0]
        n_in, m_in = self._base[src].shape[-2:]
        n_out, m_out = self._base[node].shape[-2:]
        oy, h = _out_box(p.y, p.data.shape[-2], k[0], s[0], pad[0], d[0], n_out)
        ox, w = _out_box(p.x, p.data.shape[-1], k[1], s[1], pad[1], d[1], m_out)
        if (h, w) == (n_out, m_out) and tuple(pad) != (0, 0):
            out = op(p.full(), tuple(pad))
            if out is not None:
                return Patch(self._base[node], out, oy, ox)
        span_h, span_w = (h - 1) * s[0] + (k[0] - 1) * d[0] + 1, (w - 1) * s[1] + (k[1] - 1) * d[1] + 1
        bottom = max(pad[0], (n_out - 1) * s[0] - pad[0] + (k[0] - 1) * d[0] + 1 - n_in)
        right = max(pad[1], (m_out - 1) * s[1] - pad[1] + (k[1] - 1) * d[1] + 1 - m_in)
        padded = self._pad(src, pad[0], bottom, pad[1], right, pad_value)
        win = p.window(oy * s[0] - pad[0], ox * s[1] - pad[1], span_h, span_w, padded, pad[0], pad[1], pad_value)
        return Patch(self._base[node], op(win, (0, 0)), oy, ox)

    def _union(self, node, parts: list[Patch], combine) -> Patch:
        n, m = parts[0].base.shape[-2:]
        y0 = torch.stack([q.y for q in parts]).min(0).values
        x0 = torch.stack([q.x for q in parts]).min(0).values
        y1 = torch.stack([q.y + q.data.shape[-2] for q in parts]).max(0).values
        x1 = torch.stack([q.x + q.data.shape[-1] for q in parts]).max(0).values
        h, w = int((y1 - y0).max()), int((x1 - x0).max())
        y0, x0 = y0.clamp(max=n - h), x0.clamp(max=m - w)
        same = all(torch.equal(q.y, y0) and torch.equal(q.x, x0) and q.data.shape[-2:] == (h, w) for q in parts)
        data = [q.data if same else q.window(y0, x0, h, w, q.base, 0, 0) for q in parts]
        return Patch(self._base[node], combine(data), y0, x0)


def _conv_macs(weight: torch.Tensor, out: torch.Tensor) -> int:
    """Multiply-adds of a convolution with ``weight`` (O, C / groups, kh, kw) that gave ``out``."""
    return out.numel() * weight[0].numel()


def _cat_dim(args, kwargs) -> int:
    return args[1] if len(args) > 1 else kwargs.get("dim", 0)


def _whole(value) -> bool:
    """Whether ``value`` is a batch of maps to treat as changed as a whole: a tensor, or a patch
    covering at least :data:`WHOLE` of its map."""
    if isinstance(value, Patch):
        return value.data.shape[-2:].numel() >= WHOLE * value.base.shape[-2:].numel()
    return isinstance(value, torch.Tensor)


def _full(value):
    """``value`` with every :class:`Patch` replaced by its full maps."""
    if isinstance(value, Patch):
        return value.full()
    if isinstance(value, (list, tuple)):
        return type(value)(_full(v) for v in value)
    if isinstance(value, dict):
        return {k: _full(v) for k, v in value.items()}
    return value
