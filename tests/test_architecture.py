"""The shape of the house: imports point one way, files and functions stay readable.

    app -> train -> sft -> eval -> config -> {rollout -> models, tasks, objective} -> util
    (config validates prompt templates with rollout.templates)

Every `import drgrpo.X` / `from drgrpo.X import` counts, lazy ones inside functions included.
`train -> sft` is the one edge between front-end-level packages: the built-in base policy is a
cached SFT run that training needs; sft never imports train.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "drgrpo"

ALLOWED = {
    "util": set(),
    "objective": {"util"},
    "tasks": {"util"},
    "models": {"util"},
    "rollout": {"models", "util"},
    "config": {"objective", "rollout", "util"},
    "eval": {"rollout", "models", "tasks", "objective", "util"},
    "sft": {"eval", "config", "rollout", "models", "tasks", "objective", "util"},
    "train": {"sft", "eval", "config", "rollout", "models", "tasks", "objective", "util"},
    "app": {"train", "sft", "eval", "config", "rollout", "models", "tasks", "objective", "util"},
}
"""Package -> the drgrpo packages it may import (besides itself and the top-level __version__)."""

MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def package_of(path: Path) -> str:
    parts = path.relative_to(SRC).parts
    return parts[0] if len(parts) > 1 else path.stem


def drgrpo_imports(path: Path) -> set[str]:
    """The top-level drgrpo packages a module imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "drgrpo":
                names = [f"drgrpo.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "drgrpo" and len(parts) > 1 and parts[1] != "__version__":
                found.add(parts[1])
    return found


MODULES = sorted(p for p in SRC.rglob("*.py") if p.parent != SRC or p.stem != "__init__")


def test_every_package_has_a_declared_layer():
    packages = {package_of(p) for p in MODULES} - {"__main__"}
    assert packages <= set(ALLOWED), packages - set(ALLOWED)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_one_way(path):
    package = package_of(path)
    if package == "__main__":
        assert drgrpo_imports(path) == {"app"}
        return
    wrong = drgrpo_imports(path) - ALLOWED[package] - {package}
    assert not wrong, f"{path.relative_to(SRC)} ({package}) imports {sorted(wrong)}"


def test_the_import_checker_sees_lazy_and_from_imports(tmp_path):
    """Negative control: the checker must catch a function-level import and `from drgrpo import`."""
    module = tmp_path / "m.py"
    module.write_text(
        "def f():\n    from drgrpo.train.run import Run\n\nfrom drgrpo import app\nimport drgrpo.tasks\n"
    )
    assert drgrpo_imports(module) == {"train", "app", "tasks"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_files_and_functions_stay_readable(path):
    source = path.read_text()
    lines = len(source.splitlines())
    assert lines <= MAX_FILE_LINES, f"{path.relative_to(SRC)} has {lines} lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{path.relative_to(SRC)}:{node.name} {length}"
