"""The daemon side of each op: one handler per name of ``iopfd.protocol.ops.OPS``.

A handler gets the daemon (``Server``: the core and what ``status`` reports), the
connection (its context), the request and ``now``, and returns the result map, or
``DEFERRED`` when the reply comes from a core event (``dma``: ``DmaDone``; a waiting
``unplug``: ``UnplugDone``). Every session rule (hello first, admin, arguments, deferred
ids and how many) was applied by the connection's ``ServerSession`` before a handler
runs; core errors (``CoreError``) propagate to the caller, which answers them.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

import structlog

from iopfd.core.errors import CoreError
from iopfd.protocol import models as m
from iopfd.protocol.errors import EBUSY, ENOENT, EOPNOTSUPP
from iopfd.protocol.fastargs import DmaFast, IoasMapFast, PageResponseFast
from iopfd.protocol.ops import OPS

if TYPE_CHECKING:
    from iopfd.core import Context, Core
    from iopfd.server.config import Limits
    from iopfd.server.connection import Connection

log = structlog.get_logger("iopfd.ops")


EMPTY: Final[Mapping[str, object]] = {}


class Deferred:
    """Returned by an op whose reply comes later, from a core event."""


DEFERRED: Final = Deferred()


@dataclass(frozen=True, slots=True)
class PassFd:
    """A result whose reply frame carries ``sock``'s fd (SCM_RIGHTS): ``fault_fd``."""

    result: Mapping[str, object]
    sock: socket.socket


class Sliced:
    """Returned by an op that runs in bounded steps (``unbind`` of a device with many
    PASIDs, ``ioas_unmap`` of a big range): the first step runs inline, as any request;
    if more remain, the connection's reader runs them with a checkpoint between two, so
    the other connections are served meanwhile, and replies ``reply(value)`` after the
    last. The connection's own next request waits, as the ioctl's caller would."""

    __slots__ = ("reply", "result", "steps")

    def __init__(
        self, steps: Generator[None, None, Any], reply: Callable[[Any], Mapping[str, object]]
    ) -> None:
        self.steps = steps
        self.reply = reply
        self.result: Mapping[str, object] = EMPTY

    def step(self) -> bool:
        """Run one step; True once the last has run and ``result`` holds the reply."""
        try:
            next(self.steps)
        except StopIteration as done:
            self.result = self.reply(done.value)
            return True
        return False


Result = Mapping[str, object] | Deferred | PassFd | Sliced


class Server(Protocol):
    """What the handlers need of the daemon (``Daemon`` is one)."""

    @property
    def core(self) -> Core: ...
    @property
    def limits(self) -> Limits: ...
    @property
    def server_name(self) -> str: ...
    @property
    def started(self) -> float: ...
    @property
    def clients(self) -> int: ...

    def open_context(self, conn: Connection, client: str) -> Context: ...
    def subscribe(self, conn: Connection, topics: frozenset[str]) -> None: ...
    def open_fault_fd(self, conn: Connection, fault_id: int) -> socket.socket: ...
    def status_counters(self) -> dict[str, int]: ...


Handler = Callable[["Server", "Connection", int, Any, int], Result]


def _ctx(conn: Connection) -> Context:
    assert conn.ctx is not None  # the session admits nothing but hello before a context
    return conn.ctx


# --- session -------------------------------------------------------------------------


def op_hello(srv: Server, conn: Connection, rid: int, args: m.HelloArgs, now: int) -> Result:
    srv.open_context(conn, args.client)
    structlog.contextvars.bind_contextvars(client=conn.label)
    log.info("hello", client_name=conn.client, admin=conn.admin)
    return {
        "version": m.PROTOCOL_VERSION,
        "server": srv.server_name,
        "max_frame": srv.limits.max_frame,
        "admin": conn.admin,
        "kernel": srv.core.profile.name,
    }


# --- VMM operations ------------------------------------------------------------------


def op_devices(srv: Server, conn: Connection, rid: int, args: m.NoArgs, now: int) -> Result:
    return {"devices": srv.core.device_list()}


def op_bind(srv: Server, conn: Connection, rid: int, args: m.BindArgs, now: int) -> Result:
    dev_id = _ctx(conn).bind(args.rid, now)
    log.info("bind", rid=args.rid, dev_id=dev_id)
    return {"dev_id": dev_id}


