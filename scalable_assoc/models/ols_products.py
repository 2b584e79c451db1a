"""Products of OLS designs with a feature block: the memory-bound part of a fit, shared between designs.

The OLS kernel (:mod:`scalable_assoc.models.ols`) works from each design's
products with the block (:class:`BlockProducts`). Designs that share nothing
take them in one product with the block for all of them (:func:`direct_products`);
designs that share a covariate set on a block with many missing cells build
them once per row atom (:func:`grouped_products`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.linalg

from scalable_assoc.models.design import CovariateDesign, exposure_directions, standardise_columns

if TYPE_CHECKING:  # the OLS module imports this one
    from scalable_assoc.models.ols import PreparedBlock


@dataclass(frozen=True)
class ExposureBasis:
    """``[1 | Q | b_1..b_k]`` of one design, padded to the block's ``N`` rows, with exposure scales."""

    padded: np.ndarray  # (N, 1 + rank + k)
    scales: np.ndarray  # (k,) |x_r|
    collinear: np.ndarray  # (k,) bool


def padded(rows: np.ndarray, n_total: int, columns: np.ndarray) -> np.ndarray:
    """``columns`` (``(len(rows), c)``) placed at ``rows`` of an ``(n_total, c)`` zero matrix."""
    out = np.zeros((n_total, columns.shape[1]))
    out[rows] = columns
    return out


def exposure_basis(design: CovariateDesign, rows: np.ndarray, exposures: np.ndarray, n_total: int) -> ExposureBasis:
    """The design's basis with its ``(k, n)`` exposures projected and normalised, placed at ``rows`` (``(n,)``) of ``n_total``."""
    k = exposures.shape[0]
    if design.problem is not None:
        return ExposureBasis(np.zeros((n_total, 0)), np.ones(k), np.zeros(k, dtype=bool))
    # Orthonormal exposure directions b_e = x_r / s_e, one per exposure.
    directions = exposure_directions(design, exposures)
    basis = np.hstack([np.ones((rows.size, 1)), design.q, directions.directions])
    return ExposureBasis(padded(rows, n_total, basis), directions.scales, directions.collinear)


@dataclass(frozen=True)
class DesignTask:
    """One design of a batch: its participants ``rows`` (``(n,)``), ``(k, n)`` exposures, ``(k,)`` binary flags, clusters, basis."""

    design: CovariateDesign
    rows: np.ndarray
    exposures: np.ndarray
    binary: np.ndarray
    clusters: np.ndarray | None
    basis: ExposureBasis


def direct_products(tasks: list[DesignTask], block: PreparedBlock) -> list[BlockProducts]:
    """Block products of designs that share nothing: one product with the block for all of them together."""
    if not tasks:
        return []
    n_total, m = block.shape
    stacked = np.hstack([task.basis.padded for task in tasks])
    projections = stacked.T @ block.values
    # y'y over each design's rows (column 0 of a basis is the design's row indicator).
    weights = np.stack([task.basis.padded[:, 0] if task.basis.padded.shape[1] else np.zeros(n_total) for task in tasks], axis=1)
    sum_squares = weights.T @ block.squares
    counts: list[np.ndarray | None] = [None] * len(tasks)
    if block.present is not None:
        # Present values among each design's rows, cases and controls (the missing-cell list is cheaper otherwise).
        indicators = []
        for task in tasks:
            k = task.exposures.shape[0]
            columns = np.zeros((n_total, 1 + 2 * k))
            columns[task.rows, 0] = 1.0
            columns[task.rows, 1 : 1 + k] = (task.exposures == 1).T
            columns[task.rows, 1 + k :] = (task.exposures == 0).T
            indicators.append(columns)
        all_counts = np.rint(np.hstack(indicators).T @ block.present).astype(np.int64)
        sizes = np.cumsum([0] + [c.shape[1] for c in indicators])
        counts = [all_counts[start:stop] for start, stop in zip(sizes[:-1], sizes[1:], strict=True)]
    widths = np.cumsum([0] + [task.basis.padded.shape[1] for task in tasks])
    return [
        BlockProducts(projections[start:stop], sum_squares[index], counts[index])
        for index, (start, stop) in enumerate(zip(widths[:-1], widths[1:], strict=True))
    ]


