"""Argument models of every protocol v2 op, validated at the daemon's boundary.

One pydantic v2 model per op: ``extra="forbid"`` (unknown keys are ``EINVAL``),
strict types (``true`` is not an int, ``1.0`` is not an int), and the integer ranges
of docs/protocol.md's clarifications (uint32 IDs, cookies, pasid, grpid, perm, length;
uint64 addresses). :func:`validate_request` maps every failure to a
:class:`~iopfd.protocol.errors.RequestError` with the errno name the protocol wants.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from iopfd.protocol.errors import EINVAL, EPROTO, RequestError
from iopfd.protocol.rid import canonical_rid

U32_MAX: Final = (1 << 32) - 1
U64_MAX: Final = (1 << 64) - 1
PAGE_SIZE: Final = 4096
PROTOCOL_VERSION: Final = 2
#: Version 2 only: v2 changed what ``page_response`` and ``destroy`` mean, so a v1 client
#: would misread the replies (PROTOCOL.md, *Version 2*: a daemon may refuse version 1).
SUPPORTED_VERSIONS: Final = (PROTOCOL_VERSION,)
#: Bounds of ``unplug``'s ``grace_s``: long enough for any VMM to finish, short enough
#: that an admin who typed a wrong number is not left waiting for hours.
UNPLUG_GRACE_MAX_S: Final = 3600.0
UNPLUG_GRACE_DEFAULT_S: Final = 10.0

PERM_READ: Final = 1
PERM_WRITE: Final = 2
PERM_EXEC: Final = 4
PERM_PRIV: Final = 8
PERM_ALL: Final = PERM_READ | PERM_WRITE | PERM_EXEC | PERM_PRIV
#: Page-request group index: 9 bits in the descriptor (vtd-hw.md 2.1).
PRG_INDEX_MAX: Final = (1 << 9) - 1
#: PASID width of the page request descriptor.
PASID_MAX: Final = (1 << 20) - 1

U32 = Annotated[int, Field(ge=0, le=U32_MAX)]
U64 = Annotated[int, Field(ge=0, le=U64_MAX)]
#: An explicit PASID: 0 is RID_PASID (IOMMU_NO_PASID) and never valid on the wire.
Pasid = Annotated[int, Field(ge=1, le=U32_MAX)]
Perm = Annotated[int, Field(ge=1, le=PERM_ALL)]
MapPerm = Annotated[int, Field(ge=1, le=PERM_READ | PERM_WRITE)]
#: A requester ID, ``SSSS:BB:DD.F`` or ``BB:DD.F``, passed on in the canonical spelling.
RidStr = Annotated[str, Field(max_length=64), AfterValidator(canonical_rid)]

TRACE_TOPICS: Final = (
    "fault",
    "response",
    "auto_response",
    "invalidation",
    "throttle",
    "overflow",
    "device",
)
TraceTopic = Literal[
    "fault", "response", "auto_response", "invalidation", "throttle", "overflow", "device"
]


class Args(BaseModel):
    """Base of every op's arguments (the request minus ``op`` and ``id``)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _check_range(what: str, start: int, length: int, *, aligned: bool = True) -> None:
    if length == 0:
        raise ValueError(f"{what}: length must be > 0")
    if aligned and (start % PAGE_SIZE or length % PAGE_SIZE):
        raise ValueError(f"{what} and length must be 4 KiB aligned")
    if start + length - 1 > U64_MAX:
        raise ValueError(f"{what} + length overflows 64 bits")


# --- session -------------------------------------------------------------------------


class HelloArgs(Args):
    version: U32
    client: Annotated[str, Field(max_length=256)]


# --- VMM operations ------------------------------------------------------------------


class NoArgs(Args):
    pass


class BindArgs(Args):
    rid: RidStr


class DevIdArgs(Args):
    dev_id: U32


class IovaRangeArgs(Args):
    """Arguments naming ``[iova, iova + length)``: 4 KiB aligned, not empty, in 64 bits."""

    iova: U64
    length: U32

    @model_validator(mode="after")
    def _iova_range(self) -> Self:
        _check_range("iova", self.iova, self.length)
        return self


