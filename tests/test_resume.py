"""A killed run, started again with the same plan and output folder, resumes.

It computes only the chunks it lacks (``manifest.json`` ``chunks_reused``) and
ends with results identical to an uninterrupted run, and a killed run never
leaves a complete-looking set of outputs behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from distributed import Client, LocalCluster

from scalable_assoc.engine.outputs import OUTPUT_FILES
from scalable_assoc.engine.run import WORK_DIR, run_study
from scalable_assoc.simulate import SimulatedStudy, simulate_study
from scalable_assoc.testing import logged_messages


def _chunk_files(out: Path) -> list[Path]:
    """Finished chunk files: those with their seal (``<chunk>.parquet.sha256``), written after the chunk."""
    return sorted(seal.with_name(seal.name.removesuffix(".sha256")) for seal in (out / WORK_DIR / "chunks").glob("*.parquet.sha256"))


def _cli_run(plan: Path, out: Path, scheduler: str, chunk_features: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "scalable_assoc.cli",
        "run",
        str(plan),
        "--out",
        str(out),
        "--scheduler",
        scheduler,
        "--chunk-features",
        str(chunk_features),
        "--no-report",  # the report has its own tests; here it would only cost time
    ]


def _kill_after_first_chunk(command: list[str], out: Path, log: Path, timeout: float = 120.0) -> bool:
    """Start ``command``, SIGKILL it as soon as a chunk file exists; False if it finished first."""
    with log.open("wb") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while not _chunk_files(out):
                if process.poll() is not None:
                    return False
                assert time.monotonic() < deadline, f"no chunk file after {timeout:.0f}s:\n{log.read_text()}"
                time.sleep(0.002)
            if process.poll() is not None:
                return False
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            return process.returncode == -signal.SIGKILL
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)


@pytest.fixture(scope="module")
def slow_study(tmp_path_factory: pytest.TempPathFactory) -> SimulatedStudy:
    """A larger study for the rare machine where the small one finishes before it can be killed."""
    study = simulate_study(tmp_path_factory.mktemp("slow_study"), participants=1500, seed=5, n_species=150, n_pathways=150)
    return study


def test_killed_cli_run_resumes(
    small_study: SimulatedStudy,
    dask_cluster: LocalCluster,
    client: Client,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    assert_results_equal,
) -> None:
    scheduler = dask_cluster.scheduler_address
    # Small chunks give hundreds of tasks, so the run is still going when its first chunk
    # file appears. Should a run ever finish before the kill lands, try a slower setting.
    attempts = [(small_study, 4), (small_study, 1), (None, 1)]
    for attempt, (study, chunk_features) in enumerate(attempts):
        if study is None:
            study = request.getfixturevalue("slow_study")
        out = tmp_path / f"killed{attempt}"
        killed = _kill_after_first_chunk(_cli_run(study.plan_path, out, scheduler, chunk_features), out, tmp_path / f"killed{attempt}.log")
        if killed:
            break
    else:
        pytest.fail("every run finished before it could be killed")

    written_before_resume = len(_chunk_files(out))
    assert written_before_resume >= 1
    for name in OUTPUT_FILES:
        assert not (out / name).exists(), f"a killed run left {name} behind"

    resumed = subprocess.run(_cli_run(study.plan_path, out, scheduler, chunk_features), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["chunks_reused"] > 0
    assert manifest["chunks_reused"] <= manifest["chunks_total"]
    assert len(_chunk_files(out)) == manifest["chunks_total"]
    print(
        f"killed after {written_before_resume} chunk file(s); resumed with {manifest['chunks_reused']}/{manifest['chunks_total']} chunks "
        "reused"
    )

    uninterrupted = tmp_path / "uninterrupted"
    summary = run_study(study.plan_path, uninterrupted, client=client, chunk_features=chunk_features)
    assert summary.chunks_reused == 0 and summary.chunks_total == manifest["chunks_total"]
    # Same plan, same chunks: the resumed results are the uninterrupted ones, bit for bit.
    assert_results_equal(uninterrupted, out, relative=0.0)


def test_deleted_chunks_are_recomputed(small_study: SimulatedStudy, client: Client, tmp_path: Path, assert_results_equal) -> None:
    out = tmp_path / "run"
    first = run_study(small_study.plan_path, out, client=client, chunk_features=7)
    assert first.chunks_reused == 0
    complete = tmp_path / "complete.parquet"
    complete.write_bytes((out / "results.parquet").read_bytes())

    chunks = _chunk_files(out)
    assert len(chunks) == first.chunks_total
    deleted = chunks[::5]  # every fifth, spread over the layers
    for path in deleted:
        path.unlink()
    (out / "results.parquet").unlink()
    with logged_messages() as messages:
        again = run_study(small_study.plan_path, out, client=client, chunk_features=7)
    # The filter and per-sample sums come from the first run's work folder, not a new pass over the data.
    assert sum("reused from an earlier pass" in m for m in messages) == 3
    assert again.chunks_total == first.chunks_total
    assert again.chunks_reused == first.chunks_total - len(deleted)
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["chunks_total"], manifest["chunks_reused"]) == (first.chunks_total, first.chunks_total - len(deleted))
    assert sorted(p.name for p in _chunk_files(out)) == sorted(p.name for p in chunks)
    assert_results_equal(complete, out, relative=0.0)

    # A third run with every chunk present computes nothing and changes nothing.
    third = run_study(small_study.plan_path, out, client=client, chunk_features=7)
    assert third.chunks_reused == third.chunks_total
    assert_results_equal(complete, out, relative=0.0)


def test_a_new_alpha_or_name_reuses_every_chunk(small_study: SimulatedStudy, client: Client, tmp_path: Path) -> None:
    """Chunk ids hash only what changes a chunk's rows: a rerun with a new FDR threshold or study name costs no fit."""
    out = tmp_path / "out"
    first = run_study(small_study.plan_path, out, client=client, chunk_features=16)
    assert first.chunks_reused == 0
    text = small_study.plan_path.read_text()
    changed = tmp_path / "study" / "plan.yaml"
    changed.parent.mkdir()
    for name in ("metadata.tsv", "species.tsv", "pathways.tsv", "gbm.tsv"):
        (changed.parent / name).symlink_to(small_study.out_dir / name)
    assert "alpha: 0.05}" in text
    changed.write_text(text.replace("name: lifelines-internalizing", "name: renamed-study").replace("alpha: 0.05}", "alpha: 0.2}"))
    second = run_study(changed, out, client=client, chunk_features=16, allow_outside_paths=True)  # links out of its folder
    assert second.chunks_total == first.chunks_total and second.chunks_reused == second.chunks_total
    assert second.manifest["plan_name"] == "renamed-study"
    # The same rows, with q thresholded at the new alpha by whoever reads them.
    assert first.results[["feature", "beta", "p", "q"]].equals(second.results[["feature", "beta", "p", "q"]])
    # A changed model option does change them.
    changed.write_text(text + "min_carriers: 5\n")
    third = run_study(changed, out, client=client, chunk_features=16, allow_outside_paths=True)
    assert third.chunks_reused == 0


