"""Starting or connecting to a Dask cluster, closed by default.

The local cluster speaks TLS with temporary credentials made for it (in memory
only, see :func:`temporary_security`), listens on the
loopback interface only (scheduler, nannies and workers) and serves no HTTP:
no dashboard, no ``/info`` pages, unless a dashboard is asked for (on loopback
unless an address says otherwise). A process on the machine that finds its
ports cannot submit tasks without the credentials.

An existing cluster is reached by address: ``tcp://`` as it is, ``tls://``
with a :class:`~distributed.security.Security` (built by :func:`tls_security`
from the ``--tls-*`` options, or dask's own ``distributed.comm.tls``
configuration). Every failure to connect is a :class:`UserInputError` naming
the address.

A cluster profile (``--cluster deploy/slurm.yaml``, :mod:`scalable_assoc.engine.profiles`)
starts workers as SLURM jobs, closed the same way (:mod:`scalable_assoc.engine.slurm`).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import dask
from distributed import Client, LocalCluster, Scheduler, Worker
from distributed.diagnostics.plugin import WorkerPlugin
from distributed.security import Security

from scalable_assoc.engine.profiles import ClusterProfile

# The workers' settings and fork server live in a module that imports no distributed (the CLI starts the server before
# distributed is imported); their names stay importable from here, where the cluster is.
from scalable_assoc.engine.worker_server import (
    WORKER_HTTP,
    WORKER_MALLOC,  # noqa: F401
    WORKER_PAGES,  # noqa: F401
    WORKER_PRELOAD,  # noqa: F401
    set_worker_environ,
    start_worker_server,  # noqa: F401
    worker_environ,  # noqa: F401
    worker_start_method,
)
from scalable_assoc.errors import UserInputError

logger = logging.getLogger(__name__)

#: The interface every process of the local cluster listens on.
LOOPBACK = "127.0.0.1"
#: Where ``--dashboard`` without an address serves the dashboard.
DEFAULT_DASHBOARD = f"{LOOPBACK}:8787"
#: How long to try reaching an existing scheduler (refused connections are retried until then).
CONNECT_TIMEOUT = "20s"
#: The name under which :class:`NoHttp` is registered on a cluster's workers.
NO_HTTP_PLUGIN = "scalable-assoc-no-http"
_TLS_OPTIONS = (
    "--tls-ca-file (the certificate authority that signed the scheduler's certificate), "
    "--tls-cert and --tls-key (a certificate and key signed by the cluster's authority)"
)


def default_workers() -> int:
    """One single-threaded worker process per available core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def tls_security(ca_file: str | Path | None = None, cert: str | Path | None = None, key: str | Path | None = None) -> Security | None:
    """The client credentials for a ``tls://`` scheduler, from the ``--tls-*`` options; ``None`` when none is given.

    ``ca_file`` (the authority that signed the cluster's certificates) and
    ``cert`` are needed together; ``key`` may be left out when ``cert`` holds
    the key too. Files must exist (checked here, so a typo is named before any
    work starts).
    """
    given = {"--tls-ca-file": ca_file, "--tls-cert": cert, "--tls-key": key}
    if all(value is None for value in given.values()):
        return None
    missing = [option for option in ("--tls-ca-file", "--tls-cert") if given[option] is None]
    if missing:
        raise UserInputError(
            f"{' and '.join(missing)} missing: a TLS connection needs the cluster's certificate authority (--tls-ca-file) "
            "and this client's certificate (--tls-cert, with --tls-key unless the certificate file holds the key)"
        )
    for option, value in given.items():
        if value is not None and not Path(value).is_file():
            raise UserInputError(f"{option} {value}: no such file")
    return Security(
        tls_ca_file=str(ca_file),
        tls_client_cert=str(cert),
        tls_client_key=str(key) if key is not None else None,
        require_encryption=True,
    )


