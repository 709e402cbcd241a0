"""The fault-fd bench's C client: what it reports must be what the daemon saw.

No timing is asserted: the runs are short and only their bookkeeping is checked, against
the daemon's own counters (every group answered exactly once, by the client).
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from bench.common import Entry
from bench.faultfd import CClient, build, compare_notes
from bench.faults import pending_now
from bench.wire import Wire, daemon, generated_functions

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def built() -> None:
    reason = build()
    if reason:
        pytest.skip(reason)


async def _counters(socket: str) -> dict[str, int]:
    admin = await Wire.open(socket, "test-admin")
    try:
        counters: dict[str, int] = (await admin.call("status"))["counters"]
        return counters
    finally:
        await admin.aclose()


def _run(mode: str, args: list[str], runs: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
    with daemon(generated_functions(4)) as d:
        client = CClient(d, mode, args)
        try:
            results = [client.run(0.1) for _ in range(runs)]
        finally:
            client.close()
        assert client.proc.returncode == 0
        return results, trio.run(_counters, d.socket)


@pytest.mark.timeout(120)
def test_serial_client_answers_each_fault_once_and_counts_what_it_did(built: None) -> None:
    results, counters = _run("serial", [], runs=2)
    for r in results:
        assert r["mode"] == "serial" and r["streams"] == 1
        # One transfer, one page, one group, one read, one map and one answer at a time.
        assert r["groups"] == r["records"] == r["batches"] == r["completed"] > 0
        assert r["maps"] == r["groups"]
        assert r["samples"] == len(r["samples_ns"]) == r["completed"]
        assert r["samples_ns"] == sorted(r["samples_ns"])
        assert r["daemon_cpu_ns"] > 0 and r["client_cpu_ns"] > 0
    assert counters["groups"] == counters["responses"] > sum(r["groups"] for r in results)
    assert counters["auto_responses"] == 0 and pending_now(counters) == 0


@pytest.mark.timeout(120)
def test_throughput_client_batches_answers_over_devices_and_pasids(built: None) -> None:
    args = ["--devices", "4", "--pasids", "2", "--window", "32"]
    results, counters = _run("throughput", args, runs=2)
    for r in results:
        assert r["mode"] == "throughput" and r["streams"] == 8 and r["window"] == 32
        assert r["groups"] > 0 and r["records"] >= r["groups"]
        assert 0 < r["batches"] <= r["groups"]
        assert 0 < r["maps"] <= r["records"]
    # Every transfer ended, so every group the client read was answered, by the client.
    assert counters["groups"] == counters["responses"]
    assert counters["auto_responses"] == 0 and pending_now(counters) == 0


@pytest.mark.timeout(60)
def test_a_client_that_cannot_set_up_fails_its_run_saying_why(built: None) -> None:
    with daemon(generated_functions(4)) as d:
        client = CClient(d, "throughput", ["--devices", "6", "--pasids", "1", "--window", "4"])
        try:
            with pytest.raises(RuntimeError, match=r"exited 1: .*vfio4"):
                client.run(0.1)
        finally:
            client.close()


def test_compare_notes_put_the_c_client_beside_the_python_one_of_the_same_run() -> None:
    def entry(name: str, figure: float, ratio: float, cpu: float) -> Entry:
        detail = {"daemon_cpu_us_per_fault": cpu, "client_cpu_us_per_fault": 10.0}
        return Entry(name=name, figure=figure, unit="faults/s", ratio=ratio, detail=detail)

    notes = compare_notes(
        [
            entry("fault.serial_round_trip", 1800, 0.45, 390.0),
            entry("fault.serial_round_trip_faultfd", 2900, 0.66, 260.0),
        ]
    )
    assert len(notes) == 1
    assert "2,900 faults/s (ratio 0.66)" in notes[0] and "1,800 (ratio 0.45)" in notes[0]
    assert "260.0 us against 390.0 us" in notes[0]
    assert compare_notes([entry("fault.serial_round_trip", 1800, 0.45, 390.0)]) == []
