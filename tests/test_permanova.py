"""Marginal PERMANOVA kernels against R's vegan ``adonis2(D ~ covariates + exposure, by = "margin")``.

Reference values: ``tests/reference/permanova/make_reference.R`` (vegan 2.6-4, 999 permutations,
Bray-Curtis and Aitchison = ``dist(clr)``), 17 significant digits. Tolerances: Df exact; SS, R2, F and
the residual SS 1e-8 relative. P-values: vegan's and ours come from independent sets of 999
permutations, each with standard error sqrt(p (1 - p) / 999); we require |p_ours - p_vegan| <
4 sqrt(2) SE (+ 1/1000 for the discreteness of p), with p the mean of the two. Internal identities
(chunked Euclidean = one chunk = distance-matrix path on dist(clr); block splits) hold to 1e-10.

Within strata (``tests/reference/permanova/make_reference_strata.R``, vegan 2.6-4 with permute 0.9-7): vegan is
given 199 permutations drawn within the strata by ``permute::shuffleSet(how(blocks = ))``, and so are our
kernels, so the p-value must be equal and every permuted F within 1e-8 relative; SS and F 1e-8 relative.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scalable_assoc.stats.permanova import (
    bray_curtis_rows,
    distance_matrix_bytes,
    distance_observed,
    distance_permuted,
    euclidean_observed,
    euclidean_permuted,
    gower_centre,
    permanova_design,
    permanova_distance,
    permanova_euclidean,
    permanova_from_sums,
    permutation_indices,
)

REFERENCE = Path(__file__).parent / "reference" / "permanova"
EXPECTED = pd.read_csv(REFERENCE / "adonis2.csv")


def _inputs(n: int, exposure: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Raw counts, CLR values, covariates and exposure columns as in make_reference.R."""
    data = pd.read_csv(REFERENCE / f"data_n{n}.csv")
    x = data.filter(regex="^f").to_numpy(float)
    logs = np.log(x + x[x > 0].min() / 2)
    clr = logs - logs.mean(axis=1, keepdims=True)
    dummies = pd.get_dummies(data["cov2"], drop_first=True).to_numpy(float)
    if exposure == "cov2":
        return x, clr, data[["cov1", "exp_num"]].to_numpy(float), dummies
    return x, clr, np.column_stack([data["cov1"].to_numpy(float), dummies]), data[exposure].to_numpy(float)


def _bray(x: np.ndarray) -> np.ndarray:
    return np.vstack([bray_curtis_rows(x[start : start + 25], x) for start in range(0, x.shape[0], 25)])


@pytest.mark.parametrize("row", [r for _, r in EXPECTED.iterrows()], ids=lambda r: f"{r.n}-{r.distance}-{r.exposure}")
def test_matches_vegan(row: pd.Series) -> None:
    x, clr, covariates, exposure = _inputs(int(row.n), row.exposure)
    if row.distance == "bray":
        result = permanova_distance(_bray(x), covariates, exposure, permutations=999, seed=7)
    else:
        result = permanova_euclidean(clr, covariates, exposure, permutations=999, seed=7, feature_block=7)
    assert (result.n, result.df, result.df_residual, result.permutations) == (row.n, row.df, row.df_residual, 999)
    for ours, theirs in [
        (result.sum_of_squares, row.ss),
        (result.r2, row.r2),
        (result.f, row.f),
        (result.residual_sum_of_squares, row.ss_residual),
        (result.total_sum_of_squares, row.ss_total),
    ]:
        assert ours == pytest.approx(theirs, rel=1e-8)
    p = (result.p + row.p) / 2
    assert abs(result.p - row.p) < 4 * np.sqrt(2) * np.sqrt(p * (1 - p) / 999) + 1e-3


