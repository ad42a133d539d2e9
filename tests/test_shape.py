"""The package's shape: modules of one job and readable size, no import circle, and an orchestration that
never needs pytest (the worker and its coordinator are devicebench's own)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "devicebench"
MOST_LINES = 450


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The devicebench modules ``path`` imports, at its top or inside its functions alike."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found - {module_name(path)}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imports_of(path, modules) - {"devicebench"} for path in paths}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle of ``graph`` (module -> the modules it imports), as found from each module."""
    found = []
    finished: set[str] = set()

    def visit(module: str, trail: list[str]) -> None:
        for other in sorted(graph.get(module, ())):
            if other in trail:
                found.append(trail[trail.index(other):] + [other])
            elif other not in finished:
                visit(other, trail + [other])
        finished.add(module)

    for module in sorted(graph):
        if module not in finished:
            visit(module, [module])
    return found


def test_no_module_imports_itself_back_through_another():
    found = circles(import_graph())
    assert not found, f"import circles: {sorted({' -> '.join(circle) for circle in found})[:5]}"


def test_a_planted_circle_is_found():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_module_is_longer_than_a_reader_can_hold():
    lengths = {module_name(path): len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    assert {name: count for name, count in lengths.items() if count > MOST_LINES} == {}


def test_the_command_the_coordinator_and_the_worker_never_import_pytest():
    code = ("import sys; import devicebench.cli, devicebench.coordinator, devicebench.worker, devicebench.measure; "
            "print(sorted(name for name in sys.modules if name.split('.')[0] in ('pytest', '_pytest', "
            "'pytest_benchmark')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
