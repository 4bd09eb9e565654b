"""Wall-clock adapter for :class:`dmp.ports.clock.Clock`."""

from __future__ import annotations

import time

import anyio

__all__ = ["SystemClock"]


class SystemClock:
    """Real time: ``time.time()`` and ``anyio.sleep``."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)
