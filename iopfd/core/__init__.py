"""The core: iommufd objects, the io-pgfault fault path and the VT-d driver glue.

Sans-IO: plain synchronous Python, time passed in as ``now`` (ns). The daemon calls
``Core``/``Context`` methods, then ``core.service(now)``, then forwards
``core.take_events()``. See docs/core.md for the path of a page request.
"""

from iopfd.core.context import Context
from iopfd.core.core import Core, FlushStats
from iopfd.core.errors import CoreError, CoreLimits
from iopfd.core.events import (
    TRACE_TOPICS,
    CoreEvent,
    DeviceRequest,
    DmaDone,
    FaultDelivered,
    Trace,
    UnplugDone,
)
from iopfd.core.profile import DEFAULT_KERNEL, PROFILES, KernelProfile, kernel_profile

__all__ = [
    "DEFAULT_KERNEL",
    "PROFILES",
    "TRACE_TOPICS",
    "Context",
    "Core",
    "CoreError",
    "CoreEvent",
    "CoreLimits",
    "DeviceRequest",
    "DmaDone",
    "FaultDelivered",
    "FlushStats",
    "KernelProfile",
    "Trace",
    "UnplugDone",
    "kernel_profile",
]
