"""A blocking iopfd client for scripts and notebooks: plain sockets, no trio.

``SyncClient`` has the same methods as :class:`clients.IopfClient`, without
``await``::

    from clients.sync import SyncClient
    with SyncClient(client_name="notebook") as c:
        print(c.status().counters)

Both clients sit on the same sans-IO :class:`~iopfd.protocol.session.ClientSession`
and take their op methods from the same declarations (:mod:`clients.calls`, made
blocking here by :func:`sync_op`).

It is single-threaded: a call blocks until its reply arrives, queueing any
fault groups, device requests or trace records that come in meanwhile; take
them with :meth:`next_fault` / :meth:`next_device_request` / :meth:`next_trace`.
Because the answer to a page fault must come from this same connection, a ``dma``
that faults can only finish if faults are answered while it waits: pass
``on_fault=handler`` to :meth:`dma` (the handler gets each group and returns its
response code, after mapping what it needs through the same client).
"""

from __future__ import annotations

import collections
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any, Concatenate, Final, NoReturn, ParamSpec, TypeVar

from clients.calls import (
    CALLS,
    PROCEDURES,
    Call,
    Calls,
    Procedure,
    Procedures,
    close_fds,
    result_map,
)
from clients.client import (
    ANCILLARY_SPACE,
    check_server_uid,
    fds_of,
    reply_value,
    resolve_socket_path,
    session_request,
)
from clients.errors import ConnectionLost, EventGap, IopfError
from clients.records import ClientStats, DeviceRequest, DmaResult, FaultGroup, TraceRecord
from iopfd.protocol.frames import ProtocolViolation as FramingError
from iopfd.protocol.session import ClientSession, Event, Reply

FaultHandler = Callable[[FaultGroup], int]
P = ParamSpec("P")
R = TypeVar("R")
_T = TypeVar("_T")
#: Seconds a call whose reply the daemon holds by design (``unplug``: its grace period)
#: waits beyond that for the reply.
UNPLUG_REPLY_SLACK_S: Final = 10.0


