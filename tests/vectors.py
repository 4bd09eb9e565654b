"""Loading the golden vectors (../shared/vectors, or $DMP_VECTORS_DIR).

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
VECTORS_DIR = Path(os.environ.get("DMP_VECTORS_DIR", _REPO.parent / "shared" / "vectors"))


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
