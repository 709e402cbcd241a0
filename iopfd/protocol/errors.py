"""Errno names of the wire protocol and the exception that carries one to the wire."""

from __future__ import annotations

from typing import Final

EINVAL: Final = "EINVAL"
ENOENT: Final = "ENOENT"
EBUSY: Final = "EBUSY"
EPERM: Final = "EPERM"
EOPNOTSUPP: Final = "EOPNOTSUPP"
ENODEV: Final = "ENODEV"
ENOSPC: Final = "ENOSPC"
EPROTO: Final = "EPROTO"
EPROTONOSUPPORT: Final = "EPROTONOSUPPORT"

#: Every code a reply's ``error.code`` may carry (docs/protocol.md, *Requests*).
ERRNO_NAMES: Final = frozenset(
    {EINVAL, ENOENT, EBUSY, EPERM, EOPNOTSUPP, ENODEV, ENOSPC, EPROTO, EPROTONOSUPPORT}
)


class RequestError(Exception):
    """A request refused at the protocol boundary, with the errno name to reply with.

    ``request_id`` is the request's ``id`` when it was a valid uint32, else ``None``
    (the error frame then carries ``"id": null``). ``EPROTO`` closes the connection.
    """

    def __init__(self, errno: str, message: str, request_id: int | None = None) -> None:
        if errno not in ERRNO_NAMES:
            raise ValueError(f"not a protocol errno name: {errno!r}")
        super().__init__(f"{errno}: {message}")
        self.errno = errno
        self.message = message
        self.request_id = request_id

    @property
    def closes_connection(self) -> bool:
        return self.errno == EPROTO
