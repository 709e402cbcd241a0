"""The connection budgets per uid: slots (with a reserve for admins) and unsent output.

The core charges objects, mapped pages and domain IDs to the peer's uid
(``iopfd.core.budgets``); what belongs to the connections themselves is counted here.
"""

from __future__ import annotations

from collections import Counter

import trio

from iopfd.server.config import Limits


class UidOutput:
    """What one uid's connections share: the bytes they have queued unsent
    (``max_outbuf_per_uid``), and one slice of requests (``Connection.take_slice``):
    the uid's connections draw on the same ``REQUESTS_PER_SLICE`` requests and
    ``SLICE_S``, and when it is used up every one of them waits while the others run.
    So the daemon is fair per uid, not per connection: a uid with 64 connections
    would otherwise take 64 slices for another uid's one."""

    __slots__ = ("bytes", "limit", "resume", "slice_end", "slice_left")

    def __init__(self, limit: int) -> None:
        self.bytes = 0
        self.limit = limit
        #: Requests left in the uid's slice, and when it ends (``time.perf_counter``).
        self.slice_left = 0
        self.slice_end = 0.0
        #: Set while the uid's slice is used up: its connections wait for it.
        self.resume: trio.Event | None = None

    @property
    def over(self) -> bool:
        return self.bytes > self.limit


class ConnectionBudgets:
    """Connections per uid and the admins' reserve; one ``UidOutput`` per uid."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.per_uid: Counter[int] = Counter()
        self.outputs: dict[int, UidOutput] = {}
        #: Refusals by reason (``status``: ``daemon_refused_*``).
        self.refused: Counter[str] = Counter()

    def refusal(self, uid: int, admin: bool, open_now: int) -> str | None:
        """Why one more connection of ``uid`` is refused, or ``None``: the global cap
        for everyone, the admins' reserve and the per-uid cap for the others."""
        limits = self.limits
        if open_now >= limits.max_connections:
            self.refused["global"] += 1
            return "too many connections"
        if admin:
            return None
        if open_now >= limits.max_connections - limits.admin_reserve:
            self.refused["admin_reserve"] += 1
            return "too many connections (the rest are reserved for admins)"
        if self.per_uid[uid] >= limits.max_connections_per_uid:
            self.refused["per_uid"] += 1
            return f"too many connections for uid {uid} (max_connections_per_uid)"
        return None

    def opened(self, uid: int) -> UidOutput:
        self.per_uid[uid] += 1
        out = self.outputs.get(uid)
        if out is None:
            out = self.outputs[uid] = UidOutput(self.limits.max_outbuf_per_uid)
        return out

    def closed(self, uid: int) -> None:
        self.per_uid[uid] -= 1
        if self.per_uid[uid] <= 0:
            del self.per_uid[uid]
            out = self.outputs.get(uid)
            if out is not None and out.bytes <= 0:
                del self.outputs[uid]

    def counters(self) -> dict[str, int]:
        return {
            "budget_uids_connected": len(self.per_uid),
            "budget_max_connections_uid": max(self.per_uid.values(), default=0),
            "budget_max_outbytes_uid": max((o.bytes for o in self.outputs.values()), default=0),
            "budget_refused_connections_global": self.refused["global"],
            "budget_refused_connections_admin_reserve": self.refused["admin_reserve"],
            "budget_refused_connections_uid": self.refused["per_uid"],
        }


__all__ = ["ConnectionBudgets", "UidOutput"]
