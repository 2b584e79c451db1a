"""Deployment files: the scheduled-run wrapper for real, and the systemd, cron, Kubernetes
and container files checked against the command and options they call.

The wrapper runs this tree's code: ``SCALABLE_ASSOC_CMD`` names ``python -m
scalable_assoc.cli`` of this interpreter, with this tree first on ``PYTHONPATH``.
Where a file only has to name the right command line, a stand-in command records what
the wrapper would run, and ``build_parser()`` must accept it.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml

from scalable_assoc.cli import build_parser
from scalable_assoc.engine.run import WORK_DIR
from scalable_assoc.io.runstate import folder_lock
from scalable_assoc.simulate import SimulatedStudy, simulate_study

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
WRAPPER = DEPLOY / "scheduled" / "scalable-assoc-scheduled"
KUBERNETES = DEPLOY / "kubernetes"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DUMMY_SCHEDULER = "tcp://scheduler.example:8786"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="the wrapper is a bash script")


def _env(command: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SCALABLE_ASSOC_LOG_DIR"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["SCALABLE_ASSOC_CMD"] = command
    return env | extra


REAL = f"{shlex.quote(sys.executable)} -m scalable_assoc.cli"


def _wrapper(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(WRAPPER), *map(str, args)],
        env=env or _env(REAL),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _last_json(result: subprocess.CompletedProcess[str]) -> dict:
    """The status line the wrapper ends with (the last line of its stdout)."""
    lines = result.stdout.strip().splitlines()
    assert lines, f"no output; stderr: {result.stderr}"
    return json.loads(lines[-1])


def _files(out: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(out)): (p.stat().st_size, p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> SimulatedStudy:
    simulated = simulate_study(tmp_path_factory.mktemp("deploy_study"), participants=300, seed=3, n_species=50, n_pathways=10)
    with simulated.plan_path.open("a") as plan:
        plan.write("min_cases: 5\n")  # 300 participants give ~5 dysthymia cases
    return simulated


@pytest.fixture(scope="module")
def finished(study: SimulatedStudy, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("deploy_runs") / "results"
    return out, _wrapper(study.plan_path, out, "--workers", "1")


# --------------------------------------------------------------------------------------
# The wrapper, for real
# --------------------------------------------------------------------------------------
def test_a_fresh_run_exits_0_and_ends_with_its_status(finished: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, result = finished
    assert result.returncode == 0, result.stderr
    status = _last_json(result)
    assert status["state"] == "finished" and status["chunks_done"] == status["chunks_total"] > 0 and status["error"] is None
    assert (out / "results.parquet").exists()
    # One start and one end line on stderr, with a timestamp; --top 0: no association list.
    stamp = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ scalable-assoc-scheduled\[\d+\]: "
    assert re.search(stamp + r"starting: .* run \S+plan\.yaml --out \S+results --top 0 --workers 1$", result.stderr, re.M), result.stderr
    assert re.search(stamp + "ended with exit status 0: finished", result.stderr, re.M)
    assert "top " not in result.stdout.lower()


def test_a_rerun_is_up_to_date_and_exits_0(study: SimulatedStudy, finished: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, first = finished
    assert first.returncode == 0
    before = _files(out)
    again = _wrapper(study.plan_path, out, "--workers", "1")
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stderr
    assert _last_json(again)["state"] == "finished"
    assert {k: v for k, v in _files(out).items() if k != "run_log.jsonl"} == {k: v for k, v in before.items() if k != "run_log.jsonl"}


def test_a_folder_held_by_another_run_exits_75_and_changes_nothing(
    study: SimulatedStudy, finished: tuple[Path, subprocess.CompletedProcess[str]]
) -> None:
    out, first = finished
    assert first.returncode == 0
    with folder_lock(out / WORK_DIR, "a run of the test"):
        before = _files(out)
        refused = _wrapper(study.plan_path, out, "--workers", "1")
        assert _files(out) == before
    assert refused.returncode == 75, refused.stderr
    assert "in use by another run" in refused.stderr and f"process {os.getpid()}" in refused.stderr
    assert re.search(r"ended with exit status 75: skipped: .* the next scheduled run will try again \(not an error\)", refused.stderr)
    assert _last_json(refused)["state"] == "finished"  # the state of the folder: the earlier run's


def test_a_bad_plan_exits_2(study: SimulatedStudy, tmp_path: Path) -> None:
    plan = study.out_dir / "plan_with_a_bad_key.yaml"
    plan.write_text(study.plan_path.read_text() + "colour: blue\n")
    try:
        bad = _wrapper(plan, tmp_path / "out", "--workers", "1")
    finally:
        plan.unlink()
    assert bad.returncode == 2, bad.stderr
    assert "unknown key 'colour'" in bad.stderr and "needs a person" in bad.stderr
    assert bad.stdout.strip() == ""  # no run ever started there: no status to print


def _interrupt_after_first_chunk(command: list[str], env: dict[str, str], out: Path) -> subprocess.CompletedProcess[str] | None:
    """Start the wrapper, send it SIGTERM once a chunk is done; None if the run ended first."""
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 90
        while process.poll() is None and time.monotonic() < deadline:
            try:
                if json.loads((out / WORK_DIR / "status.json").read_text()).get("chunks_done", 0) > 0:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        if process.poll() is not None:
            process.communicate()
            return None
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
        return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_sigterm_ends_the_run_cleanly_and_a_rerun_resumes(study: SimulatedStudy, tmp_path: Path) -> None:
    # Small chunks give hundreds of tasks, so the run is still fitting when its first chunk is done.
    for chunk_features in ("2", "1"):
        out = tmp_path / f"chunks{chunk_features}"
        command = [str(WRAPPER), str(study.plan_path), str(out), "--workers", "1", "--chunk-features", chunk_features]
        stopped = _interrupt_after_first_chunk(command, _env(REAL), out)
        if stopped is not None and stopped.returncode != 0:
            break
    else:
        pytest.fail("every run finished before it could be stopped")
    assert stopped.returncode == 143, stopped.stderr
    assert "received SIGTERM" in stopped.stderr and "interrupted by SIGTERM" in stopped.stderr
    status = _last_json(stopped)
    assert status["state"] == "interrupted" and 0 < status["chunks_done"] < status["chunks_total"]
    # Ended cleanly: the interruption recorded, the lock released (no takeover needed).
    assert not (out / WORK_DIR / "lock.json").exists()
    assert json.loads((out / "run_log.jsonl").read_text().splitlines()[-1])["event"] == "interrupted"

    resumed = subprocess.run(command, env=_env(REAL), capture_output=True, text=True, timeout=120, check=False, stdin=subprocess.DEVNULL)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr and "taking over the lock" not in resumed.stderr
    assert _last_json(resumed)["state"] == "finished"
    manifest = json.loads((out / "manifest.json").read_text())
    assert 0 < manifest["chunks_reused"] < manifest["chunks_total"]


# --------------------------------------------------------------------------------------
# The wrapper's contract, with a stand-in command (no cluster)
# --------------------------------------------------------------------------------------
STAND_IN = """
import json, os, sys
with open(os.environ["STAND_IN_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1] == "status":
    print(json.dumps({"state": os.environ.get("STAND_IN_STATE", "finished")}))
    sys.exit(0)
print("a line from the run", file=sys.stderr)
sys.exit(int(os.environ.get("STAND_IN_CODE", "0")))
"""


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("stand_in")
    script = folder / "scalable_assoc_stand_in.py"
    script.write_text(STAND_IN)

    def call(*args: str, code: int = 0, **env: str) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
        log = folder / f"calls{time.monotonic_ns()}.jsonl"
        extra = {"STAND_IN_LOG": str(log), "STAND_IN_CODE": str(code), **env}
        result = _wrapper(*args, env=_env(f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}", **extra), timeout=30)
        calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        return result, calls

    return call


def _run_argv(stand_in, args: list[str]) -> list[str]:
    """The ``scalable-assoc`` arguments the wrapper runs for ``args``, and that they parse."""
    result, calls = stand_in(*args)
    assert result.returncode == 0, result.stderr
    assert calls[0][0] == "run" and calls[1] == ["status", args[1], "--json"]
    build_parser().parse_args(calls[0])  # exits (SystemExit) on an option that does not exist
    return calls[0]


def test_the_wrapper_runs_the_documented_command(stand_in) -> None:
    argv = _run_argv(stand_in, ["p.yaml", "out dir", "--workers", "3", "--force"])
    assert argv == ["run", "p.yaml", "--out", "out dir", "--top", "0", "--workers", "3", "--force"]
    args = build_parser().parse_args(argv)
    assert (args.plan, args.out, args.top, args.workers, args.force) == (Path("p.yaml"), Path("out dir"), 0, 3, True)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (0, "finished"),
        (75, "skipped: another run holds"),
        (2, "bad input (plan, data or options): needs a person"),
        (1, "failed: the finished chunks are kept, the next run resumes"),
        (130, "interrupted: the run ended cleanly"),
        (137, "ended by signal 9 (KILL)"),
    ],
)
def test_each_exit_status_is_passed_on_and_explained(stand_in, code: int, expected: str) -> None:
    result, _ = stand_in("p.yaml", "out", code=code, STAND_IN_STATE="failed")
    assert result.returncode == code
    assert f"ended with exit status {code}: {expected}" in result.stderr
    assert "a line from the run" in result.stderr
    assert _last_json(result) == {"state": "failed"}


def test_the_wrapper_without_arguments_prints_its_usage() -> None:
    result = _wrapper()
    assert result.returncode == 2 and "Usage:" in result.stderr and "SCALABLE_ASSOC_CMD" in result.stderr


def test_a_log_dir_gets_everything_printed(stand_in, tmp_path: Path) -> None:
    result, _ = stand_in("p.yaml", "out", SCALABLE_ASSOC_LOG_DIR=str(tmp_path / "logs"))
    assert result.returncode == 0
    [logfile] = (tmp_path / "logs").iterdir()
    assert re.fullmatch(r"scalable-assoc-\d{4}-\d\d-\d\d\.log", logfile.name)
    logged = logfile.read_text()
    assert "starting:" in logged and "a line from the run" in logged and "ended with exit status 0" in logged
    assert logged.strip().splitlines()[-1] == '{"state": "finished"}'
    assert result.stdout.strip().splitlines()[-1] == '{"state": "finished"}'


# --------------------------------------------------------------------------------------
# systemd and cron
# --------------------------------------------------------------------------------------
def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string((DEPLOY / "scheduled" / name).read_text())
    return parser


def _env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def _installed_wrapper(command: str) -> None:
    """A command that names the wrapper (by its installed name) and the script exists."""
    assert Path(command).name == WRAPPER.name, command
    assert WRAPPER.is_file() and os.access(WRAPPER, os.X_OK)


def test_the_systemd_units_run_the_wrapper_as_the_tool_expects(stand_in) -> None:
    service = _unit("scalable-assoc.service")["Service"]
    assert service["Type"] == "oneshot"
    assert "75" in service["SuccessExitStatus"].split()
    # A stop must reach the run as the signal it ends cleanly on (SIGINT), through the wrapper only.
    assert service["KillSignal"] == "SIGINT" and service["KillMode"] == "mixed"
    assert service["User"] and service["User"] != "root"
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict" and service["PrivateTmp"] == "yes"
    assert "PrivateNetwork" not in service and "IPAddressDeny" not in service  # the local cluster talks over loopback

    environment = _env_file(DEPLOY / "scheduled" / "study.env.example")
    assert service["EnvironmentFile"].lstrip("-") == "/etc/scalable-assoc/study.env"
    command, *words = service["ExecStart"].split()
    _installed_wrapper(command)
    args: list[str] = []
    for word in words:  # systemd: ${X} is one argument, $X is split on white space
        if match := re.fullmatch(r"\$\{(\w+)\}", word):
            args.append(environment[match[1]])
        elif match := re.fullmatch(r"\$(\w+)", word):
            args.extend(environment.get(match[1], "").split())
        else:
            args.append(word)
    argv = _run_argv(stand_in, args)
    assert argv[1] == environment["STUDY_PLAN"] and argv[3] == environment["STUDY_OUT"]
    # The output folder is writable under ProtectSystem=strict.
    assert any(Path(environment["STUDY_OUT"]).is_relative_to(path) for path in service["ReadWritePaths"].split())

    timer = _unit("scalable-assoc.timer")
    assert timer["Timer"]["Unit"] == "scalable-assoc.service"
    assert timer["Timer"]["OnCalendar"] and timer["Timer"]["Persistent"] == "true" and timer["Timer"]["RandomizedDelaySec"]
    assert timer["Install"]["WantedBy"] == "timers.target"


def test_the_cron_line_runs_the_wrapper(stand_in) -> None:
    entries = []
    for line in (DEPLOY / "scheduled" / "scalable-assoc.cron").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#") or re.match(r"^\w+=", line):
            continue  # comments and environment settings
        entries.append(line.split(None, 6))
    assert len(entries) == 1
    *times, user, command = entries[0]
    assert len(times) == 5 and all(re.fullmatch(r"[\d*/,-]+", field) for field in times), times
    assert user == "scalable-assoc"
    wrapper, *args = shlex.split(command)
    _installed_wrapper(wrapper)
    _run_argv(stand_in, args)


# --------------------------------------------------------------------------------------
# Kubernetes and the image
# --------------------------------------------------------------------------------------
def _manifests() -> dict[str, list[dict]]:
    return {path.name: list(yaml.safe_load_all(path.read_text())) for path in sorted(KUBERNETES.glob("*.yaml"))}


def _pod_specs(document: dict) -> list[dict]:
    kind, spec = document["kind"], document.get("spec", {})
    if kind == "DaskCluster":
        return [spec["scheduler"]["spec"], spec["worker"]["spec"]]
    if kind == "DaskJob":
        return [spec["job"]["spec"], *_pod_specs({"kind": "DaskCluster", "spec": spec["cluster"]["spec"]})]
    if kind == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]["spec"]]
    return []


def _containers(document: dict) -> list[dict]:
    return [c for pod in _pod_specs(document) for c in [*pod.get("initContainers", []), *pod["containers"]]]


def test_the_manifests_parse_with_the_expected_kinds() -> None:
    kinds = {name: [(d["apiVersion"], d["kind"]) for d in documents] for name, documents in _manifests().items()}
    assert kinds == {
        "cronjob.yaml": [("batch/v1", "CronJob")],
        "daskcluster.yaml": [("kubernetes.dask.org/v1", "DaskCluster"), ("networking.k8s.io/v1", "NetworkPolicy")],
        "daskjob.yaml": [("kubernetes.dask.org/v1", "DaskJob"), ("networking.k8s.io/v1", "NetworkPolicy")],
        "storage.yaml": [("v1", "PersistentVolumeClaim")],
    }


def _cluster_name(document: dict) -> str:
    return document["metadata"]["name"]  # a DaskJob's cluster is named after the job


def test_the_run_commands_in_the_manifests_parse(stand_in) -> None:
    documents = {d["kind"]: d for ds in _manifests().values() for d in ds if d["kind"] in ("DaskJob", "CronJob")}
    for kind, document in documents.items():
        [run] = [c for c in _pod_specs(document)[0]["containers"]]
        line = [*run["command"], *run.get("args", [])]
        line = [re.sub(r"\$\(DASK_SCHEDULER_ADDRESS\)", DUMMY_SCHEDULER, word) for word in line]
        assert not any("$(" in word for word in line), line
        assert line[0] == WRAPPER.name, f"{kind}: runs {line[0]}"
        args = build_parser().parse_args(_run_argv(stand_in, line[1:]))
        assert args.plan == Path("/data/study/plan.yaml") and args.out == Path("/data/study/results")
        expected = DUMMY_SCHEDULER if kind == "DaskJob" else "tcp://scalable-assoc-scheduler:8786"
        assert args.scheduler == expected, kind


def test_the_clusters_are_closed_and_consistent() -> None:
    manifests = _manifests()
    cluster = manifests["daskcluster.yaml"][0]
    job = manifests["daskjob.yaml"][0]
    # The job brings the same cluster as daskcluster.yaml, under its own name.
    renamed = json.loads(json.dumps(job["spec"]["cluster"]["spec"]).replace(_cluster_name(job), _cluster_name(cluster)))
    assert renamed == cluster["spec"]
    [claim] = manifests["storage.yaml"]
    assert "ReadWriteMany" in claim["spec"]["accessModes"]

    for document, policy in [(cluster, manifests["daskcluster.yaml"][1]), (job, manifests["daskjob.yaml"][1])]:
        name = _cluster_name(document)
        spec = document["spec"] if document["kind"] == "DaskCluster" else document["spec"]["cluster"]["spec"]
        service = spec["scheduler"]["service"]
        assert service["type"] == "ClusterIP" and [p["port"] for p in service["ports"]] == [8786]  # no dashboard published
        assert service["selector"] == {"dask.org/cluster-name": name, "dask.org/component": "scheduler"}
        [worker] = spec["worker"]["spec"]["containers"]
        assert worker["command"] == ["dask", "worker"] and worker["args"][worker["args"].index("--nthreads") + 1] == "1"
        assert worker["resources"]["limits"]["memory"] and worker["resources"]["requests"]["memory"]
        assert "--no-dashboard" in spec["scheduler"]["spec"]["containers"][0]["args"]
        # Only this cluster's pods reach its pods (the scheduler port among them).
        assert policy["spec"]["podSelector"] == {"matchLabels": {"dask.org/cluster-name": name}}
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        assert policy["spec"]["ingress"] == [{"from": [{"podSelector": {"matchLabels": {"dask.org/cluster-name": name}}}]}]

    # Every pod that reads or writes study files mounts the same claim at the same path.
    cronjob = manifests["cronjob.yaml"][0]
    assert cronjob["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]["dask.org/cluster-name"] == _cluster_name(cluster)
    for document in (cluster, job, cronjob):
        for pod in _pod_specs(document):
            claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
            for container in pod["containers"]:
                mounts = {m["mountPath"]: claims[m["name"]] for m in container.get("volumeMounts", []) if m["name"] in claims}
                if container["name"] != "scheduler":  # the scheduler reads no files
                    assert mounts == {"/data": claim["metadata"]["name"]}, container["name"]


def test_one_image_for_every_pod_built_from_this_version() -> None:
    images = {c["image"] for documents in _manifests().values() for d in documents for c in _containers(d)}
    assert len(images) == 1, images
    [image] = images
    assert image.rsplit(":", 1)[1] == PROJECT["project"]["version"]


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    return [tuple(line.strip().split(None, 1)) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]  # type: ignore[misc]


def test_the_container_file_installs_this_tree_and_runs_the_console_script() -> None:
    instructions = _instructions(DEPLOY / "container" / "Containerfile")
    values = {}
    for keyword, value in instructions:
        values.setdefault(keyword.upper(), []).append(value)
    assert values["FROM"] == ["python:3.11-slim"]
    assert json.loads(values["ENTRYPOINT"][-1]) == list(PROJECT["project"]["scripts"])
    assert any("pip install --no-cache-dir ." in run for run in values["RUN"])
    assert values["USER"][-1].split(":")[0] not in ("0", "root")
    assert values["STOPSIGNAL"] == ["SIGINT"]
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    for copy in values["COPY"]:
        *sources, _ = copy.split()
        for source in sources:
            assert (ROOT / source).exists(), source
            assert source.split("/")[0] not in ignored, f"{source} is excluded from the build context"
    assert f"COPY deploy/scheduled/{WRAPPER.name} /usr/local/bin/{WRAPPER.name}" in [f"COPY {c}" for c in values["COPY"]]


def test_the_deploy_readme_covers_every_file() -> None:
    readme = (DEPLOY / "README.md").read_text()
    headings = re.findall(r"^## .*$", readme, re.M)
    assert {"## Which to choose", "## Scheduled runs (systemd, cron)", "## Kubernetes", "## SLURM"} <= set(headings)
    for path in [
        *(DEPLOY / "scheduled").iterdir(),
        *KUBERNETES.iterdir(),
        DEPLOY / "container" / "Containerfile",
        *(DEPLOY / "slurm").iterdir(),
        DEPLOY / "slurm.yaml",
    ]:
        assert path.name in readme, f"deploy/README.md does not mention {path.name}"
