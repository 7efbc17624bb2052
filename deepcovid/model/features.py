"""Backbone features, computed once: the frozen part of a last-layer model never changes,
so its output for each image is cached (one float32 ``.npy``, an index CSV, a JSON record of
what produced them) and the head trains on the cache. :func:`featurize`: the featurize stage.
"""

from __future__ import annotations

import hashlib
import logging
import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from deepcovid import config, files
from deepcovid.model.architectures import preprocessing, split_backbone_head
from deepcovid.model.datasets import ImageDataset, load_table
from deepcovid.model.environment import compute_environment, resolve_device, seed_everything
from deepcovid.model.presets import eval_transform
from deepcovid.model.weights import build_model

log = logging.getLogger(__name__)


class OnnxBackbone:
    """A backbone exported once (``torch.onnx.export``, batch axis dynamic) and run by ONNX Runtime
    on the CPU: several times faster than PyTorch's eager pass for these networks on a CPU
    (``bench/feature_throughput.py --runtime both``), the same features within float rounding
    (about 1e-5, tested). ``__call__``: an ``(N, 3, H, W)`` float tensor -> ``(N, D)`` float32."""

    def __init__(self, backbone: torch.nn.Module, image_size: int, threads: int | None = None):
        import io
        import warnings

        import onnxruntime as ort

        buffer = io.BytesIO()
        sample = torch.zeros(1, 3, image_size, image_size)
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation notices
            warnings.simplefilter("ignore")
            torch.onnx.export(
                backbone.eval(),
                sample,
                buffer,
                dynamo=False,
                input_names=["images"],
                output_names=["features"],
                dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads or torch.get_num_threads(), 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no busy waiting
        self.session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        out = self.session.run(None, {"images": images.contiguous().numpy()})[0]
        return out.reshape(len(out), -1).astype(np.float32, copy=False)


def resolve_runtime(runtime: str, device: torch.device) -> str:
    """``auto``: ONNX Runtime on the CPU, PyTorch elsewhere; ``onnxruntime`` on a GPU is refused."""
    if runtime == "auto":
        return "onnxruntime" if device.type == "cpu" else "torch"
    if runtime == "onnxruntime" and device.type != "cpu":
        from deepcovid.errors import InputError

        raise InputError(
            f"train.feature_runtime: onnxruntime runs on the CPU only, but train.device is {device}; use auto or torch"
        )
    return runtime


@torch.inference_mode()
def extract_features(
    backbone: torch.nn.Module,
    dataset: Dataset,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    channels_last: bool = True,
    progress: bool = True,
    runtime: str = "torch",
    image_size: int | None = None,
) -> np.ndarray:
    """Run ``backbone`` (in eval mode) over ``dataset``; return an (N, D) float32 array.
    ``runtime``: ``torch`` or ``onnxruntime`` (CPU; needs ``image_size``)."""
    device = torch.device(device)
    backbone = backbone.eval().to(device)
    onnx = None
    if runtime == "onnxruntime":
        if device.type != "cpu" or image_size is None:
            raise ValueError("the onnxruntime feature runtime needs the CPU and the image size")
        onnx = OnnxBackbone(backbone, image_size)
    elif channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=device.type == "cuda"
    )
    out = []
    for images, _ in tqdm(loader, desc="features", disable=not progress, mininterval=2):
        if onnx is not None:
            out.append(onnx(images))
            continue
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        feats = backbone(images)
        out.append(torch.flatten(feats, 1).float().cpu().numpy())
    dim = out[0].shape[1] if out else 0
    return np.concatenate(out) if out else np.zeros((0, dim), dtype=np.float32)


def state_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state (names and tensor bytes): ties cached features to weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def featurize(
    params: config.Params,
    *,
    manifest: str | os.PathLike,
    cache: str | os.PathLike,
    augmented: str | os.PathLike | None,
    out: str | os.PathLike,
) -> None:
    """Write the backbone features of every image (original and augmented) to the folder
    ``out`` (features.npy, index.csv, meta.json); in full mode only a meta.json saying so.

    Seeded, with deterministic algorithms: a rerun on the same machine with the same thread
    count writes bitwise identical features. The compute environment is logged, not written
    (meta.json is a DVC output and must not differ between machines)."""
    name, mode, size = params.model, params.train.mode, params.train.image_size
    with files.atomic_path(out) as tmp:
        tmp.mkdir()
        if mode != "last_layer":
            files.write_json(
                tmp / "meta.json",
                {"mode": mode, "skipped": True, "reason": "full fine-tuning changes the backbone; nothing to cache"},
            )
            log.info("train.mode=%s: no features to cache", mode)
            return
        seed_everything(params.seed)  # and deterministic algorithms
        log.info("compute environment: %s", ", ".join(f"{k}={v}" for k, v in compute_environment().items()))
        model, provenance = build_model(name, params.weights)
        backbone, _ = split_backbone_head(model, name)
        device = resolve_device(params.train.device)
        table = load_table(manifest, cache, augmented)
        prep = preprocessing(name, params.train.normalization)
        dataset = ImageDataset(table["file"], table["label"], eval_transform(prep, size))
        runtime = resolve_runtime(params.train.feature_runtime, device)
        feats = extract_features(
            backbone,
            dataset,
            batch_size=params.train.feature_batch_size,
            num_workers=0,
            device=device,
            channels_last=True,
            runtime=runtime,
            image_size=size,
        )
        np.save(tmp / "features.npy", feats.astype(np.float32))
        files.write_csv(tmp / "index.csv", table.drop(columns=["file"]))
        files.write_json(
            tmp / "meta.json",
            {
                "mode": mode,
                "skipped": False,
                "model": name,
                "image_size": size,
                "preprocessing": prep,
                "provenance": provenance,
                "backbone_sha256": state_digest(backbone),
                "shape": list(feats.shape),
                "device": str(device),
                "runtime": runtime,
            },
        )
    log.info("%s features %s for %d images", name, tuple(feats.shape[1:]), len(feats))
