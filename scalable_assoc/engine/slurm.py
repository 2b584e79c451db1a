"""Workers as SLURM jobs (``run --cluster profile.yaml`` with ``kind: slurm``), through dask-jobqueue.

Closed like the local cluster (:mod:`scalable_assoc.engine.cluster`):

- TLS always, with temporary credentials made for the run
  (:meth:`distributed.security.Security.temporary`). The jobs need them as
  files (their ``dask worker --tls-*`` options): :func:`write_credentials`
  writes them to a new folder of ``shared_directory`` that only the owner may
  enter (0700; the files are 0600), removed when the cluster closes. The
  scheduler and the client keep theirs in memory. (dask-jobqueue would write
  in-memory credentials itself, to ``shared_temp_directory``, but removes
  them only when the cluster object is garbage-collected.)
- The scheduler runs in this process and listens on the profile's ``host``
  (127.0.0.1 unless the compute nodes need another address). With the default
  loopback host, workers listen on loopback too.
- No HTTP: the scheduler's and the workers' HTTP servers are closed (no
  dashboard, no ``/info`` pages), as for the local cluster.
- Every worker process is single-threaded (``--nthreads 1``), ``processes``
  of them per job, ``cores`` reserved per job.
- The jobs' workers run with the local workers' glibc settings
  (:data:`~scalable_assoc.engine.worker_server.WORKER_MALLOC`) and, as they
  have no dashboard, without distributed's statistical profiler: exported by
  the job script (:func:`worker_exports`) before the profile's own ``prologue``.

Jobs are cancelled (``scancel``, by dask-jobqueue) when the run ends, fails or
is interrupted. If no worker connects within ``worker_timeout`` (jobs pending,
or ended at start), or every worker is gone for that long during the run
(jobs killed, time limit reached), the run ends with a :class:`ClusterFailure`
naming the jobs, their state in ``squeue`` and the log folder; a rerun resumes
from the finished chunks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
from distributed import Client
from distributed.scheduler import NoValidWorkerError, NoWorkerError
from distributed.security import Security

from scalable_assoc.engine.cluster import NO_HTTP_PLUGIN, NoHttp, is_loopback, stop_scheduler_http
from scalable_assoc.engine.profiles import ClusterProfile
from scalable_assoc.engine.worker_server import WORKER_MALLOC
from scalable_assoc.errors import ClusterFailure, UserInputError

#: The name of the jobs in ``squeue`` and of their log files (``<name>-<job id>.err``).
JOB_NAME = "scalable-assoc"
#: How long the submission check (``sbatch --test-only``) and ``squeue`` may take.
_COMMAND_TIMEOUT = 30
#: How often to ask ``squeue`` whether jobs that have no worker yet still exist.
_SQUEUE_EVERY = 5.0

logger = logging.getLogger(__name__)


def worker_exports() -> list[str]:
    """The job script's ``export`` lines: the jobs' workers run as the local cluster's do.

    - :data:`~scalable_assoc.engine.worker_server.WORKER_MALLOC`: a job runs
      ``dask worker`` with a nanny, which starts the worker process with
      distributed's pre-spawn environment (``MALLOC_TRIM_THRESHOLD_=65536``
      unless the environment sets it: the environment outranks dask's setting)
      and glibc's own default of one arena per thread. The fit tasks run in a
      thread of the worker, so without these every block-sized array was a new
      mapping whose pages faulted in again (see ``WORKER_MALLOC``).
    - No statistical profiler: it samples every thread of the worker each
      10 ms for the dashboard's profile pages, and the jobs' workers have no
      dashboard (see :func:`~scalable_assoc.engine.cluster.local_cluster`).

    The profile's ``prologue`` runs after these lines, so it can set them otherwise.
    """
    return [*(f"export {name}={value}" for name, value in WORKER_MALLOC.items()), "export DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False"]


def import_jobqueue() -> Any:
    """``dask_jobqueue``, imported without its side effect on Ctrl-C.

    dask-jobqueue 0.9.0 sets a SIGINT handler calling ``sys.exit()`` when imported
    (dask/dask-jobqueue#696, fixed after 0.9.0 by #697): Ctrl-C would then end a run
    as a successful exit instead of an interruption (exit 130, "interrupted", jobs
    cancelled). The handler in place before the import is put back.
    """
    before = signal.getsignal(signal.SIGINT)
    try:
        import dask_jobqueue
    except ImportError:
        raise UserInputError(
            "--cluster with 'kind: slurm' needs dask-jobqueue, which is not installed; install it with pip install 'scalable_assoc[slurm]'"
        ) from None
    finally:
        if before is not None and signal.getsignal(signal.SIGINT) is not before and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, before)
    return dask_jobqueue


def _folders(profile: ClusterProfile) -> tuple[Path, Path]:
    """The shared directory (created owner-only if new) and its ``logs`` folder."""
    if profile.shared_directory is None:
        raise ValueError("the profile's shared_directory must be set (ClusterProfile.with_shared_directory) before a cluster starts")
    shared = profile.shared_directory
    try:
        shared.mkdir(mode=0o700, parents=True, exist_ok=True)
        logs = shared / "logs"
        logs.mkdir(mode=0o700, exist_ok=True)
    except OSError as error:
        raise UserInputError(
            f"cluster profile {profile.source}, key 'shared_directory': cannot create {shared}: {error.strerror or error}; "
            "give a folder on a filesystem every node sees that you can write"
        ) from None
    return shared, logs


def _check_submission(profile: ClusterProfile, script: str) -> None:
    """``sbatch --test-only`` on the job script: a queue, account or size SLURM refuses is named before anything is submitted."""
    try:
        done = subprocess.run(
            ["sbatch", "--test-only"], input=script, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT, check=False
        )
    except FileNotFoundError:
        raise UserInputError(
            f"--cluster {profile.source} (kind: slurm) needs SLURM's sbatch on this machine's PATH; run on a node that submits jobs (a "
            "login node)"
        ) from None
    except subprocess.TimeoutExpired:
        raise UserInputError(
            f"--cluster {profile.source}: 'sbatch --test-only' did not answer in {_COMMAND_TIMEOUT} s; is the SLURM controller up (sinfo)?"
        ) from None
    if done.returncode != 0:
        reason = " ".join((done.stderr or done.stdout).split()) or f"exit status {done.returncode}"
        raise UserInputError(
            f"cluster profile {profile.source}: SLURM refuses its jobs ({reason}); check 'queue', 'account', 'cores', 'memory', "
            "'walltime' and 'job_directives' against what the cluster offers (sinfo, scontrol show partition)"
        )


def write_credentials(folder: Path) -> Security:
    """Temporary credentials of a new cluster.

    In memory for the scheduler and the client, as owner-only files in ``folder`` for the workers.
    """
    temporary = Security.temporary()
    paths = {}
    for name, text in (
        ("ca.pem", temporary.tls_ca_file),
        ("worker.pem", temporary.tls_worker_cert),
        ("worker.key", temporary.tls_worker_key),
    ):
        path = folder / name
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(handle, "w") as file:
            file.write(text)
        paths[name] = str(path)
    return Security(
        require_encryption=True,
        tls_ca_file=paths["ca.pem"],
        tls_worker_cert=paths["worker.pem"],
        tls_worker_key=paths["worker.key"],
        tls_scheduler_cert=temporary.tls_scheduler_cert,
        tls_scheduler_key=temporary.tls_scheduler_key,
        tls_client_cert=temporary.tls_client_cert,
        tls_client_key=temporary.tls_client_key,
    )


def _job_ids(cluster: Any) -> list[str]:
    """The SLURM ids of the jobs submitted so far (dask-jobqueue sets each job's ``job_id`` once sbatch answered)."""
    for _ in range(3):
        try:
            ids = [str(job.job_id) for job in list(cluster.workers.values()) if getattr(job, "job_id", None)]
            return sorted(ids, key=lambda job: (len(job), job))
        except RuntimeError:  # the dict changed while being read (the cluster's event loop runs in another thread)
            continue
    return []


def job_states(job_ids: list[str]) -> dict[str, str]:
    """``squeue``'s state (and reason) of each job still known to it; jobs that are gone are absent."""
    if not job_ids:
        return {}
    try:
        done = subprocess.run(
            ["squeue", "--noheader", "--jobs", ",".join(job_ids), "--format", "%i %T %R"],
            capture_output=True,
            text=True,
            timeout=_COMMAND_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {job: "unknown (squeue did not answer)" for job in job_ids}
    if done.returncode != 0 and "Invalid job id" not in done.stderr:
        return {job: "unknown (squeue did not answer)" for job in job_ids}
    states = {}
    for line in done.stdout.splitlines():
        job, _, state = line.strip().partition(" ")
        if job in job_ids:
            states[job] = state
    return states


def _describe(job_ids: list[str], logs: Path) -> str:
    """What became of the jobs, for a failure message: their squeue states, the end of a job's error log."""
    if not job_ids:
        return f"no job was submitted (see the messages above; worker logs would be in {logs})"
    states = job_states(job_ids)
    listed = ", ".join(f"{job} {states.get(job, 'gone from squeue (ended)')}" for job in job_ids)
    text = f"SLURM job(s) {listed}; check with squeue --jobs {','.join(job_ids)}; worker logs in {logs}"
    for job in job_ids:
        log_file = logs / f"{JOB_NAME}-{job}.err"
        try:
            lines = [line.strip() for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            continue
        # SLURM's own word on the job (cancelled, time limit, out of memory) if it left one, else the log's last lines.
        slurm = [line for line in lines if line.startswith("slurmstepd")]
        if slurm:
            text += f"; {log_file.name}: " + " | ".join(slurm[-2:])
            break
        if lines:
            text += f"; the end of {log_file.name}: " + " | ".join(lines[-3:])
            break
    return text


def _wait_for_first_worker(client: Client, cluster: Any, profile: ClusterProfile, logs: Path) -> None:
    """Until one worker is connected; logs the job ids once known; fails when the time is up or every job has ended."""
    started = time.monotonic()
    deadline = started + profile.worker_timeout
    logged: list[str] = []
    last_squeue = started
    while True:
        ids = _job_ids(cluster)
        if len(ids) > len(logged):
            logged = ids
            logger.info("SLURM: submitted job(s) %s to partition %s; worker logs in %s", ", ".join(ids), profile.queue or "(default)", logs)
        if client.scheduler_info(n_workers=0).get("n_workers", 0) > 0:
            logger.info("SLURM: first worker connected after %.1fs", time.monotonic() - started)
            return
        now = time.monotonic()
        if ids and len(ids) >= profile.jobs and now - last_squeue >= _SQUEUE_EVERY:
            last_squeue = now
            if not job_states(ids):
                raise ClusterFailure(
                    f"--cluster {profile.source}: every SLURM job ended before a worker connected; {_describe(ids, logs)}. "
                    "Common causes: the 'python' of the profile does not exist on the compute nodes or lacks scalable_assoc, "
                    "or the nodes cannot reach the scheduler at 'host'"
                )
        if now > deadline:
            raise ClusterFailure(
                f"--cluster {profile.source}: no worker connected within {profile.worker_timeout:g} s (key 'worker_timeout') "
                f"from partition {profile.queue or '(default)'}; {_describe(ids, logs)}. The jobs were cancelled; if they are "
                "still waiting for resources, ask for fewer cores or less memory, another queue, or a longer worker_timeout"
            )
        time.sleep(0.5)


def slurm_cluster(profile: ClusterProfile, credentials: Path, logs: Path) -> tuple[Any, Client]:
    """A dask-jobqueue ``SLURMCluster`` closed as the module docstring says, its jobs submitted, and a client of it.

    Returns once a first worker is connected; the caller closes both (which
    cancels the jobs), also when this raises after the cluster started.
    """
    dask_jobqueue = import_jobqueue()
    loopback = is_loopback(profile.host)
    worker_args = ["--no-dashboard", "--dashboard-address", "127.0.0.1:0"]
    if profile.interface is None and loopback:
        worker_args += ["--host", profile.host]
    settings = {
        # No routes on the HTTP servers nobody asked for (closed below as well).
        "distributed.scheduler.http.routes": [],
        "distributed.worker.http.routes": [],
        # Tasks fail (and the run ends) when every job is gone for this long, rather than waiting for workers forever.
        "distributed.scheduler.no-workers-timeout": f"{profile.worker_timeout}s",
    }
    with dask.config.set(settings):
        cluster = dask_jobqueue.SLURMCluster(
            queue=profile.queue,
            account=profile.account,
            # single-threaded processes: dask-jobqueue gives each cores/processes threads, so tell it cores = processes
            # and reserve the profile's cores with job_cpu.
            cores=profile.processes,
            processes=profile.processes,
            job_cpu=profile.cores,
            memory=profile.memory,
            walltime=profile.walltime,
            python=profile.python,
            job_name=JOB_NAME,
            log_directory=str(logs),
            job_extra_directives=list(profile.job_directives),
            job_script_prologue=["export DASK_DISTRIBUTED__WORKER__HTTP__ROUTES='[]'", *worker_exports(), *profile.prologue],
            interface=profile.interface,
            protocol="tls://",
            security=write_credentials(credentials),
            scheduler_options={"host": profile.host, "dashboard": False, "dashboard_address": "127.0.0.1:0"},
            worker_extra_args=worker_args,
            death_timeout=60,
        )
    try:
        client = Client(cluster)
    except BaseException:
        cluster.close()
        raise
    try:
        client.register_plugin(NoHttp(), name=NO_HTTP_PLUGIN)
        client.run_on_scheduler(stop_scheduler_http)
        _check_submission(profile, cluster.job_script())
        cluster.scale(jobs=profile.jobs)
        logger.info(
            "SLURM: asking for %d job(s) of %d core(s), %d worker process(es) and %s each, time limit %s, scheduler at %s",
            profile.jobs,
            profile.cores,
            profile.processes,
            profile.memory,
            profile.walltime,
            cluster.scheduler_address,
        )
        _wait_for_first_worker(client, cluster, profile, logs)
    except BaseException:
        client.close()
        cluster.close()
        raise
    return cluster, client


@contextlib.contextmanager
def slurm_client(profile: ClusterProfile) -> Iterator[Client]:
    """A client of a new SLURM cluster (see :func:`slurm_cluster`); its jobs are cancelled and its credentials removed on exit.

    A run whose workers are all gone for ``worker_timeout`` ends with a :class:`ClusterFailure`.
    """
    import_jobqueue()  # a missing dask-jobqueue is named before anything is created
    shared, logs = _folders(profile)
    credentials = Path(tempfile.mkdtemp(prefix=".tls-", dir=shared))  # 0700: the workers' key is written here
    try:
        cluster, client = slurm_cluster(profile, credentials, logs)
        try:
            yield client
        except (NoWorkerError, NoValidWorkerError):
            raise ClusterFailure(
                f"--cluster {profile.source}: every worker was gone for {profile.worker_timeout:g} s (key 'worker_timeout'): "
                f"{_describe(_job_ids(cluster), logs)}. Jobs end when they reach 'walltime', are cancelled or preempted, or run "
                "out of memory; the chunks already finished are kept and a rerun resumes"
            ) from None
        finally:
            ids = _job_ids(cluster)
            client.close()
            cluster.close()
            if ids:
                logger.info("SLURM: cancelled job(s) %s", ", ".join(ids))
    finally:
        shutil.rmtree(credentials, ignore_errors=True)
