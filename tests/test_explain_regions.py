"""Lung and lesion regions at the model input: annotation scaling (on real annotated images),
mapping through the preprocess geometry, and the heatmap-in-region measures."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from deepcovid.data.images import ImageReadError, resize_square
from deepcovid.explain.regions import annotation_index, load_regions, mass_inside, pointing_hit, to_input
from deepcovid.model.presets import eval_transform

PREP = {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear"}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("resize", ["stretch", "pad"])
def test_mask_follows_the_image_through_preprocessing(resize):
    """A bright rectangle drawn in a 300 x 180 image lands where the mask says, after the cache
    resize (stretch or letterbox) and the model-input resize."""
    image = np.zeros((180, 300), np.uint8)
    image[40:120, 200:280] = 255
    mask = image > 0
    cached = resize_square(Image.fromarray(image).convert("RGB"), 96, resize)
    tensor = eval_transform(PREP, 64)(cached)
    seen = tensor[0].numpy() > 0.0
    mapped = to_input(mask, cache_size=96, resize=resize, image_size=64)
    assert mapped.shape == (64, 64)
    assert _iou(seen, mapped) > 0.85
    if resize == "pad":
        assert not mapped[:8].any() and not mapped[-8:].any()  # the letterbox bands


def test_mass_and_pointing_by_hand():
    heat = np.array([[1.0, -2.0], [3.0, 0.0]])
    mask = np.array([[True, False], [False, False]])
    assert mass_inside(heat, mask) == pytest.approx(1 / 4)  # negative drops carry no mass
    assert mass_inside(heat, ~mask) == pytest.approx(3 / 4)
    assert pointing_hit(heat, mask) == 0.0 and pointing_hit(heat, ~mask) == 1.0
    assert np.isnan(mass_inside(heat, None)) and np.isnan(pointing_hit(heat, np.zeros((2, 2), bool)))
    assert np.isnan(mass_inside(-np.abs(heat), mask))  # no positive mass at all
    tie = np.array([[5.0, 5.0], [0.0, 0.0]])
    assert pointing_hit(tie, np.array([[True, False], [False, False]])) == 0.0  # every maximum must be inside


def test_real_lung_boxes_are_scaled_to_the_downscaled_copy(shared_data):
    """lancet-case2a.jpg: lung boxes recorded on the 1401 x 1402 original, the file is 512 x 512.
    Scaled by scale_factors.csv, the boxes enclose the image's own lung mask (lungVAE) tightly;
    unscaled, they would miss part of it and cover mostly other tissue."""
    root = shared_data / "cohen"
    index = annotation_index(root)
    image = root / "images" / "lancet-case2a.jpg"
    assert index[image]["lung"][0] == "mask"  # the lungVAE mask wins over the boxes
    mask = load_regions(image, index[image], cache_size=256, resize="stretch", image_size=224).lung
    coco = json.loads((root / "annotations/imageannotation_ai_lung_bounding_boxes.json").read_text())
    ids = [im["id"] for im in coco["images"] if im["file_name"] == image.name]
    raw_boxes = [a["bbox"] for a in coco["annotations"] if a["image_id"] in ids]
    assert len(raw_boxes) == 2

    def boxes(scale):
        entry = {"lung": ("boxes", raw_boxes, "bounding boxes", scale, (1401, 1402))}
        return load_regions(image, entry, cache_size=256, resize="stretch", image_size=224).lung

    scaled = boxes((512 / 1401, 512 / 1402))
    unscaled = boxes((1.0, 1.0))
    assert (scaled & mask).sum() / mask.sum() > 0.95
    assert (unscaled & mask).sum() / mask.sum() < 0.9
    assert (scaled & mask).sum() / scaled.sum() > (unscaled & mask).sum() / unscaled.sum() + 0.2


def test_real_annotation_index_boxes_and_unusable_records(shared_data, tmp_path):
    root = shared_data / "cohen"
    index = annotation_index(root)
    lungs = [e["lung"] for e in index.values() if "lung" in e]
    assert sum(h == "mask" for h, *_ in lungs) > 150 and sum(h == "boxes" for h, *_ in lungs) > 50
    # without the masks, the three ciaa199 images whose recorded size disagrees are refused
    copy = tmp_path / "cohen"
    (copy / "annotations").mkdir(parents=True)
    for name in ("imageannotation_ai_lung_bounding_boxes.json", "scale_factors.csv"):
        shutil.copy(root / "annotations" / name, copy / "annotations" / name)
    shutil.copytree(root / "images", copy / "images")
    bare = annotation_index(copy)
    entry = bare[copy / "images" / "ciaa199.pdf-001-a.png"]
    assert entry["lung"][0] == "unusable" and "466x399" in entry["lung"][1] and "359x345" in entry["lung"][1]
    with pytest.raises(ImageReadError, match="466x399"):
        load_regions(copy / "images" / "ciaa199.pdf-001-a.png", entry, cache_size=64, resize="stretch", image_size=64)
    boxed = copy / "images" / "lancet-case2a.jpg"
    assert bare[boxed]["lung"][3] == pytest.approx((512 / 1401, 512 / 1402))  # from scale_factors.csv
    region = load_regions(boxed, bare[boxed], cache_size=64, resize="stretch", image_size=64)
    assert region.lung_origin == "bounding boxes" and 0.2 < region.lung.mean() < 0.9


def test_mask_of_another_size_is_named(tmp_path):
    image = tmp_path / "images" / "a.png"
    image.parent.mkdir()
    Image.new("L", (40, 30), 128).save(image)
    mask = tmp_path / "a_lung.png"
    Image.new("L", (20, 30), 255).save(mask)
    entry = {"lung": ("mask", mask, "synthetic mask")}
    with pytest.raises(ImageReadError, match="mask a_lung.png is 20x30, its image 40x30"):
        load_regions(image, entry, cache_size=32, resize="stretch", image_size=32)
    with pytest.raises(ImageReadError, match="file not found"):
        load_regions(tmp_path / "images" / "missing.png", entry, cache_size=32, resize="stretch", image_size=32)


def test_synthetic_masks_are_indexed_for_both_layouts(tmp_path):
    cohen = tmp_path / "cohen"
    (cohen / "annotations" / "m").mkdir(parents=True)
    (cohen / "images").mkdir()
    (cohen / "annotations" / "synthetic_truth.csv").write_text(
        "filename,lung_mask,lesion_mask\nx.png,annotations/m/x_lung.png,annotations/m/x_lesion.png\n"
    )
    chex = tmp_path / "chexpert" / "CheXpert-v1.0-small"
    chex.mkdir(parents=True)
    (chex / "synthetic_truth.csv").write_text(
        "Path,lung_mask,lesion_mask\nCheXpert-v1.0-small/train/p1/s1/v.jpg,CheXpert-v1.0-small/m/l.png,"
        "CheXpert-v1.0-small/m/s.png\n"
    )
    a = annotation_index(cohen)[cohen / "images" / "x.png"]
    assert a["lung"][1] == cohen / "annotations/m/x_lung.png" and a["lesion"][1] == cohen / "annotations/m/x_lesion.png"
    b = annotation_index(chex)[chex / "train/p1/s1/v.jpg"]
    assert b["lung"][1] == chex / "m/l.png"


def test_boxes_are_scaled_and_rounded_to_pixels_by_hand():
    from deepcovid.data.annotations import box_mask as _box_mask

    want = np.zeros((40, 40), bool)
    want[11:31, 5:15] = True  # x 10.4 -> 5.2 -> 5, 30.4 -> 15; y 5.6 -> 11.2 -> 11, 15.6 -> 31.2 -> 31
    np.testing.assert_array_equal(_box_mask([[10.4, 5.6, 20, 10]], (0.5, 2.0), (40, 40), None), want)
    # no scale given: from the recorded size (80 x 20) to the file's (40 x 40)
    np.testing.assert_array_equal(_box_mask([[10.4, 5.6, 20, 10]], None, (40, 40), (80, 20)), want)
    edge = _box_mask([[-4, -2, 10, 6], [35, 35, 20, 20]], (1.0, 1.0), (40, 40), None)
    assert edge[:4, :6].all() and edge[35:, 35:].all() and edge.sum() == 4 * 6 + 5 * 5
    with pytest.raises(ImageReadError, match=r"no usable image size \(\(0, 20\)\)"):
        _box_mask([[1, 1, 2, 2]], None, (40, 40), (0, 20))


def test_a_mask_is_the_pixels_from_128_up(tmp_path):
    from deepcovid.data.annotations import load_mask as _load_mask

    path = tmp_path / "m.png"
    Image.fromarray(np.array([[0, 127, 128, 255]], np.uint8)).save(path)
    assert _load_mask(path, (4, 1)).tolist() == [[False, False, True, True]]
    path.write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match="mask m.png cannot be read"):
        _load_mask(path, (4, 1))


def test_coco_lung_boxes_by_hand(tmp_path):
    """Lung categories by name (any case), other categories ignored; an image without lung boxes or
    with a malformed box is unusable; the scale from scale_factors.csv where the recorded size is
    the original's, refused where it is not; no scale (recorded size kept) without a factors row."""
    root = tmp_path / "cohen"
    (root / "annotations").mkdir(parents=True)
    coco = {
        "categories": [{"id": 1, "name": "Left Lung"}, {"id": 2, "name": "heart"}],
        "images": [
            {"id": 10, "file_name": "a.png", "width": 200, "height": 100},
            {"id": 11, "file_name": "b.png", "width": 200, "height": 100},
            {"id": 12, "file_name": "c.png", "width": 300, "height": 100},
            {"id": 13, "file_name": "d.png", "width": 50, "height": 60},
            {"id": 14, "file_name": "e.png", "width": 50, "height": 60},
        ],
        "annotations": [
            {"image_id": 10, "category_id": 1, "bbox": [1, 2, 3, 4]},
            {"image_id": 10, "category_id": 2, "bbox": [9, 9, 9, 9]},
            {"image_id": 11, "category_id": 2, "bbox": [9, 9, 9, 9]},
            {"image_id": 12, "category_id": 1, "bbox": [1, 2, 3, 4]},
            {"image_id": 13, "category_id": 1, "bbox": [5, 6, 7, 8]},
            {"image_id": 14, "category_id": 1, "bbox": [5, 6, 7]},
        ],
    }
    (root / "annotations" / "imageannotation_ai_lung_bounding_boxes.json").write_text(json.dumps(coco))
    (root / "annotations" / "scale_factors.csv").write_text(
        "filename,original_width,original_height,new_width,new_height\na.png,200,100,50,40\nc.png,200,100,50,40\n"
    )
    index = annotation_index(root)
    images = root / "images"
    assert index[images / "a.png"]["lung"] == ("boxes", [[1, 2, 3, 4]], "bounding boxes", (0.25, 0.4), (200, 100))
    assert index[images / "b.png"]["lung"] == ("unusable", "lung boxes missing or malformed", "bounding boxes")
    assert index[images / "c.png"]["lung"][0] == "unusable" and "300x100" in index[images / "c.png"]["lung"][1]
    assert index[images / "d.png"]["lung"] == ("boxes", [[5, 6, 7, 8]], "bounding boxes", None, (50, 60))
    assert index[images / "e.png"]["lung"][0] == "unusable"


def test_lungvae_masks_are_found_by_the_image_stem(tmp_path):
    root = tmp_path / "cohen"
    (root / "annotations" / "lungVAE-masks").mkdir(parents=True)
    (root / "images").mkdir()
    for name in ("a.jpg", "b.png"):
        (root / "images" / name).write_bytes(b"x")
    for name in ("a_mask.png", "zz_mask.png"):
        (root / "annotations" / "lungVAE-masks" / name).write_bytes(b"x")
    index = annotation_index(root)
    assert index == {
        root / "images" / "a.jpg": {"lung": ("mask", root / "annotations/lungVAE-masks/a_mask.png", "lungVAE mask")}
    }
