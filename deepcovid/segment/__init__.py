"""Lung segmentation: a small U-Net (MONAI's BasicUNet) trained in the pipeline on the sources' lung masks,
and the masks it gives every image (the segment stage; preprocess.lungs uses them)."""