class IoasMapArgs(Args):
    """``iova`` absent: the daemon picks the IOVA (``IOMMU_IOAS_MAP`` without
    ``IOMMU_IOAS_MAP_FIXED_IOVA``) and the result says which."""

    ioas_id: U32
    iova: U64 | None = None
    length: U32
    perm: MapPerm

    @model_validator(mode="after")
    def _iova_range(self) -> Self:
        _check_range("iova", self.iova if self.iova is not None else 0, self.length)
        return self


class IoasUnmapArgs(IovaRangeArgs):
    ioas_id: U32


class IoasIdArgs(Args):
    ioas_id: U32


class IovaRangeItem(Args):
    """``struct iommu_iova_range``: ``[start, last]``, inclusive."""

    start: U64
    last: U64


#: ``ioas_allow_iovas`` ranges in one request (the C library's bound, one frame).
ALLOW_IOVAS_MAX: Final = 16384


class IoasAllowIovasArgs(Args):
    """The allowed list replaces the previous one; empty clears it. Each range is
    checked by the core in order (``start >= last`` is ``EINVAL``), as the kernel."""

    ioas_id: U32
    ranges: Annotated[list[IovaRangeItem], Field(max_length=ALLOW_IOVAS_MAX)]


class IoasCopyArgs(Args):
    """``dst_iova`` absent: the daemon picks (``IOMMU_IOAS_COPY`` without
    ``IOMMU_IOAS_MAP_FIXED_IOVA``)."""

    src_ioas_id: U32
    src_iova: U64
    dst_ioas_id: U32
    dst_iova: U64 | None = None
    length: U64
    perm: MapPerm

    @model_validator(mode="after")
    def _ranges(self) -> Self:
        _check_range("src_iova", self.src_iova, self.length)
        _check_range("dst_iova", self.dst_iova if self.dst_iova is not None else 0, self.length)
        return self


class IoasMapFileArgs(Args):
    """``IOMMU_IOAS_MAP_FILE``: ``start`` is the file offset (4 KiB aligned); the fd
    stays with the client (the emulation reads no memory)."""

    ioas_id: U32
    iova: U64 | None = None
    start: U64
    length: U64
    perm: MapPerm

    @model_validator(mode="after")
    def _ranges(self) -> Self:
        _check_range("iova", self.iova if self.iova is not None else 0, self.length)
        _check_range("start", self.start, self.length)
        return self


class OptionArgs(Args):
    """``IOMMU_OPTION``: ``option`` ``rlimit_mode`` or ``huge_pages``, ``action``
    ``get`` or ``set`` (others are the core's ``EOPNOTSUPP``, as the kernel's unknown
    ``option_id``/``op``); ``object_id`` the IOAS of ``huge_pages``; ``val64`` to set."""

    option: Annotated[str, Field(max_length=32)]
    action: Annotated[str, Field(max_length=16)]
    object_id: U32 | None = None
    val64: U64 | None = None

    @model_validator(mode="after")
    def _val64(self) -> Self:
        if self.action == "set" and self.val64 is None:
            raise ValueError("set needs val64")
        return self


#: Bounds of ``hwpt_alloc``'s ``data`` (a driver's user data is a small flat struct):
#: nesting depth and values in all (its bytes are bounded by ``max_frame``).
DATA_MAX_DEPTH: Final = 4
DATA_MAX_ITEMS: Final = 64


def _check_data_bounds(value: object) -> object:
    """Walks ``data`` without recursion (a deeply nested one must be EINVAL, not a
    ``RecursionError``): depth and item count bounded."""
    stack: list[tuple[object, int]] = [(value, 0)]
    items = 0
    while stack:
        node, depth = stack.pop()
        items += 1
        if items > DATA_MAX_ITEMS:
            raise ValueError(f"data holds more than {DATA_MAX_ITEMS} values")
        children: list[object] = []
        if isinstance(node, dict):
            children = [*node.keys(), *node.values()]
        elif isinstance(node, (list, tuple)):
            children = list(node)
        if children:
            if depth >= DATA_MAX_DEPTH:
                raise ValueError(f"data is nested deeper than {DATA_MAX_DEPTH}")
            stack.extend((c, depth + 1) for c in children)
    return value


