"""The daemon's configuration: TOML file, then command-line flags on top.

Every key is optional; the defaults are those of docs/operations.md. Unknown keys are
an error, so that a typo in a config file fails at startup rather than being ignored.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from iopfd.core.profile import DEFAULT_KERNEL, PROFILES
from iopfd.protocol.frames import DEFAULT_MAX_FRAME
from iopfd.protocol.models import format_validation_error

DEFAULT_SOCKET = "/run/iopfd/iopfd.sock"
LogFormat = Literal["json", "console"]
LogLevel = Literal["debug", "info", "warning", "error"]


class ConfigError(Exception):
    """The configuration cannot be used; the message says which key and why."""


class Limits(BaseModel):
    """``[limits]``: the bounds that keep one client from growing the daemon."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    #: Unanswered groups per fault queue before throttling (docs/protocol.md).
    max_pending: Annotated[int, Field(ge=1, le=1 << 20)] = 4096
    #: Largest frame in either direction, announced by ``hello``.
    max_frame: Annotated[int, Field(ge=64 << 10, le=64 << 20)] = DEFAULT_MAX_FRAME
    #: Unsent outgoing bytes per connection before the daemon drops it.
    max_outbuf: Annotated[int, Field(ge=64 << 10, le=1 << 30)] = 8 << 20
    #: SUCCESS answers a function retries a still-missing page before giving up.
    max_retries: Annotated[int, Field(ge=0, le=1 << 16)] = 8
    #: ``dma`` requests in flight per connection (``ENOSPC`` beyond).
    max_dma_inflight: Annotated[int, Field(ge=1, le=1 << 16)] = 256
    #: Objects per connection (``ENOSPC`` beyond).
    max_objects: Annotated[int, Field(ge=1, le=1 << 24)] = 65536
    #: Trace records buffered per subscriber before records are dropped.
    trace_buffer: Annotated[int, Field(ge=1, le=1 << 20)] = 1024
    #: Bytes one ``dma`` may cover (EINVAL beyond): a request runs to its end
    #: before anyone else is served, so one must stay short.
    max_dma_length: Annotated[int, Field(ge=4096, le=1 << 32)] = 1 << 20
    #: Bytes one ``ioas_map`` / ``hwpt_s1_map`` may cover (EINVAL beyond).
    max_map_length: Annotated[int, Field(ge=4096, le=1 << 32)] = 64 << 20
    #: 4 KiB pages one connection may have mapped at once (ENOSPC beyond).
    max_mapped_pages: Annotated[int, Field(ge=1, le=1 << 28)] = 1 << 20
    #: Connections at once; one more gets ENOSPC and is closed.
    max_connections: Annotated[int, Field(ge=1, le=1 << 16)] = 1024
    #: Seconds a new connection has to send ``hello`` (EPROTO and closed after).
    hello_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    #: Seconds a connection that holds nothing (no object, no subscription, no fault
    #: fd, no reply still due) may stay silent after ``hello``; then EPROTO and closed,
    #: so idle connections cannot keep slots forever. 0 keeps them.
    idle_timeout_s: Annotated[float, Field(ge=0, le=86400, allow_inf_nan=False)] = 300.0
    #: Seconds a delivered group may wait for its client's answer before the daemon
    #: answers INVALID (counted ``response_timeouts``); 0 waits forever, as the kernel.
    #: PRI credits are shared by a PF and its VFs: one owner that never answers would
    #: otherwise stall another owner's DMA for good.
    response_timeout_s: Annotated[float, Field(ge=0, le=86400, allow_inf_nan=False)] = 60.0
    # --- budgets per uid and global (docs/operations.md, *Security model*) ---------
    #: Connections one non-admin uid may hold at once (ENOSPC beyond).
    max_connections_per_uid: Annotated[int, Field(ge=1, le=1 << 16)] = 64
    #: Of ``max_connections``, slots only admins (root, the daemon's uid, the admin
    #: group) may take: a tenant holding every other slot cannot lock them out
    #: (at most ``max_connections - 1``).
    admin_reserved_connections: Annotated[int, Field(ge=0, le=1 << 16)] = 8
    #: Objects one uid may hold across its connections, and the daemon in all.
    max_objects_per_uid: Annotated[int, Field(ge=1, le=1 << 24)] = 65536
    max_objects_total: Annotated[int, Field(ge=1, le=1 << 26)] = 1 << 20
    #: 4 KiB pages one uid may have mapped across its connections, and the daemon.
    max_mapped_pages_per_uid: Annotated[int, Field(ge=1, le=1 << 28)] = 1 << 20
    max_mapped_pages_total: Annotated[int, Field(ge=1, le=1 << 30)] = 1 << 23
    #: Domain IDs one uid may hold on one IOMMU unit (a unit has 65534).
    #: (device, PASID) attachments one uid may hold, and the daemon (ENOSPC beyond).
    max_attachments_per_uid: Annotated[int, Field(ge=1, le=1 << 24)] = 131072
    max_attachments_total: Annotated[int, Field(ge=1, le=1 << 26)] = 1 << 20
    max_dids_per_uid: Annotated[int, Field(ge=1, le=65534)] = 4096
    #: Unsent outgoing bytes across one uid's connections; beyond, the connection
    #: whose frame crossed it is dropped (as for ``max_outbuf``).
    max_outbuf_per_uid: Annotated[int, Field(ge=64 << 10, le=1 << 34)] = 64 << 20

    @model_validator(mode="after")
    def _outbuf_holds_frames(self) -> Limits:
        if self.max_outbuf < 2 * self.max_frame:
            raise ValueError(
                f"max_outbuf ({self.max_outbuf}) must be at least twice "
                f"max_frame ({self.max_frame}): a client reading normally must "
                "never be dropped for one large reply"
            )
        return self

    @property
    def admin_reserve(self) -> int:
        """The slots kept for admins: ``admin_reserved_connections``, at most all
        but one of ``max_connections``."""
        return min(self.admin_reserved_connections, self.max_connections - 1)


