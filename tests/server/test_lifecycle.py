"""Connections and the daemon coming and going: nothing a client owned is forgotten."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from iopfd_flows import ACCEL0, ACCEL1, IOVA, READ, fault_event, fault_path
from iopfd_harness import DaemonProc, finish, iopfd_command, start_daemon
from iopfd_rawclient import RawClient, frame


def _state_of(admin: RawClient, rid: str) -> object:
    return next(d["state"] for d in admin.call("devices")["devices"] if d["rid"] == rid)


def _pending_of(admin: RawClient, fault_id: int) -> list[dict[str, object]]:
    return [r for r in admin.call("pending")["pending"] if r["fault_id"] == fault_id]


def test_disconnect_with_pending_groups_answers_them_and_frees_the_device(
    iopfd: DaemonProc,
) -> None:
    with iopfd.client(client="admin") as admin:
        c = iopfd.client(client="leaver")
        p = fault_path(c)
        c.start("dma", dev_id=p.dev_id, iova=IOVA, length=4096, perm=READ)
        fault_event(c)
        for grpid in (1, 2):
            c.call("inject", rid=ACCEL0, addr=0x20_0000 * grpid, perm=READ, grpid=grpid, last=True)
        assert len(_pending_of(admin, p.fault_id)) == 3
        before = admin.call("status")["counters"]
        c.close()
        deadline = time.monotonic() + 5
        while _pending_of(admin, p.fault_id) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _pending_of(admin, p.fault_id) == []
        after = admin.call("status")["counters"]
        assert after["auto_responses"] - before["auto_responses"] == 3
        assert after["groups"] == (
            after["responses"]
            + after["auto_responses"]
            + after["throttled"]
            + len(admin.call("pending")["pending"])
        )
        admin.call("bind", rid=ACCEL0)  # released with the connection


def test_protocol_violation_releases_what_the_connection_owned(iopfd: DaemonProc) -> None:
    with iopfd.client(client="admin") as admin:
        c = iopfd.client()
        p = fault_path(c)
        c.call("inject", rid=ACCEL0, addr=0x1000, perm=READ, grpid=3, last=True)
        fault_event(c)
        c.send_raw(b"\0\0\0\0")
        assert [f["error"]["code"] for f in c.expect_closed()] == ["EPROTO"]
        c.close()
        deadline = time.monotonic() + 5
        while _pending_of(admin, p.fault_id) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _pending_of(admin, p.fault_id) == []
        admin.call("bind", rid=ACCEL0)


def test_sigterm_answers_pending_groups_removes_the_socket_and_exits_0(tmp_path: Path) -> None:
    d = start_daemon(tmp_path)
    c = d.client()
    p = fault_path(c)
    c.start("dma", dev_id=p.dev_id, iova=IOVA, length=4096, perm=READ)
    fault_event(c)
    c.call("inject", rid=ACCEL0, addr=0x40_0000, perm=READ, grpid=4, last=True)
    assert d.stop(signal.SIGTERM) == 0
    assert not os.path.exists(d.socket)
    c.expect_closed()  # the daemon closed the connection on its way out
    c.close()
    stopped = [line for line in d.log() if line.get("event") == "stopped"]
    assert len(stopped) == 1
    counters = stopped[0]["counters"]
    assert counters["pending"] == 0
    assert counters["groups"] >= 2
    assert counters["groups"] == (
        counters["responses"] + counters["auto_responses"] + counters["throttled"]
    )


def test_sigint_also_shuts_down_cleanly(tmp_path: Path) -> None:
    d = start_daemon(tmp_path)
    assert d.stop(signal.SIGINT) == 0
    assert not os.path.exists(d.socket)


def test_a_client_that_stops_reading_is_dropped_past_max_outbuf(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, "[limits]\nmax_outbuf = 131072\nmax_frame = 65536\n")
    try:
        with d.client(client="admin") as admin:
            slow = d.client(client="slow")
            slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            p = fault_path(slow)
            slow.call("inject", rid=ACCEL0, addr=0x1000, perm=READ, grpid=1, last=True)
            # Ask for far more reply bytes than max_outbuf plus the socket buffers hold,
            # and never read them.
            slow.sock.setblocking(True)
            burst = b"".join(frame({"op": "devices", "id": 1000 + i}) for i in range(2000))
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                slow.sock.sendall(burst)
            deadline = time.monotonic() + 10
            while (
                admin.call("status")["counters"].get("daemon_outbuf_overflows", 0) == 0
                and time.monotonic() < deadline
            ):
                time.sleep(0.02)
            assert admin.call("status")["counters"]["daemon_outbuf_overflows"] == 1
            slow.close()
            # Its release runs after the drop, in steps (docs/protocol.md): wait for it,
            # then everything it owned is gone, its group answered.
            deadline = time.monotonic() + 10
            while _state_of(admin, ACCEL0) != "free" and time.monotonic() < deadline:
                time.sleep(0.02)
            assert _pending_of(admin, p.fault_id) == []
            admin.call("bind", rid=ACCEL0)
            # The neighbour was never stalled.
            assert admin.call("devices")["devices"]
        d.assert_identity_at_rest()
    finally:
        finish(d)


def test_dma_in_flight_and_objects_per_connection_are_capped_with_enospc(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, "[limits]\nmax_dma_inflight = 2\nmax_objects = 6\n")
    try:
        with d.client() as c:
            p = fault_path(c)
            ids = [
                c.start("dma", dev_id=p.dev_id, iova=IOVA + 0x1000 * i, length=4096, perm=READ)
                for i in range(2)
            ]
            assert c.error("dma", dev_id=p.dev_id, iova=IOVA, length=4096, perm=READ) == "ENOSPC"
            cookies = [fault_event(c)["cookie"] for _ in range(2)]
            c.call(
                "page_response",
                fault_id=p.fault_id,
                responses=[{"cookie": k, "code": 1} for k in cookies],
            )
            assert {c.wait_reply(i)["result"]["status"] for i in ids} == {"invalid"}
            c.start("dma", dev_id=p.dev_id, iova=IOVA, length=4096, perm=READ)
            fault_event(c)
            c.call("ioas_alloc")
            c.call("ioas_alloc")
            assert c.error("ioas_alloc") == "ENOSPC"
            with d.client() as other:  # the limit is per connection
                other.call("fault_alloc")
    finally:
        finish(d)


SMALL_TOPOLOGY = """
[[iommu]]
name = "dmar9"

