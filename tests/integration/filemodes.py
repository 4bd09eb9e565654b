"""File-mode checks shared by the store tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def umask(mask: int) -> Iterator[None]:
    """Run the block under ``mask``, then restore the previous umask."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def sqlite_file_modes(path: Path) -> set[str]:
    """The permission bits of a live sqlite database and its -wal and -shm files.

    Raises:
        AssertionError: one of the three files is missing (the store must be
            open and have written something for the side files to exist).
    """
    files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
    missing = [f.name for f in files if not f.exists()]
    assert not missing, f"missing {missing}"
    return {oct(f.stat().st_mode & 0o777) for f in files}
