"""Imports point one way (docs/design.md): server, training, prompt_store -> promptserve -> kernels. The core and the
kernels import nothing above them, neither by `import` nor by a string handed to importlib.import_module /
__import__ (the old console entry point reached server and training that way). Read from the AST, so a lazy
import inside a function counts as much as one at the top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FLOORS = {  # package -> the project packages it must not import
    "kernels": {"promptserve", "prompt_store", "server", "training", "promptserve_cli"},
    "promptserve": {"prompt_store", "server", "training", "promptserve_cli"},
    "prompt_store": {"server", "training", "promptserve_cli"},
    "server": {"training", "promptserve_cli"},
    "training": {"server", "promptserve_cli"},
}
DYNAMIC_IMPORTERS = {"import_module", "__import__"}


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, module) for every import statement and every import_module("...") / __import__("...") call
    whose first argument is a string constant."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in DYNAMIC_IMPORTERS:
                found.append((node.lineno, node.args[0].value))
    return found


def violations(package: str, root: Path = REPO) -> list[str]:
    banned = FLOORS[package]
    return [f"{path.relative_to(root)}:{line} imports {module}"
            for path in sorted((root / package).rglob("*.py"))
            for line, module in imported_modules(path.read_text())
            if module.split(".")[0] in banned]


@pytest.mark.parametrize("package", sorted(FLOORS))
def test_package_imports_nothing_above_it(package):
    assert violations(package) == [], f"{package} reaches above its floor (docs/design.md, 'The rooms')"


def test_the_check_sees_static_lazy_and_string_imports(tmp_path):
    """The test can fail: a planted core module with each kind of upward import is caught, line by line."""
    core = tmp_path / "promptserve"
    core.mkdir()
    (core / "planted.py").write_text(
        "import importlib\nimport server.app\n"
        "def f():\n    from training import cli\n    return importlib.import_module('prompt_store.cli')\n"
        "def g():\n    return __import__('server')\n")
    assert violations("promptserve", tmp_path) == [
        "promptserve/planted.py:2 imports server.app", "promptserve/planted.py:4 imports training",
        "promptserve/planted.py:5 imports prompt_store.cli", "promptserve/planted.py:7 imports server"]


def test_the_console_entry_point_lives_above_the_core():
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'promptserve = "promptserve_cli:main"' in pyproject
