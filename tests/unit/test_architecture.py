"""The architecture contract: ``dmp.domain`` is pure (DEVELOPERS.md, house-style §3.1)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

DOMAIN = Path(__file__).resolve().parents[2] / "src" / "dmp" / "domain"

FORBIDDEN_MODULES = (
    "anyio",
    "asyncio",
    "httpx",
    "quart",
    "hypercorn",
    "sqlite3",
    "socket",
    "time",
    "dns.query",
    "dns.asyncquery",
    "dns.resolver",
    "dns.asyncresolver",
    "dmp.adapters",
    "dmp.apps",
)
FORBIDDEN_CALLS = {
    ("os", "urandom"),
    ("time", "time"),
    ("time", "monotonic"),
    ("time", "perf_counter"),
    ("random", "random"),
    ("random", "randint"),
    ("random", "randrange"),
    ("random", "choice"),
    ("random", "choices"),
    ("random", "shuffle"),
    ("random", "sample"),
    ("random", "getrandbits"),
    ("random", "randbytes"),
    ("random", "uniform"),
    ("secrets", "token_bytes"),
    ("secrets", "token_hex"),
    ("secrets", "randbits"),
}


def _domain_files() -> list[Path]:
    return sorted(DOMAIN.rglob("*.py"))


def _is_forbidden(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FORBIDDEN_MODULES)


def test_domain_has_modules() -> None:
    assert len(_domain_files()) >= 3


@pytest.mark.parametrize("path", _domain_files(), ids=lambda p: p.name)
def test_domain_module_is_pure(path: Path) -> None:
    """No domain module imports I/O or the clock, or calls global randomness."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    problems: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            problems += [f"import {a.name}" for a in node.names if _is_forbidden(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if _is_forbidden(node.module):
                problems.append(f"from {node.module} import ...")
            problems += [
                f"from {node.module} import {a.name}"
                for a in node.names
                if _is_forbidden(f"{node.module}.{a.name}")
                or (node.module, a.name) in FORBIDDEN_CALLS
            ]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and (node.func.value.id, node.func.attr) in FORBIDDEN_CALLS
        ):
            problems.append(f"call {node.func.value.id}.{node.func.attr}() at line {node.lineno}")
    assert problems == [], f"{path.name} breaks the domain contract: {problems}"


def test_checker_catches_violations(tmp_path: Path) -> None:
    """The walker itself flags a forbidden import and a global-random call."""
    bad = tmp_path / "bad.py"
    bad.write_text("import socket\nimport random\nx = random.random()\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="socket"):
        test_domain_module_is_pure(bad)
