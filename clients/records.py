"""Values exchanged with iopfd, as small typed records.

Field names follow the Linux iommufd uAPI (``struct iommu_hwpt_pgfault``,
``struct iommu_hwpt_page_response``) so that code written against the
kernel's fault fd reads the same here.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from iopfd.protocol.models import PAGE_SIZE as _PAGE_SIZE
from iopfd.protocol.session import Event

PAGE_SIZE: Final = _PAGE_SIZE
PAGE_SHIFT: Final = 12


class Perm(enum.IntFlag):
    """Access permissions, the uAPI bit values (``IOMMU_PGFAULT_PERM_*``)."""

    READ = 1
    WRITE = 2
    EXEC = 4
    PRIV = 8


class ResponseCode(enum.IntEnum):
    """Page response codes (``enum iommufd_page_response_code``)."""

    SUCCESS = 0
    INVALID = 1


class DmaStatus(enum.StrEnum):
    """How an emulated DMA ended (the ``status`` of a ``dma`` reply)."""

    OK = "ok"
    INVALID = "invalid"  # a group of this transfer was answered INVALID
    FAILURE = "failure"  # PRI stopped by a Response Failure
    NO_PRI = "no_pri"  # a translation miss on a device without PRI, or with PRI off
    RETRY_LIMIT = "retry_limit"  # answered SUCCESS but the translation never appeared
    REMOVED = "removed"  # the device was hot-unplugged meanwhile


FLAG_PASID_VALID = 1
FLAG_LAST_PAGE = 2
#: ``IOMMU_FAULT_PAGE_RESPONSE_NEEDS_PASID``: set with PASID_VALID on every record of a
#: request that had a PASID (VT-d sets it, iommufd copies flags raw): 5 partial, 7 last.
FLAG_NEEDS_PASID = 4


@dataclass(frozen=True, slots=True)
class FaultRecord:
    """One page request of a group (``struct iommu_hwpt_pgfault``)."""

    flags: int
    dev_id: int
    pasid: int
    grpid: int
    perm: Perm
    addr: int
    length: int

    @property
    def pasid_valid(self) -> bool:
        return bool(self.flags & FLAG_PASID_VALID)

    @property
    def last_page(self) -> bool:
        return bool(self.flags & FLAG_LAST_PAGE)

    @property
    def needs_pasid(self) -> bool:
        """The response must carry the PASID (set on every PASID request)."""
        return bool(self.flags & FLAG_NEEDS_PASID)

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> FaultRecord:
        return cls(
            flags=int(d["flags"]),
            dev_id=int(d["dev_id"]),
            pasid=int(d["pasid"]),
            grpid=int(d["grpid"]),
            perm=Perm(int(d["perm"])),
            addr=int(d["addr"]),
            length=int(d.get("length", 0)),
        )


@dataclass(frozen=True, slots=True)
class FaultGroup:
    """A page request group delivered on a fault queue, waiting for one answer.

    Answer it exactly once with ``page_response`` (or ``client.answer(group,
    code)``), quoting ``cookie``. Records are in arrival order, the one with
    ``last_page`` set is last. ``throttled`` counts the groups the daemon
    answered SUCCESS on its own since the previous event because this queue
    was full (the device retries them later). ``received_ns`` is the client's
    ``time.monotonic_ns()`` when the event was read off the socket.
    """

    fault_id: int
    cookie: int
    records: tuple[FaultRecord, ...]
    throttled: int = 0
    seq: int = 0
    received_ns: int = 0

    @property
    def dev_id(self) -> int:
        return self.records[0].dev_id

    @property
    def pasid(self) -> int | None:
        """The PASID of the group, or None for a request without PASID (the RID)."""
        first = self.records[0]
        return first.pasid if first.pasid_valid else None

    @property
    def grpid(self) -> int:
        return self.records[0].grpid

    @property
    def addresses(self) -> list[int]:
        """The page addresses requested, in arrival order."""
        return [r.addr for r in self.records]

    @classmethod
    def from_event(cls, ev: Event, received_ns: int) -> FaultGroup:
        body = ev.body
        return cls(
            fault_id=int(body["fault_id"]),
            cookie=int(body["cookie"]),
            records=tuple(FaultRecord.from_wire(r) for r in body["faults"]),
            throttled=int(body.get("throttled", 0)),
            seq=ev.seq,
            received_ns=received_ns,
        )


@dataclass(frozen=True, slots=True)
class PageResponse:
    """One answer for ``page_response``: the group's cookie and a ResponseCode."""

    cookie: int
    code: int = ResponseCode.SUCCESS