def op_unbind(srv: Server, conn: Connection, rid: int, args: m.DevIdArgs, now: int) -> Result:
    def unbound(_: None) -> Mapping[str, object]:
        log.info("unbind", dev_id=args.dev_id)
        return EMPTY

    return Sliced(_ctx(conn).unbind_steps(args.dev_id, now), unbound)


def op_ioas_alloc(srv: Server, conn: Connection, rid: int, args: m.NoArgs, now: int) -> Result:
    return {"ioas_id": _ctx(conn).ioas_alloc()}


def _iova_reply(iova: int) -> Mapping[str, object]:
    return {"iova": iova}


def op_ioas_map(
    srv: Server, conn: Connection, rid: int, args: m.IoasMapArgs | IoasMapFast, now: int
) -> Result:
    ctx = _ctx(conn)
    if args.iova is None:  # the daemon picks: a search of the IOAS's areas, in steps
        steps = ctx.ioas_map_steps(args.ioas_id, None, args.length, args.perm, now)
        return Sliced(steps, _iova_reply)
    return {"iova": ctx.ioas_map(args.ioas_id, args.iova, args.length, args.perm, now)}


def op_ioas_unmap(
    srv: Server, conn: Connection, rid: int, args: m.IoasUnmapArgs, now: int
) -> Result:
    steps = _ctx(conn).ioas_unmap_steps(args.ioas_id, args.iova, args.length, now)
    return Sliced(steps, lambda unmapped: {"unmapped": unmapped})


def op_hw_info(srv: Server, conn: Connection, rid: int, args: m.DevIdArgs, now: int) -> Result:
    return _ctx(conn).hw_info(args.dev_id)


def op_fault_alloc(srv: Server, conn: Connection, rid: int, args: m.NoArgs, now: int) -> Result:
    return {"fault_id": _ctx(conn).fault_alloc()}


def op_hwpt_alloc(
    srv: Server, conn: Connection, rid: int, args: m.HwptAllocArgs, now: int
) -> Result:
    hwpt_id = _ctx(conn).hwpt_alloc(
        args.dev_id, args.pt_id, list(args.flags), args.fault_id, args.data
    )
    return {"hwpt_id": hwpt_id}


def op_attach(srv: Server, conn: Connection, rid: int, args: m.AttachArgs, now: int) -> Result:
    # An IOAS as pt_id attaches its automatic domain: hwpt_id says which (v2 item 13).
    return {"hwpt_id": _ctx(conn).attach(args.dev_id, args.pt_id, args.pasid, now)}


def op_replace(srv: Server, conn: Connection, rid: int, args: m.AttachArgs, now: int) -> Result:
    return {"hwpt_id": _ctx(conn).replace(args.dev_id, args.pt_id, args.pasid, now)}


def op_detach(srv: Server, conn: Connection, rid: int, args: m.DetachArgs, now: int) -> Result:
    _ctx(conn).detach(args.dev_id, args.pasid, now)
    return EMPTY


def op_page_response(
    srv: Server, conn: Connection, rid: int, args: m.PageResponseArgs | PageResponseFast, now: int
) -> Result:
    # The fault fd's write(): ``done`` entries applied, processing stopped at the next.
    return {"done": _ctx(conn).page_response(args.fault_id, args.pairs(), now)}


def op_fault_fd(srv: Server, conn: Connection, rid: int, args: m.FaultFdArgs, now: int) -> Result:
    """One end of a SOCK_SEQPACKET socketpair, passed with the reply: the queue's groups
    as kernel records from now on, answers written back (docs/protocol.md, *Fault fd*)."""
    obj = _ctx(conn).lookup(args.fault_id)
    if obj is None or obj.kind != "fault":
        raise CoreError(ENOENT, f"no fault queue {args.fault_id}")
    if args.fault_id in conn.fault_fds:
        raise CoreError(EBUSY, f"fault queue {args.fault_id} already has an open fault fd")
    if not conn.can_pass_fds:
        raise CoreError(EOPNOTSUPP, "this connection cannot carry fds (not a Unix socket)")
    theirs = srv.open_fault_fd(conn, args.fault_id)
    log.info("fault fd opened", fault_id=args.fault_id)
    return PassFd(EMPTY, theirs)


def op_dma(srv: Server, conn: Connection, rid: int, args: m.DmaArgs | DmaFast, now: int) -> Result:
    # The request id rides in the transfer's tag; DmaDone brings it back for the reply.
    _ctx(conn).dma(args.dev_id, args.pasid, args.iova, args.length, args.perm, now, rid)
    return DEFERRED


