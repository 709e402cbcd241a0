"""What the core asks the daemon to do: plain frozen events out of ``Core.take_events``.

Every layer of the core that has something to say gets the one ``EventSink`` (never
the whole ``Core``): it appends events, and builds trace records only while someone
subscribed (``trace_enabled``), so the hot path pays nothing for tracing otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from iopfd.core.main import ContextBase as Context


@dataclass(slots=True)
class FaultDelivered:
    """One page-request group for a fault queue: push ``{"event": "fault", ...}`` to ctx.

    A value: treat it as immutable. Like ``DmaDone`` it is not a frozen dataclass only
    because a frozen one's ``__init__`` (``object.__setattr__`` per field) costs three
    times as much, and one is built per fault."""

    ctx: Context
    fault_id: int
    cookie: int
    faults: list[dict[str, int]]
    throttled: int


@dataclass(slots=True, unsafe_hash=True)
class DmaDone:
    """Completion of a ``dma`` request; ``tag`` is the caller's tag. A value, hashable
    as a frozen one would be; not frozen for the cost (see ``FaultDelivered``)."""

    ctx: Context
    tag: object
    status: str
    faults: int
    bytes: int


@dataclass(frozen=True, slots=True)
class DeviceRequest:
    """vfio-pci's REQ interrupt (``vfio_pci_core_request``): the device is being
    removed; its owner should finish, answer what it holds and release it."""

    ctx: Context
    dev_id: int
    rid: str


@dataclass(frozen=True, slots=True)
class UnplugDone:
    """An ``unplug`` that waited for the owners completed: reply to ``tag`` on ``ctx``."""

    ctx: Context | None
    tag: object
    rid: str
    forced: bool


@dataclass(frozen=True, slots=True)
class Trace:
    """A record for ``subscribe``; topics in ``TRACE_TOPICS``."""

    topic: str
    record: dict[str, object]


TRACE_TOPICS = frozenset(
    {"fault", "response", "auto_response", "invalidation", "throttle", "overflow", "device"}
)

CoreEvent = FaultDelivered | DmaDone | DeviceRequest | UnplugDone | Trace


class EventSink:
    """The core's outbox: events for the daemon, in the order they happened."""

    __slots__ = ("events", "trace_enabled")

    def __init__(self) -> None:
        self.events: list[CoreEvent] = []
        #: False: nobody subscribed, so no ``Trace`` is built (callers test it first).
        self.trace_enabled = False

    def emit(self, event: CoreEvent) -> None:
        self.events.append(event)

    def trace(self, topic: str, **record: object) -> None:
        self.events.append(Trace(topic, record))

    def take(self) -> list[CoreEvent]:
        events = self.events
        self.events = []
        return events
