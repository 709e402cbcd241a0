"""Hardening in-process: what a client sends cannot reach root's terminal or the
daemon's stack."""

from __future__ import annotations

import struct

import msgpack
import trio
import trio.testing
from iopfd_flows import ACCEL0
from iopfd_inprocess import NOBODY, ROOT, connect, running

EVIL = "vm\x1b]0;pwned\x07\x1b[2J\u202egnp.exe\r\n"


async def test_control_characters_of_a_client_name_are_escaped_in_every_admin_view(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as daemon:
        admin = await connect(daemon, ROOT)
        await admin.call("subscribe", topics=["device"])
        tenant = await connect(daemon, NOBODY, name=EVIL)
        await tenant.call("bind", rid=ACCEL0)
        await tenant.call("ioas_alloc")
        objects = (await admin.call("objects"))["objects"]
        topology = (await admin.call("topology"))["devices"]
        trace = (await admin.event("trace")).body
        views = [
            *(row["client"] for row in objects),
            next(row["owner"] for row in topology if row["rid"] == ACCEL0),
            trace["client"],
        ]
        assert len(views) == 4
        for view in views:
            assert view.startswith("vm\\x1b]0;pwned\\x07\\x1b[2J\\u202egnp.exe\\x0d\\x0a#")
            assert view.isprintable()


def _deep_hwpt_alloc(rid: int, depth: int) -> bytes:
    head: bytes = msgpack.packb({"op": "hwpt_alloc", "id": rid, "dev_id": 1, "pt_id": 2})
    assert head[0] == 0x84  # a fixmap of 4: one more key, "data", nested ``depth`` deep
    key: bytes = msgpack.packb("data")
    body = bytes([0x85]) + head[1:] + key + b"\x81\xa1n" * depth + b"\x80"
    return struct.pack(">I", len(body)) + body


async def test_a_deeply_nested_data_is_einval_not_an_internal_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as daemon:
        c = await connect(daemon, NOBODY)
        rid = c.next_id
        c.next_id += 1
        await c.send(_deep_hwpt_alloc(rid, 900))
        reply = await c.reply(rid)
        assert reply.code == "EINVAL" and "nested deeper" in reply.message
        assert daemon.counters["internal_errors"] == 0
        assert (await c.call("devices"))["devices"]
