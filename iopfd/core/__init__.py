"""The core: iommufd objects, the io-pgfault fault path and the VT-d driver glue.

Sans-IO: plain synchronous Python, time passed in as ``now`` (ns). The daemon calls
``Context`` methods (one context per client) or ``Core.emulation``'s admin controls,
then ``core.service(now)``, then forwards ``core.take_events()``. See docs/core.md for
the path of a page request and docs/architecture.md for the layers.
"""

from hwmodel.accel import overlay_path

# ``make accel``: a mypyc build on PYTHONPATH comes ahead of these sources (hwmodel/accel.py).
__path__[:0] = overlay_path(__name__)

from iopfd.core.context import Context
from iopfd.core.core import STATUS_COUNTERS, Core
from iopfd.core.emulation import DEFAULT_UNPLUG_GRACE_NS, Emulation
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
from iopfd.core.intel.iommu import FlushStats
from iopfd.core.profile import DEFAULT_KERNEL, PROFILES, KernelProfile, kernel_profile

__all__ = [
    "DEFAULT_KERNEL",
    "DEFAULT_UNPLUG_GRACE_NS",
    "PROFILES",
    "STATUS_COUNTERS",
    "TRACE_TOPICS",
    "Context",
    "Core",
    "CoreError",
    "CoreEvent",
    "CoreLimits",
    "DeviceRequest",
    "DmaDone",
    "Emulation",
    "FaultDelivered",
    "FlushStats",
    "KernelProfile",
    "Trace",
    "UnplugDone",
    "kernel_profile",
]
