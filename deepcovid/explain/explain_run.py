"""The explain stage: occlusion maps of the trained model for chosen test images, the paper's
Fig. 14 for each, and how much of each map lands on the lungs and lesions, beside the same maps
of the model with its trained last layer re-initialised (Adebayo et al., 2018: a map that survives
the randomisation explains nothing about the training). :func:`run_explain`."""

from __future__ import annotations

import copy
import logging
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from scipy.stats import spearmanr
from tqdm import tqdm

from deepcovid import config, files
from deepcovid.data.images import ImageReadError
from deepcovid.data.lungs import mask_files, read_mask
from deepcovid.data.sources import read_sources, source_root
from deepcovid.evaluation.predictions import operating_point
from deepcovid.explain.figures import occlusion_figure
from deepcovid.explain.occlusion import ExplainError, Occluder, baseline
from deepcovid.explain.regions import Regions, annotation_index, load_regions, mass_inside, pointing_hit
from deepcovid.model.architectures import split_backbone_head
from deepcovid.model.datasets import load_table
from deepcovid.model.inference import covid_probability, load_model, load_segmenter, prepare
from deepcovid.model.presets import eval_transform

log = logging.getLogger(__name__)

INDEX_COLUMNS = [
    "image_id",
    "kind",
    "label",
    "score",
    "base_score",
    "lung_origin",
    "lung_area",
    "lung_mass",
    "lesion_mass",
    "pointing_lung",
    "random_lung_mass",
    "random_pointing_lung",
    "sanity_spearman",
    "flips",
    "figure",
]


def select_images(predictions: pd.DataFrame, threshold: float, top: int, fn: int, fp: int) -> pd.DataFrame:
    """Test images to explain: the ``top`` COVID-19 images with the highest scores, the ``fn``
    lowest-scored COVID-19 images under ``threshold`` and the ``fp`` highest-scored others over it."""
    test = predictions[predictions["split"] == "test"]
    pos, neg = test[test["label"] == 1], test[test["label"] == 0]
    parts = [
        pos.nlargest(top, "score").assign(kind="top"),
        pos[pos["score"] < threshold].nsmallest(fn, "score").assign(kind="false_negative"),
        neg[neg["score"] >= threshold].nlargest(fp, "score").assign(kind="false_positive"),
    ]
    return pd.concat(parts, ignore_index=True).drop_duplicates("image_id")


def dataset_mean(table: pd.DataFrame, transform) -> float:
    """Mean normalised intensity of the training images (the ``mean`` fill)."""
    files_ = table.loc[(table["split"] == "train") & (table["parent"] == ""), "file"]
    if files_.empty:
        raise ExplainError("fill 'mean' needs training images in the manifest")
    total = 0.0
    for path in files_:
        with Image.open(path) as img:
            total += float(transform(img.convert("RGB")).mean())
    return total / len(files_)


class TrainedAndRandomHead(torch.nn.Module):
    """The backbone once, then the trained last layer and a re-initialised copy of it (seeded):
    the first step of Adebayo et al.'s cascading randomisation, and the only learned part of a
    last-layer model. Maps that stay the same after it show the backbone, not what training
    learned. Outputs both heads' logits side by side; :func:`two_scores` reads them."""

    def __init__(self, model: torch.nn.Module, architecture: str, seed: int) -> None:
        super().__init__()
        self.backbone, head = split_backbone_head(model, architecture)
        random = copy.deepcopy(head)
        torch.manual_seed(seed)
        for module in random.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        self.heads = torch.nn.ModuleList([head, random])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        return torch.cat([head(features) for head in self.heads], 1)


def two_scores(logits: torch.Tensor) -> torch.Tensor:
    """(N, 2) COVID-19 probabilities of the trained and the randomised head."""
    half = logits.shape[1] // 2
    return torch.stack([covid_probability(logits[:, :half]), covid_probability(logits[:, half:])], 1)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation of two maps' absolute values (Adebayo et al.); nan if one is constant."""
    a, b = np.abs(a).ravel(), np.abs(b).ravel()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(spearmanr(a, b).statistic)