def sync_op(
    fn: Callable[Concatenate[Calls, P], Call[R]],
) -> Callable[Concatenate[SyncClient, P], R]:
    """The SyncClient method of one op: build its Call, send it, wait for the typed value."""

    def method(self: SyncClient, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.call(fn(CALLS, *args, **kwargs))

    method.__name__ = method.__qualname__ = fn.__name__
    method.__doc__ = fn.__doc__
    method.__wrapped__ = fn  # type: ignore[attr-defined]
    return method


def sync_procedure(
    fn: Callable[Concatenate[Procedures, P], Procedure[R]],
) -> Callable[Concatenate[SyncClient, P], R]:
    """The SyncClient method of a several-request procedure of :mod:`clients.calls`."""

    def method(self: SyncClient, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.run(fn(PROCEDURES, *args, **kwargs))

    method.__name__ = method.__qualname__ = fn.__name__
    method.__doc__ = fn.__doc__
    method.__wrapped__ = fn  # type: ignore[attr-defined]
    return method


class SyncPendingCall:
    """A request queued by :meth:`SyncClient.submit`; :meth:`result` sends what is
    queued (in submission order, in one write) and waits for this one's reply."""

    __slots__ = ("_client", "id", "op")

    def __init__(self, client: SyncClient, req_id: int, op: str) -> None:
        self._client = client
        self.id = req_id
        self.op = op

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """The reply's ``result`` map; raises IopfError (errno) or ConnectionLost."""
        return self._client.wait(self.id, self.op, timeout=timeout)


class SyncClient:
    """One blocking connection to iopfd; ``timeout`` (seconds) bounds every call."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        client_name: str = "iopf-sync",
        timeout: float | None = 30.0,
    ) -> None:
        self.timeout = timeout
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(resolve_socket_path(path))
            check_server_uid(self._sock)
        except BaseException:
            self._sock.close()
            raise
        self._session = ClientSession()
        self._outbuf = bytearray()
        #: Requests whose reply a caller will take: id -> op; their replies, once read.
        self._pending: dict[int, str] = {}
        self._replies: dict[int, Reply] = {}
        self._faults: collections.deque[FaultGroup] = collections.deque()
        self._traces: collections.deque[TraceRecord] = collections.deque()
        self._device_requests: collections.deque[DeviceRequest] = collections.deque()
        self._closed_reason: str | None = None
        self._n_writes = 0
        self.seq_gaps: list[EventGap] = []
        self.unknown_events = 0
        try:
            self.hello_info = self.call(CALLS.hello(client_name))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the connection; the daemon releases everything it owned."""
        if self._closed_reason is None:
            self._closed_reason = "client closed"
        self._sock.close()
        close_fds(self._session.release_fds())
        for reply in self._replies.values():
            close_fds(reply.fds)

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    @property
    def admin(self) -> bool:
        """Whether the daemon lets this peer use admin operations."""
        return self.hello_info.admin

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

    # -- transport ------------------------------------------------------------

    def call(self, call: Call[R], *, on_fault: FaultHandler | None = None) -> R:
        """Send one :class:`~clients.calls.Call` and return its typed value; faults
        arriving meanwhile go to ``on_fault`` (else they queue)."""
        req_id = self._queue(call.op, call.args)
        limit = self.timeout
        if limit is not None and call.held_s:
            limit = max(limit, call.held_s + UNPLUG_REPLY_SLACK_S)
        reply = self._wait_reply(req_id, on_fault, limit)
        return call.value(reply_value(reply, call.op), reply.fds)

    def run(self, procedure: Procedure[R]) -> R:
        """Drive a :class:`~clients.calls.Procedure` (see :meth:`IopfClient.run`)."""
        try:
            call = next(procedure)
            while True:
                try:
                    value = self.call(call)
                except IopfError as e:
                    call = procedure.throw(e)
                else:
                    call = procedure.send(value)
        except StopIteration as stop:
            result: R = stop.value
            return result

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        """Send any request and wait for its ``result`` (raises IopfError on error)."""
        return self.wait(self.send(op, **args), op)

    def send(self, op: str, **args: Any) -> int:
        """Send a request without waiting; returns its id for :meth:`wait`."""
        req_id = self._queue(op, args)
        self._flush()
        return req_id

    def submit(self, op: str, **args: Any) -> SyncPendingCall:
        """Queue a request (sent with the next flush: any wait, or :meth:`send`), in call
        order; ``handle.result()`` later. Maps and the page_response that follows them
        leave in one write and are started by the daemon in this order."""
        return SyncPendingCall(self, self._queue(op, args), op)

    def wait(
        self,
        req_id: int,
        op: str = "",
        on_fault: FaultHandler | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Wait for the reply to ``req_id``, answering faults with ``on_fault`` meanwhile.
        ``timeout`` (seconds) overrides the client's for this wait."""
        op = self._pending.get(req_id, op)
        reply = self._wait_reply(req_id, on_fault, self.timeout if timeout is None else timeout)
        close_fds(reply.fds)  # the typed method (fault_fd) takes them; a raw map cannot
        return result_map(op, reply_value(reply, op))

    def _queue(self, op: str, args: Mapping[str, Any]) -> int:
        if self._closed_reason is not None:
            raise ConnectionLost(self._closed_reason)
        req_id, frame = session_request(self._session, op, args)
        self._pending[req_id] = op
        self._outbuf += frame
        return req_id

    def _flush(self) -> None:
        if not self._outbuf:
            return
        data = bytes(self._outbuf)
        self._outbuf.clear()
        try:
            self._sock.settimeout(self.timeout)
            self._sock.sendall(data)
        except OSError as e:
            self._lost(f"connection to iopfd lost while sending: {e!r}")
        self._n_writes += 1

    def _wait_reply(self, req_id: int, on_fault: FaultHandler | None, limit: float | None) -> Reply:
        self._flush()
        deadline = None if limit is None else time.monotonic() + limit
        try:
            while req_id not in self._replies:
                if on_fault is not None and self._faults:
                    self._handle_faults(on_fault)
                    continue
                self._read_some(deadline)
        except TimeoutError:
            # nobody will take this reply: the session drops it when it comes
            if self._pending.pop(req_id, None) is not None:
                self._session.abandon(req_id)
            raise
        self._pending.pop(req_id, None)
        return self._replies.pop(req_id)

    def _handle_faults(self, on_fault: FaultHandler) -> None:
        groups = list(self._faults)
        self._faults.clear()
        by_queue: dict[int, list[tuple[int, int]]] = {}
        for g in groups:
            by_queue.setdefault(g.fault_id, []).append((g.cookie, int(on_fault(g))))
        for fault_id, responses in by_queue.items():
            self.page_response_each(fault_id, responses)

    def _read_some(self, deadline: float | None) -> None:
        if self._closed_reason is not None:
            raise ConnectionLost(self._closed_reason)
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no reply from iopfd in time")
            self._sock.settimeout(left)
        else:
            self._sock.settimeout(None)
        try:
            # recvmsg: a plain read of the byte that carries an fd would drop the fd
            data, anc, flags, _ = self._sock.recvmsg(
                1 << 16, ANCILLARY_SPACE, socket.MSG_CMSG_CLOEXEC
            )
            fds = fds_of(anc, flags)
        except TimeoutError:
            raise
        except OSError as e:
            self._lost(f"connection to iopfd lost: {e!r}")
        if not data:
            self._lost("iopfd closed the connection")
        now = time.monotonic_ns()
        try:
            items = self._session.receive_data(data, fds)
        except FramingError as e:
            self._lost(f"iopfd sent a bad frame: {e}")
        close_fds(self._session.take_stray_fds())
        for item in items:
            if isinstance(item, Event):
                self._event(item, now)
            elif item.id is None:
                self._lost(f"iopfd: {item.code}: {item.message or 'protocol violation'}")
            elif item.id in self._pending:
                self._replies[item.id] = item
            else:
                close_fds(item.fds)
        try:
            self._session.check()
        except FramingError as e:
            self._lost(f"iopfd sent a bad frame: {e}")

    def _event(self, ev: Event, now: int) -> None:
        if ev.expected:
            self.seq_gaps.append(EventGap(ev.expected, ev.seq))
        if ev.name == "fault":
            self._faults.append(FaultGroup.from_event(ev, now))
        elif ev.name == "device_request":
            self._device_requests.append(DeviceRequest.from_event(ev, now))
        elif ev.name == "trace":
            self._traces.append(TraceRecord.from_event(ev))
        else:
            self.unknown_events += 1

    def _lost(self, reason: str) -> NoReturn:
        self._closed_reason = reason
        self._sock.close()
        raise ConnectionLost(reason)

    # -- events ---------------------------------------------------------------

    def next_fault(self, timeout: float | None = None) -> FaultGroup | None:
        """The next fault group of any of this client's queues, or None after ``timeout`` s."""
        return self._next_event(self._faults, timeout)

    def next_device_request(self, timeout: float | None = None) -> DeviceRequest | None:
        """The next ``device_request`` (an admin is unplugging a device this connection
        holds: finish, answer its groups, :meth:`unbind` it), or None after ``timeout`` s."""
        return self._next_event(self._device_requests, timeout)

    def next_trace(self, timeout: float | None = None) -> TraceRecord | None:
        """The next trace record (after :meth:`subscribe`), or None after ``timeout`` s."""
        return self._next_event(self._traces, timeout)

    def _next_event(self, q: collections.deque[_T], timeout: float | None) -> _T | None:
        self._flush()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not q:
            try:
                self._read_some(deadline)
            except TimeoutError:
                return None
        return q.popleft()

    # -- the ops: one line each, declared in clients.calls --------------------

    def dma(
        self,
        dev_id: int,
        iova: int,
        length: int,
        perm: int,
        pasid: int | None = None,
        *,
        on_fault: FaultHandler | None = None,
    ) -> DmaResult:
        """Run a DMA (see :meth:`Calls.dma <clients.calls.Calls.dma>`); groups arriving
        meanwhile go to ``on_fault`` (else they queue)."""
        return self.call(CALLS.dma(dev_id, iova, length, perm, pasid), on_fault=on_fault)

    devices = sync_op(Calls.devices)
    bind = sync_op(Calls.bind)
    unbind = sync_op(Calls.unbind)
    ioas_alloc = sync_op(Calls.ioas_alloc)
    ioas_map = sync_op(Calls.ioas_map)
    hw_info = sync_op(Calls.hw_info)
    ioas_unmap = sync_op(Calls.ioas_unmap)
    fault_alloc = sync_op(Calls.fault_alloc)
    hwpt_alloc = sync_op(Calls.hwpt_alloc)
    attach = sync_op(Calls.attach)
    replace = sync_op(Calls.replace)
    detach = sync_op(Calls.detach)
    page_response = sync_op(Calls.page_response)
    fault_fd = sync_op(Calls.fault_fd)
    destroy = sync_op(Calls.destroy)
    device_reset = sync_op(Calls.device_reset)
    hwpt_s1_map = sync_op(Calls.hwpt_s1_map)
    hwpt_s1_unmap = sync_op(Calls.hwpt_s1_unmap)
    hwpt_invalidate = sync_op(Calls.hwpt_invalidate)
    ioas_iova_ranges = sync_op(Calls.ioas_iova_ranges)
    ioas_allow_iovas = sync_op(Calls.ioas_allow_iovas)
    ioas_copy = sync_op(Calls.ioas_copy)
    ioas_map_file = sync_op(Calls.ioas_map_file)
    option = sync_op(Calls.option)
    status = sync_op(Calls.status)
    topology = sync_op(Calls.topology)
    objects = sync_op(Calls.objects)
    pending = sync_op(Calls.pending)
    inject = sync_op(Calls.inject)
    unplug = sync_op(Calls.unplug)
    plug = sync_op(Calls.plug)
    reset = sync_op(Calls.reset)
    subscribe = sync_op(Calls.subscribe)

    page_response_each = sync_procedure(Procedures.page_response_each)
    answer = sync_procedure(Procedures.answer)
    answer_all = sync_procedure(Procedures.answer_all)


__all__ = [
    "UNPLUG_REPLY_SLACK_S",
    "FaultHandler",
    "SyncClient",
    "SyncPendingCall",
    "sync_op",
    "sync_procedure",
]
