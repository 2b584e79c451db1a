"""Opening cohorts' summary-statistics files: each checked against its sidecar (and signature) before use."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from scalable_assoc.errors import DataError, UserInputError
from scalable_assoc.io.atomic import file_checksum
from scalable_assoc.results.coded_keys import thread_map
from scalable_assoc.results.signing import VerifyKey, load_verify_key, verify_sidecar
from scalable_assoc.results.sumstats_format import FORMAT, SUFFICIENT_SCHEMA, sidecar_path

#: How a cross-products file's name ends (``cohort.sufficient.parquet`` beside ``cohort.parquet``).
SUFFICIENT_SUFFIX = ".sufficient.parquet"


@dataclass(frozen=True)
class CohortFile:
    """A verified summary-statistics file and its sidecar."""

    path: Path
    cohort: str
    sidecar: dict[str, Any]

    def summary(self) -> pd.DataFrame:
        """The summary rows (:data:`~scalable_assoc.results.sumstats_format.SUMMARY_COLUMNS`)."""
        return pd.read_parquet(self.path)

    def summary_table(self, columns: Sequence[str], keys: Sequence[str] = ()) -> pa.Table:
        """``columns`` of the summary rows as Arrow, the ``keys`` columns dictionary-encoded (read so, no text per row)."""
        schema_names = pq.read_schema(self.path).names
        missing = [c for c in columns if c not in schema_names]
        if missing:
            raise DataError(f"{self.path}: lacks column(s) {', '.join(missing)} of a summary-statistics file")
        return pq.read_table(self.path, columns=list(columns), read_dictionary=list(keys))

    def sufficient(self, read_dictionary: Sequence[str] = (), columns: Sequence[str] | None = None) -> pa.Table:
        """The cross-product rows (``read_dictionary`` columns dictionary-encoded); a clear error if exported without ``--sufficient``.

        ``columns``: only these columns (default all), so that columns nobody uses are not decoded.
        """
        entry = self.sidecar["files"].get("sufficient")
        if entry is None:
            raise DataError(f"{self.path}: exported without --sufficient; re-export with 'scalable-assoc sumstats RUN_DIR --sufficient'")
        path = self.path.with_name(entry["name"])
        fields = [f for f in SUFFICIENT_SCHEMA if columns is None or f.name in columns]
        schema = pa.schema([pa.field(f.name, pa.dictionary(pa.int32(), f.type)) if f.name in read_dictionary else f for f in fields])
        return pq.read_table(path, columns=None if columns is None else schema.names, schema=schema)


def open_cohort_file(
    path: Path, need_sufficient: bool = False, verify_key: Path | VerifyKey | Sequence[Path | VerifyKey] | None = None
) -> CohortFile:
    """Open a summary-statistics file, refusing it unless its sidecar exists and every checksum matches.

    With ``verify_key`` (a shared-secret file or an Ed25519 public key in PEM,
    see :mod:`scalable_assoc.results.signing`) the sidecar must also carry a
    signature made with that key over its current content (with several keys,
    e.g. one public key per cohort: with the one it names); without it a
    signed or unsigned file is accepted on its checksums.

    Parameters
    ----------
    path
        The summary-statistics file (``cohort.parquet``); its sidecar is ``cohort.json``.
    need_sufficient
        Also require (and check) the cross-products file.
    verify_key
        A key, its file, or several; None accepts the file on its checksums.

    Returns
    -------
    CohortFile
        The file, its cohort name and its sidecar.

    Raises
    ------
    DataError
        A file is missing, changed since export, of another format or not signed with the key.
    """
    path = Path(path)
    keys = None
    if verify_key is not None:
        given = [verify_key] if isinstance(verify_key, str | Path | VerifyKey) else list(verify_key)
        keys = [k if isinstance(k, VerifyKey) else load_verify_key(Path(k)) for k in given]
    if not path.is_file():
        raise DataError(f"{path}: no such summary-statistics file")
    side = sidecar_path(path)
    if not side.is_file():
        raise DataError(f"{path}: its sidecar {side.name} is missing; was it written by 'scalable-assoc sumstats'?")
    try:
        sidecar = json.loads(side.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"{side}: not valid JSON ({error})") from None
    if sidecar.get("format") != FORMAT:
        raise DataError(f"{side}: format {sidecar.get('format')!r} is not {FORMAT!r}")
    if keys is not None:
        verify_sidecar(sidecar, keys, path, side.name)
    files = sidecar.get("files", {})
    entries = [("summary", path)]
    if need_sufficient:
        if "sufficient" not in files:
            raise DataError(f"{path}: exported without --sufficient; re-export with 'scalable-assoc sumstats RUN_DIR --sufficient'")
        entries.append(("sufficient", path.with_name(files["sufficient"]["name"])))
    for kind, file in entries:
        if not file.is_file():
            raise DataError(f"{file}: missing (listed in {side.name})")
        if file_checksum(file) != files[kind]["sha256"]:
            raise DataError(f"{file}: checksum does not match its sidecar {side.name}; the file was changed or damaged after export")
    return CohortFile(path, str(sidecar["cohort"]), sidecar)


def summary_files(files: Sequence[Path]) -> list[Path]:
    """The summary files among ``files``: a cross-products file given next to its summary file is dropped.

    A shell glob such as ``cohort_*.parquet`` matches ``cohort_1.sufficient.parquet``
    too; the summary file lists it, so it is skipped. Given without its summary
    file it is refused, naming the file to pass instead.

    Parameters
    ----------
    files
        Paths as the user gave them, in order.

    Returns
    -------
    list of Path
        The summary files, in the order given.

    Raises
    ------
    UserInputError
        A cross-products file was given without its summary file.
    """
    summaries = []
    given = {Path(path).resolve() for path in files}
    for path in map(Path, files):
        if path.name.endswith(SUFFICIENT_SUFFIX):
            summary = path.with_name(path.name.removesuffix(SUFFICIENT_SUFFIX) + ".parquet")
            if summary.resolve() in given:
                continue  # matched by a glob next to its summary file, which lists it
            raise UserInputError(f"{path} holds cross-products; pass its summary file {summary} (which lists it) instead")
        summaries.append(path)
    return summaries


def open_cohorts(
    files: Sequence[Path], need_sufficient: bool = False, verify_keys: Sequence[Path | VerifyKey] | None = None
) -> list[CohortFile]:
    """Open every cohort's summary-statistics file, as ``meta`` and ``pool`` do.

    The keys are loaded first (a bad key file fails before any file is read),
    the list is checked by :func:`summary_files`, then each file is opened by
    :func:`open_cohort_file`.

    Parameters
    ----------
    files
        Summary-statistics files (cross-products files beside them are skipped).
    need_sufficient
        Require each file's cross-products (``pool``).
    verify_keys
        Key files or keys every sidecar must be signed with (one of them); None or empty: checksums only.

    Returns
    -------
    list of CohortFile
        One per summary file, in the order given.

    Raises
    ------
    UserInputError
        A key file is unusable or a cross-products file was given alone.
    DataError
        A file is missing, changed since export or not signed with the keys.

    Examples
    --------
    >>> from scalable_assoc import open_cohorts
    >>> opened = open_cohorts([tmp / f"cohort_{k}.parquet" for k in (1, 2, 3)], need_sufficient=True)
    >>> [cohort.cohort for cohort in opened]
    ['cohort_1', 'cohort_2', 'cohort_3']
    """
    keys = [key if isinstance(key, VerifyKey) else load_verify_key(Path(key)) for key in verify_keys] if verify_keys else None
    # Checksumming is most of the work (hashlib releases the GIL): one thread per CPU; the first failing file in order raises.
    return thread_map(lambda path: open_cohort_file(path, need_sufficient, verify_key=keys), summary_files(files))