#: The errno of an entry that ``page_response`` refused: processing stopped there.
REFUSED = "EINVAL"


def partial_outcomes(sent: int, done: int) -> tuple[list[str | None], int]:
    """What one ``page_response`` of ``sent`` entries that applied ``done`` settled.

    The request is the fault fd's ``write()``: entries ``[0, done)`` were applied, the
    entry at ``done`` (if any) was refused (``EINVAL``: an unknown or answered cookie, or
    a bad code), and the entries after it were not looked at. Returns the outcomes of
    the entries settled (``None`` for applied) and how many that is; the caller sends
    the rest again. A reply of ``done == 0`` for a non-empty request (what an ``EINVAL``
    for the whole request means too) refuses the first entry, so every round settles
    at least one entry.
    """
    if sent <= 0:
        return [], 0
    done = max(0, min(done, sent))
    if done == sent:
        return [None] * done, done
    return [*([None] * done), REFUSED], done + 1


@dataclass(frozen=True, slots=True)
class DmaResult:
    """The outcome of an emulated DMA: status, page requests issued, bytes accessed."""

    status: str
    faults: int
    bytes: int

    @property
    def ok(self) -> bool:
        return self.status == DmaStatus.OK


@dataclass(frozen=True, slots=True)
class HelloInfo:
    """What the daemon said in ``hello``; ``kernel`` is the profile it plays."""

    version: int
    server: str
    max_frame: int
    admin: bool
    kernel: str = ""

    @classmethod
    def from_wire(cls, d: Mapping[str, Any], default_max_frame: int) -> HelloInfo:
        return cls(
            version=int(d["version"]),
            server=str(d.get("server", "")),
            max_frame=int(d.get("max_frame", default_max_frame)),
            admin=bool(d.get("admin", False)),
            kernel=str(d.get("kernel", "")),
        )

    @property
    def kernel_version(self) -> tuple[int, ...]:
        """``kernel`` as numbers, e.g. (6, 12); an unknown one counts as the newest."""
        try:
            return tuple(int(x) for x in self.kernel.split("."))
        except ValueError:
            return (1 << 16,)

    @property
    def pasid_attach(self) -> bool:
        """Whether PASIDs can be attached (``VFIO_DEVICE_ATTACH_PASID``, 6.15+; before,
        ``attach`` with a ``pasid`` is EINVAL). Where they can, a HWPT attached at a PASID
        needs ``hwpt_alloc`` flag ``pasid`` (IOMMU_HWPT_ALLOC_PASID), and so does the
        RID's HWPT next to it; before 6.15 that flag is EOPNOTSUPP."""
        return self.kernel_version >= (6, 15)

    @property
    def paging_fault_hwpt(self) -> bool:
        """Whether a paging HWPT (``pt_id`` an IOAS) may be fault-capable (6.13+); before,
        only a nested HWPT may."""
        return self.kernel_version >= (6, 13)


@dataclass(frozen=True, slots=True)
class DeviceRequest:
    """A ``device_request`` event: an admin is hot-unplugging a device this connection
    holds (vfio-pci's REQ interrupt). Finish, answer the device's pending groups, and
    ``unbind`` it; until then the daemon waits (up to the unplug's grace period)."""

    dev_id: int
    rid: str
    seq: int = 0
    received_ns: int = 0

    @classmethod
    def from_event(cls, ev: Event, received_ns: int) -> DeviceRequest:
        return cls(
            dev_id=int(ev.body["dev_id"]),
            rid=str(ev.body["rid"]),
            seq=ev.seq,
            received_ns=received_ns,
        )


