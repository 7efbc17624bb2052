"""CPU throughput of backbone feature extraction, next to the machine's fp32 matmul rate.

For each architecture the frozen backbone of :func:`deepcovid.model.architectures.split_backbone_head`
runs under ``torch.inference_mode`` on batches of random 224x224 images. The script
prints images/s, the achieved GFLOP/s (forward FLOPs of one image counted with
``torch.utils.flop_counter.FlopCounterMode``, i.e. convolution and matmul FLOPs, 2 per
multiply-add) and the fraction of the fp32 matmul rate, measured in the same run with a
large ``torch.matmul`` (MKL sgemm) before the models and between the batches of
resnet18. The last line is always
``resnet18 fraction of fp32 matmul peak: X.XX``.

Rates are taken from the fastest timed batch (and the fastest matmul round): on a
machine whose cores are shared with other processes this is the figure least disturbed
by them; the median batch is printed too.

    python bench/feature_throughput.py                         # all architectures, defaults
    python bench/feature_throughput.py --archs resnet18 --sweep  # try batch/layout/fusion
    python bench/feature_throughput.py --batch-size 32 --no-channels-last --no-fuse-bn
    python bench/feature_throughput.py --archs efficientnet_lite0 --runtime onnxruntime --batch-size 64

Options that help inference on CPU (see --sweep): channels_last memory format (oneDNN's
preferred layout for convolutions) and folding BatchNorm into the preceding convolution
(``torch.fx.experimental.optimization.fuse``, inference only). ``--compile`` adds
``torch.compile`` with inductor's weight freezing (tens of seconds of compilation per
architecture on 2 cores; on the 2-core AMD EPYC it did not beat the eager fused,
channels_last backbone, so it is off by default).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deepcovid.model.architectures import ARCHITECTURES, split_backbone_head  # noqa: E402
from deepcovid.model.features import OnnxBackbone  # noqa: E402
from deepcovid.model.weights import build_model  # noqa: E402

REFERENCE = "resnet18"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--archs",
        default=",".join(ARCHITECTURES),
        help="comma-separated architectures (resnet18 is always measured, last)",
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--images", type=int, default=64, help="timed images per architecture")
    p.add_argument("--warmup", type=int, default=1, help="untimed batches per architecture")
    p.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads (default: all CPUs)"
    )
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument(
        "--runtime",
        choices=["torch", "onnxruntime"],
        default="torch",
        help="PyTorch eager, or ONNX Runtime as the featurize stage runs on the CPU",
    )
    p.add_argument(
        "--fuse-bn",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fold BatchNorm into the preceding conv (inference only)",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="torch.compile the backbone (minutes of compilation on a small CPU)",
    )
    p.add_argument("--matmul-size", type=int, default=2048)
    p.add_argument("--matmul-rounds", type=int, default=5)
    p.add_argument(
        "--conv-probe",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also probe a oneDNN 3x3 convolution (a second reference)",
    )
    p.add_argument(
        "--sweep", action="store_true", help="try batch sizes x channels_last x fuse_bn on each arch and report"
    )
    p.add_argument("--sweep-batches", default="1,4,8,16,32")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    names = [a.strip() for a in args.archs.split(",") if a.strip()]
    unknown = [a for a in names if a not in ARCHITECTURES]
    if unknown:
        p.error(f"unknown architecture(s) {', '.join(unknown)}; valid: {', '.join(ARCHITECTURES)}")
    args.arch_list = [a for a in dict.fromkeys(names) if a != REFERENCE] + [REFERENCE]
    if min(args.batch_size, args.images, args.threads, args.matmul_size) < 1 or args.warmup < 0:
        p.error("--batch-size, --images, --threads and --matmul-size must be >= 1")
    return args


# ---------------------------------------------------------------------------- probes


class MatmulProbe:
    """fp32 GFLOP/s of ``torch.matmul`` of two n x n matrices, one timed round at a time.

    Rounds run before the models and interleaved with the reference architecture's
    batches, so that the peak and the reference see the same (shared) machine.
    """

    def __init__(self, n: int):
        gen = torch.Generator().manual_seed(0)
        self.a = torch.randn(n, n, generator=gen)
        self.b = torch.randn(n, n, generator=gen)
        self.flops = 2.0 * n**3
        self.reps = max(1, int(round(2e10 / self.flops)))  # about 20 GFLOP per round
        self.rates: list[float] = []
        torch.matmul(self.a, self.b)  # warm-up

    def round(self) -> None:
        t0 = time.perf_counter()
        for _ in range(self.reps):
            torch.matmul(self.a, self.b)
        self.rates.append(self.flops * self.reps / (time.perf_counter() - t0) / 1e9)

    @property
    def peak(self) -> float:
        return max(self.rates)


class ConvProbe(MatmulProbe):
    """A second reference: a 3x3 convolution through oneDNN (channels_last, inference).

    On some CPUs (e.g. AMD EPYC with MKL) oneDNN's convolution kernels run faster than
    MKL's sgemm, so conv networks can exceed the "matmul peak"; this shows by how much.
    """

    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(16, 256, 28, 28, generator=gen).contiguous(memory_format=torch.channels_last)
        self.w = torch.randn(256, 256, 3, 3, generator=gen).contiguous(memory_format=torch.channels_last)
        self.flops = 2.0 * 16 * 256 * 256 * 9 * 28 * 28
        self.reps = 1
        self.rates = []
        self._run()

    def _run(self) -> None:
        with torch.inference_mode():
            torch.nn.functional.conv2d(self.x, self.w, padding=1)

    def round(self) -> None:
        t0 = time.perf_counter()
        self._run()
        self.rates.append(self.flops / (time.perf_counter() - t0) / 1e9)


def count_flops(module: torch.nn.Module, size: int = 224) -> int:
    x = torch.zeros(1, 3, size, size)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        module(x)
    return int(counter.get_total_flops())


# ------------------------------------------------------------------------- backbones


def make_backbone(name: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model, _ = build_model(name, weights="none")
    backbone, _ = split_backbone_head(model.eval(), name)
    return backbone.eval()


def optimise(backbone: torch.nn.Module, channels_last: bool, fuse_bn: bool, compile_: bool, runtime: str = "torch"):
    """Return (module, notes) prepared for inference with the requested options."""
    notes = []
    if runtime == "onnxruntime":  # the featurize stage's CPU path: exported once, run by ONNX Runtime
        onnx = OnnxBackbone(backbone, 224)
        return (lambda x: torch.from_numpy(onnx(x.contiguous()))), ["onnxruntime"]
    module = copy.deepcopy(backbone)  # the original stays the numerical reference
    if fuse_bn:
        try:
            from torch.fx.experimental.optimization import fuse

            module = fuse(module)
            notes.append("bn-fused")
        except Exception as exc:  # not symbolically traceable: keep it unfused
            notes.append(f"bn-fuse skipped ({type(exc).__name__})")
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
        notes.append("channels_last")
    if compile_:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # constant weights: lets inductor prepack them
        module = torch.compile(module)
        notes.append("compiled(freezing)")
    return module, notes


def check_same(reference, module, channels_last: bool, name: str) -> None:
    """The optimised backbone must compute the same features (to float rounding)."""
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        want = reference(x)
        got = module(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
    got, want = got.reshape(len(got), -1), want.reshape(len(want), -1)
    err = ((got - want).abs().max() / want.abs().max().clamp_min(1e-12)).item()
    if not err < 1e-3:
        raise SystemExit(f"{name}: optimised backbone differs from the reference (rel. {err:.2e})")


def time_batches(module, batch: int, images: int, warmup: int, channels_last: bool, between=None) -> list[float]:
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    n_batches = max(1, -(-images // batch))
    times = []
    with torch.inference_mode():
        for i in range(warmup + n_batches):
            t0 = time.perf_counter()
            xb = x.contiguous(memory_format=torch.channels_last) if channels_last else x
            module(xb)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
                if between is not None:
                    between()
    return times


def measure(name, args, batch, channels_last, fuse_bn, compile_, flops=None, between=None) -> dict:
    backbone = make_backbone(name, args.seed)
    if flops is None:
        flops = count_flops(backbone)
    module, notes = optimise(backbone, channels_last, fuse_bn, compile_, getattr(args, "runtime", "torch"))
    check_same(backbone, module, channels_last, name)
    times = time_batches(module, batch, args.images, args.warmup, channels_last, between)
    best = batch / min(times)
    median = batch / statistics.median(times)
    return {
        "arch": name,
        "batch": batch,
        "flops": flops,
        "ips_best": best,
        "ips_median": median,
        "gflops_best": best * flops / 1e9,
        "gflops_median": median * flops / 1e9,
        "notes": notes,
    }


# ------------------------------------------------------------------------------- main


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def sweep(args) -> None:
    batches = [int(b) for b in args.sweep_batches.split(",") if b.strip()]
    for name in args.arch_list:
        flops = count_flops(make_backbone(name, args.seed))
        for cl in (False, True):
            for fuse in (False, True):
                for b in batches:
                    r = measure(name, args, b, cl, fuse, False, flops)
                    print(
                        f"sweep {name:18s} batch {b:3d} channels_last {cl!s:5s} "
                        f"fuse_bn {fuse!s:5s}: {r['ips_best']:7.1f} images/s best, "
                        f"{r['ips_median']:7.1f} median, {r['gflops_best']:6.1f} GFLOP/s",
                        flush=True,
                    )


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    print(
        f"torch {torch.__version__}, {cpu_name()}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} threads, batch {args.batch_size}, "
        f"channels_last {args.channels_last}, fuse_bn {args.fuse_bn}, compile {args.compile}",
        flush=True,
    )
    if args.sweep:
        sweep(args)
    probe = MatmulProbe(args.matmul_size)
    conv = ConvProbe() if args.conv_probe else None

    def probe_round() -> None:
        probe.round()
        if conv is not None:
            conv.round()

    for _ in range(args.matmul_rounds):
        probe_round()
    results = []
    for name in args.arch_list:
        between = probe_round if name == REFERENCE else None
        results.append(
            measure(name, args, args.batch_size, args.channels_last, args.fuse_bn, args.compile, between=between)
        )
    peak = probe.peak
    print(
        f"fp32 matmul peak ({args.matmul_size}x{args.matmul_size} torch.matmul): "
        f"{peak:.1f} GFLOP/s (best of {len(probe.rates)} rounds; median "
        f"{statistics.median(probe.rates):.1f})"
    )
    if conv is not None:
        print(
            f"oneDNN 3x3 conv probe (channels_last, 256->256 ch, 28x28, batch 16): "
            f"{conv.peak:.1f} GFLOP/s (best of {len(conv.rates)})"
        )
    for r in results:
        print(
            f"{r['arch']:18s} {r['flops'] / 1e9:6.2f} GFLOP/image  "
            f"{r['ips_best']:7.1f} images/s ({r['ips_median']:.1f} median)  "
            f"{r['gflops_best']:6.1f} GFLOP/s  fraction {r['gflops_best'] / peak:.2f}  "
            f"[{', '.join(r['notes']) or 'plain'}]"
        )
    ref = next(r for r in results if r["arch"] == REFERENCE)
    if conv is not None:
        print(f"{REFERENCE} fraction of the oneDNN conv probe: {ref['gflops_best'] / conv.peak:.2f}")
    print(f"{REFERENCE} fraction of fp32 matmul peak: {ref['gflops_best'] / peak:.2f}")


if __name__ == "__main__":
    main()
