"""`make accel`: the sans-IO packages compiled with mypyc, as an overlay beside the sources.

    python -m bench.accel [--out DIR]

Compiles ``hwmodel/`` and ``iopfd/core/`` (all but the two package ``__init__``s, which
stay Python and put the overlay ahead of their sources, and ``hwmodel/accel.py``, which
finds it) into ``build/accel``. Nothing is written into the source tree: the default
stays pure Python, and the accelerated build runs only where ``build/accel`` is on
``PYTHONPATH`` (``make test-accel``, ``bench.run``). ``hwmodel/accel.py`` says how the
overlay is found; ``hwmodel.COMPILED`` and ``iopfd --version`` say which one is active.

The overlay is rebuilt whole each time (a module gone from the sources must not stay
behind in it); a build takes one to three minutes, most of it the C compiler.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from collections.abc import Sequence
from importlib.machinery import ExtensionFileLoader, ModuleSpec, PathFinder
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.common import REPO
from hwmodel.accel import GROUP_LIBRARY

#: Where ``make accel`` puts the overlay; ``PYTHONPATH`` names this directory.
ACCEL = REPO / "build" / "accel"
#: The compiled modules of this interpreter, as ``hwmodel/accel.py`` looks for them.
OVERLAY = ACCEL / sys.implementation.cache_tag
#: Stays Python: the package ``__init__``s that put the overlay in their ``__path__``
#: (before any compiled module can load) and the helper they use for it.
INTERPRETED = ("hwmodel/__init__.py", "hwmodel/accel.py", "iopfd/core/__init__.py")
#: The mypyc group: its library, ``<GROUP>__mypyc``, sits at the top of the overlay,
#: where ``hwmodel/accel.py`` loads it and from where mypyc derives each compiled
#: module's ``__file__`` (and a compiled package's ``__path__``).
GROUP = GROUP_LIBRARY.removesuffix("__mypyc")
#: Written last: the build is complete and matches the sources of this moment.
STAMP = "built"


def sources() -> list[str]:
    """The modules to compile, as paths relative to the repository."""
    found = sorted(
        p.relative_to(REPO).as_posix()
        for pkg in ("hwmodel", "iopfd/core")
        for p in (REPO / pkg).rglob("*.py")
    )
    return [p for p in found if p not in INTERPRETED]


def missing_toolchain() -> str | None:
    """What the build lacks on this machine (a C compiler, Python's headers), or None."""
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(os.environ.get("CC", cc)) is None:
        return f"no C compiler ({os.environ.get('CC', cc)})"
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.exists():
        return f"no Python headers ({headers})"
    return None


def stale(out: Path = ACCEL) -> bool:
    """Whether the overlay misses what the sources hold now: not built, built from
    another set of modules, or older than a module (or than this build recipe)."""
    stamp = out / sys.implementation.cache_tag / STAMP
    if not stamp.exists() or stamp.read_text().splitlines()[1:] != sources():
        return True
    built = stamp.stat().st_mtime
    inputs = [REPO / p for p in sources()] + [Path(__file__)]
    return any(p.stat().st_mtime > built for p in inputs)


class _InterpretedMypy(importlib.abc.MetaPathFinder):
    """Loads mypy and mypyc from their ``.py`` files, not their compiled modules, so that
    ``_string_annotations`` can replace a function of mypyc's (a compiled caller would
    call the compiled function directly). It costs ~20 s of type checking per build."""

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name.partition(".")[0] not in {"mypy", "mypyc"}:
            return None
        spec = PathFinder.find_spec(name, path)
        if spec is None or spec.origin is None or not isinstance(spec.loader, ExtensionFileLoader):
            return spec
        where = Path(spec.origin)
        source = where.with_name(where.name.partition(".")[0] + ".py")
        if not source.exists():
            return spec
        return importlib.util.spec_from_file_location(
            name, source, submodule_search_locations=spec.submodule_search_locations
        )


def _string_annotations() -> None:
    """Give the compiled dataclasses string annotations, as their sources have them
    (every compiled module has ``from __future__ import annotations``). mypyc puts the
    annotated class objects themselves into a dataclass's ``__annotations__`` instead,
    which fails here in three ways:

    - a field typed with a compiled class of another module imported only for type
      checking (``FaultDelivered.ctx: ContextBase``) reads that class's type object
      before its module has run: NULL, a segfault at import (mypyc issue #1209);
    - a field typed ``object`` (``DmaTransfer.tag``) looks ``object`` up in the
      module's globals: ``KeyError: 'object'`` at import;
    - ``TYPE: ClassVar[int]`` is annotated ``int``, so dataclasses takes it for a field
      and a frozen descriptor's ``__init__`` fails to set it.

    dataclasses only needs to see which names are annotated, and which of those are
    ``ClassVar``s; ``classdef.load_type`` is used for these annotations alone."""
    from mypy.nodes import TypeInfo
    from mypy.types import Type, UnboundType
    from mypyc.ir.ops import Value
    from mypyc.irbuild import classdef
    from mypyc.irbuild.builder import IRBuilder

    if not str(classdef.__file__).endswith(".py"):
        raise RuntimeError("mypyc was imported compiled before bench.accel could intercept it")
    if "load_type" not in vars(classdef):
        raise RuntimeError("mypyc.irbuild.classdef has no load_type: update _string_annotations")

    def annotation(builder: IRBuilder, typ: TypeInfo, unbound: Type | None, line: int) -> Value:
        if isinstance(unbound, UnboundType) and unbound.name.rpartition(".")[2] == "ClassVar":
            # As written ("ClassVar[...]" is found through the module's own ``ClassVar``):
            # mypyc's ``int`` for ``TYPE: ClassVar[int]`` made it a field of the dataclass.
            return builder.load_str(unbound.name)
        return builder.load_str(typ.fullname)

    vars(classdef)["load_type"] = annotation


def build(out: Path = ACCEL, jobs: int | None = None) -> Path:
    """Compile into ``out/<cache tag>`` and return that directory."""
    # Imported here: mypyc and setuptools are build tools (the dev extra), not needed to
    # read the overlay's state; and mypyc must come from its sources (_InterpretedMypy).
    if not any(isinstance(f, _InterpretedMypy) for f in sys.meta_path):
        sys.meta_path.insert(0, _InterpretedMypy())
    from mypyc.build import mypycify
    from setuptools import Distribution  # type: ignore[import-untyped]

    overlay = out / sys.implementation.cache_tag
    work = REPO / "build" / "accel-work"
    shutil.rmtree(overlay, ignore_errors=True)
    t0 = time.monotonic()
    _string_annotations()
    os.chdir(REPO)  # mypy reads [tool.mypy] of pyproject.toml, and the paths are relative
    extensions = mypycify(
        # Only the compiled modules are checked here (``make typecheck`` covers the rest),
        # so pyproject's override for msgpack would be reported as unused.
        ["--no-warn-unused-configs", *sources()],
        target_dir=str(work / "c"),
        group_name=GROUP,
    )
    dist = Distribution({"name": "iopfd-accel", "ext_modules": extensions})
    dist.script_args = [
        "build_ext",
        "--build-lib",
        str(overlay),
        "--build-temp",
        str(work / "obj"),
        "--parallel",
        str(jobs or os.cpu_count() or 1),
    ]
    dist.parse_command_line()
    dist.run_commands()
    took = f"{len(extensions)} extensions in {time.monotonic() - t0:.0f} s"
    (overlay / STAMP).write_text("\n".join([took, *sources()]) + "\n")
    return overlay


#: What ``--compare`` runs: the model-only and sans-IO core benches (bench/run.py's).
COMPARED = (("bench.bench_core", "--quick"), ("bench.bench_hwmodel",))


def compare(rounds: int) -> dict[str, dict[str, Any]]:
    """Each bench of ``COMPARED`` on Python and on the overlay, alternating, ``rounds``
    times: per entry the median figure of each build, and the CPU seconds each whole
    run took (the shared machine makes wall-clock figures noisy; alternating keeps the
    noise out of the ratio as far as it can)."""
    figures: dict[str, dict[str, list[float]]] = {}
    units: dict[str, str] = {}
    cpu: dict[str, list[float]] = {}
    for r in range(rounds):
        for build in ("python", "mypyc") if r % 2 == 0 else ("mypyc", "python"):
            env = dict(os.environ)
            env.pop("PYTHONPATH", None)
            if build == "mypyc":
                env["PYTHONPATH"] = str(ACCEL)
            for module, *args in COMPARED:
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                proc = subprocess.run(
                    [sys.executable, "-m", module, *args],
                    cwd=REPO,
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                used = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
                cpu.setdefault(f"{module} {build}", []).append(used)
                for row in json.loads(proc.stdout)["entries"]:
                    name = f"{module.rpartition('_')[2]}.{row['name']}"
                    figures.setdefault(name, {}).setdefault(build, []).append(row["figure"])
                    units[name] = row["unit"]
    out: dict[str, dict[str, Any]] = {}
    for name, by in figures.items():
        out[name] = {b: statistics.median(by[b]) for b in ("python", "mypyc")}
        out[name]["unit"] = units[name]
        out[name]["spread"] = {b: (min(by[b]), max(by[b])) for b in ("python", "mypyc")}
    for run, seconds in cpu.items():
        out[f"cpu_s {run}"] = {"median": statistics.median(seconds), "all": seconds}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.accel")
    ap.add_argument("--out", type=Path, default=ACCEL, help=f"overlay root (default {ACCEL})")
    ap.add_argument("-j", "--jobs", type=int, default=None, help="parallel C compiles")
    ap.add_argument("--if-stale", action="store_true", help="only when a source changed")
    ap.add_argument(
        "--can-build", action="store_true", help="exit 1 (and say why) where no build is possible"
    )
    ap.add_argument(
        "--compare", type=int, metavar="ROUNDS", help="bench Python against the overlay (JSON)"
    )
    args = ap.parse_args(argv)
    if args.compare:
        json.dump(compare(args.compare), sys.stdout, indent=1)
        print()
        return 0
    lack = missing_toolchain()
    if args.can_build or lack is not None:
        if lack is not None:
            print(f"note: {lack}; the mypyc build is not made")
        return 1 if args.can_build and lack is not None else 0
    if args.if_stale and not stale(args.out.resolve()):
        print(f"accel: {args.out.resolve()} is up to date")
        return 0
    overlay = build(args.out.resolve(), args.jobs)
    print(f"accel: {len(sources())} modules compiled into {overlay}")
    print(f"accel: run with PYTHONPATH={args.out.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
