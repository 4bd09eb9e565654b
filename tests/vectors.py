"""Loading the golden vectors ($DMP_VECTORS_DIR, else ../shared/vectors, else tests/golden).

tests/golden holds a copy of the public set so that a clone with no
../shared still checks every vector.

Tests must not depend on the number of entries, their ids or the label:
the same tests run against a held-back set with the same schema.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

_REPO = Path(__file__).resolve().parent.parent
_SHARED = _REPO.parent / "shared" / "vectors"
_BUNDLED = _REPO / "tests" / "golden"


def _vectors_dir() -> Path:
    """``$DMP_VECTORS_DIR``, else ``../shared/vectors``, else the copy bundled in tests/golden."""
    if os.environ.get("DMP_VECTORS_DIR"):
        return Path(os.environ["DMP_VECTORS_DIR"])
    return _SHARED if _SHARED.is_dir() else _BUNDLED


VECTORS_DIR = _vectors_dir()


def load(name: str) -> dict[str, Any]:
    """The parsed JSON of one vector file; skips the test module when it is absent."""
    path = VECTORS_DIR / name
    if not path.is_file():
        pytest.skip(
            f"golden vectors not found at {path} (set DMP_VECTORS_DIR)", allow_module_level=True
        )
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def params(items: list[Any], key: str = "id") -> list[Any]:
    """``pytest.param`` per entry, with the entry's id when it has one."""
    return [
        pytest.param(item, id=str(item.get(key, i)) if isinstance(item, dict) else str(i))
        for i, item in enumerate(items)
    ]


def h(hex_text: str) -> bytes:
    return bytes.fromhex(hex_text)
