"""``iopfd``: the command line of the daemon."""

from __future__ import annotations

import argparse
import contextlib
import gc
import resource
import sys
from collections.abc import Sequence

import structlog
import trio

import hwmodel
from iopfd import __version__
from iopfd.core import Core, CoreLimits
from iopfd.core.profile import DEFAULT_KERNEL, PROFILES, kernel_profile
from iopfd.server.config import Config, ConfigError, load_config
from iopfd.server.listener import SocketInUse
from iopfd.server.logconfig import close_logging, configure_logging

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="iopfd",
        description="I/O page fault delivery daemon over an emulated Intel VT-d IOMMU.",
    )
    p.add_argument(
        "--socket",
        metavar="PATH",
        help="listen on PATH (default: from the config, else /run/iopfd/iopfd.sock;"
        " ignored under socket activation)",
    )
    p.add_argument("--config", metavar="FILE", help="TOML configuration file")
    p.add_argument(
        "--log-format",
        choices=("json", "console"),
        help="log line format (default: console on a terminal, else json)",
    )
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument(
        "--kernel",
        choices=sorted(PROFILES),
        help="behave as this LTS kernel where they differ (default: from the "
        f"config, else {DEFAULT_KERNEL}); hello and status report it",
    )
    # Which build of hwmodel/ and iopfd/core/ runs: the mypyc one of make accel, or Python.
    build = " (accelerated: mypyc)" if hwmodel.COMPILED else ""
    p.add_argument("--version", action="version", version=f"iopfd {__version__}{build}")
    return p


def build_core(config: Config) -> Core:
    """The hwmodel machine and the core, from the configured topology and limits."""

    if config.topology is not None:
        spec = hwmodel.topology_from_dict(config.topology)
    elif config.topology_file is not None:
        spec = hwmodel.load_topology(config.topology_file)
    else:
        spec = hwmodel.default_topology()
    limits = config.limits
    machine = hwmodel.Machine(spec, max_retries=limits.max_retries)
    return Core(
        machine,
        CoreLimits(
            max_pending=limits.max_pending,
            max_objects_per_context=limits.max_objects,
            max_retries=limits.max_retries,
            max_dma_length=limits.max_dma_length,
            max_map_length=limits.max_map_length,
            max_mapped_pages_per_context=limits.max_mapped_pages,
            max_partials_per_device=partials_fitting(limits.max_frame),
            max_objects_per_uid=limits.max_objects_per_uid,
            max_objects_total=limits.max_objects_total,
            max_mapped_pages_per_uid=limits.max_mapped_pages_per_uid,
            max_mapped_pages_total=limits.max_mapped_pages_total,
            max_attachments_per_uid=limits.max_attachments_per_uid,
            max_attachments_total=limits.max_attachments_total,
            max_dids_per_uid=limits.max_dids_per_uid,
            response_timeout_ns=int(limits.response_timeout_s * 1e9),
        ),
        kernel_profile(config.kernel),
    )


#: The most a fault record packs to (msgpack: seven keys, uint32/uint64 values), and the
#: rest of a ``fault`` event (event, seq, fault_id, cookie, throttled, the list header).
FAULT_RECORD_MAX_BYTES = 68
FAULT_EVENT_OVERHEAD_BYTES = 256


def partials_fitting(max_frame: int) -> int:
    """Partial requests set aside per device, so that the largest group (its partials
    and its last request) always fits one ``fault`` event within ``max_frame``."""
    fit = (max_frame - FAULT_EVENT_OVERHEAD_BYTES) // FAULT_RECORD_MAX_BYTES - 1
    # The default from an instance: compiled (make accel), the class holds a descriptor.
    return max(1, min(CoreLimits().max_partials_per_device, fit))


#: Fds per connection the daemon budgets for (the socket, fault fds) and the fixed rest.
FDS_PER_CONNECTION = 2
FDS_RESERVED = 64


def raise_fd_limit(max_connections: int) -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` towards what ``max_connections`` needs (up to the
    hard limit), so accept() does not run out of fds before the connection cap is
    reached. Returns (soft limit now, fds wanted)."""
    want = max_connections * FDS_PER_CONNECTION + FDS_RESERVED
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
    return soft, want


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    finally:
        close_logging()


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"iopfd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.socket is not None:
        config.socket = args.socket
    if args.log_format is not None:
        config.log_format = args.log_format
    if args.log_level is not None:
        config.log_level = args.log_level
    if args.kernel is not None:
        config.kernel = args.kernel
    configure_logging(config.log_format, config.log_level)
    log = structlog.get_logger("iopfd")
    nofile, wanted = raise_fd_limit(config.limits.max_connections)
    if nofile < wanted:
        log.warning(
            "fd limit below what max_connections needs: raise LimitNOFILE",
            nofile=nofile,
            wanted=wanted,
        )

    from iopfd.server.daemon import Daemon

    failure: tuple[int, str, dict[str, object]] | None = None
    try:
        core = build_core(config)
        daemon = Daemon(config, core)
        # The machine and its topology live as long as the daemon: out of the cyclic
        # collector's reach, so a full collection does not walk 65,536 functions'
        # objects again and again while tenants wait.
        gc.collect()
        gc.freeze()
        trio.run(daemon.serve)
    except (ValueError, ConfigError) as exc:
        failure = (EXIT_USAGE, "bad configuration", {"error": str(exc)})
    except KeyError as exc:
        failure = (
            EXIT_USAGE,
            "unknown admin group",
            {"admin_group": config.admin_group, "error": str(exc)},
        )
    except SocketInUse as exc:
        failure = (EXIT_RUNTIME, "cannot listen", {"error": str(exc)})
    except OSError as exc:
        failure = (
            EXIT_RUNTIME,
            "cannot listen or read a file",
            {"socket": config.socket, "error": str(exc)},
        )
    if failure is not None:
        code, event, fields = failure
        log.error(event, **fields)
        return code
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
