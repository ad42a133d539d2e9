"""The package declares what it imports, so a fresh `pip install -e .` is enough to run it."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
LOCAL = {"devicebench", "fixtures", "tests", "benchmarks"}


def imported_top_level_modules(folder: Path) -> set[str]:
    found = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def declared_distributions() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0].lower().replace("_", "-")
            for spec in project["dependencies"]}


def test_every_third_party_import_is_a_declared_dependency():
    providers = importlib.metadata.packages_distributions()
    declared = declared_distributions()
    missing = []
    for module in sorted(imported_top_level_modules(REPO / "devicebench") | imported_top_level_modules(REPO / "fixtures")):
        if module in LOCAL or module in sys.stdlib_module_names or module == "__future__":
            continue
        # A module not installed here (tomli on Python 3.11+) is looked up by its own name.
        distributions = {name.lower().replace("_", "-") for name in providers.get(module, [module])}
        if not distributions & declared:
            missing.append(f"{module} (from {', '.join(sorted(distributions))})")
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