def op_destroy(srv: Server, conn: Connection, rid: int, args: m.DestroyArgs, now: int) -> Result:
    def destroyed(_: None) -> Mapping[str, object]:
        ffd = conn.fault_fds.get(args.obj_id)
        if ffd is not None:
            ffd.close("fault_destroy")  # its groups were answered: the backlog goes
        return EMPTY

    # In steps where the object has them (an IOAS holding a million pages).
    return Sliced(_ctx(conn).destroy_steps(args.obj_id, now), destroyed)


def op_device_reset(srv: Server, conn: Connection, rid: int, args: m.DevIdArgs, now: int) -> Result:
    _ctx(conn).device_reset(args.dev_id, now)
    log.info("device_reset", dev_id=args.dev_id)
    return EMPTY


def op_hwpt_s1_map(
    srv: Server, conn: Connection, rid: int, args: m.HwptS1MapArgs, now: int
) -> Result:
    _ctx(conn).hwpt_s1_map(args.hwpt_id, args.iova, args.length, args.gpa, args.perm)
    return EMPTY


def op_hwpt_s1_unmap(
    srv: Server, conn: Connection, rid: int, args: m.HwptS1UnmapArgs, now: int
) -> Result:
    return {"unmapped": _ctx(conn).hwpt_s1_unmap(args.hwpt_id, args.iova, args.length)}


def op_hwpt_invalidate(
    srv: Server, conn: Connection, rid: int, args: m.HwptInvalidateArgs, now: int
) -> Result:
    _ctx(conn).hwpt_invalidate(args.hwpt_id, args.iova, args.length, now)
    return EMPTY


def op_ioas_iova_ranges(
    srv: Server, conn: Connection, rid: int, args: m.IoasIdArgs, now: int
) -> Result:
    return _ctx(conn).ioas_iova_ranges(args.ioas_id)


def op_ioas_allow_iovas(
    srv: Server, conn: Connection, rid: int, args: m.IoasAllowIovasArgs, now: int
) -> Result:
    _ctx(conn).ioas_allow_iovas(args.ioas_id, [(r.start, r.last) for r in args.ranges])
    return EMPTY


def op_ioas_copy(srv: Server, conn: Connection, rid: int, args: m.IoasCopyArgs, now: int) -> Result:
    steps = _ctx(conn).ioas_copy_steps(
        args.src_ioas_id,
        args.src_iova,
        args.dst_ioas_id,
        args.dst_iova,
        args.length,
        args.perm,
        now,
    )
    return Sliced(steps, _iova_reply)


def op_ioas_map_file(
    srv: Server, conn: Connection, rid: int, args: m.IoasMapFileArgs, now: int
) -> Result:
    steps = _ctx(conn).ioas_map_file_steps(
        args.ioas_id, args.iova, args.start, args.length, args.perm, now
    )
    return Sliced(steps, _iova_reply)


def op_option(srv: Server, conn: Connection, rid: int, args: m.OptionArgs, now: int) -> Result:
    # CAP_SYS_RESOURCE, as the daemon can tell it: an admin peer (docs/protocol.md).
    val = _ctx(conn).option(
        args.option, args.action, args.object_id, args.val64, capable=conn.admin
    )
    return EMPTY if val is None else {"val64": val}


# --- admin operations ----------------------------------------------------------------


def op_status(srv: Server, conn: Connection, rid: int, args: m.NoArgs, now: int) -> Result:
    return {
        "version": m.PROTOCOL_VERSION,
        "server": srv.server_name,  # the daemon's own version, as hello says it
        "kernel": srv.core.profile.name,
        "uptime_s": round(time.monotonic() - srv.started, 3),
        "clients": srv.clients,
        "counters": srv.status_counters(),
        # Per-uid use of the core's budgets ([extension], docs/protocol.md).
        "budgets": srv.core.budgets.usage(),
    }


def op_topology(srv: Server, conn: Connection, rid: int, args: m.NoArgs, now: int) -> Result:
    return dict(srv.core.topology())


def _page(rows: list[dict[str, object]], total: int, args: m.PageArgs) -> dict[str, object]:
    """``total`` rows in all; ``next``: the offset of the following page, or None."""
    end = args.offset + len(rows)
    return {"total": total, "next": end if end < total else None}


