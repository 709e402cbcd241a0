"""Exceptions raised by the iopfd clients.

Every error the daemon returns becomes an :class:`IopfError` whose ``errno``
attribute is the errno name from the reply (``"EBUSY"``, ``"ENOENT"``, ...).
Programs should branch on ``errno`` (or on the subclass), never on the message::

    try:
        dev_id = await client.bind("0000:3a:00.0")
    except IopfError as e:
        if e.errno == "EBUSY":
            ...  # another VMM holds the device

A connection that is lost, for any reason, fails every call still waiting for
its reply with :class:`ConnectionLost` (a :class:`ConnectionError`). The
library never reconnects on its own: whether and how to start over (rebind,
re-create objects) is the caller's decision, since everything the connection
owned was released by the daemon when it closed.
"""

from __future__ import annotations


class IopfError(Exception):
    """An error reply from iopfd: ``errno`` is the errno name, ``message`` for people."""

    errno: str = ""

    def __init__(self, errno: str, message: str = "", op: str | None = None) -> None:
        self.errno = errno
        self.message = message
        self.op = op
        where = f"{op}: " if op else ""
        super().__init__(f"{where}{errno}: {message}" if message else f"{where}{errno}")


class InvalidArgument(IopfError):
    """``EINVAL``: a malformed or out-of-range argument, or a state that forbids it."""

    errno = "EINVAL"


class NoSuchObject(IopfError):
    """``ENOENT``: no such object (or device) for this connection."""

    errno = "ENOENT"


class Busy(IopfError):
    """``EBUSY``: in use, or owned by another connection."""

    errno = "EBUSY"


class NotPermitted(IopfError):
    """``EPERM``: an admin operation from a peer that is not admin."""

    errno = "EPERM"


class NotSupported(IopfError):
    """``EOPNOTSUPP``: the hardware or the device cannot do it (no PRI, no PASID, ...)."""

    errno = "EOPNOTSUPP"


class NoDevice(IopfError):
    """``ENODEV``: the device was hot-removed."""

    errno = "ENODEV"


class NoSpace(IopfError):
    """``ENOSPC``: a limit was hit (objects per connection, DMAs in flight)."""

    errno = "ENOSPC"


class ProtocolViolation(IopfError):
    """``EPROTO``: the daemon saw a protocol violation (it closes the connection), or a
    reply's result does not fit the op's result model (that call fails, nothing else)."""

    errno = "EPROTO"


class VersionMismatch(IopfError):
    """``EPROTONOSUPPORT``: the daemon does not speak this protocol version."""

    errno = "EPROTONOSUPPORT"


ERRORS: dict[str, type[IopfError]] = {
    cls.errno: cls
    for cls in (
        InvalidArgument,
        NoSuchObject,
        Busy,
        NotPermitted,
        NotSupported,
        NoDevice,
        NoSpace,
        ProtocolViolation,
        VersionMismatch,
    )
}


def error_from_reply(code: str, message: str, op: str | None = None) -> IopfError:
    """The exception for an error reply; an unknown errno gives a plain IopfError."""
    cls = ERRORS.get(code, IopfError)
    return cls(code, message, op)


class ConnectionLost(ConnectionError):
    """The connection to iopfd is gone; calls waiting for a reply fail with this.

    Everything the connection owned (bound devices, objects, pending fault
    groups) was released by the daemon. Open a new client to start over.
    """


class EventGap(Exception):
    """Events were missed: an event's ``seq`` was not one more than the previous one.

    Raised once by the fault and trace iterators at the point of the gap; they
    keep working afterwards. On a healthy daemon this never happens.
    """

    def __init__(self, expected: int, got: int) -> None:
        self.expected = expected
        self.got = got
        super().__init__(f"event seq gap: expected {expected}, got {got} ({got - expected} missed)")
