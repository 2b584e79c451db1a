"""Helpers for testing code that uses scalable_assoc: in-memory data, plans, result comparison.

The package's own tests and benchmarks use these, and so can a user's tests:

* :func:`simulate_block` - an abundance block ``(samples, features)`` and its metadata,
  in memory, from the same generative model as :func:`scalable_assoc.simulate.simulate_study`
  (no files); :func:`random_covariates` - a covariate matrix for kernel tests;
* :func:`study_plan`, :func:`write_study_plan`, :func:`write_plan` - the plan of a
  simulated study with changes, or any plan text, written as a plan file;
* :func:`results_differences`, :func:`assert_results_equal` - compare two results tables
  to a relative tolerance scaled to each statistic's precision;
* :func:`logged_messages` - the package's log messages during a block, as the command
  prints them (``warning: `` before warnings).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from scalable_assoc.report.progress_console import ConsoleFormat
from scalable_assoc.simulate import SimulatedStudy
from scalable_assoc.simulate.abundance import N_FACTORS, closure, layer_abundance, pathway_params, punch_missing
from scalable_assoc.simulate.participants import TERM_INDEX, metadata_frame, simulate_families, simulate_participants, term_matrix

__all__ = [
    "COVARIATE_NAMES",
    "RESULTS_RELATIVE_TOLERANCE",
    "SimulatedBlock",
    "assert_results_equal",
    "logged_messages",
    "random_covariates",
    "results_differences",
    "simulate_block",
    "study_plan",
    "write_plan",
    "write_study_plan",
]


class _Collect(logging.Handler):
    """Keeps each message as the command's console prints it."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__(logging.INFO)
        self.messages = messages
        self.setFormatter(ConsoleFormat())

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(self.format(record))


@contextlib.contextmanager
def logged_messages() -> Iterator[list[str]]:
    """Collect every message (INFO and above) of the ``scalable_assoc`` loggers while the block runs.

    Yields
    ------
    list of str
        The messages so far, as ``scalable-assoc`` prints them on stderr: progress
        as it is, ``warning: ...`` for warnings.

    Examples
    --------
    >>> import logging
    >>> with logged_messages() as messages:
    ...     logging.getLogger("scalable_assoc.engine.run").warning("chunk %s recomputed", "abc")
    >>> messages
    ['warning: chunk abc recomputed']
    """
    messages: list[str] = []
    package = logging.getLogger("scalable_assoc")
    handler, level = _Collect(messages), package.level
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    try:
        yield messages
    finally:
        package.removeHandler(handler)
        package.setLevel(level)


# --------------------------------------------------------------------------------------
# In-memory data
# --------------------------------------------------------------------------------------
COVARIATE_NAMES: tuple[str, ...] = ("(intercept)", "age", "sex[male]", "read_depth")
"""The default columns of :func:`random_covariates`."""

_COVARIATE_DRAWS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "(intercept)": lambda rng, n: np.ones(n),
    "age": lambda rng, n: rng.normal(50, 12, n),
    "sex[male]": lambda rng, n: rng.integers(0, 2, n),
    # Raw read counts (~1e7): badly scaled on purpose, as real depth covariates are.
    "read_depth": lambda rng, n: rng.normal(1e7, 2e6, n),
    "bmi": lambda rng, n: rng.normal(26, 4, n),
}


def random_covariates(rng: np.random.Generator, n: int, names: Sequence[str] = COVARIATE_NAMES) -> np.ndarray:
    """A covariate matrix ``(n, len(names))`` for kernel tests, one column per name, in order.

    ``(intercept)`` is a column of ones; ``age ~ N(50, 12)``; ``sex[male]`` 0/1 with
    probability 1/2; ``read_depth ~ N(1e7, 2e6)`` (raw counts: badly scaled on
    purpose); ``bmi ~ N(26, 4)``.  Columns are drawn from ``rng`` in the order of
    ``names``, so the same generator state and names give the same matrix.

    Parameters
    ----------
    rng
        Source of the draws.
    n
        Number of rows (samples).
    names
        Column names, each one of the above.

    Returns
    -------
    numpy.ndarray
        ``(n, len(names))``; pass it with ``names`` to
        :func:`scalable_assoc.models.factorise_covariates`.

    Raises
    ------
    KeyError
        For a name without a draw.
    """
    return np.column_stack([_COVARIATE_DRAWS[name](rng, n) for name in names])


