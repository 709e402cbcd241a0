"""A blocking iopfd client for scripts and notebooks: plain sockets, no trio.

``SyncClient`` has the same methods as :class:`clients.IopfClient`, without
``await``::

    from clients.sync import SyncClient
    with SyncClient(client_name="notebook") as c:
        print(c.status().counters)

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from clients.client import DEFAULT_UNPLUG_GRACE_S, PROTOCOL_VERSION, resolve_socket_path
from clients.errors import ConnectionLost, EventGap, IopfError, error_from_reply
from clients.records import (
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
    TraceRecord,
    partial_outcomes,
)
from iopfd.protocol.frames import (
    DEFAULT_MAX_FRAME,
    FrameDecoder,
    encode_frame,
)
from iopfd.protocol.frames import ProtocolViolation as FramingError

FaultHandler = Callable[[FaultGroup], int]
_T = TypeVar("_T")
#: Seconds an ``unplug`` call waits beyond its grace period for the reply.
UNPLUG_REPLY_SLACK_S = 10.0


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
        except BaseException:
            self._sock.close()
            raise
        self._decoder = FrameDecoder(DEFAULT_MAX_FRAME)
        self._next_id = 1
        self._replies: dict[int, dict[str, Any]] = {}
        self._faults: collections.deque[FaultGroup] = collections.deque()
        self._traces: collections.deque[TraceRecord] = collections.deque()
        self._device_requests: collections.deque[DeviceRequest] = collections.deque()
        self._last_seq = 0
        self._closed_reason: str | None = None
        self.seq_gaps: list[EventGap] = []
        try:
            r = self.request("hello", version=PROTOCOL_VERSION, client=client_name)
        except BaseException:
            self.close()
            raise
        self.hello_info = HelloInfo.from_wire(r, DEFAULT_MAX_FRAME)
        self._decoder.max_frame = max(self.hello_info.max_frame, DEFAULT_MAX_FRAME)

    def close(self) -> None:
        """Close the connection; the daemon releases everything it owned."""
        if self._closed_reason is None:
            self._closed_reason = "client closed"
        self._sock.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def admin(self) -> bool:
        return self.hello_info.admin

    # -- transport ------------------------------------------------------------

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        """Send any request and wait for its ``result`` (raises IopfError on error)."""
        req_id = self.send(op, **args)
        return self.wait(req_id, op)

    def send(self, op: str, **args: Any) -> int:
        """Send a request without waiting; returns its id for :meth:`wait`."""
        if self._closed_reason is not None:
            raise ConnectionLost(self._closed_reason)
        req_id = self._next_id
        self._next_id = (self._next_id + 1) % (1 << 32)
        msg: dict[str, Any] = {"op": op, "id": req_id}
        msg.update(args)
        try:
            self._sock.sendall(encode_frame(msg))
        except OSError as e:
            self._lost(f"connection to iopfd lost while sending: {e!r}")
        return req_id

    def wait(
        self, req_id: int, op: str = "", on_fault: FaultHandler | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Wait for the reply to ``req_id``, answering faults with ``on_fault`` meanwhile.
        ``timeout`` (seconds) overrides the client's for this wait."""
        limit = self.timeout if timeout is None else timeout
        deadline = None if limit is None else time.monotonic() + limit
        while req_id not in self._replies:
            if on_fault is not None and self._faults:
                self._handle_faults(on_fault)
                continue
            self._read_some(deadline)
        reply = self._replies.pop(req_id)
        if reply.get("ok"):
            result = reply.get("result")
            return result if isinstance(result, dict) else {}
        err = reply.get("error")
        err = err if isinstance(err, dict) else {}
        raise error_from_reply(str(err.get("code", "EPROTO")), str(err.get("message", "")), op)

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
        try:
            data = self._sock.recv(1 << 16)
        except TimeoutError:
            raise
        except OSError as e:
            self._lost(f"connection to iopfd lost: {e!r}")
        if not data:
            self._lost("iopfd closed the connection")
        now = time.monotonic_ns()
        try:
            msgs = self._decoder.feed(data)
        except FramingError as e:
            self._lost(f"iopfd sent a bad frame: {e}")
        for msg in msgs:
            self._dispatch(msg, now)

    def _dispatch(self, msg: dict[str, Any], now: int) -> None:
        if "event" in msg:
            seq = msg.get("seq")
            if isinstance(seq, int):
                if seq != self._last_seq + 1:
                    self.seq_gaps.append(EventGap(self._last_seq + 1, seq))
                self._last_seq = seq
            if msg["event"] == "fault":
                self._faults.append(FaultGroup.from_event(msg, now))
            elif msg["event"] == "device_request":
                self._device_requests.append(DeviceRequest.from_event(msg, now))
            elif msg["event"] == "trace":
                self._traces.append(TraceRecord.from_event(msg))
            return
        req_id = msg.get("id")
        if isinstance(req_id, int):
            self._replies[req_id] = msg
        else:
            err = msg.get("error")
            err = err if isinstance(err, dict) else {}
            self._lost(f"iopfd: {err.get('code', 'EPROTO')}: {err.get('message', '')}")

    def _lost(self, reason: str) -> Any:
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
        deadline = None if timeout is None else time.monotonic() + timeout
        while not q:
            try:
                self._read_some(deadline)
            except TimeoutError:
                return None
        return q.popleft()

    # -- operations (see IopfClient for the meaning of each) -----------------

    def devices(self) -> list[Device]:
        return [Device.from_wire(d) for d in self.request("devices")["devices"]]

    def bind(self, rid: str) -> int:
        return int(self.request("bind", rid=rid)["dev_id"])

    def unbind(self, dev_id: int) -> None:
        self.request("unbind", dev_id=dev_id)

    def ioas_alloc(self) -> int:
        return int(self.request("ioas_alloc")["ioas_id"])

    def ioas_map(
        self, ioas_id: int, iova: int, length: int, perm: int = Perm.READ | Perm.WRITE
    ) -> None:
        self.request("ioas_map", ioas_id=ioas_id, iova=iova, length=length, perm=int(perm))

    def ioas_unmap(self, ioas_id: int, iova: int, length: int) -> int:
        r = self.request("ioas_unmap", ioas_id=ioas_id, iova=iova, length=length)
        return int(r["unmapped"])

    def fault_alloc(self) -> int:
        return int(self.request("fault_alloc")["fault_id"])

    def hwpt_alloc(
        self,
        dev_id: int,
        pt_id: int,
        *,
        flags: Sequence[str] = (),
        fault_id: int | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> int:
        args: dict[str, Any] = {"dev_id": dev_id, "pt_id": pt_id, "flags": list(flags)}
        if fault_id is not None:
            args["fault_id"] = fault_id
        if data is not None:
            args["data"] = dict(data)
        return int(self.request("hwpt_alloc", **args)["hwpt_id"])

    def attach(self, dev_id: int, pt_id: int, pasid: int | None = None) -> None:
        self.request("attach", **_with_pasid({"dev_id": dev_id, "pt_id": pt_id}, pasid))

    def replace(self, dev_id: int, pt_id: int, pasid: int | None = None) -> None:
        self.request("replace", **_with_pasid({"dev_id": dev_id, "pt_id": pt_id}, pasid))

    def detach(self, dev_id: int, pasid: int | None = None) -> None:
        self.request("detach", **_with_pasid({"dev_id": dev_id}, pasid))

    def page_response(
        self, fault_id: int, responses: Iterable[PageResponse | tuple[int, int]]
    ) -> int:
        """The fault fd's write(): the number of entries applied (see IopfClient)."""
        r = self.request("page_response", fault_id=fault_id, responses=_response_items(responses))
        return int(r["done"])

    def page_response_each(
        self, fault_id: int, responses: Iterable[PageResponse | tuple[int, int]]
    ) -> list[str | None]:
        """One outcome per entry, resending what follows a refused entry (see IopfClient)."""
        items = _response_items(responses)
        results: list[str | None] = []
        while len(results) < len(items):
            rest = items[len(results):]
            try:
                done = int(self.request("page_response", fault_id=fault_id,
                                        responses=rest)["done"])
            except IopfError as e:
                if e.errno != "EINVAL":
                    results += [e.errno] * len(rest)
                    break
                done = 0
            settled, _ = partial_outcomes(len(rest), done)
            results += settled
        return results

    def answer(self, group: FaultGroup, code: int = ResponseCode.SUCCESS) -> None:
        try:
            self.page_response(group.fault_id, [(group.cookie, int(code))])
        except IopfError as e:
            raise error_from_reply(e.errno, f"cookie {group.cookie}: {e.message}",
                                   "page_response") from None

    def answer_all(self, answers: Iterable[tuple[FaultGroup, int]]) -> list[str | None]:
        """Answer many groups: one page_response per fault queue (more after a refused
        entry), one outcome per answer in input order."""
        pairs = list(answers)
        by_queue: dict[int, list[int]] = {}
        for i, (g, _) in enumerate(pairs):
            by_queue.setdefault(g.fault_id, []).append(i)
        results: list[str | None] = [None] * len(pairs)
        for fault_id, idxs in by_queue.items():
            res = self.page_response_each(fault_id, [(pairs[i][0].cookie, int(pairs[i][1]))
                                                     for i in idxs])
            for i, x in zip(idxs, res, strict=True):
                results[i] = x
        return results

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
        """Run a DMA; groups arriving meanwhile go to ``on_fault`` (else they queue)."""
        args = _with_pasid(
            {"dev_id": dev_id, "iova": iova, "length": length, "perm": int(perm)}, pasid
        )
        req_id = self.send("dma", **args)
        r = self.wait(req_id, "dma", on_fault)
        return DmaResult(status=str(r["status"]), faults=int(r["faults"]), bytes=int(r["bytes"]))

    def destroy(self, obj_id: int) -> None:
        self.request("destroy", obj_id=obj_id)

    def device_reset(self, dev_id: int) -> None:
        self.request("device_reset", dev_id=dev_id)

    def hwpt_s1_map(self, hwpt_id: int, iova: int, length: int, gpa: int, perm: int) -> None:
        self.request(
            "hwpt_s1_map", hwpt_id=hwpt_id, iova=iova, length=length, gpa=gpa, perm=int(perm)
        )

    def hwpt_s1_unmap(self, hwpt_id: int, iova: int, length: int) -> int:
        r = self.request("hwpt_s1_unmap", hwpt_id=hwpt_id, iova=iova, length=length)
        return int(r["unmapped"])

    def hwpt_invalidate(
        self, hwpt_id: int, iova: int | None = None, length: int | None = None
    ) -> None:
        if (iova is None) != (length is None):
            raise ValueError("hwpt_invalidate takes iova and length together, or neither")
        args: dict[str, Any] = {"hwpt_id": hwpt_id}
        if iova is not None:
            args["iova"] = iova
        if length is not None:
            args["length"] = length
        self.request("hwpt_invalidate", **args)

    def status(self) -> Status:
        return Status.from_wire(self.request("status"))

    def topology(self) -> dict[str, Any]:
        return self.request("topology")

    def objects(self) -> dict[str, Any]:
        return self.request("objects")

    def pending(self) -> list[PendingGroup]:
        return [PendingGroup.from_wire(d) for d in self.request("pending").get("pending", [])]

    def inject(
        self,
        rid: str,
        addr: int,
        perm: int,
        grpid: int,
        *,
        last: bool = True,
        pasid: int | None = None,
    ) -> None:
        args = _with_pasid(
            {"rid": rid, "addr": addr, "perm": int(perm), "grpid": grpid, "last": last}, pasid
        )
        self.request("inject", **args)

    def unplug(
        self, rid: str, *, force: bool = False, grace_s: float = DEFAULT_UNPLUG_GRACE_S
    ) -> bool:
        """Hot-remove a device; blocks until it is removed (up to ``grace_s`` while its
        owner finishes), and returns whether the removal was forced. The wait is bounded
        by the grace period plus a margin, whatever the client's ``timeout``."""
        req_id = self.send("unplug", rid=rid, force=force, grace_s=float(grace_s))
        limit = None if self.timeout is None else max(self.timeout,
                                                      grace_s + UNPLUG_REPLY_SLACK_S)
        return bool(self.wait(req_id, "unplug", timeout=limit).get("forced", False))

    def plug(self, rid: str) -> None:
        self.request("plug", rid=rid)

    def reset(self, rid: str) -> None:
        self.request("reset", rid=rid)

    def subscribe(self, topics: Sequence[str] = ()) -> None:
        """Start (or change) the trace stream; read it with :meth:`next_trace`."""
        self.request("subscribe", topics=list(topics))


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
