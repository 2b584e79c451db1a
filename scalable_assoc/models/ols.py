"""Batched ordinary least squares: one exposure slope per feature, many features at once.

Model for every feature ``j`` and exposure ``e`` of one covariate design::

    y_j = Z gamma_j + x_e beta_ej + error,    error ~ N(0, sigma_j^2)

over the design's participants, minus those whose value of feature ``j`` is missing.

Method. Let ``Q`` be an orthonormal basis of the covariates (from the design's
QR) and ``b_e = x_r / s_e`` the exposure with the covariates projected out,
normalised (``s_e = |x_r|``). ``B = [Q, b_e]`` is an orthonormal basis of the
full design, so for a feature with no missing value the normal equations are
the identity (Frisch-Waugh-Lovell): ``beta = b_e'y / s_e`` and
``RSS = y'y - |B'y|^2``. All of ``B'y`` for every exposure and feature of a block
is ONE matrix product. A feature with missing values uses the same basis
restricted to its present rows: its Gram matrix is ``I - D_j`` where ``D_j``
sums ``b_i b_i'`` over its missing rows (a sparse product over the missing
cells only), solved as a stack of small well-conditioned systems.

The RSS identity loses digits when the model explains nearly all of ``y'y``;
those features (RSS below 1e-5 of ``y'y``) get their residuals computed
explicitly. Degrees of freedom use the design's rank, never an assumed count.

Pure numpy/scipy: no Dask, no files, no pandas.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.linalg
import scipy.sparse

from scalable_assoc.models.design import CovariateDesign, project_out, standardise_columns
from scalable_assoc.models.fits import FitStatus, SlopeFits, two_sided_p

#: Smallest eigenvalue of a feature's Gram matrix in the orthonormal basis below
#: which its design counts as singular (design condition number above ~1e5).
_GRAM_SINGULAR = 1e-10
#: Exposure residual norm, relative to the centred exposure's norm, below which
#: the exposure counts as explained by the covariates.
_EXPOSURE_COLLINEAR = 1e-8
#: RSS below this fraction of y'y: recompute residuals explicitly (identity unsafe).
_RSS_IDENTITY_FLOOR = 1e-5
#: Missing cells above this fraction of (participants x masked features): Gram matrices
#: from the present rows by one dense product rather than a sparse sum over missing cells.
_SPARSE_MISSING = 0.02
#: Centred sum of squares below this fraction of y'y: the feature is constant.
_CONSTANT = 1e-12
#: Reference distributions of cluster-robust p-values: t with G - 1 degrees of freedom, or the normal.
CLUSTER_REFERENCES = ("t", "normal")


@dataclass(frozen=True)
class PreparedBlock:
    """A block of transformed features, prepared once and shared by every design of a task.

    ``values`` is ``(N, m)``: each column centred by its mean over present values
    (a shift the intercept absorbs; it keeps ``y'y`` close to the centred sum of
    squares), zero where missing; ``missing`` marks the missing cells. Derived
    views are computed on first use only, since each path needs different ones:
    ``squares`` (``values**2``), the missing cells listed as
    ``(missing_rows, missing_columns)``, and ``present`` (1.0 / 0.0 per cell) for
    blocks with many missing cells (more than :data:`_SPARSE_MISSING`, as for
    lm_nonzero), where counts and Gram matrices are matrix products; None otherwise.
    """

    values: np.ndarray
    missing: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """``(N, m)``: all participants of the layer x features of the block."""
        return self.values.shape  # type: ignore[return-value]

    @cached_property
    def squares(self) -> np.ndarray:
        """``(N, m)`` squared values."""
        return np.square(self.values)

    @cached_property
    def _missing_cells(self) -> tuple[np.ndarray, np.ndarray]:
        return np.nonzero(self.missing)  # type: ignore[return-value]

    @property
    def missing_rows(self) -> np.ndarray:
        """Row of every missing cell."""
        return self._missing_cells[0]

    @property
    def missing_columns(self) -> np.ndarray:
        """Column of every missing cell."""
        return self._missing_cells[1]

    @cached_property
    def n_missing(self) -> int:
        """Number of missing cells."""
        return int(np.count_nonzero(self.missing))

    @cached_property
    def present(self) -> np.ndarray | None:
        """1.0 where present, 0.0 where missing, for blocks with many missing cells; else None."""
        if self.n_missing <= _SPARSE_MISSING * self.values.size:
            return None
        return (~self.missing).astype(np.float64)


def prepare_block(block: np.ndarray) -> PreparedBlock:
    """Centre and zero-fill a ``(N, m)`` block (NaN = missing)."""
    block = np.asarray(block, dtype=np.float64)
    missing = np.isnan(block)
    values = np.where(missing, 0.0, block)
    counts = block.shape[0] - missing.sum(axis=0)
    means = np.divide(values.sum(axis=0), counts, out=np.zeros(block.shape[1]), where=counts > 0)
    values -= means
    values[missing] = 0.0
    return PreparedBlock(values, missing)


def _padded(rows: np.ndarray, n_total: int, columns: np.ndarray) -> np.ndarray:
    """``columns`` (``(len(rows), c)``) placed at ``rows`` of an ``(n_total, c)`` zero matrix."""
    out = np.zeros((n_total, columns.shape[1]))
    out[rows] = columns
    return out


def fit_exposure_slopes(
    design: CovariateDesign,
    exposures: np.ndarray,
    binary: np.ndarray,
    block: PreparedBlock | np.ndarray,
    rows: np.ndarray | None = None,
    clusters: np.ndarray | None = None,
    alias: bool = True,
    cluster_reference: str = "t",
) -> SlopeFits:
    """Fit ``feature ~ covariates + exposure`` for every exposure and feature of a block.

    Parameters
    ----------
    design:
        The factorised covariate design of its ``n`` participants.
    exposures:
        ``(k, n)`` exposure values over the design's participants (0/1 for
        binary exposures), no missing values.
    binary:
        ``(k,)`` bool, whether each exposure is a case/control indicator.
    block:
        ``(N, m)`` transformed feature values of all ``N`` participants of the
        layer (NaN marks a missing value, which leaves that participant out for
        that feature only), or the same already passed through :func:`prepare_block`.
    rows:
        ``(n,)`` positions of the design's participants among the ``N`` rows;
        None when the block holds exactly the design's participants.
    clusters:
        ``(n,)`` integer cluster codes (families, households) of the design's
        participants, or None. With clusters, ``se`` is cluster-robust (CR1:
        the sandwich times ``G/(G-1) * (n-1)/(n-p)`` over the ``G`` clusters
        with a value of the feature, as statsmodels ``OLS.fit(cov_type="cluster")``
        and R ``sandwich::vcovCL(type="HC1")`` compute it), ``t`` is beta / se,
        and ``p`` comes from the reference distribution ``cluster_reference``.
    alias:
        A covariate constant (or collinear) among one feature's participants is
        aliased as R's ``lm`` does (see :func:`_aliased_solve`); False gives such
        features the status ``FEATURE_RANK_DEFICIENT`` instead (for callers whose
        own solve needs a full-rank design, as the mixed model).
    cluster_reference:
        With clusters: ``"t"``, Student's t with ``G - 1`` degrees of freedom
        (as Stata reports cluster-robust fits), or ``"normal"`` (as statsmodels
        does). Without clusters ``p`` is always from t with ``n - rank`` degrees of freedom.
    """
    prepared = block if isinstance(block, PreparedBlock) else prepare_block(block)
    rows = np.arange(prepared.shape[0]) if rows is None else rows
    return fit_design_batch([design], [rows], [exposures], [binary], prepared, [clusters], alias=alias, cluster_reference=cluster_reference)[0]


@dataclass(frozen=True)
class _Basis:
    """``[1 | Q | b_1..b_k]`` of one design, padded to the block's ``N`` rows, with exposure scales."""

    padded: np.ndarray  # (N, 1 + rank + k)
    scales: np.ndarray  # (k,) |x_r|
    collinear: np.ndarray  # (k,) bool


