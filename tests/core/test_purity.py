"""The core must stay pure: no event loop, Ray, HTTP, database, clock or randomness."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "coordinator" / "core"
FORBIDDEN_MODULES = {
    "asyncio", "ray", "aiohttp", "sqlite3", "asyncpg", "socket", "threading", "subprocess",
    "random", "time", "datetime", "requests", "urllib.request", "opentelemetry", "os",
}


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_core_imports_nothing_impure() -> None:
    files = sorted(CORE.glob("*.py"))
    assert len(files) >= 8
    for path in files:
        for module in imported_modules(path):
            root = module.split(".")[0]
            assert module not in FORBIDDEN_MODULES and root not in FORBIDDEN_MODULES, (
                f"{path.name} imports {module}"
            )


def test_the_purity_check_catches_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import asyncio\nfrom ray import remote\n")
    assert imported_modules(bad) == {"asyncio", "ray"}
