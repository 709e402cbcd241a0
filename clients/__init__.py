"""Clients of iopfd: the trio library, a blocking wrapper, and the reference VMM.

``from clients import IopfClient`` for trio code, ``from clients.sync import
SyncClient`` for scripts and notebooks: both are I/O loops around the sans-IO
``iopfd.protocol.session.ClientSession``, with each op's method declared once in
``clients.calls``. ``iopf-vmm`` (``clients.vmm``) is a complete demand-paging VMM
built on the library. See docs/clients.md.
"""

from clients.calls import Call, Calls
from clients.client import DEFAULT_SOCKET, IopfClient, PendingCall, resolve_socket_path
from clients.errors import (
    Busy,
    ConnectionLost,
    EventGap,
    InvalidArgument,
    IopfError,
    NoDevice,
    NoSpace,
    NoSuchObject,
    NotPermitted,
    NotSupported,
    ProtocolViolation,
    VersionMismatch,
)
from clients.queues import DeviceRequestStream, FaultQueue, TraceStream
from clients.records import (
    PAGE_SIZE,
    ClientStats,
    Device,
    DeviceRequest,
    DmaResult,
    DmaStatus,
    FaultGroup,
    FaultRecord,
    HelloInfo,
    PageResponse,
    PendingGroup,
    Perm,
    ResponseCode,
    Status,
    TraceRecord,
)

__all__ = [
    "DEFAULT_SOCKET",
    "PAGE_SIZE",
    "Busy",
    "Call",
    "Calls",
    "ClientStats",
    "ConnectionLost",
    "Device",
    "DeviceRequest",
    "DeviceRequestStream",
    "DmaResult",
    "DmaStatus",
    "EventGap",
    "FaultGroup",
    "FaultQueue",
    "FaultRecord",
    "HelloInfo",
    "InvalidArgument",
    "IopfClient",
    "IopfError",
    "NoDevice",
    "NoSpace",
    "NoSuchObject",
    "NotPermitted",
    "NotSupported",
    "PageResponse",
    "PendingCall",
    "PendingGroup",
    "Perm",
    "ProtocolViolation",
    "ResponseCode",
    "Status",
    "TraceRecord",
    "TraceStream",
    "VersionMismatch",
    "resolve_socket_path",
]
