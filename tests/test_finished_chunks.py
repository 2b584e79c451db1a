"""The gather's chunk rows read during the fit phase (engine/outputs.FinishedChunks), and its second writing thread."""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow as pa
import pytest
from distributed import Client

import scalable_assoc.engine.outputs as outputs
from scalable_assoc.engine.chunks import ChunkTask
from scalable_assoc.engine.outputs import FinishedChunks
from scalable_assoc.engine.run import run_study
from scalable_assoc.io.atomic import write_parquet
from scalable_assoc.results.columns import PARTIAL_SCHEMA
from scalable_assoc.results.gather import ENCODED_PARTIAL_SCHEMA, concat_chunks, read_chunks
from scalable_assoc.simulate import SimulatedStudy


def _chunk(feature: str, rows: int) -> pa.Table:
    columns = {f.name: pa.nulls(rows, type=f.type) for f in PARTIAL_SCHEMA}
    columns["feature"] = pa.array([f"{feature}{i}" for i in range(rows)])
    return pa.table(columns, schema=PARTIAL_SCHEMA)


def test_chunks_are_gathered_in_task_order_whenever_they_were_read(tmp_path: Path) -> None:
    tasks = [ChunkTask(f"c{i}", "species", i, i, i + 1, ()) for i in range(4)]
    for task, rows in zip(tasks[:3], (2, 0, 3), strict=True):
        write_parquet(task.rows_file(tmp_path), _chunk(task.chunk_id, rows))
    finished = FinishedChunks(tmp_path)
    for task in (tasks[2], tasks[0], tasks[3]):  # out of order; the fourth file is not there yet
        finished.read(task)
    assert sorted(finished.tables) == ["c0", "c2"]
    write_parquet(tasks[3].rows_file(tmp_path), _chunk("c3", 1))
    gathered = concat_chunks([finished.table(t) for t in tasks])
    assert gathered.schema == ENCODED_PARTIAL_SCHEMA  # label columns as the files' dictionaries, decoded in plan order
    assert gathered.cast(PARTIAL_SCHEMA).equals(read_chunks([t.rows_file(tmp_path) for t in tasks]))
    assert gathered["feature"].to_pylist() == ["c00", "c01", "c20", "c21", "c22", "c30"]
    assert not finished.tables  # each chunk's rows are handed over once
    tasks[3].rows_file(tmp_path).unlink()
    with pytest.raises(FileNotFoundError):  # a chunk file missing at the gather is an error, as before
        finished.table(tasks[3])


def test_an_error_writing_on_the_second_thread_ends_the_run(
    small_study: SimulatedStudy, client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(outputs, "sorted_table_by_family_q", failing)
    with pytest.raises(OSError, match="disk full"):
        run_study(small_study.plan_path, tmp_path / "out", client=client, chunk_features=32)
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert not (tmp_path / "out" / "all_results.tsv").exists()


def test_chunk_rows_are_read_into_the_system_pool_and_the_default_pool_is_restored(tmp_path: Path) -> None:
    """The gather's Arrow memory is the C library's (fails with pyarrow's default pool, mimalloc, for the rows read)."""
    task = ChunkTask("c0", "species", 0, 0, 1, ())
    write_parquet(task.rows_file(tmp_path), _chunk("c0", 5000))
    default = pa.default_memory_pool()
    before = pa.system_memory_pool().bytes_allocated()
    finished = FinishedChunks(tmp_path)
    finished.read(task)
    assert pa.system_memory_pool().bytes_allocated() - before >= finished.tables["c0"]["feature"].nbytes
    assert pa.default_memory_pool().backend_name == default.backend_name


def test_the_outputs_are_written_with_the_system_pool_and_the_default_pool_is_restored_after_an_error(
    small_study: SimulatedStudy, client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pools: list[str] = []
    default = pa.default_memory_pool().backend_name

    def failing(*_: object) -> None:
        pools.append(pa.default_memory_pool().backend_name)
        raise OSError("disk full")

    monkeypatch.setattr(outputs, "sorted_table_by_family_q", failing)
    with pytest.raises(OSError, match="disk full"):
        run_study(small_study.plan_path, tmp_path / "out", client=client, chunk_features=32)
    assert pools == [pa.system_memory_pool().backend_name]
    assert pa.default_memory_pool().backend_name == default


def test_overlapping_uses_in_two_threads_restore_the_default_pool_whichever_ends_first() -> None:
    """Two gathers in threads of one process: the first out must not restore while the other gathers (fails with save/restore per use)."""
    default = pa.default_memory_pool().backend_name
    system = pa.system_memory_pool().backend_name
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: list[str] = []

    def first() -> None:
        with outputs.system_memory_pool():
            first_in.set()
            second_in.wait(5)
        first_out.set()

    def second() -> None:
        first_in.wait(5)
        with outputs.system_memory_pool():
            second_in.set()
            first_out.wait(5)
            seen.append(pa.default_memory_pool().backend_name)  # the first has left: still the system pool here

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert seen == [system]
    assert pa.default_memory_pool().backend_name == default
