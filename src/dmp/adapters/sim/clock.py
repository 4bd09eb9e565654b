"""A virtual clock for tests (house-style §3.7).

``now()`` returns virtual time. ``sleep(s)`` parks the caller on an
``anyio.Event`` in a ``(deadline, seq)`` heap. ``run_until_idle()`` waits
until every task is blocked, then fires the earliest timer, and repeats
until nothing is left to fire. The wall clock is never read.
"""

from __future__ import annotations

import heapq
import itertools

import anyio
import anyio.lowlevel

__all__ = ["SimClock"]


class SimClock:
    """Virtual time implementing :class:`dmp.ports.clock.Clock`.

    Args:
        start: initial POSIX time in seconds.
    """

    def __init__(self, start: float = 1_900_000_000.0) -> None:
        self._now = float(start)
        self._timers: list[tuple[float, int, anyio.Event]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        """Current virtual time in seconds."""
        return self._now

    async def sleep(self, seconds: float) -> None:
        """Park until virtual time reaches ``now + seconds``.

        A non-positive duration only yields to the scheduler.
        """
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        heapq.heappush(self._timers, (self._now + seconds, next(self._seq), event))
        await event.wait()

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking every timer that falls due.

        Raises:
            ValueError: ``seconds`` is negative.
        """
        if seconds < 0:
            raise ValueError("time only moves forward")
        target = self._now + seconds
        while self._timers and self._timers[0][0] <= target:
            deadline, _, event = heapq.heappop(self._timers)
            self._now = max(self._now, deadline)
            event.set()
        self._now = target

    @property
    def pending_timers(self) -> int:
        """How many sleepers are parked."""
        return len(self._timers)

    async def run_until_idle(self, max_steps: int = 100_000) -> None:
        """Alternate "let every task block" and "fire the earliest timer".

        Returns when all tasks are blocked and no timer is pending.

        Raises:
            RuntimeError: the system did not go quiet within ``max_steps`` timer firings.
        """
        for _ in range(max_steps):
            await anyio.wait_all_tasks_blocked()
            if not self._timers and await self._settled():
                return
            if not self._timers:
                continue
            deadline, _, event = heapq.heappop(self._timers)
            self._now = max(self._now, deadline)
            event.set()
        raise RuntimeError(f"not idle after {max_steps} timer firings")

    async def _settled(self, rounds: int = 3) -> bool:
        """True when nothing wakes up over a few scheduler passes.

        A task whose awaited future has just completed (a task group whose last
        child finished, say) still looks blocked to ``wait_all_tasks_blocked``
        until the loop runs it; letting pending callbacks run first avoids
        declaring idleness in that window.
        """
        for _ in range(rounds):
            await anyio.lowlevel.checkpoint()
            await anyio.wait_all_tasks_blocked()
            if self._timers:
                return False
        return True
