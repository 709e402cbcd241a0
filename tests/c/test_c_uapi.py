"""The C side of the kernel uAPI, against a live daemon.

``make c-build`` builds ``libiopf-preload.so`` (and an AddressSanitizer + UBSan
variant), the C test program ``iopf-ctest`` linked against the sanitized library, and
the C reference VMM. Each ``TEST(name)`` of ``tests/c/*.c`` is one pytest case: the
program runs that case alone against a module-wide daemon, and afterwards the daemon
must be at rest with the exactly-once identity
``groups == responses + auto_responses + throttled + pending``.

Cases that need an op the daemon does not have yet (``fault_fd``, ``hw_info``,
``ioas_map`` without ``iova``, ``attach`` of an IOAS, and the pending ops of
docs/uapi.md: ``ioas_iova_ranges``, ``ioas_allow_iovas``, ``ioas_copy``,
``ioas_map_file``, ``option``) are skipped and say which; the capabilities are probed
over the wire before the first case runs. Cases named ``standin_*`` run against a
stand-in speaking those ops' wire shapes.
"""

from __future__ import annotations

import array
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "c"
CTEST = BUILD / "asan" / "iopf-ctest"
PRELOAD = BUILD / "libiopf-preload.so"
VMM = ROOT / "clients" / "c" / "iopf-vmm-c"
IOPFD = Path(sys.executable).parent / "iopfd"
SKIP_RC = 77
PENDING_OPS = ("ioas_iova_ranges", "ioas_allow_iovas", "ioas_copy", "ioas_map_file", "option")
CASE_TIMEOUT_S = 90

pytestmark = pytest.mark.integration


def _case_names(standin: bool = False) -> list[str]:
    """TEST(name)s of tests/c; those named standin_* run against the stand-in only."""
    names: list[str] = []
    for src in sorted((ROOT / "tests" / "c").glob("test_*.c")):
        names += re.findall(r"^TEST\((\w+)\)", src.read_text(), flags=re.M)
    return [n for n in names if n.startswith("standin_") == standin]


# --- a frame-level client (no clients/ import: the C side must not lean on it) --------


class Wire:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.buf = b""
        self.next_id = 1
        self.fds: list[int] = []
        self.hello = self.call("hello", version=2, client="c-uapi-tests")

    def _frame(self) -> dict[str, Any]:
        while True:
            if len(self.buf) >= 4:
                (n,) = struct.unpack(">I", self.buf[:4])
                if len(self.buf) >= 4 + n:
                    msg = msgpack.unpackb(self.buf[4 : 4 + n], raw=False)
                    self.buf = self.buf[4 + n :]
                    return msg  # type: ignore[no-any-return]
            data, anc, _flags, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(16))
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[: len(payload) - len(payload) % 4])
                    self.fds += list(fds)
            if not data:
                raise EOFError("iopfd closed the connection")
            self.buf += data

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        rid = self.next_id
        self.next_id += 1
        body = msgpack.packb({"op": op, "id": rid, **args})
        self.sock.sendall(struct.pack(">I", len(body)) + body)
        while True:
            msg = self._frame()
            if msg.get("id") == rid:
                return msg

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        msg = self.request(op, **args)
        assert msg.get("ok"), f"{op}: {msg.get('error')}"
        return msg.get("result") or {}

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.sock.close()


# --- the daemon --------------------------------------------------------------------------


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    socket: str
    log_path: Path
    caps: list[str] = field(default_factory=list)

    def status(self) -> tuple[dict[str, int], int, int]:
        w = Wire(self.socket)
        try:
            st = w.call("status")
            pending = len(w.call("pending").get("pending", []))
        finally:
            w.close()
        return st["counters"], st["clients"], pending

    def assert_at_rest(self) -> None:
        """After a C case exits: only our status connection left, and every group
        answered exactly once (or pending)."""
        deadline = time.monotonic() + 10
        while True:
            counters, clients, pending = self.status()
            total = (
                counters["responses"] + counters["auto_responses"] + counters["throttled"] + pending
            )
            if (clients == 1 and counters["groups"] == total) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert clients == 1, f"{clients - 1} connection(s) still open after the case"
        assert counters["groups"] == total, (
            f"exactly-once identity broken: groups {counters['groups']} != responses "
            f"{counters['responses']} + auto {counters['auto_responses']} + throttled "
            f"{counters['throttled']} + pending {pending}"
        )
        assert counters.get("daemon_internal_errors", 0) == 0, self.log_path.read_text()[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _start_daemon(tmp: Path, *args: str) -> Daemon:
    sock = str(tmp / "iopfd.sock")
    notify = str(tmp / "notify.sock")
    ready = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ready.bind(notify)
    ready.settimeout(0.2)
    log_path = tmp / "iopfd.log"
    env = dict(os.environ, NOTIFY_SOCKET=notify)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(IOPFD), "--socket", sock, "--log-format", "json", *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
        )
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                if b"READY=1" in ready.recv(4096):
                    break
            except TimeoutError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"iopfd never said READY=1:\n{log_path.read_text()}")
    finally:
        ready.close()
    d = Daemon(proc, sock, log_path)
    d.caps = _probe(sock)
    return d


