"""The op table: every op of wire protocol v2, declared once.

Each ``OpSpec`` says what an op is on the wire: its argument model (validated by the
server session), its result model (validated by the client session), whether it is
an admin op, whether its reply may come after later replies (``deferred``), and the
errno names it may answer with (docs/protocol.md, *Errnos per op*). The daemon maps
each name to its handler and the client libraries to one typed method; nothing else
declares an op.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field

from iopfd.protocol import models as m
from iopfd.protocol.errors import (
    EBUSY,
    EINVAL,
    ENODEV,
    ENOENT,
    ENOSPC,
    EOPNOTSUPP,
    EPERM,
    EPROTONOSUPPORT,
)

U32 = Annotated[int, Field(ge=0, le=m.U32_MAX)]
U64 = Annotated[int, Field(ge=0, le=m.U64_MAX)]


class Result(BaseModel):
    """Base of every op's result. Unknown keys are kept: a version may add result keys,
    and a client must not fail on them (PROTOCOL.md, *Versioning*)."""

    model_config = ConfigDict(extra="allow", frozen=True)


class Empty(Result):
    pass


class HelloResult(Result):
    version: int
    server: str
    max_frame: int
    admin: bool
    kernel: str


class DevicesResult(Result):
    devices: list[dict[str, Any]]


class DevIdResult(Result):
    dev_id: U32


class IoasIdResult(Result):
    ioas_id: U32


class IovaResult(Result):
    iova: U64


class HwInfoResult(Result):
    type: str
    flags: int
    cap_reg: U64
    ecap_reg: U64


class UnmappedResult(Result):
    unmapped: int


class FaultIdResult(Result):
    fault_id: U32


class HwptIdResult(Result):
    hwpt_id: U32


class IovaRangeResult(Result):
    start: U64
    last: U64


class IovaRangesResult(Result):
    ranges: list[IovaRangeResult]
    iova_alignment: U64


class OptionResult(Result):
    """``val64`` for ``get``; a ``set`` answers ``{}``."""

    val64: U64 | None = None


class DoneResult(Result):
    done: int


class DmaResult(Result):
    status: str
    faults: int
    bytes: int


class StatusResult(Result):
    version: int
    uptime_s: float
    clients: int
    counters: dict[str, int]
    kernel: str


class TopologyResult(Result):
    iommus: list[dict[str, Any]]
    devices: list[dict[str, Any]]


class ObjectsResult(Result):
    objects: list[dict[str, Any]]
    total: int = 0
    next: int | None = None


class PendingResult(Result):
    pending: list[dict[str, Any]]
    total: int = 0
    next: int | None = None


class UnplugResult(Result):
    forced: bool


class SubscribeResult(Result):
    topics: list[str]


@dataclass(frozen=True, slots=True)
class OpSpec:
    name: str
    args: type[m.Args]
    result: type[Result]
    summary: str
    errnos: frozenset[str]
    admin: bool = False
    #: The reply waits for the hardware (``dma``) or for other clients (``unplug``).
    deferred: bool = False
    #: How many fds an ok reply carries (SCM_RIGHTS, in the sendmsg of its frame).
    fds: int = 0


#: Every request may also be refused as malformed (EINVAL) or, past the session's
#: limits, ENOSPC; EPROTO closes the connection and is the session's, never an op's.
_ANY: Final = frozenset({EINVAL})
_DEV: Final = _ANY | {ENOENT, ENODEV}


def _op(
    name: str,
    args: type[m.Args],
    result: type[Result],
    summary: str,
    errnos: frozenset[str] | set[str],
    *,
    admin: bool = False,
    deferred: bool = False,
    fds: int = 0,
) -> OpSpec:
    return OpSpec(
        name,
        args,
        result,
        summary,
        _ANY | frozenset(errnos) | ({EPERM} if admin else set()),
        admin,
        deferred,
        fds,
    )


#: The table, in docs/protocol.md's order.
OPS: Final[Mapping[str, OpSpec]] = {
    spec.name: spec
    for spec in (
        _op("hello", m.HelloArgs, HelloResult, "open the session (version 2)", {EPROTONOSUPPORT}),
        _op("devices", m.NoArgs, DevicesResult, "the PCI functions and their state", set()),
        _op(
            "bind",
            m.BindArgs,
            DevIdResult,
            "take a device (VFIO_DEVICE_BIND_IOMMUFD)",
            {ENOENT, ENODEV, EBUSY, ENOSPC},
        ),
        _op("unbind", m.DevIdArgs, Empty, "release a device, detaching everything", {ENOENT}),
        _op("ioas_alloc", m.NoArgs, IoasIdResult, "a new I/O address space", {ENOSPC}),
        _op(
            "ioas_map",
            m.IoasMapArgs,
            IovaResult,
            "map a range of an IOAS, at iova or where the daemon picks",
            {ENOENT, EBUSY, ENOSPC},
        ),
        _op(
            "ioas_unmap",
            m.IoasUnmapArgs,
            UnmappedResult,
            "unmap a range; returns once every cache of it was invalidated",
            {ENOENT},
        ),
        _op(
            "hw_info",
            m.DevIdArgs,
            HwInfoResult,
            "what the IOMMU behind a device can do (IOMMU_GET_HW_INFO)",
            {ENOENT, ENODEV},
        ),
        _op(
            "fault_alloc",
            m.NoArgs,
            FaultIdResult,
            "a new fault queue (IOMMU_FAULT_QUEUE_ALLOC)",
            {ENOSPC},
        ),
        _op(
            "hwpt_alloc",
            m.HwptAllocArgs,
            HwptIdResult,
            "a paging or nested HWPT, fault-capable with fault_id",
            {ENOENT, ENODEV, EOPNOTSUPP, ENOSPC},
        ),
        _op(
            "attach",
            m.AttachArgs,
            HwptIdResult,
            "attach a RID/PASID to a HWPT or an IOAS's automatic domain; where attached, a replace",
            {ENOENT, ENODEV, EOPNOTSUPP, EBUSY, ENOSPC},
        ),
        _op(
            "replace",
            m.AttachArgs,
            HwptIdResult,
            "switch an attached RID or PASID to another HWPT (or an IOAS's automatic domain)",
            {ENOENT, ENODEV, EOPNOTSUPP, EBUSY, ENOSPC},
        ),
        _op(
            "detach",
            m.DetachArgs,
            Empty,
            "detach a RID or PASID; returns once drained",
            {ENOENT, ENODEV, EOPNOTSUPP},
        ),
        _op(
            "page_response",
            m.PageResponseArgs,
            DoneResult,
            "answer groups by cookie, in order, up to the first bad entry",
            {ENOENT},
        ),
        _op(
            "fault_fd",
            m.FaultFdArgs,
            Empty,
            "the fault queue's groups as kernel records on an fd passed with the reply",
            {ENOENT, EBUSY, EOPNOTSUPP},
            fds=1,
        ),
        _op(
            "dma",
            m.DmaArgs,
            DmaResult,
            "the device performs DMA; replies when it ends",
            _DEV | {EOPNOTSUPP, ENOSPC},
            deferred=True,
        ),
        _op("destroy", m.DestroyArgs, Empty, "destroy an object (IOMMU_DESTROY)", {ENOENT, EBUSY}),
        _op(
            "device_reset",
            m.DevIdArgs,
            Empty,
            "function-level reset (VFIO_DEVICE_RESET)",
            _DEV - {EINVAL},
        ),
        _op(
            "hwpt_s1_map",
            m.HwptS1MapArgs,
            Empty,
            "write a nested HWPT's stage-1 entries",
            {ENOENT, ENOSPC},
        ),
        _op(
            "hwpt_s1_unmap",
            m.HwptS1UnmapArgs,
            UnmappedResult,
            "remove a nested HWPT's stage-1 entries",
            {ENOENT},
        ),
        _op(
            "hwpt_invalidate",
            m.HwptInvalidateArgs,
            Empty,
            "the guest's stage-1 invalidation (IOMMU_HWPT_INVALIDATE)",
            {ENOENT},
        ),
        _op(
            "ioas_iova_ranges",
            m.IoasIdArgs,
            IovaRangesResult,
            "the IOVA ranges an IOAS can map (IOMMU_IOAS_IOVA_RANGES)",
            {ENOENT},
        ),
        _op(
            "ioas_allow_iovas",
            m.IoasAllowIovasArgs,
            Empty,
            "the ranges daemon-chosen IOVAs come from (IOMMU_IOAS_ALLOW_IOVAS)",
            {ENOENT, EBUSY},
        ),
        _op(
            "ioas_copy",
            m.IoasCopyArgs,
            IovaResult,
            "map a mapped range of one IOAS into another (IOMMU_IOAS_COPY)",
            {ENOENT, EBUSY, ENOSPC},
        ),
        _op(
            "ioas_map_file",
            m.IoasMapFileArgs,
            IovaResult,
            "map a file range, e.g. memfd guest RAM (IOMMU_IOAS_MAP_FILE)",
            {ENOENT, EBUSY, ENOSPC},
        ),
        _op(
            "option",
            m.OptionArgs,
            OptionResult,
            "get or set rlimit_mode or an IOAS's huge_pages (IOMMU_OPTION)",
            {ENOENT, EBUSY, EPERM, EOPNOTSUPP},
        ),
        _op(
            "status",
            m.NoArgs,
            StatusResult,
            "counters and the exactly-once identity",
            set(),
            admin=True,
        ),
        _op(
            "topology",
            m.NoArgs,
            TopologyResult,
            "IOMMU units and devices with owners",
            set(),
            admin=True,
        ),
        _op("objects", m.NoArgs, ObjectsResult, "every connection's objects", {ENOSPC}, admin=True),
        _op("pending", m.NoArgs, PendingResult, "every unanswered group", {ENOSPC}, admin=True),
        _op(
            "inject",
            m.InjectArgs,
            Empty,
            "write a raw page request descriptor",
            {ENOENT, ENODEV},
            admin=True,
        ),
        _op(
            "unplug",
            m.UnplugArgs,
            UnplugResult,
            "hot-remove a device, asking its owner first; replies when removed",
            {ENOENT, EBUSY},
            admin=True,
            deferred=True,
        ),
        _op("plug", m.RidArgs, Empty, "bring a removed device back", {ENOENT}, admin=True),
        _op(
            "reset",
            m.RidArgs,
            Empty,
            "function-level reset of any device",
            {ENOENT, ENODEV},
            admin=True,
        ),
        _op(
            "subscribe", m.SubscribeArgs, SubscribeResult, "stream trace records", set(), admin=True
        ),
    )
}


__all__ = ["OPS", "OpSpec", "Result"]
