"""Participant metadata: loading, sample-ID reconciliation, exposures and covariate encoding.

Turns the metadata table into the numeric arrays the kernels take: exposure
vectors (0/1 for case/control definitions) and covariate matrices with
categorical covariates expanded to treatment dummies.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from scalable_assoc.errors import DataError, PlanError, did_you_mean
from scalable_assoc.io.h5ad_table import read_h5ad_obs
from scalable_assoc.io.tables import check_row_lengths, raw_header, reading_problem, table_separator
from scalable_assoc.plan import expressions
from scalable_assoc.plan.schema import ExposureSpec


def _column_list(metadata: pd.DataFrame, limit: int = 15) -> str:
    return f"{', '.join(map(str, metadata.columns[:limit]))}{', ...' if metadata.shape[1] > limit else ''}"


def load_metadata(path: Path, id_column: str) -> pd.DataFrame:
    """Read a TSV/CSV/Parquet metadata table, or an AnnData ``.h5ad`` file's ``obs``, indexed by ``id_column`` (as strings).

    In an ``.h5ad`` file the sample IDs are ``obs_names`` (the IDs its ``X`` is read with), given the name ``id_column``.
    """
    if not path.is_file():
        raise DataError(f"metadata file {path} does not exist (plan key 'data.metadata')")
    try:
        if path.suffix.lower() == ".h5ad":
            frame = read_h5ad_obs(path, id_column)
        elif path.suffix.lower() in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            # The header as written: pandas would silently rename a repeated column 'age' to 'age.1'.
            header = pd.Index(raw_header(path, 0))
            repeated = header[header.duplicated()].unique()
            if len(repeated):
                raise DataError(
                    f"metadata file {path}: column name(s) {', '.join(repr(str(c)) for c in repeated[:5])} appear more than once "
                    "in the header; every column needs a distinct name"
                )
            # A short line would otherwise become missing covariates, silently dropping the participant.
            check_row_lengths(path, 0, "participant")
            frame = pd.read_csv(path, sep=table_separator(path), dtype={id_column: str})
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as error:
        raise DataError(f"metadata file {path} cannot be read as a table: {reading_problem(error)}") from None
    if id_column not in frame.columns and frame.shape[1] < 2:
        # One field per line is how any text file reads (a key, a password file): its first line is not quoted.
        raise DataError(
            f"metadata file {path} is not a table with a sample ID column '{id_column}' (plan key 'data.metadata', "
            "'data.sample_id_column'): its first line has a single field, no "
            f"{'comma' if table_separator(path) == ',' else 'tab'}-separated "
            f"column names.{did_you_mean(id_column, frame.columns)} A metadata table has one row per participant and "
            f"tab-separated columns (comma-separated for .csv), one of them '{id_column}'."
        )
    if id_column not in frame.columns:
        raise DataError(
            f"metadata file {path} has no sample ID column '{id_column}' (plan key 'data.sample_id_column', "
            f"default 'sample_id').{did_you_mean(id_column, frame.columns)} (The metadata has: {_column_list(frame, 10)})"
        )
    ids = frame[id_column]
    if ids.isna().any():
        first = int(np.flatnonzero(ids.isna().to_numpy())[0])
        raise DataError(
            f"metadata file {path}: {int(ids.isna().sum())} row(s) have no value in the sample ID column '{id_column}' "
            f"(the first is data row {first + 1}); every participant needs an ID"
        )
    ids = ids.astype(str)
    duplicated = ids[ids.duplicated()].unique()
    if duplicated.size:
        raise DataError(
            f"metadata file {path}: duplicate sample IDs in '{id_column}' ({int(ids.duplicated().sum())} repeated), "
            f"for example: {', '.join(duplicated[:5])}"
        )
    return frame.assign(**{id_column: ids}).set_index(id_column)


def reconcile_samples(
    layer: str, layer_path: Path, layer_ids: tuple[str, ...], metadata: pd.DataFrame, metadata_path: Path, intersect: bool
) -> tuple[np.ndarray, str | None]:
    """Positions (into ``layer_ids``) of the samples used for a layer, in layer order, and a warning if any.

    Unless ``intersect`` is set, the abundance and metadata sample IDs must match
    exactly; otherwise the error says how many differ and names the first few.
    With ``intersect`` the shared samples are used and the warning says what was dropped.
    """
    # Object indexes: pandas' Arrow-backed strings test membership a value at a time in Python (0.04 s per 7,656 IDs).
    layer_index = pd.Index(layer_ids, dtype=object)
    metadata_ids = pd.Index(metadata.index, dtype=object)
    in_metadata = layer_index.isin(metadata_ids)
    only_layer = layer_index[~in_metadata]
    only_metadata = metadata.index[~metadata_ids.isin(layer_index)]
    if len(only_layer) or len(only_metadata):
        detail = []
        if len(only_layer):
            detail.append(
                f"{len(only_layer)} sample(s) of layer '{layer}' ({layer_path}) are not in the metadata ({metadata_path}), e.g. "
                f"{', '.join(map(str, only_layer[:5]))}"
            )
        if len(only_metadata):
            detail.append(
                f"{len(only_metadata)} metadata sample(s) ({metadata_path}) are not in layer '{layer}', e.g. "
                f"{', '.join(map(str, only_metadata[:5]))}"
            )
        message = "; ".join(detail)
        cause = mismatch_cause(only_layer, metadata.index, only_metadata, layer_index, layer)
        if cause:
            message += f". Likely cause: {cause}"
        if not in_metadata.any():
            # Nothing shared at all is rarely a few bad IDs but a transposed table or the wrong ID
            # column, and intersecting cannot help, so the message says so instead of offering it.
            raise DataError(
                f"sample IDs do not match: no sample of layer '{layer}' ({layer_path}) is in the metadata ({metadata_path}): "
                f"{message}. Check that the table has samples as rows with their IDs in the first column (or is a "
                f"MetaPhlAn table with samples as columns), and that data.sample_id_column names the metadata's ID column."
            )
        if not intersect:
            raise DataError(
                f"sample IDs do not match: {message}. Fix the IDs, or set 'data: {{sample_mismatch: intersect}}' in the plan "
                f"(or pass --intersect-samples) to analyse only the {int(in_metadata.sum())} shared samples."
            )
        return np.flatnonzero(in_metadata), f"layer '{layer}': analysing the {int(in_metadata.sum())} shared samples only: {message}"
    return np.flatnonzero(in_metadata), None


#: How many unmatched IDs of each side the causes of a mismatch are looked for in (enough to see a pattern, cheap on a million).
_CAUSE_SAMPLE = 200


def _digits_unpadded(value: str) -> str:
    """``value`` with the leading zeros of each run of digits removed (``LL007`` -> ``LL7``, ``007`` -> ``7``)."""
    return re.sub(r"(?<![0-9])0+(?=[0-9])", "", value)


def _common_suffix(unmatched: pd.Index, other: pd.Index) -> tuple[str, int, str] | None:
    """The suffix most ``unmatched`` IDs carry beyond an ID of ``other`` (``S1_Abundance`` vs ``S1``): (suffix, count, example)."""
    known = set(map(str, other))
    found: dict[str, list[str]] = {}
    shown = [str(v) for v in unmatched[:_CAUSE_SAMPLE]]
    for value in shown:
        for cut in range(len(value) - 1, 0, -1):  # the longest ID it extends: 'S11_x' is 'S11' + '_x', not 'S1' + '1_x'
            if value[:cut] in known and _word_boundary(value[cut - 1], value[cut]):
                found.setdefault(value[cut:], []).append(value)
                break
    if not found:
        return None
    suffix, examples = max(found.items(), key=lambda item: len(item[1]))
    # Most unmatched IDs carry it: '294' is not '29' + '4' because the metadata happens to have sample 29.
    return (suffix, len(examples), examples[0]) if 2 * len(examples) >= len(shown) else None


def _word_boundary(before: str, after: str) -> bool:
    """Whether a suffix can start between these two characters: at a separator, or where letters and digits meet."""
    return not after.isalnum() or before.isdigit() != after.isdigit()


def mismatch_cause(only_layer: pd.Index, metadata_ids: pd.Index, only_metadata: pd.Index, layer_ids: pd.Index, layer: str) -> str | None:
    """Why a layer's sample IDs and the metadata's likely differ, with an example; None when no pattern is found.

    Looked for in the first unmatched IDs of each side: a suffix on one side only
    (``_Abundance``, ``_profile``, ``.kraken``), white space around IDs, upper/lower
    case, leading zeros (``007`` vs ``7``).
    """
    if not len(only_layer) and not len(only_metadata):
        return None
    sides = ((f"layer '{layer}'", only_layer, metadata_ids, "the metadata"), ("the metadata", only_metadata, layer_ids, f"layer '{layer}'"))
    for name, unmatched, other, other_name in sides:
        if not len(unmatched):
            continue
        shown = [str(v) for v in unmatched[:_CAUSE_SAMPLE]]
        for problem, ignoring, normal in (
            ("white space around the IDs", "without the spaces around them", str.strip),
            ("upper/lower case", "ignoring case", str.casefold),
            ("leading zeros", "ignoring leading zeros", _digits_unpadded),
        ):
            normalised = {normal(str(v)): str(v) for v in other}
            hits = [(v, normalised[normal(v)]) for v in shown if normal(v) in normalised]
            if hits:
                mine, theirs = hits[0]
                return (
                    f"{problem}: {len(hits)} of the first {len(shown)} unmatched IDs of {name} match an ID of {other_name} "
                    f"{ignoring} (e.g. {mine!r} vs {theirs!r})"
                )
        suffix = _common_suffix(pd.Index(shown), other)
        if suffix is not None:
            text, count, example = suffix
            return (
                f"the IDs of {name} end in {text!r} where those of {other_name} do not: {count} of the first {len(shown)} unmatched "
                f"IDs match once it is removed (e.g. {example!r} vs {example[: -len(text)]!r}); remove the suffix from one side"
            )
    return None


def _require_columns(metadata: pd.DataFrame, path: Path, columns: list[str], where: str, also_known: Iterable[str] = ()) -> None:
    """Raise a :class:`PlanError` naming ``where`` (the plan key) and the first missing column, with a suggestion.

    ``also_known`` are other names the item could have meant (adjustment set names).
    """
    missing = [c for c in columns if c not in metadata.columns]
    if missing:
        hint = did_you_mean(missing[0], list(metadata.columns) + list(also_known))
        raise PlanError(
            f"{where} names column(s) {', '.join(repr(c) for c in missing)} that are not in the metadata file {path}.{hint} "
            f"(the metadata has: {_column_list(metadata)})"
        )


@dataclass(frozen=True)
class ExposureValues:
    """An exposure over all metadata rows: ``values`` ``(n,)`` with NaN where a participant is in neither group.

    For a categorical exposure ``values`` are codes into ``levels`` (every level, sorted) and
    ``reference`` is the plan's reference level (None: the first level present).
    """

    name: str
    values: np.ndarray
    binary: bool
    source_columns: tuple[str, ...]
    levels: tuple[str, ...] = ()
    reference: str | None = None


_OPERATORS = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _evaluate_node(node: expressions.Node, metadata: pd.DataFrame, where: str, query: str, path: Path) -> pd.Series:
    """A boolean Series for one node of a parsed query, with pandas ``query`` semantics for missing values.

    Only the operations of :mod:`scalable_assoc.plan.expressions` are applied
    (comparisons, ``isin``, ``isna``/``notna``, ``&``/``|``/``~``): nothing of the
    query's text is ever evaluated as code.
    """
    if isinstance(node, expressions.Column):
        column = metadata[node.name]
        if not pd.api.types.is_bool_dtype(column.dtype):
            raise PlanError(
                f"{where}: in the query {query!r}, column '{node.name}' of {path} stands alone but does not hold true/false values; "
                f'compare it with a value (for example "{node.name} == 1")'
            )
        return column
    if isinstance(node, expressions.Compare):
        values = [metadata[o.name] if isinstance(o, expressions.Column) else o.value for o in node.operands]
        result: pd.Series | None = None
        for left, op, right in zip(values[:-1], node.ops, values[1:], strict=True):
            try:
                link = _OPERATORS[op](left, right)
            except TypeError:
                names = [f"column '{o.name}'" if isinstance(o, expressions.Column) else repr(o.value) for o in node.operands]
                raise PlanError(
                    f"{where}: the query {query!r} compares values of different kinds ({' and '.join(names[:2])}) with '{op}' "
                    f"in {path}; quote text values and leave numbers unquoted"
                ) from None
            result = link if result is None else result & link
        assert result is not None
        return result
    if isinstance(node, expressions.Membership):
        found = metadata[node.column.name].isin([v.value for v in node.values])
        return ~found if node.negated else found
    if isinstance(node, expressions.Missing):
        column = metadata[node.column.name]
        return column.isna() if node.missing else column.notna()
    if isinstance(node, expressions.Not):
        return ~_evaluate_node(node.operand, metadata, where, query, path)
    parts = [_evaluate_node(operand, metadata, where, query, path) for operand in node.operands]
    combined = parts[0]
    for part in parts[1:]:
        combined = combined & part if node.op == "and" else combined | part
    return combined


def _evaluate_query(metadata: pd.DataFrame, path: Path, exposure: str, part: str, query: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """The participants a cases/controls query selects, and the columns it names.

    The query is parsed by the tool's own expression language (never evaluated
    as Python or by pandas ``eval``); the plan was checked when it was loaded.
    """
    where = f"exposure '{exposure}' (plan key 'exposures.{exposure}.{part}')"
    parsed = expressions.parse_query(query, where)
    for name in parsed.columns:
        if name not in metadata.columns:
            raise PlanError(
                f"{where}: the query {query!r} names '{name}', which is not a column of the metadata file {path}."
                f"{did_you_mean(name, metadata.columns)} (To compare with a text value, quote it: \"sex == 'female'\"; "
                f"the metadata has: {_column_list(metadata)})"
            )
    selected = _evaluate_node(parsed.tree, metadata, where, query, path)
    return selected.fillna(False).to_numpy(dtype=bool), parsed.columns


def exposure_values(metadata: pd.DataFrame, path: Path, spec: ExposureSpec, min_cases: int) -> ExposureValues:
    """Evaluate one exposure on the metadata, enforcing a minimum group size for binary exposures."""
    if spec.is_query:
        assert spec.cases is not None and spec.controls is not None
        cases, case_columns = _evaluate_query(metadata, path, spec.name, "cases", spec.cases)
        controls, control_columns = _evaluate_query(metadata, path, spec.name, "controls", spec.controls)
        both = cases & controls
        if both.any():
            example = ", ".join(map(str, metadata.index[both][:5]))
            raise PlanError(
                f"exposure '{spec.name}': {int(both.sum())} participant(s) match both the cases and the controls query, e.g. {example}"
            )
        for label, mask, query in (("cases", cases, spec.cases), ("controls", controls, spec.controls)):
            if not mask.any():
                raise PlanError(
                    f"exposure '{spec.name}' (plan key 'exposures.{spec.name}.{label}'): the {label} query {query!r} "
                    f"selects no participants in {path}; check the column's values"
                )
            if mask.sum() < min_cases:
                raise PlanError(
                    f"exposure '{spec.name}' (plan key 'exposures.{spec.name}.{label}'): only {int(mask.sum())} {label} "
                    f"(query {query!r}), fewer than min_cases = {min_cases}; lower 'min_cases' in the plan, or pass --min-cases to this "
                    "run (for this cohort only), if this is intended"
                )
        values = np.where(cases, 1.0, np.where(controls, 0.0, np.nan))
        named = set(case_columns) | set(control_columns)
        columns = tuple(str(c) for c in metadata.columns if c in named)
        return ExposureValues(spec.name, values, True, columns)
    assert spec.column is not None
    where = f"exposure '{spec.name}' (plan key 'exposures.{spec.name}.column')"
    _require_columns(metadata, path, [spec.column], where)
    column = metadata[spec.column]
    if spec.categorical:
        return _categorical_exposure(column, path, spec, where)
    if not (pd.api.types.is_numeric_dtype(column.dtype) or pd.api.types.is_bool_dtype(column.dtype)):
        example = column.dropna().astype(str).unique()[:3]
        raise PlanError(
            f"{where}: column '{spec.column}' of {path} is not numeric (values such as {', '.join(map(repr, example))}); "
            "use cases/controls queries for a categorical exposure"
        )
    values = column.to_numpy(dtype=np.float64, na_value=np.nan)
    check_in_range(metadata, values, path, str(spec.column), where)
    observed = values[~np.isnan(values)]
    if observed.size == 0:
        raise PlanError(f"{where}: column '{spec.column}' of {path} has no values")
    binary = bool(np.isin(observed, (0.0, 1.0)).all())
    if binary:
        for label, count in (("cases (value 1)", int((observed == 1).sum())), ("controls (value 0)", int((observed == 0).sum()))):
            if count < min_cases:
                raise PlanError(
                    f"{where}: only {count} {label} in column '{spec.column}', fewer than min_cases = {min_cases}; "
                    "lower 'min_cases' in the plan, or pass --min-cases to this run (for this cohort only), if this is intended"
                )
    return ExposureValues(spec.name, values, binary, (spec.column,))


def _categorical_exposure(column: pd.Series, path: Path, spec: ExposureSpec, where: str) -> ExposureValues:
    """Level codes of a categorical exposure (levels as text, sorted, as for categorical covariates)."""
    defined = column.notna().to_numpy()
    text = column.astype(str).to_numpy()
    levels = tuple(sorted(set(text[defined])))
    if len(levels) < 2:
        raise PlanError(
            f"{where}: the categorical column '{spec.column}' of {path} has {len(levels)} level(s) ({', '.join(map(repr, levels))}); a "
            "joint test needs at least 2"
        )
    if spec.reference is not None and spec.reference not in levels:
        raise PlanError(
            f"exposure '{spec.name}' (plan key 'exposures.{spec.name}.reference'): the reference level {spec.reference!r} is not a value "
            "of "
            f"column '{spec.column}' in {path}.{did_you_mean(spec.reference, levels)} (levels: {', '.join(map(repr, levels))})"
        )
    codes = np.full(len(column), np.nan)
    codes[defined] = pd.Index(levels).get_indexer(text[defined])
    return ExposureValues(spec.name, codes, False, (str(spec.column),), levels, spec.reference)


def check_covariates(
    metadata: pd.DataFrame,
    path: Path,
    adjustments: dict[str, tuple[str, ...]],
    categorical: tuple[str, ...],
    reference: Mapping[str, str] | None = None,
) -> None:
    """Every adjustment column exists; non-categorical ones are numeric; every reference level occurs.

    Sets arrive expanded (``ptd: [base, any_ptd]`` holds base's columns), so a
    missing column is blamed on the smallest set that holds it: the one that
    lists it, not every set built on top of it.
    """
    missing = [c for columns in adjustments.values() for c in columns if c not in metadata.columns]
    if missing:
        column = missing[0]
        holders = sorted((name for name, columns in adjustments.items() if column in columns), key=lambda n: len(adjustments[n]))
        also = f", also used by set(s) {', '.join(holders[1:])}" if len(holders) > 1 else ""
        _require_columns(
            metadata, path, [column], f"adjustment set '{holders[0]}' (plan key 'adjustments.{holders[0]}'{also})", adjustments
        )
    _require_columns(metadata, path, list(categorical), "plan key 'covariates.categorical'")
    for column, level in (reference or {}).items():
        found = sorted(metadata[column].dropna().astype(str).unique())
        if level not in found:
            shown = ", ".join(repr(v) for v in found[:20]) + (f", ... ({len(found)} levels)" if len(found) > 20 else "")
            raise PlanError(
                f"plan key 'covariates.reference.{column}': level {level!r} is not a value of column '{column}' in the metadata "
                f"file {path}.{did_you_mean(level, found)} (levels found: {shown or 'none'})"
            )
    used = {c for columns in adjustments.values() for c in columns}
    for column in sorted(used):
        # Every participant would be dropped from every model using it: a results table of statuses only.
        if metadata[column].isna().all():
            sets = ", ".join(name for name, columns in adjustments.items() if column in columns)
            raise PlanError(f"covariate '{column}' (adjustment set(s) {sets}) has no values in the metadata file {path}")
    for column in sorted(used - set(categorical)):
        dtype = metadata[column].dtype
        if not (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)):
            example = metadata[column].dropna().astype(str).unique()[:3]
            sets = ", ".join(name for name, columns in adjustments.items() if column in columns)
            raise PlanError(
                f"covariate '{column}' (adjustment set(s) {sets}) in {path} is not numeric (values such as "
                f"{', '.join(map(repr, example))}); list it under covariates.categorical in the plan"
            )
        sets = ", ".join(name for name, columns in adjustments.items() if column in columns)
        check_in_range(
            metadata,
            metadata[column].to_numpy(dtype=np.float64, na_value=np.nan),
            path,
            column,
            f"covariate '{column}' (adjustment set(s) {sets})",
        )


#: Largest magnitude a numeric exposure or covariate may take: sums of squares over a
#: biobank's participants must stay finite in double precision (1e308 is the limit).
MAX_MAGNITUDE = 1e100


def check_in_range(metadata: pd.DataFrame, values: np.ndarray, path: Path, column: str, what: str) -> None:
    """Refuse infinite or astronomically large values (``(n,)``, NaN = missing) in a numeric column, naming participants.

    An infinite covariate would reach the QR as a non-finite design and an infinite
    exposure a singular one; a value such as 1e308 overflows every sum of squares.
    """
    bad = np.isinf(values) | (np.abs(np.nan_to_num(values)) >= MAX_MAGNITUDE)
    if bad.any():
        rows = np.flatnonzero(bad)
        examples = ", ".join(f"{metadata.index[i]} ({values[i]:g})" for i in rows[:3])
        raise DataError(
            f"{what}: column '{column}' of {path} has {rows.size} infinite or out-of-range value(s) (magnitude 1e100 or more), "
            f"e.g. participant(s) {examples}; leave them empty (missing) or rescale the column"
        )


class CovariateValues:
    """A metadata frame's columns as NumPy arrays, each converted once and then indexed by participant positions.

    Why: a study resolves every (exposure, adjustment set) on the same participants, and each resolution took
    its covariates' rows through pandas again (selecting rows, text conversion, missing masks): hundreds of
    milliseconds of pandas work per study, on the run's critical path. Each conversion is per cell (pandas'
    ``astype(str)``, ``to_numpy(float64)``, ``isna``), so a column converted whole and then indexed holds
    exactly what the selected rows converted alone would.
    """

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame
        self._numeric: dict[str, np.ndarray] = {}
        self._text: dict[str, np.ndarray] = {}
        self._missing: dict[str, np.ndarray] = {}
        self._codes: dict[str, tuple[np.ndarray, np.ndarray, dict[str, int]]] = {}

    def numeric(self, column: str) -> np.ndarray:
        """``(n,)`` float64, NaN where missing."""
        if column not in self._numeric:
            self._numeric[column] = self.frame[column].to_numpy(dtype=np.float64, na_value=np.nan)
        return self._numeric[column]

    def text(self, column: str) -> np.ndarray:
        """``(n,)`` object: each value as text, as pandas' ``astype(str)`` writes it (a categorical covariate's levels)."""
        if column not in self._text:
            self._text[column] = self.frame[column].astype(str).to_numpy()
        return self._text[column]

    def codes(self, column: str) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
        """:meth:`text` as ``(n,)`` int64 codes into its distinct texts (object array, in order of appearance), and each text's code.

        Why: the levels present among each design's participants (hundreds of designs per study) are then
        counted over integers rather than hashed again as text: a third of resolving a study's analyses.
        """
        if column not in self._codes:
            codes, distinct = pd.factorize(self.text(column), use_na_sentinel=False)
            self._codes[column] = (codes, distinct, {text: code for code, text in enumerate(distinct)})
        return self._codes[column]

    def missing(self, column: str) -> np.ndarray:
        """``(n,)`` bool: missing (pandas' ``isna``)."""
        if column not in self._missing:
            self._missing[column] = self.frame[column].isna().to_numpy()
        return self._missing[column]


def covariate_values(metadata: pd.DataFrame | CovariateValues) -> CovariateValues:
    """``metadata`` as :class:`CovariateValues` (itself when it is one already)."""
    return metadata if isinstance(metadata, CovariateValues) else CovariateValues(metadata)


def _levels(values: CovariateValues, column: str, rows: np.ndarray, reference: Mapping[str, str] | None = None) -> list[str]:
    """A categorical covariate's levels among ``rows``, as text: the reference first, then the others sorted.

    The reference is the plan's ``covariates.reference`` level for ``column``
    when it occurs among ``rows``, else the first level in sorted order.
    """
    codes, distinct, _ = values.codes(column)
    levels = sorted(distinct[np.flatnonzero(np.bincount(codes[rows], minlength=len(distinct)))].tolist())
    chosen = (reference or {}).get(column)
    if chosen is not None and chosen in levels:
        levels.remove(chosen)
        levels.insert(0, chosen)
    return levels


def covariate_columns(
    metadata: pd.DataFrame | CovariateValues,
    columns: tuple[str, ...],
    categorical: tuple[str, ...],
    rows: np.ndarray,
    reference: Mapping[str, str] | None = None,
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Encode covariates for the given metadata ``rows`` (positions): ``(len(rows), k)`` matrix and its names.

    Column 0 is the intercept. A categorical covariate becomes one 0/1 dummy per
    level present among ``rows`` except the reference level, in sorted order;
    dummies are named ``column[level]``. The reference is ``reference[column]``
    (the plan's ``covariates.reference``) where that level occurs among ``rows``,
    else the first level in sorted order. Rows must have no missing values.
    """
    values = covariate_values(metadata)
    pieces = [np.ones((rows.size, 1))]
    names = ["(intercept)"]
    for column in columns:
        if column in categorical:
            levels = _levels(values, column, rows, reference)
            codes, _, code_of = values.codes(column)
            chosen = codes[rows]
            for level in levels[1:]:
                pieces.append((chosen == code_of[level]).astype(np.float64)[:, None])
                names.append(f"{column}[{level}]")
        else:
            pieces.append(values.numeric(column)[rows][:, None])
            names.append(column)
    return np.hstack(pieces), tuple(names)


def reference_levels(
    metadata: pd.DataFrame | CovariateValues,
    columns: tuple[str, ...],
    categorical: tuple[str, ...],
    rows: np.ndarray,
    reference: Mapping[str, str] | None = None,
) -> tuple[str, ...]:
    """Names ``column[level]`` of the reference dummies :func:`covariate_columns` leaves out, one per categorical covariate.

    Each equals one minus the sum of its column's other dummies. A pooled analysis
    across cohorts needs them: a cohort's reference level need not be the
    consortium's (a level may be absent from one cohort).
    """
    values = covariate_values(metadata)
    names = []
    for column in columns:
        if column in categorical:
            levels = _levels(values, column, rows, reference)
            if levels:
                names.append(f"{column}[{levels[0]}]")
    return tuple(names)


def constant_covariates(
    metadata: pd.DataFrame | CovariateValues, columns: tuple[str, ...], categorical: tuple[str, ...], rows: np.ndarray
) -> dict[str, str]:
    """Covariates among ``columns`` that take a single value (one level) among ``rows``, with that value as text.

    Such a column cannot be adjusted for within those participants (R's ``lm``
    refuses a one-level factor and aliases a constant numeric column).
    """
    values = covariate_values(metadata)
    constant = {}
    for column in columns:
        if column in categorical:
            codes, distinct, _ = values.codes(column)
            chosen = codes[rows]
            if chosen.size and not (chosen != chosen[0]).any():
                constant[column] = str(distinct[chosen[0]])
            continue
        numbers = values.numeric(column)[rows]
        # One distinct value as pandas' unique counts them: -0.0 equals 0.0, NaN equals NaN; named by its first row.
        if numbers.size and (not (numbers != numbers[0]).any() or np.isnan(numbers).all()):
            constant[column] = str(numbers[0])
    return constant


def complete_rows(metadata: pd.DataFrame | CovariateValues, columns: tuple[str, ...]) -> np.ndarray:
    """Boolean ``(n,)``: rows with no missing value in any of ``columns``."""
    values = covariate_values(metadata)
    complete = np.ones(len(values.frame), dtype=bool)
    for column in columns:
        complete &= ~values.missing(column)
    return complete