def op_objects(srv: Server, conn: Connection, rid: int, args: m.PageArgs, now: int) -> Result:
    rows = srv.core.objects(args.offset, args.limit)
    return {"objects": rows, **_page(rows, srv.core.object_count(), args)}


def op_pending(srv: Server, conn: Connection, rid: int, args: m.PageArgs, now: int) -> Result:
    rows = srv.core.pending(now, args.offset, args.limit)
    return {"pending": rows, **_page(rows, srv.core.pending_count(), args)}


def op_inject(srv: Server, conn: Connection, rid: int, args: m.InjectArgs, now: int) -> Result:
    srv.core.emulation.inject(
        args.rid, args.pasid, args.addr, args.perm, args.grpid, args.last, now
    )
    return EMPTY


def op_unplug(srv: Server, conn: Connection, rid: int, args: m.UnplugArgs, now: int) -> Result:
    """vfio-pci's remove path: the owners get ``device_request`` and the reply waits
    until the device is gone (``UnplugDone``), unless nobody holds it or ``force``."""
    core = srv.core
    forced_before = core.counters["forced_unplugs"]
    removed = core.emulation.unplug(
        args.rid, now, force=args.force, grace_ns=int(args.grace_s * 1e9), ctx=conn.ctx, tag=rid
    )
    if not removed:
        log.info("unplug requested", rid=args.rid, force=args.force, grace_s=args.grace_s)
        return DEFERRED
    # Removed at once: forced only if an owner still held it (force=True on a bound device).
    forced = core.counters["forced_unplugs"] > forced_before
    log.info("unplug", rid=args.rid, forced=forced)
    return {"forced": forced}


def op_plug(srv: Server, conn: Connection, rid: int, args: m.RidArgs, now: int) -> Result:
    srv.core.emulation.plug(args.rid, now)
    log.info("plug", rid=args.rid)
    return EMPTY


def op_reset(srv: Server, conn: Connection, rid: int, args: m.RidArgs, now: int) -> Result:
    srv.core.emulation.reset(args.rid, now)
    log.info("reset", rid=args.rid)
    return EMPTY


def op_subscribe(
    srv: Server, conn: Connection, rid: int, args: m.SubscribeArgs, now: int
) -> Result:
    topics = frozenset(args.topics) if args.topics else frozenset(m.TRACE_TOPICS)
    srv.subscribe(conn, topics)
    return {"topics": sorted(topics)}


#: One handler per op of the wire contract, under its name there.
HANDLERS: Final[Mapping[str, Handler]] = {
    "hello": op_hello,
    "devices": op_devices,
    "bind": op_bind,
    "unbind": op_unbind,
    "ioas_alloc": op_ioas_alloc,
    "ioas_map": op_ioas_map,
    "hw_info": op_hw_info,
    "ioas_unmap": op_ioas_unmap,
    "fault_alloc": op_fault_alloc,
    "hwpt_alloc": op_hwpt_alloc,
    "attach": op_attach,
    "replace": op_replace,
    "detach": op_detach,
    "page_response": op_page_response,
    "fault_fd": op_fault_fd,
    "dma": op_dma,
    "destroy": op_destroy,
    "device_reset": op_device_reset,
    "hwpt_s1_map": op_hwpt_s1_map,
    "hwpt_s1_unmap": op_hwpt_s1_unmap,
    "hwpt_invalidate": op_hwpt_invalidate,
    "ioas_iova_ranges": op_ioas_iova_ranges,
    "ioas_allow_iovas": op_ioas_allow_iovas,
    "ioas_copy": op_ioas_copy,
    "ioas_map_file": op_ioas_map_file,
    "option": op_option,
    "status": op_status,
    "topology": op_topology,
    "objects": op_objects,
    "pending": op_pending,
    "inject": op_inject,
    "unplug": op_unplug,
    "plug": op_plug,
    "reset": op_reset,
    "subscribe": op_subscribe,
}
assert HANDLERS.keys() == OPS.keys(), set(HANDLERS) ^ set(OPS)

#: Ops that report the core's state: they run on a serviced core even in the middle of
#: a batch of requests (the batch is otherwise serviced once, at its end).
OBSERVING_OPS: Final = frozenset({"status", "pending", "objects", "topology", "devices"})
assert HANDLERS.keys() >= OBSERVING_OPS
