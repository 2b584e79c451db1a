"""``run --cluster profile.yaml``: workers as SLURM jobs, tested against a real (single-node) SLURM.

- Profiles: every bad key (unknown, wrong type, missing kind, non-positive
  number) and ``--cluster`` together with the options of another cluster end
  with exit 2 and a message naming the file and key; the shipped
  ``deploy/slurm.yaml`` is valid and documents every key.
- The real thing, on the SLURM that ``deploy/slurm/start-single-node.sh``
  starts: a study run with ``--cluster`` gives the results of the local
  cluster; its workers were SLURM jobs (ids in the run log, their logs, their
  state in ``scontrol``), none is left in ``squeue`` afterwards, and the
  credentials folder is gone. Jobs that end before a worker connects, or never
  start, end the run with exit 1 naming the jobs and the log folder.
  Skipped when no SLURM answers, unless ``SCALABLE_ASSOC_REQUIRE_SLURM=1``
  (CI), which makes that a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scalable_assoc.cli import main
from scalable_assoc.engine.profiles import KEYS, ClusterProfile, load_cluster_profile
from scalable_assoc.engine.run import run_study
from scalable_assoc.engine.slurm import JOB_NAME, import_jobqueue, job_states, slurm_client, write_credentials
from scalable_assoc.engine.worker_server import WORKER_MALLOC
from scalable_assoc.errors import UserInputError
from scalable_assoc.simulate import SimulatedStudy
from scalable_assoc.testing import results_differences

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "deploy" / "slurm.yaml"
REQUIRE = os.environ.get("SCALABLE_ASSOC_REQUIRE_SLURM") == "1"

pytestmark = pytest.mark.cluster


# --------------------------------------------------------------------------------------
# Profiles and options, refused before any work
# --------------------------------------------------------------------------------------
def _profile(folder: Path, text: str) -> Path:
    path = folder / "profile.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kind: slurm\nquue: debug\n", "unknown key 'quue'. Did you mean 'queue'?"),
        ("kind: slurm\ncores: two\n", "key 'cores': expected a positive whole number, got 'two'"),
        ("queue: debug\n", "missing required key 'kind'"),
        ("kind: pbs\n", "key 'kind': unknown kind 'pbs'; known kinds: slurm"),
        ("kind: slurm\njobs: 0\n", "key 'jobs': expected a positive whole number, got 0"),
        ("kind: slurm\nmemory: lots\n", "key 'memory': expected an amount of memory per job"),
        ("kind: slurm\nwalltime: 3600.5\n", "key 'walltime': expected a SLURM time limit"),
        ("kind: slurm\ncores: 2\nprocesses: 4\n", "key 'processes': 4 single-threaded worker processes need as many cores"),
        ("kind: slurm\nworker_timeout: -1\n", "key 'worker_timeout': expected a positive number of seconds"),
        ("kind: slurm\njob_directives: --qos=low\n", "key 'job_directives': expected a list of one-line strings"),
        ("- kind: slurm\n", "expected a mapping of keys"),
        ("kind: slurm\nqueue: debug\n  cores: 1\n", "YAML syntax error at line 3"),
    ],
    ids=[
        "unknown-key",
        "wrong-type",
        "missing-kind",
        "unknown-kind",
        "non-positive",
        "memory",
        "walltime",
        "processes",
        "timeout",
        "directives",
        "not-a-mapping",
        "syntax",
    ],
)
def test_bad_profiles_are_named(
    small_study: SimulatedStudy, tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    profile = _profile(tmp_path, text)
    out = tmp_path / "out"
    code = main(["run", str(small_study.plan_path), "--out", str(out), "--no-report", "--cluster", str(profile)])
    error = capsys.readouterr().err
    assert code == 2, error
    assert message in error and str(profile) in error, error
    assert "Traceback" not in error and not out.exists(), "refused before any work"


@pytest.mark.parametrize(
    ("extra", "named"),
    [(["--scheduler", "tcp://127.0.0.1:1"], "--scheduler"), (["--workers", "2"], "--workers"), (["--dashboard"], "--dashboard")],
    ids=["scheduler", "workers", "dashboard"],
)
def test_cluster_refuses_the_options_of_other_clusters(
    small_study: SimulatedStudy, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], named: str
) -> None:
    profile = _profile(tmp_path, "kind: slurm\n")
    out = tmp_path / "out"
    code = main(["run", str(small_study.plan_path), "--out", str(out), "--no-report", "--cluster", str(profile), *extra])
    error = capsys.readouterr().err
    assert code == 2, error
    assert f"--cluster {profile} cannot be combined with {named}" in error, error
    assert not out.exists()


def test_missing_profile_file(small_study: SimulatedStudy, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(small_study.plan_path), "--out", str(tmp_path / "out"), "--cluster", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml does not exist" in capsys.readouterr().err


def test_shipped_profile_is_valid_and_documents_every_key() -> None:
    profile = load_cluster_profile(EXAMPLE)
    assert (profile.kind, profile.queue, profile.host) == ("slurm", "debug", "127.0.0.1")
    assert profile.processes == profile.cores, "processes default to cores"
    text = EXAMPLE.read_text()
    for key in KEYS:
        assert re.search(rf"^#? ?{key}:", text, re.MULTILINE), f"deploy/slurm.yaml does not document '{key}'"


def test_defaults_and_relative_shared_directory(tmp_path: Path) -> None:
    profile = load_cluster_profile(_profile(tmp_path, "kind: slurm\ncores: 4\nshared_directory: shared\n"))
    assert profile.processes == 4 and profile.jobs == 1 and profile.python == sys.executable
    assert profile.shared_directory == (tmp_path / "shared").resolve(), "relative to the profile's folder"
    unset = load_cluster_profile(_profile(tmp_path, "kind: slurm\n"))
    assert unset.shared_directory is None
    assert unset.with_shared_directory(tmp_path / "out").shared_directory == (tmp_path / "out").resolve()


def test_worker_credentials_are_owner_only(tmp_path: Path) -> None:
    security = write_credentials(tmp_path)
    files = [Path(security.tls_ca_file), Path(security.tls_worker_cert), Path(security.tls_worker_key)]
    for path in files:
        assert path.parent == tmp_path and stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert "PRIVATE KEY" in files[2].read_text()
    assert "\n" in security.tls_scheduler_key and "\n" in security.tls_client_key, "the scheduler's and client's stay in memory"


def test_without_dask_jobqueue_the_message_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)  # import fails
    profile = ClusterProfile(source=tmp_path / "p.yaml", shared_directory=tmp_path / "shared")
    with pytest.raises(UserInputError, match=r"pip install 'scalable_assoc\[slurm\]'"), slurm_client(profile):
        pass
    assert not (tmp_path / "shared").exists()


def test_importing_dask_jobqueue_keeps_ctrl_c_an_interruption(monkeypatch: pytest.MonkeyPatch) -> None:
    """dask-jobqueue 0.9.0 makes SIGINT call sys.exit() when imported (dask/dask-jobqueue#696).

    Ctrl-C must stay KeyboardInterrupt (exit 130).
    """
    for name in [name for name in sys.modules if name == "dask_jobqueue" or name.startswith("dask_jobqueue.")]:
        monkeypatch.delitem(sys.modules, name)  # import it afresh, side effects included
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        import_jobqueue()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


# --------------------------------------------------------------------------------------
# A real SLURM
# --------------------------------------------------------------------------------------
def _slurm_partition() -> str:
    """The default partition of a SLURM that answers; skips (or fails with SCALABLE_ASSOC_REQUIRE_SLURM=1) otherwise."""
    reason = None
    if not all(shutil.which(tool) for tool in ("sinfo", "sbatch", "squeue", "scancel")):
        reason = "SLURM's commands (sinfo, sbatch, squeue, scancel) are not on PATH (Debian: apt-get install slurm-wlm munge)"
    else:
        try:
            done = subprocess.run(["sinfo", "--noheader", "--format", "%P %a %T"], capture_output=True, text=True, timeout=20, check=False)
        except subprocess.TimeoutExpired:
            done = None
        if done is None or done.returncode != 0:
            reason = "SLURM does not answer (sinfo: " + (" ".join(done.stderr.split()) if done is not None else "no answer in 20 s") + ")"
        else:
            rows = [line.split() for line in done.stdout.splitlines() if line.strip()]
            usable = [
                row
                for row in rows
                if len(row) == 3 and row[1] == "up" and row[2].rstrip("*~#") in ("idle", "mixed", "allocated", "completing")
            ]
            default = [row[0].rstrip("*") for row in usable if row[0].endswith("*")]
            if default or usable:
                return (default or [usable[0][0].rstrip("*")])[0]
            reason = f"SLURM answers but no partition is up with a node in service: {done.stdout.strip()!r}"
    reason += "; start one with: sudo bash deploy/slurm/start-single-node.sh"
    if REQUIRE:
        pytest.fail(f"SCALABLE_ASSOC_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def _run_with_profile(plan: Path, out: Path, profile: Path) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "scalable_assoc.cli",
        "run",
        str(plan),
        "--out",
        str(out),
        "--no-report",
        "--cluster",
        str(profile),
        "--top",
        "0",
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=_env(), check=False)


def _submitted_jobs(out: Path) -> list[str]:
    """The SLURM job ids the run logged (run_log.jsonl)."""
    ids: list[str] = []
    for line in (out / "run_log.jsonl").read_text().splitlines():
        found = re.match(r"SLURM: submitted job\(s\) ([\d, ]+) to partition", json.loads(line).get("message", ""))
        if found:
            ids += [job.strip() for job in found.group(1).split(",")]
    return ids


def _assert_no_jobs_left(ids: list[str]) -> None:
    deadline = time.monotonic() + 30
    while (left := job_states(ids)) and time.monotonic() < deadline:
        time.sleep(0.5)  # cancelled jobs pass through COMPLETING
    assert not left, f"jobs of the run still in squeue: {left}"


def test_run_on_slurm_equals_the_local_cluster(small_study: SimulatedStudy, client, tmp_path: Path) -> None:
    partition = _slurm_partition()
    local = run_study(small_study.plan_path, tmp_path / "local", client=client)
    profile = _profile(
        tmp_path,
        f'kind: slurm\nqueue: "{partition}"\ncores: 1\njobs: 2\nmemory: 1GiB\nwalltime: "00:10:00"\nhost: 127.0.0.1\nworker_timeout: 90\n',
    )
    out = tmp_path / "slurm"
    done = _run_with_profile(small_study.plan_path, out, profile)
    assert done.returncode == 0, done.stderr
    assert not results_differences(local.out_dir, out), results_differences(local.out_dir, out)

    # The workers were SLURM jobs: ids in the run log, a worker log each (TLS on loopback), known to slurmctld by our job name.
    ids = _submitted_jobs(out)
    assert ids, done.stderr
    assert f"SLURM: cancelled job(s) {', '.join(ids)}" in done.stderr
    logs = out / ".scalable_assoc" / "slurm" / "logs"
    started = [job for job in ids if "Start worker at:      tls://127.0.0.1:" in (logs / f"{JOB_NAME}-{job}.err").read_text()]
    assert started, f"no worker log says a worker started: {sorted(p.name for p in logs.iterdir())}"
    shown = subprocess.run(["scontrol", "show", "job", started[0]], capture_output=True, text=True, timeout=20, check=False)
    if shown.returncode == 0:  # finished jobs stay known to slurmctld for MinJobAge (300 s by default)
        assert f"JobName={JOB_NAME}" in shown.stdout and f"Partition={partition}" in shown.stdout, shown.stdout
    _assert_no_jobs_left(ids)
    assert not list((out / ".scalable_assoc" / "slurm").glob(".tls-*")), "the workers' credentials are removed when the run ends"


def test_slurm_workers_run_as_local_workers_and_the_prologue_comes_after(tmp_path: Path) -> None:
    """The jobs' workers get the local workers' glibc settings (one arena, no trim at 64 KB), which the profile's prologue may change."""
    partition = _slurm_partition()
    profile = load_cluster_profile(
        _profile(
            tmp_path,
            f'kind: slurm\nqueue: "{partition}"\ncores: 1\njobs: 1\nmemory: 1GiB\nwalltime: "00:10:00"\nhost: 127.0.0.1\n'
            'worker_timeout: 90\nshared_directory: shared\nprologue: ["export MALLOC_ARENA_MAX=2"]\n',
        )
    )
    with slurm_client(profile) as client:
        seen = {name: set(client.run(os.getenv, name).values()) for name in WORKER_MALLOC}
        # A lambda, which cloudpickle sends by value: the jobs' workers cannot import this test module.
        profiling = set(client.run(lambda dask_worker: "profile" in dask_worker.periodic_callbacks).values())
    expected = {name: {str(value)} for name, value in WORKER_MALLOC.items()} | {"MALLOC_ARENA_MAX": {"2"}}
    assert seen == expected, "distributed's nanny would give MALLOC_TRIM_THRESHOLD_=65536 and glibc an arena per thread"
    assert profiling == {False}, "the statistical profiler feeds only a dashboard, and the jobs' workers have none"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ("python: /nonexistent/python\nworker_timeout: 60\n", "every SLURM job ended before a worker connected"),
        ('job_directives: ["--begin=now+1hour"]\nworker_timeout: 3\n', "no worker connected within 3 s (key 'worker_timeout')"),
    ],
    ids=["jobs-end-at-start", "jobs-never-start"],
)
def test_jobs_without_workers_end_the_run(small_study: SimulatedStudy, tmp_path: Path, settings: str, message: str) -> None:
    partition = _slurm_partition()
    profile = _profile(tmp_path, f'kind: slurm\nqueue: "{partition}"\nmemory: 1GiB\nwalltime: "00:10:00"\n{settings}')
    out = tmp_path / "out"
    done = _run_with_profile(small_study.plan_path, out, profile)
    assert done.returncode == 1, done.stderr
    error = done.stderr.splitlines()[-1]
    ids = _submitted_jobs(out)
    assert (
        ids and message in error and f"squeue --jobs {','.join(ids)}" in error and str(out / ".scalable_assoc" / "slurm" / "logs") in error
    ), error
    assert "Traceback" not in done.stderr
    _assert_no_jobs_left(ids)
    assert json.loads((out / ".scalable_assoc" / "status.json").read_text())["state"] == "failed"


def test_sumstats_and_meta_take_cluster_too(tmp_path: Path) -> None:
    from scalable_assoc.cli import build_parser

    profile = _profile(tmp_path, "kind: slurm\n")
    for command in (
        ["meta", str(tmp_path / "a.parquet"), "--out", str(tmp_path / "m")],
        ["sumstats", str(tmp_path), "--cohort", "a", "--out", str(tmp_path / "s.parquet")],
    ):
        assert build_parser().parse_args([*command, "--cluster", str(profile)]).cluster == profile
    from scalable_assoc.engine.mapper import ClusterMapper

    with pytest.raises(UserInputError, match="cannot be combined with --workers"):
        ClusterMapper(workers=2, profile=load_cluster_profile(profile))
    assert ClusterMapper(profile=load_cluster_profile(profile)).wanted(1), "a profile, like a named scheduler, is always used"
