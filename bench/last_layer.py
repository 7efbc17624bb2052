"""Last-layer training on cached features vs. the paper's code path, on the same images.

- cached (this project): the frozen backbone runs ONCE over every image
  (:func:`deepcovid.model.features.extract_features`, channels_last, as the featurize stage),
  then :func:`deepcovid.model.training.train_head` trains the head on the feature matrix;
- naive (the paper's code): :func:`deepcovid.model.training.train_head` with ``encode=backbone``,
  i.e. every training and validation image goes through the frozen backbone in every
  epoch (as a model with ``requires_grad=False`` layers trained by a plain loop does).

Both start from the same head and seed, so they must give the same head (the max abs
difference is printed). Images are random tensors already in memory, so neither path
pays for decoding or resizing (which would only add to the naive path's per-epoch cost).

The naive cost grows with the epochs, the cached one hardly: the script also projects
both to the paper's 100 epochs from the measured costs (cached: extraction once + 100 x
the per-epoch head cost; naive: 100 x its per-epoch cost). The last line is always
``projected speed-up at 100 epochs: X.Xx``.

    python bench/last_layer.py                          # resnet18, 200 images, 2 epochs (~2 min on 2 cores)
    python bench/last_layer.py --arch squeezenet --images 100 --epochs 2
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deepcovid.model.architectures import ARCHITECTURES, split_backbone_head  # noqa: E402
from deepcovid.model.features import extract_features  # noqa: E402
from deepcovid.model.training import train_head  # noqa: E402
from deepcovid.model.weights import build_model  # noqa: E402

PAPER_EPOCHS = 100


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet18", choices=ARCHITECTURES)
    p.add_argument("--weights", default="none", help="none (offline default), imagenet or a state_dict path")
    p.add_argument("--images", type=int, default=200, help="images in all (train + validation)")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--epochs", type=int, default=2, help="epochs actually run by both paths")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=20, help="head training batch (the paper: 20)")
    p.add_argument("--feature-batch-size", type=int, default=64, help="extraction batch (train.feature_batch_size)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (the paper: 1e-4)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch intra-op threads")
    p.add_argument(
        "--head-threads",
        type=int,
        default=1,
        help="torch threads while the cached path trains its head: a 512x2 layer gains nothing "
        "from more, and on busy cores a second thread can cost 50x in synchronisation",
    )
    p.add_argument(
        "--naive-channels-last",
        action="store_true",
        help="give the naive path the channels_last layout too (the paper's code does not)",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if (
        min(
            args.images,
            args.epochs,
            args.image_size,
            args.batch_size,
            args.feature_batch_size,
            args.threads,
            args.head_threads,
        )
        < 1
    ):
        p.error(
            "--images, --epochs, --image-size, --batch-size, --feature-batch-size, --threads and "
            "--head-threads must be >= 1"
        )
    if not 0 <= args.val_fraction < 1:
        p.error("--val-fraction must be in [0, 1)")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    images = torch.randn(args.images, 3, args.image_size, args.image_size, generator=gen)
    labels = torch.arange(args.images) % 2
    n_val = int(round(args.images * args.val_fraction))
    n_train = args.images - n_val
    torch.manual_seed(args.seed)
    model, _ = build_model(args.arch, args.weights)
    print(
        f"{args.arch} (weights {args.weights}), {n_train} train + {n_val} val images at "
        f"{args.image_size}px, {args.epochs} epochs, batch {args.batch_size}, {args.threads} threads "
        f"(cached head: {args.head_threads})"
    )

    cached_bb, cached_head = split_backbone_head(copy.deepcopy(model), args.arch)
    naive_bb, naive_head = split_backbone_head(copy.deepcopy(model), args.arch)
    naive_bb.eval()
    encode = naive_bb
    if args.naive_channels_last:
        naive_bb.to(memory_format=torch.channels_last)

        def encode(x):
            return naive_bb(x.contiguous(memory_format=torch.channels_last))

    kw = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)

    # untimed warm-up: oneDNN primitives of both layouts, and the first Adam / train_head
    # call (seconds of one-off lazy imports that would otherwise be charged to one path)
    with torch.no_grad():
        extract_features(copy.deepcopy(cached_bb), TensorDataset(images[:2], labels[:2]), progress=False)
        dim = encode(images[:2]).shape[1]
    for threads in {args.threads, args.head_threads}:
        torch.set_num_threads(threads)
        train_head(
            copy.deepcopy(cached_head),
            torch.zeros(4, dim),
            labels[:4],
            torch.zeros(2, dim),
            labels[:2],
            **{**kw, "epochs": 1},
        )
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    feats = torch.from_numpy(
        extract_features(cached_bb, TensorDataset(images, labels), batch_size=args.feature_batch_size, progress=False)
    )
    t_extract = time.perf_counter() - t0
    torch.set_num_threads(args.head_threads)
    t0 = time.perf_counter()
    cached_head, head_hist, _ = train_head(
        cached_head, feats[:n_train], labels[:n_train], feats[n_train:], labels[n_train:], **kw
    )
    t_head = time.perf_counter() - t0
    torch.set_num_threads(args.threads)
    t_cached = t_extract + t_head

    t0 = time.perf_counter()
    naive_head, naive_hist, _ = train_head(
        naive_head, images[:n_train], labels[:n_train], images[n_train:], labels[n_train:], encode=encode, **kw
    )
    t_naive = time.perf_counter() - t0

    a, b = cached_head.state_dict(), naive_head.state_dict()
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    # per-epoch costs from train_head's own epoch timings; what lies outside the epochs
    # (optimizer set-up, the final state copy) is a one-off
    head_epoch = sum(h.seconds for h in head_hist) / len(head_hist)
    naive_epoch = sum(h.seconds for h in naive_hist) / len(naive_hist)
    head_once = max(t_head - head_epoch * len(head_hist), 0.0)
    naive_once = max(t_naive - naive_epoch * len(naive_hist), 0.0)
    cached_100 = t_extract + head_once + PAPER_EPOCHS * head_epoch
    naive_100 = naive_once + PAPER_EPOCHS * naive_epoch

    print(
        f"cached: extraction {t_extract:.2f} s ({args.images / t_extract:.1f} images/s) + head "
        f"{t_head:.3f} s ({head_epoch * 1e3:.1f} ms/epoch) = {t_cached:.2f} s"
    )
    print(
        f"naive:  {t_naive:.2f} s ({naive_epoch:.2f} s/epoch, "
        f"{args.images * args.epochs / t_naive:.1f} images/s; fastest epoch "
        f"{min(h.seconds for h in naive_hist):.2f} s)"
    )
    print(f"measured speed-up at {args.epochs} epochs: {t_naive / t_cached:.1f}x")
    print(f"max abs difference of the heads: {diff:.3g}")
    print(f"projected at {PAPER_EPOCHS} epochs: cached {cached_100:.1f} s, naive {naive_100:.1f} s")
    print(f"projected speed-up at {PAPER_EPOCHS} epochs: {naive_100 / cached_100:.1f}x")


if __name__ == "__main__":
    main()
