"""deepcovid.config: params.yaml validated once, typed, with one-line errors naming the parameter."""

from __future__ import annotations

import ast
import copy

import pytest
import yaml

from deepcovid.config import ConfigError, load_config, validate
from workspace import REPO

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def _leaves(d: dict, prefix: str = "", dicts: bool = False):
    """Dotted names of every key (with ``dicts``: only of the keys holding a mapping)."""
    for key, value in d.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) or not dicts:
            yield dotted
        if isinstance(value, dict):
            yield from _leaves(value, dotted + ".", dicts)


def _without(params: dict, dotted: str) -> dict:
    out = copy.deepcopy(params)
    node = out
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    del node[last]
    return out


def _with(params: dict, dotted: str, value) -> dict:
    out = copy.deepcopy(params)
    node = out
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    return out


def _error(params: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate(params)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_committed_params_validate_and_round_trip():
    cfg = load_config(REPO / "params.yaml")
    assert cfg.as_dict() == PARAMS  # nothing added, nothing dropped: defaults live only in params.yaml
    assert cfg.train.epochs == PARAMS["train"]["epochs"]
    assert cfg.sources.positives == PARAMS["datasets"][PARAMS["dataset"]]["positives"]


# Mappings whose keys are data (names of datasets, metrics, patterns), not parameter names.
OPEN_MAPPINGS = {
    "datasets",
    "regression.tolerances",
    "reproduction.tolerances",
    "negatives.counts",
    "mitigation.variants",  # variant names; each one's overrides are validated when the study runs
}


def _closed(dotted: str) -> bool:
    return dotted not in OPEN_MAPPINGS and not any(dotted.startswith(m + ".") for m in OPEN_MAPPINGS)


@pytest.mark.parametrize("dotted", [k for k in _leaves(PARAMS) if _closed(k) or k in OPEN_MAPPINGS])
def test_every_parameter_is_required(dotted):
    message = _error(_without(PARAMS, dotted))
    assert dotted in message and "missing" in message


SECTIONS = (
    [""]
    + [k for k in _leaves(PARAMS, dicts=True) if _closed(k)]
    + ["datasets.public", "negatives.counts.paper", "negatives.counts.paper.train"]
)


@pytest.mark.parametrize("section", SECTIONS)
def test_unknown_keys_are_rejected(section):
    dotted = f"{section}.epoch" if section else "epoch"
    message = _error(_with(PARAMS, dotted, 5))  # e.g. train.epoch: 5, a typo of train.epochs
    assert f"parameter {dotted}: unknown parameter" in message


@pytest.mark.parametrize(
    "dotted, value, expect",
    [
        ("train.epochs", 0, "greater than or equal to 1"),
        ("train.epochs", True, "valid integer"),
        ("train.epochs", 2.5, "valid integer"),
        ("train.lr", 0, "greater than 0"),
        ("train.lr", True, "not true/false"),
        ("train.mode", "head", "last_layer"),
        ("train.shuffle_labels", "yes", "valid boolean"),
        ("model", "vgg16", "efficientnet_lite0"),
        ("dataset", "kaggle", "synthetic"),
        ("seed", -1, "greater than or equal to 0"),
        ("datasets.public.negatives", ["cohen", "nih"], "cohen"),
        ("datasets.public.positives", [], "at least 1"),
        ("split.val_fraction", 0.95, "less than or equal to 0.9"),
        ("preprocess.resize", "crop", "stretch"),
        ("augment.hflip_p", 1.5, "less than or equal to 1"),
        ("augment.scale", [1.1, 0.9], "low <= high"),
        ("augment.scale", [0.1, 1.0], "within [0.5, 2]"),
        ("augment.elastic_grid", 1, "greater than or equal to 2"),
        ("augment.elastic_alpha", -5, "greater than or equal to 0"),  # would have turned the distortion off
        ("fetch.cohen.timeout", float("inf"), "finite number"),
        ("reproduction.tolerances.*", float("nan"), "finite number"),
        ("mlflow.enabled", "no", "valid boolean"),
        ("synthetic.cohen.severity", [0.5, 1.5], "within [0, 1]"),
        ("synthetic.chexpert.images_per_patient", [0, 2], "low must be >= 1"),
        ("evaluate.thresholds", [], "at least 1"),
        ("evaluate.thresholds", [0.5, 1.2], "less than or equal to 1"),
        ("evaluate.ci_method", "normal", "wilson"),
        ("explain.runtime", "tensorrt", "onnxruntime"),
        ("evaluate.alpha", 0.7, "less than or equal to 0.5"),
        ("fetch.cohen.tree_sha256", "abc", "pattern"),
        ("fetch.cohen.retries", 0, "greater than 0"),
        ("negatives.public_test_fraction", -0.1, "greater than or equal to 0"),
        ("regression.tolerances.test.auc", -0.01, "greater than or equal to 0"),
        ("reproduction.tolerances.*", "big", "valid number"),
        # size parameters: none may allocate beyond the machine in one step
        ("train.image_size", 0, "greater than or equal to 32"),
        ("train.image_size", 100_000, "less than or equal to 1024"),
        ("preprocess.cache_size", 100_000, "less than or equal to 2048"),  # was 35.8 GiB of cache per image... at once
        ("preprocess.max_pixels", 10**9, "less than or equal to 89478485"),
        ("preprocess.max_pixels", 100, "greater than or equal to 65536"),
        ("preprocess.workers", 10_000, "less than or equal to 256"),
        ("train.epochs", 10**9, "less than or equal to 100000"),
        ("train.batch_size", 10**6, "less than or equal to 4096"),
        ("train.feature_batch_size", 10**6, "less than or equal to 4096"),
        ("explain.batch_size", 10**6, "less than or equal to 4096"),
        ("augment.copies", 1000, "less than or equal to 100"),
        ("synthetic.chexpert.width", 100_000, "less than or equal to 8192"),
        ("synthetic.cohen.size_range", [64, 100_000], "within [64, 8192]"),
    ],
)
def test_bad_values_name_the_parameter(dotted, value, expect):
    message = _error(_with(PARAMS, dotted, value))
    assert message.startswith(f"parameter {dotted.rsplit('.', 1)[0] if dotted.endswith('.*') else dotted}")
    assert expect in message


@pytest.mark.parametrize(
    "changes, where, expect",
    [
        ({"train.image_size": 300}, "train.image_size", "larger than preprocess.cache_size 256"),
        ({"filter.frontal_views": ["PA", "Lateral"]}, "filter.frontal_views", "lateral view (Lateral)"),
        (
            {"fetch.actualmed.method": "git", "fetch.actualmed.commit": "27240dd"},
            "fetch.actualmed.commit",
            "full commit",
        ),
        ({"fetch.cohen.url": "", "fetch.cohen.local_dir": None}, "fetch.cohen.url", "set url"),
        ({"fetch.cohen.commit": ""}, "fetch.cohen.commit", "url contains {commit}"),
        ({"regression.lower_is_better": ["test.brier"]}, "regression.lower_is_better", "test.brier"),
        ({"dataset": "paper", "datasets": {"public": PARAMS["datasets"]["public"]}}, "datasets", "'paper'"),
    ],
)
def test_cross_checks_name_the_parameter(changes, where, expect):
    params = PARAMS
    for dotted, value in changes.items():
        params = _with(params, dotted, value)
    message = _error(params)
    assert message.startswith(f"parameter {where}:") and expect in message


def test_cross_checks_accept_what_they_should(tmp_path):
    params = _with(PARAMS, "fetch.cohen.url", "")
    params = _with(params, "fetch.cohen.local_dir", str(tmp_path))  # a local copy needs no url
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")
    params = _with(params, "weights", str(weights))
    params = _with(params, "train.image_size", PARAMS["preprocess"]["cache_size"])
    validate(params)


def test_load_config_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "params.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text(yaml.safe_dump(_with(PARAMS, "train.epochs", 0)))
    with pytest.raises(ConfigError, match=rf"^{bad}: parameter train.epochs"):
        load_config(bad)


def test_yaml_alias_bombs_and_huge_files_are_refused_before_any_work(tmp_path):
    """A billion-laughs alias bomb inside a valid key is refused at its first anchor, at once; so
    is a plain anchor; a file over the size limit is refused without being parsed."""
    import time

    from deepcovid.config import MAX_PARAMS_BYTES

    text = (REPO / "params.yaml").read_text()
    bomb = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{k}: &a{k} [*a{k - 1}, *a{k - 1}, *a{k - 1}, *a{k - 1}, *a{k - 1}, *a{k - 1}, *a{k - 1}, *a{k - 1}]\n"
        for k in range(1, 12)
    )
    path = tmp_path / "params.yaml"
    path.write_text(
        text.replace("mlflow:\n", "mlflow:\n  bomb:\n" + "".join("    " + line + "\n" for line in bomb.splitlines()), 1)
    )
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"anchors and aliases .* are not allowed"):
        load_config(path)
    assert time.perf_counter() - start < 2
    path.write_text(text.replace("seed: 42", "seed: &s 42", 1))
    with pytest.raises(ConfigError, match=r"anchors and aliases"):
        load_config(path)
    path.write_text(text + "#" * MAX_PARAMS_BYTES)
    with pytest.raises(ConfigError, match=rf"^{path}: \d+ bytes, more than a parameter file's"):
        load_config(path)
    path.write_text(text)
    load_config(path)


