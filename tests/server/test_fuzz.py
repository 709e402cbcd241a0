"""Random requests of every op with arbitrary argument values: the daemon answers each
with a reply (never an internal error), and stays alive and exact.

An ``unplug`` of a device this connection holds waits for it to be released (PROTOCOL.md
v2 item 9): the test plays the owner and unbinds on each ``device_request``, so that
every reply comes without waiting out the grace period."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from iopfd_harness import DaemonProc
from iopfd_rawclient import RawClient, frame

from iopfd.protocol.models import OP_MODELS

INTS = st.one_of(
    st.integers(0, 16),
    st.integers(-(2**63), 2**64 - 1),
    st.sampled_from([4096, 0x10_0000, 2**32 - 1, 2**32, 2**64 - 4096]),
)
SCALARS = st.one_of(
    INTS,
    st.booleans(),
    st.none(),
    st.text(max_size=16),
    st.sampled_from(["0000:3a:00.0", "0000:5b:00.0", "fault", "vtd_s1"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)
# Keys of real arguments most of the time, so that requests get past validation.
KEYS = st.sampled_from(sorted({k for m in OP_MODELS.values() for k in m.model_fields} | {"bogus"}))
REQUEST = st.tuples(
    st.sampled_from(sorted(set(OP_MODELS) - {"hello"})), st.dictionaries(KEYS, VALUES, max_size=6)
)


RELEASE_ID_BASE = 1 << 20


def _wait_releasing(c: RawClient, rid: int) -> dict[str, Any]:
    """The reply to ``rid``, unbinding every device the daemon asks back meanwhile."""
    while True:
        if rid in c.replies:
            return c.replies.pop(rid)
        requests = [e for e in c.events if e["event"] == "device_request"]
        c.events = [e for e in c.events if e["event"] != "device_request"]
        for ev in requests:
            # An id far from the fuzzed ones (1..12); its reply is not looked at.
            c.start("unbind", id=RELEASE_ID_BASE + ev["seq"], dev_id=ev["dev_id"])
        msg = c.recv_frame()
        if "event" in msg:
            c.events.append(msg)
        elif msg.get("id") == rid:
            return msg
        else:
            c.replies[msg.get("id")] = msg


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(requests=st.lists(REQUEST, min_size=1, max_size=12))
def test_random_requests_are_answered_without_internal_errors(
    daemon: DaemonProc, requests: list[tuple[str, dict[str, Any]]]
) -> None:
    with RawClient(daemon.socket, client="fuzz") as c:
        data = b"".join(
            frame({**args, "op": op, "id": i}) for i, (op, args) in enumerate(requests, start=1)
        )
        c.send_raw(data)
        for i, (op, _) in enumerate(requests, start=1):
            if op == "dma":
                c.sock.settimeout(10)
            reply = _wait_releasing(c, i)
            if not reply["ok"]:
                assert not reply["error"]["message"].startswith("internal error"), reply
    counters = daemon.assert_identity_at_rest()
    assert counters.get("daemon_internal_errors", 0) == 0
    assert daemon.alive()
