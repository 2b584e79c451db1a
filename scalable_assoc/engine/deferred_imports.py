"""Modules a command's imports load but never use, registered to load at their first use instead (command processes only).

SciPy's ``scipy.linalg`` (which the kernels use) imports its vendored
``array_api_compat``, whose NumPy namespace is a copy of NumPy's made by
``from numpy import *``: that loads every submodule NumPy lists, among them
``numpy.f2py`` (which imports ``charset_normalizer``) and ``numpy.testing``
(which imports ``unittest``). No command uses either; together they took
0.07-0.10 s of CPU in each process that imports SciPy (the command's own and
the workers' fork server, both on the way to the first task). Registered here
with :class:`importlib.util.LazyLoader`, each is executed at the first access
to one of its attributes, so a caller that does use one gets the whole module
as usual. Only where this process is a command (the CLI's ``run``) or the fork
server: a library caller's process is left as it is.
"""

from __future__ import annotations

import importlib.util
import sys

#: NumPy's submodules that SciPy's import loads and no command uses.
UNUSED_SUBMODULES = ("numpy.f2py", "numpy.testing")


def defer_unused_imports(names: tuple[str, ...] = UNUSED_SUBMODULES) -> None:
    """Make each of ``names`` (a submodule not imported yet) load at its first attribute access instead of at its import.

    Imports its parent package (NumPy) if needed. A module already imported,
    or not found, is left alone.
    """
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = importlib.import_module(parent_name)
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            continue
        loader = importlib.util.LazyLoader(spec.loader)
        spec.loader = loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        loader.exec_module(module)  # executes nothing yet: the module loads when an attribute of it is first looked up
        # As an import binds a submodule in its parent (NumPy's own __getattr__ would import it again).
        setattr(parent, child, module)
