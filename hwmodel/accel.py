"""Finding the optional mypyc build of the sans-IO packages (``make accel``).

``make accel`` (``bench/accel.py``) compiles ``hwmodel/`` and ``iopfd/core/`` into an
overlay, ``build/accel/<cache tag>/``, and never into the source tree, so the default
stays pure Python. Where a ``sys.path`` entry holds an overlay (``PYTHONPATH=build/accel``)
its package directories go ahead of the sources in the packages' ``__path__``: a
compiled module is found before its ``.py``, and what the overlay lacks still comes
from the sources.

The overlay sits one level below the ``sys.path`` entry, under a name no import can
reach: on ``sys.path`` itself its ``hwmodel/`` (no ``__init__``, which stays Python)
would be a namespace package that hides the real one wherever the editable install's
finder, not ``sys.path``, provides ``hwmodel``. So the library of the compiled modules
(one mypyc group), which their extension modules import by its top-level name, is
loaded from the overlay here.

This module is never compiled: the package ``__init__``s use it before their
``__path__`` names the overlay.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from importlib.machinery import PathFinder

#: The compiled modules' shared library, at the top of the overlay.
GROUP_LIBRARY = "iopfd_accel__mypyc"


def overlay_path(package: str) -> list[str]:
    """The directory of ``package`` (dotted name) in the first overlay on ``sys.path``."""
    for entry in sys.path:
        root = os.path.join(entry or os.curdir, sys.implementation.cache_tag)
        path = os.path.join(root, *package.split("."))
        if os.path.isdir(path):
            _load_library(root)
            return [path]
    return []


def _load_library(root: str) -> None:
    if GROUP_LIBRARY in sys.modules:
        return
    spec = PathFinder.find_spec(GROUP_LIBRARY, [root])
    if spec is None or spec.loader is None:
        raise ImportError(f"{root} has no {GROUP_LIBRARY}: rebuild it with make accel")
    library = importlib.util.module_from_spec(spec)
    sys.modules[GROUP_LIBRARY] = library
    spec.loader.exec_module(library)


def compiled(module: str) -> bool:
    """Whether ``module`` (dotted name, imported) came from the overlay, not its ``.py``."""
    return not (sys.modules[module].__file__ or "").endswith(".py")


__all__ = ["GROUP_LIBRARY", "compiled", "overlay_path"]
