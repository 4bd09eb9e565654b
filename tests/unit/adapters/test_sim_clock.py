"""SimClock: virtual time that advances only when everything is blocked."""

from __future__ import annotations

import anyio
import pytest

from dmp.adapters.sim import SimClock
from dmp.ports.clock import Clock

pytestmark = pytest.mark.anyio


async def test_sleepers_wake_in_deadline_order() -> None:
    clock = SimClock(start=1000.0)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.now()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(sleeper, "late", 30.0)
        tg.start_soon(sleeper, "early", 5.0)
        tg.start_soon(sleeper, "mid", 10.0)
        await clock.run_until_idle()
    assert woke == [("early", 1005.0), ("mid", 1010.0), ("late", 1030.0)]
    assert clock.pending_timers == 0


async def test_run_until_idle_fails_loudly_on_endless_timers() -> None:
    clock = SimClock()

    async def ticker() -> None:
        while True:
            await clock.sleep(1.0)

    with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="not idle")):
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            try:
                await clock.run_until_idle(max_steps=50)
            finally:
                tg.cancel_scope.cancel()


async def test_advance_wakes_due_timers_only() -> None:
    clock = SimClock(start=0.0)
    done: list[float] = []

    async def sleeper(seconds: float) -> None:
        await clock.sleep(seconds)
        done.append(seconds)

    async with anyio.create_task_group() as tg:
        tg.start_soon(sleeper, 2.0)
        tg.start_soon(sleeper, 9.0)
        await anyio.wait_all_tasks_blocked()
        clock.advance(5.0)
        await anyio.wait_all_tasks_blocked()
        assert done == [2.0]
        assert clock.now() == 5.0
        clock.advance(4.0)
    assert done == [2.0, 9.0]
    with pytest.raises(ValueError, match="forward"):
        clock.advance(-1)


def test_sim_clock_satisfies_port() -> None:
    assert isinstance(SimClock(), Clock)


async def test_idle_is_not_declared_while_a_task_group_is_unwinding() -> None:
    """A parent resumed by its finished children still gets to schedule its next timer."""
    clock = SimClock(start=0.0)
    done: list[float] = []

    async def child() -> None:
        await clock.sleep(1.0)

    async def parent() -> None:
        for _ in range(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(child)
                tg.start_soon(child)
            await clock.sleep(5.0)
        done.append(clock.now())

    async with anyio.create_task_group() as tg:
        tg.start_soon(parent)
        await clock.run_until_idle()
    assert done == [30.0]
