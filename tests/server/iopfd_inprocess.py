"""The daemon in-process: a real ``Daemon`` and ``Core``, connections over trio memory
streams with a fake peer credential, the client end spoken in raw frames (as
``iopfd_rawclient`` does for the subprocess tests: the daemon's wire behaviour is pinned,
not a client's).

Run under trio's ``MockClock`` (pytest-trio's ``autojump_clock`` or ``mock_clock``) the
hello timeout, the hardware task's deadlines and the unplug grace periods happen in
virtual time: deterministic, and instant.
"""

from __future__ import annotations

import array
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.testing

from iopfd.protocol.frames import FrameDecoder, encode_frame
from iopfd.server.config import Config, Limits
from iopfd.server.daemon import Daemon
from iopfd.server.main import build_core
from iopfd.server.peer import PeerCred

#: Peers as SO_PEERCRED would report them: root is an admin, nobody is not.
ROOT = PeerCred(pid=4242, uid=0, gid=0, groups=frozenset())
NOBODY = PeerCred(pid=4243, uid=65534, gid=65534, groups=frozenset())

#: How long a test waits (virtual seconds under autojump) before it calls a hang a hang.
WAIT_S = 3600.0


class Closed(Exception):
    """The daemon closed the connection."""


@dataclass(frozen=True)
class Reply:
    id: int | None
    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    code: str = ""
    message: str = ""


@dataclass(frozen=True)
class Event:
    name: str
    seq: int
    body: dict[str, Any]


class Peer:
    """The client end of one in-process connection."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder(1 << 26)
        self.next_id = 1
        self.replies: dict[int | None, Reply] = {}
        self.events: list[Event] = []
        #: How many reads brought something (a batch answered with one write is one).
        self.reads = 0
        self.eof = False
        self.hello: dict[str, Any] | None = None
        #: fds passed with the daemon's frames (SCM_RIGHTS; a socket pair only).
        self.fds: list[int] = []

    async def send(self, *frames: bytes) -> None:
        await self.stream.send_all(b"".join(frames))

    def frame(self, op: str, **args: Any) -> tuple[int, bytes]:
        """A request frame with the next id, to send later (several in one write)."""
        rid = self.next_id
        self.next_id += 1
        return rid, encode_frame({"op": op, "id": rid, **args})

    async def send_request(self, op: str, **args: Any) -> int:
        rid, frame = self.frame(op, **args)
        await self.send(frame)
        return rid

    async def _read(self) -> None:
        if self.eof:
            raise Closed
        if isinstance(self.stream, trio.SocketStream):
            # recvmsg: a plain read of the byte that carries an fd drops the fd
            data, anc, _flags, _ = await self.stream.socket.recvmsg(
                1 << 20, socket.CMSG_SPACE(16 * 4), socket.MSG_CMSG_CLOEXEC
            )
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                    self.fds += fds
        else:
            data = bytes(await self.stream.receive_some(1 << 20))
        if not data:
            self.eof = True
            raise Closed
        self.reads += 1
        for msg in self.decoder.feed(data):
            if "event" in msg:
                seq = msg["seq"]
                assert isinstance(seq, int)
                body = {k: v for k, v in msg.items() if k not in ("event", "seq")}
                self.events.append(Event(str(msg["event"]), seq, body))
                continue
            rid = msg["id"]
            assert rid is None or isinstance(rid, int)
            if msg["ok"]:
                result = msg["result"]
                assert isinstance(result, dict)
                self.replies[rid] = Reply(rid, True, result)
            else:
                err = msg["error"]
                assert isinstance(err, dict)
                self.replies[rid] = Reply(rid, False, code=err["code"], message=err["message"])

    async def reply(self, rid: int | None) -> Reply:
        with trio.fail_after(WAIT_S):
            while rid not in self.replies:
                await self._read()
        return self.replies.pop(rid)

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        reply = await self.reply(await self.send_request(op, **args))
        assert reply.ok, (op, reply.code, reply.message)
        return reply.result

    async def error(self, op: str, **args: Any) -> str:
        reply = await self.reply(await self.send_request(op, **args))
        assert not reply.ok, (op, reply.result)
        return reply.code

    async def event(self, name: str) -> Event:
        with trio.fail_after(WAIT_S):
            while True:
                for i, ev in enumerate(self.events):
                    if ev.name == name:
                        return self.events.pop(i)
                await self._read()

    async def until_closed(self) -> list[Reply]:
        """Every reply until the daemon closes the connection."""
        with trio.fail_after(WAIT_S):
            try:
                while True:
                    await self._read()
            except Closed:
                pass
        out = list(self.replies.values())
        self.replies.clear()
        return out

    async def aclose(self) -> None:
        await self.stream.aclose()


@asynccontextmanager
async def running(**limits: Any) -> AsyncIterator[Daemon]:
    """A daemon on the default topology, with ``limits``; shut down (every connection
    released) at the end."""
    config = Config(limits=Limits(**limits))
    daemon = Daemon(config, build_core(config))
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run, [])
        try:
            yield daemon
        finally:
            daemon.shutdown("shutdown")
            nursery.cancel_scope.cancel()


StreamPair = Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]]


async def connect(
    daemon: Daemon,
    cred: PeerCred = ROOT,
    *,
    hello: bool = True,
    name: str = "t",
    pair: StreamPair = trio.testing.memory_stream_pair,
) -> Peer:
    """A new connection; ``pair`` makes the two ends (``lockstep_stream_pair``: the
    daemon's writes wait until the client reads; ``socket_pair``: a real socketpair)."""
    client, server = pair()
    await daemon.connect(server, cred)
    peer = Peer(client)
    if hello:
        peer.hello = await peer.call("hello", version=2, client=name)
    return peer


def socket_pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
    """A connected AF_UNIX pair: the daemon's end has an fd, so the reader answers a
    read with its own non-blocking write (``Connection._send_now``)."""
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


def identity_holds(daemon: Daemon) -> bool:
    """groups == responses + auto_responses + throttled + pending, at rest."""
    k = daemon.core.status_counters()
    pending = daemon.core.pending(int(trio.current_time() * 1e9))
    return k["groups"] == (k["responses"] + k["auto_responses"] + k["throttled"] + len(pending))
