"""Start-up: p-values without scipy.stats, the local cluster's credentials, the cluster started while a study is prepared.

- ``stats.tails`` gives scipy.stats' upper tails bit for bit, edge cases included
  (it exists so that no kernel imports scipy.stats, which costs half a second);
- the local cluster's temporary credentials are an EC key and a certificate for
  every role, TLS required;
- a run whose preparation fails, with its local cluster starting in the
  background meanwhile, raises the preparation's error and leaves no cluster
  (closed in the background once started).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import scipy.stats
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from scalable_assoc.engine import graph
from scalable_assoc.engine import run as engine_run
from scalable_assoc.engine.cluster import temporary_security
from scalable_assoc.errors import UserInputError
from scalable_assoc.simulate import SimulatedStudy
from scalable_assoc.stats import tails

EDGES = np.array([0.0, -0.0, 1e-300, 0.5, 1.96, 40.0, 1e5, -1.0, -1e-9, np.inf, -np.inf, np.nan])
DFS = np.array([0.0, -1.0, np.nan, 0.5, 1.0, 2.0, 7.0, 1e4, 1e10, np.inf, 3.0, 4.0])


def _same(ours: np.ndarray, theirs: np.ndarray) -> None:
    np.testing.assert_array_equal(ours, theirs)  # NaN where NaN, every other value equal bit for bit


@pytest.mark.parametrize("df", [DFS, 5, np.arange(-1, 11)])
def test_tails_equal_scipy_stats(df) -> None:
    x = np.concatenate([EDGES, np.random.default_rng(1).standard_normal(12) * 5])
    dfs = np.resize(df, x.size) if np.ndim(df) else df
    _same(tails.t_sf(x, dfs), scipy.stats.t.sf(x, dfs))
    _same(tails.f_sf(x, 3, dfs), scipy.stats.f.sf(x, 3, dfs))
    _same(tails.f_sf(x, dfs, 50), scipy.stats.f.sf(x, dfs, 50))
    _same(tails.chi2_sf(x, dfs), scipy.stats.chi2.sf(x, dfs))
    _same(tails.norm_sf(x), scipy.stats.norm.sf(x))
    _same(tails.t_sf(x.astype(np.float32), dfs), scipy.stats.t.sf(x.astype(np.float32), dfs))


def test_the_engine_does_not_import_scipy_stats() -> None:
    code = "import sys, scalable_assoc.engine.run, scalable_assoc.engine.tasks; print('scipy.stats' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "False"


def test_local_cluster_credentials_are_an_ec_key_for_every_role() -> None:
    security: Any = temporary_security()  # its tls_* attributes are set dynamically
    assert security.require_encryption
    certificate = x509.load_pem_x509_certificate(security.tls_scheduler_cert.encode())
    assert isinstance(certificate.public_key(), ec.EllipticCurvePublicKey)
    assert security.tls_ca_file == security.tls_worker_cert == security.tls_client_cert == security.tls_scheduler_cert
    assert security.tls_worker_key == security.tls_client_key == security.tls_scheduler_key


def _live_children() -> set[str]:
    """Live descendants, but multiprocessing's resource tracker and fork server (started by the first worker, kept for the
    process's life; the workers of later clusters are forked from that server)."""
    live = set()
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            command = " ".join(child.cmdline())
            if child.status() != psutil.STATUS_ZOMBIE and not any(kept in command for kept in ("resource_tracker", "forkserver")):
                live.add(f"{child.pid} {command}")
    return live