def _basis(design: CovariateDesign, rows: np.ndarray, exposures: np.ndarray, n_total: int) -> _Basis:
    k = exposures.shape[0]
    if design.problem is not None:
        return _Basis(np.zeros((n_total, 0)), np.ones(k), np.zeros(k, dtype=bool))
    # Orthonormal exposure directions b_e = x_r / s_e, one per exposure.
    exposure_residuals = project_out(design.q, exposures.T)  # (n, k)
    scales = np.linalg.norm(exposure_residuals, axis=0)
    centred_norms = np.linalg.norm(exposures - exposures.mean(axis=1, keepdims=True), axis=1)
    collinear = scales <= _EXPOSURE_COLLINEAR * np.maximum(centred_norms, np.finfo(float).tiny)
    directions = exposure_residuals / np.where(collinear, 1.0, scales)
    basis = np.hstack([np.ones((rows.size, 1)), design.q, directions])
    return _Basis(_padded(rows, n_total, basis), scales, collinear)


def fit_design_batch(
    designs: list[CovariateDesign],
    rows: list[np.ndarray],
    exposures: list[np.ndarray],
    binary: list[np.ndarray],
    block: PreparedBlock,
    clusters: list[np.ndarray | None] | None = None,
    alias: bool = True,
    cluster_reference: str = "t",
) -> list[SlopeFits]:
    """:func:`fit_exposure_slopes` for several designs over one block.

    The products with the block, the memory-bound part, are done for all
    designs together: the block is read twice in all, not twice per design.
    Arguments are per design, as in :func:`fit_exposure_slopes`.
    """
    if cluster_reference not in CLUSTER_REFERENCES:
        raise ValueError(f"cluster_reference must be one of {', '.join(CLUSTER_REFERENCES)}, got {cluster_reference!r}")
    n_total = block.shape[0]
    rows = [np.asarray(r) for r in rows]
    exposures = [np.atleast_2d(np.asarray(e, dtype=np.float64)) for e in exposures]
    bases = [_basis(d, r, e, n_total) for d, r, e in zip(designs, rows, exposures, strict=True)]
    products = _grouped_products(designs, rows, exposures, bases, block)
    direct = [index for index, found in enumerate(products) if found is None]
    for index, found in zip(direct, _direct_products([rows[i] for i in direct], [exposures[i] for i in direct], [bases[i] for i in direct], block), strict=True):
        products[index] = found
    design_clusters = clusters if clusters is not None else [None] * len(designs)
    results = []
    for design, design_rows, design_exposures, design_binary, basis, cluster_codes, found in zip(
        designs, rows, exposures, binary, bases, design_clusters, products, strict=True
    ):
        assert found is not None
        results.append(
            _fit_one_design(
                design, design_rows, design_exposures, np.asarray(design_binary), block, basis, found, cluster_codes, alias, cluster_reference
            )
        )
    return results