def test_bray_curtis_is_symmetric_with_zero_diagonal() -> None:
    x = _inputs(60, "exp_bin")[0]
    d = _bray(x)
    np.testing.assert_allclose(d, d.T, atol=1e-15)
    np.testing.assert_array_equal(np.diag(d), 0.0)
    manual = np.abs(x[3] - x[10]).sum() / (x[3] + x[10]).sum()
    assert d[3, 10] == pytest.approx(manual, rel=1e-15)
    assert distance_matrix_bytes(1000) == 8_000_000


@pytest.mark.parametrize("exposure", ["exp_bin", "cov2"])
def test_euclidean_chunks_blocks_and_distance_path_agree(exposure: str) -> None:
    _, clr, covariates, values = _inputs(60, exposure)
    whole = permanova_euclidean(clr, covariates, values, permutations=199, seed=3)
    chunked = permanova_euclidean(clr, covariates, values, permutations=199, seed=3, feature_block=4, permutation_block=17)
    distances = np.sqrt(np.maximum(((clr[:, None, :] - clr[None, :, :]) ** 2).sum(axis=2), 0.0))
    by_distance = permanova_distance(distances, covariates, values, permutations=199, seed=3, permutation_block=50)
    for other in (chunked, by_distance):
        assert other.p == whole.p
        for name in ("sum_of_squares", "residual_sum_of_squares", "total_sum_of_squares", "r2", "f"):
            assert getattr(other, name) == pytest.approx(getattr(whole, name), rel=1e-10)


def test_permuted_sums_add_over_chunks_and_do_not_depend_on_blocks() -> None:
    _, clr, covariates, values = _inputs(60, "exp_num")
    design = permanova_design(covariates, values)
    perms = permutation_indices(60, seed=11, first=0, count=30)
    np.testing.assert_array_equal(np.vstack([permutation_indices(60, 11, 0, 12), permutation_indices(60, 11, 12, 18)]), perms)
    whole = euclidean_permuted(clr, design, perms)
    parts = euclidean_permuted(clr[:, :13], design, perms) + euclidean_permuted(clr[:, 13:], design, perms)
    np.testing.assert_allclose(parts, whole, rtol=1e-12)
    observed = euclidean_observed(clr[:, :13], design) + euclidean_observed(clr[:, 13:], design)
    np.testing.assert_allclose(observed, euclidean_observed(clr, design), rtol=1e-12)
    # The identity permutation reproduces the observed term and covariate sums.
    identity = euclidean_permuted(clr, design, np.arange(60)[None, :])
    np.testing.assert_allclose(identity[0], observed[:2], rtol=1e-12)
    assert np.isnan(permanova_from_sums(design, observed, np.empty((0, 2))).p)


def test_rank_deficient_covariates_give_the_same_result() -> None:
    _, clr, covariates, values = _inputs(60, "exp_bin")
    data = pd.read_csv(REFERENCE / "data_n60.csv")
    all_levels = pd.get_dummies(data["cov2"]).to_numpy(float)  # sums to the intercept
    redundant = np.column_stack([covariates, 2 * covariates[:, 0] + 1, all_levels, np.full(60, 3.0)])
    full = permanova_euclidean(clr, covariates, values, permutations=99, seed=1)
    deficient = permanova_euclidean(clr, redundant, values, permutations=99, seed=1)
    assert (deficient.df, deficient.df_residual, deficient.p) == (full.df, full.df_residual, full.p)
    assert deficient.f == pytest.approx(full.f, rel=1e-10)


def test_constant_or_collinear_exposure_is_refused() -> None:
    _, clr, covariates, _ = _inputs(60, "exp_bin")
    with pytest.raises(ValueError, match="0 degrees of freedom"):
        permanova_euclidean(clr, covariates, np.ones(60), permutations=9)
    with pytest.raises(ValueError, match="0 degrees of freedom"):
        permanova_design(covariates, 3 * covariates[:, 0] - 2)
    with pytest.raises(ValueError, match="residual degrees of freedom"):
        permanova_design(np.random.default_rng(0).normal(size=(5, 3)), np.arange(5.0))


