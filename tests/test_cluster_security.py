"""Clusters are closed: TLS, loopback only, no HTTP unless asked; refusals are messages, not tracebacks.

- The default local cluster (a run in its own process, held after its first
  chunk while this test looks at it): every listening socket of the run's
  process tree is on loopback, there is one per scheduler, nanny and worker
  (no HTTP server), none answers HTTP or a plain ``tcp://`` Dask client.
  With a dashboard asked for, one more socket serves HTTP, on loopback.
- An existing cluster started with the commands of ``deploy/README.md``
  (certificates made with its ``openssl`` commands, a TLS ``dask scheduler``
  and ``dask worker`` bound to 127.0.0.1): the documented ``scalable-assoc
  run`` gives results identical to the default cluster's; dask's own TLS
  configuration works instead of the options; a client without credentials,
  with a certificate of another authority, or speaking ``tcp://`` exits 2
  with a message naming the address.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from distributed import Client, Security

from scalable_assoc.cli import build_parser, main
from scalable_assoc.engine.cluster import dashboard_address
from scalable_assoc.simulate import SimulatedStudy

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "README.md"
LOOPBACK = {"127.0.0.1", "::1"}
WORKERS = 2

pytestmark = pytest.mark.cluster


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------
def _env(**extra: str) -> dict[str, str]:
    """The environment of the processes started here: this checkout first on the path, the interpreter's scripts on PATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(extra)
    return env


def _listening(pid: int) -> list[tuple[int, str, int]]:
    """(pid, ip, port) of every listening TCP socket of ``pid`` and its descendants."""
    found = []
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    for process in tree:
        try:
            connections = process.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        found += [(process.pid, c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN]
    return found


def _answers_http(ip: str, port: int) -> bool:
    host = f"[{ip}]" if ":" in ip else ip
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=5) as response:
            return response.status == 200
    except Exception:
        return False


def _plain_client_connects(ip: str, port: int) -> bool:
    host = f"[{ip}]" if ":" in ip else ip
    try:
        with Client(f"tcp://{host}:{port}", timeout="5s") as client:
            client.scheduler_info()
            return True
    except Exception:
        return False


def _stop(process: subprocess.Popen) -> None:
    """Stop a process started here and the processes it started (its own session)."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, 15)
        process.wait(timeout=20)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait(timeout=20)


#: A run in its own process that waits after its first chunk until ``go`` exists (``ready`` says it waits).
HELD_RUN = """
import logging, sys, time
from pathlib import Path
from scalable_assoc.engine.run import run_study

logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)  # as a library user sees the messages

plan, out, workers, dashboard, ready, go = sys.argv[1:]

def hold(done, total):
    if not Path(ready).exists():
        Path(ready).write_text("held")
        deadline = time.monotonic() + 120
        while not Path(go).exists() and time.monotonic() < deadline:
            time.sleep(0.05)

if __name__ == "__main__":
    run_study(plan, out, workers=int(workers), dashboard=None if dashboard == "-" else dashboard, on_chunk_done=hold)
"""


def _held_run(plan: Path, out: Path, folder: Path, workers: int, dashboard: str | None) -> dict:
    """Run the plan on the default local cluster in a subprocess and look at its sockets while it is held."""
    folder.mkdir(parents=True, exist_ok=True)
    script, ready, go, log = folder / "held_run.py", folder / "ready", folder / "go", folder / "run.log"
    script.write_text(HELD_RUN)
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(script), str(plan), str(out), str(workers), dashboard or "-", str(ready), str(go)],
            stdout=stderr,
            stderr=subprocess.STDOUT,
            env=_env(),
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 240
            while not ready.exists():
                assert process.poll() is None, f"the run ended before its first chunk:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"no chunk finished in 240 s:\n{log.read_text()}"
                time.sleep(0.05)
            listening = _listening(process.pid)
            http = {port for _, ip, port in listening if _answers_http(ip, port)}
            seen = {
                "listening": listening,
                "http": http,
                # Not the HTTP port: a Dask client waits there for a handshake that never comes.
                "plain_client": {port for _, ip, port in listening if port not in http and _plain_client_connects(ip, port)},
            }
            go.write_text("go")
            assert process.wait(timeout=240) == 0, log.read_text()
        finally:
            _stop(process)
    seen["log"] = log.read_text()
    seen["manifest"] = json.loads((out / "manifest.json").read_text())
    return seen


# --------------------------------------------------------------------------------------
# 1. The default local cluster
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def default_run(small_study: SimulatedStudy, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The small study on the default (closed) local cluster of its own process; (output folder, what was seen)."""
    folder = tmp_path_factory.mktemp("default_run")
    return folder / "out", _held_run(small_study.plan_path, folder / "out", folder, WORKERS, None)


