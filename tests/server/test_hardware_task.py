"""The hardware task runs the core at its deadlines and when woken, never in a loop.

In-process, with a small stand-in for the core that records when it is serviced.
"""

from __future__ import annotations

from collections import Counter

import trio

from iopfd.server.config import Config
from iopfd.server.daemon import Daemon, now_ns


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


async def test_hardware_task_sleeps_until_the_deadline_without_spinning() -> None:
    core = ClockedCore()
    daemon = Daemon(Config(), core)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(daemon._hardware_task)
        await trio.sleep(0.01)
        start = now_ns()
        core.deadlines.append(start + 200_000_000)  # 200 ms ahead
        daemon.after_call(start)                     # a request scheduled it: wake
        await trio.sleep(0.1)
        # Woken once to learn the deadline, then asleep: no busy loop meanwhile.
        assert len(core.serviced) <= 3, len(core.serviced)
        await trio.sleep(0.2)
        assert any(t >= start + 200_000_000 for t in core.serviced)
        before = len(core.serviced)
        await trio.sleep(0.1)
        assert len(core.serviced) == before  # nothing due: nothing runs
        nursery.cancel_scope.cancel()


async def test_an_earlier_deadline_wakes_the_sleeping_hardware_task() -> None:
    core = ClockedCore()
    daemon = Daemon(Config(), core)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        core.deadlines.append(now_ns() + 10_000_000_000)  # 10 s ahead
        nursery.start_soon(daemon._hardware_task)
        await trio.sleep(0.01)
        soon = now_ns() + 20_000_000
        core.deadlines.append(soon)
        daemon.after_call(now_ns())
        await trio.sleep(0.1)
        assert any(t >= soon for t in core.serviced)
        nursery.cancel_scope.cancel()