def _direct_products(rows: list[np.ndarray], exposures: list[np.ndarray], bases: list[_Basis], block: PreparedBlock) -> list[_BlockProducts]:
    """Block products of designs that share nothing: one product with the block for all of them together."""
    if not rows:
        return []
    n_total, m = block.shape
    stacked = np.hstack([basis.padded for basis in bases])
    projections = stacked.T @ block.values
    # y'y over each design's rows (column 0 of a basis is the design's row indicator).
    weights = np.stack([basis.padded[:, 0] if basis.padded.shape[1] else np.zeros(n_total) for basis in bases], axis=1)
    sum_squares = weights.T @ block.squares
    counts: list[np.ndarray | None] = [None] * len(rows)
    if block.present is not None:
        # Present values among each design's rows, cases and controls (the missing-cell list is cheaper otherwise).
        indicators = []
        for design_rows, design_exposures in zip(rows, exposures, strict=True):
            k = design_exposures.shape[0]
            columns = np.zeros((n_total, 1 + 2 * k))
            columns[design_rows, 0] = 1.0
            columns[design_rows, 1 : 1 + k] = (design_exposures == 1).T
            columns[design_rows, 1 + k :] = (design_exposures == 0).T
            indicators.append(columns)
        all_counts = np.rint(np.hstack(indicators).T @ block.present).astype(np.int64)
        sizes = np.cumsum([0] + [c.shape[1] for c in indicators])
        counts = [all_counts[start:stop] for start, stop in zip(sizes[:-1], sizes[1:], strict=True)]
    widths = np.cumsum([0] + [basis.padded.shape[1] for basis in bases])
    return [
        _BlockProducts(projections[start:stop], sum_squares[index], counts[index])
        for index, (start, stop) in enumerate(zip(widths[:-1], widths[1:], strict=True))
    ]


def _change_of_basis(
    design: CovariateDesign, group_means: np.ndarray, group_scales: np.ndarray, exposures: np.ndarray, basis: _Basis
) -> np.ndarray:
    """``T`` with ``[Q, b_1..b_k] = [z, x_1..x_k] @ T`` on the design's rows, in closed form.

    ``z`` are the covariates standardised over the whole group (``group_means``,
    ``group_scales``); the design standardised them over its own rows and took a
    pivoted QR of them, ``covariates[:, pivot] / norms[pivot] = Q R``; and
    ``b_e = (x_e - Q Q'x_e) / s_e`` (``s_e`` = 1 for a collinear exposure, as in
    :func:`_basis`). Composing these maps needs one small triangular solve.
    """
    assert design.r_factor is not None and design.pivot is not None and design.column_norms is not None
    assert design.column_means is not None and design.column_scales is not None
    width_z = len(design.names)
    k = exposures.shape[0]
    # The design's standardised covariates as a linear map of the group's: covariates = z @ affine.
    affine = np.eye(width_z)
    affine[np.arange(1, width_z), np.arange(1, width_z)] = group_scales[1:] / design.column_scales[1:]
    affine[0, 1:] = (group_means[1:] - design.column_means[1:]) / design.column_scales[1:]
    scaled = affine[:, design.pivot] / design.column_norms[design.pivot]
    covariate_change = scipy.linalg.solve_triangular(design.r_factor, scaled.T, trans="T").T  # Q = z @ this
    change = np.zeros((width_z + k, width_z + k))
    change[:width_z, :width_z] = covariate_change
    divisors = np.where(basis.collinear, 1.0, basis.scales)
    along_q = design.q.T @ exposures.T  # (rank, k): Q'x_e
    change[:width_z, width_z:] = -(covariate_change @ along_q) / divisors
    change[np.arange(width_z, width_z + k), np.arange(width_z, width_z + k)] = 1.0 / divisors
    return change


