"""The op table: one function per protocol v2 op, from validated arguments to a result.

Each function runs synchronously inside the connection's reader task; the caller
replies, then services the core. Core errors (``CoreError``) propagate to the caller,
which turns them into error frames. ``dma`` and a waiting ``unplug`` return
``DEFERRED``: their reply comes from a core event (``DmaDone``, ``UnplugDone``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import structlog

from iopfd.core import Context
from iopfd.protocol import models as m
from iopfd.protocol.errors import EINVAL, ENOSPC, EPROTONOSUPPORT, RequestError
from iopfd.server.connection import DEFERRED, Connection, Deferred

log = structlog.get_logger("iopfd.ops")

Result = dict[str, object] | Deferred
EMPTY: Final[dict[str, object]] = {}


def _ctx(conn: Connection) -> Context:
    assert conn.ctx is not None  # the session rule admits only hello before a context
    return conn.ctx


# --- session -------------------------------------------------------------------------


def op_hello(conn: Connection, rid: int, args: m.HelloArgs, now: int) -> Result:
    if conn.ctx is not None:
        raise RequestError(EINVAL, "hello was already accepted on this connection", rid)
    if args.version not in m.SUPPORTED_VERSIONS:
        raise RequestError(EPROTONOSUPPORT,
                           f"supported versions: {list(m.SUPPORTED_VERSIONS)}", rid)
    conn.daemon.open_context(conn, args.client)
    structlog.contextvars.bind_contextvars(client=conn.label)
    log.info("hello", client_name=args.client, admin=conn.admin)
    return {
        "version": m.PROTOCOL_VERSION,
        "server": conn.daemon.server_name,
        "max_frame": conn.daemon.limits.max_frame,
        "admin": conn.admin,
        "kernel": conn.daemon.core.profile.name,
    }


# --- VMM operations ------------------------------------------------------------------


def op_devices(conn: Connection, rid: int, args: m.NoArgs, now: int) -> Result:
    return {"devices": conn.daemon.core.device_list()}


def op_bind(conn: Connection, rid: int, args: m.BindArgs, now: int) -> Result:
    dev_id = _ctx(conn).bind(args.rid, now)
    log.info("bind", rid=args.rid, dev_id=dev_id)
    return {"dev_id": dev_id}


def op_unbind(conn: Connection, rid: int, args: m.DevIdArgs, now: int) -> Result:
    _ctx(conn).unbind(args.dev_id, now)
    log.info("unbind", dev_id=args.dev_id)
    return EMPTY


def op_ioas_alloc(conn: Connection, rid: int, args: m.NoArgs, now: int) -> Result:
    return {"ioas_id": _ctx(conn).ioas_alloc()}


def op_ioas_map(conn: Connection, rid: int, args: m.IoasMapArgs, now: int) -> Result:
    _ctx(conn).ioas_map(args.ioas_id, args.iova, args.length, args.perm, now)
    return EMPTY


def op_ioas_unmap(conn: Connection, rid: int, args: m.IoasUnmapArgs, now: int) -> Result:
    return {"unmapped": _ctx(conn).ioas_unmap(args.ioas_id, args.iova, args.length, now)}


def op_fault_alloc(conn: Connection, rid: int, args: m.NoArgs, now: int) -> Result:
    return {"fault_id": _ctx(conn).fault_alloc()}


def op_hwpt_alloc(conn: Connection, rid: int, args: m.HwptAllocArgs, now: int) -> Result:
    hwpt_id = _ctx(conn).hwpt_alloc(args.dev_id, args.pt_id, list(args.flags), args.fault_id,
                                    args.data)
    return {"hwpt_id": hwpt_id}


def op_attach(conn: Connection, rid: int, args: m.AttachArgs, now: int) -> Result:
    _ctx(conn).attach(args.dev_id, args.pt_id, args.pasid, now)
    return EMPTY


def op_replace(conn: Connection, rid: int, args: m.AttachArgs, now: int) -> Result:
    _ctx(conn).replace(args.dev_id, args.pt_id, args.pasid, now)
    return EMPTY


def op_detach(conn: Connection, rid: int, args: m.DetachArgs, now: int) -> Result:
    _ctx(conn).detach(args.dev_id, args.pasid, now)
    return EMPTY


def op_page_response(conn: Connection, rid: int, args: m.PageResponseArgs,
                     now: int) -> Result:
    # The fault fd's write(): ``done`` entries applied, processing stopped at the next.
    responses = [(r.cookie, r.code) for r in args.responses]
    return {"done": _ctx(conn).page_response(args.fault_id, responses, now)}


def _check_deferred_id(conn: Connection, rid: int, op: str) -> None:
    """A deferred reply is matched by its request id alone: one id, one waiting call."""
    if rid in conn.dma_inflight or rid in conn.unplug_inflight:
        raise RequestError(EINVAL, f"a request with id {rid} is still waiting for its "
                                   f"reply; {op} needs another id", rid)


def op_dma(conn: Connection, rid: int, args: m.DmaArgs, now: int) -> Result:
    _check_deferred_id(conn, rid, "dma")
    if len(conn.dma_inflight) >= conn.daemon.limits.max_dma_inflight:
        raise RequestError(ENOSPC, "max_dma_inflight dma requests already in flight", rid)
    # The request id rides in the transfer's tag; DmaDone brings it back for the reply.
    _ctx(conn).dma(args.dev_id, args.pasid, args.iova, args.length, args.perm, now, rid)
    conn.dma_inflight.add(rid)
    return DEFERRED


def op_destroy(conn: Connection, rid: int, args: m.DestroyArgs, now: int) -> Result:
    _ctx(conn).destroy(args.obj_id, now)
    return EMPTY


def op_device_reset(conn: Connection, rid: int, args: m.DevIdArgs, now: int) -> Result:
    _ctx(conn).device_reset(args.dev_id, now)
    log.info("device_reset", dev_id=args.dev_id)
    return EMPTY


def op_hwpt_s1_map(conn: Connection, rid: int, args: m.HwptS1MapArgs, now: int) -> Result:
    _ctx(conn).hwpt_s1_map(args.hwpt_id, args.iova, args.length, args.gpa, args.perm)
    return EMPTY


def op_hwpt_s1_unmap(conn: Connection, rid: int, args: m.HwptS1UnmapArgs,
                     now: int) -> Result:
    return {"unmapped": _ctx(conn).hwpt_s1_unmap(args.hwpt_id, args.iova, args.length)}


def op_hwpt_invalidate(conn: Connection, rid: int, args: m.HwptInvalidateArgs,
                       now: int) -> Result:
    _ctx(conn).hwpt_invalidate(args.hwpt_id, args.iova, args.length, now)
    return EMPTY


# --- admin operations ----------------------------------------------------------------


def op_status(conn: Connection, rid: int, args: m.NoArgs, now: int) -> Result:
    daemon = conn.daemon
    return {
        "version": m.PROTOCOL_VERSION,
        "kernel": daemon.core.profile.name,
        "uptime_s": round(time.monotonic() - daemon.started, 3),
        "clients": len(daemon.connections),
        "counters": daemon.status_counters(),
    }


def op_topology(conn: Connection, rid: int, args: m.NoArgs, now: int) -> Result:
    return dict(conn.daemon.core.topology())


def op_objects(conn: Connection, rid: int, args: m.NoArgs, now: int) -> Result:
    return {"objects": conn.daemon.core.objects()}


def op_pending(conn: Connection, rid: int, args: m.NoArgs, now: int) -> Result:
    return {"pending": conn.daemon.core.pending(now)}


def op_inject(conn: Connection, rid: int, args: m.InjectArgs, now: int) -> Result:
    conn.daemon.core.emulation.inject(args.rid, args.pasid, args.addr, args.perm,
                                      args.grpid, args.last, now)
    return EMPTY


def op_unplug(conn: Connection, rid: int, args: m.UnplugArgs, now: int) -> Result:
    """vfio-pci's remove path: the owners get ``device_request`` and the reply waits
    until the device is gone (``UnplugDone``), unless nobody holds it or ``force``."""
    _check_deferred_id(conn, rid, "unplug")
    core = conn.daemon.core
    forced_before = core.counters["forced_unplugs"]
    removed = core.emulation.unplug(args.rid, now, force=args.force,
                                    grace_ns=int(args.grace_s * 1e9), ctx=conn.ctx, tag=rid)
    if not removed:
        conn.unplug_inflight.add(rid)
        log.info("unplug requested", rid=args.rid, force=args.force, grace_s=args.grace_s)
        return DEFERRED
    # Removed at once: forced only if an owner still held it (force=True on a bound device).
    forced = core.counters["forced_unplugs"] > forced_before
    log.info("unplug", rid=args.rid, forced=forced)
    return {"forced": forced}


def op_plug(conn: Connection, rid: int, args: m.RidArgs, now: int) -> Result:
    conn.daemon.core.emulation.plug(args.rid, now)
    log.info("plug", rid=args.rid)
    return EMPTY


def op_reset(conn: Connection, rid: int, args: m.RidArgs, now: int) -> Result:
    conn.daemon.core.emulation.reset(args.rid, now)
    log.info("reset", rid=args.rid)
    return EMPTY


def op_subscribe(conn: Connection, rid: int, args: m.SubscribeArgs, now: int) -> Result:
    topics = frozenset(args.topics) if args.topics else frozenset(m.TRACE_TOPICS)
    conn.daemon.subscribe(conn, topics)
    return {"topics": sorted(topics)}


OPS: Final[Mapping[str, Callable[[Connection, int, Any, int], Result]]] = {
    "hello": op_hello,
    "devices": op_devices,
    "bind": op_bind,
    "unbind": op_unbind,
    "ioas_alloc": op_ioas_alloc,
    "ioas_map": op_ioas_map,
    "ioas_unmap": op_ioas_unmap,
    "fault_alloc": op_fault_alloc,
    "hwpt_alloc": op_hwpt_alloc,
    "attach": op_attach,
    "replace": op_replace,
    "detach": op_detach,
    "page_response": op_page_response,
    "dma": op_dma,
    "destroy": op_destroy,
    "device_reset": op_device_reset,
    "hwpt_s1_map": op_hwpt_s1_map,
    "hwpt_s1_unmap": op_hwpt_s1_unmap,
    "hwpt_invalidate": op_hwpt_invalidate,
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
assert OPS.keys() == m.OP_MODELS.keys()