@contextlib.contextmanager
def _recording_clusters(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """``"asked"``, ``"started"`` and ``"closed"`` for each local cluster asked for while inside (in any thread)."""
    opened: list[str] = []
    real = graph.dask_client

    @contextlib.contextmanager
    def recorded(*args, **kwargs) -> Iterator:
        opened.append("asked")
        with real(*args, **kwargs) as client:
            opened.append("started")
            yield client
        opened.append("closed")

    monkeypatch.setattr(graph, "dask_client", recorded)
    yield opened


def test_a_failed_preparation_leaves_no_cluster(small_study: SimulatedStudy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _live_children()

    class FailingPreparation:
        def __init__(self, *args, on_checked, **kwargs):
            self.plan = engine_run.load_plan(small_study.plan_path)
            on_checked()  # the metadata passed its checks: the cluster starts

        def parts(self):
            time.sleep(0.5)  # the cluster is still starting
            raise UserInputError("layer 'species' cannot be read")
            yield

    monkeypatch.setattr(engine_run, "StudyPreparation", FailingPreparation)
    with _recording_clusters(monkeypatch) as opened, pytest.raises(UserInputError, match="cannot be read"):
        engine_run.run_study(small_study.plan_path, tmp_path / "out", workers=1)
    # The error comes at once; the cluster, abandoned, is closed in the background once started.
    deadline = time.monotonic() + 60
    while (opened != ["asked", "started", "closed"] or _live_children() - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert opened == ["asked", "started", "closed"], "the cluster started in the background and was closed"
    assert _live_children() - before == set(), "no process of the cluster is left"


def test_local_cluster_workers_keep_block_sized_memory_on_the_heap(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import dask

    from scalable_assoc.engine.cluster import WORKER_MALLOC, WORKER_PAGES, local_cluster, worker_environ

    for name in (*WORKER_MALLOC, *WORKER_PAGES):
        monkeypatch.delenv(name, raising=False)
    # A value the user configured is kept; distributed's own trim default is replaced.
    configured = {"MALLOC_TRIM_THRESHOLD_": 12345, "OMP_NUM_THREADS": 1, "NUMPY_MADVISE_HUGEPAGE": 1}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": configured}):
        assert worker_environ() == {**configured, "MALLOC_MMAP_THRESHOLD_": 64 * 2**20, "MALLOC_ARENA_MAX": 1}
    # What an earlier default cluster's nannies leave in this process's environment does not win.
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    cluster, client = local_cluster(1)
    try:
        names = (*WORKER_MALLOC, *WORKER_PAGES, "OMP_NUM_THREADS")
        seen = next(iter(client.run(lambda: {name: os.environ.get(name) for name in names}).values()))
        huge_pages = next(iter(client.run(_numpy_huge_pages).values()))
        refaulted = client.submit(_pages_faulted_again, pure=False).result()  # on the worker's task thread, as a fit
    finally:
        client.close()
        cluster.close()
    assert seen == {**{name: str(value) for name, value in {**WORKER_MALLOC, **WORKER_PAGES}.items()}, "OMP_NUM_THREADS": "1"}
    assert huge_pages is False, "the workers' NumPy allocates ordinary pages"
    if sys.platform.startswith("linux"):
        # Of some 23,000 pages; a task thread with a glibc arena of its own faulted one whole array (7,800) in again.
        assert refaulted < 2_000, f"a task re-allocating block-sized arrays faulted {refaulted} pages in afresh"


@pytest.mark.parametrize("dashboard", [None, "127.0.0.1:0"], ids=["closed", "dashboard"])
def test_local_cluster_workers_profile_only_for_a_dashboard(dashboard: str | None) -> None:
    from scalable_assoc.engine.cluster import local_cluster

    cluster, client = local_cluster(1, dashboard=dashboard)
    try:
        profiling = set(client.run(_profiles).values())
    finally:
        client.close()
        cluster.close()
    # The statistical profiler feeds only the dashboard's profile pages; without one it would sample every thread each 10 ms.
    assert profiling == {dashboard is not None}


def _profiles(dask_worker: Any) -> bool:
    """Whether the worker runs distributed's statistical profiler (run on a worker by ``client.run``)."""
    return "profile" in dask_worker.periodic_callbacks


def _pages_faulted_again() -> int:
    """Minor faults of allocating and touching three 32 MB arrays at once, after the same was done and freed (run as a task)."""
    import resource

    def touch_three() -> None:
        arrays = [np.ones(4_000_000) for _ in range(3)]
        del arrays

    touch_three()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    touch_three()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def _numpy_huge_pages() -> bool:
    """Whether NumPy in this process asks for transparent huge pages for large arrays (run on a worker)."""
    from numpy._core.multiarray import _get_madvise_hugepage

    return bool(_get_madvise_hugepage())


def test_a_plan_naming_a_missing_column_starts_no_cluster(
    small_study: SimulatedStudy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = small_study.plan_path.read_text()
    assert "base: [age, " in text
    bad = small_study.plan_path.with_name("bad_plan.yaml")
    bad.write_text(text.replace("base: [age, ", "base: [agex, "))
    with _recording_clusters(monkeypatch) as opened, pytest.raises(UserInputError, match="agex"):
        engine_run.run_study(bad, tmp_path / "out", workers=1)
    assert opened == [], "the metadata check failed before any cluster started"


def test_workers_are_forked_from_the_server_started_before_the_cluster() -> None:
    import multiprocessing.forkserver
    import os

    from scalable_assoc.engine.cluster import WORKER_PRELOAD, local_cluster, start_worker_server

    if not start_worker_server(WORKER_PRELOAD):
        pytest.skip("workers are not forked here")
    server = multiprocessing.forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]  # the running server
    assert server is not None
    cluster, client = local_cluster(1, preload=WORKER_PRELOAD)
    try:
        parents = set(client.run(os.getppid).values())
    finally:
        client.close()
        cluster.close()
    assert parents == {server}, "the cluster's workers came from the server started ahead of it"
    assert os.environ["NUMPY_MADVISE_HUGEPAGE"] == "0", "the server was started with the workers' environment"


def _http_port(dask_worker: Any) -> tuple[str, int]:
    return dask_worker.http_server.address, dask_worker.http_server.port


def _refuses(address: tuple[str, int]) -> bool:
    import socket

    try:
        socket.create_connection(address, timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_local_workers_close_their_http_server_as_they_start_and_when_restarted() -> None:
    from scalable_assoc.engine.cluster import WORKER_HTTP, local_cluster

    cluster, client = local_cluster(1)
    try:
        started = list(client.run(_http_port).values())
        preloads = list(client.run(lambda dask_worker: [preload.name for preload in dask_worker.preloads]).values())
        client.restart()
        restarted = list(client.run(_http_port).values())
    finally:
        client.close()
        cluster.close()
    assert preloads == [[WORKER_HTTP]], "closed by the workers' preload, with no plugin registered by the client"
    assert started and restarted and started != restarted
    assert all(_refuses(address) for address in started + restarted), "a worker's HTTP port accepts connections"


def test_worker_preloads_keep_the_configured_ones_and_their_arguments() -> None:
    import dask

    from scalable_assoc.engine.cluster import WORKER_HTTP, _worker_preloads

    assert _worker_preloads(("scalable_assoc.engine.tasks",)) == {
        "preload": ["scalable_assoc.engine.tasks", WORKER_HTTP],
        "preload_argv": [[], []],
    }
    settings = {"distributed.worker.preload": ["a", "b"], "distributed.worker.preload-argv": [["--x"], ["--y", "1"]]}
    with dask.config.set(settings):
        assert _worker_preloads(()) == {"preload": ["a", "b", WORKER_HTTP], "preload_argv": [["--x"], ["--y", "1"], []]}
    with dask.config.set({"distributed.worker.preload": ["a", "b"], "distributed.worker.preload-argv": ["--x"]}):
        assert _worker_preloads(()) == {"preload": ["a", "b", WORKER_HTTP], "preload_argv": [["--x"], ["--x"], []]}


_DEFERRED = """
import json, sys
from scalable_assoc.engine.deferred_imports import defer_unused_imports
defer_unused_imports()
import scalable_assoc.engine.run, scalable_assoc.engine.tasks
loaded = sorted(name for name in ("unittest", "charset_normalizer") if name in sys.modules)
import numpy
numpy.testing.assert_array_equal(numpy.arange(3), [0, 1, 2])  # loaded at its first use, whole
from numpy.f2py import crackfortran  # noqa: F401
print(json.dumps({"loaded_by_imports": loaded, "used": "unittest" in sys.modules and "numpy.f2py.crackfortran" in sys.modules}))
"""


def test_numpy_submodules_scipy_loads_unused_load_at_their_first_use() -> None:
    done = subprocess.run([sys.executable, "-c", _DEFERRED], capture_output=True, text=True, timeout=120, check=True)
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"loaded_by_imports": [], "used": True}


def test_local_cluster_servers_check_their_event_loops_each_second() -> None:
    from scalable_assoc.engine.cluster import local_cluster

    cluster, client = local_cluster(1)
    try:
        scheduler = client.run_on_scheduler(_tick_milliseconds)
        workers = set(client.run(_tick_milliseconds).values())
        nannies = set(client.run(_tick_milliseconds, nanny=True).values())
    finally:
        client.close()
        cluster.close()
    # distributed's default, each 20 ms, cost the client's event loop (scheduler, nannies) some 4% of a core.
    assert (scheduler, workers, nannies) == (1000.0, {1000.0}, {1000.0})


def _tick_milliseconds(dask_worker: Any = None, dask_scheduler: Any = None) -> float:
    """The interval of a server's event loop check (run by ``client.run`` or ``run_on_scheduler``), in milliseconds."""
    server = dask_worker if dask_worker is not None else dask_scheduler
    return float(server.periodic_callbacks["tick"].callback_time)