def _crop_masks(lungs, prep: dict):
    """image id -> the keyword arguments of :func:`load_regions` that cut its annotations as
    preprocess cut the image (``preprocess.lungs: crop``; nothing otherwise)."""
    if prep.get("lungs", "none") != "crop":
        return lambda image_id: {}
    paths, size, _ = mask_files(lungs)

    def crop_of(image_id: str) -> dict:
        if image_id not in paths:
            raise ImageReadError("the segment stage wrote no lung mask for it")
        mask = read_mask(paths[image_id], size)
        return {"lung_mask": mask, "lungs": ("crop", float(prep["lung_margin"]))}

    return crop_of


def run_explain(
    cfg: config.Explain,
    *,
    seed: int,
    models,
    manifest,
    cache,
    predictions,
    evaluation,
    raw,
    lungs,
    out: str | os.PathLike,
    metrics: str | os.PathLike,
    plots: str | os.PathLike,
) -> dict:
    """Write ``out`` (maps.npz, index.csv, rejected.csv), the ``metrics`` JSON and one PNG per
    image in the folder ``plots``; return the metrics. ``cfg``: the ``explain`` section."""
    model, record = load_model(models)
    prep, size = record["preprocessing"], int(record["train"]["image_size"])
    if cfg.window > size:
        raise ExplainError(f"explain.window {cfg.window} is larger than the model input {size}")
    threshold = operating_point(evaluation, model_sha256=record["model_sha256"])
    chosen = select_images(
        pd.read_csv(predictions, dtype={"image_id": str}),
        threshold,
        cfg.top_covid,
        cfg.false_negatives,
        cfg.false_positives,
    )
    table = load_table(manifest, cache).set_index("image_id")
    relpaths = pd.read_csv(manifest, dtype=str, keep_default_na=False).set_index("image_id")["relpath"]
    transform = eval_transform(prep, size)
    mean = dataset_mean(table.reset_index(), transform) if cfg.fill == "mean" else None
    occluder = Occluder(
        TrainedAndRandomHead(model, record["architecture"], seed).eval(),
        cfg.window,
        cfg.stride,
        cfg.method,
        cfg.batch_size,
        score=two_scores,
        coarse=cfg.coarse,
        refine=cfg.refine,
        runtime=cfg.runtime,
    )
    sources = read_sources(raw)
    crop_of = _crop_masks(lungs, prep)
    annotations: dict[str, dict] = {}
    rows, rejected, arrays = [], [], {"pixel": [], "scores": [], "random_pixel": [], "lung": [], "lesion": []}
    with files.atomic_path(out) as tmp_out, files.atomic_path(plots) as tmp_plots:
        tmp_out.mkdir()
        tmp_plots.mkdir()
        for k, item in enumerate(tqdm(list(chosen.itertuples()), desc="explain", mininterval=2)):
            try:
                entry = table.loc[item.image_id]
                with Image.open(entry["file"]) as img:
                    image = transform(img.convert("RGB"))[None]
            except (KeyError, OSError) as exc:
                rejected.append((item.image_id, f"cached image unavailable ({type(exc).__name__}: {exc})"))
                continue
            fill = baseline(image, cfg.fill, mean, cfg.blur_sigma)
            trained, random = occluder.maps(image, fill)
            regions = Regions()
            if entry["source"] not in annotations:
                annotations[entry["source"]] = annotation_index(source_root(sources, entry["source"], raw))
            raw_path = source_root(sources, entry["source"], raw) / relpaths[item.image_id]
            if raw_path in annotations[entry["source"]]:
                try:
                    regions = load_regions(
                        raw_path,
                        annotations[entry["source"]][raw_path],
                        cache_size=int(prep["cache_size"]),
                        resize=prep["resize"],
                        image_size=size,
                        **crop_of(item.image_id),
                    )
                except ImageReadError as exc:
                    rejected.append((item.image_id, f"annotation not used: {exc}"))
            pixel, random_pixel = trained.pixel_map(), random.pixel_map()
            figure = f"{k:02d}_{item.kind}.png"
            occlusion_figure(
                tmp_plots / figure,
                image[0].numpy(),
                pixel,
                trained.flips(threshold),
                f"{item.image_id}  ({item.kind.replace('_', ' ')}, label {item.label}, "
                f"score {trained.base:.3f}, threshold {threshold:.3f})",
                regions.lung,
                regions.lesion,
                trained.centres(),
            )
            rho = rank_correlation(pixel, random_pixel)
            rows.append(
                [
                    item.image_id,
                    item.kind,
                    int(item.label),
                    float(item.score),
                    trained.base,
                    regions.lung_origin,
                    float(regions.lung.mean()) if regions.lung is not None else math.nan,
                    mass_inside(pixel, regions.lung),
                    mass_inside(pixel, regions.lesion),
                    pointing_hit(pixel, regions.lung),
                    mass_inside(random_pixel, regions.lung),
                    pointing_hit(random_pixel, regions.lung),
                    float(rho),
                    int(trained.flips(threshold).sum()),
                    figure,
                ]
            )
            empty = np.zeros(pixel.shape, bool)
            for key, value in (
                ("pixel", pixel.astype(np.float32)),
                ("scores", trained.scores),
                ("random_pixel", random_pixel.astype(np.float32)),
                ("lung", regions.lung if regions.lung is not None else empty),
                ("lesion", regions.lesion if regions.lesion is not None else empty),
            ):
                arrays[key].append(value)
        index = pd.DataFrame(rows, columns=INDEX_COLUMNS)
        np.savez_compressed(
            tmp_out / "maps.npz",
            image_id=index["image_id"].to_numpy(str),
            **{k: np.stack(v) if v else np.zeros((0,)) for k, v in arrays.items()},
        )
        files.write_csv(tmp_out / "index.csv", index)
        files.write_csv(tmp_out / "rejected.csv", pd.DataFrame(rejected, columns=["image_id", "reason"]), report=True)
        summary = summarise(index, cfg, threshold, record["architecture"])
        files.write_json(metrics, summary)
    for image_id, reason in rejected:
        log.warning("%s: %s", image_id, reason)
    return summary


