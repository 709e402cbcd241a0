"""What a new user meets first: versions, help, one RID grammar, symbolic output, the
daemon's version in status, shell completion, and clean exits (issue 12)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import hwmodel
from clients.completion import completion_script
from clients.pytest_plugin import Factory, IopfdDaemon
from clients.records import TraceRecord
from clients.vmm import build_parser as vmm_parser
from iopfd.cli.iopfctl import _trace as trace_command
from iopfd.cli.iopfctl import build_parser, code_name, main, perm_name
from iopfd.protocol.frames import FrameDecoder, encode_frame

BIN = Path(sys.executable).parent
IOPFCTL, VMM = str(BIN / "iopfctl"), str(BIN / "iopf-vmm")
ENV = {**os.environ, "COLUMNS": "100"}
QUIET: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}


def _run(*argv: str, timeout: float = 30, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, env=ENV, **kw
    )


@pytest.mark.parametrize("tool", ["iopfd", "iopfctl", "iopf-vmm"])
def test_every_tool_prints_its_version(tool: str) -> None:
    proc = _run(str(BIN / tool), "--version")
    # The daemon also says when it runs the mypyc build (make test-accel passes it on).
    build = " (accelerated: mypyc)" if tool == "iopfd" and hwmodel.COMPILED else ""
    assert proc.returncode == 0 and proc.stdout.strip() == f"{tool} 0.1.0{build}", proc


def test_iopfctl_help_lists_every_command_on_one_line_and_the_exit_statuses() -> None:
    out = _run(IOPFCTL, "--help").stdout
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    lines = out.splitlines()
    for name in sub.choices:  # type: ignore[union-attr]
        line = next(ln for ln in lines if ln.split()[:1] == [name])
        i = lines.index(line)
        assert len(line.split()) > 1 and not lines[i + 1].startswith(" " * 8), (name, out)
    for status in ("0 ", "1 ", "2 ", "3 ", "130"):
        assert f"\n  {status}" in out, out


def test_iopf_vmm_help_shows_defaults_and_exit_statuses() -> None:
    out = _run(VMM, "--help").stdout
    for default in ("(default: 2)", "(default: sequential)", "(default: 256)", "(default: 64)"):
        assert default in out, out
    assert "(default: None)" not in out and "(default: False)" not in out
    assert "\n  3    iopfd cannot be reached, or went away" in out


def test_one_rid_message_from_iopfctl_iopf_vmm_and_the_daemon(iopfd_daemon: IopfdDaemon) -> None:
    expected = "malformed requester ID '3a:0.0': expected [SSSS:]BB:DD.F (hex)"
    ctl = _run(IOPFCTL, "--socket", iopfd_daemon.socket, "plug", "3a:0.0")
    vmm = _run(VMM, "--socket", iopfd_daemon.socket, "--device", "3a:0.0")
    assert ctl.returncode == vmm.returncode == 2
    assert expected in ctl.stderr and expected in vmm.stderr
    # the daemon's own answer, in raw frames (the clients check before sending)
    with socket.socket(socket.AF_UNIX) as raw:
        raw.settimeout(10)
        raw.connect(iopfd_daemon.socket)
        raw.sendall(encode_frame({"id": 1, "op": "hello", "version": 2, "client": "raw"}))
        raw.sendall(encode_frame({"id": 2, "op": "plug", "rid": "3a:0.0"}))
        dec = FrameDecoder()
        replies: dict[object, dict[str, Any]] = {}
        while 2 not in replies:
            replies.update({m["id"]: m for m in dec.feed(raw.recv(65536)) if "id" in m})
    assert replies[2]["error"]["code"] == "EINVAL"
    assert expected in replies[2]["error"]["message"]


def test_the_short_rid_form_works_in_iopfctl_and_iopf_vmm(iopfd_daemon: IopfdDaemon) -> None:
    sock = iopfd_daemon.socket
    assert _run(IOPFCTL, "--socket", sock, "reset", "5c:00.0").returncode == 0
    vmm = _run(VMM, "--socket", sock, "--device", "3a:00.0", "--pages", "8", "--json")
    assert vmm.returncode == 0, vmm.stderr
    assert json.loads(vmm.stdout)["devices"] == ["0000:3a:00.0"]


def test_status_shows_the_daemon_version_next_to_the_protocol_version(
    iopfd_daemon: IopfdDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--socket", iopfd_daemon.socket, "status"]) == 0
    lines = [ln.split() for ln in capsys.readouterr().out.splitlines()]
    assert ["daemon", "iopfd/0.1.0"] in lines and ["protocol", "2"] in lines
    assert main(["--socket", iopfd_daemon.socket, "status", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["server"] == "iopfd/0.1.0" and doc["version"] == 2


class _Tracer:
    """Just enough of a SyncClient for ``iopfctl trace``: two records, then the end."""

    def __init__(self) -> None:
        self.records = [
            TraceRecord(1, "fault", 1.0, {"addr": 0x5000, "perm": 3, "cookie": 7}),
            TraceRecord(2, "response", 2.0, {"cookie": 7, "code": 1}),
        ]

    def subscribe(self, topics: list[str]) -> list[str]:
        return topics

    def next_trace(self, timeout: float | None = None) -> TraceRecord | None:
        return self.records.pop(0)


@pytest.mark.parametrize("as_json", [False, True])
def test_trace_names_permissions_and_codes_while_json_stays_numeric(
    capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    assert (perm_name(3), perm_name(1), perm_name(0), perm_name(0x13)) == (
        "READ|WRITE",
        "READ",
        "NONE",
        "READ|WRITE|0x10",
    )
    assert (code_name(0), code_name(1), code_name(15)) == ("SUCCESS", "INVALID", "15")
    args = build_parser().parse_args(["trace", "--count", "2", *(["--json"] if as_json else [])])
    args.json = as_json
    assert trace_command(_Tracer(), args) == 0  # type: ignore[arg-type]
    out = capsys.readouterr().out.splitlines()
    if as_json:
        assert json.loads(out[0])["perm"] == 3 and json.loads(out[1])["code"] == 1
    else:
        assert "addr=0x5000 perm=READ|WRITE cookie=7" in out[0]
        assert "cookie=7 code=INVALID" in out[1]


def test_trace_duration_ends_the_trace_with_status_0(iopfd_daemon: IopfdDaemon) -> None:
    t0 = time.monotonic()
    proc = _run(IOPFCTL, "--socket", iopfd_daemon.socket, "trace", "--duration", "0.5")
    assert proc.returncode == 0 and proc.stderr == ""
    assert time.monotonic() - t0 < 10


def test_a_closed_output_pipe_ends_iopfctl_quietly_with_status_0(
    iopfd_daemon: IopfdDaemon,
) -> None:
    sock = iopfd_daemon.socket
    trace = subprocess.Popen(
        [IOPFCTL, "--socket", sock, "trace"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    time.sleep(0.7)
    vmm = subprocess.Popen([VMM, "--socket", sock, "--duration", "2"], env=ENV, **QUIET)
    assert trace.stdout is not None and trace.stdout.readline()
    trace.stdout.close()  # `| head -1`: the next record's write finds the pipe closed
    _, err = trace.communicate(timeout=20)
    assert vmm.wait(timeout=30) == 0
    assert trace.returncode == 0 and err == b"", err
    head = _run(
        "bash", "-c", f"{IOPFCTL} --socket {sock} devices | head -1; exit ${{PIPESTATUS[0]}}"
    )
    assert head.returncode == 0 and head.stderr == "", head


@pytest.mark.parametrize(
    "argv",
    [["status"], ["trace"], ["wait", "--timeout", "0.3"]],
    ids=lambda a: a[0],
)
def test_iopfctl_without_a_daemon_exits_3_with_one_line(tmp_path: Path, argv: list[str]) -> None:
    proc = _run(IOPFCTL, "--socket", str(tmp_path / "none.sock"), *argv)
    assert proc.returncode == 3 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("iopfctl: ")


def test_iopfctl_wait_returns_once_the_daemon_answers(iopfd_daemon: IopfdDaemon) -> None:
    proc = _run(IOPFCTL, "--socket", iopfd_daemon.socket, "wait", "--timeout", "5")
    assert proc.returncode == 0 and proc.stdout.startswith("iopfd ready at "), proc
    late = _run(
        IOPFCTL,
        "--socket",
        iopfd_daemon.socket,
        "wait",
        "--attached",
        "3a:00.0",
        "--timeout",
        "0.5",
    )
    assert late.returncode == 3 and "0000:3a:00.0 is not attached yet" in late.stderr


def test_iopf_vmm_without_a_daemon_exits_3_with_one_line(tmp_path: Path) -> None:
    proc = _run(VMM, "--socket", str(tmp_path / "none.sock"))
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]


def test_iopf_vmm_and_trace_exit_3_with_one_line_when_the_daemon_is_stopped_mid_run(
    iopfd_factory: Factory,
) -> None:
    daemon = iopfd_factory()
    vmm = subprocess.Popen(
        [VMM, "--socket", daemon.socket, "--duration", "20", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    trace = subprocess.Popen(
        [IOPFCTL, "--socket", daemon.socket, "trace"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    time.sleep(2.0)
    daemon.check_exactly_once()
    assert daemon.stop() == 0  # SIGTERM, as the README's `kill`
    _, vmm_err = vmm.communicate(timeout=30)
    _, trace_err = trace.communicate(timeout=30)
    assert vmm.returncode == 3 and "Traceback" not in vmm_err, vmm_err
    assert [ln for ln in vmm_err.splitlines() if "went away" in ln], vmm_err
    assert len(vmm_err.strip().splitlines()) <= 2  # the setup line, then the one error
    assert trace.returncode == 3 and len(trace_err.strip().splitlines()) == 1, trace_err


# -- completion -------------------------------------------------------------------------


def _bash_complete(script: str, words: list[str]) -> list[str]:
    cword = len(words) - 1
    line = " ".join(f"'{w}'" for w in words)
    prog = (
        f"{script}\nCOMP_WORDS=({line}); COMP_CWORD={cword}\n"
        f"$(complete -p {words[0]} | sed -E 's/.*-F ([^ ]+) .*/\\1/')\n"
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    proc = subprocess.run(["bash", "-c", prog], capture_output=True, text=True, check=True)
    return proc.stdout.split()


def test_bash_completion_knows_every_command_option_and_choice() -> None:
    script = _run(IOPFCTL, "completion", "bash").stdout
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(_bash_complete(script, ["iopfctl", ""])) >= set(sub.choices) | {"--socket"}  # type: ignore[arg-type]
    assert _bash_complete(script, ["iopfctl", "tr"]) == ["trace"]
    assert "--duration" in _bash_complete(script, ["iopfctl", "trace", "--"])
    assert _bash_complete(script, ["iopfctl", "trace", "--topic", "auto"]) == ["auto_response"]
    assert _bash_complete(script, ["iopfctl", "completion", "z"]) == ["zsh"]
    # iopf-vmm's comes in the same script, and from iopf-vmm itself
    assert _bash_complete(script, ["iopf-vmm", "--pat"]) == ["--pattern"]
    own = _run(VMM, "--completion", "bash").stdout
    assert _bash_complete(own, ["iopf-vmm", "--pattern", "r"]) == ["random"]


def test_zsh_completion_describes_every_command_and_option() -> None:
    script = _run(IOPFCTL, "completion", "zsh").stdout
    assert script.startswith("#compdef iopfctl") and "compdef _iopf_vmm iopf-vmm" in script
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in sub.choices:  # type: ignore[union-attr]
        assert f"'{name}:" in script, name
    assert "--topic'[only this topic" in script and "auto_response" in script
    for action in vmm_parser()._actions:
        for flag in action.option_strings:
            assert flag in script, flag
    assert completion_script(vmm_parser(), "zsh").startswith("#compdef iopf-vmm")
    zsh = shutil.which("zsh")
    if zsh:  # a syntax check where zsh is installed
        subprocess.run([zsh, "-n", "-c", script], check=True)
