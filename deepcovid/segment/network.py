"""The lung segmenter: MONAI's BasicUNet on one grey channel, its input scaling, its record
(``segment.json`` beside ``segment.pt``) and the checks that a saved network is the recorded one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from deepcovid.data.lungs import clean, segment_input
from deepcovid.errors import MissingInputError, StateError
from deepcovid.files import sha256_file

NETWORK = "monai.networks.nets.BasicUNet"
WEIGHTS, RECORD = "segment.pt", "segment.json"


class SegmenterError(StateError):
    """A saved segmenter that does not fit its record (another run's file, a changed network)."""


def build(features) -> torch.nn.Module:
    """A 2-D BasicUNet, one grey channel in, one lung logit out (``features``: its six widths)."""
    from monai.networks.nets import BasicUNet

    return BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=tuple(int(f) for f in features))


def standardise(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 N x S x S -> float N x 1 x S x S, each image to mean 0 and standard deviation 1 (so that a
    source's overall brightness and contrast do not reach the network)."""
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32).unsqueeze(1) / 255.0
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = x.std(dim=(2, 3), keepdim=True)
    return (x - mean) / (std + 1e-3)


@torch.no_grad()
def predict(net: torch.nn.Module, images: np.ndarray, *, threshold: float, batch_size: int = 32) -> np.ndarray:
    """Cleaned boolean lung masks (:func:`~deepcovid.data.lungs.clean`) of uint8 N x S x S images."""
    net.eval()
    out = np.zeros(images.shape, dtype=bool)
    for start in range(0, len(images), batch_size):
        prob = torch.sigmoid(net(standardise(images[start : start + batch_size]))).squeeze(1).numpy()
        if not np.isfinite(prob).all():
            raise SegmenterError("the lung segmenter gave non-finite outputs: its weights are not usable")
        for k, p in enumerate(prob):
            out[start + k] = clean(p >= threshold)
    return out


def save(net: torch.nn.Module, folder: str | os.PathLike, record: dict) -> dict:
    """Write ``segment.pt`` and ``segment.json`` (``record`` plus the weights' SHA-256) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), folder / WEIGHTS)
    record = {**record, "network": NETWORK, "segment_sha256": sha256_file(folder / WEIGHTS)}
    (folder / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def load(folder: str | os.PathLike, expected_sha256: str | None = None) -> tuple[torch.nn.Module, dict]:
    """The saved segmenter of ``folder`` in eval mode and its record. Refused in one line when the
    files are missing, when the weights are not the ones the record (or ``expected_sha256``, the
    classifier's record of them) names, or when they do not fit the recorded network."""
    folder = Path(folder)
    weights, record_path = folder / WEIGHTS, folder / RECORD
    for path in (weights, record_path):
        if not path.is_file():
            raise MissingInputError(f"{path} not found: run the segment stage (or dvc checkout) first")
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        features, size, threshold = record["features"], int(record["size"]), float(record["threshold"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise SegmenterError(f"{record_path}: not a segmenter record ({type(exc).__name__}: {exc})") from None
    digest = sha256_file(weights)
    for who, want in (("its record", record.get("segment_sha256")), ("the classifier's record", expected_sha256)):
        if want is not None and digest != want:
            raise SegmenterError(
                f"{weights}: SHA-256 {digest[:16]}... is not the {str(want)[:16]}... that {who} names: "
                f"files of different runs (dvc checkout models, or rerun the segment stage)"
            )
    net = build(features)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, TypeError, AttributeError, EOFError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SegmenterError(f"{weights}: not the recorded segmenter ({first})") from None
    if not all(torch.isfinite(t).all() for t in net.state_dict().values() if t.is_floating_point()):
        raise SegmenterError(f"{weights}: non-finite weights")
    if not 0.0 < threshold < 1.0 or size < 16:
        raise SegmenterError(f"{record_path}: threshold {threshold} or size {size} out of range")
    return net.eval(), record


class Segmenter:
    """A loaded segmenter that masks decoded images as the segment stage masked the pipeline's."""

    def __init__(self, net: torch.nn.Module, record: dict) -> None:
        self.net, self.record = net, record
        self.size, self.threshold = int(record["size"]), float(record["threshold"])

    def mask(self, image) -> np.ndarray:
        """The cleaned lung mask (``size`` x ``size``) of a decoded RGB image."""
        return predict(self.net, segment_input(image, self.size)[None], threshold=self.threshold)[0]


def load_segmenter(folder: str | os.PathLike, expected_sha256: str | None = None) -> Segmenter:
    """:func:`load` as a :class:`Segmenter`."""
    return Segmenter(*load(folder, expected_sha256))
