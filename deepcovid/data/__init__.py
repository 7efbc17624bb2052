"""Data stages: raw sources, metadata, selection of positives and negatives, split, images, augmentation."""
