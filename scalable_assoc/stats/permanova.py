"""PERMANOVA of one marginal term: vegan ``adonis2(d ~ covariates + exposure, by = "margin")``.

What vegan computes (read from vegan 2.6-4: ``adonis2``, ``adonis0``,
``anova.ccabymargin``, ``permutest.cca``):

* ``adonis0`` centres the model matrix (no intercept column) and Gower-centres the
  distances, ``G = -1/2 H D^2 H``. Total SS = ``trace(G)``; the fitted SS of a
  model with orthonormal basis ``Q`` (of the centred columns) is ``trace(Q' G Q)``.
* ``by = "margin"`` fits the full model and, per term, the model without that
  term. The term's SS is the difference of the two fitted SS, its df the
  difference of the ranks; ``F = (SS_term / df) / (SS_residual_full / df_residual)``
  with ``df_residual = n - 1 - rank(full)``; ``R2 = SS_term / total SS``.
* Permutations: both fits go through ``permutest.cca`` with its default
  ``model = "reduced"``. For ``adonis2`` there is no ``Condition()`` term, so the
  "reduced" (partial) data are the *whole* Gower matrix: vegan permutes the rows
  and columns of ``G`` itself (the raw responses, Manly's scheme), **not** the
  residuals of the covariates-only model (Freedman-Lane would need the
  covariates in ``Condition()``). For each permutation it refits both models and
  forms ``F* = ((fit_full* - fit_reduced*) / df) / ((total - fit_full*) / df_residual)``;
  ``p = (1 + #{F* >= F - EPS}) / (1 + permutations)``, ``EPS = sqrt(double eps)``.

We mirror that exactly. With ``Q_z`` an orthonormal basis of the centred
covariates and ``Q_x`` one of the centred exposure columns with the covariates
projected out, the full basis is ``[Q_z, Q_x]``, the term SS is
``trace(Q_x' G Q_x)`` and the reduced fitted SS ``trace(Q_z' G Q_z)``. Permuting
the rows and columns of ``G`` equals permuting the rows of the bases instead
(``trace(Q' P G P' Q)``), so a block of ``B`` permutations stacks ``B`` row-permuted
bases side by side and costs one matrix product.

Two data paths share this algebra (:class:`PermanovaDesign`):

* Euclidean coordinates ``Y`` (Aitchison distance = Euclidean distance between
  CLR rows), never forming the ``n x n`` matrix: with ``G = Yc Yc'`` every trace
  is a squared Frobenius norm ``||Q' Yc||^2``, which adds over feature columns.
  :func:`euclidean_observed` and :func:`euclidean_permuted` take one chunk of
  features and return partial sums to be added over chunks;
  :func:`permanova_from_sums` turns the totals into the result.
* A distance matrix (e.g. Bray-Curtis from :func:`bray_curtis_rows`):
  :func:`gower_centre`, then :func:`distance_observed` / :func:`distance_permuted`
  give the same sums as traces (memory ``8 n^2`` bytes per matrix:
  :func:`distance_matrix_bytes`).

Permutation ``i`` is drawn from its own generator (:func:`permutation_indices`),
so results do not depend on how permutations are split into blocks or workers.

Pure numpy/scipy: no Dask, no files, no pandas.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: vegan's tolerance in ``F* >= F - EPS`` (``sqrt(.Machine$double.eps)``).
F_TOLERANCE = float(np.sqrt(np.finfo(np.float64).eps))

#: Relative rank tolerance: a centred, unit-norm column whose part not explained by the
#: columns before it has norm below this is dropped (R's ``qr()`` default, used by vegan).
RANK_TOLERANCE = 1e-7

#: Size (bytes) of the stacked permuted bases a convenience function builds per block.
_STACK_BYTES = 64 * 2**20

#: Columns of :func:`euclidean_observed` / :func:`distance_observed`.
OBSERVED_SUMS: tuple[str, ...] = ("term", "covariates", "residual", "total")
#: Columns of :func:`euclidean_permuted` / :func:`distance_permuted`.
PERMUTED_SUMS: tuple[str, ...] = ("term", "covariates")


@dataclass(frozen=True)
class PermanovaDesign:
    """The orthonormal bases of a covariates + exposure design (``n`` samples).

    Attributes
    ----------
    covariate_basis:
        ``(n, r_z)`` orthonormal basis of the centred covariates (the intercept is
        implicit: every column is orthogonal to the ones vector).
    term_basis:
        ``(n, df)`` orthonormal basis of the centred exposure columns with the
        covariates projected out; ``df >= 1``.
    df_residual:
        ``n - 1 - r_z - df``.
    """

    covariate_basis: np.ndarray
    term_basis: np.ndarray
    df_residual: int

    @property
    def n(self) -> int:
        """Number of samples."""
        return int(self.term_basis.shape[0])

    @property
    def df(self) -> int:
        """Degrees of freedom of the exposure term (rank added to the covariates)."""
        return int(self.term_basis.shape[1])

    @property
    def covariate_rank(self) -> int:
        """Rank of the centred covariates."""
        return int(self.covariate_basis.shape[1])

    @property
    def bases(self) -> np.ndarray:
        """``(n, df + r_z)``: ``[term_basis, covariate_basis]``."""
        return np.hstack([self.term_basis, self.covariate_basis])


@dataclass(frozen=True)
class PermanovaResult:
    """The exposure's marginal term, as a row of vegan's ``adonis2(..., by = "margin")``.

    ``r2`` is ``sum_of_squares / total_sum_of_squares``; ``p`` is NaN when
    ``permutations`` is 0.
    """

    n: int
    df: int
    df_residual: int
    sum_of_squares: float
    residual_sum_of_squares: float
    total_sum_of_squares: float
    r2: float
    f: float
    p: float
    permutations: int


def _as_columns(values: np.ndarray | None, n: int, name: str) -> np.ndarray:
    if values is None:
        return np.empty((n, 0))
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or values.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n}, k), got {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} must be finite; drop samples with missing values first")
    return values


def _orthonormal_basis(columns: np.ndarray, reference_norms: np.ndarray) -> np.ndarray:
    """Orthonormal basis ``(n, rank)`` of ``columns`` (``(n, k)``) by pivoted QR.

    A column counts as independent when the part of it not explained by the
    columns pivoted before it keeps more than :data:`RANK_TOLERANCE` of
    ``reference_norms`` (its norm before any projection).
    """
    n, k = columns.shape
    if k == 0:
        return np.empty((n, 0))
    scaled = columns / np.where(reference_norms > 0, reference_norms, 1.0)
    scaled[:, ~(reference_norms > 0)] = 0.0
    # Imported here, once per process: the run's client imports this module (engine.permanova) for every plan, and
    # SciPy's linear algebra (0.15 s of CPU) only for a plan asking for PERMANOVA.
    import scipy.linalg

    q_factor, r_factor, _ = scipy.linalg.qr(scaled, mode="economic", pivoting=True)
    rank = int(np.sum(np.abs(np.diag(r_factor)) > RANK_TOLERANCE))
    return np.ascontiguousarray(q_factor[:, :rank])


def permanova_design(covariates: np.ndarray | None, exposure: np.ndarray) -> PermanovaDesign:
    """Factorise ``~ covariates + exposure`` once for every chunk and permutation.

    Parameters
    ----------
    covariates:
        ``(n, k)`` covariate values without an intercept column (``k`` may be 0,
        or None); factors as dummy columns. Redundant columns are dropped by the
        rank check (pivoted QR, tolerance :data:`RANK_TOLERANCE`).
    exposure:
        ``(n,)`` or ``(n, q)``: a numeric exposure or the dummy columns of a factor.

    Raises
    ------
    ValueError
        When the exposure adds nothing beyond the covariates (constant, or a
        linear combination of them: df 0), or no residual df is left.
    """
    exposure = np.asarray(exposure, dtype=np.float64)
    n = exposure.shape[0]
    exposure = _as_columns(exposure, n, "exposure")
    covariates = _as_columns(covariates, n, "covariates")
    if exposure.shape[1] == 0:
        raise ValueError("exposure has no columns")
    centred_covariates = covariates - covariates.mean(axis=0)
    covariate_basis = _orthonormal_basis(centred_covariates, np.linalg.norm(centred_covariates, axis=0))
    centred_exposure = exposure - exposure.mean(axis=0)
    exposure_norms = np.linalg.norm(centred_exposure, axis=0)
    residual = centred_exposure
    for _ in range(2):  # project twice: the second pass removes the first's rounding
        residual = residual - covariate_basis @ (covariate_basis.T @ residual)
    term_basis = _orthonormal_basis(residual, exposure_norms)
    if term_basis.shape[1] == 0:
        raise ValueError("the exposure is constant or a linear combination of the covariates: its marginal term has 0 degrees of freedom")
    df_residual = n - 1 - covariate_basis.shape[1] - term_basis.shape[1]
    if df_residual < 1:
        raise ValueError(f"no residual degrees of freedom: {n} samples for a model of rank {n - 1 - df_residual} plus the intercept")
    return PermanovaDesign(covariate_basis=covariate_basis, term_basis=term_basis, df_residual=df_residual)


def permutation_indices(n: int, seed: int, first: int, count: int, strata: np.ndarray | None = None) -> np.ndarray:
    """Permutations number ``first .. first + count - 1`` of ``n`` samples, ``(count, n)`` int64.

    Permutation ``i`` comes from ``np.random.default_rng(np.random.SeedSequence([seed, i]))``,
    so it is the same whichever block or worker draws it. With ``strata`` (``(n,)``
    integer codes, e.g. families) samples are permuted only within their stratum, as
    vegan's ``how(blocks = strata)`` (``adonis2(..., strata = )``) does: related
    participants are not exchangeable with the others, only among themselves. A
    stratum of one sample keeps it in place.
    """
    if n < 1 or first < 0 or count < 0 or seed < 0:
        raise ValueError("n must be positive and seed, first, count non-negative")
    if strata is not None:
        strata = np.asarray(strata)
        if strata.shape != (n,):
            raise ValueError(f"strata must have shape ({n},), got {strata.shape}")
        grouped = np.argsort(strata, kind="stable")  # each stratum's samples, in order
    out = np.empty((count, n), dtype=np.int64)
    for row, i in enumerate(range(first, first + count)):
        rng = np.random.default_rng(np.random.SeedSequence([seed, i]))
        if strata is None:
            out[row] = rng.permutation(n)
        else:
            # Sorting by (stratum, random key) shuffles each stratum's samples among its own positions.
            out[row, grouped] = np.lexsort((rng.random(n), strata))
    return out


def _stacked_bases(design: PermanovaDesign, permutations: np.ndarray) -> np.ndarray:
    """``(n, B * m)``: for each permutation ``pi`` the row-permuted bases ``[Q_x, Q_z][pi]``, side by side."""
    permutations = np.asarray(permutations)
    if permutations.ndim != 2 or permutations.shape[1] != design.n:
        raise ValueError(f"permutations must have shape (B, {design.n}), got {permutations.shape}")
    bases = design.bases
    stacked = bases[permutations]  # (B, n, m)
    return np.ascontiguousarray(stacked.transpose(1, 0, 2).reshape(design.n, -1))


def _split_columns(squared: np.ndarray, design: PermanovaDesign, count: int) -> np.ndarray:
    """``(B * m,)`` per-column sums of squares -> ``(B, 2)``: term and covariate parts."""
    per_column = squared.reshape(count, design.df + design.covariate_rank)
    return np.stack([per_column[:, : design.df].sum(axis=1), per_column[:, design.df :].sum(axis=1)], axis=1)


def _centred_coordinates(coordinates: np.ndarray, n: int) -> np.ndarray:
    coordinates = np.asarray(coordinates, dtype=np.float64)
    if coordinates.ndim != 2 or coordinates.shape[0] != n:
        raise ValueError(f"coordinates must have shape ({n}, p), got {coordinates.shape}")
    if not np.all(np.isfinite(coordinates)):
        raise ValueError("coordinates must be finite")
    return coordinates - coordinates.mean(axis=0)


def euclidean_observed(coordinates: np.ndarray, design: PermanovaDesign) -> np.ndarray:
    """Observed sums of squares of one chunk of features, to be added over chunks.

    Parameters
    ----------
    coordinates:
        ``(n, p_chunk)`` Euclidean coordinates (e.g. CLR values) of some features.
    design:
        From :func:`permanova_design`.

    Returns
    -------
    sums:
        ``(4,)`` columns :data:`OBSERVED_SUMS`: ``||Q_x' Yc||^2``,
        ``||Q_z' Yc||^2``, the full model's residual ``||Yc - Q Q' Yc||^2``
        (explicit, not by subtraction) and ``||Yc||^2``, ``Yc`` the column-centred chunk.
    """
    centred = _centred_coordinates(coordinates, design.n)
    bases = design.bases
    projections = bases.T @ centred  # (m, p)
    residual = centred - bases @ projections
    residual = residual - bases @ (bases.T @ residual)
    squared = np.einsum("ij,ij->i", projections, projections)
    return np.array(
        [
            squared[: design.df].sum(),
            squared[design.df :].sum(),
            np.einsum("ij,ij->", residual, residual),
            np.einsum("ij,ij->", centred, centred),
        ]
    )


def euclidean_permuted(coordinates: np.ndarray, design: PermanovaDesign, permutations: np.ndarray) -> np.ndarray:
    """Permuted sums of squares of one chunk of features, to be added over chunks.

    Parameters
    ----------
    coordinates:
        ``(n, p_chunk)`` Euclidean coordinates.
    design:
        From :func:`permanova_design`.
    permutations:
        ``(B, n)`` integer permutations (:func:`permutation_indices`).

    Returns
    -------
    sums:
        ``(B, 2)`` columns :data:`PERMUTED_SUMS`: ``||Q_x[pi]' Yc||^2`` and
        ``||Q_z[pi]' Yc||^2`` per permutation ``pi`` (one matrix product with the
        stacked ``(n, B * m)`` bases; memory ``8 n B m`` bytes plus ``8 B m p_chunk``).
    """
    centred = _centred_coordinates(coordinates, design.n)
    stacked = _stacked_bases(design, permutations)
    products = stacked.T @ centred  # (B * m, p)
    return _split_columns(np.einsum("ij,ij->i", products, products), design, len(permutations))


def distance_matrix_bytes(n: int) -> int:
    """Memory of one ``n x n`` float64 matrix (the distances, and again their Gower centring)."""
    return 8 * n * n


def bray_curtis_rows(x_rows: np.ndarray, x_all: np.ndarray) -> np.ndarray:
    """A block of rows of the Bray-Curtis dissimilarity matrix (vegan ``vegdist(x, "bray")``).

    Parameters
    ----------
    x_rows:
        ``(b, p)`` raw abundances of the samples whose rows are wanted.
    x_all:
        ``(n, p)`` raw abundances of all samples (non-negative, no NaN).

    Returns
    -------
    distances:
        ``(b, n)``: ``sum |x_i - x_j| / sum (x_i + x_j)``; NaN where both samples are all zero.
        Temporary memory about ``8 b' n p`` bytes for sub-blocks of ``b'`` rows (capped near 64 MB).
    """
    x_rows = np.asarray(x_rows, dtype=np.float64)
    x_all = np.asarray(x_all, dtype=np.float64)
    if x_rows.ndim != 2 or x_all.ndim != 2 or x_rows.shape[1] != x_all.shape[1]:
        raise ValueError(f"x_rows (b, p) and x_all (n, p) must share p, got {x_rows.shape} and {x_all.shape}")
    if not (np.all(np.isfinite(x_rows)) and np.all(np.isfinite(x_all))):
        raise ValueError("abundances must be finite (no NaN)")
    if np.any(x_rows < 0) or np.any(x_all < 0):
        raise ValueError("abundances must be non-negative")
    b, n, p = x_rows.shape[0], x_all.shape[0], x_all.shape[1]
    totals_all = x_all.sum(axis=1)
    out = np.empty((b, n))
    step = max(1, _STACK_BYTES // (8 * max(n * p, 1)))
    for start in range(0, b, step):
        rows = x_rows[start : start + step]
        absolute = np.abs(rows[:, None, :] - x_all[None, :, :]).sum(axis=2)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + step] = absolute / (rows.sum(axis=1)[:, None] + totals_all[None, :])
    return out


def gower_centre(distances: np.ndarray) -> np.ndarray:
    """``G = -1/2 H D^2 H`` of an ``(n, n)`` symmetric distance matrix (vegan's ``initDBRDA``)."""
    distances = np.asarray(distances, dtype=np.float64)
    if distances.ndim != 2 or distances.shape[0] != distances.shape[1]:
        raise ValueError(f"distances must be square, got {distances.shape}")
    if not np.all(np.isfinite(distances)):
        raise ValueError("distances must be finite")
    a = -0.5 * distances * distances
    row_means = a.mean(axis=1)
    col_means = a.mean(axis=0)
    return a - row_means[:, None] - col_means[None, :] + a.mean()


def distance_observed(gower: np.ndarray, design: PermanovaDesign) -> np.ndarray:
    """Observed sums of squares from a Gower-centred matrix ``(n, n)``: ``(4,)`` :data:`OBSERVED_SUMS`.

    Traces ``trace(Q_x' G Q_x)``, ``trace(Q_z' G Q_z)``, ``trace(G)`` minus both, and ``trace(G)``.
    """
    bases = design.bases
    squared = np.einsum("ij,ij->j", bases, gower @ bases)
    term, covariates, total = squared[: design.df].sum(), squared[design.df :].sum(), float(np.trace(gower))
    return np.array([term, covariates, total - term - covariates, total])


def distance_permuted(gower: np.ndarray, design: PermanovaDesign, permutations: np.ndarray) -> np.ndarray:
    """``(B, 2)`` :data:`PERMUTED_SUMS` from a Gower-centred matrix: ``trace(Q[pi]' G Q[pi])`` per permutation.

    One ``(n, n) x (n, B * m)`` product per block of permutations.
    """
    stacked = _stacked_bases(design, permutations)
    return _split_columns(np.einsum("ij,ij->j", stacked, gower @ stacked), design, len(permutations))


def permanova_from_sums(design: PermanovaDesign, observed: np.ndarray, permuted: np.ndarray) -> PermanovaResult:
    """The marginal term's statistics from sums added over feature chunks.

    Parameters
    ----------
    design:
        From :func:`permanova_design`.
    observed:
        ``(4,)`` :data:`OBSERVED_SUMS` (summed over chunks).
    permuted:
        ``(P, 2)`` :data:`PERMUTED_SUMS` (summed over chunks; permutation blocks
        concatenated in any order). ``P = 0`` gives ``p = NaN``.
    """
    observed = np.asarray(observed, dtype=np.float64)
    permuted = np.asarray(permuted, dtype=np.float64).reshape(-1, 2)
    term, _, residual, total = (float(v) for v in observed)
    denominator = residual / design.df_residual
    f = (term / design.df) / denominator if denominator > 0 else np.inf
    count = permuted.shape[0]
    if count:
        permuted_residual = total - permuted[:, 0] - permuted[:, 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            f_permuted = (permuted[:, 0] / design.df) / (permuted_residual / design.df_residual)
        p = float((1 + np.sum(f_permuted >= f - F_TOLERANCE)) / (1 + count))
    else:
        p = np.nan
    return PermanovaResult(
        n=design.n,
        df=design.df,
        df_residual=design.df_residual,
        sum_of_squares=term,
        residual_sum_of_squares=residual,
        total_sum_of_squares=total,
        r2=term / total if total > 0 else np.nan,
        f=float(f),
        p=p,
        permutations=count,
    )


def _permutation_block(design: PermanovaDesign, permutation_block: int | None) -> int:
    if permutation_block is not None:
        if permutation_block < 1:
            raise ValueError("permutation_block must be positive")
        return permutation_block
    return max(1, _STACK_BYTES // (8 * design.n * (design.df + design.covariate_rank)))


def permanova_euclidean(
    coordinates: np.ndarray,
    covariates: np.ndarray | None,
    exposure: np.ndarray,
    permutations: int = 999,
    seed: int = 0,
    feature_block: int | None = None,
    permutation_block: int | None = None,
    strata: np.ndarray | None = None,
) -> PermanovaResult:
    """Marginal PERMANOVA on Euclidean coordinates ``(n, p)`` (Aitchison: CLR values), in memory.

    The reference composition of the chunked kernels (the engine runs the same
    calls per store chunk): features in blocks of ``feature_block`` columns
    (all at once by default), permutations in blocks of ``permutation_block``,
    within ``strata`` (``(n,)`` cluster codes) when given (:func:`permutation_indices`).
    Never forms an ``n x n`` matrix.
    """
    design = permanova_design(covariates, exposure)
    coordinates = np.asarray(coordinates, dtype=np.float64)
    p = coordinates.shape[1] if coordinates.ndim == 2 else 0
    step = feature_block or max(p, 1)
    chunks = [coordinates[:, start : start + step] for start in range(0, p, step)]
    observed = sum((euclidean_observed(chunk, design) for chunk in chunks), np.zeros(len(OBSERVED_SUMS)))
    block = _permutation_block(design, permutation_block)
    permuted = np.zeros((permutations, 2))
    for first in range(0, permutations, block):
        count = min(block, permutations - first)
        indices = permutation_indices(design.n, seed, first, count, strata)
        for chunk in chunks:
            permuted[first : first + count] += euclidean_permuted(chunk, design, indices)
    return permanova_from_sums(design, observed, permuted)


def permanova_distance(
    distances: np.ndarray,
    covariates: np.ndarray | None,
    exposure: np.ndarray,
    permutations: int = 999,
    seed: int = 0,
    permutation_block: int | None = None,
    strata: np.ndarray | None = None,
) -> PermanovaResult:
    """Marginal PERMANOVA of an ``(n, n)`` distance matrix (memory ``2 * distance_matrix_bytes(n)``).

    Same statistics and permutations as :func:`permanova_euclidean` (within ``strata``
    when given): on ``distances = dist(Y)`` both give the same result.
    """
    design = permanova_design(covariates, exposure)
    gower = gower_centre(distances)
    if gower.shape[0] != design.n:
        raise ValueError(f"distances are {gower.shape[0]} x {gower.shape[0]} but the design has {design.n} samples")
    observed = distance_observed(gower, design)
    block = _permutation_block(design, permutation_block)
    permuted = np.zeros((permutations, 2))
    for first in range(0, permutations, block):
        count = min(block, permutations - first)
        permuted[first : first + count] = distance_permuted(gower, design, permutation_indices(design.n, seed, first, count, strata))
    return permanova_from_sums(design, observed, permuted)
