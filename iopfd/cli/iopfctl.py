"""``iopfctl``: look at and poke a running iopfd.

Every command prints a human table by default and the daemon's own result map
with ``--json`` (``trace --json`` prints one JSON object per line; numbers stay
numbers there, while the tables say ``READ|WRITE`` and ``SUCCESS``). Exit statuses
are in :data:`EPILOG`; an expected failure is one line on stderr, never a traceback.
The socket comes from ``--socket``, then ``$IOPFD_SOCKET``, then /run/iopfd/iopfd.sock.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

from clients import IopfError, NotPermitted, Perm, ResponseCode, resolve_socket_path
from clients.completion import SHELLS, completion_script
from clients.sync import SyncClient
from iopfd.cli.tables import cell, key_values, render
from iopfd.protocol.models import TRACE_TOPICS, UNPLUG_GRACE_DEFAULT_S, UNPLUG_GRACE_MAX_S
from iopfd.protocol.rid import canonical_rid

EXIT_OK = 0
EXIT_ERRNO = 1
EXIT_USAGE = 2
EXIT_CONNECT = 3
EXIT_INTERRUPTED = 130

EPILOG = """exit status:
  0    success; also when the output pipe closed early (iopfctl trace | head)
  1    the daemon answered with an error (stderr: iopfctl: ERRNO: message)
  2    usage error
  3    iopfd cannot be reached, went away, did not answer in time, or (wait) was not
       ready within --timeout
  130  interrupted (Ctrl-C; trace stops with 0)"""


class OutputClosed(Exception):
    """stdout's reader went away (``iopfctl trace | head``): stop quietly."""


def _out(text: str) -> None:
    try:
        print(text, flush=True)
    except BrokenPipeError:
        raise OutputClosed from None


def tool_version() -> str:
    try:
        return package_version("iopfd")
    except PackageNotFoundError:  # run from a tree that was never installed
        return "unknown"


Handler = Callable[[SyncClient, argparse.Namespace], dict[str, Any]]


def _perm(text: str) -> int:
    """``r``, ``rw``, ``rwxp``, ``READ|WRITE`` or a number."""
    t = text.strip()
    try:
        return int(t, 0)
    except ValueError:
        pass
    letters = {"r": Perm.READ, "w": Perm.WRITE, "x": Perm.EXEC, "p": Perm.PRIV}
    value = 0
    if "|" in t or t.upper() in Perm.__members__:
        for name in t.upper().split("|"):
            if name not in Perm.__members__:
                raise argparse.ArgumentTypeError(f"unknown permission {name!r}")
            value |= Perm[name]
        return value
    for ch in t.lower():
        if ch not in letters:
            raise argparse.ArgumentTypeError(f"permission letters are r, w, x, p: {text!r}")
        value |= letters[ch]
    return value


