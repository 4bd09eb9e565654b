"""The clock port (layer: ports).

Adapters: :class:`dmp.adapters.sim.clock.SimClock` (virtual time, tests) and
:class:`dmp.adapters.clock.SystemClock` (wall time).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["Clock"]


@runtime_checkable
class Clock(Protocol):
    """A source of time and of timed waits."""

    def now(self) -> float:
        """Current POSIX time in seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...
