"""Writing large Arrow tables as tab-separated text (on the CPUs given) and as Parquet.

The TSV beside each Parquet output is written as
:func:`scalable_assoc.io.atomic.write_tsv` writes it (Arrow's CSV writer: tab,
``NA`` for missing, no quoting, numbers in shortest round-trip form), but from
an Arrow table (no pandas frame of millions of rows first): in slices
formatted on parallel threads, joined in order into one file, or, on one
thread (beside a Parquet writer on two CPUs), streamed straight into the file.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from scalable_assoc.io.atomic import write_atomically, write_tsv
from scalable_assoc.results.coded_keys import thread_map, worker_threads


def write_table_parquet(path: Path, table: pa.Table) -> Path:
    """Write ``table`` to Parquet atomically, as :func:`~scalable_assoc.io.atomic.write_parquet` does, floats without a dictionary.

    The same values and schema: only the encoding of floating-point columns
    differs. Estimates, p-values and the like are nearly all distinct; the
    writer's attempt to dictionary-encode them (per row group, until the
    dictionary outgrows its page) was about a third of the write's CPU time
    for ten million rows, and ended in plain encoding anyway.
    """
    dictionary = [field.name for field in table.schema if not pa.types.is_floating(field.type)]
    return write_atomically(path, lambda temporary: pq.write_table(table, temporary, use_dictionary=dictionary))


#: Rows formatted per slice (a slice's text is held in memory until written).
SLICE_ROWS = 250_000


def _options(header: bool) -> pa_csv.WriteOptions:
    return pa_csv.WriteOptions(include_header=header, delimiter="\t", quoting_style="none", quoting_header="none", null_string="NA")


def write_table_tsv(path: Path, table: pa.Table, slice_rows: int = SLICE_ROWS, threads: int | None = None) -> Path:
    """Write ``table`` as TSV atomically; identical to ``write_tsv(path, table.to_pandas())``.

    Text needing quotes (a tab or newline in a name), which Arrow's writer
    refuses unquoted, falls back to :func:`write_tsv` (pandas quotes it).
    Boolean columns are not expected (``write_tsv`` spells them TRUE/FALSE).
    ``threads`` (default: one per CPU) format slices of ``slice_rows`` rows side
    by side; with one thread the text streams straight into the file instead.
    """
    if any(pa.types.is_boolean(field.type) for field in table.schema):
        return write_tsv(path, table.to_pandas())
    threads = worker_threads() if threads is None else max(1, threads)
    if threads == 1:
        # No slice buffers: each slice's text grows by doubling into fresh memory, which for
        # hundreds of megabytes of text cost as much system time (page faults) as formatting it.
        try:
            return write_atomically(path, lambda temporary: pa_csv.write_csv(table, temporary, _options(header=True)))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            return write_tsv(path, table.to_pandas())
    starts = list(range(0, table.num_rows, slice_rows)) or [0]

    def text(start: int) -> pa.Buffer:
        sink = pa.BufferOutputStream()
        pa_csv.write_csv(table.slice(start, slice_rows), sink, _options(header=start == 0))
        return sink.getvalue()

    def writer(temporary: Path) -> None:
        # a few slices at a time, so at most that much text is held
        with temporary.open("wb") as handle:
            step = 2 * threads
            for first in range(0, len(starts), step):
                for buffer in thread_map(text, starts[first : first + step], threads):
                    handle.write(buffer)

    try:
        return write_atomically(path, writer)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return write_tsv(path, table.to_pandas())