@dataclass(frozen=True)
class _BlockProducts:
    """One design's products with the block, which the rest of its fit works from.

    ``projections`` ``(1 + w, m)``: the design's ``[1 | Q | b]' Y``;
    ``sum_squares`` ``(m,)``: ``y'y`` over its rows. For blocks with many
    missing cells also ``counts`` ``(1 + 2k, m)``: present values among the
    design's rows, cases and controls; and, for designs that share a covariate
    set, ``present_gram`` ``(m, w, w)``: each feature's Gram matrix over its
    present rows in the design's basis ``[Q, b]`` (else None: built per design).
    """

    projections: np.ndarray
    sum_squares: np.ndarray
    counts: np.ndarray | None = None
    present_gram: np.ndarray | None = None


def _grouped_products(
    designs: list[CovariateDesign], rows: list[np.ndarray], exposures: list[np.ndarray], bases: list[_Basis], block: PreparedBlock
) -> list[_BlockProducts | None]:
    """Block products for designs that share a covariate set, built once per row atom; None for the others.

    Only for blocks with many missing cells (lm_nonzero), where each feature's
    Gram matrix over its present rows is most of the work. Designs with the same
    covariate columns (typically one adjustment set under every exposure)
    differ only in which participants they hold, so the rows are split into
    atoms of identical design membership; each atom's covariate Gram matrices,
    covariate products with the block and sums of squares are built once, a
    design's are the sum of its atoms', and only the exposure's terms take a
    product per design, over the rows where the exposure is non-zero. A change
    of basis ``T`` (``[Q, b] = [z, x] T``) turns them into the design's
    orthonormal basis, the form the solver uses.
    """
    result: list[_BlockProducts | None] = [None] * len(designs)
    present = block.present
    if present is None:
        return result
    groups: dict[tuple[str, ...], list[int]] = {}
    for index, design in enumerate(designs):
        if design.problem is None:
            groups.setdefault(design.names, []).append(index)
    n_total, m = present.shape
    shared = [index for members in groups.values() if 2 <= len(members) for index in members]
    if not shared or len(designs) > 62:
        return result
    # Atoms: rows of identical membership across all designs of the call. One reordering of
    # the block makes every atom a contiguous slice (no gather per atom and group).
    membership = np.zeros(n_total, dtype=np.int64)
    for index in shared:
        membership[rows[index]] |= 1 << index
    signatures, atom_of_row = np.unique(membership, return_inverse=True)
    order = np.argsort(atom_of_row, kind="stable")
    bounds = np.searchsorted(atom_of_row[order], np.arange(signatures.size + 1))
    present_sorted = present[order]
    values_sorted = block.values[order]
    for members in groups.values():
        if len(members) < 2:
            continue
        width_z = len(designs[members[0]].names)
        raw = np.zeros((n_total, width_z))
        group_bits = 0
        for index in members:
            raw[rows[index]] = designs[index].raw_covariates()
            group_bits |= 1 << index
        in_union = (membership & group_bits) > 0
        # One standardisation for the group keeps every design's Gram matrix well conditioned.
        standardised = raw.copy()
        group_means, group_scales = np.zeros(width_z), np.ones(width_z)
        if width_z > 1:
            standardised[in_union, 1:], group_means[1:], group_scales[1:] = standardise_columns(raw[in_union, 1:])
        upper_r, upper_c = np.triu_indices(width_z)
        standardised_sorted = standardised[order]
        atom_grams = np.zeros((signatures.size, upper_r.size, m))
        atom_products = np.zeros((signatures.size, width_z, m))
        atom_squares = np.zeros((signatures.size, m))
        atom_counts = np.zeros((signatures.size, m))
        for atom, signature in enumerate(signatures):
            if not signature & group_bits:
                continue
            atom_slice = slice(bounds[atom], bounds[atom + 1])
            values = standardised_sorted[atom_slice]
            atom_present = present_sorted[atom_slice]
            atom_grams[atom] = (values[:, upper_r] * values[:, upper_c]).T @ atom_present
            atom_counts[atom] = atom_present.sum(axis=0)
            gathered = values_sorted[atom_slice]
            atom_products[atom] = values.T @ gathered
            atom_squares[atom] = np.einsum("ij,ij->j", gathered, gathered)
        for index in members:
            design_rows = rows[index]
            k = exposures[index].shape[0]
            width = width_z + k
            contains = (signatures >> index) & 1 == 1
            gram = np.zeros((m, width, width))
            covariate_flat = atom_grams[contains].sum(axis=0)  # (pairs, m)
            gram[:, upper_r, upper_c] = covariate_flat.T
            gram[:, upper_c, upper_r] = covariate_flat.T
            products = np.zeros((width, m))
            products[:width_z] = atom_products[contains].sum(axis=0)
            counts = np.zeros((1 + 2 * k, m))
            counts[0] = atom_counts[contains].sum(axis=0)
            exposure_padded = np.zeros((n_total, k))
            exposure_padded[design_rows] = exposures[index].T
            for e in range(k):
                # Only rows with a non-zero exposure contribute: for a case/control exposure, the cases.
                nonzero = np.flatnonzero(exposure_padded[:, e])
                weighted = standardised[nonzero] * exposure_padded[nonzero, e][:, None]
                cross = (weighted.T @ present[nonzero]).T  # (m, width_z)
                gram[:, :width_z, width_z + e] = cross
                gram[:, width_z + e, :width_z] = cross
                for f in range(e, k):
                    pair = (exposure_padded[nonzero, e] * exposure_padded[nonzero, f]) @ present[nonzero]
                    gram[:, width_z + e, width_z + f] = pair
                    gram[:, width_z + f, width_z + e] = pair
                products[width_z + e] = exposure_padded[nonzero, e] @ block.values[nonzero]
                # Cases and controls of a 0/1 exposure (unused for a continuous one).
                counts[1 + e] = (exposure_padded[nonzero, e] == 1) @ present[nonzero]
                counts[1 + k + e] = counts[0] - counts[1 + e]
            change = _change_of_basis(designs[index], group_means, group_scales, exposures[index], bases[index])
            # Column 0 of z is the intercept (all ones): its product is the design's sum of y.
            projections = np.vstack([products[:1], change.T @ products])
            result[index] = _BlockProducts(
                projections,
                atom_squares[contains].sum(axis=0),
                np.rint(counts).astype(np.int64),
                np.einsum("ia,mij,jb->mab", change, gram, change, optimize=True),
            )
    return result


