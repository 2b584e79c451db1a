"""Separation and singularity found from counts, without fitting."""

from __future__ import annotations

import numpy as np
import scipy.sparse

from scalable_assoc.models.logistic.packed import Basis
from scalable_assoc.models.thresholds import GRAM_SINGULAR


def lower_levels(columns: np.ndarray) -> np.ndarray:
    """``(n, L)`` indicators of the lower level of every column of ``columns`` (``(n, c)``) taking exactly two values.

    The upper level is the complement: its counts are the whole sample's minus these.
    """
    lowest, highest = columns.min(axis=0), columns.max(axis=0)
    two_valued = (lowest < highest) & np.all((columns == lowest) | (columns == highest), axis=0)
    return (columns[:, two_valued] == lowest[two_valued]).astype(np.float64)


def used_sums(vectors: np.ndarray, missing_indicator: scipy.sparse.csr_matrix) -> np.ndarray:
    """``(L, m)`` sums of each column of ``vectors`` (``(n, L)``) over each feature's used participants."""
    # All rows minus the missing ones: a sparse product over the missing cells only.
    return vectors.sum(axis=0)[:, None] - np.asarray(missing_indicator @ vectors).T


def level_separated(level_used: np.ndarray, level_present: np.ndarray) -> np.ndarray:
    """``(m,)``: some level (a row of the ``(L, m)`` counts) has used participants, all present or all absent.

    With an intercept in the model that is quasi-complete separation: moving the
    level's coefficient (or the intercept, for the all-ones level) towards
    +-infinity only ever increases the likelihood.
    """
    used, present = np.rint(level_used), np.rint(level_present)
    return np.any((used > 0) & ((present == 0) | (present == used)), axis=0)


def singular_features(basis: Basis, missing_indicator: scipy.sparse.csr_matrix) -> np.ndarray:
    """``(m,)``: the basis restricted to each feature's used participants is (numerically) singular."""
    # Gram = I - D, D summing v v' over the unused rows: lambda_min >= 1 - trace(D), so
    # features whose unused rows carry little leverage need no eigenvalues.
    trace_missing = missing_indicator @ np.einsum("ij,ij->i", basis.matrix, basis.matrix)
    doubtful = np.flatnonzero(trace_missing >= 0.5)
    singular = np.zeros(missing_indicator.shape[0], dtype=bool)
    if doubtful.size:
        full = basis.products.sum(axis=0)
        gram = basis.unpack(full[:, None] - np.asarray(missing_indicator[doubtful] @ basis.products).T)
        singular[doubtful] = np.linalg.eigvalsh(gram)[:, 0] <= GRAM_SINGULAR
    return singular
