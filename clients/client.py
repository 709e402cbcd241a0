"""The trio client library for iopfd.

One :class:`IopfClient` is one connection to the daemon, and everything the
connection creates (bound devices, IOAS, fault queues, HWPTs) belongs to it:
the daemon releases all of it when the connection closes, and answers its
pending fault groups INVALID. A typical VMM::

    async with IopfClient.open(client_name="my-vmm") as c:
        dev = await c.bind("0000:3a:00.0")
        ioas = await c.ioas_alloc()
        fault_id = await c.fault_alloc()
        hwpt = await c.hwpt_alloc(dev, ioas, fault_id=fault_id)
        await c.attach(dev, hwpt)
        async for group in c.fault_queue(fault_id):
            await c.ioas_map(ioas, group.addresses[0], PAGE_SIZE)
            await c.answer(group, ResponseCode.SUCCESS)

The client is an I/O loop around the sans-IO
:class:`~iopfd.protocol.session.ClientSession` (ids, frame limit, ``seq``, counters);
each op's method is declared once, in :mod:`clients.calls`, and made async here by
:func:`async_op`. Replies are matched to calls by request id, by a reader task of the
client's own: calls may run concurrently from many tasks, and a ``dma`` waiting for its
page faults to be answered does not block the task that answers them. Fault groups and
trace records are pushed into per-queue buffers by the same reader, so nothing a slow
consumer does can hold up replies.
"""

from __future__ import annotations

import array
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, Concatenate, Final, ParamSpec, TypeVar

import trio

from clients.calls import (
    CALLS,
    DEFAULT_UNPLUG_GRACE_S,
    PROCEDURES,
    Call,
    Calls,
    Procedure,
    Procedures,
    close_fds,
    result_map,
)
from clients.errors import ConnectionLost, EventGap, IopfError, error_from_reply
from clients.queues import DeviceRequestStream, FaultQueue, TraceStream
from clients.records import ClientStats, DeviceRequest, FaultGroup, HelloInfo
from iopfd.protocol.errors import RequestError
from iopfd.protocol.frames import ProtocolViolation as FramingError
from iopfd.protocol.models import PROTOCOL_VERSION
from iopfd.protocol.session import ClientSession, Event, Reply

DEFAULT_SOCKET: Final = "/run/iopfd/iopfd.sock"

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


def resolve_socket_path(path: str | os.PathLike[str] | None = None) -> str:
    """The socket to use: ``path`` if given, else ``$IOPFD_SOCKET``, else /run/iopfd/iopfd.sock."""
    if path is not None and str(path):
        return os.fspath(path)
    return os.environ.get("IOPFD_SOCKET") or DEFAULT_SOCKET


def check_server_uid(sock: socket.socket, expected: int | None = None) -> None:
    """When asked (``expected``, else ``$IOPFD_SERVER_UID``), refuse a server whose
    ``SO_PEERCRED`` uid differs: whoever squats the socket path is not iopfd
    (``PermissionError``). Not asked: nothing is checked."""
    if expected is None:
        env = os.environ.get("IOPFD_SERVER_UID", "")
        if not env:
            return
        expected = int(env)
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    uid = struct.unpack("3i", creds)[1]
    if uid != expected:
        raise PermissionError(
            f"the server at {sock.getpeername()!r} runs as uid {uid}, not {expected}"
        )


#: Room for the fds one read may bring (the daemon passes one per reply, and a read
#: stops after the segment that carries fds).
FDS_PER_READ: Final = 4
ANCILLARY_SPACE: Final = socket.CMSG_SPACE(FDS_PER_READ * array.array("i").itemsize)


def fds_of(ancdata: list[tuple[int, int, bytes]], flags: int) -> list[int]:
    """The fds a ``recvmsg`` brought (SCM_RIGHTS); ``OSError`` (after closing them)
    when the control data was cut off, since fds were then lost."""
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    if flags & socket.MSG_CTRUNC:
        close_fds(fds)
        raise OSError("iopfd passed more fds than a read can take")
    return list(fds)


def session_request(session: ClientSession, op: str, args: Mapping[str, Any]) -> tuple[int, bytes]:
    """``session.request``, with a local refusal raised as the daemon's would be."""
    try:
        return session.request(op, args)
    except RequestError as e:
        raise error_from_reply(e.errno, e.message, op) from None


def reply_value(reply: Reply, op: str) -> dict[str, Any]:
    """The ``result`` of an ok reply; the errno's IopfError otherwise."""
    if reply.ok:
        return reply.result
    raise error_from_reply(reply.code, reply.message, op)