@dataclass(frozen=True)
class _AliasedSolution:
    """Least squares on ``[Q, b_e]`` for features whose Gram matrix is singular (``a`` of them)."""

    coefficients: np.ndarray  # (a, rank + 1): minimum-norm on the covariates, unique on the exposure
    exposure_row: np.ndarray  # (a, rank + 1): d(exposure coefficient) / d(B'y)
    variance: np.ndarray  # (a,): the exposure coefficient's variance factor
    covariate_rank: np.ndarray  # (a,): rank of the covariates among the feature's participants
    estimable: np.ndarray  # (a,) bool: the exposure is not a combination of the covariates there


def _aliased_solve(gram: np.ndarray, right: np.ndarray) -> _AliasedSolution:
    """The exposure coefficient when covariates are collinear among a feature's participants.

    ``gram`` ``(a, r + 1, r + 1)`` and ``right`` ``(a, r + 1)`` are the normal
    equations on ``[Q, b_e]`` restricted to the feature's present rows. A
    covariate constant there (a sequencing batch all carriers share) makes the
    covariate block ``G_cc`` singular; R's ``lm`` then aliases that covariate
    and still estimates the exposure. The same here: with ``G_cc^+`` the
    pseudo-inverse of the covariate block (eigenvalues at or below
    :data:`_GRAM_SINGULAR` dropped), ``u = G_cc^+ g_ce`` and the Schur complement
    ``s = g_ee - g_ce'u``, the exposure coefficient is ``(r_e - u'r_c) / s``
    with variance factor ``1 / s``, and the covariate rank lowers the degrees
    of freedom. The fitted values (and so the RSS) equal those of the model
    without the aliased columns. An exposure with ``s`` at or below the
    tolerance is itself collinear with the covariates there: not estimable.
    """
    r = gram.shape[1] - 1
    covariate_block, cross, exposure_square = gram[:, :r, :r], gram[:, :r, r], gram[:, r, r]
    eigenvalues, vectors = np.linalg.eigh(covariate_block)
    keep = eigenvalues > _GRAM_SINGULAR
    inverse_values = np.where(keep, 1.0 / np.where(keep, eigenvalues, 1.0), 0.0)
    pseudo_inverse = np.einsum("aij,aj,akj->aik", vectors, inverse_values, vectors)
    along = np.einsum("aij,aj->ai", pseudo_inverse, cross)  # u
    schur = exposure_square - np.einsum("ai,ai->a", cross, along)
    estimable = schur > _GRAM_SINGULAR
    safe = np.where(estimable, schur, 1.0)
    right_c, right_e = right[:, :r], right[:, r]
    exposure_coefficient = np.where(estimable, (right_e - np.einsum("ai,ai->a", along, right_c)) / safe, np.nan)
    coefficients = np.empty_like(right)
    coefficients[:, r] = exposure_coefficient
    coefficients[:, :r] = np.einsum("aij,aj->ai", pseudo_inverse, right_c - cross * np.nan_to_num(exposure_coefficient)[:, None])
    exposure_row = np.concatenate([-along, np.ones((along.shape[0], 1))], axis=1) / safe[:, None]
    return _AliasedSolution(coefficients, exposure_row, 1.0 / safe, keep.sum(axis=1), estimable)


