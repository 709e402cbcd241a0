"""One client's view (``struct iommufd_ctx``) with every operation it may call.

The operations live with the object kind they act on, as in ``drivers/iommu/iommufd/``:
devices, attach, reset and DMA in ``device.py``, HWPTs in ``hw_pagetable.py``, IOAS in
``ioas.py``, fault queues and answers in ``eventq.py``; the object table and
``destroy`` in ``main.py``. Every method checks its arguments, raises ``CoreError``
with the errno of docs/protocol.md, and is complete when it returns (a detach has
drained, an unmap has invalidated). Objects of another context are invisible:
``ENOENT``.
"""

from __future__ import annotations

from iopfd.core.device import DeviceOps
from iopfd.core.eventq import FaultOps
from iopfd.core.hw_pagetable import HwptOps


class Context(DeviceOps, HwptOps, FaultOps):
    """One client connection's objects and the operations on them."""


__all__ = ["Context"]
