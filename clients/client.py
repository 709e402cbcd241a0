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

Replies are matched to calls by request id, by a reader task of the client's
own: calls may run concurrently from many tasks, and a ``dma`` waiting for its
page faults to be answered does not block the task that answers them. Fault
groups and trace records are pushed into per-queue buffers by the same reader,
so nothing a slow consumer does can hold up replies.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any

import trio

from clients.errors import ConnectionLost, EventGap, IopfError, error_from_reply
from clients.queues import DeviceRequestStream, FaultQueue, TraceStream
from clients.records import (
    ClientStats,
    Device,
    DeviceRequest,
    DmaResult,
    FaultGroup,
    HelloInfo,
    PageResponse,
    PendingGroup,
    Perm,
    ResponseCode,
    Status,
    partial_outcomes,
)
from iopfd.protocol.frames import (
    DEFAULT_MAX_FRAME,
    FrameDecoder,
    encode_frame,
)
from iopfd.protocol.frames import ProtocolViolation as FramingError

PROTOCOL_VERSION = 2
#: ``unplug`` waits for the device's owners (up to ``grace_s``); the reply may be late.
DEFAULT_UNPLUG_GRACE_S = 10.0
DEFAULT_SOCKET = "/run/iopfd/iopfd.sock"
_UINT32 = 1 << 32


def resolve_socket_path(path: str | os.PathLike[str] | None = None) -> str:
    """The socket to use: ``path`` if given, else ``$IOPFD_SOCKET``, else /run/iopfd/iopfd.sock."""
    if path is not None and str(path):
        return os.fspath(path)
    return os.environ.get("IOPFD_SOCKET") or DEFAULT_SOCKET


class _Call:
    __slots__ = ("done", "error", "op", "reply")

    def __init__(self, op: str) -> None:
        self.op = op
        self.done = trio.Event()
        self.reply: dict[str, Any] | None = None
        self.error: str | None = None


class PendingCall:
    """A request already queued by :meth:`IopfClient.submit`; await :meth:`result`."""

    __slots__ = ("_call", "_client", "id")

    def __init__(self, client: IopfClient, req_id: int, call: _Call) -> None:
        self._client = client
        self._call = call
        self.id = req_id

    @property
    def op(self) -> str:
        return self._call.op

    async def result(self) -> dict[str, Any]:
        """The reply's ``result`` map; raises IopfError (errno) or ConnectionLost."""
        return await self._client._result(self.id, self._call)