@dataclass(frozen=True, slots=True)
class Device:
    """A row of ``devices``; ``extra`` holds any additional keys the daemon sends."""

    rid: str
    iommu: str
    pri: bool
    ats: bool
    pasid_bits: int
    pf: str | None
    state: str
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_vf(self) -> bool:
        return self.pf is not None

    @property
    def pasid(self) -> bool:
        return self.pasid_bits > 0

    _KEYS = ("rid", "iommu", "pri", "ats", "pasid_bits", "pf", "state")

    @property
    def removing(self) -> bool:
        """An ``unplug`` is waiting for this device's owner to release it."""
        return bool(self.extra.get("removing", False))

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> Device:
        return cls(
            rid=str(d["rid"]),
            iommu=str(d["iommu"]),
            pri=bool(d["pri"]),
            ats=bool(d["ats"]),
            pasid_bits=int(d["pasid_bits"]),
            pf=None if d.get("pf") is None else str(d["pf"]),
            state=str(d["state"]),
            extra={k: v for k, v in d.items() if k not in cls._KEYS},
        )


@dataclass(frozen=True, slots=True)
class Status:
    """The result of the admin op ``status``."""

    version: str
    uptime_s: float
    clients: int
    counters: Mapping[str, int]
    extra: Mapping[str, Any] = field(default_factory=dict)
    kernel: str = ""

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> Status:
        known = ("version", "uptime_s", "clients", "counters", "kernel")
        return cls(
            kernel=str(d.get("kernel", "")),
            version=str(d["version"]),
            uptime_s=float(d["uptime_s"]),
            clients=int(d["clients"]),
            counters={str(k): int(v) for k, v in d["counters"].items()},
            extra={k: v for k, v in d.items() if k not in known},
        )


@dataclass(frozen=True, slots=True)
class TraceRecord:
    """One record of the ``subscribe`` stream.

    ``lost`` counts records dropped before this one, by the daemon (a slow
    subscriber) plus by this client (a reader that fell behind its buffer).
    ``fields`` holds the topic-specific keys (rid, cookie, code, ...).
    """

    seq: int
    topic: str
    t: float
    fields: Mapping[str, Any]
    lost: int = 0

    @classmethod
    def from_event(cls, ev: Event, client_lost: int = 0) -> TraceRecord:
        body = ev.body
        skip = ("topic", "t", "lost")
        return cls(
            seq=ev.seq,
            topic=str(body.get("topic", "")),
            t=float(body.get("t", 0.0)),
            fields={k: v for k, v in body.items() if k not in skip},
            lost=int(body.get("lost", 0)) + client_lost,
        )


@dataclass(frozen=True, slots=True)
class PendingGroup:
    """A row of the admin op ``pending``: an unanswered group, any connection's."""

    fault_id: int
    cookie: int
    rid: str
    pasid: int | None
    age_s: float
    extra: Mapping[str, Any]

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> PendingGroup:
        known = ("fault_id", "cookie", "rid", "pasid", "age_s")
        pasid = d.get("pasid")
        return cls(
            fault_id=int(d["fault_id"]),
            cookie=int(d["cookie"]),
            rid=str(d["rid"]),
            pasid=None if pasid is None else int(pasid),
            age_s=float(d.get("age_s", 0.0)),
            extra={k: v for k, v in d.items() if k not in known},
        )


@dataclass(frozen=True, slots=True)
class ClientStats:
    """Counters of one connection, as this client saw it."""

    requests: int
    replies: int
    events: int
    writes: int  # send_all calls: fewer than requests when writes were coalesced
    seq_gaps: int
    missed_events: int
    late_replies: int  # replies nobody waited for: to cancelled or timed-out calls
    in_flight: int
