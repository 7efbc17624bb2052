"""The rest of a network on whole maps, in ONNX Runtime.

Incremental occlusion recomputes a patch of each layer; once the patches of the values the next
layers read have grown to (most of) their maps, the rest of the network might as well be a plain
forward pass of the batch of occluded copies on whole maps. That part is cut out of the traced
graph (:func:`segment`), exported to ONNX once and run by ONNX Runtime, whose CPU kernels
(blocked channel layout, convolution and activation fused, depthwise kernels) run networks with
depthwise convolutions faster than PyTorch's eager channels_last forward (docs/explanations.md,
bench/occlusion_speed.py). It rounds differently from PyTorch (about 1e-6 of the logits).

A segment starts at a node boundary and runs while every value it reads is a tensor (in the
unoccluded pass): it stops before a node that reads a Python number (``x.view(x.size(0), -1)``
reads the batch size) or at the output; the rest runs in PyTorch as before.
"""

from __future__ import annotations

import io
import threading
import warnings
from dataclasses import dataclass

import torch
import torch.fx as fx

from deepcovid.errors import StateError
from deepcovid.explain.channels_last import CL

_EXPORTING = threading.Lock()  # torch.onnx.export keeps global state: one export at a time


def _inputs(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.map_arg((node.args, node.kwargs), lambda n: found.append(n) or n)
    return found


@dataclass
class Segment:
    """The graph's nodes ``start`` to ``end`` (exclusive, in order), reading ``inputs`` from before
    them and giving ``outputs`` to the nodes after them."""

    start: int
    end: int
    inputs: list[fx.Node]
    outputs: list[fx.Node]


def segment(gm: fx.GraphModule, base: dict, start: int, worth) -> Segment | None:
    """The segment of ``gm``'s nodes that starts at index ``start`` (see the module docstring), given
    the values ``base`` of the unoccluded pass; None unless ``worth(nodes)`` says that ONNX Runtime
    is worth it for its nodes."""
    nodes = list(gm.graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    end = start
    while end < len(nodes):
        node = nodes[end]
        if (
            node.op in ("output", "placeholder")
            or not isinstance(base.get(node), torch.Tensor)
            or any(n.op != "get_attr" and not isinstance(base.get(n), torch.Tensor) for n in _inputs(node))
        ):
            break
        end += 1
    inside = nodes[start:end]
    if not inside or not worth(inside):
        return None
    inputs = [n for n in nodes[:start] if n.op != "get_attr" and any(start <= index[u] < end for u in n.users)]
    outputs = [n for n in inside if any(index[u] >= end for u in n.users)]
    return Segment(start, end, inputs, outputs)


def extract(gm: fx.GraphModule, seg: Segment) -> fx.GraphModule:
    """A module computing ``seg.outputs`` (a tuple) from ``seg.inputs`` (positional)."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {n: graph.placeholder(f"in{k}") for k, n in enumerate(seg.inputs)}

    def arg(n: fx.Node) -> fx.Node:
        if n not in env:  # a parameter read before the segment starts
            env[n] = graph.get_attr(n.target)
        return env[n]

    for node in list(gm.graph.nodes)[seg.start : seg.end]:
        env[node] = graph.node_copy(node, arg)
    graph.output(tuple(env[n] for n in seg.outputs))
    return fx.GraphModule(gm, graph)


class Tail:
    """One segment run by ONNX Runtime: ``tail(maps)`` takes the (B, ...) values of the segment's
    inputs and returns those of its outputs. Exported on first use, one session per thread count."""

    def __init__(self, gm: fx.GraphModule, seg: Segment, base: dict) -> None:
        self.segment = seg
        self._module = extract(gm, seg)
        self._samples = tuple(base[n].expand(2, *base[n].shape[1:]).contiguous() for n in seg.inputs)
        self._onnx: bytes | None = None
        self._sessions: dict[int, object] = {}
        self._lock = threading.Lock()

    def _session(self, threads: int):
        with self._lock:
            if threads not in self._sessions:
                import onnxruntime as ort

                if self._onnx is None:
                    names = [f"in{k}" for k in range(len(self.segment.inputs))]
                    outs = [f"out{k}" for k in range(len(self.segment.outputs))]
                    buffer = io.BytesIO()
                    with _EXPORTING, warnings.catch_warnings():  # (and the exporter's deprecation notices)
                        warnings.simplefilter("ignore")
                        torch.onnx.export(
                            self._module,
                            self._samples,
                            buffer,
                            dynamo=False,
                            input_names=names,
                            output_names=outs,
                            dynamic_axes={n: {0: "batch"} for n in names + outs},
                        )
                    self._onnx = buffer.getvalue()
                options = ort.SessionOptions()
                options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no busy waiting
                self._sessions[threads] = ort.InferenceSession(self._onnx, options, providers=["CPUExecutionProvider"])
            return self._sessions[threads]

    def __call__(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        session = self._session(torch.get_num_threads())
        feed = {f"in{k}": m.contiguous().numpy() for k, m in enumerate(maps)}
        outs = session.run(None, feed)
        if len(outs) != len(self.segment.outputs):
            raise StateError(f"the ONNX Runtime segment gave {len(outs)} outputs, expected {len(self.segment.outputs)}")
        return [torch.from_numpy(o).contiguous(memory_format=CL) if o.ndim == 4 else torch.from_numpy(o) for o in outs]
