"""params.yaml as typed, validated configuration: one pydantic model per section.

Defaults live only in params.yaml: every field here is required, unknown keys are rejected,
and a bad value stops with one line naming the parameter as ``dvc exp run -S`` spells it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    model_validator,
)

from deepcovid.errors import InputError

# The networks the train stage builds (deepcovid.model.architectures has one spec per name).
ARCHITECTURES = (
    "resnet18",
    "resnet50",
    "squeezenet",
    "densenet121",
    "densenet161",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
)
DATASETS = ("synthetic", "paper", "public")
SOURCES = ("cohen", "actualmed", "chexpert")
LATERAL_VIEWS = {"L", "LATERAL", "LL", "RL"}


class ConfigError(InputError):
    """A parameter is missing or invalid (one line, naming the parameter)."""


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")
    return value


def _pair(value: tuple) -> tuple:
    if value[0] > value[1]:
        raise ValueError("must be a [low, high] pair with low <= high")
    return value


Int = Annotated[StrictInt, Field()]
# Upper bounds of size parameters: none may allocate beyond a machine in one step (a typo such as
# an extra zero is refused in one line, not met as an out-of-memory kill an hour later).
MAX_COUNT = 10_000_000  # patients or images of one kind
MAX_SIDE = 8192  # pixels of a generated image's side
MAX_WORKERS = 256
MAX_BATCH = 4096
Number = Annotated[float, BeforeValidator(_not_bool), Field(allow_inf_nan=False)]
Fraction = Annotated[float, BeforeValidator(_not_bool), Field(ge=0.0, le=1.0, allow_inf_nan=False)]
IntPair = Annotated[tuple[StrictInt, StrictInt], AfterValidator(_pair)]
NumberPair = Annotated[tuple[Number, Number], AfterValidator(_pair)]
Source = Literal["cohen", "actualmed", "chexpert"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    def as_dict(self) -> dict:
        """Plain JSON types (lists, not tuples), as params.yaml spells them."""
        return self.model_dump(mode="json")


class DatasetSources(Section):
    positives: list[Source] = Field(min_length=1)
    negatives: list[Source] = Field(min_length=1)


class RemoteSource(Section):
    """A source downloaded at a pinned commit (or read from ``local_dir``)."""

    url: str
    commit: str
    method: Literal["archive", "git"]
    local_dir: str | None
    tree_sha256: Annotated[str, Field(pattern=r"^([0-9a-fA-F]{64})?$")]
    require_checksum: StrictBool
    max_bytes: Annotated[Int, Field(gt=0)]
    retries: Annotated[Int, Field(gt=0)]
    timeout: Annotated[Number, Field(gt=0)]
    backoff: Annotated[Number, Field(ge=0)]

    @model_validator(mode="after")
    def _where_from(self):
        if not self.local_dir:
            if not self.url.strip():
                raise _located("url", "set url (download) or local_dir (an existing clone or copy)")
            if "{commit}" in self.url and not self.commit.strip():
                raise _located("commit", "is empty but url contains {commit}")
            if self.method == "git" and not re.fullmatch(r"[0-9a-f]{40}([0-9a-f]{24})?", self.commit.strip().lower()):
                raise _located("commit", "must be a full commit id (40 hex characters) for method: git")
        return self


class ChexpertSource(Section):
    path: str | None


class Fetch(Section):
    cohen: RemoteSource
    actualmed: RemoteSource
    chexpert: ChexpertSource


class SyntheticCohen(Section):
    covid_patients: Annotated[Int, Field(ge=0, le=MAX_COUNT)]
    other_patients: Annotated[Int, Field(ge=0, le=MAX_COUNT)]
    images_per_patient: Annotated[IntPair, AfterValidator(lambda v: v if v[0] >= 1 else _fail("low must be >= 1"))]
    lateral_fraction: Fraction
    ct_rows: Annotated[Int, Field(ge=0)]
    size_range: Annotated[
        IntPair,
        AfterValidator(lambda v: v if 64 <= v[0] and v[1] <= MAX_SIDE else _fail(f"must lie within [64, {MAX_SIDE}]")),
    ]
    severity: Annotated[
        NumberPair, AfterValidator(lambda v: v if 0 <= v[0] and v[1] <= 1 else _fail("must lie within [0, 1]"))
    ]
    style_shift: Annotated[Number, Field(ge=0)]
    marker: Fraction


class SyntheticChexpert(Section):
    train_patients: Annotated[Int, Field(ge=0, le=MAX_COUNT)]
    valid_patients: Annotated[Int, Field(ge=0, le=MAX_COUNT)]
    images_per_patient: Annotated[IntPair, AfterValidator(lambda v: v if v[0] >= 1 else _fail("low must be >= 1"))]
    lateral_fraction: Fraction
    width: Annotated[Int, Field(ge=64, le=MAX_SIDE)]
    height_range: Annotated[
        IntPair,
        AfterValidator(lambda v: v if 64 <= v[0] and v[1] <= MAX_SIDE else _fail(f"must lie within [64, {MAX_SIDE}]")),
    ]
    severity: Annotated[
        NumberPair, AfterValidator(lambda v: v if 0 <= v[0] and v[1] <= 1 else _fail("must lie within [0, 1]"))
    ]
    style_shift: Annotated[Number, Field(ge=0)]
    marker: Fraction


class Synthetic(Section):
    cohen: SyntheticCohen
    chexpert: SyntheticChexpert


class Filter(Section):
    frontal_views: list[str] = Field(min_length=1)
    exclusions: str

    @model_validator(mode="after")
    def _frontal_only(self):
        lateral = [v for v in self.frontal_views if str(v).strip().upper() in LATERAL_VIEWS]
        if lateral:
            raise _located("frontal_views", f"must not contain a lateral view ({', '.join(lateral)})")
        return self


class PoolCounts(Section):
    no_finding: Annotated[Int, Field(ge=0)]
    per_category: Annotated[Int, Field(ge=0)]


class NegativeCounts(Section):
    train: PoolCounts
    test: PoolCounts


class Negatives(Section):
    counts: dict[Literal["paper", "synthetic"], NegativeCounts]
    use_valid_csv: StrictBool
    public_test_fraction: Annotated[Number, Field(ge=0.0, le=0.9)]

    @model_validator(mode="after")
    def _both(self):
        missing = {"paper", "synthetic"} - set(self.counts)
        if missing:
            raise _located("counts", f"must give paper and synthetic (missing {', '.join(sorted(missing))})")
        return self


class Duplicates(Section):
    max_distance: Annotated[Int, Field(ge=0, le=254)]
    min_correlation: Fraction
    workers: Annotated[Int, Field(ge=1, le=MAX_WORKERS)]


class Split(Section):
    covid_test_images: Annotated[Int, Field(ge=1)]
    val_fraction: Annotated[Number, Field(ge=0.0, le=0.9)]
    exclude_negatives_of_covid_patients: StrictBool
    external_sources: list[str]


class Preprocess(Section):
    cache_size: Annotated[Int, Field(ge=32, le=2048)]
    resize: Literal["stretch", "pad"]
    grayscale: StrictBool
    workers: Annotated[Int, Field(ge=1, le=MAX_WORKERS)]
    # width x height (x frames) of a source image, read from its header before any pixel is
    # decoded; at most Pillow's own decompression-bomb limit (Image.MAX_IMAGE_PIXELS)
    max_pixels: Annotated[Int, Field(ge=65_536, le=89_478_485)]
    lungs: Literal["none", "crop", "mask"]  # what the segment stage's lung masks do to the image
    lung_margin: Annotated[Number, Field(ge=0, le=0.5)]
    intensity: Literal["none", "equalize", "clahe"]


def _unet_widths(value: tuple) -> tuple:
    if value[-1] > value[0]:
        raise ValueError("the last (output block) width must not exceed the first")
    return value


class Segment(Section):
    size: Annotated[Int, Field(ge=32, le=512, multiple_of=16)]  # four 2x poolings
    features: Annotated[tuple[Annotated[Int, Field(ge=1, le=512)], ...], Field(min_length=6, max_length=6)]
    epochs: Annotated[Int, Field(ge=1, le=100_000)]
    batch_size: Annotated[Int, Field(ge=1, le=MAX_BATCH)]
    lr: Annotated[Number, Field(gt=0, le=1)]
    max_train_images: Annotated[Int, Field(ge=1, le=MAX_COUNT)]
    threshold: Annotated[Number, Field(gt=0, lt=1)]


class Augment(Section):
    copies: Annotated[Int, Field(ge=0, le=100)]
    hflip_p: Fraction
    rotation_degrees: Annotated[Number, Field(ge=0, le=45)]
    translate: Annotated[Number, Field(ge=0, le=0.5)]
    scale: Annotated[
        NumberPair, AfterValidator(lambda v: v if 0.5 <= v[0] and v[1] <= 2 else _fail("must lie within [0.5, 2]"))
    ]
    shear_degrees: Annotated[Number, Field(ge=0, le=45)]
    elastic_alpha: Annotated[Number, Field(ge=0, le=50)]
    elastic_grid: Annotated[Int, Field(ge=2, le=64)]


class Train(Section):
    mode: Literal["last_layer", "full"]
    image_size: Annotated[Int, Field(ge=32, le=1024)]
    epochs: Annotated[Int, Field(ge=1, le=100_000)]
    batch_size: Annotated[Int, Field(ge=1, le=MAX_BATCH)]
    lr: Annotated[Number, Field(gt=0, le=1)]
    weight_decay: Annotated[Number, Field(ge=0, le=1)]
    patience: Annotated[Int, Field(ge=0, le=100_000)]
    device: str = Field(min_length=1)
    num_workers: Annotated[Int, Field(ge=0, le=MAX_WORKERS)]
    feature_batch_size: Annotated[Int, Field(ge=1, le=MAX_BATCH)]
    feature_runtime: Literal["auto", "torch", "onnxruntime"]
    normalization: Literal["backbone", "imagenet"]
    shuffle_labels: StrictBool
    class_weight: Literal["none", "balanced"]
    checkpoint_dir: str = Field(min_length=1)


class Mlflow(Section):
    enabled: StrictBool
    experiment: str = Field(min_length=1)
    tracking_uri: str


class Evaluate(Section):
    thresholds: list[Fraction] = Field(min_length=1)
    target_sensitivity: Fraction
    ci_method: Literal["wilson", "clopper-pearson"]
    alpha: Annotated[Number, Field(ge=1e-6, le=0.5)]
    auc_ci: Literal["delong", "bootstrap"]
    bootstrap_resamples: Annotated[Int, Field(ge=1, le=1_000_000)]
    calibration_bins: Annotated[Int, Field(ge=1, le=1000)]
    histogram_bins: Annotated[Int, Field(ge=1, le=1000)]


class Explain(Section):
    window: Annotated[Int, Field(ge=1, le=1024)]
    stride: Annotated[Int, Field(ge=1, le=1024)]
    fill: Literal["zero", "mean", "blur"]
    blur_sigma: Annotated[Number, Field(gt=0, le=100)]
    method: Literal["exact", "approximate", "batched"]
    coarse: Annotated[Int, Field(ge=2, le=16)]
    refine: Fraction
    top_covid: Annotated[Int, Field(ge=0, le=MAX_COUNT)]
    false_negatives: Annotated[Int, Field(ge=0, le=MAX_COUNT)]
    false_positives: Annotated[Int, Field(ge=0, le=MAX_COUNT)]
    batch_size: Annotated[Int, Field(ge=1, le=MAX_BATCH)]
    runtime: Literal["onnxruntime", "torch"]

    @model_validator(mode="after")
    def _window(self):
        if self.stride > self.window:
            raise _located("stride", f"{self.stride} is larger than the window {self.window}: pixels would be skipped")
        if self.top_covid + self.false_negatives + self.false_positives == 0:
            raise _located("top_covid", "selects no image (top_covid, false_negatives, false_positives are all 0)")
        return self


Tolerance = Annotated[Number, Field(ge=0)]


class Audit(Section):
    folds: Annotated[Int, Field(ge=2, le=100)]
    flag_auc: Annotated[Number, Field(ge=0.5, le=1.0)]
    metadata: list[str] = Field(min_length=1)
    min_per_class: Annotated[Int, Field(ge=2)]


class Repeats(Section):
    splits: Annotated[Int, Field(ge=0, le=1000)]
    workers: Annotated[Int, Field(ge=1, le=MAX_WORKERS)]


class Regression(Section):
    baseline: str
    tolerances: dict[str, Tolerance | dict[str, Tolerance]] = Field(min_length=1)
    lower_is_better: list[str]

    def flat_tolerances(self) -> dict[str, float]:
        out = {}
        for key, value in self.tolerances.items():
            if isinstance(value, dict):
                out.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                out[key] = value
        return out

    @model_validator(mode="after")
    def _known(self):
        unknown = sorted(set(self.lower_is_better) - set(self.flat_tolerances()))
        if unknown:
            raise _located("lower_is_better", f"names metrics without a tolerance: {', '.join(unknown)}")
        return self


class Mitigation(Section):
    """The pre-declared mitigation study (``deepcovid mitigation``): variants as parameter overrides."""

    baseline: str
    external_sources: list[Source] = Field(min_length=1)
    variants: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")], dict[str, Any]] = Field(min_length=1)

    @model_validator(mode="after")
    def _baseline(self):
        if self.baseline not in self.variants:
            raise _located("baseline", f"{self.baseline!r} is not among the variants ({', '.join(self.variants)})")
        return self


class Reproduction(Section):
    exact_stages: list[str]
    tolerances: dict[str, Tolerance | None]


class Params(Section):
    """The whole of params.yaml."""

    dataset: Literal["synthetic", "paper", "public"]
    seed: Annotated[Int, Field(ge=0)]
    datasets: dict[str, DatasetSources]
    fetch: Fetch
    synthetic: Synthetic
    filter: Filter
    negatives: Negatives
    duplicates: Duplicates
    split: Split
    segment: Segment
    preprocess: Preprocess
    augment: Augment
    model: Literal[ARCHITECTURES]  # type: ignore[valid-type]
    weights: str = Field(min_length=1)  # imagenet, none or a file (checked by the stages that load it)
    train: Train
    mlflow: Mlflow
    evaluate: Evaluate
    explain: Explain
    audit: Audit
    repeats: Repeats
    regression: Regression
    mitigation: Mitigation
    reproduction: Reproduction

    @model_validator(mode="after")
    def _cross_checks(self):
        if self.dataset not in self.datasets:
            raise _located("datasets", f"has no entry for the chosen dataset {self.dataset!r}")
        sources = set(self.sources.positives) | set(self.sources.negatives)
        unknown = sorted(set(self.split.external_sources) - sources)
        if unknown:
            raise _located(
                "split.external_sources",
                f"{', '.join(unknown)} is not a source of dataset {self.dataset!r} ({', '.join(sorted(sources))})",
            )
        if self.train.image_size > self.preprocess.cache_size:
            raise _located(
                "train.image_size",
                f"{self.train.image_size} is larger than "
                f"preprocess.cache_size {self.preprocess.cache_size}: the input is cut from that cache",
            )
        if self.explain.window > self.train.image_size:
            raise _located(
                "explain.window",
                f"{self.explain.window} is larger than the model input (train.image_size {self.train.image_size})",
            )
        return self

    @property
    def sources(self) -> DatasetSources:
        """The sources of positives and negatives of the chosen dataset."""
        return self.datasets[self.dataset]

    def needed_sources(self) -> list[str]:
        roles = self.sources
        return sorted(set(roles.positives) | set(roles.negatives), key=SOURCES.index)

    def fetch_selection(self) -> dict:
        """The parameters the fetch stage reads for the chosen dataset, and no other: for synthetic
        the seed and ``synthetic``, for real data its sources' ``fetch.<name>``."""
        if self.dataset == "synthetic":
            return {"dataset": self.dataset, "seed": self.seed, "synthetic": self.synthetic.as_dict()}
        sources = self.needed_sources()
        return {
            "dataset": self.dataset,
            "sources": sources,
            "fetch": {name: getattr(self.fetch, name).as_dict() for name in sources},
        }