STAGE_SCRIPTS = sorted((REPO / "stages").glob("*.py"))


def dict_passing(source: str) -> list[str]:
    """Where a stage script turns the typed configuration back into a dict: ``.as_dict()``,
    ``.model_dump()``, ``dict(section)``, ``vars(section)`` or a ``**`` expansion."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in ("as_dict", "model_dump", "model_dump_json"):
                found.append(f"line {node.lineno}: .{func.attr}()")
            elif isinstance(func, ast.Name) and func.id in ("dict", "vars") and node.args:
                found.append(f"line {node.lineno}: {func.id}(...)")
            found += [f"line {node.lineno}: **{ast.unparse(k.value)}" for k in node.keywords if k.arg is None]
    return sorted(found)


@pytest.mark.parametrize("script", STAGE_SCRIPTS, ids=lambda p: p.name)
def test_stages_pass_the_typed_configuration_not_dicts(script):
    """Each stage hands its validated section (or plain values) to the package: a dict of
    parameters would lose the validation and the names (the code would read params["train"]["lr"])."""
    found = dict_passing(script.read_text(encoding="utf-8"))
    assert not found, f"{script.relative_to(REPO)} passes the configuration as a dict: {'; '.join(found)}"


def test_the_dict_check_sees_each_form():
    assert dict_passing("run(cfg.as_dict())\nrun(**cfg.train.model_dump())\n") == [
        "line 1: .as_dict()",
        "line 2: **cfg.train.model_dump()",
        "line 2: .model_dump()",
    ]
    assert dict_passing("f(dict(cfg.train))\ng(**config.explain)\n") == [
        "line 1: dict(...)",
        "line 2: **config.explain",
    ]
    assert dict_passing("run(cfg.train, seed=cfg.seed)\nx = dict()\n") == []
