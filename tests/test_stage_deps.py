"""Every dvc.yaml stage depends on every project module its script runs, and on no other code.

Code dependencies are written at subpackage level (``deepcovid/data``) or as top-level modules
(``deepcovid/config.py``): a stage re-runs when any module of a subpackage it imports changes (a
little more often than needed), and dvc.yaml needs no edit when a subpackage gains a module.

The import closure of each stage's script (``python stages/X.py`` or ``python -m pkg.mod`` in its
cmd) is derived from the code with ``ast``: ``import deepcovid.x``, ``from deepcovid import x``,
``from deepcovid.x import y``, relative imports, imports inside functions, followed through every
project module reached. A missing module means DVC does not re-run the stage when that code
changes; code listed but never imported re-runs it for nothing. No DVC call: this is fast.

``deepcovid/__init__.py`` runs on every import of the package. While it only binds constants
(a docstring, ``__version__``) it is a dependency of the stages whose code uses one of its names
(``from deepcovid import __version__``, ``import deepcovid``); once it does more (imports, calls,
definitions) it is a dependency of every stage importing the package.
"""

from __future__ import annotations

import ast
import shlex
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("deepcovid",)  # the project's importable packages (top-level names)


def module_file(name: str) -> Path | None:
    """The file of a project module or package, or None (third-party, or not a module)."""
    path = REPO.joinpath(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def package_of(path: Path) -> str:
    """Dotted package a project file belongs to ('' for a script outside any package)."""
    parts = path.relative_to(REPO).parent.parts
    return ".".join(parts) if parts and parts[0] in PACKAGES else ""


def _absolute(node: ast.ImportFrom, path: Path) -> str:
    if not node.level:
        return node.module or ""
    anchor = package_of(path).split(".") if package_of(path) else []
    anchor = anchor[: len(anchor) - node.level + 1]
    if not anchor:
        return ""  # beyond the top-level package: not a project import
    return ".".join([*anchor, node.module] if node.module else anchor)


def _is_project(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def _inert_init(path: Path) -> bool:
    """True when a package __init__ only binds constants (docstring, __version__, ...)."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # docstring
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Constant):
            continue
        return False
    return True


@cache
def direct_imports(path: Path) -> frozenset[Path]:
    """Project files whose code runs, or whose names are used, when ``path`` runs."""
    out: set[Path] = set()

    def add_package_inits(name: str) -> None:
        # importing a.b.c runs a/__init__ and a/b/__init__; they count when they do more than bind constants
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            init = module_file(".".join(parts[:i]))
            if init is not None and init.name == "__init__.py" and not _inert_init(init):
                out.add(init)

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not _is_project(alias.name):
                    continue
                add_package_inits(alias.name)
                target = module_file(alias.name)
                if target is not None:
                    out.add(target)  # its names are used (`import deepcovid` included)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, path)
            if not _is_project(base):
                continue
            add_package_inits(base)
            base_file = module_file(base)
            for alias in node.names:
                sub = module_file(f"{base}.{alias.name}")
                if sub is not None:  # a submodule: from deepcovid import io
                    out.add(sub)
                elif base_file is not None:  # a name it defines: from deepcovid.io import x; __version__
                    out.add(base_file)
    out.discard(path)
    return frozenset(out)


def import_closure(script: Path) -> dict[Path, list[Path]]:
    """Every project file reached from ``script``, with the import chain that reaches it."""
    chains: dict[Path, list[Path]] = {}
    todo = [(script, [script])]
    while todo:
        path, chain = todo.pop()
        for dep in sorted(direct_imports(path)):
            if dep != script and dep not in chains:
                chains[dep] = [*chain, dep]
                todo.append((dep, chains[dep]))
    return chains


def stage_scripts(cmd: str | list[str]) -> list[Path]:
    """Project files a stage's cmd runs: `python path.py ...` and `python -m package.module ...`."""
    scripts = []
    for line in cmd if isinstance(cmd, list) else [cmd]:
        tokens = shlex.split(line)
        for i, tok in enumerate(tokens):
            if tok.endswith(".py") and (REPO / tok).is_file():
                scripts.append(REPO / tok)
            elif tok == "-m" and i + 1 < len(tokens) and _is_project(tokens[i + 1]):
                target = module_file(tokens[i + 1])
                if target is not None:
                    scripts.append(target)
    return scripts


def _dep_path(dep) -> str:
    return (dep if isinstance(dep, str) else next(iter(dep))).rstrip("/")


def covered(rel: str, deps: list[str]) -> bool:
    return any(rel == d or rel.startswith(d + "/") for d in deps)


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_depends_on_every_module_it_imports(stage):
    spec = STAGES[stage]
    scripts = stage_scripts(spec["cmd"])
    assert scripts, f"stage {stage}: no project script found in its cmd {spec['cmd']!r}"
    deps = [_dep_path(d) for d in spec.get("deps", [])]
    missing = []
    for script in scripts:
        if not covered(_rel(script), deps):
            missing.append(f"{_rel(script)} (its own script)")
        for module, chain in sorted(import_closure(script).items()):
            if not covered(_rel(module), deps):
                missing.append(f"{_rel(module)} (imported via {' -> '.join(_rel(p) for p in chain)})")
    assert not missing, f"dvc.yaml stage {stage} misses deps: " + "; ".join(missing)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_lists_no_module_it_does_not_import(stage):
    spec = STAGES[stage]
    used = set()
    for script in stage_scripts(spec["cmd"]):
        used |= {_rel(script), *(_rel(m) for m in import_closure(script))}
    code = [d for d in map(_dep_path, spec.get("deps", [])) if _is_project(d.split("/")[0])]
    stale = sorted(d for d in code if not any(u == d or u.startswith(d + "/") for u in used))
    assert not stale, f"dvc.yaml stage {stage} depends on code its script never imports: {', '.join(stale)}"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_code_deps_are_subpackages_and_top_level_modules(stage):
    """The readable form: a subpackage folder (deepcovid/data) or a top-level module
    (deepcovid/config.py), never a module inside a subpackage, so the lists need no edit when a
    subpackage gains a module. And __pycache__ is ignored by DVC, or a folder's hash would change
    with the Python version that ran it."""
    code = [d for d in map(_dep_path, STAGES[stage].get("deps", [])) if _is_project(d.split("/")[0])]
    for dep in code:
        path = REPO / dep
        subpackage = path.is_dir() and (path / "__init__.py").is_file()
        top_level = path.suffix == ".py" and len(path.relative_to(REPO).parts) == 2
        assert subpackage or top_level, f"dvc.yaml stage {stage}: {dep} is neither a subpackage nor a top-level module"
    ignored = (REPO / ".dvcignore").read_text(encoding="utf-8").split()
    assert "__pycache__/" in ignored


# ---- the closure itself, on a small synthetic package ----------------------------------------


def test_closure_follows_every_import_form(tmp_path, monkeypatch):
    files = {
        "deepcovid/__init__.py": '"""Docs."""\n__version__ = "1"\n',
        "deepcovid/a.py": "from . import b\nfrom .c import thing\n",
        "deepcovid/b.py": "import os\n",
        "deepcovid/c.py": "def f():\n    from deepcovid.d import g\n",
        "deepcovid/d.py": "import numpy\nfrom .. import outside_the_package\n",
        "deepcovid/e.py": "from deepcovid import __version__\n",
        "deepcovid/sub/__init__.py": "",
        "deepcovid/sub/f.py": "from ..b import x\nfrom . import g\n",
        "deepcovid/sub/g.py": "",
        "deepcovid/unused.py": "",
        "stages/s.py": "import deepcovid.a as A\nfrom deepcovid import e\nimport deepcovid.sub.f\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    direct_imports.cache_clear()
    try:
        closure = {p.relative_to(tmp_path).as_posix() for p in import_closure(tmp_path / "stages/s.py")}
        assert closure == {
            "deepcovid/a.py",
            "deepcovid/b.py",
            "deepcovid/c.py",
            "deepcovid/d.py",
            "deepcovid/e.py",
            "deepcovid/__init__.py",
            "deepcovid/sub/f.py",
            "deepcovid/sub/g.py",
        }
        # an __init__ that does more than bind constants is a dependency of every importer
        (tmp_path / "deepcovid/__init__.py").write_text("from .b import *\n")
        direct_imports.cache_clear()
        (tmp_path / "stages/t.py").write_text("from deepcovid.b import x\n")
        closure = {p.relative_to(tmp_path).as_posix() for p in import_closure(tmp_path / "stages/t.py")}
        assert closure == {"deepcovid/__init__.py", "deepcovid/b.py"}
    finally:
        direct_imports.cache_clear()