class _Located(ValueError):
    """A cross-check's error, located at ``where`` (relative to the model that raised it)."""

    def __init__(self, where: str, message: str):
        super().__init__(message)
        self.where = where


def _located(where: str, message: str) -> _Located:
    return _Located(where, message)


def _fail(message: str):
    raise ValueError(message)


def _one_line(exc: ValidationError) -> str:
    found: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"] if not (isinstance(p, str) and "[" in p)]  # drop union tags
        where = ".".join(loc)
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, _Located):
            where, message = ".".join([*loc, ctx_error.where]), str(ctx_error)
        elif err["type"] == "extra_forbidden":
            message = "unknown parameter (misspelt? params.yaml lists every valid one)"
        elif err["type"] == "missing":
            message = "missing from params.yaml"
        else:
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] != "value_error" and "input" in err:
                message += f", got {err['input']!r}"
        found.append((where, message))
    # A union (a number or a mapping of numbers) reports each member: keep the deepest, first.
    wheres = [w for w, _ in found]
    kept, seen = [], set()
    for where, message in found:
        if where in seen or any(o.startswith(where + ".") for o in wheres if where):
            continue
        seen.add(where)
        kept.append(f"parameter {where}: {message}" if where else message)
    return "; ".join(kept)


def override(section: Section, where: str, **values) -> Section:
    """``section`` with the given values (those not None) replaced, validated as params.yaml's
    own (a command-line option gets the same checks and the same one-line error)."""
    merged = {**section.model_dump(), **{k: v for k, v in values.items() if v is not None}}
    try:
        return type(section).model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc).replace("parameter ", f"parameter {where}.")) from None


