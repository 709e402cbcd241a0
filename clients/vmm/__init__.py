"""``iopf-vmm``: the reference VMM emulator, a complete fault-handling loop on iopfd.

It binds devices, builds IOAS + fault queue + fault-capable HWPTs (optionally
nested), attaches the RID and PASIDs, then plays a guest workload whose buffers
start unmapped and serves every page request like a demand-paging VMM. See
``iopf-vmm --help`` and docs/clients.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version

import trio

from clients.client import IopfClient, resolve_socket_path
from clients.completion import SHELLS, completion_script
from clients.errors import ConnectionLost, IopfError
from clients.launch import LaunchError, launch
from clients.vmm.paging import DemandPagingVmm, VmmOptions
from clients.vmm.report import Progress, RunInfo, VmmStats, print_summary
from clients.vmm.workload import PATTERNS
from iopfd.protocol.rid import canonical_rid

EXIT_OK = 0
EXIT_INVARIANT = 1
EXIT_SETUP = 2
EXIT_CONNECTION = 3
#: The daemon asked for a device back (``device_request``: an admin is unplugging it);
#: the VMM finished its DMAs, answered every group, released it and stopped early.
EXIT_DEVICE_RELEASED = 4

EPILOG = """exit status:
  0    every check held
  1    an invariant broke (the summary lists it)
  2    setup or usage error
  3    iopfd cannot be reached, or went away mid-run (e.g. stopped with SIGTERM)
  4    the daemon asked for a device back (an admin unplugged it): the VMM answered
       what it held, released it and stopped early
  130  interrupted (Ctrl-C)
A closed stdout (iopf-vmm | head) does not change the status."""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """``(default: X)`` after each option's help where X says something (not for flags
    and unset options, whose help says what happens); the epilog as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            "%(default)" not in text
            and action.option_strings
            and action.default not in (None, False, [], argparse.SUPPRESS)
        ):
            text += " (default: %(default)s)"
        return text


def _version() -> str:
    try:
        return package_version("iopfd")
    except PackageNotFoundError:  # run from a tree that was never installed
        return "unknown"