def _rid(text: str) -> str:
    """The protocol's one RID parser: ``SSSS:BB:DD.F`` or ``BB:DD.F`` (segment 0)."""
    try:
        return canonical_rid(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < 1e6:
        raise argparse.ArgumentTypeError(f"seconds must be > 0: {text!r}")
    return value


def _count(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


# -- commands: each returns the result map; printing is separate -------------


def _plain(op: str) -> Handler:
    def run(c: SyncClient, a: argparse.Namespace) -> dict[str, Any]:
        return c.request(op)

    return run


#: Rows asked for per page by ``objects`` and ``pending`` (any number of rows fits).
PAGE_ROWS = 1024


def _paged(op: str) -> Handler:
    """Every row of a paged admin listing, one page per request, however many."""

    def run(c: SyncClient, a: argparse.Namespace) -> dict[str, Any]:
        rows: list[Any] = []
        offset: int | None = 0
        while offset is not None:
            page = c.request(op, offset=offset, limit=PAGE_ROWS)
            rows += page.get(op, [])
            offset = page.get("next")
        return {op: rows, "total": len(rows)}

    return run


def _rid_op(op: str) -> Handler:
    def run(c: SyncClient, a: argparse.Namespace) -> dict[str, Any]:
        return c.request(op, rid=a.rid)

    return run


def _unplug(c: SyncClient, a: argparse.Namespace) -> dict[str, Any]:
    # SyncClient.unplug waits as long as the grace period needs, whatever --timeout says.
    forced = c.unplug(a.rid, force=a.force, grace_s=a.grace)
    return {"forced": forced}


def _grace(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value <= UNPLUG_GRACE_MAX_S:
        raise argparse.ArgumentTypeError(
            f"--grace must be within 0..{UNPLUG_GRACE_MAX_S:g} seconds"
        )
    return value


def _inject(c: SyncClient, a: argparse.Namespace) -> dict[str, Any]:
    args: dict[str, Any] = {
        "rid": a.rid,
        "addr": a.addr,
        "perm": a.perm,
        "grpid": a.grpid,
        "last": not a.not_last,
    }
    if a.pasid is not None:
        args["pasid"] = a.pasid
    return c.request("inject", **args)


# -- human output ---------------------------------------------------------------


def _show_status(r: Mapping[str, Any]) -> str:
    head = key_values(
        [
            ("daemon", r.get("server")),
            ("protocol", r.get("version")),
            ("kernel", r.get("kernel")),
            ("uptime_s", r.get("uptime_s")),
            ("clients", r.get("clients")),
        ]
    )
    counters = r.get("counters") or {}
    rows = [{"counter": k, "value": v} for k, v in counters.items()]
    out = head + "\n\n" + render(["counter", "value"], rows)
    try:
        identity = (
            counters["responses"]
            + counters["auto_responses"]
            + counters["throttled"]
            + counters.get("pending", 0)
        )
        verdict = "holds" if counters["groups"] == identity else "DOES NOT HOLD"
        out += (
            f"\n\nexactly-once: groups {counters['groups']} == responses + auto_responses"
            f" + throttled + pending {identity}: {verdict}"
        )
    except (KeyError, TypeError):
        pass
    if counters.get("daemon_internal_errors"):
        out += (
            f"\nWARNING: {counters['daemon_internal_errors']} internal errors in the daemon"
            " (a bug: see its log)"
        )
    return out


def _show_devices(r: Mapping[str, Any]) -> str:
    rows = [dict(d, pri_status=_pri_status(d.get("pri_status"))) for d in r.get("devices", [])]
    cols = [
        "rid",
        "iommu",
        "state",
        "removing",
        "pri",
        "ats",
        "pasid_bits",
        "pf",
        "pri_enabled",
        "ats_enabled",
        "pri_status",
    ]
    if any("owner" in d for d in rows):
        cols += ["owner", "dev_id", "attached"]
    return render(cols, rows)


def _pri_status(st: object) -> str:
    if not isinstance(st, Mapping):
        return cell(st)
    flags = [k for k, v in st.items() if v]
    return ",".join(flags) or "ok"


def _show_topology(r: Mapping[str, Any]) -> str:
    iommus = list(r.get("iommus", []))
    cols = [
        "name",
        "segment",
        "prq_entries",
        "prq_used",
        "prs",
        "nest",
        "pasid_bits",
        "dids_in_use",
        "devices",
    ]
    present = [c for c in cols if any(c in u for u in iommus)] or cols
    extra = sorted({k for u in iommus for k in u} - set(cols))
    return render(present + extra, iommus) + "\n\n" + _show_devices(r)


def _show_objects(r: Mapping[str, Any]) -> str:
    objs = list(r.get("objects", []))
    base = ["id", "type", "client", "users"]
    rows = [
        {**{k: o.get(k) for k in base}, "details": {k: v for k, v in o.items() if k not in base}}
        for o in objs
    ]
    return render([*base, "details"], rows) if rows else "no objects"


def _show_pending(r: Mapping[str, Any]) -> str:
    rows = list(r.get("pending", []))
    if not rows:
        return "no pending groups"
    return render(
        ["client", "fault_id", "cookie", "rid", "dev_id", "pasid", "grpid", "age_s"], rows
    )


def _done(what: str) -> Callable[[Mapping[str, Any]], str]:
    return lambda r: what


def _show_unplug(r: Mapping[str, Any]) -> str:
    if r.get("forced"):
        return "unplugged (forced: its owner had not released it)"
    return "unplugged"


# -- trace --------------------------------------------------------------------


def _trace(c: SyncClient, a: argparse.Namespace) -> int:
    c.subscribe(a.topic or [])
    seen = 0
    deadline = None if a.duration is None else time.monotonic() + a.duration
    try:
        while a.count is None or seen < a.count:
            timeout = None
            if deadline is not None:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
            rec = c.next_trace(timeout=timeout)
            if rec is None:
                continue
            seen += 1
            if a.json:
                line = {"seq": rec.seq, "topic": rec.topic, "t": rec.t, **rec.fields}
                if rec.lost:
                    line["lost"] = rec.lost
                _out(json.dumps(line, default=str))
            else:
                lost = f"  (lost {rec.lost})" if rec.lost else ""
                fields = " ".join(f"{k}={_trace_value(k, v)}" for k, v in rec.fields.items())
                _out(f"{_clock(rec.t)}  {rec.topic:<13} {fields}{lost}")
    except KeyboardInterrupt:
        pass  # the normal way to stop following
    return EXIT_OK


def _clock(t: float) -> str:
    """A trace timestamp as local time of day with microseconds (seconds if not wall time)."""
    if t < 1e9:
        return f"{t:15.6f}"
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1e6):06d}"


def perm_name(value: int) -> str:
    """``READ|WRITE`` for 3; ``NONE`` for 0 (an inject's stop marker)."""
    names = [p.name or "" for p in Perm if value & p]
    rest = value & ~sum(int(p) for p in Perm)
    return "|".join(names + ([f"{rest:#x}"] if rest else [])) or "NONE"


def code_name(value: int) -> str:
    """``SUCCESS``/``INVALID``; any other code as its number."""
    try:
        return ResponseCode(value).name
    except ValueError:
        return str(value)


def _trace_value(key: str, value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        if key in ("addr", "iova", "gpa"):
            return f"{value:#x}"
        if key == "perm":
            return perm_name(value)
        if key == "code":
            return code_name(value)
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"), default=str)
    return cell(value)


# -- wait -----------------------------------------------------------------------


def _wait(socket_path: str, a: argparse.Namespace) -> int:
    """Until the daemon answers ``hello`` and ``status`` (``EPERM`` for a non-admin
    counts as an answer) and, with ``--attached RID``, RID is bound and attached; or
    until ``--timeout`` passes."""
    deadline = time.monotonic() + a.timeout
    last: object = None
    while True:
        remaining = deadline - time.monotonic()
        try:
            with SyncClient(socket_path, client_name="iopfctl", timeout=max(remaining, 0.1)) as c:
                assert c.hello_info is not None
                result: dict[str, Any] = {
                    "socket": socket_path,
                    "server": c.hello_info.server,
                    "kernel": c.hello_info.kernel,
                }
                with contextlib.suppress(NotPermitted):  # a non-admin's EPERM is an answer
                    c.status()
                if a.attached is None or _attached(c, a.attached):
                    if a.json:
                        _out(json.dumps(result))
                    else:
                        server, kernel = result["server"], result["kernel"]
                        _out(f"iopfd ready at {socket_path} ({server}, kernel {kernel})")
                    return EXIT_OK
                last = f"{a.attached} is not attached yet"
        except (OSError, ConnectionError) as e:
            last = e
        if time.monotonic() + 0.05 >= deadline:
            print(
                f"iopfctl: iopfd at {socket_path} not ready within {a.timeout:g} s: {last}",
                file=sys.stderr,
            )
            return EXIT_CONNECT
        time.sleep(0.05)


def _attached(c: SyncClient, rid: str) -> bool:
    """``rid`` is bound and something is attached to it (admin: ``topology``)."""
    devices = c.topology().get("devices", [])
    return any(d.get("rid") == rid and d.get("attached") for d in devices)


# -- parser -------------------------------------------------------------------

COMMANDS: dict[str, tuple[Handler, Callable[[Mapping[str, Any]], str], str]] = {
    "status": (_plain("status"), _show_status, "daemon version, uptime, clients and counters"),
    "devices": (_plain("devices"), _show_devices, "PCI functions and their state"),
    "topology": (_plain("topology"), _show_topology, "IOMMU units and devices with owners"),
    "objects": (_paged("objects"), _show_objects, "every connection's iommufd objects"),
    "pending": (_paged("pending"), _show_pending, "unanswered fault groups"),
    "inject": (_inject, _done("injected"), "write a raw page request into a device's PRQ"),
    "unplug": (
        _unplug,
        _show_unplug,
        "hot-remove a device: its owner is asked to release it first",
    ),
    "plug": (_rid_op("plug"), _done("plugged"), "bring a removed device back"),
    "reset": (
        _rid_op("reset"),
        _done("reset"),
        "function-level reset (clears PRI RF; groups stay pending)",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--socket",
        default=argparse.SUPPRESS,
        help="iopfd socket (default $IOPFD_SOCKET, then /run/iopfd/iopfd.sock)",
    )
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the daemon's result as JSON",
    )
    p = argparse.ArgumentParser(
        prog="iopfctl",
        parents=[common],
        description="Inspect and control a running iopfd.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"iopfctl {tool_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wp = sub.add_parser(
        "wait",
        parents=[common],
        help="wait until the daemon answers (exit 3 after --timeout)",
        description="Wait until iopfd answers hello and status on its socket.",
    )
    wp.add_argument(
        "--timeout",
        type=_seconds,
        default=10.0,
        metavar="S",
        help="give up after S seconds, exit 3 (default 10)",
    )
    wp.add_argument(
        "--attached",
        type=_rid,
        metavar="RID",
        help="also wait until a client has bound RID and attached it (admin)",
    )
    for name, (_, _, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        if name in ("inject", "unplug", "plug", "reset"):
            sp.add_argument(
                "rid", type=_rid, help="PCI requester ID, SSSS:BB:DD.F or BB:DD.F (segment 0)"
            )
        if name == "unplug":
            sp.add_argument(
                "--force",
                action="store_true",
                help="remove it now, even if its owner still holds it",
            )
            sp.add_argument(
                "--grace",
                type=_grace,
                default=UNPLUG_GRACE_DEFAULT_S,
                metavar="S",
                help="seconds the owner has to release it before "
                f"the removal is forced (default {UNPLUG_GRACE_DEFAULT_S:g})",
            )
        if name == "inject":
            sp.add_argument("--addr", type=_int, required=True, help="page address")
            sp.add_argument(
                "--perm",
                type=_perm,
                default=int(Perm.READ),
                help="r, w, rw, rwx, READ|WRITE or a number (default r)",
            )
            sp.add_argument("--grpid", type=_int, default=0, help="page request group index")
            sp.add_argument("--pasid", type=_int, default=None)
            sp.add_argument(
                "--not-last",
                action="store_true",
                help="leave LAST_PAGE clear (the group stays partial)",
            )
    tp = sub.add_parser(
        "trace",
        parents=[common],
        help="follow the trace stream live",
        description="Follow the trace stream until Ctrl-C, --count records or --duration.",
    )
    tp.add_argument(
        "--topic",
        action="append",
        choices=TRACE_TOPICS,
        help="only this topic (repeatable; default all)",
    )
    tp.add_argument("--count", type=_count, default=None, metavar="N", help="stop after N records")
    tp.add_argument(
        "--duration", type=_seconds, default=None, metavar="S", help="stop after S seconds"
    )
    cp = sub.add_parser(
        "completion",
        help="completion script for iopfctl and iopf-vmm (bash, zsh)",
        description="Print a completion script for iopfctl and iopf-vmm: "
        'eval "$(iopfctl completion bash)" in ~/.bashrc, '
        "source <(iopfctl completion zsh) in ~/.zshrc.",
    )
    cp.add_argument("shell", choices=SHELLS)
    return p


def completion(shell: str) -> str:
    """Both tools' completion for ``shell``: one script to source."""
    from clients.vmm import build_parser as vmm_parser

    return completion_script(build_parser(), shell) + completion_script(vmm_parser(), shell)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except OutputClosed:
        # Nobody reads stdout any more: stop quietly, and keep Python's own flush at
        # exit from failing on the closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _main(args: argparse.Namespace) -> int:
    if args.command == "completion":
        _out(completion(args.shell))
        return EXIT_OK
    socket_path = resolve_socket_path(getattr(args, "socket", None))
    args.json = getattr(args, "json", False)
    if args.command == "wait":
        return _wait(socket_path, args)
    try:
        client = SyncClient(socket_path, client_name="iopfctl", timeout=10.0)
    except TimeoutError:
        print(f"iopfctl: iopfd at {socket_path} did not answer within 10 s", file=sys.stderr)
        return EXIT_CONNECT
    except (OSError, ConnectionError) as e:
        print(f"iopfctl: cannot connect to iopfd at {socket_path}: {e}", file=sys.stderr)
        return EXIT_CONNECT
    except IopfError as e:
        print(f"iopfctl: {e.errno}: {e.message}", file=sys.stderr)
        return EXIT_ERRNO
    try:
        with client:
            if args.command == "trace":
                return _trace(client, args)
            handler, show, _ = COMMANDS[args.command]
            result = handler(client, args)
            _out(json.dumps(result, indent=2, default=str) if args.json else show(result))
            return EXIT_OK
    except IopfError as e:
        print(f"iopfctl: {e.errno}: {e.message or e.op or ''}", file=sys.stderr)
        return EXIT_ERRNO
    except TimeoutError:
        print(f"iopfctl: iopfd at {socket_path} did not answer in time", file=sys.stderr)
        return EXIT_CONNECT
    except (OSError, ConnectionError) as e:
        print(f"iopfctl: connection to iopfd at {socket_path} lost: {e}", file=sys.stderr)
        return EXIT_CONNECT


if __name__ == "__main__":
    sys.exit(main())