class _Waiter:
    """A request sent (or queued) whose reply a task awaits."""

    __slots__ = ("done", "error", "op", "reply")

    def __init__(self, op: str) -> None:
        self.op = op
        self.done = trio.Event()
        self.reply: Reply | None = None
        self.error: str | None = None


class PendingCall:
    """A request already queued by :meth:`IopfClient.submit`; await :meth:`result`."""

    __slots__ = ("_client", "_waiter", "id")

    def __init__(self, client: IopfClient, req_id: int, waiter: _Waiter) -> None:
        self._client = client
        self._waiter = waiter
        self.id = req_id

    @property
    def op(self) -> str:
        return self._waiter.op

    async def result(self) -> dict[str, Any]:
        """The reply's ``result`` map; raises IopfError (errno) or ConnectionLost."""
        reply = await self._client._reply(self.id, self._waiter)
        close_fds(reply.fds)  # the typed method (fault_fd) takes them; a raw map cannot
        return result_map(self.op, reply_value(reply, self.op))


def async_op(
    fn: Callable[Concatenate[Calls, P], Call[R]],
) -> Callable[Concatenate[IopfClient, P], Coroutine[Any, Any, R]]:
    """The IopfClient method of one op: build its Call, send it, await the typed value."""

    async def method(self: IopfClient, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self.call(fn(CALLS, *args, **kwargs))

    method.__name__ = method.__qualname__ = fn.__name__
    method.__doc__ = fn.__doc__
    method.__wrapped__ = fn  # type: ignore[attr-defined]
    return method


def async_procedure(
    fn: Callable[Concatenate[Procedures, P], Procedure[R]],
) -> Callable[Concatenate[IopfClient, P], Coroutine[Any, Any, R]]:
    """The IopfClient method of a several-request procedure of :mod:`clients.calls`."""

    async def method(self: IopfClient, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self.run(fn(PROCEDURES, *args, **kwargs))

    method.__name__ = method.__qualname__ = fn.__name__
    method.__doc__ = fn.__doc__
    method.__wrapped__ = fn  # type: ignore[attr-defined]
    return method


class IopfClient:
    """A connection to iopfd. Open it with :meth:`open` (or :meth:`connect`).

    Every protocol operation is an ``async`` method that returns once the
    daemon replied, and raises an :class:`~clients.errors.IopfError` subclass
    carrying the errno name on an error reply (``InvalidArgument`` before anything
    is sent when the daemon would refuse the arguments). Calls may be made from any
    number of tasks at once; frames queued together go out in one write.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        trace_buffer: int = 4096,
        raw_socket: socket.socket | None = None,
    ) -> None:
        self._stream = stream
        # the stdlib socket under ``stream``, for non-blocking sends without a task hop
        self._raw = raw_socket
        self._session = ClientSession()
        self._flush_scheduled = False
        self._writer_busy = False
        self._waiters: dict[int, _Waiter] = {}
        self._outbuf = bytearray()
        self._bell_send, self._bell_recv = trio.open_memory_channel[None](1)
        self._closed_reason: str | None = None
        self._fault_queues: dict[int, FaultQueue] = {}
        self._trace = TraceStream(trace_buffer)
        self._device_requests = DeviceRequestStream()
        self.hello_info: HelloInfo | None = None
        self._n_writes = 0
        self.unknown_events = 0

    # -- lifecycle ------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        client_name: str = "iopf-client",
        trace_buffer: int = 4096,
    ) -> AsyncIterator[IopfClient]:
        """Connect, say ``hello``, and yield the client; close it on exit.

        ``path`` defaults to ``$IOPFD_SOCKET``, then /run/iopfd/iopfd.sock.
        ``client_name`` is the label admins see in ``iopfctl pending``/``objects``.
        Exceptions from the body propagate unchanged (not wrapped in an
        ExceptionGroup).
        """
        stream, raw = await _open_stream(resolve_socket_path(path))
        client = cls(stream, trace_buffer=trace_buffer, raw_socket=raw)
        body_exc: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client._reader)
                nursery.start_soon(client._writer)
                try:
                    await client._hello(client_name)
                    yield client
                except BaseException as e:  # re-raised below, outside the nursery
                    body_exc = e
                finally:
                    client._shutdown("client closed")
                    nursery.cancel_scope.cancel()
        finally:
            await trio.aclose_forcefully(stream)
        if body_exc is not None:
            raise body_exc

    @classmethod
    async def connect(
        cls,
        nursery: trio.Nursery,
        path: str | os.PathLike[str] | None = None,
        *,
        client_name: str = "iopf-client",
        trace_buffer: int = 4096,
    ) -> IopfClient:
        """Connect with the reader and writer tasks in ``nursery``; close with :meth:`aclose`."""
        stream, raw = await _open_stream(resolve_socket_path(path))
        client = cls(stream, trace_buffer=trace_buffer, raw_socket=raw)
        nursery.start_soon(client._reader)
        nursery.start_soon(client._writer)
        try:
            await client._hello(client_name)
        except BaseException:
            await client.aclose()
            raise
        return client

    async def aclose(self) -> None:
        """Close the connection; the daemon releases everything it owned."""
        self._shutdown("client closed")
        await trio.aclose_forcefully(self._stream)

    async def __aenter__(self) -> IopfClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    @property
    def admin(self) -> bool:
        """Whether the daemon lets this peer use admin operations."""
        return bool(self.hello_info and self.hello_info.admin)

    def stats(self) -> ClientStats:
        s = self._session
        return ClientStats(
            requests=s.requests,
            replies=s.replies,
            events=s.events,
            writes=self._n_writes,
            seq_gaps=s.seq_gaps,
            missed_events=s.missed_events,
            late_replies=s.late_replies,
            in_flight=s.in_flight,
        )

    async def _hello(self, client_name: str) -> None:
        self.hello_info = await self.call(CALLS.hello(client_name))

    # -- transport ------------------------------------------------------------

    async def call(self, call: Call[R]) -> R:
        """Send one :class:`~clients.calls.Call` and return its typed value."""
        req_id, waiter = self._queue(call.op, call.args)
        reply = await self._reply(req_id, waiter)
        value = call.value(reply_value(reply, call.op), reply.fds)
        self._track(call, value)
        return value

    async def run(self, procedure: Procedure[R]) -> R:
        """Drive a :class:`~clients.calls.Procedure`: each Call it yields is sent and its
        value (or IopfError) handed back, until it returns."""
        try:
            call = next(procedure)
            while True:
                try:
                    value = await self.call(call)
                except IopfError as e:
                    call = procedure.throw(e)
                else:
                    call = procedure.send(value)
        except StopIteration as stop:
            result: R = stop.value
            return result

    async def request(self, op: str, **args: Any) -> dict[str, Any]:
        """Send any request and return its ``result`` map (the typed methods are nicer)."""
        req_id, waiter = self._queue(op, args)
        reply = await self._reply(req_id, waiter)
        close_fds(reply.fds)  # the typed method (fault_fd) takes them; a raw map cannot
        return result_map(op, reply_value(reply, op))

    def submit(self, op: str, **args: Any) -> PendingCall:
        """Queue a request now and return a handle; ``await handle.result()`` later.

        Requests of one connection are started by the daemon in the order they
        arrive, and ``submit`` fixes that order at the call, whatever the task
        scheduling. A fault handler can therefore submit a batch's ``ioas_map``
        calls and then its ``page_response``, and await them together: one write,
        one round trip, and the answers are applied after the mappings. (Calls made
        from concurrent tasks have no such order between them.) Arguments the daemon
        would refuse raise InvalidArgument here, before anything is queued.
        """
        req_id, waiter = self._queue(op, args)
        if not (self._flush_scheduled or self._writer_busy):
            # if nobody awaits a result in this scheduler pass, the writer task sends it
            with suppress(trio.WouldBlock):
                self._bell_send.send_nowait(None)
        return PendingCall(self, req_id, waiter)

    def _queue(self, op: str, args: Mapping[str, Any]) -> tuple[int, _Waiter]:
        if self._closed_reason is not None:
            raise ConnectionLost(self._closed_reason)
        req_id, frame = session_request(self._session, op, args)
        waiter = _Waiter(op)
        self._waiters[req_id] = waiter
        self._outbuf += frame
        return req_id, waiter

    async def _reply(self, req_id: int, waiter: _Waiter) -> Reply:
        if self._outbuf and not (self._flush_scheduled or self._writer_busy):
            # This call flushes. One scheduler pass first, so that every task made
            # runnable together (a burst of dma calls, maps and a page_response) has
            # queued its frame too: they all leave in one write.
            self._flush_scheduled = True
            await trio.lowlevel.cancel_shielded_checkpoint()
            self._flush_scheduled = False
            self._flush()
        try:
            await waiter.done.wait()
        finally:
            if not waiter.done.is_set():
                # cancelled while waiting: the reply, when it comes, is dropped
                self._waiters.pop(req_id, None)
                self._session.abandon(req_id)
        if waiter.error is not None:
            raise ConnectionLost(waiter.error)
        assert waiter.reply is not None
        return waiter.reply

    def _track(self, call: Call[Any], value: object) -> None:
        """What a call's success changes in this client: a new fault queue gets its
        iterator, a destroyed one's ends (IDs are never reused: late lookups see the end)."""
        if call.op == "fault_alloc" and isinstance(value, int):
            self.fault_queue(value)
        elif call.op == "destroy":
            q = self._fault_queues.get(call.args["obj_id"])
            if q is not None:
                q._close()

    def _flush(self) -> None:
        """Send what is queued without blocking; the writer task takes over any rest."""
        if not self._outbuf or self._writer_busy or self._closed_reason is not None:
            return
        if self._raw is not None:
            try:
                sent = self._raw.send(self._outbuf)
            except BlockingIOError:
                sent = 0
            except OSError as e:
                self._shutdown(f"connection to iopfd lost while sending: {e!r}")
                return
            if sent:
                self._n_writes += 1
                del self._outbuf[:sent]
        if self._outbuf:
            # the socket is full (or not ours to touch): the rest, and every frame
            # queued after it, goes through the writer task, in order
            self._writer_busy = True
            with suppress(trio.WouldBlock):
                self._bell_send.send_nowait(None)

    async def _writer(self) -> None:
        async for _ in self._bell_recv:
            if not self._writer_busy:
                self._flush()  # a nudge from submit(): frames nobody has flushed yet
                if not self._writer_busy:
                    continue
            while self._outbuf:
                data = bytes(self._outbuf)
                self._outbuf.clear()
                try:
                    await self._stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                    self._shutdown(f"connection to iopfd lost while sending: {e!r}")
                    return
                self._n_writes += 1
            self._writer_busy = False

    async def _reader(self) -> None:
        # On a socket every read is a recvmsg: a plain read of the byte that carries an
        # fd (``fault_fd``'s reply) would drop the fd.
        sock = self._stream.socket if isinstance(self._stream, trio.SocketStream) else None
        fds: list[int] = []
        data: bytes | bytearray
        try:
            while True:
                if sock is not None:
                    data, anc, flags, _ = await sock.recvmsg(
                        1 << 16, ANCILLARY_SPACE, socket.MSG_CMSG_CLOEXEC
                    )
                    fds = fds_of(anc, flags)
                else:
                    data = await self._stream.receive_some(1 << 16)
                if not data:
                    self._shutdown("iopfd closed the connection")
                    return
                now = time.monotonic_ns()
                for item in self._session.receive_data(bytes(data), fds):
                    if isinstance(item, Event):
                        self._event(item, now)
                    else:
                        self._settle(item)
                close_fds(self._session.take_stray_fds())
                self._session.check()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            self._shutdown(f"connection to iopfd lost: {e!r}")
        except FramingError as e:
            self._shutdown(f"iopfd sent a bad frame: {e}")

    def _settle(self, reply: Reply) -> None:
        if reply.id is None:
            # the daemon reports a protocol violation it cannot pin to a request
            self._shutdown(f"iopfd: {reply.code}: {reply.message or 'protocol violation'}")
            return
        waiter = self._waiters.pop(reply.id, None)
        if waiter is None:
            close_fds(reply.fds)
            return  # an id never sent: the session counted it as late
        waiter.reply = reply
        waiter.done.set()

    def _event(self, ev: Event, now: int) -> None:
        if ev.expected:
            gap = EventGap(ev.expected, ev.seq)
            for q in self._fault_queues.values():
                q._put(gap)
            self._device_requests._put(gap)
            self._trace._put(gap)
        if ev.name == "fault":
            group = FaultGroup.from_event(ev, now)
            self.fault_queue(group.fault_id)._put(group)
        elif ev.name == "device_request":
            self._device_requests._put(DeviceRequest.from_event(ev, now))
        elif ev.name == "trace":
            self._trace._put_event(ev)
        else:
            self.unknown_events += 1

    def _shutdown(self, reason: str) -> None:
        if self._closed_reason is not None:
            return
        self._closed_reason = reason
        close_fds(self._session.release_fds())
        waiters, self._waiters = self._waiters, {}
        for waiter in waiters.values():
            waiter.error = f"{waiter.op}: {reason}"
            waiter.done.set()
        for q in self._fault_queues.values():
            if reason != "client closed":
                q._put(ConnectionLost(reason))
            q._close()
        if reason != "client closed":
            self._trace._put(ConnectionLost(reason))
            self._device_requests._put(ConnectionLost(reason))
        self._trace._close()
        self._device_requests._close()
        self._bell_send.close()

    # -- fault queues and trace ---------------------------------------------

    def fault_queue(self, fault_id: int) -> FaultQueue:
        """The async iterator of groups for a fault queue of this connection."""
        q = self._fault_queues.get(fault_id)
        if q is None:
            q = FaultQueue(fault_id)
            self._fault_queues[fault_id] = q
            if self._closed_reason is not None:
                q._close()
        return q

    @property
    def trace(self) -> TraceStream:
        """The trace records of :meth:`subscribe`, as an async iterator."""
        return self._trace

    def device_requests(self) -> DeviceRequestStream:
        """The ``device_request`` events of this connection, as an async iterator.

        One arrives when an admin hot-unplugs a device this connection holds: finish
        the device's work, answer its pending groups (their cookies stay valid), and
        :meth:`unbind` it; the daemon removes it then, or when the grace period ends.
        Requests are buffered from the start, so none is lost before this is called.
        """
        return self._device_requests

    async def subscribe(self, topics: Sequence[str] = ()) -> TraceStream:
        """Start (or change) the trace stream (admin); iterate the returned
        :class:`TraceStream`. Topics: fault, response, auto_response, invalidation,
        throttle, overflow, device; empty means all."""
        await self.call(CALLS.subscribe(topics))
        return self._trace

    # -- the ops: one line each, declared in clients.calls --------------------

    devices = async_op(Calls.devices)
    bind = async_op(Calls.bind)
    unbind = async_op(Calls.unbind)
    ioas_alloc = async_op(Calls.ioas_alloc)
    ioas_map = async_op(Calls.ioas_map)
    hw_info = async_op(Calls.hw_info)
    ioas_unmap = async_op(Calls.ioas_unmap)
    fault_alloc = async_op(Calls.fault_alloc)
    hwpt_alloc = async_op(Calls.hwpt_alloc)
    attach = async_op(Calls.attach)
    replace = async_op(Calls.replace)
    detach = async_op(Calls.detach)
    page_response = async_op(Calls.page_response)
    fault_fd = async_op(Calls.fault_fd)
    dma = async_op(Calls.dma)
    destroy = async_op(Calls.destroy)
    device_reset = async_op(Calls.device_reset)
    hwpt_s1_map = async_op(Calls.hwpt_s1_map)
    hwpt_s1_unmap = async_op(Calls.hwpt_s1_unmap)
    hwpt_invalidate = async_op(Calls.hwpt_invalidate)
    ioas_iova_ranges = async_op(Calls.ioas_iova_ranges)
    ioas_allow_iovas = async_op(Calls.ioas_allow_iovas)
    ioas_copy = async_op(Calls.ioas_copy)
    ioas_map_file = async_op(Calls.ioas_map_file)
    option = async_op(Calls.option)
    status = async_op(Calls.status)
    topology = async_op(Calls.topology)
    objects = async_op(Calls.objects)
    pending = async_op(Calls.pending)
    inject = async_op(Calls.inject)
    unplug = async_op(Calls.unplug)
    plug = async_op(Calls.plug)
    reset = async_op(Calls.reset)

    page_response_each = async_procedure(Procedures.page_response_each)
    answer = async_procedure(Procedures.answer)
    answer_all = async_procedure(Procedures.answer_all)


async def _open_stream(path: str) -> tuple[trio.SocketStream, socket.socket]:
    """Connect to ``path``; return the trio stream and the stdlib socket under it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tsock = trio.socket.from_stdlib_socket(sock)  # same object, now non-blocking
    try:
        await tsock.connect(path)
        check_server_uid(sock)
    except BaseException:
        tsock.close()
        raise
    return trio.SocketStream(tsock), sock


__all__ = [
    "DEFAULT_SOCKET",
    "DEFAULT_UNPLUG_GRACE_S",
    "PROTOCOL_VERSION",
    "IopfClient",
    "PendingCall",
    "async_op",
    "async_procedure",
    "check_server_uid",
    "resolve_socket_path",
]
