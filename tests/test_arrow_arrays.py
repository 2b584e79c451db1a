"""The workers' result tables built from buffers (:mod:`scalable_assoc.results.arrow_arrays`): what ``pyarrow.array`` makes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from scalable_assoc.results.arrow_arrays import empty_table, float64_array, int64_array, repeated_strings, strings_at, tiled_strings
from scalable_assoc.results.columns import COVARIATE_SCHEMA, PARTIAL_SCHEMA


def _same(ours: pa.Array, theirs: pa.Array) -> bool:
    """Equal type, values and nulls, NaN equal to NaN (``pa.Array.equals`` holds NaN unequal to itself)."""

    def listed(array: pa.Array) -> list:
        return ["NaN" if value != value else value for value in array.to_pylist()]

    return ours.type == theirs.type and listed(ours) == listed(theirs) and ours.null_count == theirs.null_count


def _mask(size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(size) < 0.3


@pytest.mark.parametrize("size", [0, 1, 9, 64, 1000])
def test_numeric_arrays_equal_pyarrows_own(size: int) -> None:
    rng = np.random.default_rng(size)
    values = rng.normal(size=size)
    values[_mask(size, 1)] = np.nan
    null = _mask(size, 2)
    assert _same(float64_array(values), pa.array(values, pa.float64()))
    assert _same(float64_array(values, null), pa.array(values, pa.float64(), mask=null))
    assert float64_array(values, nan_is_null=True).equals(pa.array(values, pa.float64(), from_pandas=True))
    assert float64_array(values, null, nan_is_null=True).equals(pa.array(values, pa.float64(), mask=null | np.isnan(values)))
    counts = rng.integers(-5, 100, size=size)
    for dtype in (np.int64, np.int32, np.int8, np.uint8, np.float64, bool):
        given = counts.astype(dtype) if dtype != np.uint8 else np.abs(counts).astype(dtype)
        assert int64_array(given).equals(pa.array(given, pa.int64()))
        assert int64_array(given, null).equals(pa.array(given, pa.int64(), mask=null))
    assert _same(float64_array(values.reshape(-1, 1)), float64_array(values))  # flattened, as ravel() would


def test_int64_refuses_fractions_and_masks_of_another_size() -> None:
    with pytest.raises(ValueError, match="whole numbers"):
        int64_array(np.array([1.0, 2.5]))
    with pytest.raises(ValueError, match="whole numbers"):
        int64_array(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="null mask"):
        float64_array(np.zeros(3), np.zeros(2, dtype=bool))


def test_strings_equal_pyarrows_own() -> None:
    distinct = ["ok", "", "rank-deficient design", "naïve ünïcode", "s__Genus87_species3", "ok"]
    positions = np.random.default_rng(3).integers(0, len(distinct), size=500)
    expected = pa.array([distinct[i] for i in positions], pa.string())
    assert strings_at(distinct, positions).equals(expected)
    assert strings_at(distinct, positions.astype(np.int8)).equals(expected)
    assert strings_at(tuple(distinct), positions.reshape(20, 25)).equals(expected)
    assert strings_at(distinct, np.array([], dtype=np.int64)).equals(pa.array([], pa.string()))
    assert strings_at([], np.array([], dtype=np.int64)).equals(pa.array([], pa.string()))
    assert repeated_strings(["a", "bb", "ccc"], 4).equals(pa.array(list(np.repeat(["a", "bb", "ccc"], 4)), pa.string()))
    assert tiled_strings(["a", "bb", "ccc"], 4).equals(pa.array(["a", "bb", "ccc"] * 4, pa.string()))
    assert repeated_strings(distinct, 0).equals(tiled_strings(distinct, 0)) and len(tiled_strings(distinct, 0)) == 0
    assert repeated_strings([], 3).equals(pa.array([], pa.string()))
    with pytest.raises(IndexError):
        strings_at(["a"], np.array([1]))


@pytest.mark.parametrize("schema", [PARTIAL_SCHEMA, COVARIATE_SCHEMA])
def test_an_empty_table_is_the_schemas_own(schema: pa.Schema) -> None:
    table = empty_table(schema)
    assert table.num_rows == 0 and table.schema.equals(schema) and table.equals(schema.empty_table())


def _cross_products_by_pyarrow(layer, feature_ids, exposure, adjustment, analysis_id, terms, products) -> pa.Table:
    """The sufficient-statistics rows as ``pyarrow.array`` makes them (the definition the buffers must equal)."""
    from scalable_assoc.results.sumstats_format import SUFFICIENT_SCHEMA

    m, q, c = len(feature_ids), products.zz.shape[1], len(terms)

    def matrix_column(values: np.ndarray, width: int) -> pa.Array:
        offsets = pa.array(np.arange(0, (m + 1) * width, width, dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(values).ravel(), pa.float64()))

    binary = products.n_cases >= 0
    return pa.table(
        {
            "layer": pa.array([layer] * m, pa.string()),
            "feature": pa.array(list(feature_ids), pa.string()),
            "exposure": pa.array([exposure] * m, pa.string()),
            "adjustment": pa.array([adjustment] * m, pa.string()),
            "analysis_id": pa.array([analysis_id] * m, pa.string()),
            "n": pa.array(products.n, pa.int64()),
            "n_cases": pa.array(products.n_cases, pa.int64(), mask=~binary),
            "n_controls": pa.array(products.n_controls, pa.int64(), mask=~binary),
            "terms": pa.array([list(terms)] * m, pa.list_(pa.string())),
            "zz": matrix_column(products.zz, q),
            "zy": matrix_column(products.zy, c),
            "yy": pa.array(products.yy, pa.float64(), from_pandas=True),
        },
        schema=SUFFICIENT_SCHEMA,
    )


@pytest.mark.parametrize("binary", [True, False], ids=["case-control exposure", "continuous exposure"])
@pytest.mark.parametrize("m", [0, 1, 7])
def test_sufficient_statistics_rows_equal_pyarrows_own(binary: bool, m: int) -> None:
    """A worker's sufficient-statistics table (from buffers) is the table ``pyarrow.array`` makes, NaN yy null."""
    from scalable_assoc.models.pooled import CrossProducts
    from scalable_assoc.results.sumstats_format import cross_products_table

    rng = np.random.default_rng(m)
    terms = ("exposure", "intercept", "age", "sex=male")
    c = len(terms)
    yy = rng.exponential(size=m)
    yy[::3] = np.nan
    products = CrossProducts(
        zz=rng.normal(size=(m, c * (c + 1) // 2)),
        zy=rng.normal(size=(m, c)),
        yy=yy,
        n=rng.integers(50, 100, m),
        n_cases=rng.integers(5, 20, m) if binary else np.full(m, -1),
        n_controls=rng.integers(20, 40, m) if binary else np.full(m, -1),
    )
    features = tuple(f"k__Bacteria|s__f{j} é" for j in range(m))
    arguments = ("species", features, "MDD", "base", "a1", terms, products)
    ours = cross_products_table(*arguments)
    assert ours.equals(_cross_products_by_pyarrow(*arguments), check_metadata=True)
    assert ours.column("yy").null_count == len(range(0, m, 3))
