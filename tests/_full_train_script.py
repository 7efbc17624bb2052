"""Helper for tests/test_training.py: a tiny full fine-tuning run in its own process.

Trains a randomly initialised resnet18 end to end with :func:`deepcovid.model.training.train_full`
on the PNGs of ``--data`` (``train/<label>_*.png`` and ``val/<label>_*.png``), with the
project's augmentation, a checkpoint at ``--checkpoint`` and, under torchrun, DDP (gloo).

Outputs, in ``--out``:

- ``final.pt`` (rank 0 only): the returned (best-epoch) state_dict, the history and the
  best epoch;
- ``ranks/rank<R>.json`` (every rank; a test instrument, not a result): how many times
  this rank wrote a checkpoint and called ``on_epoch``, its history and a digest of its
  final weights.

One line ``epoch <N> ...`` is printed (flushed) per epoch. With the environment variable
``DEEPCOVID_TEST_EPOCH_SLEEP=<seconds>`` the run sleeps that long after every epoch, so
that a test can kill it reliably mid-run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--num-workers", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")

    from deepcovid.config import Augment
    from deepcovid.model import environment, training
    from deepcovid.model.architectures import preprocessing
    from deepcovid.model.datasets import ImageDataset
    from deepcovid.model.features import state_digest
    from deepcovid.model.presets import eval_transform, train_transform
    from deepcovid.model.weights import build_model

    device = environment.resolve_device("cpu")
    distributed = environment.init_distributed(device)
    rank = torch.distributed.get_rank() if distributed else 0

    saves = {"n": 0}
    save_checkpoint = training.save_checkpoint

    def counting_save(obj, path):
        saves["n"] += 1
        save_checkpoint(obj, path)

    training.save_checkpoint = counting_save  # count checkpoint writes of this rank

    sleep = float(os.environ.get("DEEPCOVID_TEST_EPOCH_SLEEP", "0"))
    calls = {"n": 0}

    def on_epoch(entry) -> None:
        calls["n"] += 1
        print(f"epoch {entry.epoch} train_loss {entry.train_loss:.6f} val_loss {entry.val_loss:.6f}", flush=True)
        if sleep:
            time.sleep(sleep)

    data = Path(args.data)

    def files(split: str) -> tuple[list[str], list[int]]:
        paths = sorted((data / split).glob("*.png"))
        return [str(p) for p in paths], [int(p.name.split("_")[0]) for p in paths]

    environment.seed_everything(args.seed)
    model, _ = build_model("resnet18", "none")
    prep = preprocessing("resnet18")
    aug = Augment(
        copies=1,
        hflip_p=0.5,
        rotation_degrees=10,
        translate=0.05,
        scale=[0.95, 1.05],
        shear_degrees=5,
        elastic_alpha=3.0,
        elastic_grid=5,
    )
    train_set = ImageDataset(*files("train"), train_transform(prep, args.image_size, aug))
    val_set = ImageDataset(*files("val"), eval_transform(prep, args.image_size))

    model, history, best_epoch = training.train_full(
        model,
        train_set,
        val_set,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=device,
        checkpoint=Path(args.checkpoint),
        num_workers=args.num_workers,
        on_epoch=on_epoch,
    )

    out = Path(args.out)
    hist = [{"epoch": h.epoch, "train_loss": h.train_loss, "val_loss": h.val_loss} for h in history]
    (out / "ranks").mkdir(parents=True, exist_ok=True)
    (out / "ranks" / f"rank{rank}.json").write_text(
        json.dumps(
            {
                "rank": rank,
                "world_size": torch.distributed.get_world_size() if distributed else 1,
                "checkpoint_saves": saves["n"],
                "on_epoch_calls": calls["n"],
                "history": hist,
                "best_epoch": best_epoch,
                "state_sha256": state_digest(model),
            }
        )
    )
    if rank == 0:
        torch.save({"state": model.state_dict(), "history": hist, "best_epoch": best_epoch}, out / "final.pt")
    if distributed:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
