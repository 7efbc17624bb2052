"""Deep-COVID: a reproducible rebuild of Minaee et al. (2020) as a DVC pipeline.

Subpackages follow the pipeline: ``data`` (fetch .. augment), ``synthetic`` (offline stand-in
data), ``model`` (featurize, train), ``evaluation`` (evaluate, compare) and ``checks`` (CI).
"""

__version__ = "0.1.0"
