"""Scheduled runs: one run per output folder, a status a scheduler can ask for, leftovers cleared.

Real processes throughout: the second run and the status queries are the real
command in a fresh interpreter, asked while the first run is fitting.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from distributed import Client

from scalable_assoc.engine.run import WORK_DIR, run_study
from scalable_assoc.simulate import SimulatedStudy
from scalable_assoc.testing import logged_messages, write_plan


def _command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scalable_assoc.cli", *args], capture_output=True, text=True, timeout=120, check=False)


def _status(out: Path) -> tuple[int, dict]:
    finished = _command("status", str(out), "--json")
    return finished.returncode, json.loads(finished.stdout) if finished.stdout.strip() else {}


def test_a_second_run_on_a_folder_in_use_exits_75_and_changes_nothing(small_study: SimulatedStudy, client: Client, tmp_path: Path) -> None:
    out = tmp_path / "out"
    seen: list[tuple] = []

    def while_fitting(done: int, total: int) -> None:
        if seen:
            return
        before = {str(p.relative_to(out)) for p in out.rglob("*") if not p.name.endswith(".tmp")}
        lock = (out / WORK_DIR / "lock.json").read_text()
        second = _command("run", str(small_study.plan_path), "--out", str(out), "--workers", "1")
        after = {str(p.relative_to(out)) for p in out.rglob("*") if not p.name.endswith(".tmp")}  # the first run's files in flight
        seen.append((second, before, after, _status(out), lock == (out / WORK_DIR / "lock.json").read_text()))

    summary = run_study(small_study.plan_path, out, client=client, chunk_features=16, on_chunk_done=while_fitting)
    second, before, after, (status_code, status), same_lock = seen[0]
    assert second.returncode == 75, second.stderr
    assert "Traceback" not in second.stderr and "in use by another run" in second.stderr
    assert f"process {os.getpid()} on host {socket.gethostname()}" in second.stderr
    # The first run goes on writing its chunks meanwhile; the refused one removed nothing and took nothing.
    assert before <= after and same_lock, "the refused run removed something or touched the lock"
    assert status_code == 75 and status["state"] == "running" and status["chunks_total"] == summary.chunks_total
    # Afterwards: finished, the lock released, a new run may take the folder.
    code, status = _status(out)
    assert code == 0 and status["state"] == "finished" and status["chunks_done"] == status["chunks_total"] == summary.chunks_total
    assert status["plan_hash"] == summary.manifest["plan_hash"] and status["error"] is None
    assert not (out / WORK_DIR / "lock.json").exists()
    # The run log: one JSON object per line, every phase, the progress messages, how it ended.
    lines = [json.loads(line) for line in (out / "run_log.jsonl").read_text().splitlines()]
    assert all({"time", "run", "phase", "event"} <= set(line) for line in lines)
    assert [line["phase"] for line in lines if line["event"] == "phase"] == ["prepare", "cluster", "filter", "fit", "gather"]
    assert any(line["event"] == "message" and line["phase"] == "fit" and "chunks" in line["message"] for line in lines)
    assert lines[0]["event"] == "started" and lines[-1]["event"] == "finished" and lines[-1]["chunks_total"] == summary.chunks_total


def test_a_dead_runs_lock_is_taken_over_and_its_leftovers_removed(small_study: SimulatedStudy, client: Client, tmp_path: Path) -> None:
    out = tmp_path / "out"
    work = out / WORK_DIR
    (work / "stores").mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    (work / "lock.json").write_text(
        json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "started": "2026-01-01T00:00:00+00:00"})
    )
    (work / "status.json").write_text(json.dumps({"state": "running", "chunks_done": 3, "chunks_total": 9}))
    assert _status(out) == (130, {**_status(out)[1], "state": "interrupted"})
    leftovers = [
        out / ".results.parquet.1a2b3c4d.tmp",
        work / "stores" / ".gbm.tsv.x1y2.rows.tmp",
        work / "stores" / ".gbm-0123.zarr.5e6f7a8b.tmp",
    ]
    leftovers[0].write_text("partial")
    for folder in leftovers[1:]:
        folder.mkdir()
        (folder / "raw").write_bytes(b"\0" * 1024)
    with logged_messages() as messages:
        run_study(small_study.plan_path, out, client=client, chunk_features=16)
    assert any("taking over the lock" in m and "no longer running" in m for m in messages)
    assert any("removed 3 temporary file(s)" in m for m in messages)
    assert not any(path.exists() for path in leftovers)
    assert _status(out)[0] == 0


def test_a_live_process_on_this_host_keeps_its_lock(small_study: SimulatedStudy, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / WORK_DIR).mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / WORK_DIR / "lock.json").write_text(
            json.dumps({"host": socket.gethostname(), "pid": holder.pid, "started": "2026-12-05T10:00:00+00:00"})
        )
        refused = _command("run", str(small_study.plan_path), "--out", str(out), "--workers", "1")
        assert refused.returncode == 75 and f"process {holder.pid}" in refused.stderr and "2026-12-05T10:00:00" in refused.stderr
        assert not (out / WORK_DIR / "status.json").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_failed_run_says_so_with_its_error(small_study: SimulatedStudy, tmp_path: Path) -> None:
    out = tmp_path / "out"
    plan = write_plan(
        tmp_path, small_study.plan_path.read_text().replace("metadata: metadata.tsv", f"metadata: {small_study.out_dir / 'missing.tsv'}")
    )
    failed = _command("run", str(plan), "--out", str(out), "--workers", "1", "--allow-outside-paths")
    assert failed.returncode == 2
    code, status = _status(out)
    assert code == 1 and status["state"] == "failed" and "missing.tsv" in status["error"] and status["finished"]
    assert not (out / WORK_DIR / "lock.json").exists()
    last = json.loads((out / "run_log.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "failed" and last["phase"] == "prepare" and "missing.tsv" in last["error"]
    nothing = _command("status", str(tmp_path / "elsewhere"))
    assert nothing.returncode == 2 and "holds no run" in nothing.stderr


def test_an_export_of_cross_products_holds_the_run_folder(small_study: SimulatedStudy, client: Client, tmp_path: Path) -> None:
    """sumstats --sufficient writes stores, filters and designs into the run's work folder.

    It takes the run's lock, and waits for no run.
    """
    from scalable_assoc.io.runstate import folder_lock

    out = tmp_path / "out"
    run_study(small_study.plan_path, out, client=client, chunk_features=16)
    export = ["sumstats", str(out), "--cohort", "one", "--out", str(tmp_path / "one.parquet"), "--sufficient", "--workers", "1"]
    with folder_lock(out / WORK_DIR, "run (a test holding the folder)"):
        refused = _command(*export)
    assert refused.returncode == 75 and "in use by another run" in refused.stderr and f"process {os.getpid()}" in refused.stderr, (
        refused.stderr
    )
    assert not (tmp_path / "one.parquet").exists()
    exported = _command(*export)
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "one.sufficient.parquet").is_file() and not (out / WORK_DIR / "lock.json").exists()