def _rid(text: str) -> str:
    """The protocol's one RID parser: ``SSSS:BB:DD.F`` or ``BB:DD.F`` (segment 0)."""
    try:
        return canonical_rid(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


__all__ = ["EXIT_DEVICE_RELEASED", "DemandPagingVmm", "VmmOptions", "build_parser", "main", "run"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="iopf-vmm",
        description="Reference VMM for iopfd: demand-pages a guest's DMA buffers by "
        "serving I/O page faults, then prints what happened.",
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    p.add_argument("--version", action="version", version=f"iopf-vmm {_version()}")
    p.add_argument(
        "--completion",
        choices=SHELLS,
        help="print the bash or zsh completion script and exit",
    )
    p.add_argument(
        "--socket",
        help="iopfd socket (default: $IOPFD_SOCKET, then /run/iopfd/iopfd.sock)",
    )
    p.add_argument(
        "--spawn-daemon",
        action="store_true",
        help="start a private iopfd for this run (on --socket if given, else "
        "in a private directory) and stop it at the end",
    )
    p.add_argument(
        "--daemon-kernel",
        metavar="VERSION",
        help="with --spawn-daemon: the kernel profile it plays (iopfd --kernel; default: "
        "the daemon's own)",
    )
    p.add_argument(
        "--device",
        action="append",
        default=[],
        metavar="RID",
        type=_rid,
        help="bind this device, SSSS:BB:DD.F or BB:DD.F (repeatable; default: "
        "every PRI-capable free PF)",
    )
    p.add_argument(
        "--pasids",
        type=int,
        default=2,
        metavar="N",
        help="PASIDs to attach per PASID-capable device, besides the RID",
    )
    p.add_argument(
        "--nested",
        action="store_true",
        help="nested translation: guest stage-1 table (vtd_s1) over the IOAS",
    )
    p.add_argument("--pattern", choices=PATTERNS, default="sequential", help="DMA order")
    p.add_argument("--pages", type=int, default=256, help="buffer pages per DMA stream")
    p.add_argument("--dma-pages", type=int, default=4, help="pages per DMA transfer")
    p.add_argument("--stride", type=int, default=8, help="stride of --pattern strided, in DMAs")
    p.add_argument("--concurrency", type=int, default=8, help="DMAs in flight")
    p.add_argument(
        "--duration",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep playing epochs this long (0: one pass over the buffers)",
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the workload plan")
    p.add_argument(
        "--bad-fraction",
        type=float,
        default=0.02,
        help="fraction of DMAs aimed outside guest memory (answered INVALID)",
    )
    p.add_argument("--batch", type=int, default=64, help="most groups per page_response")
    p.add_argument(
        "--progress",
        action="store_true",
        help="progress line on stderr even when it is not a terminal",
    )
    p.add_argument("--json", action="store_true", help="machine-readable summary on stdout")
    p.add_argument("--name", default="iopf-vmm", help="client name shown to admins")
    return p


def _check(args: argparse.Namespace) -> str | None:
    if args.pages < 1 or args.dma_pages < 1 or args.stride < 1:
        return "--pages, --dma-pages and --stride must be at least 1"
    if not 1 <= args.concurrency <= 4096:
        return "--concurrency must be within 1..4096"
    if not 0.0 <= args.bad_fraction <= 1.0:
        return "--bad-fraction must be within 0..1"
    if args.pasids < 0 or args.duration < 0 or args.batch < 1:
        return "--pasids and --duration must not be negative, --batch at least 1"
    if args.daemon_kernel is not None and not args.spawn_daemon:
        return "--daemon-kernel needs --spawn-daemon"
    return None


async def run(args: argparse.Namespace) -> int:
    """The whole session; returns the exit status."""
    opts = VmmOptions(
        devices=list(args.device),
        pasids=args.pasids,
        nested=args.nested,
        pattern=args.pattern,
        pages=args.pages,
        dma_pages=args.dma_pages,
        stride=args.stride,
        concurrency=args.concurrency,
        duration=args.duration,
        seed=args.seed,
        bad_fraction=args.bad_fraction,
        batch=args.batch,
    )
    progress = Progress(enabled=args.progress or sys.stderr.isatty())
    async with IopfClient.open(args.socket, client_name=args.name) as client:
        vmm = DemandPagingVmm(client, opts, progress)
        rids = await vmm.choose_devices()
        if not rids:
            print("iopf-vmm: no free PRI-capable device to bind", file=sys.stderr)
            return EXIT_SETUP
        try:
            await vmm.setup(rids)
        except IopfError as e:
            print(f"iopf-vmm: setup: {e}", file=sys.stderr)
            await vmm.teardown()
            return EXIT_SETUP
        if vmm.mode == "identity-s1":
            # Said even with --json (stderr): the run is not the paging setup asked for.
            print(
                f"iopf-vmm: kernel {vmm.kernel} has no fault-capable paging HWPT: using a "
                "nested HWPT whose stage-1 maps guest RAM one to one",
                file=sys.stderr,
            )
        if vmm.pasids_skipped:
            print(
                f"iopf-vmm: kernel {vmm.kernel} has no PASID attach: RIDs only (--pasids ignored)",
                file=sys.stderr,
            )
        if not args.json:
            mode = {
                "nested": "nested (vtd_s1 over nest_parent)",
                "identity-s1": "paging through an identity stage-1 (vtd_s1)",
            }.get(vmm.mode, vmm.mode)
            print(
                f"iopf-vmm: {len(rids)} device(s), {len(vmm.targets)} DMA streams, {mode}, "
                f"{opts.pattern}, {opts.pages} pages each, seed {opts.seed}, "
                f"kernel {vmm.kernel}",
                file=sys.stderr,
            )
        await vmm.run()
        await vmm.check_nothing_pending()
        await vmm.teardown()
        vmm.take_late_device_requests()
        assert client.hello_info is not None
        info = RunInfo(
            devices=rids,
            targets=len(vmm.targets),
            mode=vmm.mode,
            pattern=opts.pattern,
            pages=opts.pages,
            seed=opts.seed,
            daemon=client.hello_info.server,
            kernel=vmm.kernel,
            released=vmm.released,
        )
        gaps = client.stats().seq_gaps
        if gaps:
            vmm.stats.violate(f"{gaps} event sequence gap(s)")
        _print_summary(info, vmm.stats, args.json)
        if vmm.stats.violations:
            return EXIT_INVARIANT
        if vmm.released:
            print(
                f"iopf-vmm: released {', '.join(vmm.released)} on the daemon's "
                "device_request (hot-unplug): DMAs finished, every group answered; "
                "stopped early",
                file=sys.stderr,
            )
            return EXIT_DEVICE_RELEASED
        return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.completion:
        print(completion_script(parser, args.completion), end="")
        return EXIT_OK
    problem = _check(args)
    if problem:
        print(f"iopf-vmm: {problem}", file=sys.stderr)
        return EXIT_SETUP
    if args.spawn_daemon:
        return _with_private_daemon(args)
    return _run(args)


def _with_private_daemon(args: argparse.Namespace) -> int:
    """``--spawn-daemon``: the run against a daemon of its own, which must then stop
    cleanly on SIGTERM (a non-zero exit is a broken invariant)."""
    try:
        daemon = launch(socket=args.socket, kernel=args.daemon_kernel)
    except (LaunchError, OSError) as e:
        print(f"iopf-vmm: --spawn-daemon: {e}", file=sys.stderr)
        return EXIT_CONNECTION
    args.socket = daemon.socket
    rc = EXIT_CONNECTION
    try:
        rc = _run(args)
    finally:
        try:
            status = daemon.stop()
        except LaunchError as e:
            print(f"iopf-vmm: the spawned iopfd: {e}", file=sys.stderr)
            status = -1
    if status != 0:
        print(
            f"iopf-vmm: the spawned iopfd exited with status {status}\n{daemon.last_log_tail}",
            file=sys.stderr,
        )
        if rc == EXIT_OK:
            rc = EXIT_INVARIANT
    return rc


def _run(args: argparse.Namespace) -> int:
    try:
        return trio.run(run, args)
    except BaseException as exc:  # classified below; anything else is re-raised
        leaves = _leaves(exc)
        if any(isinstance(e, KeyboardInterrupt) for e in leaves):
            # the daemon releases everything the connection owned when it closes
            print("iopf-vmm: interrupted", file=sys.stderr)
            return 130
        if len(leaves) == 1 and isinstance(leaves[0], IopfError):
            print(f"iopf-vmm: {leaves[0].errno}: {leaves[0]}", file=sys.stderr)
            return EXIT_SETUP
        where = resolve_socket_path(args.socket)
        if any(isinstance(e, ConnectionLost) for e in leaves) and all(
            isinstance(e, ConnectionError | IopfError) for e in leaves
        ):
            # every task saw it: one line, not one traceback per task
            first = next(e for e in leaves if isinstance(e, ConnectionLost))
            print(f"iopf-vmm: iopfd at {where} went away: {first}", file=sys.stderr)
            return EXIT_CONNECTION
        if leaves and all(isinstance(e, ConnectionError | FileNotFoundError) for e in leaves):
            print(f"iopf-vmm: cannot talk to iopfd at {where}: {leaves[0]}", file=sys.stderr)
            return EXIT_CONNECTION
        raise


def _print_summary(info: RunInfo, stats: VmmStats, as_json: bool) -> None:
    """The summary on stdout; a reader that went away (``| head``) changes nothing."""
    try:
        print_summary(info, stats, sys.stdout, as_json)
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's flush at exit must not fail
        os.close(devnull)


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups that trio nurseries raise."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


if __name__ == "__main__":
    sys.exit(main())
