"""structlog set-up: one event per line, JSON when stderr is not a terminal.

Lines never block or crash the event loop: they go to a bounded queue that a writer
thread empties onto stderr. A full queue (a stalled journal or pipe), a closed stderr or
more than ``LOG_LINES_PER_S`` lines a second (one noisy client) drops lines, counted in
``dropped`` (``status``: ``daemon_log_dropped``).
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
import unicodedata
from typing import Any, TextIO, cast

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def printable(text: str) -> str:
    """``text`` with every control and format character (C0, C1, DEL, bidi overrides,
    line separators) written as ``\\xNN``/``\\uNNNN``: a client's name reaches root's
    terminal (``iopfctl`` tables, trace, console logs) and must not drive it."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable() or (ch == " "):
            out.append(ch)
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


#: Lines waiting for the writer thread; beyond, lines are dropped and counted.
LOG_QUEUE_LINES = 4096
#: The sustained rate of lines a second, and the burst above it, before lines drop.
LOG_LINES_PER_S = 1000.0
LOG_BURST_LINES = 5000.0


class QueuedWriter:
    """A file-like sink for log lines: ``write`` never blocks and never raises."""

    def __init__(
        self,
        stream: TextIO,
        maxsize: int = LOG_QUEUE_LINES,
        rate: float = LOG_LINES_PER_S,
        burst: float = LOG_BURST_LINES,
    ) -> None:
        self.stream = stream
        self.dropped = 0
        self._queue: queue.Queue[str | None] = queue.Queue(maxsize)
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._last = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="iopfd-log", daemon=True)
        self._thread.start()

    def write(self, text: str) -> int:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1:
            self.dropped += 1
            return 0
        try:
            self._queue.put_nowait(text)
        except queue.Full:
            self.dropped += 1
            return 0
        self._tokens -= 1
        return len(text)

    def flush(self) -> None:
        """Lines are flushed by the writer thread."""

    def isatty(self) -> bool:
        return False

    def _run(self) -> None:
        while True:
            text = self._queue.get()
            if text is None:
                return
            try:
                self.stream.write(text)
                self.stream.flush()
            except (OSError, ValueError):  # closed or broken stderr: count, go on
                self.dropped += 1

    def close(self, timeout: float = 1.0) -> None:
        """Let the thread write what is queued, for at most ``timeout`` seconds."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)


#: The sink ``configure_logging`` installed (empty before): one per process.
_SINKS: list[QueuedWriter] = []


#: Whether debug lines are written: structlog's default (before ``configure_logging``,
#: in-process tests) writes them.
_DEBUG: list[bool] = [True]


def debug_enabled() -> bool:
    """Whether a ``debug`` line would be written: the per-fault lines are built only
    then (a filtered call still costs a lazy-proxy lookup and the keyword dict)."""
    return _DEBUG[0]


def log_dropped() -> int:
    """Lines dropped so far (``status``: ``daemon_log_dropped``)."""
    return _SINKS[0].dropped if _SINKS else 0


def close_logging(timeout: float = 2.0) -> None:
    """At exit: let the writer thread write the queued lines (bounded by ``timeout``)."""
    if _SINKS:
        _SINKS[0].close(timeout)


def configure_logging(log_format: str | None, level: str = "info") -> None:
    """Configure structlog once, before the first log call.

    ``log_format`` ``None`` picks console on a TTY, else JSON (one object per line, which
    the journal stores as-is). Standard-library logging from libraries goes through the
    same renderer.
    """
    if log_format is None:
        log_format = "console" if sys.stderr.isatty() else "json"
    if not _SINKS:
        _SINKS.append(QueuedWriter(sys.stderr))
    sink = _SINKS[0]
    _DEBUG[0] = _LEVELS[level] <= logging.DEBUG
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer()
        tail: list[Any] = [
            structlog.processors.StackInfoRenderer(),
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
        ]
    else:
        renderer = structlog.dev.ConsoleRenderer()
        tail = [structlog.processors.StackInfoRenderer()]
    structlog.configure(
        processors=[*shared, *tail, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        # QueuedWriter has all of TextIO that WriteLogger uses (write, flush).
        logger_factory=structlog.WriteLoggerFactory(file=cast("TextIO", sink)),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sink)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
