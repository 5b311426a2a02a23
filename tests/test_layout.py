"""Tests never import benchmarks and benchmarks never import tests (issue 18).

Why: a benchmark that imports a test module drags pytest fixtures and test-only shortcuts
into measured code, and a test that imports a benchmark breaks when a benchmark script is
reworked. Code both need lives in the package (e.g. foldray.model.parity) or is shared as
a data fixture (tests/fixtures/batch_jobs, written by benchmarks/batch_jobs.py).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Every absolute module name a file imports, at any depth (function-local imports too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def offenders(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        bad = sorted(m for m in imported_modules(path) if m.split(".")[0] in forbidden)
        if bad:
            found.append(f"{path.relative_to(ROOT)}: {', '.join(bad)}")
    return found


@pytest.mark.parametrize(("folder", "forbidden"), [("tests", ("benchmarks",)),
                                                    ("benchmarks", ("tests", "conftest"))])
def test_no_imports_across_tests_and_benchmarks(folder: str, forbidden: tuple[str, ...]) -> None:
    assert offenders(folder, forbidden) == []


def test_the_check_sees_function_local_imports(tmp_path: Path) -> None:
    source = tmp_path / "bench.py"
    source.write_text("def f():\n    from tests.jobs.test_x import variants\n    import benchmarks.kernels\n")
    assert imported_modules(source) == {"tests.jobs.test_x", "benchmarks.kernels"}