def test_truncated_or_edited_chunks_are_recomputed(
    small_study: SimulatedStudy, client: Client, tmp_path: Path, assert_results_equal
) -> None:
    """A chunk no longer as its task wrote it (truncated by a full disk, edited by hand) is never trusted."""
    import pyarrow.parquet as pq

    out = tmp_path / "run"
    first = run_study(small_study.plan_path, out, client=client, chunk_features=7)
    complete = tmp_path / "complete.parquet"
    complete.write_bytes((out / "results.parquet").read_bytes())
    chunks = [path for path in _chunk_files(out) if pq.read_metadata(path).num_rows > 0]
    truncated, edited, unsealed = chunks[0], chunks[len(chunks) // 2], chunks[-1]
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    table = pq.read_table(edited).to_pandas()
    table.loc[0, "beta"] = 99.0
    table.to_parquet(edited, index=False)
    unsealed.with_name(unsealed.name + ".sha256").unlink()  # its task was killed between the chunk and its seal
    with logged_messages() as messages:
        again = run_study(small_study.plan_path, out, client=client, chunk_features=7, force=True)
    warned = [m for m in messages if "no longer matches" in m]
    assert len(warned) == 3 and all("computing it again" in m for m in warned)
    assert any(truncated.stem in m for m in warned) and any(edited.stem in m for m in warned)
    assert again.chunks_reused == first.chunks_total - 3
    assert_results_equal(complete, out, relative=0.0)


def test_an_unchanged_finished_run_is_up_to_date(small_study: SimulatedStudy, client: Client, tmp_path: Path) -> None:
    """A scheduled rerun with nothing changed returns at once; an edited input (by content) or --force runs again."""
    out = tmp_path / "out"
    first = run_study(small_study.plan_path, out, client=client, chunk_features=16)
    written = (out / "results.parquet").stat().st_mtime_ns
    with logged_messages() as messages:
        again = run_study(small_study.plan_path, out, client=client, chunk_features=16)
    assert any("is up to date" in m for m in messages) and again.chunks_reused == first.chunks_total
    assert again.results.equals(first.results) and (out / "results.parquet").stat().st_mtime_ns == written, "nothing rewritten"
    # Another option is another run.
    with logged_messages() as messages:
        run_study(small_study.plan_path, out, client=client, chunk_features=8)
    assert not any("is up to date" in m for m in messages)
    with logged_messages() as messages:
        run_study(small_study.plan_path, out, client=client, chunk_features=8, force=True)
    assert not any("is up to date" in m for m in messages) and any("already done, resuming" in m for m in messages)
    # A file touched but unchanged is still up to date; one edited is not.
    metadata = small_study.out_dir / "metadata.tsv"
    os.utime(metadata)
    with logged_messages() as messages:
        run_study(small_study.plan_path, out, client=client, chunk_features=8)
    assert any("is up to date" in m for m in messages)
