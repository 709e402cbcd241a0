"""The attack measures' own arithmetic: the unit's settings, the watchdog projection,
which samples count for which attack, and the reply counting of the flooders."""

from __future__ import annotations

from pathlib import Path

import trio

from bench.attack_workers import FrameCounter
from bench.attacks import (
    STALL_TARGET_MS,
    WATCHDOG_USEC,
    neighbour_entry,
    unit_seconds,
    watchdog_entry,
)
from bench.common import encode_frames


def test_unit_seconds_reads_the_units_watchdog_and_stop_timeout(tmp_path: Path) -> None:
    unit = tmp_path / "x.service"
    unit.write_text("[Service]\nWatchdogSec=30s\nTimeoutStopSec=2min\nRestartSec=500ms\n")
    assert unit_seconds("WatchdogSec", unit) == 30.0
    assert unit_seconds("TimeoutStopSec", unit) == 120.0
    assert unit_seconds("RestartSec", unit) == 0.5
    # The shipped unit has both settings the measures are held against.
    assert unit_seconds("WatchdogSec") > 0
    assert unit_seconds("TimeoutStopSec") > 0


def test_a_watchdog_gap_is_projected_onto_the_units_interval() -> None:
    interval = WATCHDOG_USEC / 2 / 1e6
    # Pings every interval, then one 2 s stall during attack "d".
    pings = [i * interval for i in range(10)]
    pings += [pings[-1] + 2.0 + k * interval for k in range(1, 5)]
    e = watchdog_entry(pings, {"a": (0.0, 0.4), "d": (0.4, 10.0)})
    watchdog_s = unit_seconds("WatchdogSec")
    assert e.figure == round((2.0 + interval) * 1000, 1)
    assert e.detail["worst_during"] == "d"
    assert e.detail["projected_gap_s"] == round(watchdog_s / 2 + 2.0, 2)
    assert e.met is (watchdog_s / 2 + 2.0 < watchdog_s)


def test_a_neighbour_entry_counts_only_its_own_windows_and_holds_max_to_50_ms() -> None:
    windows = [("a.setup", 0.0, 1.0), ("a.attack", 1.0, 2.0), ("b.setup", 2.0, 3.0)]
    admin = [(0.5, 1000.0), (1.5, 60_000.0), (2.5, 900_000.0)]
    honest = [(0.2, 500.0), (1.2, 700.0), (2.2, 5_000_000.0)]
    e = neighbour_entry("a_unmap_flood", "a", windows, admin, honest, {"pages_mapped": 1})
    # The 60 ms admin sample of a.attack counts; b's samples do not.
    assert e.figure == 60.0
    assert e.ceiling == STALL_TARGET_MS
    assert e.met is False
    assert e.detail["max_ms_by_phase"] == {"setup": 1.0, "attack": 60.0}
    assert e.detail["admin_status"]["samples"] == 2
    assert e.detail["tenant_map_unmap"]["samples"] == 2


async def test_the_flooders_count_replies_cut_anywhere_without_decoding_them() -> None:
    a, b = trio.socket.socketpair()
    frames = encode_frames([{"id": i, "ok": True, "result": {"x": "y" * i}} for i in range(50)])
    async with trio.SocketStream(a) as reader_end, trio.SocketStream(b) as writer_end:
        counter = FrameCounter(reader_end)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(counter.run)
            for k in range(0, len(frames), 7):  # frames split across writes
                await writer_end.send_all(frames[k : k + 7])
            with trio.fail_after(10):
                await counter.wait_for(50)
            nursery.cancel_scope.cancel()
    assert counter.got == 50
