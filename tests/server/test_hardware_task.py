"""The hardware task runs the core at its deadlines and when woken, never in a loop.

In-process under trio's MockClock, with a small stand-in for the core that records when
it is serviced: virtual time moves only when the test jumps it.
"""

from __future__ import annotations

from collections import Counter

import trio
import trio.testing

from iopfd.server.config import Config
from iopfd.server.connection import now_ns
from iopfd.server.daemon import Daemon


class ClockedCore:
    """Just enough of ``Core`` for the hardware task: deadlines and service calls."""

    def __init__(self) -> None:
        self.deadlines: list[int] = []
        self.serviced: list[int] = []
        self.trace_enabled = False
        self.counters: Counter[str] = Counter()

    def next_deadline(self) -> int | None:
        return min(self.deadlines) if self.deadlines else None

    def service(self, now: int) -> None:
        self.serviced.append(now)
        self.deadlines = [d for d in self.deadlines if d > now]

    def take_events(self) -> list[object]:
        return []


async def test_hardware_task_sleeps_until_the_deadline_without_spinning(
    mock_clock: trio.testing.MockClock,
) -> None:
    core = ClockedCore()
    daemon = Daemon(Config(), core)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(daemon._hardware_task)
        await trio.testing.wait_all_tasks_blocked()
        assert core.serviced == []  # nothing due, nothing runs
        start = now_ns()
        core.deadlines.append(start + 200_000_000)  # 200 ms ahead
        daemon.after_call(start)  # a request scheduled it: wake
        await trio.testing.wait_all_tasks_blocked()
        # Woken once to learn the deadline (our call, then the task's), then asleep.
        assert core.serviced == [start, start]
        mock_clock.jump(0.199)
        await trio.testing.wait_all_tasks_blocked()
        assert core.serviced == [start, start]
        mock_clock.jump(0.001)
        await trio.testing.wait_all_tasks_blocked()
        assert core.serviced == [start, start, start + 200_000_000]
        mock_clock.jump(3600)
        await trio.testing.wait_all_tasks_blocked()
        assert len(core.serviced) == 3  # nothing due: nothing runs
        nursery.cancel_scope.cancel()


async def test_an_earlier_deadline_wakes_the_sleeping_hardware_task(
    mock_clock: trio.testing.MockClock,
) -> None:
    core = ClockedCore()
    daemon = Daemon(Config(), core)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        core.deadlines.append(now_ns() + 10_000_000_000)  # 10 s ahead
        nursery.start_soon(daemon._hardware_task)
        await trio.testing.wait_all_tasks_blocked()
        soon = now_ns() + 20_000_000
        core.deadlines.append(soon)
        daemon.after_call(now_ns())
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(0.02)
        await trio.testing.wait_all_tasks_blocked()
        assert core.serviced[-1] == soon
        assert core.next_deadline() == soon - 20_000_000 + 10_000_000_000
        nursery.cancel_scope.cancel()


async def test_a_later_deadline_does_not_wake_the_hardware_task(
    mock_clock: trio.testing.MockClock,
) -> None:
    core = ClockedCore()
    daemon = Daemon(Config(), core)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        core.deadlines.append(now_ns() + 1_000_000)
        nursery.start_soon(daemon._hardware_task)
        await trio.testing.wait_all_tasks_blocked()
        before = len(core.serviced)
        core.deadlines.append(now_ns() + 5_000_000)
        daemon.after_call(now_ns())  # our service call only; the task sleeps on
        await trio.testing.wait_all_tasks_blocked()
        assert len(core.serviced) == before + 1
        nursery.cancel_scope.cancel()