def validate(params: dict) -> Params:
    """Typed configuration from the parsed params.yaml; ConfigError names each bad parameter."""
    try:
        return Params.model_validate(params)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


MAX_PARAMS_BYTES = 1 << 20  # a parameter file is a few kilobytes; anything near this is not one


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last silently)
    and anchors and aliases (``&a`` / ``*a``: nothing in params.yaml needs them, and nested aliases
    expand exponentially: a few lines can keep a loader busy for hours)."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None,
                None,
                "YAML anchors and aliases (&name, *name) are not allowed in a parameter file",
                event.start_mark,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        if path.is_file() and path.stat().st_size > MAX_PARAMS_BYTES:
            raise ConfigError(
                f"{path}: {path.stat().st_size} bytes, more than a parameter file's "
                f"{MAX_PARAMS_BYTES} (refused before parsing)"
            )
        text = path.read_bytes().decode("utf-8")
        params = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except FileNotFoundError:
        raise ConfigError(f"{path}: parameter file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a parameter file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML (nested too deeply)") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return params


def load_config(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml in one step, before any long work."""
    params = read_yaml(path)  # its errors name the file already
    try:
        return validate(params)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def flatten(d: dict, prefix: str = "") -> dict:
    """``{"test": {"auc": 0.9}}`` -> ``{"test.auc": 0.9}`` (keys already dotted are kept)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
