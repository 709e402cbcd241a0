"""``python -m clients.vmm``: the same as ``iopf-vmm``."""

import sys

from clients.vmm import main

sys.exit(main())