class IopfClient:
    """A connection to iopfd. Open it with :meth:`open` (or :meth:`connect`).

    Every protocol operation is an ``async`` method that returns once the
    daemon replied, and raises an :class:`~clients.errors.IopfError` subclass
    carrying the errno name on an error reply. Calls may be made from any
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
        self._flush_scheduled = False
        self._writer_busy = False
        self._decoder = FrameDecoder(DEFAULT_MAX_FRAME)
        self._max_frame = DEFAULT_MAX_FRAME
        self._calls: dict[int, _Call] = {}
        self._next_id = 1
        self._outbuf = bytearray()
        self._bell_send, self._bell_recv = trio.open_memory_channel[None](1)
        self._closed_reason: str | None = None
        self._fault_queues: dict[int, FaultQueue] = {}
        self._trace = TraceStream(trace_buffer)
        self._device_requests = DeviceRequestStream()
        self._last_seq = 0
        self.hello_info: HelloInfo | None = None
        self._n_requests = 0
        self._n_replies = 0
        self._n_events = 0
        self._n_writes = 0
        self._n_gaps = 0
        self._n_missed = 0
        self._n_late = 0
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
        return ClientStats(
            requests=self._n_requests,
            replies=self._n_replies,
            events=self._n_events,
            writes=self._n_writes,
            seq_gaps=self._n_gaps,
            missed_events=self._n_missed,
            late_replies=self._n_late,
            in_flight=len(self._calls),
        )

    async def _hello(self, client_name: str) -> None:
        r = await self.request("hello", version=PROTOCOL_VERSION, client=client_name)
        self.hello_info = HelloInfo.from_wire(r, DEFAULT_MAX_FRAME)
        self._max_frame = self.hello_info.max_frame
        self._decoder.max_frame = max(self._max_frame, DEFAULT_MAX_FRAME)

    # -- transport ------------------------------------------------------------

    async def request(self, op: str, **args: Any) -> dict[str, Any]:
        """Send any request and return its ``result`` map (for ops without a method)."""
        req_id, call = self._queue(op, args)
        return await self._result(req_id, call)

    def submit(self, op: str, **args: Any) -> PendingCall:
        """Queue a request now and return a handle; ``await handle.result()`` later.

        Requests of one connection are started by the daemon in the order they
        arrive, and ``submit`` fixes that order at the call, whatever the task
        scheduling. A fault handler can therefore submit a batch's ``ioas_map``
        calls and then its ``page_response``, and await them together: one write,
        one round trip, and the answers are applied after the mappings. (Calls made
        from concurrent tasks have no such order between them.)
        """
        req_id, call = self._queue(op, args)
        if not (self._flush_scheduled or self._writer_busy):
            # if nobody awaits a result in this scheduler pass, the writer task sends it
            with suppress(trio.WouldBlock):
                self._bell_send.send_nowait(None)
        return PendingCall(self, req_id, call)

    def _queue(self, op: str, args: dict[str, Any]) -> tuple[int, _Call]:
        if self._closed_reason is not None:
            raise ConnectionLost(self._closed_reason)
        req_id = self._alloc_id()
        msg: dict[str, Any] = {"op": op, "id": req_id}
        msg.update(args)
        frame = encode_frame(msg)
        if len(frame) - 4 > self._max_frame:
            raise ValueError(f"{op}: request of {len(frame) - 4} bytes exceeds max_frame")
        call = _Call(op)
        self._calls[req_id] = call
        self._outbuf += frame
        self._n_requests += 1
        return req_id, call

    async def _result(self, req_id: int, call: _Call) -> dict[str, Any]:
        if self._outbuf and not (self._flush_scheduled or self._writer_busy):
            # This call flushes. One scheduler pass first, so that every task made
            # runnable together (a burst of dma calls, maps and a page_response) has
            # queued its frame too: they all leave in one write.
            self._flush_scheduled = True
            await trio.lowlevel.cancel_shielded_checkpoint()
            self._flush_scheduled = False
            self._flush()
        try:
            await call.done.wait()
        finally:
            if not call.done.is_set():
                # cancelled while waiting: the reply, when it comes, is dropped
                self._calls.pop(req_id, None)
        if call.error is not None:
            raise ConnectionLost(call.error)
        reply = call.reply
        assert reply is not None
        if reply.get("ok"):
            result = reply.get("result")
            return result if isinstance(result, dict) else {}
        err = reply.get("error")
        err = err if isinstance(err, dict) else {}
        raise error_from_reply(str(err.get("code", "EPROTO")), str(err.get("message", "")),
                               call.op)

    def _alloc_id(self) -> int:
        while True:
            req_id = self._next_id
            self._next_id = (self._next_id + 1) % _UINT32
            if req_id not in self._calls:
                return req_id

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
        try:
            while True:
                data = await self._stream.receive_some(1 << 16)
                if not data:
                    self._shutdown("iopfd closed the connection")
                    return
                now = time.monotonic_ns()
                for msg in self._decoder.feed(bytes(data)):
                    self._dispatch(msg, now)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            self._shutdown(f"connection to iopfd lost: {e!r}")
        except FramingError as e:
            self._shutdown(f"iopfd sent a bad frame: {e}")

    def _dispatch(self, msg: dict[str, Any], now: int) -> None:
        if "event" in msg:
            self._n_events += 1
            self._check_seq(msg.get("seq"))
            kind = msg["event"]
            if kind == "fault":
                group = FaultGroup.from_event(msg, now)
                self.fault_queue(group.fault_id)._put(group)
            elif kind == "device_request":
                self._device_requests._put(DeviceRequest.from_event(msg, now))
            elif kind == "trace":
                self._trace._put_event(msg)
            else:
                self.unknown_events += 1
            return
        req_id = msg.get("id")
        if req_id is None:
            # the daemon reports a protocol violation it cannot pin to a request
            err = msg.get("error")
            err = err if isinstance(err, dict) else {}
            self._shutdown(
                f"iopfd: {err.get('code', 'EPROTO')}: {err.get('message', 'protocol violation')}"
            )
            return
        self._n_replies += 1
        call = self._calls.pop(req_id, None) if isinstance(req_id, int) else None
        if call is None:
            self._n_late += 1
            return
        call.reply = msg
        call.done.set()

    def _check_seq(self, seq: object) -> None:
        if not isinstance(seq, int):
            return
        expected = self._last_seq + 1
        self._last_seq = seq
        if seq == expected:
            return
        self._n_gaps += 1
        self._n_missed += max(0, seq - expected)
        for q in self._fault_queues.values():
            q._put(EventGap(expected, seq))
        self._device_requests._put(EventGap(expected, seq))
        self._trace._put(EventGap(expected, seq))

    def _shutdown(self, reason: str) -> None:
        if self._closed_reason is not None:
            return
        self._closed_reason = reason
        calls, self._calls = self._calls, {}
        for call in calls.values():
            call.error = f"{call.op}: {reason}"
            call.done.set()
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

    # -- VMM operations -------------------------------------------------------

    async def devices(self) -> list[Device]:
        """Every PCI function of the emulated platform: rid, IOMMU, PRI/ATS/PASID, owner state."""
        r = await self.request("devices")
        return [Device.from_wire(d) for d in r["devices"]]

    async def bind(self, rid: str) -> int:
        """Take exclusive ownership of a device (``"SSSS:BB:DD.F"``); returns its ``dev_id``.

        Raises Busy if another connection holds it, NoDevice if it was removed.
        """
        r = await self.request("bind", rid=rid)
        return int(r["dev_id"])

    async def unbind(self, dev_id: int) -> None:
        """Release a device; every PASID of it is detached first (pending groups: INVALID)."""
        await self.request("unbind", dev_id=dev_id)

    async def ioas_alloc(self) -> int:
        """Allocate an I/O address space; returns ``ioas_id``."""
        r = await self.request("ioas_alloc")
        return int(r["ioas_id"])

    async def ioas_map(
        self, ioas_id: int, iova: int, length: int, perm: int = Perm.READ | Perm.WRITE
    ) -> None:
        """Map ``[iova, iova+length)`` (4 KiB aligned) in an IOAS with READ and/or WRITE."""
        await self.request("ioas_map", ioas_id=ioas_id, iova=iova, length=length, perm=int(perm))

    async def ioas_unmap(self, ioas_id: int, iova: int, length: int) -> int:
        """Unmap a range; returns the bytes unmapped once every IOTLB/ATC copy was invalidated."""
        r = await self.request("ioas_unmap", ioas_id=ioas_id, iova=iova, length=length)
        return int(r["unmapped"])

    async def fault_alloc(self) -> int:
        """Allocate a fault queue (``IOMMU_FAULT_QUEUE_ALLOC``); its groups come to this client.

        Read them with ``client.fault_queue(fault_id)``.
        """
        r = await self.request("fault_alloc")
        fault_id = int(r["fault_id"])
        self.fault_queue(fault_id)
        return fault_id

    async def hwpt_alloc(
        self,
        dev_id: int,
        pt_id: int,
        *,
        flags: Sequence[str] = (),
        fault_id: int | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> int:
        """Allocate a hardware page table for a device; returns ``hwpt_id``.

        ``pt_id`` an IOAS gives a paging (stage-2) HWPT; flag ``"nest_parent"``
        makes it usable as a nesting parent. ``pt_id`` a nest_parent HWPT with
        ``data={"type": "vtd_s1"}`` gives a nested (guest stage-1) HWPT. With
        ``fault_id`` the HWPT is fault-capable: its page requests are
        delivered to that fault queue instead of failing the DMA.
        """
        args: dict[str, Any] = {"dev_id": dev_id, "pt_id": pt_id, "flags": list(flags)}
        if fault_id is not None:
            args["fault_id"] = fault_id
        if data is not None:
            args["data"] = dict(data)
        r = await self.request("hwpt_alloc", **args)
        return int(r["hwpt_id"])

    async def attach(self, dev_id: int, pt_id: int, pasid: int | None = None) -> None:
        """Attach the device's RID (``pasid=None``) or one PASID to a HWPT.

        Where something is attached already this is a :meth:`replace` (VFIO's rule). On
        kernel 6.15+ profiles a PASID needs a HWPT allocated with flag ``"pasid"``, and
        then so does the RID's HWPT (InvalidArgument otherwise); a fault-capable HWPT on
        a function without PRI is NoDevice.
        """
        await self.request("attach", **_with_pasid({"dev_id": dev_id, "pt_id": pt_id}, pasid))

    async def replace(self, dev_id: int, pt_id: int, pasid: int | None = None) -> None:
        """Atomically switch an attached RID/PASID to another HWPT (old one's groups: INVALID)."""
        await self.request("replace", **_with_pasid({"dev_id": dev_id, "pt_id": pt_id}, pasid))

    async def detach(self, dev_id: int, pasid: int | None = None) -> None:
        """Detach the RID or a PASID; returns after its page requests were drained.
        Nothing attached there is not an error."""
        await self.request("detach", **_with_pasid({"dev_id": dev_id}, pasid))

    async def page_response(
        self, fault_id: int, responses: Iterable[PageResponse | tuple[int, int]]
    ) -> int:
        """Answer groups of a fault queue, in one request: ``[(cookie, code), ...]``.

        This is the kernel fault fd's ``write()``: entries are applied in order and
        processing stops at the first one that is refused (a cookie not pending in this
        queue, or a code other than SUCCESS/INVALID). Returns how many were applied; the
        entry at that index was refused and the ones after it were not looked at. Raises
        InvalidArgument when the very first entry is refused (nothing applied), and
        NoSuchObject for a fault queue that is not this connection's.
        :meth:`page_response_each` settles every entry on its own.
        """
        items = _response_items(responses)
        r = await self.request("page_response", fault_id=fault_id, responses=items)
        return int(r["done"])

    async def page_response_each(
        self, fault_id: int, responses: Iterable[PageResponse | tuple[int, int]]
    ) -> list[str | None]:
        """Answer groups of one fault queue so that each entry gets its own outcome.

        Returns one slot per entry: None if applied, else the errno name (``"EINVAL"``
        for the entry the daemon refused). After a refused entry, the entries behind it
        are sent again in a new request, so one bad cookie never leaves the others
        unanswered. One request when all are good. A whole-queue error (``ENOENT``)
        fills every remaining slot.
        """
        items = _response_items(responses)
        results: list[str | None] = []
        while len(results) < len(items):
            rest = items[len(results):]
            try:
                r = await self.request("page_response", fault_id=fault_id, responses=rest)
                done = int(r["done"])
            except IopfError as e:
                if e.errno != "EINVAL":
                    results += [e.errno] * len(rest)
                    break
                done = 0  # the first entry was refused, nothing applied
            settled, _ = partial_outcomes(len(rest), done)
            results += settled
        return results

    async def answer(self, group: FaultGroup, code: int = ResponseCode.SUCCESS) -> None:
        """Answer one group; raises InvalidArgument if its cookie is no longer pending
        (already answered, or answered by the daemon) or the code is not 0 or 1."""
        try:
            await self.page_response(group.fault_id, [(group.cookie, int(code))])
        except IopfError as e:
            raise error_from_reply(e.errno, f"cookie {group.cookie}: {e.message}",
                                   "page_response") from None

    async def answer_all(
        self, answers: Iterable[tuple[FaultGroup, int]]
    ) -> list[str | None]:
        """Answer many groups: one ``page_response`` per fault queue (more only after a
        refused entry, see :meth:`page_response_each`); one outcome per answer, in
        input order: None if applied, else the errno name."""
        by_queue: dict[int, list[int]] = {}
        pairs = list(answers)
        for i, (g, _) in enumerate(pairs):
            by_queue.setdefault(g.fault_id, []).append(i)
        results: list[str | None] = [None] * len(pairs)
        for fault_id, idxs in by_queue.items():
            res = await self.page_response_each(
                fault_id, [(pairs[i][0].cookie, int(pairs[i][1])) for i in idxs]
            )
            for i, x in zip(idxs, res, strict=True):
                results[i] = x
        return results

    async def dma(
        self, dev_id: int, iova: int, length: int, perm: int, pasid: int | None = None
    ) -> DmaResult:
        """Make the emulated device access ``[iova, iova+length)``; waits for the outcome.

        On a translation miss the device issues page requests, which arrive on
        the fault queue of the attached HWPT; this call returns only after
        they were answered (from another task of the same client, typically).
        """
        args = _with_pasid(
            {"dev_id": dev_id, "iova": iova, "length": length, "perm": int(perm)}, pasid
        )
        r = await self.request("dma", **args)
        return DmaResult(status=str(r["status"]), faults=int(r["faults"]), bytes=int(r["bytes"]))

    async def destroy(self, obj_id: int) -> None:
        """Destroy an object of this connection (Busy while another object uses it)."""
        await self.request("destroy", obj_id=obj_id)
        q = self._fault_queues.get(obj_id)
        if q is not None:
            q._close()  # kept, closed: IDs are never reused, late lookups see the end

    async def device_reset(self, dev_id: int) -> None:
        """Function-level reset of a device this connection holds (``VFIO_DEVICE_RESET``).

        Attachments and fault queues stay; pending groups stay pending and answerable
        (the function has forgotten them, so their answers change nothing for it).
        """
        await self.request("device_reset", dev_id=dev_id)

    async def hwpt_s1_map(
        self, hwpt_id: int, iova: int, length: int, gpa: int, perm: int
    ) -> None:
        """Write guest stage-1 entries iova -> gpa in a nested HWPT (no invalidation implied)."""
        await self.request(
            "hwpt_s1_map", hwpt_id=hwpt_id, iova=iova, length=length, gpa=gpa, perm=int(perm)
        )

    async def hwpt_s1_unmap(self, hwpt_id: int, iova: int, length: int) -> int:
        """Remove guest stage-1 entries; cached translations stay until hwpt_invalidate."""
        r = await self.request("hwpt_s1_unmap", hwpt_id=hwpt_id, iova=iova, length=length)
        return int(r["unmapped"])

    async def hwpt_invalidate(
        self, hwpt_id: int, iova: int | None = None, length: int | None = None
    ) -> None:
        """The guest's stage-1 invalidation: a range, or everything when both are None."""
        if (iova is None) != (length is None):
            raise ValueError("hwpt_invalidate takes iova and length together, or neither")
        args: dict[str, Any] = {"hwpt_id": hwpt_id}
        if iova is not None:
            args["iova"] = iova
        if length is not None:
            args["length"] = length
        await self.request("hwpt_invalidate", **args)

    # -- admin operations ---------------------------------------------------

    async def status(self) -> Status:
        """Daemon version, uptime, clients and counters (admin)."""
        return Status.from_wire(await self.request("status"))

    async def topology(self) -> dict[str, Any]:
        """IOMMU units and devices with owner and state (admin)."""
        return await self.request("topology")

    async def objects(self) -> dict[str, Any]:
        """Every connection's objects (admin)."""
        return await self.request("objects")

    async def pending(self) -> list[PendingGroup]:
        """Every unanswered group of every connection (admin)."""
        r = await self.request("pending")
        return [PendingGroup.from_wire(d) for d in r.get("pending", [])]

    async def inject(
        self,
        rid: str,
        addr: int,
        perm: int,
        grpid: int,
        *,
        last: bool = True,
        pasid: int | None = None,
    ) -> None:
        """Write one raw page request descriptor into the device's IOMMU PRQ (admin)."""
        args = _with_pasid(
            {"rid": rid, "addr": addr, "perm": int(perm), "grpid": grpid, "last": last}, pasid
        )
        await self.request("inject", **args)

    async def unplug(
        self, rid: str, *, force: bool = False, grace_s: float = DEFAULT_UNPLUG_GRACE_S
    ) -> bool:
        """Hot-remove a device (admin); returns once it is removed.

        A bound device's owner first gets a ``device_request`` event and may unbind it;
        after ``grace_s`` seconds, or at once with ``force``, the daemon removes it
        anyway (PRI off, drain, stop DMA, release; pending groups answered INVALID).
        Returns whether the removal was forced on an owner that still held it.
        """
        r = await self.request("unplug", rid=rid, force=force, grace_s=float(grace_s))
        return bool(r.get("forced", False))

    async def plug(self, rid: str) -> None:
        """Bring a removed device back as free (admin)."""
        await self.request("plug", rid=rid)

    async def reset(self, rid: str) -> None:
        """Function-level reset of any device (admin): what ``device_reset`` does for an
        owner; clears a PRI Response Failure."""
        await self.request("reset", rid=rid)

    async def subscribe(self, topics: Sequence[str] = ()) -> TraceStream:
        """Start (or change) the trace stream; iterate the returned :class:`TraceStream`.

        Topics: fault, response, auto_response, invalidation, throttle,
        overflow, device; empty means all (admin).
        """
        await self.request("subscribe", topics=list(topics))
        return self._trace


async def _open_stream(path: str) -> tuple[trio.SocketStream, socket.socket]:
    """Connect to ``path``; return the trio stream and the stdlib socket under it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tsock = trio.socket.from_stdlib_socket(sock)  # same object, now non-blocking
    try:
        await tsock.connect(path)
    except BaseException:
        tsock.close()
        raise
    return trio.SocketStream(tsock), sock


def _response_items(
    responses: Iterable[PageResponse | tuple[int, int]],
) -> list[dict[str, int]]:
    return [
        {"cookie": r.cookie, "code": int(r.code)}
        if isinstance(r, PageResponse)
        else {"cookie": int(r[0]), "code": int(r[1])}
        for r in responses
    ]


def _with_pasid(args: dict[str, Any], pasid: int | None) -> dict[str, Any]:
    if pasid is not None:
        args["pasid"] = pasid
    return args
