"""pytest fixtures for testing a VMM against a real iopfd, registered as the ``iopfd``
plugin (a ``pytest11`` entry point: installing iopfd is enough).

Each daemon is started with the repository's one launcher (:func:`clients.launch.launch`,
ready on ``READY=1``) on a socket in a private directory, and stopped with SIGTERM after
the test. Before it stops, the exactly-once identity of ``status`` must hold
(``groups == responses + auto_responses + throttled + pending``, asked over an admin
connection: the test runs as the daemon's uid), and it must then exit 0. When a test
fails, its daemons' logs are added to the report (section ``iopfd log``).

    @pytest.mark.iopfd_options(kernel="6.12", topology={"iommu": [...], "function": [...]})
    def test_my_vmm(iopfd_sync_client):
        assert iopfd_sync_client.devices()

    async def test_async(iopfd_client):  # pytest-trio
        dev = await iopfd_client.bind("3a:00.0")

    def test_two(iopfd_factory):
        old, new = iopfd_factory(kernel="6.12"), iopfd_factory(kernel="6.18")

Fixtures: ``iopfd_factory`` (start daemons: ``topology``, ``config``, ``kernel``,
``args``), ``iopfd_daemon`` (one daemon, options from the ``iopfd_options`` marker),
``iopfd_socket``, ``iopfd_sync_client`` (a connected :class:`~clients.sync.SyncClient`)
and ``iopfd_client`` (a connected trio :class:`~clients.client.IopfClient`). See
docs/clients.md, *Testing your VMM with pytest*.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from clients.client import IopfClient
from clients.launch import Launched, launch
from clients.sync import SyncClient

#: The counters of the exactly-once identity (README, rule 1).
IDENTITY = ("responses", "auto_responses", "throttled", "pending")
#: How much of a daemon's log goes into a failed test's report.
REPORT_LOG_BYTES = 20_000

_DAEMONS = pytest.StashKey[list["IopfdDaemon"]]()

TopologyArg = str | os.PathLike[str] | Mapping[str, Any] | None
ConfigArg = str | os.PathLike[str] | Mapping[str, Any] | None


# -- TOML, written: the daemon reads its config and topologies from files ------------------


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


def to_toml(data: Mapping[str, Any], prefix: str = "") -> str:
    """``data`` as TOML: scalars and lists of scalars, tables, arrays of tables."""
    lines: list[str] = []
    tables: list[str] = []
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            tables.append(f"\n[{name}]\n" + to_toml(value, name))
        elif (
            isinstance(value, list | tuple) and value and all(isinstance(v, Mapping) for v in value)
        ):
            tables.extend(f"\n[[{name}]]\n" + to_toml(v, name) for v in value)
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + ("\n" if lines else "") + "".join(tables)


# -- one daemon ----------------------------------------------------------------------------


class IopfdDaemon:
    """A daemon started for a test: ``socket``, ``log_path``, ``launched`` (the
    launcher's handle), :meth:`status`, :meth:`check_exactly_once`, :meth:`stop`."""

    def __init__(
        self,
        *,
        topology: TopologyArg = None,
        config: ConfigArg = None,
        kernel: str | None = None,
        args: Sequence[str] = (),
        log_format: str = "json",
    ) -> None:
        # A short private directory: a Unix socket path has at most 107 bytes, and
        # pytest's tmp_path can be longer than that.
        self.dir = Path(tempfile.mkdtemp(prefix="iopfd-pytest-"))
        self.socket = str(self.dir / "iopfd.sock")
        self.log_path = self.dir / "iopfd.log"
        self.exit_status: int | None = None
        self._log_text = ""
        cfg = self._config_file(config, topology)
        try:
            self.launched: Launched = launch(
                socket=self.socket,
                config=cfg,
                kernel=kernel,
                log=self.log_path,
                args=("--log-format", log_format, *args),
            )
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def _config_file(self, config: ConfigArg, topology: TopologyArg) -> Path | None:
        table: dict[str, Any] = {}
        if isinstance(config, Mapping):
            table.update(config)
        elif config is not None:
            path = Path(config)
            if topology is None:
                return path
            import tomllib

            table.update(tomllib.loads(path.read_text()))
        if isinstance(topology, Mapping):
            table.pop("topology_file", None)
            table["topology"] = dict(topology)
        elif topology is not None:
            table.pop("topology", None)
            table["topology_file"] = str(Path(topology).resolve())
        if not table:
            return None
        path = self.dir / "iopfd.toml"
        path.write_text(to_toml(table))
        return path

    @property
    def pid(self) -> int:
        return self.launched.pid

    def alive(self) -> bool:
        return self.launched.alive()

    def log(self) -> str:
        """The daemon's log so far (kept after :meth:`stop`)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return self._log_text

    def sync_client(self, name: str = "pytest", **kw: Any) -> SyncClient:
        return SyncClient(self.socket, client_name=name, **kw)

    def status(self) -> Mapping[str, int]:
        """The daemon's counters (an admin connection)."""
        with self.sync_client("pytest-iopfd-status") as c:
            return c.status().counters

    def check_exactly_once(self) -> None:
        """``AssertionError`` unless ``groups == responses + auto_responses + throttled
        + pending`` (and no internal error was counted)."""
        counters = self.status()
        answered = sum(counters.get(k, 0) for k in IDENTITY)
        groups = counters.get("groups", 0)
        assert groups == answered, (
            f"iopfd exactly-once identity broken: groups {groups} != "
            + " + ".join(f"{k} {counters.get(k, 0)}" for k in IDENTITY)
            + f" = {answered}"
        )
        internal = counters.get("daemon_internal_errors", 0)
        assert not internal, f"iopfd counted {internal} internal error(s): see its log"

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM; returns the exit status (kept: calling it again returns it)."""
        if self.exit_status is None:
            try:
                self.exit_status = self.launched.stop(timeout)
            finally:
                self._log_text = self.log()
                shutil.rmtree(self.dir, ignore_errors=True)
        return self.exit_status

    def finish(self) -> None:
        """The teardown check: the identity holds, then SIGTERM, exit 0, no socket left."""
        try:
            if self.alive():
                self.check_exactly_once()
        finally:
            status = self.stop()
        assert status == 0, f"iopfd exited with status {status}:\n{self._log_text[-4000:]}"
        assert not os.path.exists(self.socket), "iopfd left its socket behind"


Factory = Callable[..., IopfdDaemon]


def report_log_of(node: pytest.Item, daemon: IopfdDaemon) -> None:
    """Add ``daemon``'s log to ``node``'s report if it fails (for daemons started by
    a wider-scoped fixture of your own)."""
    node.stash.setdefault(_DAEMONS, []).append(daemon)


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def iopfd_factory(request: pytest.FixtureRequest) -> Iterator[Factory]:
    """Start daemons: ``iopfd_factory(topology=None, config=None, kernel=None, args=())``.
    ``topology``: a TOML path or a dict (``{"iommu": [...], "function": [...]}``);
    ``config``: a TOML path or a dict (the keys of docs/operations.md); ``kernel``:
    ``"6.12"`` or ``"6.18"``. Each is checked and stopped at the end of the test."""
    started: list[IopfdDaemon] = []

    def start(
        *,
        topology: TopologyArg = None,
        config: ConfigArg = None,
        kernel: str | None = None,
        args: Sequence[str] = (),
    ) -> IopfdDaemon:
        daemon = IopfdDaemon(topology=topology, config=config, kernel=kernel, args=args)
        started.append(daemon)
        report_log_of(request.node, daemon)
        return daemon

    yield start
    errors = []
    for daemon in reversed(started):
        try:
            daemon.finish()
        except AssertionError as e:
            errors.append(str(e))
    assert not errors, "\n".join(errors)


@pytest.fixture
def iopfd_daemon(request: pytest.FixtureRequest, iopfd_factory: Factory) -> IopfdDaemon:
    """One daemon; options from ``@pytest.mark.iopfd_options(topology=..., config=...,
    kernel=..., args=...)`` (the closest marker wins)."""
    marker = request.node.get_closest_marker("iopfd_options")
    options: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    return iopfd_factory(**options)


@pytest.fixture
def iopfd_socket(iopfd_daemon: IopfdDaemon) -> str:
    """The socket path of ``iopfd_daemon``."""
    return iopfd_daemon.socket


@pytest.fixture
def iopfd_sync_client(iopfd_daemon: IopfdDaemon) -> Iterator[SyncClient]:
    """A :class:`SyncClient` connected to ``iopfd_daemon``, closed after the test."""
    with iopfd_daemon.sync_client("pytest-sync") as client:
        yield client


@pytest.fixture
async def iopfd_client(iopfd_daemon: IopfdDaemon) -> AsyncIterator[IopfClient]:
    """A trio :class:`IopfClient` connected to ``iopfd_daemon`` (needs pytest-trio)."""
    async with IopfClient.open(iopfd_daemon.socket, client_name="pytest-trio") as client:
        yield client


# -- hooks ---------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "iopfd_options(topology=None, config=None, kernel=None, args=()): "
        "how the iopfd_daemon fixture starts its daemon",
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """A failed test's report carries the log of every daemon it started."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.failed:
        return
    daemons: list[IopfdDaemon] = item.stash.get(_DAEMONS, [])
    for i, daemon in enumerate(daemons):
        text = daemon.log()[-REPORT_LOG_BYTES:]
        title = "iopfd log" + (f" ({i + 1})" if i else "") + f" [{report.when}]"
        report.sections.append((title, text or "(empty)"))


__all__ = [
    "IopfdDaemon",
    "iopfd_client",
    "iopfd_daemon",
    "iopfd_factory",
    "iopfd_socket",
    "iopfd_sync_client",
    "report_log_of",
    "to_toml",
]