@dataclass(frozen=True)
class SimulatedBlock:
    """An in-memory abundance block and everything a kernel needs to fit it.

    Attributes
    ----------
    values
        ``(n samples, n features)`` relative abundances (rows sum to 1 before
        missing cells), 0 where a feature is absent, NaN where missing.
    features
        Feature names (``F001``...), one per column of ``values``.
    metadata
        One row per sample, as ``metadata.tsv`` of a simulated study has it
        (``sample_id`` first; ``bmi`` and ``bristol_stool`` partly missing).
    covariates
        ``(n, 5)`` complete design: intercept, age, male sex, bmi, read depth (the
        true values, before missingness).
    covariate_names
        ``("(intercept)", "age", "sex[male]", "bmi", "read_depth")``.
    exposure
        ``(n,)`` 0/1 values of the exposure column.
    planted
        ``(n features,)`` planted effect of the exposure on each feature's latent log
        abundance (0 for a null feature).
    """

    values: np.ndarray
    features: list[str]
    metadata: pd.DataFrame
    covariates: np.ndarray
    covariate_names: tuple[str, ...]
    exposure: np.ndarray
    planted: np.ndarray


_BLOCK_EXPOSURES = ("AnyDep", "MDD", "AnyAnx", "ssri", "any_ptd", "ppi", "laxatives", "metformin")


def simulate_block(
    n_samples: int = 300,
    n_features: int = 40,
    *,
    seed: int = 0,
    exposure: str = "AnyDep",
    missing_fraction: float = 0.0,
    families: bool = False,
) -> SimulatedBlock:
    """Simulate one abundance block with its metadata, in memory.

    The participants, covariates and abundances follow the model of
    :func:`scalable_assoc.simulate.simulate_study` (pathway-like features: mostly
    prevalent, a few percent with random planted effects, compositional), drawn from
    ``np.random.default_rng(seed)``; nothing is written.

    Parameters
    ----------
    n_samples
        Number of samples (at least 100, for the minimum cases per disorder).
    n_features
        Number of features.
    seed
        Seed; the same arguments give the same block.
    exposure
        A 0/1 column that drives the microbiome: a disorder (``AnyDep``, ``MDD``,
        ``AnyAnx``), a psychotropic (``ssri``, ``any_ptd``) or other medication
        (``ppi``, ``laxatives``, ``metformin``).
    missing_fraction
        Fraction of cells set missing (NaN).
    families
        Group samples into families that share random effects (``family_id`` column).

    Returns
    -------
    SimulatedBlock
        The block, its metadata, a complete covariate matrix, the exposure and the
        planted effects.

    Raises
    ------
    ValueError
        For an exposure that is not one of the above.
    """
    if exposure not in _BLOCK_EXPOSURES:
        raise ValueError(f"exposure {exposure!r} is not one of {', '.join(_BLOCK_EXPOSURES)}")
    rng = np.random.default_rng(seed)
    extra = rng.spawn(1)[0]
    cohort = simulate_participants(rng, n_samples)
    terms = term_matrix(cohort)
    factors = rng.standard_normal((n_samples, N_FACTORS))
    log_depth = np.log(cohort["read_depth"]) - math.log(11.0)
    family = simulate_families(extra, n_samples) if families else None
    params = pathway_params(rng, extra, n_features, families)
    values = closure(layer_abundance(rng, extra, params, terms, factors, log_depth, family), 1.0)
    punch_missing(rng, values, missing_fraction)
    sample_ids = [f"S{i + 1:06d}" for i in range(n_samples)]
    metadata = metadata_frame(rng, cohort, sample_ids, family)
    names = ("(intercept)", "age", "sex[male]", "bmi", "read_depth")
    covariates = np.column_stack([np.ones(n_samples), cohort["age"], 1 - cohort["sex_female"], cohort["bmi"], cohort["read_depth"]])
    return SimulatedBlock(
        values=values,
        features=[f"F{j + 1:03d}" for j in range(n_features)],
        metadata=metadata,
        covariates=covariates.astype(np.float64),
        covariate_names=names,
        exposure=cohort[exposure].astype(np.float64),
        planted=params.B[TERM_INDEX[exposure]].copy(),
    )


