"""The package's layers: a module imports only from its own unit or from units below it, so the
import graph has no cycle and no upward edge (the order follows the pipeline)."""

from __future__ import annotations

import pytest

from test_stage_deps import REPO, direct_imports

#: Lowest first. A unit is a top-level module (``config``) or a subpackage (``data``); units on
#: one line (a tuple) are peers that must not import each other.
LAYERS = [
    ("errors",),
    ("__init__", "labels", "portable", "files"),
    ("config", "runner"),
    ("synthetic",),
    ("data",),
    ("segment",),
    ("model",),
    ("evaluation",),
    ("explain",),
    ("checks",),
    ("cli",),
    ("__main__",),
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
MODULES = sorted((REPO / "deepcovid").rglob("*.py"))


def unit(path, root=None) -> str:
    parts = path.relative_to((root or REPO) / "deepcovid").parts
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def upward_imports(module, root=None) -> list[str]:
    """The project files ``module`` imports from a unit at or above its own layer."""
    here = unit(module, root)
    return [
        dep.relative_to(root or REPO).as_posix()
        for dep in sorted(direct_imports(module))
        if unit(dep, root) != here and RANK[unit(dep, root)] >= RANK[here]
    ]


def test_every_unit_has_a_layer():
    assert {unit(p) for p in MODULES} <= set(RANK), sorted({unit(p) for p in MODULES} - set(RANK))


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_imports_run_downward(module):
    upward = upward_imports(module)
    assert not upward, f"{module.relative_to(REPO)} imports a unit at or above its layer: {', '.join(upward)}"


def test_the_check_sees_an_upward_and_a_sideways_import(tmp_path, monkeypatch):
    import test_stage_deps

    for rel, text in {
        "deepcovid/__init__.py": "",
        "deepcovid/data/__init__.py": "",
        "deepcovid/data/a.py": "from deepcovid.model import b\nfrom deepcovid import files\n",
        "deepcovid/model/__init__.py": "",
        "deepcovid/model/b.py": "from deepcovid.data import a\n",
        "deepcovid/files.py": "from deepcovid import portable\n",
        "deepcovid/portable.py": "",
    }.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    monkeypatch.setattr(test_stage_deps, "REPO", tmp_path)
    direct_imports.cache_clear()
    try:
        assert upward_imports(tmp_path / "deepcovid/data/a.py", tmp_path) == ["deepcovid/model/b.py"]
        assert upward_imports(tmp_path / "deepcovid/model/b.py", tmp_path) == []
        assert upward_imports(tmp_path / "deepcovid/files.py", tmp_path) == ["deepcovid/portable.py"]  # peers
    finally:
        direct_imports.cache_clear()
