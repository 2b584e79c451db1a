"""Atomic file writes: write to a temporary name in the same folder, then rename.

A reader (or a resumed run) therefore sees either the complete file or none,
and a task that Dask runs twice simply replaces its own output with an
identical one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

if TYPE_CHECKING:  # imported where a frame is written: workers write Arrow tables only, and pandas costs 0.2 s to import
    import pandas as pd


def _temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def write_atomically(path: Path, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(temporary_path)``, then rename the result onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_sibling(path)
    try:
        writer(temporary)
        os.replace(temporary, path)
    except BaseException:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            temporary.unlink(missing_ok=True)
        raise
    return path


def write_parquet(path: Path, frame: pd.DataFrame | pa.Table) -> Path:
    """Write a table to Parquet atomically (no pandas index)."""
    table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    return write_atomically(path, lambda tmp: pq.write_table(table, tmp))


def write_tsv(path: Path, frame: pd.DataFrame) -> Path:
    """Write a tab-separated table atomically; missing values as ``NA`` (read as missing by R and pandas).

    Written by Arrow's CSV writer: several times faster than pandas on the
    client (a run's results table has one row per regression) and numbers keep
    their full precision (shortest round-trip form). Text that would need
    quoting (a tab or newline inside a name) falls back to pandas, which quotes it.
    """

    from pandas.api.types import is_bool_dtype

    # TRUE/FALSE: the spelling R's read.delim turns into logicals (and pandas into bools).
    booleans = [c for c in frame.columns if is_bool_dtype(frame[c].dtype)]
    shown = frame.assign(**{c: frame[c].map({True: "TRUE", False: "FALSE"}) for c in booleans}) if booleans else frame

    def writer(temporary: Path) -> None:
        try:
            _write_arrow_tsv(pa.Table.from_pandas(shown, preserve_index=False), temporary)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            shown.to_csv(temporary, sep="\t", index=False, na_rep="NA")

    return write_atomically(path, writer)


def write_tsv_table(path: Path, table: pa.Table, frame: Callable[[], pd.DataFrame]) -> Path:
    """:func:`write_tsv` of an Arrow table (no boolean columns) that is ``frame()`` in pandas, without converting it.

    The same bytes as ``write_tsv(path, frame())``: Arrow writes strings,
    integers and floats of either alike. ``frame`` is called only when text
    needs quoting (the pandas fallback of :func:`write_tsv`).
    """

    def writer(temporary: Path) -> None:
        try:
            _write_arrow_tsv(table, temporary)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            write_tsv(temporary, frame())

    return write_atomically(path, writer)


def _write_arrow_tsv(table: pa.Table, path: Path) -> None:
    """Tab-separated, missing values as ``NA``, no quoting (Arrow refuses text that would need it)."""
    pa_csv.write_csv(table, path, pa_csv.WriteOptions(delimiter="\t", null_string="NA", quoting_style="none", quoting_header="none"))


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write named numpy arrays to an ``.npz`` file atomically (no pickled objects)."""

    def writer(temporary: Path) -> None:
        with temporary.open("wb") as handle:
            np.savez(handle, **arrays)  # type: ignore[arg-type]  # numpy's stub reads a key as allow_pickle

    return write_atomically(path, writer)


def write_json(path: Path, payload: Any) -> Path:
    """Write JSON atomically, pretty-printed."""
    text = json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n"

    def writer(temporary: Path) -> None:
        temporary.write_text(text, encoding="utf-8")

    return write_atomically(path, writer)


def file_checksum(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """SHA-256 of a file, or of a folder's files in sorted order (a Zarr store)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with file.open("rb") as handle:
            while block := handle.read(chunk_bytes):
                digest.update(block)
    return digest.hexdigest()


def seal_path(path: Path) -> Path:
    """Where ``path``'s seal is kept: ``<name>.sha256`` beside it."""
    return path.with_name(path.name + ".sha256")


def seal(path: Path) -> None:
    """Record ``path``'s SHA-256 beside it (``<name>.sha256``), atomically, after the file is complete.

    A file with a matching seal was written whole by this tool and not changed
    since; a file without one (its writer was killed in between) is not trusted.
    """
    digest = file_checksum(path)

    def write(temporary: Path) -> None:
        temporary.write_text(digest + "\n", encoding="ascii")

    write_atomically(seal_path(path), write)


def sealed(path: Path) -> bool | None:
    """Whether ``path`` (a file, or a folder such as a store) holds what was sealed.

    None when it does not exist; True when its seal matches its content; False when unsealed, unreadable or changed.
    """
    if not path.exists():
        return None
    try:
        recorded = seal_path(path).read_text(encoding="ascii").strip()
        return recorded == file_checksum(path)
    except (OSError, UnicodeDecodeError):
        return False


def remove_sealed(path: Path) -> None:
    """Remove a file and its seal."""
    path.unlink(missing_ok=True)
    seal_path(path).unlink(missing_ok=True)