class ConfigFile(BaseModel):
    """The TOML file's top level."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    socket: str = DEFAULT_SOCKET
    socket_mode: int = 0o660
    admin_group: str | None = None
    log_format: LogFormat | None = None
    log_level: LogLevel = "info"
    #: The kernel profile (``iopfd.core.profile``): "6.12" or "6.18".
    kernel: str = DEFAULT_KERNEL
    limits: Limits = Limits()
    topology: dict[str, Any] | None = None
    topology_file: str | None = None

    @field_validator("kernel", mode="before")
    @classmethod
    def _kernel_number(cls, value: object) -> object:
        # An unquoted TOML `kernel = 6.12` is a float; it means the same string.
        if isinstance(value, float):
            return str(value)
        return value

    @field_validator("kernel")
    @classmethod
    def _known_kernel(cls, value: str) -> str:
        if value not in PROFILES:
            raise ValueError(f"kernel must be one of {', '.join(sorted(PROFILES))}, not {value!r}")
        return value

    @field_validator("socket_mode", mode="before")
    @classmethod
    def _octal(cls, value: object) -> object:
        # TOML has 0o660; a string "0660" is what people write from chmod habit.
        if isinstance(value, str):
            try:
                return int(value, 8)
            except ValueError:
                raise ValueError('socket_mode must be an octal mode such as "0660"') from None
        return value

    @field_validator("socket_mode")
    @classmethod
    def _mode_range(cls, value: int) -> int:
        if not 0 <= value <= 0o777:
            raise ValueError("socket_mode must be within 0..0o777")
        return value


@dataclass
class Config:
    """The resolved configuration the daemon runs with."""

    socket: str = DEFAULT_SOCKET
    socket_mode: int = 0o660
    admin_group: str | None = None
    log_format: LogFormat | None = None  # None: console on a TTY, else JSON
    log_level: LogLevel = "info"
    kernel: str = DEFAULT_KERNEL
    limits: Limits = field(default_factory=Limits)
    #: An inline ``[topology]`` table (hwmodel.topology_from_dict) ...
    topology: dict[str, Any] | None = None
    #: ... or a topology TOML file (hwmodel.load_topology); neither: the default.
    topology_file: Path | None = None
    source: Path | None = None


def load_config(path: str | Path | None) -> Config:
    """Read ``path`` (or return the defaults for ``None``); :class:`ConfigError` if bad."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    try:
        parsed = ConfigFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {format_validation_error(exc)}") from None
    if parsed.topology is not None and parsed.topology_file is not None:
        raise ConfigError(f"{path}: give either [topology] or topology_file, not both")
    topology_file = None
    if parsed.topology_file is not None:
        topology_file = path.parent / parsed.topology_file
    return Config(
        socket=parsed.socket,
        socket_mode=parsed.socket_mode,
        admin_group=parsed.admin_group,
        log_format=parsed.log_format,
        log_level=parsed.log_level,
        kernel=parsed.kernel,
        limits=parsed.limits,
        topology=parsed.topology,
        topology_file=topology_file,
        source=path,
    )
