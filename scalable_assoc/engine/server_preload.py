"""Imported first by the fork server of a local cluster's workers: distributed and :data:`WORKER_PRELOAD`, collector paused.

The server's imports (see :func:`~scalable_assoc.engine.worker_server.worker_start_method`)
create some 130,000 long-lived objects, which the cyclic garbage collector
traversed again at each full collection while they were being created: about
0.1 s of the server's 1.1-1.3 s of CPU. Imported here with the collector
disabled, then frozen (:func:`gc.freeze`): neither the server's nor its
workers' later collections traverse them (nor write into them, which would copy
the pages a worker shares with the server). Modules a caller adds to the
preload list are imported after this one, as usual. NumPy's submodules that
SciPy's import loads and no task uses load at their first use instead
(:mod:`scalable_assoc.engine.deferred_imports`).

The server also makes tornado's default TLS client context once (see
:func:`_make_tls_defaults`), which each worker made again at its first TLS
connection, on its way to registering.
"""

from __future__ import annotations

import gc
import importlib

from scalable_assoc.engine.deferred_imports import defer_unused_imports
from scalable_assoc.engine.worker_server import WORKER_PRELOAD


def _import_paused(names: tuple[str, ...]) -> None:
    enabled = gc.isenabled()
    gc.disable()
    try:
        defer_unused_imports()  # NumPy's submodules SciPy's import loads and no task uses (imports NumPy)
        for name in names:
            importlib.import_module(name)
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def _make_tls_defaults() -> None:
    """Make tornado's default TLS contexts here, once, for every worker forked from this server.

    tornado builds a TLS stream's default context (``ssl.create_default_context``,
    which loads the system's certificate authorities) even when the stream is
    given its own, as every stream of the local cluster is: 0.02-0.03 s of CPU
    in each new worker at its first connection, before it registers. Made here
    (cached by tornado), it is inherited. tornado leaves them to first use
    because making them can start threads on some systems, which a fork would
    not carry over: they are made only while this process still has one thread.
    """
    import threading

    import tornado.netutil

    if threading.active_count() > 1:
        return
    for name in ("_client_ssl_defaults", "_server_ssl_defaults"):  # tornado's cached makers (private: skipped if absent)
        make = getattr(tornado.netutil, name, None)
        if callable(make):
            make()


_import_paused(("distributed", *WORKER_PRELOAD))
_make_tls_defaults()
