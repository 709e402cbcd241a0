"""Every op's client method, declared once for both clients.

A :class:`Calls` method turns typed arguments into a :class:`Call`: the op name, the
wire arguments, and the parser from the reply's ``result`` to the typed value the
method returns. It does no I/O. :class:`~clients.IopfClient` (trio) and
:class:`~clients.sync.SyncClient` (blocking) each turn every :class:`Calls` method into
one of theirs with a small adapter (``async_op``, ``sync_op``), so an op's signature,
its wire arguments and its result handling live here and nowhere else.

:class:`Procedures` are the few client methods that take more than one request, each
depending on the last reply (``page_response_each`` resends what follows a refused
answer): generators that yield a :class:`Call`, are sent its value (or thrown its
:class:`~clients.errors.IopfError`), and return the outcome. Each client drives them
with the same loop, so the partial-``done`` handling is written once too.

The op table itself (argument and result models, admin, errnos) is
:data:`iopfd.protocol.ops.OPS`; ``tests/clients/test_calls.py`` pins that there is
exactly one :class:`Calls` method per op and that both clients expose it.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from clients.errors import IopfError, ProtocolViolation, error_from_reply
from clients.records import (
    Device,
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
from iopfd.protocol import ops as o
from iopfd.protocol.models import PROTOCOL_VERSION, UNPLUG_GRACE_DEFAULT_S
from iopfd.protocol.session import parse_result

R = TypeVar("R")
M = TypeVar("M", bound=o.Result)

#: ``unplug`` waits for the device's owners (up to ``grace_s``); the reply may be late.
DEFAULT_UNPLUG_GRACE_S: Final = UNPLUG_GRACE_DEFAULT_S


@dataclass(frozen=True, slots=True)
class Call(Generic[R]):
    """One request, not sent yet: ``parse`` turns the reply's ``result`` into ``R``
    (``ProtocolViolation`` when the result does not fit the op's result model)."""

    op: str
    args: Mapping[str, Any]
    parse: Callable[[Mapping[str, Any]], R]
    #: How long the daemon may hold the reply by design (``unplug``: its grace period);
    #: a client with a per-call timeout waits at least this long.
    held_s: float = 0.0
    #: For an op whose ok reply passes fds (``OpSpec.fds``: ``fault_fd``): the value
    #: from the result and those fds; it owns the fds (closes them if it fails).
    parse_fds: Callable[[Mapping[str, Any], tuple[int, ...]], R] | None = None

    def value(self, result: Mapping[str, Any], fds: Sequence[int] = ()) -> R:
        """The typed value of an ok reply: its ``result`` and the fds it passed (the
        session hands them over, ``Reply.fds``); fds nobody expects are closed."""
        if self.parse_fds is not None:
            return self.parse_fds(result, tuple(fds))
        close_fds(fds)
        return self.parse(result)


def close_fds(fds: Iterable[int]) -> None:
    """Close fds the daemon passed that nobody will use (never leak one)."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def result_map(op: str, result: Mapping[str, Any]) -> dict[str, Any]:
    """The ``result`` map as the daemon sent it, once it was found to fit the op's
    result model (what ``request()`` and ``submit()`` return)."""
    _checked(op, result)
    return dict(result)


def _checked(op: str, result: Mapping[str, Any]) -> o.Result:
    try:
        return parse_result(op, result)
    except ValueError as exc:
        raise ProtocolViolation("EPROTO", str(exc).removeprefix(f"{op}: "), op) from None


def _call(
    op: str, args: Mapping[str, Any], model: type[M], then: Callable[[M], R], held_s: float = 0.0
) -> Call[R]:
    """A Call whose result is validated by the op table's model (``model`` is that
    model's type, for the parser; a mismatch with the table is a bug, caught here)."""

    def parse(result: Mapping[str, Any]) -> R:
        value = _checked(op, result)
        if not isinstance(value, model):
            raise TypeError(
                f"{op}: the op table's result model is {type(value).__name__}, not {model.__name__}"
            )
        return then(value)

    return Call(op, args, parse, held_s)


def _none(_: o.Result) -> None:
    return None


def _with_pasid(args: dict[str, Any], pasid: int | None) -> dict[str, Any]:
    if pasid is not None:
        args["pasid"] = pasid
    return args


def response_items(
    responses: Iterable[PageResponse | tuple[int, int]],
) -> list[dict[str, int]]:
    """``page_response`` entries on the wire: ``{"cookie", "code"}`` maps."""
    return [
        {"cookie": r.cookie, "code": int(r.code)}
        if isinstance(r, PageResponse)
        else {"cookie": int(r[0]), "code": int(r[1])}
        for r in responses
    ]


def _page_args(offset: int, limit: int | None) -> dict[str, object]:
    args: dict[str, object] = {}
    if offset:
        args["offset"] = offset
    if limit is not None:
        args["limit"] = limit
    return args


class Calls:
    """One method per op of :data:`iopfd.protocol.ops.OPS`, named as the op."""

    # -- session ----------------------------------------------------------------

    def hello(self, client: str) -> Call[HelloInfo]:
        """Open the session (``open``/``connect`` and ``SyncClient()`` send it)."""
        return _call(
            "hello",
            {"version": PROTOCOL_VERSION, "client": client},
            o.HelloResult,
            lambda r: HelloInfo(
                version=r.version,
                server=r.server,
                max_frame=r.max_frame,
                admin=r.admin,
                kernel=r.kernel,
            ),
        )

    # -- VMM operations ---------------------------------------------------------

    def devices(self) -> Call[list[Device]]:
        """Every PCI function of the emulated platform: rid, IOMMU, PRI/ATS/PASID, owner state."""
        return _call(
            "devices", {}, o.DevicesResult, lambda r: [Device.from_wire(d) for d in r.devices]
        )

    def bind(self, rid: str) -> Call[int]:
        """Take exclusive ownership of a device (``"SSSS:BB:DD.F"``); returns its ``dev_id``.

        Raises Busy if another connection holds it, NoDevice if it was removed.
        """
        return _call("bind", {"rid": rid}, o.DevIdResult, lambda r: r.dev_id)

    def unbind(self, dev_id: int) -> Call[None]:
        """Release a device; every PASID of it is detached first (pending groups: INVALID)."""
        return _call("unbind", {"dev_id": dev_id}, o.Empty, _none)

    def ioas_alloc(self) -> Call[int]:
        """Allocate an I/O address space; returns ``ioas_id``."""
        return _call("ioas_alloc", {}, o.IoasIdResult, lambda r: r.ioas_id)

    def ioas_map(
        self, ioas_id: int, iova: int | None, length: int, perm: int = Perm.READ | Perm.WRITE
    ) -> Call[int]:
        """Map ``[iova, iova+length)`` (4 KiB aligned) in an IOAS with READ and/or WRITE;
        with ``iova`` None the daemon picks it. Returns the IOVA mapped."""
        args: dict[str, object] = {"ioas_id": ioas_id, "length": length, "perm": int(perm)}
        if iova is not None:
            args["iova"] = iova
        return _call("ioas_map", args, o.IovaResult, lambda r: r.iova)

    def hw_info(self, dev_id: int) -> Call[dict[str, Any]]:
        """``IOMMU_GET_HW_INFO``: the VT-d CAP/ECAP registers behind a bound device."""
        return _call("hw_info", {"dev_id": dev_id}, o.HwInfoResult, lambda r: r.model_dump())

    def ioas_unmap(self, ioas_id: int, iova: int, length: int) -> Call[int]:
        """Unmap a range; returns the bytes unmapped once every IOTLB/ATC copy was invalidated."""
        return _call(
            "ioas_unmap",
            {"ioas_id": ioas_id, "iova": iova, "length": length},
            o.UnmappedResult,
            lambda r: r.unmapped,
        )

    def fault_alloc(self) -> Call[int]:
        """Allocate a fault queue (``IOMMU_FAULT_QUEUE_ALLOC``); its groups come to this client.

        Read them with ``client.fault_queue(fault_id)`` (``next_fault`` when blocking).
        """
        return _call("fault_alloc", {}, o.FaultIdResult, lambda r: r.fault_id)

    def hwpt_alloc(
        self,
        dev_id: int,
        pt_id: int,
        *,
        flags: Sequence[str] = (),
        fault_id: int | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> Call[int]:
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
        return _call("hwpt_alloc", args, o.HwptIdResult, lambda r: r.hwpt_id)

    def attach(self, dev_id: int, pt_id: int, pasid: int | None = None) -> Call[int]:
        """Attach the device's RID (``pasid=None``) or one PASID to a HWPT, or to an
        IOAS (its automatic domain, found or made); returns the HWPT attached.

        Where something is attached already this is a :meth:`replace` (VFIO's rule). On
        kernel 6.15+ profiles a PASID needs a HWPT allocated with flag ``"pasid"``, and
        then so does the RID's HWPT (InvalidArgument otherwise); a fault-capable HWPT on
        a function without PRI is NoDevice.
        """
        return _call(
            "attach",
            _with_pasid({"dev_id": dev_id, "pt_id": pt_id}, pasid),
            o.HwptIdResult,
            lambda r: r.hwpt_id,
        )

    def replace(self, dev_id: int, pt_id: int, pasid: int | None = None) -> Call[int]:
        """Atomically switch an attached RID/PASID to another HWPT, or an IOAS's automatic
        domain (old one's groups: INVALID); returns the HWPT attached."""
        return _call(
            "replace",
            _with_pasid({"dev_id": dev_id, "pt_id": pt_id}, pasid),
            o.HwptIdResult,
            lambda r: r.hwpt_id,
        )

    def detach(self, dev_id: int, pasid: int | None = None) -> Call[None]:
        """Detach the RID or a PASID; returns after its page requests were drained.
        Nothing attached there is not an error."""
        return _call("detach", _with_pasid({"dev_id": dev_id}, pasid), o.Empty, _none)

    def page_response(
        self, fault_id: int, responses: Iterable[PageResponse | tuple[int, int]]
    ) -> Call[int]:
        """Answer groups of a fault queue, in one request: ``[(cookie, code), ...]``.

        This is the kernel fault fd's ``write()``: entries are applied in order and
        processing stops at the first one that is refused (a cookie not pending in this
        queue, or a code other than SUCCESS/INVALID). Returns how many were applied; the
        entry at that index was refused and the ones after it were not looked at. Raises
        InvalidArgument when the very first entry is refused (nothing applied), and
        NoSuchObject for a fault queue that is not this connection's.
        ``page_response_each`` settles every entry on its own.
        """
        return _page_response(fault_id, response_items(responses))

    def fault_fd(self, fault_id: int) -> Call[socket.socket]:
        """The fault queue's kernel-format fault fd: one end of a ``SOCK_SEQPACKET``
        socketpair, passed with the reply (a Unix socket connection only).

        From now on each group of the queue arrives on it as one packet of 40-byte
        ``struct iommu_hwpt_pgfault`` records instead of on ``fault_queue``; packets of
        8-byte ``struct iommu_hwpt_page_response`` written to it answer them, as the
        kernel fd's ``write()`` does (no reply: check with ``pending``). Closing it
        returns the queue to events; groups read from it stay pending. Read it with
        :mod:`clients.faultfd`. Raises Busy if the queue has an open fault fd,
        NoSuchObject for a queue not of this connection, NotSupported where the
        connection cannot carry fds.
        """
        return Call(
            "fault_fd",
            {"fault_id": fault_id},
            lambda r: _fault_fd_socket(r, ()),
            parse_fds=_fault_fd_socket,
        )

    def dma(
        self, dev_id: int, iova: int, length: int, perm: int, pasid: int | None = None
    ) -> Call[DmaResult]:
        """Make the emulated device access ``[iova, iova+length)``; waits for the outcome.

        On a translation miss the device issues page requests, which arrive on
        the fault queue of the attached HWPT; the reply comes only after they were
        answered (by another task of the same client, or ``on_fault`` when blocking).
        """
        args = _with_pasid(
            {"dev_id": dev_id, "iova": iova, "length": length, "perm": int(perm)}, pasid
        )
        return _call(
            "dma",
            args,
            o.DmaResult,
            lambda r: DmaResult(status=r.status, faults=r.faults, bytes=r.bytes),
        )

    def destroy(self, obj_id: int) -> Call[None]:
        """Destroy an object of this connection (Busy while another object uses it)."""
        return _call("destroy", {"obj_id": obj_id}, o.Empty, _none)

    def device_reset(self, dev_id: int) -> Call[None]:
        """Function-level reset of a device this connection holds (``VFIO_DEVICE_RESET``).

        Attachments and fault queues stay; pending groups stay pending and answerable
        (the function has forgotten them, so their answers change nothing for it).
        """
        return _call("device_reset", {"dev_id": dev_id}, o.Empty, _none)

    def hwpt_s1_map(self, hwpt_id: int, iova: int, length: int, gpa: int, perm: int) -> Call[None]:
        """Write guest stage-1 entries iova -> gpa in a nested HWPT (no invalidation implied)."""
        return _call(
            "hwpt_s1_map",
            {"hwpt_id": hwpt_id, "iova": iova, "length": length, "gpa": gpa, "perm": int(perm)},
            o.Empty,
            _none,
        )

    def hwpt_s1_unmap(self, hwpt_id: int, iova: int, length: int) -> Call[int]:
        """Remove guest stage-1 entries; cached translations stay until hwpt_invalidate."""
        return _call(
            "hwpt_s1_unmap",
            {"hwpt_id": hwpt_id, "iova": iova, "length": length},
            o.UnmappedResult,
            lambda r: r.unmapped,
        )

    def hwpt_invalidate(
        self, hwpt_id: int, iova: int | None = None, length: int | None = None
    ) -> Call[None]:
        """The guest's stage-1 invalidation: a range, or everything when both are None."""
        if (iova is None) != (length is None):
            raise ValueError("hwpt_invalidate takes iova and length together, or neither")
        args: dict[str, Any] = {"hwpt_id": hwpt_id}
        if iova is not None and length is not None:
            args["iova"], args["length"] = iova, length
        return _call("hwpt_invalidate", args, o.Empty, _none)

    def ioas_iova_ranges(self, ioas_id: int) -> Call[tuple[list[tuple[int, int]], int]]:
        """``IOMMU_IOAS_IOVA_RANGES``: the ``[start, last]`` ranges an IOAS can map, and
        the IOVA alignment."""
        return _call(
            "ioas_iova_ranges",
            {"ioas_id": ioas_id},
            o.IovaRangesResult,
            lambda r: ([(x.start, x.last) for x in r.ranges], r.iova_alignment),
        )

    def ioas_allow_iovas(self, ioas_id: int, ranges: Iterable[tuple[int, int]]) -> Call[None]:
        """``IOMMU_IOAS_ALLOW_IOVAS``: daemon-chosen IOVAs come from these ``[start,
        last]`` ranges (replacing the previous list; empty: anywhere). Busy when one
        overlaps a reserved range."""
        items = [{"start": a, "last": b} for a, b in ranges]
        return _call("ioas_allow_iovas", {"ioas_id": ioas_id, "ranges": items}, o.Empty, _none)

    def ioas_copy(  # noqa: PLR0917 - the fields of struct iommu_ioas_copy
        self,
        src_ioas_id: int,
        src_iova: int,
        dst_ioas_id: int,
        dst_iova: int | None,
        length: int,
        perm: int = Perm.READ | Perm.WRITE,
    ) -> Call[int]:
        """``IOMMU_IOAS_COPY``: map what ``[src_iova, +length)`` maps (without a gap) in
        another IOAS, at ``dst_iova`` or one the daemon picks; returns the IOVA."""
        args: dict[str, object] = {
            "src_ioas_id": src_ioas_id,
            "src_iova": src_iova,
            "dst_ioas_id": dst_ioas_id,
            "length": length,
            "perm": int(perm),
        }
        if dst_iova is not None:
            args["dst_iova"] = dst_iova
        return _call("ioas_copy", args, o.IovaResult, lambda r: r.iova)

    def ioas_map_file(
        self,
        ioas_id: int,
        iova: int | None,
        start: int,
        length: int,
        perm: int = Perm.READ | Perm.WRITE,
    ) -> Call[int]:
        """``IOMMU_IOAS_MAP_FILE``: map ``length`` bytes of a file from offset ``start``
        (nothing is read: the emulation has no memory); returns the IOVA."""
        args: dict[str, object] = {
            "ioas_id": ioas_id,
            "start": start,
            "length": length,
            "perm": int(perm),
        }
        if iova is not None:
            args["iova"] = iova
        return _call("ioas_map_file", args, o.IovaResult, lambda r: r.iova)

    def option(
        self, option: str, object_id: int | None = None, val64: int | None = None
    ) -> Call[int | None]:
        """``IOMMU_OPTION``: ``"rlimit_mode"`` or ``"huge_pages"`` (``object_id`` the
        IOAS); with ``val64`` None a get (returns the value), else a set (returns None)."""
        args: dict[str, object] = {"option": option, "action": "get" if val64 is None else "set"}
        if object_id is not None:
            args["object_id"] = object_id
        if val64 is not None:
            args["val64"] = val64
        return _call("option", args, o.OptionResult, lambda r: r.val64)

    # -- admin operations -------------------------------------------------------

    def status(self) -> Call[Status]:
        """Daemon version, uptime, clients and counters (admin)."""
        return _call(
            "status",
            {},
            o.StatusResult,
            lambda r: Status(
                version=str(r.version),
                uptime_s=r.uptime_s,
                clients=r.clients,
                counters=dict(r.counters),
                extra=dict(r.model_extra or {}),
                kernel=r.kernel,
            ),
        )

    def topology(self) -> Call[dict[str, Any]]:
        """IOMMU units and devices with owner and state (admin)."""
        return _call("topology", {}, o.TopologyResult, lambda r: r.model_dump())

    def objects(self, offset: int = 0, limit: int | None = None) -> Call[dict[str, Any]]:
        """Every connection's objects (admin); a page of them with ``limit`` (the result's
        ``next`` is the following page's offset, or None)."""
        return _call(
            "objects", _page_args(offset, limit), o.ObjectsResult, lambda r: r.model_dump()
        )

    def pending(self, offset: int = 0, limit: int | None = None) -> Call[list[PendingGroup]]:
        """Every unanswered group of every connection (admin); rows ``[offset, offset +
        limit)`` with ``limit``."""
        return _call(
            "pending",
            _page_args(offset, limit),
            o.PendingResult,
            lambda r: [PendingGroup.from_wire(d) for d in r.pending],
        )

    def inject(
        self,
        rid: str,
        addr: int,
        perm: int,
        grpid: int,
        *,
        last: bool = True,
        pasid: int | None = None,
    ) -> Call[None]:
        """Write one raw page request descriptor into the device's IOMMU PRQ (admin)."""
        args = _with_pasid(
            {"rid": rid, "addr": addr, "perm": int(perm), "grpid": grpid, "last": last}, pasid
        )
        return _call("inject", args, o.Empty, _none)

    def unplug(
        self, rid: str, *, force: bool = False, grace_s: float = DEFAULT_UNPLUG_GRACE_S
    ) -> Call[bool]:
        """Hot-remove a device (admin); returns once it is removed.

        A bound device's owner first gets a ``device_request`` event and may unbind it;
        after ``grace_s`` seconds, or at once with ``force``, the daemon removes it
        anyway (PRI off, drain, stop DMA, release; pending groups answered INVALID).
        Returns whether the removal was forced on an owner that still held it.
        """
        return _call(
            "unplug",
            {"rid": rid, "force": force, "grace_s": float(grace_s)},
            o.UnplugResult,
            lambda r: r.forced,
            held_s=float(grace_s),
        )

    def plug(self, rid: str) -> Call[None]:
        """Bring a removed device back as free (admin)."""
        return _call("plug", {"rid": rid}, o.Empty, _none)

    def reset(self, rid: str) -> Call[None]:
        """Function-level reset of any device (admin): what ``device_reset`` does for an
        owner; clears a PRI Response Failure."""
        return _call("reset", {"rid": rid}, o.Empty, _none)

    def subscribe(self, topics: Sequence[str] = ()) -> Call[list[str]]:
        """Start (or change) the trace stream (admin). Topics: fault, response,
        auto_response, invalidation, throttle, overflow, device; empty means all."""
        return _call(
            "subscribe", {"topics": list(topics)}, o.SubscribeResult, lambda r: list(r.topics)
        )


def _fault_fd_socket(result: Mapping[str, Any], fds: tuple[int, ...]) -> socket.socket:
    """``fault_fd``'s value: the one fd the reply passed, as a socket."""
    if len(fds) != 1:
        close_fds(fds)
        raise ProtocolViolation("EPROTO", f"the reply passed {len(fds)} fds, not 1", "fault_fd")
    try:
        _checked("fault_fd", result)
        return socket.socket(fileno=fds[0])
    except BaseException:
        close_fds(fds)
        raise


def _page_response(fault_id: int, items: list[dict[str, int]]) -> Call[int]:
    return _call(
        "page_response", {"fault_id": fault_id, "responses": items}, o.DoneResult, lambda r: r.done
    )


#: The one instance the adapters call (a Calls holds no state).
CALLS: Final = Calls()

#: A client method that takes several requests: yields each Call, is sent its value
#: (or thrown its IopfError) and returns the outcome.
Procedure = Generator[Call[Any], Any, R]


class Procedures:
    """The client methods built from several requests, for both clients."""

    def page_response_each(
        self,
        fault_id: int,
        responses: Iterable[PageResponse | tuple[int, int]],
    ) -> Procedure[list[str | None]]:
        """Answer groups of one fault queue so that each entry gets its own outcome.

        Returns one slot per entry: None if applied, else the errno name (``"EINVAL"``
        for the entry the daemon refused). After a refused entry, the entries behind it
        are sent again in a new request, so one bad cookie never leaves the others
        unanswered. One request when all are good. A whole-queue error (``ENOENT``)
        fills every remaining slot.
        """
        items = response_items(responses)
        results: list[str | None] = []
        while len(results) < len(items):
            rest = items[len(results) :]
            try:
                done: int = yield _page_response(fault_id, rest)
            except IopfError as e:
                if e.errno != "EINVAL":
                    results += [e.errno] * len(rest)
                    break
                done = 0  # the first entry was refused, nothing applied
            settled, _ = partial_outcomes(len(rest), done)
            results += settled
        return results

    def answer(self, group: FaultGroup, code: int = ResponseCode.SUCCESS) -> Procedure[None]:
        """Answer one group; raises InvalidArgument if its cookie is no longer pending
        (already answered, or answered by the daemon) or the code is not 0 or 1."""
        try:
            yield _page_response(group.fault_id, [{"cookie": group.cookie, "code": int(code)}])
        except IopfError as e:
            raise error_from_reply(
                e.errno, f"cookie {group.cookie}: {e.message}", "page_response"
            ) from None

    def answer_all(
        self,
        answers: Iterable[tuple[FaultGroup, int]],
    ) -> Procedure[list[str | None]]:
        """Answer many groups: one ``page_response`` per fault queue (more only after a
        refused entry, see ``page_response_each``); one outcome per answer, in input
        order: None if applied, else the errno name."""
        pairs = list(answers)
        by_queue: dict[int, list[int]] = {}
        for i, (g, _) in enumerate(pairs):
            by_queue.setdefault(g.fault_id, []).append(i)
        results: list[str | None] = [None] * len(pairs)
        for fault_id, idxs in by_queue.items():
            res = yield from self.page_response_each(
                fault_id, [(pairs[i][0].cookie, int(pairs[i][1])) for i in idxs]
            )
            for i, x in zip(idxs, res, strict=True):
                results[i] = x
        return results


PROCEDURES: Final = Procedures()


def op_names(cls: type[Calls] = Calls) -> set[str]:
    """The ops :class:`Calls` has a method for."""
    return {name for name in vars(cls) if not name.startswith("_")}


__all__ = [
    "CALLS",
    "DEFAULT_UNPLUG_GRACE_S",
    "PROCEDURES",
    "Call",
    "Calls",
    "Procedure",
    "Procedures",
    "close_fds",
    "op_names",
    "response_items",
    "result_map",
]