def change_of_basis(
    design: CovariateDesign, group_means: np.ndarray, group_scales: np.ndarray, exposures: np.ndarray, basis: ExposureBasis
) -> np.ndarray:
    """``T`` with ``[Q, b_1..b_k] = [z, x_1..x_k] @ T`` on the design's rows, in closed form.

    ``z`` are the covariates standardised over the whole group (``group_means``,
    ``group_scales``); the design standardised them over its own rows and took a
    pivoted QR of them, ``covariates[:, pivot] / norms[pivot] = Q R``; and
    ``b_e = (x_e - Q Q'x_e) / s_e`` (``s_e`` = 1 for a collinear exposure, as in
    :func:`exposure_basis`). Composing these maps needs one small triangular solve.
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
class BlockProducts:
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


@dataclass(frozen=True)
class _Atoms:
    """Rows of identical design membership, each a contiguous slice of the block after one reordering."""

    membership: np.ndarray  # (N,) bit i set where design i holds the row
    signatures: np.ndarray  # (a,) the membership of each atom
    bounds: np.ndarray  # (a + 1,) atom t is rows bounds[t]:bounds[t + 1] of the reordered block
    order: np.ndarray  # (N,) the reordering
    present_sorted: np.ndarray  # (N, m) present[order]
    values_sorted: np.ndarray  # (N, m) values[order]


@dataclass(frozen=True)
class _GroupSums:
    """One covariate set's covariates ``z`` standardised over the group's rows, and their sums per atom."""

    standardised: np.ndarray  # (N, width_z) z, zero outside the group's rows
    means: np.ndarray  # (width_z,) the group's standardisation
    scales: np.ndarray  # (width_z,)
    upper: tuple[np.ndarray, np.ndarray]  # pairs of z's columns, triu_indices order
    grams: np.ndarray  # (a, pairs, m) sum of z_a z_b over each atom's present values
    products: np.ndarray  # (a, width_z, m) z'y per atom
    squares: np.ndarray  # (a, m) y'y per atom
    counts: np.ndarray  # (a, m) present values per atom


def grouped_products(tasks: list[DesignTask], block: PreparedBlock) -> list[BlockProducts | None]:
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
    result: list[BlockProducts | None] = [None] * len(tasks)
    if block.present is None:
        return result
    groups: dict[tuple[str, ...], list[int]] = {}
    for index, task in enumerate(tasks):
        if task.design.problem is None:
            groups.setdefault(task.design.names, []).append(index)
    shared = [index for members in groups.values() if 2 <= len(members) for index in members]
    if not shared or len(tasks) > 62:
        return result
    atoms = _atoms(tasks, shared, block)
    for members in groups.values():
        if len(members) < 2:
            continue
        sums = _group_sums(tasks, members, atoms, block)
        for index in members:
            result[index] = _member_products(index, tasks[index], sums, atoms, block)
    return result


def _atoms(tasks: list[DesignTask], shared: list[int], block: PreparedBlock) -> _Atoms:
    """Atoms: rows of identical membership across the ``shared`` designs of the call."""
    assert block.present is not None
    n_total = block.shape[0]
    # One reordering of the block makes every atom a contiguous slice (no gather per atom and group).
    membership = np.zeros(n_total, dtype=np.int64)
    for index in shared:
        membership[tasks[index].rows] |= 1 << index
    signatures, atom_of_row = np.unique(membership, return_inverse=True)
    order = np.argsort(atom_of_row, kind="stable")
    bounds = np.searchsorted(atom_of_row[order], np.arange(signatures.size + 1))
    return _Atoms(membership, signatures, bounds, order, block.present[order], block.values[order])


def _group_sums(tasks: list[DesignTask], members: list[int], atoms: _Atoms, block: PreparedBlock) -> _GroupSums:
    """The group's covariates standardised once over its rows, and their Gram matrices, products and sums per atom."""
    n_total, m = block.shape
    width_z = len(tasks[members[0]].design.names)
    raw = np.zeros((n_total, width_z))
    group_bits = 0
    for index in members:
        raw[tasks[index].rows] = tasks[index].design.raw_covariates()
        group_bits |= 1 << index
    in_union = (atoms.membership & group_bits) > 0
    # One standardisation for the group keeps every design's Gram matrix well conditioned.
    standardised = raw.copy()
    group_means, group_scales = np.zeros(width_z), np.ones(width_z)
    if width_z > 1:
        standardised[in_union, 1:], group_means[1:], group_scales[1:] = standardise_columns(raw[in_union, 1:])
    upper_r, upper_c = np.triu_indices(width_z)
    standardised_sorted = standardised[atoms.order]
    signatures = atoms.signatures
    atom_grams = np.zeros((signatures.size, upper_r.size, m))
    atom_products = np.zeros((signatures.size, width_z, m))
    atom_squares = np.zeros((signatures.size, m))
    atom_counts = np.zeros((signatures.size, m))
    for atom, signature in enumerate(signatures):
        if not signature & group_bits:
            continue
        atom_slice = slice(atoms.bounds[atom], atoms.bounds[atom + 1])
        values = standardised_sorted[atom_slice]
        atom_present = atoms.present_sorted[atom_slice]
        atom_grams[atom] = (values[:, upper_r] * values[:, upper_c]).T @ atom_present
        atom_counts[atom] = atom_present.sum(axis=0)
        gathered = atoms.values_sorted[atom_slice]
        atom_products[atom] = values.T @ gathered
        atom_squares[atom] = np.einsum("ij,ij->j", gathered, gathered)
    return _GroupSums(standardised, group_means, group_scales, (upper_r, upper_c), atom_grams, atom_products, atom_squares, atom_counts)