[[function]]
rid = "0000:10:00.0"
iommu = "dmar9"
ats = true
pri = true
pri_capacity = 32
pasid_bits = 8
"""


def test_topology_from_a_file_or_inline_replaces_the_default(tmp_path: Path) -> None:
    (tmp_path / "topo.toml").write_text(SMALL_TOPOLOGY)
    inline = SMALL_TOPOLOGY.replace("[[iommu]]", "[[topology.iommu]]").replace(
        "[[function]]", "[[topology.function]]"
    )
    for config in ('topology_file = "topo.toml"\n', inline):
        d = start_daemon(tmp_path, config)
        try:
            with d.client() as c:
                rows = c.call("devices")["devices"]
                assert [(r["rid"], r["iommu"], r["pasid_bits"]) for r in rows] == [
                    ("0000:10:00.0", "dmar9", 8)
                ]
        finally:
            finish(d)


def test_a_bad_topology_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[topology.function]]\nrid = "zz"\n')
    proc = subprocess.run(
        [*iopfd_command(), "--config", str(cfg), "--socket", str(tmp_path / "s.sock")],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr


def test_a_second_daemon_refuses_a_live_socket_and_the_first_keeps_serving(
    iopfd: DaemonProc,
) -> None:
    proc = subprocess.run(
        [*iopfd_command(), "--socket", iopfd.socket, "--log-format", "json"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 1
    assert b"another daemon" in proc.stderr
    with iopfd.client() as c:
        assert c.call("devices")["devices"]


def test_a_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "run" / "iopfd.sock"
    path.parent.mkdir()
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()
    d = start_daemon(tmp_path)
    try:
        with d.client() as c:
            assert c.call("devices")["devices"]
    finally:
        finish(d)


def test_a_bad_config_exits_2_with_the_reason(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[limits]\nmax_pendng = 3\n")
    proc = subprocess.run(
        [*iopfd_command(), "--config", str(cfg), "--socket", str(tmp_path / "s.sock")],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert b"max_pendng" in proc.stderr


def test_logs_are_json_lines_with_the_connection_bound(tmp_path: Path) -> None:
    d = start_daemon(tmp_path)
    try:
        with d.client(client="logged") as c:
            c.call("bind", rid=ACCEL1)
    finally:
        finish(d)
    lines = d.log()
    assert all("raw" not in line for line in lines), lines
    assert all({"event", "level", "timestamp"} <= line.keys() for line in lines)
    bind = next(line for line in lines if line["event"] == "bind")
    assert bind["rid"] == ACCEL1 and bind["client"].startswith("logged#")
    assert {"conn", "peer_pid", "peer_uid"} <= bind.keys()


def test_a_result_larger_than_max_frame_is_enospc_and_the_session_goes_on(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, "[limits]\nmax_frame = 65536\n")
    try:
        with d.client() as c:
            assert c.hello_result is not None and c.hello_result["max_frame"] == 65536
            for _ in range(1500):  # about 48 bytes each in the listing
                c.call("ioas_alloc")
            assert c.error("objects") == "ENOSPC"
            assert c.call("ioas_alloc")["ioas_id"] > 0
    finally:
        finish(d)


def test_a_connection_that_never_says_hello_is_closed_with_eproto(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, "[limits]\nhello_timeout_s = 0.3\n")
    try:
        silent = d.client(hello=False)
        t0 = time.monotonic()
        frames = silent.expect_closed(timeout=5)
        assert time.monotonic() - t0 < 4
        assert [f["error"]["code"] for f in frames] == ["EPROTO"]
        silent.close()
        with d.client() as c:  # a client that says hello in time is served
            assert c.call("devices")["devices"]
    finally:
        finish(d)


def test_connections_beyond_max_connections_get_enospc_and_are_closed(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, "[limits]\nmax_connections = 2\n")
    try:
        first = d.client(client="one")
        deadline = time.monotonic() + 5  # the harness's readiness probe must be gone
        while first.call("status")["clients"] != 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        second = d.client(client="two")
        third = d.client(hello=False)
        frames = third.expect_closed(timeout=5)
        assert [(f["id"], f["error"]["code"]) for f in frames] == [(None, "ENOSPC")]
        third.close()
        assert first.call("devices")["devices"] and second.call("devices")["devices"]
        second.close()
        deadline = time.monotonic() + 5
        while True:  # the freed slot is taken by the next client
            try:
                with d.client(client="again") as again:
                    counters = again.call("status")["counters"]
                    assert counters["daemon_connections_refused"] >= 1
                    break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        first.close()
    finally:
        finish(d)