def dashboard_address(value: str | None) -> str | None:
    """``HOST:PORT`` for the local cluster's dashboard from ``--dashboard [ADDRESS]``; ``None``: no dashboard.

    A bare ``PORT`` or ``:PORT`` means loopback (a dashboard is reachable
    from other machines only when an address says so); port 0 picks a free one.
    """
    if value is None:
        return None
    text = value.strip()
    host, _, port = text.rpartition(":")
    if not host.strip("[]"):
        host = LOOPBACK
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535 or any(c.isspace() for c in host):
        raise UserInputError(f"--dashboard {value!r} is not an address; give HOST:PORT (e.g. {DEFAULT_DASHBOARD}) or a port")
    return f"{host}:{number}"


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_cluster_options(
    scheduler: str | None,
    security: Security | None = None,
    dashboard: str | None = None,
    *,
    workers: int | None = None,
    profile: ClusterProfile | None = None,
) -> str | None:
    """Refuse option combinations that cannot work, before any work starts; returns the scheduler address to use.

    ``tls://`` needs credentials (``security``, or dask's ``distributed.comm.tls``
    configuration); credentials need a ``tls://`` address (an address without
    a scheme then becomes one); a dashboard and credentials are for one kind
    of cluster each (the local one makes its own credentials, an existing one
    serves its dashboard where its scheduler was told to). A cluster
    ``profile`` (``--cluster``) starts its own workers with credentials of
    its own and serves no dashboard: it takes none of the other options.
    """
    if profile is not None:
        given = {"--scheduler": scheduler, "--workers": workers, "--dashboard": dashboard, "--tls-ca-file/--tls-cert/--tls-key": security}
        clashing = [option for option, value in given.items() if value is not None]
        if clashing:
            raise UserInputError(
                f"--cluster {profile.source} cannot be combined with {' or '.join(clashing)}: the profile says where the workers run "
                "(its 'jobs', 'cores' and 'processes'), and the cluster it starts makes its own TLS credentials and serves no dashboard; "
                "leave out " + " and ".join(clashing) + ", or --cluster"
            )
        return None
    if scheduler is None:
        if security is not None:
            raise UserInputError(
                "--tls-ca-file, --tls-cert and --tls-key are for connecting to an existing cluster with --scheduler tls://HOST:PORT; "
                "the local cluster makes its own temporary credentials"
            )
        dashboard_address(dashboard)
        return None
    if dashboard is not None:
        raise UserInputError(
            f"--dashboard starts a dashboard on the local cluster; the cluster at {scheduler} serves its own where its scheduler "
            "was started (dask scheduler --dashboard-address)"
        )
    if "://" not in scheduler and security is not None:
        scheduler = f"tls://{scheduler}"
    if scheduler.startswith("tls://"):
        if security is None and not _configured_tls().get_tls_config_for_role("client")["cert"]:
            raise UserInputError(f"--scheduler {scheduler} is a TLS address but no client credentials were given; add {_TLS_OPTIONS}")
    elif security is not None:
        raise UserInputError(f"--tls-* options given, but --scheduler {scheduler} is not a TLS address; write it as tls://HOST:PORT")
    return scheduler


def _configured_tls() -> Security:
    """The client credentials of dask's configuration (``distributed.comm.tls``, e.g. ``DASK_DISTRIBUTED__COMM__TLS__CA_FILE``)."""
    return Security()


def _connect(scheduler: str, security: Security | None) -> Client:
    tls = scheduler.startswith("tls://")
    try:
        return Client(
            scheduler, security=security if security is not None else (_configured_tls() if tls else None), timeout=CONNECT_TIMEOUT
        )
    except (OSError, TimeoutError, ValueError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        if tls:
            hint = (
                "check that a scheduler runs there with TLS and that --tls-ca-file is the authority that signed its certificate "
                "and --tls-cert/--tls-key a certificate it accepts (signed by the same authority)"
            )
        else:
            hint = "check that a scheduler runs there; if it uses TLS, write the address as tls://HOST:PORT and give " + _TLS_OPTIONS
        raise UserInputError(f"cannot connect to the Dask scheduler at {scheduler}: {reason}; {hint}") from None


class NoHttp(WorkerPlugin):
    """Closes a worker's HTTP server (its metrics and health pages): the closed cluster serves no HTTP. Applied to restarted workers too.

    For workers started as SLURM jobs; a local cluster's workers close theirs as they start (:mod:`scalable_assoc.engine.worker_http`).
    """

    idempotent = True

    def setup(self, worker: Worker) -> None:
        worker.http_server.stop()


def stop_scheduler_http(dask_scheduler: Scheduler) -> None:
    """Run by ``client.run_on_scheduler`` (which passes the scheduler under this name)."""
    dask_scheduler.http_server.stop()


def temporary_security() -> Security:
    """Credentials for one local cluster, as :meth:`Security.temporary` makes them but with an EC (P-256) key rather than RSA-2048.

    Generating an RSA-2048 key takes 30-100 ms of CPU (a random search for
    primes) and every TLS handshake signs with it; a P-256 key takes well under
    a millisecond and signs faster, at a strength above RSA-2048's. One
    self-signed certificate (``dask-internal``, valid for a year) serves every
    role; key and certificate exist only in memory.
    """
    from cryptography import x509  # what distributed's Security.temporary uses too
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    key_text = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dask-internal")])
    now = datetime.datetime.now(tz=datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("dask-internal")]), critical=False)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    cert_text = certificate.public_bytes(serialization.Encoding.PEM).decode()
    return Security(
        require_encryption=True,
        tls_ca_file=cert_text,
        tls_client_key=key_text,
        tls_client_cert=cert_text,
        tls_scheduler_key=key_text,
        tls_scheduler_cert=cert_text,
        tls_worker_key=key_text,
        tls_worker_cert=cert_text,
    )