class HwptAllocArgs(Args):
    dev_id: U32
    pt_id: U32
    flags: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=16)] = []
    fault_id: U32 | None = None
    data: Annotated[dict[str, Any] | None, BeforeValidator(_check_data_bounds)] = None


class AttachArgs(Args):
    dev_id: U32
    pt_id: U32
    pasid: Pasid | None = None


class DetachArgs(Args):
    dev_id: U32
    pasid: Pasid | None = None


class PageResponseItem(Args):
    # Any integer: as the fault fd's write(), an unknown cookie or a code other than 0 or
    # 1 (negative, huge) stops processing at that entry; it is not a malformed request.
    cookie: int
    code: int


class PageResponseArgs(Args):
    fault_id: U32
    responses: list[PageResponseItem]

    def pairs(self) -> list[tuple[int, int]]:
        """``responses`` as ``(cookie, code)`` pairs, which is what the core takes."""
        return [(r.cookie, r.code) for r in self.responses]


class FaultFdArgs(Args):
    """``fault_fd``: the fault queue's groups as kernel records on a passed fd."""

    fault_id: U32


class DmaArgs(IovaRangeArgs):
    dev_id: U32
    pasid: Pasid | None = None
    perm: Perm


class DestroyArgs(Args):
    """``destroy`` names its object with ``obj_id`` (PROTOCOL.md v2, item 12); ``id`` is
    the request's own, as for every other op."""

    obj_id: U32


class HwptS1MapArgs(IovaRangeArgs):
    hwpt_id: U32
    gpa: U64
    perm: Perm

    @model_validator(mode="after")
    def _gpa_range(self) -> Self:
        _check_range("gpa", self.gpa, self.length)
        return self


class HwptS1UnmapArgs(IovaRangeArgs):
    hwpt_id: U32


class HwptInvalidateArgs(Args):
    hwpt_id: U32
    iova: U64 | None = None
    length: U32 | None = None

    @model_validator(mode="after")
    def _range(self) -> Self:
        if (self.iova is None) != (self.length is None):
            raise ValueError("iova and length go together (omit both to invalidate all)")
        if self.iova is not None and self.length is not None:
            _check_range("iova", self.iova, self.length)
        return self


# --- admin operations ----------------------------------------------------------------


class PageArgs(Args):
    """A page of a long admin listing: rows ``[offset, offset + limit)``; without
    ``limit`` every row from ``offset`` (``ENOSPC`` if that would exceed ``max_frame``)."""

    offset: U32 = 0
    limit: Annotated[int, Field(ge=1, le=65536)] | None = None


class RidArgs(Args):
    rid: RidStr


class UnplugArgs(RidArgs):
    """Hot removal that asks the owner first (PROTOCOL.md v2, item 9)."""

    force: bool = False
    grace_s: Annotated[float, Field(ge=0, le=UNPLUG_GRACE_MAX_S, allow_inf_nan=False)] = (
        UNPLUG_GRACE_DEFAULT_S
    )


class InjectArgs(Args):
    rid: RidStr
    pasid: Annotated[int, Field(ge=1, le=PASID_MAX)] | None = None
    addr: U64
    # 0 is allowed: with ``last`` it writes a stop marker (vtd-hw.md 2.1).
    perm: Annotated[int, Field(ge=0, le=PERM_ALL)]
    grpid: Annotated[int, Field(ge=0, le=PRG_INDEX_MAX)]
    last: bool

    @model_validator(mode="after")
    def _aligned(self) -> Self:
        if self.addr % PAGE_SIZE:
            raise ValueError("addr must be 4 KiB aligned")
        return self


class SubscribeArgs(Args):
    topics: Annotated[list[TraceTopic], Field(max_length=len(TRACE_TOPICS) * 4)]


