"""The core's error value and its resource limits."""

from __future__ import annotations

from dataclasses import dataclass

EINVAL = "EINVAL"
ENOENT = "ENOENT"
EBUSY = "EBUSY"
EPERM = "EPERM"
EOPNOTSUPP = "EOPNOTSUPP"
ENODEV = "ENODEV"
ENOSPC = "ENOSPC"


class CoreError(Exception):
    """A refused operation, carrying the errno name the daemon puts on the wire."""

    def __init__(self, errno: str, message: str) -> None:
        super().__init__(f"{errno}: {message}")
        self.errno = errno
        self.message = message


@dataclass
class CoreLimits:
    """Bounds the core enforces (docs/protocol.md, *Fault events* and *extensions*)."""

    max_pending: int = 4096  # unanswered groups per fault queue, then throttled
    max_objects_per_context: int = 65536
    max_retries: int = 8  # the device's per-page retry bound (machine setting)
    max_partials_per_device: int = 2048  # non-last requests set aside per device (PRQ depth)
    # The daemon runs each request to its end before serving anyone else, and a mapped
    # page costs memory: one request may touch this much, one context map this many.
    max_dma_length: int = 1 << 20  # bytes one dma may cover (EINVAL beyond)
    max_map_length: int = 64 << 20  # bytes one ioas_map / hwpt_s1_map may cover
    max_mapped_pages_per_context: int = 1 << 20  # 4 KiB pages mapped at once (ENOSPC)
    # Budgets per uid and for the daemon (iopfd.core.budgets; ENOSPC beyond).
    max_objects_per_uid: int = 65536
    max_objects_total: int = 1 << 20
    max_mapped_pages_per_uid: int = 1 << 20
    max_mapped_pages_total: int = 1 << 23
    max_attachments_per_uid: int = 131072  # (device, PASID) attachments one uid may hold
    max_attachments_total: int = 1 << 20
    max_dids_per_uid: int = 4096  # domain IDs one uid may hold on one IOMMU unit
    # A group its client leaves unanswered this long is answered INVALID by the daemon
    # (0: never, as the kernel). PRI credits are shared by a PF and its VFs, so one
    # owner that never answers would otherwise stall another owner's DMA for good.
    response_timeout_ns: int = 60_000_000_000