def local_cluster(workers: int | None = None, dashboard: str | None = None, preload: Sequence[str] = ()) -> tuple[LocalCluster, Client]:
    """A closed local cluster and a client of it (see the module docstring); the caller closes both.

    ``workers`` single-threaded worker processes (one per core by default):
    the kernels are BLAS-bound, and distributed's nannies pin each worker's
    BLAS to one thread, so processes rather than threads use the cores without
    oversubscription. ``dashboard``: ``HOST:PORT`` (see :func:`dashboard_address`)
    of the scheduler's dashboard, ``None`` for none. ``preload``: modules every
    worker imports as it starts (before it counts as started), e.g. the task
    modules, so that the first tasks do not wait for their imports. The
    workers run distributed's statistical profiler only with a dashboard,
    which alone shows what it collects.
    """
    address = dashboard_address(dashboard)
    # No routes on servers nobody asked for, so nothing is served even before they are closed (the workers' as they start,
    # by the WORKER_HTTP preload; the scheduler's below).
    routes: dict[str, list] = {"distributed.worker.http.routes": []}
    if address is None:
        routes["distributed.scheduler.http.routes"] = []
    # distributed's statistical profiler samples the stack of every thread of every worker each 10 ms, for the
    # dashboard's profile pages only. A worker has some eight threads (its task thread, zarr's I/O and asyncio
    # threads): with 2 workers fitting 100,000 features, each worker's event loop thread took 1.1-2.0 s of CPU with
    # it and 0.6-0.7 s without, CPU the two workers' fits lost on two cores. Kept when a dashboard is asked for.
    profiler = {"distributed.worker.profile.enabled": address is not None}
    environ = set_worker_environ()
    # No work stealing: a run places each shared block with its fits on one worker (engine/run.py, _place_groups), and a
    # worker out of work took the blocks queued for the other (reading them is cheap to move), whose fits then pulled them
    # back. Tasks the run does not place are queued by the scheduler and go to whichever worker is free.
    stealing = {"distributed.scheduler.work-stealing": False}
    # Every server (scheduler, nannies, workers) measures its event loop's delay each 20 ms by default, only to warn of
    # a loop blocked for seconds. On an idle 2-worker cluster those callbacks took the client's loop (scheduler and
    # nannies) 0.045 of a core and the two workers 0.039 together; each second: 0.024 and 0.016. While two workers fit
    # 100,000 features (a loaded machine, 2 pairs of runs) the client's loop took 0.042-0.043 of a core against
    # 0.019-0.022, CPU the busy workers otherwise lose on two cores.
    tick = {"distributed.admin.tick.interval": "1s"}
    settings = {**routes, **profiler, **stealing, **tick, "distributed.nanny.pre-spawn-environ": environ, **worker_start_method(preload)}
    with dask.config.set(settings):
        cluster = LocalCluster(
            n_workers=workers or default_workers(),
            threads_per_worker=1,
            processes=True,
            host=LOOPBACK,
            protocol="tls://",
            security=temporary_security(),
            # The scheduler always starts an HTTP server; a free loopback port when no dashboard is wanted (closed below).
            dashboard_address=address or f"{LOOPBACK}:0",
            scheduler_kwargs={"dashboard": address is not None},
            worker_dashboard_address=None,
            silence_logs=logging.ERROR,
            **_worker_preloads(preload),
        )
    try:
        client = Client(cluster)
        if address is None:
            client.run_on_scheduler(stop_scheduler_http)
    except BaseException:
        cluster.close()
        raise
    if address is not None:
        server = cluster.scheduler.http_server
        host = f"[{server.address}]" if ":" in str(server.address) else server.address
        logger.info("dashboard: http://%s:%s/status", host, server.port)
        if not is_loopback(str(server.address)):
            logger.warning("the dashboard listens on %s, reachable from other machines without a password", server.address)
    return cluster, client