def _probe(path: str) -> list[str]:
    """Which of the ops the C side builds on this daemon has (see the module doc)."""
    caps: list[str] = []
    w = Wire(path)
    try:
        caps.append("k" + str(w.hello.get("kernel", "")).replace(".", ""))
        rid = w.call("devices")["devices"][0]["rid"]
        fault_id = w.call("fault_alloc")["fault_id"]
        if w.request("fault_fd", fault_id=fault_id).get("ok") and w.fds:
            caps.append("fault_fd")
        ioas = w.call("ioas_alloc")["ioas_id"]
        if w.request("ioas_map", ioas_id=ioas, length=4096, perm=3).get("ok"):
            caps.append("auto_iova")
        dev_id = w.call("bind", rid=rid)["dev_id"]
        if w.request("hw_info", dev_id=dev_id).get("ok"):
            caps.append("hw_info")
        reply = w.request("attach", dev_id=dev_id, pt_id=ioas)
        if reply.get("ok") and "hwpt_id" in (reply.get("result") or {}):
            caps.append("auto_domain")
        # The ops docs/uapi.md lists as pending: present unless "unknown op".
        for op in PENDING_OPS:
            error = w.request(op).get("error") or {}
            if not str(error.get("message", "")).startswith("unknown op"):
                caps.append(op)
    finally:
        w.close()
    return caps


@pytest.fixture(scope="module")
def c_build() -> None:
    if not (shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")):
        pytest.skip("no C compiler (make test installs gcc where it can)")
    r = subprocess.run(
        ["make", "-s", "--no-print-directory", "-C", str(ROOT), "c-build"],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        pytest.fail(f"make c-build failed:\n{r.stdout}\n{r.stderr}")


@pytest.fixture(scope="module")
def daemon(c_build: None) -> Iterator[Daemon]:
    tmp = Path(tempfile.mkdtemp(prefix="iopfd-c-"))
    d = _start_daemon(tmp)
    try:
        yield d
    finally:
        d.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon_612(c_build: None) -> Iterator[Daemon]:
    tmp = Path(tempfile.mkdtemp(prefix="iopfd-c612-"))
    d = _start_daemon(tmp, "--kernel", "6.12")
    try:
        yield d
    finally:
        d.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _env(d: Daemon) -> dict[str, str]:
    return dict(
        os.environ,
        IOPFD_SOCKET=d.socket,
        IOPF_TEST_CAPS=",".join(d.caps),
        ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:exitcode=99",
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1",
    )


def _run_case(d: Daemon, name: str) -> None:
    r = subprocess.run(
        [str(CTEST), name],
        env=_env(d),
        capture_output=True,
        text=True,
        timeout=CASE_TIMEOUT_S,
        check=False,
    )
    if r.returncode == SKIP_RC:
        pytest.skip(r.stdout.strip())
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    d.assert_at_rest()


@pytest.mark.parametrize("name", _case_names())
def test_c_case(daemon: Daemon, name: str) -> None:
    _run_case(daemon, name)


# --- a stand-in for the daemon's `fault_fd` op, until the daemon has it ----------------------


RECORD = struct.Struct("<IIIIIIQII")  # struct iommu_hwpt_pgfault


class StandIn:
    """Just enough of iopfd for a fault fd handed out by `fault_fd` (SCM_RIGHTS, one
    SOCK_SEQPACKET packet per group) and answered with v2's `page_response`."""

    def __init__(self, path: str) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(4)
        self.path = path
        self.pending = {1, 2}
        self.ours: list[socket.socket] = []
        self.next_obj = 100
        self.next_iova = 0x10000000
        self.options: dict[tuple[str, int], int] = {}
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            buf = b""
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                while len(buf) >= 4 and len(buf) >= 4 + struct.unpack(">I", buf[:4])[0]:
                    (n,) = struct.unpack(">I", buf[:4])
                    msg = msgpack.unpackb(buf[4 : 4 + n], raw=False)
                    buf = buf[4 + n :]
                    self._handle(conn, msg)

    def _send(self, conn: socket.socket, msg: dict[str, Any], fd: int | None = None) -> None:
        body = msgpack.packb(msg)
        frame = struct.pack(">I", len(body)) + body
        if fd is None:
            conn.sendall(frame)
        else:
            conn.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])

    def _handle(self, conn: socket.socket, msg: dict[str, Any]) -> None:
        op, rid = msg.get("op"), msg.get("id")
        ok: dict[str, Any] = {}
        if op == "hello":
            ok = {"version": 2, "server": "stand-in", "max_frame": 1 << 20, "admin": False}
        elif op == "fault_alloc":
            ok = {"fault_id": 7}
        elif op == "fault_fd":
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            ours.send(RECORD.pack(2, 3, 0, 11, 1, 0, 0x1000, 0, 1))
            ours.send(
                RECORD.pack(5, 3, 9, 12, 3, 0, 0xFFFFE000, 0, 2)
                + RECORD.pack(7, 3, 9, 12, 3, 0, 0xFFFFF000, 0, 2)
            )
            self.ours.append(ours)
            self._send(conn, {"id": rid, "ok": True, "result": {}}, theirs.fileno())
            theirs.close()
            return
        elif op == "page_response":
            done = 0
            for r in msg["responses"]:
                if r["code"] not in (0, 1) or r["cookie"] not in self.pending:
                    break
                self.pending.discard(r["cookie"])
                done += 1
            if not done:
                self._send(
                    conn,
                    {
                        "id": rid,
                        "ok": False,
                        "error": {"code": "EINVAL", "message": "bad first entry"},
                    },
                )
                return
            ok = {"done": done}
        elif op == "destroy":
            ok = {}
        elif op == "ioas_alloc":
            self.next_obj += 1
            ok = {"ioas_id": self.next_obj}
        elif op in ("ioas_map", "ioas_map_file", "ioas_copy"):
            iova = msg.get("iova", msg.get("dst_iova"))
            if iova is None:
                iova, self.next_iova = self.next_iova, self.next_iova + msg["length"]
            ok = {"iova": iova}
        elif op in ("ioas_unmap", "ioas_allow_iovas"):
            ok = {}
        elif op == "ioas_iova_ranges":
            # an attached VT-d domain: 48-bit aperture around the interrupt window
            ok = {
                "ranges": [
                    {"start": 0, "last": 0xFEDFFFFF},
                    {"start": 0xFEF00000, "last": (1 << 48) - 1},
                ],
                "iova_alignment": 4096,
            }
        elif op == "option":
            key = (msg["option"], msg.get("object_id", 0))
            if msg["action"] == "set":
                self.options[key] = msg["val64"]
            default = 1 if msg["option"] == "huge_pages" else 0
            ok = {"val64": self.options.get(key, default)}
        else:
            self.errors.append(f"unexpected op {op}")
            self._send(
                conn, {"id": rid, "ok": False, "error": {"code": "EINVAL", "message": "unknown op"}}
            )
            return
        self._send(conn, {"id": rid, "ok": True, "result": ok})

    def close(self) -> None:
        self.listener.close()
        for s in self.ours:
            s.close()