def test_default_cluster_listens_on_loopback_only_without_http(default_run: tuple[Path, dict]) -> None:
    _, seen = default_run
    listening = seen["listening"]
    scheduler = seen["manifest"]["dask"]["scheduler"]
    assert scheduler.startswith("tls://127.0.0.1:"), f"the local scheduler speaks TLS on loopback: {scheduler}"
    assert [s for s in listening if s[1] not in LOOPBACK] == [], f"sockets beyond loopback: {listening}"
    ports = {port for _, _, port in listening}
    assert int(scheduler.rsplit(":", 1)[1]) in ports
    # The scheduler, a nanny and a worker per worker process: no HTTP server (dashboard, /info, metrics) beside them.
    assert len(listening) == 1 + 2 * WORKERS, f"expected {1 + 2 * WORKERS} listening sockets, found {listening}"
    assert seen["http"] == set(), f"ports answering HTTP without a dashboard asked for: {seen['http']}"
    assert seen["plain_client"] == set(), f"ports a plain tcp:// Dask client could use: {seen['plain_client']}"
    assert "dashboard" not in seen["log"]


def test_the_default_run_records_command_to_first_task(default_run: tuple[Path, dict]) -> None:
    """The cluster started in the background while the study was prepared; the manifest says when the first task came back."""
    _, seen = default_run
    timings = seen["manifest"]["timings_seconds"]
    assert timings["cluster_start_background"] > 0
    # From the process start: the imports and preparing come before the first task, the fit after it.
    assert timings["prepare"] < timings["first_task"] < timings["total"] + 60
    assert "first task result" in seen["log"]
    # The first layers went to the cluster (prepared, the cluster up) before that task came back.
    assert 0 < timings["first_part"] <= timings["first_task"]


def test_dashboard_is_served_on_loopback_when_asked(small_study: SimulatedStudy, tmp_path: Path) -> None:
    seen = _held_run(small_study.plan_path, tmp_path / "out", tmp_path, 1, "127.0.0.1:0")
    listening = seen["listening"]
    assert [s for s in listening if s[1] not in LOOPBACK] == [], f"sockets beyond loopback: {listening}"
    assert len(listening) == 1 + 2 * 1 + 1, f"the scheduler, a nanny, a worker and the dashboard: {listening}"
    assert len(seen["http"]) == 1, f"one port serves HTTP: {seen['http']}"
    (port,) = seen["http"]
    assert f"dashboard: http://127.0.0.1:{port}/status" in seen["log"]
    assert seen["plain_client"] == set()


def test_dashboard_option() -> None:
    assert build_parser().parse_args(["run", "plan.yaml", "--dashboard"]).dashboard == "127.0.0.1:8787"
    assert build_parser().parse_args(["run", "plan.yaml"]).dashboard is None
    assert dashboard_address("8790") == dashboard_address(":8790") == "127.0.0.1:8790", "a bare port stays on loopback"
    assert dashboard_address("0.0.0.0:8790") == "0.0.0.0:8790", "other interfaces only when written"


