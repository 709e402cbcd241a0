"""`make bench`: iopfd's speed against the physical limit of its transport (issue 6).

    python -m bench.run [--quick] [--only NAME[,NAME...]] [--out DIR]

Runs, one after another in this one process tree: the transport ceilings
(bench/ceilings.py), the daemon benches (bench/faults.py), the C client on the kernel
fault fd (bench/faultfd.py; skipped, with a note, without a C compiler), the attack
measures of issue 11 (bench/attacks.py: other uids attack, so it needs root), and the
model-only and sans-IO core benches of bench/bench_hwmodel.py and bench/bench_core.py
when present (again on the mypyc build, as ``<entry>_mypyc``, where ``make accel`` has
built it),
then writes `bench/results/latest.json` and `bench/results/latest.md` (with `--quick`:
`bench/results/quick/latest.*`, so a smoke run never overwrites the committed figures).

Every section runs even if an earlier one failed; a failure is recorded under
`errors` in the JSON and the run exits non-zero.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench import accel, ceilings
from bench.common import REPO, RESULTS, Entry, machine_facts, python_cmd, write_results

SECTIONS = ("ceilings", "faults", "faultfd", "attacks", "hwmodel", "core")
COMPONENTS = {"hwmodel": "bench.bench_hwmodel", "core": "bench.bench_core"}


def _entries_from_component(name: str, doc: Any) -> list[Entry]:
    """Lift entries shaped like ours out of another bench's JSON; keep the rest as-is."""
    rows = doc.get("entries") if isinstance(doc, dict) else doc
    out = []
    if isinstance(rows, list):
        for row in rows:
            if isinstance(row, dict) and "name" in row and "figure" in row:
                known = {k: row.get(k) for k in ("ceiling", "ratio", "target", "met")}
                detail = row.get("detail")
                if not isinstance(detail, dict):
                    detail = {
                        k: v for k, v in row.items() if k not in {"name", "figure", "unit", *known}
                    }
                out.append(
                    Entry(
                        name=f"{name}.{row['name']}" if "." not in row["name"] else row["name"],
                        figure=row["figure"],
                        unit=str(row.get("unit", "")),
                        detail=detail,
                        **known,
                    )
                )
    return out


