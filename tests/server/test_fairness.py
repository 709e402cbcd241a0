"""Fair, bounded work in-process: one connection's burst of requests, or its teardown
with hundreds of attachments, lets the other connections be served in between."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from iopfd_flows import ACCEL0
from iopfd_inprocess import NOBODY, ROOT, connect, identity_holds, running

from iopfd.server import ops as server_ops
from iopfd.server.connection import REQUESTS_PER_SLICE

BURST = 30 * REQUESTS_PER_SLICE


async def test_a_burst_in_one_read_does_not_hold_other_connections_until_its_end(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    order: list[str] = []
    real_devices = server_ops.HANDLERS["devices"]
    real_status = server_ops.HANDLERS["status"]

    def devices(*args: Any) -> Any:
        order.append("devices")
        return real_devices(*args)

    def status(*args: Any) -> Any:
        order.append("status")
        return real_status(*args)

    monkeypatch.setitem(server_ops.HANDLERS, "devices", devices)
    monkeypatch.setitem(server_ops.HANDLERS, "status", status)
    async with running() as daemon:
        tenant = await connect(daemon, NOBODY)
        admin = await connect(daemon, ROOT)
        order.clear()
        await tenant.send(*(tenant.frame("devices")[1] for _ in range(BURST)))
        with trio.fail_after(60):
            while not order:
                await trio.sleep(0)
        assert (await admin.call("status"))["clients"] == 2
        # Served in the middle of the burst, not after its last request.
        assert 0 < order.index("status") < BURST
        for rid in range(2, 2 + BURST):
            assert (await tenant.reply(rid)).ok


async def test_a_teardown_of_hundreds_of_attachments_lets_others_be_served(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as daemon:
        tenant = await connect(daemon, NOBODY)
        dev = (await tenant.call("bind", rid=ACCEL0))["dev_id"]
        ioas = (await tenant.call("ioas_alloc"))["ioas_id"]
        hwpt = (await tenant.call("hwpt_alloc", dev_id=dev, pt_id=ioas, flags=["pasid"]))["hwpt_id"]
        frames = [tenant.frame("attach", dev_id=dev, pt_id=hwpt, pasid=p)[1] for p in range(1, 400)]
        await tenant.send(*frames)
        for rid in range(5, 5 + len(frames)):
            assert (await tenant.reply(rid)).ok
        admin = await connect(daemon, ROOT)

        # The teardown's progress, read from the core's state (the core may be compiled,
        # make accel, and then its methods cannot be wrapped): the device's attachments
        # go in bounded steps, and the context leaves core.contexts when the last ends.
        core = daemon.core
        handles = core.devices[ACCEL0].handles
        attached = len(handles)
        binding = core.devices[ACCEL0].binding
        assert binding is not None
        tenant_ctx = binding.ctx
        await tenant.aclose()
        with trio.fail_after(60):
            while len(handles) == attached:
                await trio.sleep(0)
        # The admin is answered while the tenant's teardown is still going on.
        await admin.call("status")
        assert tenant_ctx.id in core.contexts
        with trio.fail_after(60):
            while len(daemon.connections) > 1:
                await trio.sleep(0.01)
        assert not handles and tenant_ctx.id not in core.contexts
        assert identity_holds(daemon)
        assert core.devices[ACCEL0].binding is None