@pytest.mark.parametrize("name", _case_names(standin=True))
def test_c_case_against_the_standin(c_build: None, tmp_path: Path, name: str) -> None:
    standin = StandIn(str(tmp_path / "standin.sock"))
    try:
        env = dict(
            os.environ,
            IOPFD_SOCKET=standin.path,
            ASAN_OPTIONS="detect_leaks=1",
            UBSAN_OPTIONS="halt_on_error=1",
        )
        r = subprocess.run(
            [str(CTEST), name],
            env=env,
            capture_output=True,
            text=True,
            timeout=CASE_TIMEOUT_S,
            check=False,
        )
        assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
        assert not standin.errors, standin.errors
        if "fault_fd" in name:
            assert len(standin.ours) == 1, "the fault fd came from the stand-in's fault_fd"
            assert standin.pending == set(), "every group answered"
    finally:
        standin.close()


# --- the C reference VMM, loaded the way a real program is: LD_PRELOAD ---------------------


def _run_vmm(d: Daemon, *args: str) -> str:
    env = dict(os.environ, IOPFD_SOCKET=d.socket, LD_PRELOAD=str(PRELOAD))
    r = subprocess.run(
        [str(VMM), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=CASE_TIMEOUT_S,
        check=False,
    )
    assert r.returncode == 0, f"iopf-vmm-c exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "invariants     ok" in r.stdout, r.stdout
    d.assert_at_rest()
    return r.stdout


def test_c_vmm_paging_with_pasids(daemon: Daemon) -> None:
    out = _run_vmm(daemon, "--pages", "64")
    assert "mode           paging" in out, out
    assert re.search(r"pasids\s+\d+", out)


def test_c_vmm_nested(daemon: Daemon) -> None:
    out = _run_vmm(daemon, "--nested", "--pages", "32", "--pattern", "random")
    assert "mode           nested" in out, out


def test_c_vmm_falls_back_to_nested_on_a_612_kernel(daemon_612: Daemon) -> None:
    # 6.12: a paging HWPT cannot be fault-capable and there is no PASID attach.
    out = _run_vmm(daemon_612, "--pages", "32")
    assert "mode           nested" in out, out