def _member_products(index: int, task: DesignTask, sums: _GroupSums, atoms: _Atoms, block: PreparedBlock) -> BlockProducts:
    """Design ``index``'s products: its atoms' covariate sums, its exposures' own terms, in its orthonormal basis."""
    present = block.present
    assert present is not None
    n_total, m = block.shape
    upper_r, upper_c = sums.upper
    width_z = sums.standardised.shape[1]
    k = task.exposures.shape[0]
    width = width_z + k
    contains = (atoms.signatures >> index) & 1 == 1
    gram = np.zeros((m, width, width))
    covariate_flat = sums.grams[contains].sum(axis=0)  # (pairs, m)
    gram[:, upper_r, upper_c] = covariate_flat.T
    gram[:, upper_c, upper_r] = covariate_flat.T
    products = np.zeros((width, m))
    products[:width_z] = sums.products[contains].sum(axis=0)
    counts = np.zeros((1 + 2 * k, m))
    counts[0] = sums.counts[contains].sum(axis=0)
    exposure_padded = np.zeros((n_total, k))
    exposure_padded[task.rows] = task.exposures.T
    for e in range(k):
        # Only rows with a non-zero exposure contribute: for a case/control exposure, the cases.
        nonzero = np.flatnonzero(exposure_padded[:, e])
        weighted = sums.standardised[nonzero] * exposure_padded[nonzero, e][:, None]
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
    change = change_of_basis(task.design, sums.means, sums.scales, task.exposures, task.basis)
    # Column 0 of z is the intercept (all ones): its product is the design's sum of y.
    projections = np.vstack([products[:1], change.T @ products])
    return BlockProducts(
        projections,
        sums.squares[contains].sum(axis=0),
        np.rint(counts).astype(np.int64),
        np.einsum("ia,mij,jb->mab", change, gram, change, optimize=True),
    )