def explain_images(
    paths: list[str], cfg: config.Explain, *, models, out: str | os.PathLike, threshold: float | None = None
) -> list[tuple[str, float | None, str]]:
    """``deepcovid explain``: for each image file, preprocess it as the pipeline does (the
    settings recorded in ``models``/model.json), write ``<stem>_occlusion.png`` under ``out``
    and return ``(path, score, figure or the reason it failed)``."""
    model, record = load_model(models)
    segmenter = load_segmenter(models, record)
    if cfg.fill == "mean":
        raise ExplainError("fill 'mean' needs the training images: use the explain stage, or fill zero or blur")
    occluder = Occluder(
        model,
        cfg.window,
        cfg.stride,
        cfg.method,
        cfg.batch_size,
        coarse=cfg.coarse,
        refine=cfg.refine,
        runtime=cfg.runtime,
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for path in paths:
        try:
            image = prepare(path, record, segmenter=segmenter)[None]
        except ImageReadError as exc:
            results.append((path, None, f"not explained: {exc.reason}"))
            continue
        result = occluder(image, baseline(image, cfg.fill, None, cfg.blur_sigma))
        cut = 0.5 if threshold is None else threshold
        figure = out / f"{Path(path).stem}_occlusion.png"
        occlusion_figure(
            figure,
            image[0].numpy(),
            result.pixel_map(),
            result.flips(cut),
            f"{Path(path).name}  (score {result.base:.3f}, threshold {cut:.3f})",
            centres=result.centres(),
        )
        results.append((path, result.base, str(figure)))
    return results


def _mean(values: pd.Series) -> float | None:
    values = values.dropna()
    return round(float(values.mean()), 6) if len(values) else None


def summarise(index: pd.DataFrame, cfg: config.Explain, threshold: float, architecture: str) -> dict:
    """The metrics JSON: means over the explained images (None where no image has the annotation)."""
    covid = index[index["label"] == 1]
    return {
        "architecture": architecture,
        "method": cfg.method,
        "window": cfg.window,
        "stride": cfg.stride,
        "fill": cfg.fill,
        "threshold": threshold,
        "images": int(len(index)),
        "with_lungs": int(index["lung_area"].notna().sum()),
        "lung_mass": _mean(index["lung_mass"]),
        "lung_area": _mean(index["lung_area"]),
        "pointing_lung": _mean(index["pointing_lung"]),
        "covid_lung_mass": _mean(covid["lung_mass"]),
        "covid_lesion_mass": _mean(covid["lesion_mass"]),
        "random_lung_mass": _mean(index["random_lung_mass"]),
        "random_pointing_lung": _mean(index["random_pointing_lung"]),
        "sanity_spearman": _mean(index["sanity_spearman"]),
    }