# --------------------------------------------------------------------------------------
# Plans
# --------------------------------------------------------------------------------------
def write_plan(folder: str | Path, plan: str | Mapping[str, Any], filename: str = "plan.yaml") -> Path:
    """Write a plan file into ``folder`` (created if needed) and return its path.

    Parameters
    ----------
    folder
        Where to write it; relative data paths in the plan are relative to this folder.
    plan
        The plan: YAML text, written as is, or a mapping, written with
        ``yaml.safe_dump(plan, sort_keys=False)``.
    filename
        File name inside ``folder``.

    Returns
    -------
    pathlib.Path
        ``folder / filename``.
    """
    path = Path(folder) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(plan if isinstance(plan, str) else yaml.safe_dump(dict(plan), sort_keys=False))
    return path


def study_plan(
    plan: SimulatedStudy | str | Path,
    *,
    absolute_paths: bool = True,
    layers: Sequence[str] | None = None,
    changes: Mapping[str, Any] | None = None,
    **keys: Any,
) -> dict[str, Any]:
    """The plan of a simulated study (or any plan file) as a mapping, with changes.

    Parameters
    ----------
    plan
        A :class:`~scalable_assoc.simulate.SimulatedStudy` (its ``plan.yaml``) or the
        path of a plan file.
    absolute_paths
        Make the data paths (``data.metadata``, ``data.layers``) absolute, relative to
        the plan file's folder, so the plan can be written anywhere (a run then needs
        ``allow_outside_paths``).  False leaves them as written.
    layers
        Keep only these layers of ``data.layers`` (in their order); None keeps all.
    changes
        Dotted key -> value, set after ``keys`` (``{"exposures.ssri.controls": "..."}``);
        intermediate mappings must exist.
    **keys
        Top-level keys to set (``min_cases=5``, ``analyses=[...]``); None removes the key.

    Returns
    -------
    dict
        The plan, ready for :func:`write_plan`.
    """
    path = plan.plan_path if isinstance(plan, SimulatedStudy) else Path(plan)
    content: dict[str, Any] = yaml.safe_load(path.read_text())
    data = content["data"]
    if layers is not None:
        data["layers"] = {name: data["layers"][name] for name in layers}
    if absolute_paths:
        data["metadata"] = str(path.parent / data["metadata"])
        data["layers"] = {name: _absolute_layer(path.parent, layer) for name, layer in data["layers"].items()}
    for key, value in keys.items():
        if value is None:
            content.pop(key, None)
        else:
            content[key] = value
    for dotted, value in (changes or {}).items():
        target = content
        *parents, last = dotted.split(".")
        for part in parents:
            target = target[part]
        target[last] = value
    return content