#: The argument model of every op, in protocol.md's order.
OP_MODELS: Final[Mapping[str, type[Args]]] = {
    "hello": HelloArgs,
    "devices": NoArgs,
    "bind": BindArgs,
    "unbind": DevIdArgs,
    "ioas_alloc": NoArgs,
    "ioas_map": IoasMapArgs,
    "hw_info": DevIdArgs,
    "ioas_unmap": IoasUnmapArgs,
    "fault_alloc": NoArgs,
    "hwpt_alloc": HwptAllocArgs,
    "attach": AttachArgs,
    "replace": AttachArgs,
    "detach": DetachArgs,
    "page_response": PageResponseArgs,
    "fault_fd": FaultFdArgs,
    "dma": DmaArgs,
    "destroy": DestroyArgs,
    "device_reset": DevIdArgs,
    "hwpt_s1_map": HwptS1MapArgs,
    "hwpt_s1_unmap": HwptS1UnmapArgs,
    "hwpt_invalidate": HwptInvalidateArgs,
    "ioas_iova_ranges": IoasIdArgs,
    "ioas_allow_iovas": IoasAllowIovasArgs,
    "ioas_copy": IoasCopyArgs,
    "ioas_map_file": IoasMapFileArgs,
    "option": OptionArgs,
    "status": NoArgs,
    "topology": NoArgs,
    "objects": PageArgs,
    "pending": PageArgs,
    "inject": InjectArgs,
    "unplug": UnplugArgs,
    "plug": RidArgs,
    "reset": RidArgs,
    "subscribe": SubscribeArgs,
}

#: Ops allowed only to peers for which ``hello`` said ``admin: true``.
ADMIN_OPS: Final = frozenset(
    {"status", "topology", "objects", "pending", "inject", "unplug", "plug", "reset", "subscribe"}
)


def _is_u32(value: object) -> bool:
    return type(value) is int and 0 <= value <= U32_MAX


def request_id(msg: Mapping[str, object]) -> int:
    """The request's ``id``; ``EPROTO`` (with ``id`` null) when missing or not a uint32."""
    rid = msg.get("id")
    if not _is_u32(rid):
        raise RequestError(EPROTO, "request id missing or not a uint32")
    assert isinstance(rid, int)
    return rid


def request_op(msg: Mapping[str, object], rid: int) -> str:
    """The request's ``op``; ``EPROTO`` when missing or not a string."""
    op = msg.get("op")
    if not isinstance(op, str):
        raise RequestError(EPROTO, "request op missing or not a string", rid)
    return op


#: Problems listed in one error message; the rest are counted, so that a hostile
#: request with thousands of bad keys gets a short answer.
MAX_LISTED_ERRORS: Final = 8


def format_validation_error(exc: ValidationError) -> str:
    """One readable line: ``field: problem; other.field: problem``."""
    parts = []
    errors = exc.errors(include_url=False, include_input=False)
    for err in errors[:MAX_LISTED_ERRORS]:
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif msg.startswith("Value error, "):
            msg = msg.removeprefix("Value error, ")
        parts.append(f"{loc[:64]}: {msg}" if loc else msg)
    if len(errors) > MAX_LISTED_ERRORS:
        parts.append(f"and {len(errors) - MAX_LISTED_ERRORS} more")
    return "; ".join(parts)


def validate_args(op: str, args: Mapping[str, object], rid: int) -> Args:
    """Validate ``args`` (the request minus ``op``/``id``) for ``op``; ``EINVAL`` on failure."""
    model = OP_MODELS.get(op)
    if model is None:
        raise RequestError(EINVAL, "unknown op", rid)
    try:
        return model.model_validate(args)
    except ValidationError as exc:
        raise RequestError(EINVAL, format_validation_error(exc), rid) from None


def validate_request(msg: Mapping[str, object]) -> tuple[str, int, Args]:
    """``(op, id, args)`` of one decoded request, or :class:`RequestError`.

    ``EPROTO`` for a missing/invalid ``id`` or ``op``; ``EINVAL`` for an unknown op or
    bad arguments. The session rule (``hello`` first) is the caller's.
    """
    rid = request_id(msg)
    op = request_op(msg, rid)
    args = {k: v for k, v in msg.items() if k != "op" and k != "id"}
    return op, rid, validate_args(op, args, rid)