def run_component(
    name: str, quick: bool, timeout: float, env: dict[str, str] | None = None
) -> tuple[list[Entry], Any]:
    """Run another engineer's bench module as a subprocess; it prints JSON on stdout."""
    module = COMPONENTS[name]
    if importlib.util.find_spec(module) is None:
        raise FileNotFoundError(f"{module} is not in the tree yet")
    args = python_cmd("-m", module, *(["--quick"] if quick else []))
    proc = subprocess.run(
        args, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False, env=env
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{module} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    doc = json.loads(proc.stdout)
    return _entries_from_component(name, doc), doc


def cost_notes(entries: list[Entry]) -> list[str]:
    """Where the time goes: the daemon's CPU per fault against the ceiling server's."""
    by_name = {e.name: e for e in entries}
    notes = []
    ceiling = by_name.get("ceiling.trio_round_trip")
    serial = by_name.get("fault.serial_round_trip")
    if ceiling and serial and "daemon_cpu_us_per_fault" in serial.detail:
        server = ceiling.detail["server_cpu_us_per_msg"]
        daemon = serial.detail["daemon_cpu_us_per_fault"]
        notes.append(
            f"serial: iopfd spends {daemon} us of CPU per fault; the ceiling server spends "
            f"{server} us per round trip, {2 * server:.0f} us for the two a fault needs, so "
            f"roughly {max(0.0, daemon - 2 * server):.0f} us per fault is iopfd's own work."
        )
    pipe = by_name.get("ceiling.trio_pipelined")
    thr = by_name.get("fault.throughput")
    if pipe and thr and "daemon_cpu_us_per_group" in thr.detail:
        server = pipe.detail["server_cpu_us_per_msg"]
        daemon = thr.detail["daemon_cpu_us_per_group"]
        client = thr.detail.get("client_cpu_us_per_group")
        notes.append(
            f"throughput: iopfd spends {daemon} us of CPU per group against {server} us per "
            f"message for the pipelined ceiling server; the bench client spends {client} us "
            "per group, so the daemon is the limit."
        )
    return notes


#: Where ``--quick`` writes: not over the committed full-run results.
QUICK_RESULTS = RESULTS / "quick"


def default_out(quick: bool) -> Path:
    return QUICK_RESULTS if quick else RESULTS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs, small sizes (CI smoke)")
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"directory for latest.{{json,md}} (default {RESULTS}, with --quick {QUICK_RESULTS})",
    )
    args = ap.parse_args(argv)
    args.out = default_out(args.quick) if args.out is None else args.out
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; known: {list(SECTIONS)}")

    t0 = time.monotonic()
    facts = machine_facts()
    entries: list[Entry] = []
    errors: dict[str, str] = {}
    components: dict[str, Any] = {}
    notes: list[str] = []
    rates: dict[str, float] = {}

    def log(msg: str) -> None:
        print(f"[bench {time.monotonic() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    if "ceilings" in only or "faults" in only:
        log("ceilings")
        try:
            ceiling_entries, rates = ceilings.measure(args.quick)
            entries += ceiling_entries
        except Exception as exc:
            errors["ceilings"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()

    if "faults" in only:
        log("daemon benches")
        try:
            faults = importlib.import_module("bench.faults")
            fault_entries, fault_notes = faults.measure(args.quick, rates, log=log)
            entries += fault_entries
            notes += fault_notes
        except ModuleNotFoundError as exc:
            errors["faults"] = f"{type(exc).__name__}: {exc}"
        except Exception as exc:
            entries += getattr(exc, "entries", [])
            errors["faults"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()

    if "faultfd" in only:
        log("fault-fd benches (C client)")
        try:
            faultfd = importlib.import_module("bench.faultfd")
            ff_entries, ff_notes = faultfd.measure(args.quick, log=log)
            entries += ff_entries
            notes += ff_notes + faultfd.compare_notes(entries)
        except Exception as exc:
            errors["faultfd"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()

    if "attacks" in only:
        log("attack measures")
        try:
            attacks = importlib.import_module("bench.attacks")
            attack_entries, attack_notes = attacks.measure(args.quick, log=log)
            entries += attack_entries
            notes += attack_notes
        except Exception as exc:
            entries += getattr(exc, "entries", [])
            notes += getattr(exc, "notes", [])
            errors["attacks"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()

    for name in ("hwmodel", "core"):
        if name not in only:
            continue
        log(f"component bench {COMPONENTS[name]}")
        try:
            comp_entries, doc = run_component(name, args.quick, timeout=120 if args.quick else 600)
            entries += comp_entries
            components[name] = doc
        except FileNotFoundError as exc:
            notes.append(str(exc))
            continue
        except Exception as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
            continue
        if accel.stale():
            continue
        # The same bench on the mypyc build (make accel), when it is built and current:
        # <entry>_mypyc, with the pure-Python figure beside it.
        log(f"component bench {COMPONENTS[name]} (mypyc)")
        try:
            env = {**os.environ, "PYTHONPATH": str(accel.ACCEL)}
            fast, doc = run_component(name, args.quick, 120 if args.quick else 600, env)
            components[f"{name}_mypyc"] = doc
        except Exception as exc:
            errors[f"{name}_mypyc"] = f"{type(exc).__name__}: {exc}"
            continue
        python = {e.name: round(e.figure, 2) for e in comp_entries}
        for e in fast:
            e.detail = {"python": python.get(e.name)}
            e.name += "_mypyc"
        entries += fast

    notes += cost_notes(entries)
    facts["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    facts["bench_wall_s"] = round(time.monotonic() - t0, 1)
    extra: dict[str, Any] = {
        "quick": args.quick,
        "notes": notes,
        "errors": errors,
        "components": components,
    }
    write_results(
        facts,
        entries,
        extra,
        json_path=args.out / "latest.json",
        md_path=args.out / "latest.md",
    )
    log(f"wrote {args.out / 'latest.json'} and latest.md ({len(entries)} entries)")
    for e in entries:
        verdict = "" if e.met is None else ("  met" if e.met else "  MISSED")
        ratio = "" if e.ratio is None else f"  ratio {e.ratio:.3f}"
        print(f"{e.name:40s} {e.figure:>14,.1f} {e.unit}{ratio}{verdict}")
    for k, v in errors.items():
        print(f"ERROR {k}: {v}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