# --------------------------------------------------------------------------------------
# 2. Options refused before any work
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--tls-cert", "{cert}", "--tls-ca-file", "{cert}"],
            "--tls-ca-file, --tls-cert and --tls-key are for connecting to an existing cluster",
        ),
        (["--scheduler", "tls://127.0.0.1:1"], "is a TLS address but no client credentials were given; add --tls-ca-file"),
        (["--scheduler", "tls://127.0.0.1:1", "--tls-cert", "{cert}"], "--tls-ca-file missing"),
        (
            ["--scheduler", "tls://127.0.0.1:1", "--tls-cert", "{cert}", "--tls-ca-file", "{missing}"],
            "--tls-ca-file {missing}: no such file",
        ),
        (
            ["--scheduler", "tcp://127.0.0.1:1", "--tls-cert", "{cert}", "--tls-ca-file", "{cert}"],
            "is not a TLS address; write it as tls://HOST:PORT",
        ),
        (["--scheduler", "tcp://127.0.0.1:1", "--dashboard"], "--dashboard starts a dashboard on the local cluster"),
        (["--dashboard", "127.0.0.1:http"], "--dashboard '127.0.0.1:http' is not an address"),
    ],
    ids=[
        "tls-without-scheduler",
        "tls-without-credentials",
        "cert-without-ca",
        "missing-file",
        "tls-options-tcp-address",
        "dashboard-with-scheduler",
        "bad-dashboard",
    ],
)
def test_cluster_options_refused(
    small_study: SimulatedStudy, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("not used")
    names = {"cert": str(cert), "missing": str(tmp_path / "missing.pem")}
    out = tmp_path / "out"
    code = main(["run", str(small_study.plan_path), "--out", str(out), "--no-report", *[e.format(**names) for e in extra]])
    error = capsys.readouterr().err
    assert code == 2, error
    assert message.format(**names) in error
    assert not (out / "results.parquet").exists()


def test_meta_and_sumstats_take_the_cluster_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for command in (
        ["meta", str(tmp_path / "a.parquet"), "--out", str(tmp_path / "m")],
        ["sumstats", str(tmp_path), "--cohort", "a", "--out", str(tmp_path / "s.parquet")],
    ):
        args = build_parser().parse_args(
            [*command, "--scheduler", "tls://h:1", "--tls-ca-file", "ca.pem", "--tls-cert", "c.pem", "--tls-key", "c.key", "--dashboard"]
        )
        assert (args.tls_ca_file, args.tls_cert, args.tls_key, args.dashboard) == (
            Path("ca.pem"),
            Path("c.pem"),
            Path("c.key"),
            "127.0.0.1:8787",
        )


# --------------------------------------------------------------------------------------
# 3. An existing TLS cluster, started as deploy/README.md says
# --------------------------------------------------------------------------------------
def _documented(name: str) -> str:
    """The shell block of deploy/README.md marked ``<!-- tested: name -->``."""
    found = re.search(rf"<!-- tested: {name} -->\s*```bash\n(.*?)```", DEPLOY.read_text(), re.DOTALL)
    assert found, f"deploy/README.md has no block marked 'tested: {name}'"
    return found.group(1)


def _certificates(folder: Path) -> None:
    """ca.pem, cluster.pem/.key and client.pem/.key in ``folder``: the documented openssl commands (or the same with cryptography)."""
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.which("openssl"):
        block = _documented("certificates").replace("SCHEDULER_IP=10.0.0.5", "SCHEDULER_IP=127.0.0.1")
        done = subprocess.run(["bash", "-euc", block], cwd=folder, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return
    # No openssl on this machine: the same files from the cryptography package (a dependency).
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    now = datetime.datetime.now(datetime.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("CA"))
        .issuer_name(name("CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for leaf in ("cluster", "client"):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(leaf))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        (folder / f"{leaf}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / f"{leaf}.key").write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory):
    """The documented TLS scheduler and worker on 127.0.0.1; yields (folder with the certificates, address, processes)."""
    folder = tmp_path_factory.mktemp("tls_cluster")
    _certificates(folder)
    _certificates(folder / "other")  # another authority: certificates the cluster must not accept
    port = str(_free_port())
    env = _env(SCHEDULER_IP="127.0.0.1", WORKER_IP="127.0.0.1")
    processes: list[subprocess.Popen] = []
    logs = []
    try:
        for name in ("scheduler", "worker"):
            log = (folder / f"{name}.log").open("wb")
            logs.append(log)
            command = _documented(name).replace("8786", port)
            processes.append(
                subprocess.Popen(
                    ["bash", "-euc", command], cwd=folder, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
                )
            )
            if name == "scheduler":
                time.sleep(1)
        address = f"tls://127.0.0.1:{port}"
        security = Security(
            tls_ca_file=str(folder / "ca.pem"),
            tls_client_cert=str(folder / "client.pem"),
            tls_client_key=str(folder / "client.key"),
            require_encryption=True,
        )
        deadline = time.monotonic() + 90
        while True:
            for process, name in zip(processes, ("scheduler", "worker"), strict=True):
                assert process.poll() is None, f"dask {name} ended:\n" + (folder / f"{name}.log").read_text()
            try:
                with Client(address, security=security, timeout="5s") as probe:
                    probe.wait_for_workers(1, timeout=60)
                break
            except OSError:
                assert time.monotonic() < deadline, "the TLS scheduler did not answer in 90 s:\n" + (folder / "scheduler.log").read_text()
                time.sleep(0.5)
        yield folder, address, processes
    finally:
        for process in reversed(processes):
            _stop(process)
        for log in logs:
            log.close()


def _cli(arguments: list[str], cwd: Path, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scalable_assoc.cli", *arguments], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=_env(**env)
    )


def test_documented_tls_cluster_gives_the_default_results(
    tls_cluster, default_run: tuple[Path, dict], small_study: SimulatedStudy, tmp_path: Path, assert_results_equal
) -> None:
    folder, address, processes = tls_cluster
    out = tmp_path / "tls"
    command = (
        _documented("client")
        .replace("scalable-assoc ", f"{sys.executable} -m scalable_assoc.cli ")
        .replace("plan.yaml", str(small_study.plan_path))
        .replace("/shared/results", str(out))
        .replace("8786", address.rsplit(":", 1)[1])
    )
    done = subprocess.run(
        ["bash", "-euc", command], cwd=folder, capture_output=True, text=True, timeout=300, env=_env(SCHEDULER_IP="127.0.0.1")
    )
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dask"]["scheduler"] == address
    assert_results_equal(default_run[0], out)
    # The documented commands bind every socket, HTTP included, to the address given.
    listening = [s for process in processes for s in _listening(process.pid)]
    assert listening and [s for s in listening if s[1] not in LOOPBACK] == [], f"sockets beyond loopback: {listening}"


def test_dask_tls_configuration_instead_of_options(tls_cluster, default_run: tuple[Path, dict], tmp_path: Path) -> None:
    """sumstats --sufficient on the TLS cluster with the credentials in dask's configuration (environment variables)."""
    folder, address, _ = tls_cluster
    out = tmp_path / "cohort.parquet"
    done = _cli(
        ["sumstats", str(default_run[0]), "--cohort", "a", "--out", str(out), "--sufficient", "--scheduler", address],
        folder,
        DASK_DISTRIBUTED__COMM__TLS__CA_FILE=str(folder / "ca.pem"),
        DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT=str(folder / "client.pem"),
        DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY=str(folder / "client.key"),
    )
    assert done.returncode == 0, done.stderr
    assert out.with_name("cohort.sufficient.parquet").is_file()


@pytest.mark.parametrize("client", ["no-credentials", "other-authority", "plain-tcp"])
def test_tls_cluster_refuses_clients_with_exit_2(tls_cluster, small_study: SimulatedStudy, tmp_path: Path, client: str) -> None:
    folder, address, _ = tls_cluster
    options = {
        "no-credentials": ["--scheduler", address],
        "other-authority": [
            "--scheduler",
            address,
            "--tls-ca-file",
            "other/ca.pem",
            "--tls-cert",
            "other/client.pem",
            "--tls-key",
            "other/client.key",
        ],
        "plain-tcp": ["--scheduler", address.replace("tls://", "tcp://")],
    }[client]
    out = tmp_path / "out"
    started = time.monotonic()
    done = _cli(["run", str(small_study.plan_path), "--out", str(out), "--no-report", *options], folder, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("scalable-assoc run: error: ")]
    assert len(lines) == 1, done.stderr
    expected = {
        "no-credentials": f"--scheduler {address} is a TLS address but no client credentials were given; add --tls-ca-file",
        "other-authority": f"cannot connect to the Dask scheduler at {address}",
        "plain-tcp": f"cannot connect to the Dask scheduler at {address.replace('tls://', 'tcp://')}",
    }[client]
    assert expected in lines[0]
    assert time.monotonic() - started < 60, "refused promptly"
    assert not (out / "results.parquet").exists()