def test_permutations_within_strata_keep_every_sample_in_its_stratum() -> None:
    strata = np.array([2, 0, 2, 1, 0, 2, 5, 1, 2])
    out = permutation_indices(strata.size, seed=4, first=3, count=50, strata=strata)
    assert out.shape == (50, strata.size)
    assert (np.sort(out, axis=1) == np.arange(strata.size)).all()  # each row a permutation
    assert (strata[out] == strata).all()  # within its stratum
    assert out[:, 6].tolist() == [6] * 50  # a stratum of one stays in place
    moved = out[:, [0, 2, 5, 8]]
    assert len({tuple(r) for r in moved.tolist()}) > 10  # the stratum of four is shuffled
    # Permutation i is the same whichever block draws it; free permutations are unchanged by the option.
    np.testing.assert_array_equal(permutation_indices(strata.size, 4, 5, 2, strata), out[2:4])
    np.testing.assert_array_equal(
        permutation_indices(7, 1, 0, 3), [np.random.default_rng(np.random.SeedSequence([1, i])).permutation(7) for i in range(3)]
    )


def test_a_design_constant_within_strata_is_never_moved() -> None:
    rng = np.random.default_rng(8)
    families = np.repeat(np.arange(30), 4)
    exposure = np.repeat(rng.integers(0, 2, 30), 4).astype(float)
    coordinates = rng.normal(size=(120, 6)) + exposure[:, None] * 0.05
    within = permanova_euclidean(coordinates, None, exposure, 49, seed=2, strata=families)
    free = permanova_euclidean(coordinates, None, exposure, 49, seed=2)
    assert within.f == free.f and within.p == 1.0 and free.p < 1.0


STRATA_EXPECTED = pd.read_csv(REFERENCE / "strata_adonis2.csv")


@pytest.mark.parametrize("distance", ["bray", "aitchison"])
def test_the_same_permutations_within_strata_give_vegans_permuted_f_and_p(distance: str) -> None:
    data = pd.read_csv(REFERENCE / "data_n60.csv")
    x, clr, _, exposure = _inputs(60, "exp_bin")
    covariates = data[["cov1", "exp_num"]].to_numpy(float)
    taken = pd.read_csv(REFERENCE / "strata_permutations.csv", header=None).to_numpy() - 1  # vegan: row i takes P[i]
    strata = data["cov2"].to_numpy()
    assert (strata[taken] == strata).all()  # vegan drew them within strata
    # vegan permutes the Gower matrix, G[P, P]; our kernels permute the rows of the bases, Q[pi], and
    # trace((Q[pi])' G Q[pi]) = trace(Q' G[pi^-1, pi^-1] Q): pi is the inverse of P.
    ours = np.argsort(taken, axis=1)
    design = permanova_design(covariates, exposure)
    if distance == "bray":
        gower = gower_centre(_bray(x))
        observed, permuted = distance_observed(gower, design), distance_permuted(gower, design, ours)
    else:
        halves = (clr[:, :13], clr[:, 13:])  # two feature chunks, added as the engine adds store chunks
        observed = sum(euclidean_observed(half, design) for half in halves)
        permuted = sum(euclidean_permuted(half, design, ours) for half in halves)
    result = permanova_from_sums(design, observed, permuted)

    expected = STRATA_EXPECTED.set_index("distance").loc[distance]
    assert (result.df, result.df_residual, result.permutations) == (expected.df, expected.df_residual, 199)
    assert result.sum_of_squares == pytest.approx(expected.ss, rel=1e-8)
    assert result.residual_sum_of_squares == pytest.approx(expected.ss_residual, rel=1e-8)
    assert result.f == pytest.approx(expected.f, rel=1e-8)
    assert result.p == expected.p
    f_vegan = pd.read_csv(REFERENCE / "strata_f_permuted.csv").query("distance == @distance")["f"].to_numpy()
    f_ours = (permuted[:, 0] / design.df) / ((observed[3] - permuted.sum(axis=1)) / design.df_residual)
    np.testing.assert_allclose(f_ours, f_vegan, rtol=1e-8)
