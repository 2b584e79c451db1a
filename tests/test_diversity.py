"""Alpha diversity from chunk-additive partial sums against R's vegan.

Reference values: ``tests/reference/permanova/make_reference.R`` (vegan 2.6-4 ``diversity()``,
``specnumber()``), 17 significant digits. Tolerances: shannon and simpson 1e-12 relative, richness exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scalable_assoc.stats.diversity import ALPHA_METRICS, alpha_from_sums, alpha_partial_sums

REFERENCE = Path(__file__).parent / "reference" / "permanova"


@pytest.mark.parametrize("n", [60, 150])
@pytest.mark.parametrize("scale", ["counts", "proportions", "percent"])
def test_alpha_matches_vegan_over_feature_chunks(n: int, scale: str) -> None:
    data = pd.read_csv(REFERENCE / f"data_n{n}.csv")
    expected = pd.read_csv(REFERENCE / f"alpha_n{n}.csv")
    x = data.filter(regex="^f").to_numpy(float)
    if scale != "counts":
        x = x / x.sum(axis=1, keepdims=True) * (100.0 if scale == "percent" else 1.0)
    for threshold, column in ((0.0, "richness_0"), (5.0, "richness_5")):
        if scale != "counts" and threshold:
            continue
        sums = sum(alpha_partial_sums(x[:, start : start + 7], threshold) for start in range(0, x.shape[1], 7))
        metrics = alpha_from_sums(sums, ALPHA_METRICS)
        np.testing.assert_allclose(metrics["shannon"], expected["shannon"], rtol=1e-12, atol=0)
        np.testing.assert_allclose(metrics["simpson"], expected["simpson"], rtol=1e-12, atol=0)
        np.testing.assert_array_equal(metrics["richness"], expected[column])
        single = alpha_from_sums(alpha_partial_sums(x, threshold))
        for name in ALPHA_METRICS:
            np.testing.assert_allclose(single[name], metrics[name], rtol=1e-13)


def test_missing_and_empty_samples() -> None:
    x = np.array([[1.0, 2.0, 0.0], [1.0, np.nan, 3.0], [0.0, 0.0, 0.0]])
    metrics = alpha_from_sums(alpha_partial_sums(x, 0.0))
    assert np.isnan(metrics["shannon"][1]) and np.isnan(metrics["simpson"][1]) and np.isnan(metrics["richness"][1])
    assert np.isnan(metrics["shannon"][2]) and np.isnan(metrics["simpson"][2]) and metrics["richness"][2] == 0
    assert metrics["richness"][0] == 2
    np.testing.assert_allclose(metrics["shannon"][0], -(1 / 3 * np.log(1 / 3) + 2 / 3 * np.log(2 / 3)), rtol=1e-14)


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        alpha_partial_sums(np.array([[1.0, -1.0]]))
    with pytest.raises(ValueError, match="unknown alpha metric"):
        alpha_from_sums(np.zeros((1, 5)), ["chao1"])
