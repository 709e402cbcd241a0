"""The session rule through the daemon: hello first, one version (2), one hello.

In-process (memory streams, MockClock): the rules themselves are ``ServerSession``'s
(tests/protocol/test_session.py); these pin that the daemon applies them on the wire.
"""

from __future__ import annotations

import trio.testing
from iopfd_inprocess import connect, running

from iopfd.protocol.frames import encode_frame


async def test_hello_reports_version_server_max_frame_admin_and_kernel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as daemon:
        c = await connect(daemon, hello=False)
        result = await c.call("hello", version=2, client="t")
        assert result["version"] == 2
        assert result["server"].startswith("iopfd/")
        assert result["max_frame"] == 1 << 20
        assert result["admin"] is True  # a root peer
        assert result["kernel"] == "6.18"  # the default profile


async def test_any_request_before_hello_is_eproto_and_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as daemon:
        c = await connect(daemon, hello=False)
        await c.send(encode_frame({"op": "devices", "id": 11}))
        assert [(r.id, r.code) for r in await c.until_closed()] == [(11, "EPROTO")]


async def test_an_unknown_op_before_hello_is_eproto(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as daemon:
        c = await connect(daemon, hello=False)
        await c.send(encode_frame({"op": "frobnicate", "id": 1}))
        assert [r.code for r in await c.until_closed()] == ["EPROTO"]


async def test_other_version_is_eprotonosupport_and_a_good_hello_may_follow(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """PROTOCOL.md v2: version 2 only; version 1 is refused like any other."""
    async with running() as daemon:
        c = await connect(daemon, hello=False)
        for version in (1, 3):
            await c.send(
                encode_frame({"op": "hello", "id": version, "version": version, "client": "t"})
            )
            reply = await c.reply(version)
            assert (reply.code, reply.message) == ("EPROTONOSUPPORT", "supported versions: [2]")
        await c.send(encode_frame({"op": "devices", "id": 99}))
        assert [(r.id, r.code) for r in await c.until_closed()] == [(99, "EPROTO")]
        c = await connect(daemon, hello=False)
        for version in (0, 1):
            await c.send(encode_frame({"op": "hello", "id": 5, "version": version, "client": "t"}))
            assert (await c.reply(5)).code == "EPROTONOSUPPORT"
        assert (await c.call("hello", version=2, client="t"))["version"] == 2
        assert (await c.call("devices"))["devices"]


async def test_a_second_hello_is_einval_and_keeps_the_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as daemon:
        c = await connect(daemon)
        assert await c.error("hello", version=2, client="again") == "EINVAL"
        assert (await c.call("devices"))["devices"]


async def test_hello_with_bad_arguments_is_einval_and_not_a_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as daemon:
        c = await connect(daemon, hello=False)
        bad: list[dict[str, object]] = [{"version": 2}, {"version": 2, "client": "t", "extra": 1}]
        for n, args in enumerate(bad):
            await c.send(encode_frame({"op": "hello", "id": n, **args}))
            assert (await c.reply(n)).code == "EINVAL"
        assert (await c.call("hello", version=2, client="t"))["admin"] is True


async def test_replies_match_request_ids_chosen_by_the_client(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as daemon:
        c = await connect(daemon)
        for rid in (0, 2**32 - 1, 12345):
            await c.send(encode_frame({"op": "devices", "id": rid}))
            assert (await c.reply(rid)).ok