def _worker_preloads(preload: Sequence[str]) -> dict[str, list]:
    """The local cluster's worker preloads and their arguments (``LocalCluster``'s ``preload`` and ``preload_argv``).

    ``preload`` (else dask's ``distributed.worker.preload`` setting, with its
    ``preload-argv``), then :data:`WORKER_HTTP`, which closes the worker's HTTP
    server before the worker registers (see :mod:`scalable_assoc.engine.worker_http`).
    """
    modules = list(preload) if preload else list(_listed(dask.config.get("distributed.worker.preload", default=[])))
    argv = [] if preload else list(dask.config.get("distributed.worker.preload-argv", default=[]) or [])
    # One list of arguments per module, as distributed reads the setting: a flat list is every module's.
    if argv and isinstance(argv[0], str):
        argv = [argv] * len(modules)
    elif not argv:
        argv = [[] for _ in modules]
    return {"preload": [*modules, WORKER_HTTP], "preload_argv": [*(list(each) for each in argv), []]}


def _listed(value: str | Sequence[str] | None) -> list[str]:
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


@contextlib.contextmanager
def dask_client(
    scheduler: str | None = None,
    workers: int | None = None,
    *,
    security: Security | None = None,
    dashboard: str | None = None,
    profile: ClusterProfile | None = None,
    preload: Sequence[str] = (),
) -> Iterator[Client]:
    """A client of an existing scheduler (``tcp://`` or ``tls://host:port`` with ``security``), of a new closed local cluster,
    or of a new cluster described by a cluster ``profile`` (workers as SLURM jobs, see :mod:`scalable_assoc.engine.slurm`;
    its ``shared_directory`` must be set, see :meth:`ClusterProfile.with_shared_directory`).

    See :func:`local_cluster` for ``workers``, ``dashboard`` and ``preload`` (a new local cluster's only), and
    :func:`check_cluster_options` for what is refused.
    """
    address = check_cluster_options(scheduler, security, dashboard, workers=workers, profile=profile)
    if profile is not None:
        from scalable_assoc.engine.slurm import slurm_client  # imports dask-jobqueue, only when asked for

        with slurm_client(profile) as client:
            yield client
        return
    if address is not None:
        client = _connect(address, security)
        try:
            yield client
        except BaseException:
            _close_quietly(client)
            raise
        client.close()
        return
    cluster, client = local_cluster(workers, dashboard, preload)
    try:
        yield client
    except BaseException:
        _close_quietly(client, cluster)
        raise
    _close_quietly(client, cluster)


def _silence_distributed_logs() -> None:
    """Run on every worker and nanny of the local cluster just before it closes (by ``client.run``)."""
    logging.getLogger("distributed").setLevel(logging.CRITICAL + 1)


@contextlib.contextmanager
def _distributed_logs_silenced() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in ("distributed", "distributed.client", "distributed.comm", "distributed.core")]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for each, level in zip(loggers, levels, strict=True):
            each.setLevel(level)


def _close_quietly(client: Client, cluster: LocalCluster | None = None) -> None:
    """Close the client (and the local ``cluster``) without distributed's shutdown noise.

    After a failed run, whose error already says what happened: a client that
    lost its scheduler is still trying to reconnect, and closing it cancels that,
    which distributed logs as an ERROR with a traceback. When the local cluster
    closes, a worker whose heartbeat meets a scheduler already closing logs
    "Failed to communicate with scheduler during heartbeat" as an ERROR. Either
    would bury the run's one-paragraph message or trip log-based alerting on a
    run that succeeded, so distributed's loggers are silenced while closing, in
    this process and (just before) in the local cluster's workers and nannies;
    during the run they log as usual.
    """
    if cluster is not None:
        with contextlib.suppress(Exception):  # a cluster already failing closes below all the same
            client.run(_silence_distributed_logs)
            client.run(_silence_distributed_logs, nanny=True)
    with _distributed_logs_silenced():
        try:
            client.close()
            if cluster is not None:
                cluster.close()
        except Exception:  # the run's own error is the one to report
            logging.getLogger(__name__).debug("closing the cluster after a failed run failed", exc_info=True)