def _absolute_layer(base: Path, layer: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(layer, str):
        return str(base / layer)
    return {**layer, "path": str(base / layer["path"])}


def write_study_plan(folder: str | Path, plan: SimulatedStudy | str | Path, *, filename: str = "plan.yaml", **options: Any) -> Path:
    """Write :func:`study_plan` ``(plan, **options)`` into ``folder``.

    Parameters
    ----------
    folder
        Where to write the plan.
    plan
        A simulated study or a plan file (see :func:`study_plan`).
    filename
        File name inside ``folder``.
    **options
        Passed to :func:`study_plan` (``absolute_paths``, ``layers``, ``changes``, keys).

    Returns
    -------
    pathlib.Path
        The plan file written.
    """
    return write_plan(folder, study_plan(plan, **options), filename)


# --------------------------------------------------------------------------------------
# Comparing two results tables
# --------------------------------------------------------------------------------------
RESULTS_RELATIVE_TOLERANCE = 1e-12
"""Default relative tolerance of :func:`results_differences` (see there for its scale)."""


def results_differences(expected: Any, actual: Any, relative: float = RESULTS_RELATIVE_TOLERANCE) -> list[str]:
    """Differences between two results tables (pyarrow tables, pandas frames or paths).

    Strings and integers (nulls included) must be identical; floats must have the
    same nulls / NaNs and be equal to a relative ``relative`` (or exactly; ``relative=0``
    asks for bit-identical tables).

    ``beta`` and ``t`` are compared on the scale of their own precision: a slope is
    only known to the rounding of the sums it comes from, about 1e-16 of its standard
    error, so a beta of 1e-4 standard errors (t = 1e-4) that moves in its last bits
    when a block holds other features (the CLR sample sums and the BLAS kernels then
    group the same arithmetic differently) changes by ~5e-12 of itself.
    Their tolerance is therefore ``relative * max(|value|, se)`` for ``beta`` and
    ``relative * max(|t|, 1)`` for ``t``: still a relative 1e-12 for every estimate
    larger than its standard error. ``se``, ``p`` and ``q`` are plain relative.

    Parameters
    ----------
    expected, actual
        ``pyarrow.Table``, ``pandas.DataFrame``, a parquet file, or a run's output
        folder (its ``results.parquet``).
    relative
        Relative tolerance of float columns (0: bit-identical).

    Returns
    -------
    list of str
        Human-readable differences, empty when the tables agree.
    """
    import pyarrow as pa

    left, right = _as_table(expected), _as_table(actual)
    if left.column_names != right.column_names:
        return [f"columns differ: {left.column_names} != {right.column_names}"]
    if left.num_rows != right.num_rows:
        return [f"row counts differ: {left.num_rows} != {right.num_rows}"]
    problems: list[str] = []
    for name in left.column_names:
        a, b = left.column(name).combine_chunks(), right.column(name).combine_chunks()
        if a.type != b.type:
            problems.append(f"{name}: types differ ({a.type} != {b.type})")
        elif pa.types.is_floating(a.type):
            problems += _float_differences(name, a, b, left, relative)
        elif not a.equals(b):
            problems.append(_exact_difference(name, a, b))
    return problems


def _as_table(value: Any) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(value, pa.Table):
        return value
    if isinstance(value, pd.DataFrame):
        return pa.Table.from_pandas(value, preserve_index=False)
    path = Path(value)
    return pq.read_table(path / "results.parquet" if path.is_dir() else path)


def _float_differences(name: str, a: Any, b: Any, left: Any, relative: float) -> list[str]:
    """The difference of one float column, if any (see :func:`results_differences` for the scale)."""
    a_null = a.is_null(nan_is_null=True).to_numpy(zero_copy_only=False)
    b_null = b.is_null(nan_is_null=True).to_numpy(zero_copy_only=False)
    if not np.array_equal(a_null, b_null):
        return [f"{name}: missing values differ in {int((a_null != b_null).sum())} rows (first row {int(np.argmax(a_null != b_null))})"]
    x = a.to_numpy(zero_copy_only=False).astype(np.float64)[~a_null]
    y = b.to_numpy(zero_copy_only=False).astype(np.float64)[~b_null]
    scale = np.maximum(np.abs(x), np.abs(y))
    if name == "beta" and "se" in left.column_names:
        se = left.column("se").combine_chunks().to_numpy(zero_copy_only=False).astype(np.float64)[~a_null]
        scale = np.fmax(scale, se)
    elif name == "t":
        scale = np.maximum(scale, 1.0)
    bad = (x != y) & ~(np.abs(x - y) <= relative * scale)
    if not bad.any():
        return []
    worst = int(np.argmax(np.where(bad, np.abs(x - y) / np.where(scale > 0, scale, 1.0), 0.0)))
    return [f"{name}: {int(bad.sum())} values differ beyond relative {relative:g} (worst: {x[worst]!r} vs {y[worst]!r})"]


def _exact_difference(name: str, a: Any, b: Any) -> str:
    """How a string / integer column differs (count and first row)."""
    import pyarrow.compute as pc

    unequal = ~pc.fill_null(pc.equal(a, b), False).to_numpy(zero_copy_only=False)
    diff = np.flatnonzero(unequal | (a.is_null().to_numpy(zero_copy_only=False) != b.is_null().to_numpy(zero_copy_only=False)))
    first = int(diff[0]) if diff.size else -1
    return f"{name}: {diff.size} values differ (first row {first}: {a[first] if first >= 0 else ''} vs {b[first] if first >= 0 else ''})"


def assert_results_equal(expected: Any, actual: Any, relative: float = RESULTS_RELATIVE_TOLERANCE) -> None:
    """Assert that two results tables agree (see :func:`results_differences`).

    Parameters
    ----------
    expected, actual
        Tables, frames, parquet files or run folders.
    relative
        Relative tolerance of float columns (0: bit-identical).

    Returns
    -------
    None

    Raises
    ------
    AssertionError
        Listing every difference.
    """
    problems = results_differences(expected, actual, relative)
    if problems:
        raise AssertionError("results differ:\n  " + "\n  ".join(problems))
