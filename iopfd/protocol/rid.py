"""The one requester-ID parser of the wire contract: ``SSSS:BB:DD.F`` or the short
``BB:DD.F`` (segment 0, as ``lspci`` prints it), hex, any case.

iopfctl, iopf-vmm, the client library and the daemon's argument models all use it, so
a bad RID gets the same message from each. ``hwmodel.Rid.parse`` (which may import
nothing of ours) accepts exactly the same forms with the same messages;
``tests/protocol/test_rid.py`` pins the two together.
"""

from __future__ import annotations

import re
from typing import Final

RID_FORMS: Final = "[SSSS:]BB:DD.F"
_RID_RE: Final = re.compile(r"^(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$")


def parse_rid(text: str) -> tuple[int, int, int, int]:
    """``(segment, bus, device, function)`` of ``text``; ``ValueError`` with the
    message every tool shows if it is not a requester ID."""
    m = _RID_RE.match(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(
            f"malformed requester ID {text!r}: expected {RID_FORMS} (hex), e.g. 0000:3a:00.0 "
            "or 3a:00.0"
        )
    segment, bus, dev, fn = int(m[1] or "0", 16), int(m[2], 16), int(m[3], 16), int(m[4])
    if dev > 0x1F:
        raise ValueError(f"device {dev:#x} out of range")
    return segment, bus, dev, fn


def canonical_rid(text: str) -> str:
    """``text`` in the daemon's own spelling, ``ssss:bb:dd.f`` lower case."""
    segment, bus, dev, fn = parse_rid(text)
    return f"{segment:04x}:{bus:02x}:{dev:02x}.{fn:x}"


__all__ = ["RID_FORMS", "canonical_rid", "parse_rid"]
