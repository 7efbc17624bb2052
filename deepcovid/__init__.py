"""Deep-COVID: a reproducible rebuild of Minaee et al. (2020) as a DVC pipeline.

Modules, each about one thing:

- ``params``      load and validate params.yaml
- ``io``          atomic file writes, hashing
- ``images``      decoding any source image into the uniform 8-bit RGB cache
- ``metadata``    tolerant readers of Cohen / Actualmed / CheXpert metadata
- ``fetch``       download, integrity check and safe extraction of sources
- ``synthetic``   the deterministic synthetic radiograph generator
- ``filtering``, ``negatives``, ``splitting``, ``augment``: data stage logic
- ``models``, ``features``, ``training``: transfer learning
- ``metrics``     sensitivity/specificity, intervals, ROC/PR, calibration
"""

__version__ = "0.1.0"