def _fit_one_design(
    design: CovariateDesign,
    rows: np.ndarray,
    exposures: np.ndarray,
    binary: np.ndarray,
    prepared: PreparedBlock,
    basis: _Basis,
    products: _BlockProducts,
    clusters: np.ndarray | None,
    alias: bool = True,
    cluster_reference: str = "t",
) -> SlopeFits:
    """The per-design remainder of the fit, given its products with the block."""
    projections, sum_squares, present_counts, present_gram = products.projections, products.sum_squares, products.counts, products.present_gram
    n_total, m = prepared.shape
    k, n = exposures.shape
    if rows.size != n or design.n != n:
        raise ValueError(f"design has {design.n} participants, exposures {n}, rows {rows.size}; they must agree")

    shape = (k, m)
    beta = np.full(shape, np.nan)
    se = np.full(shape, np.nan)
    n_cases = np.full(shape, -1, dtype=np.int64)
    n_controls = np.full(shape, -1, dtype=np.int64)
    status = np.zeros(shape, dtype=np.int8)

    # Missing cells that fall among this design's participants, as a sparse (m x N) indicator.
    in_design = np.zeros(n_total, dtype=bool)
    in_design[rows] = True
    sparse_missing = prepared.present is None
    if prepared.present is None:
        # Few missing cells: this design's ones, listed.
        keep = in_design[prepared.missing_rows]
        miss_rows, miss_cols = prepared.missing_rows[keep], prepared.missing_columns[keep]
        missing_count = np.bincount(miss_cols, minlength=m)
    else:
        assert present_counts is not None
        missing_count = n - present_counts[0]
    n_used = np.broadcast_to(n - missing_count, shape).copy()
    if design.problem is not None:
        status[:] = FitStatus.DESIGN_RANK_DEFICIENT
        return SlopeFits(beta, se, beta.copy(), beta.copy(), n_used, n_cases, n_controls, status)

    scales, collinear = basis.scales, basis.collinear
    basis_padded = basis.padded
    rank = design.q.shape[1]
    sums, covariate_part, exposure_part = projections[0], projections[1 : 1 + rank], projections[1 + rank :]
    n_present = (n - missing_count).astype(np.float64)  # exact integers
    with np.errstate(invalid="ignore", divide="ignore"):
        centred_ss = sum_squares - sums**2 / n_present
    constant = ~(centred_ss > _CONSTANT * sum_squares)

    has_missing = missing_count > 0
    complete = ~has_missing
    df = n_present - rank - 1

    # Complete features: the Gram matrix is the identity.
    covariate_ss = np.einsum("ij,ij->j", covariate_part, covariate_part)
    rss = np.empty(shape)
    variance_factor = np.ones(shape)
    coefficient = exposure_part.copy()  # coefficient on b_e
    rss[:, complete] = sum_squares[complete] - covariate_ss[complete] - exposure_part[:, complete] ** 2

    singular = np.zeros(shape, dtype=bool)
    # Rank of the covariates among each feature's participants: the design's rank unless a
    # covariate is constant (or collinear) there, when it is aliased as R's lm does.
    covariate_rank = np.full(m, rank)
    masked = np.flatnonzero(has_missing)
    full_coefficients: dict[int, np.ndarray] = {}  # per exposure: (masked, rank + 1) solutions
    inverse_exposure_rows: dict[int, np.ndarray] = {}  # per exposure: (masked, rank + 1) rows of G_j^-1 for the exposure
    if masked.size:
        # D_j = sum over missing rows i of feature j of v_i v_i', v = [Q, b_1..b_k] at row i.
        vectors = basis_padded[:, 1:]  # (N, rank + k)
        width = vectors.shape[1]
        upper_r, upper_c = np.triu_indices(width)
        if present_gram is not None:
            # Built once for all designs sharing this covariate set (see _grouped_products).
            downdate = np.eye(width) - present_gram[masked]
        elif sparse_missing:
            # Few missing cells: sum over them only (a sparse product).
            indicator = scipy.sparse.csr_matrix((np.ones(miss_rows.size), (miss_cols, miss_rows)), shape=(m, n_total))[masked]
            used_rows = np.unique(miss_rows)
            pair_products = np.zeros((n_total, upper_r.size))
            pair_products[used_rows] = vectors[used_rows][:, upper_r] * vectors[used_rows][:, upper_c]
            downdate_flat = np.asarray(indicator @ pair_products)  # (masked, pairs)
        else:
            # Many missing cells (lm_nonzero: every absent participant): build each feature's
            # Gram matrix over its present rows in one dense product instead, D = I - G.
            # The padded basis is zero outside the design, so the product counts design rows only.
            pair_products = vectors[:, upper_r] * vectors[:, upper_c]
            assert prepared.present is not None
            gram_flat = (pair_products.T @ prepared.present[:, masked]).T  # (masked, pairs)
            downdate_flat = (upper_r == upper_c).astype(np.float64) - gram_flat
        if present_gram is None:
            downdate = np.zeros((masked.size, width, width))
            downdate[:, upper_r, upper_c] = downdate_flat
            downdate[:, upper_c, upper_r] = downdate_flat
        for e in range(k):  # a handful of exposures per design; features stay vectorised
            take = np.r_[np.arange(rank), rank + e]
            gram = np.eye(rank + 1) - downdate[:, take][:, :, take]
            # One inverse per feature serves the solve, the exposure's variance and a
            # singularity bound: lambda_min(G) >= 1 / ||G^-1||_F, so only features failing
            # the bound need their eigenvalues (all of them if some G is exactly singular).
            try:
                inverse = np.linalg.inv(gram)
                with np.errstate(over="ignore", invalid="ignore"):
                    frobenius = np.sqrt(np.einsum("mij,mij->m", inverse, inverse))
                doubtful = np.flatnonzero(~(frobenius < 1.0 / _GRAM_SINGULAR))
            except np.linalg.LinAlgError:
                inverse = None
                doubtful = np.arange(masked.size)
            bad = np.zeros(masked.size, dtype=bool)
            if doubtful.size:
                bad[doubtful] = np.linalg.eigvalsh(gram[doubtful])[:, 0] <= _GRAM_SINGULAR
            if inverse is None or bad.any():
                inverse = np.linalg.inv(np.where(bad[:, None, None], np.eye(rank + 1), gram))
            right = np.concatenate([covariate_part[:, masked], exposure_part[e : e + 1, masked]]).T  # (masked, rank+1)
            gamma = np.einsum("mij,mj->mi", inverse, right)
            exposure_rows = inverse[:, :, -1]  # G^-1 is symmetric: its last column is its last row
            variance = inverse[:, -1, -1]
            singular[e, masked] = bad
            if bad.any() and alias:
                aliased = _aliased_solve(gram[bad], right[bad])
                gamma[bad], exposure_rows[bad], variance[bad] = aliased.coefficients, aliased.exposure_row, aliased.variance
                singular[e, masked[bad]] = ~aliased.estimable
                covariate_rank[masked[bad]] = aliased.covariate_rank
            coefficient[e, masked] = gamma[:, -1]
            variance_factor[e, masked] = variance
            rss[e, masked] = sum_squares[masked] - np.einsum("ij,ij->i", gamma, right)
            full_coefficients[e] = gamma
            inverse_exposure_rows[e] = exposure_rows

    def model_coefficients(e: int, columns: np.ndarray) -> np.ndarray:
        """``(rank + 1, len(columns))`` coefficients on ``[Q, b_e]`` of the given features."""
        gamma = np.zeros((rank + 1, columns.size))
        gamma[:rank] = covariate_part[:, columns]
        gamma[rank] = exposure_part[e, columns]
        if masked.size:
            position = np.searchsorted(masked, columns)
            is_masked = has_missing[columns]
            gamma[:, is_masked] = full_coefficients[e][position[is_masked]].T
        return gamma

    def model_residuals(e: int, columns: np.ndarray) -> np.ndarray:
        """``(N, len(columns))`` explicit residuals, zero outside the design and at missing cells."""
        fitted = basis_padded[:, np.r_[1 : 1 + rank, 1 + rank + e]] @ model_coefficients(e, columns)
        return (prepared.values[:, columns] - fitted) * present_in_design[:, columns]

    unsafe = (rss < _RSS_IDENTITY_FLOOR * sum_squares) & ~constant
    present_in_design = np.zeros((0, 0), dtype=bool)
    if unsafe.any() or clusters is not None:
        if prepared.present is None:
            present_in_design = np.repeat(in_design[:, None], m, axis=1)
            present_in_design[miss_rows, miss_cols] = False
        else:
            present_in_design = (prepared.present > 0) & in_design[:, None]
    # Where the identity is unsafe (model explains nearly all of y'y), compute residuals explicitly.
    for exposure_index in np.flatnonzero(unsafe.any(axis=1)):
        e = int(exposure_index)
        columns = np.flatnonzero(unsafe[e])
        residual = model_residuals(e, columns)
        rss[e, columns] = np.einsum("ij,ij->j", residual, residual)

    df = n_present - covariate_rank - 1
    with np.errstate(invalid="ignore", divide="ignore"):
        beta[:] = coefficient / np.where(collinear, np.nan, scales)[:, None]
        se[:] = np.sqrt(np.clip(rss, 0.0, None) / df * variance_factor) / np.where(collinear, np.nan, scales)[:, None]

    p_df: np.ndarray | float = df
    too_few_clusters = np.zeros(m, dtype=bool)
    if clusters is not None:
        # Cluster-robust (CR1) variance of the coefficient on b_e: the exposure row of
        # G_j^-1 B' is its influence on each participant; scores are summed per cluster.
        codes = np.asarray(clusters)
        n_groups = int(codes.max()) + 1 if codes.size else 0
        indicator = scipy.sparse.csr_matrix((np.ones(rows.size), (codes, rows)), shape=(n_groups, n_total))
        groups_used = np.asarray((indicator @ present_in_design.astype(np.float64)) > 0).sum(axis=0)
        too_few_clusters = groups_used < 2
        everything = np.arange(m)
        for e in range(k):
            if collinear[e]:
                continue
            direction = np.zeros((rank + 1, m))
            direction[rank, complete] = 1.0
            if masked.size:
                direction[:, masked] = inverse_exposure_rows[e].T
            influence = (basis_padded[:, np.r_[1 : 1 + rank, 1 + rank + e]] @ direction) * present_in_design
            scores = indicator @ (influence * model_residuals(e, everything))
            with np.errstate(invalid="ignore", divide="ignore"):
                correction = groups_used / (groups_used - 1) * (n_present - 1) / df
                se[e] = np.sqrt(np.einsum("gj,gj->j", scores, scores) * correction) / scales[e]
        # t with G - 1 degrees of freedom (Stata's choice: with few clusters the normal is far too
        # liberal); the normal on request, as statsmodels reports cluster-robust fits.
        p_df = groups_used - 1.0 if cluster_reference == "t" else np.inf

    for e in range(k):
        if not binary[e]:
            continue
        is_case = exposures[e] == 1
        case_padded = np.zeros(n_total, dtype=np.float64)
        case_padded[rows] = is_case
        control_padded = np.zeros(n_total, dtype=np.float64)
        control_padded[rows] = exposures[e] == 0
        if prepared.present is None:
            missing_cases = np.bincount(miss_cols, weights=case_padded[miss_rows], minlength=m)
            missing_controls = np.bincount(miss_cols, weights=control_padded[miss_rows], minlength=m)
            n_cases[e] = int(is_case.sum()) - np.rint(missing_cases).astype(np.int64)
            n_controls[e] = int((exposures[e] == 0).sum()) - np.rint(missing_controls).astype(np.int64)
        else:
            assert present_counts is not None
            n_cases[e] = present_counts[1 + e]
            n_controls[e] = present_counts[1 + k + e]

    status[singular] = FitStatus.FEATURE_RANK_DEFICIENT
    too_few = ~(df >= 1) | too_few_clusters
    status[:, too_few] = FitStatus.TOO_FEW_VALUES
    status[:, constant & ~too_few] = FitStatus.CONSTANT_FEATURE
    status[collinear] = FitStatus.EXPOSURE_COLLINEAR
    not_ok = status != FitStatus.OK
    beta[not_ok] = np.nan
    se[not_ok] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        t = beta / se
    p = np.full(shape, np.nan)
    ok = ~not_ok
    p[ok] = two_sided_p(t[ok], np.broadcast_to(p_df, shape)[ok])
    return SlopeFits(beta, se, t, p, n_used, n_cases, n_controls, status)
