"""Packed pair storage: a design's orthonormal basis with the products of pairs of its columns, and the missing cells.

With ``P`` the products of pairs of basis columns, the Fisher information
``B' diag(w_j) B`` of every feature of a block is ONE product ``P' W``. A pass
over the participants walks them in chunks of rows that stay in cache
(:func:`row_chunks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from itertools import combinations_with_replacement, permutations

import numpy as np
import scipy.sparse

from scalable_assoc.models.logistic.tuning import CHUNK_CELLS, CHUNK_ROWS


@dataclass(frozen=True)
class Cells:
    """Missing cells of an ``(n, w)`` array: row and column indices, sorted by row."""

    rows: np.ndarray
    columns: np.ndarray

    def restrict(self, keep: np.ndarray, width: int) -> Cells:
        """The cells of columns ``keep`` (of ``width``), renumbered as columns of ``[:, keep]``."""
        position = np.full(width, -1, dtype=np.int64)
        position[keep] = np.arange(keep.size)
        renumbered = position[self.columns]
        inside = renumbered >= 0
        return Cells(self.rows[inside], renumbered[inside])

    def indicator(self, n: int, width: int) -> scipy.sparse.csr_matrix:
        """``(width, n)`` sparse 0/1 matrix of the cells, for sums over missing rows only."""
        return scipy.sparse.csr_matrix((np.ones(self.rows.size), (self.columns, self.rows)), shape=(width, n))


def chunk_rows(w: int) -> int:
    """Participants per chunk of a pass over ``w`` features (see ``CHUNK_CELLS``)."""
    return max(CHUNK_ROWS, CHUNK_CELLS // max(w, 1))


def row_chunks(n: int, w: int, missing: Cells) -> list[tuple[int, int, tuple[np.ndarray, np.ndarray]]]:
    """``(first, last, cells)`` for the chunks of rows of an ``(n, w)`` pass; ``cells`` the chunk's missing cells."""
    size = chunk_rows(w)
    starts = np.arange(0, n, size)
    bounds = np.searchsorted(missing.rows, np.append(starts, n))  # missing.rows is sorted
    return [
        (
            int(first),
            min(int(first) + size, n),
            (missing.rows[bounds[i] : bounds[i + 1]] - first, missing.columns[bounds[i] : bounds[i + 1]]),
        )
        for i, first in enumerate(starts)
    ]


@dataclass(frozen=True)
class Basis:
    """One design's orthonormal basis ``B`` (``(n, p)``) and the products of pairs of its columns.

    ``products[:, t] = B[:, upper[t]] * B[:, lower[t]]`` over the ``q = p (p + 1) / 2``
    pairs of the upper triangle, so that ``products' W`` holds every Fisher
    information ``B' diag(w_j) B`` of a block. ``*32`` are single-precision copies.
    """

    matrix: np.ndarray
    products: np.ndarray
    upper: np.ndarray
    lower: np.ndarray
    matrix32: np.ndarray
    products32: np.ndarray

    @property
    def p(self) -> int:
        """Number of basis columns."""
        return int(self.matrix.shape[1])

    def unpack(self, flat: np.ndarray) -> np.ndarray:
        """``(q, w)`` upper-triangle entries -> ``(w, p, p)`` symmetric matrices."""
        out = np.empty((flat.shape[1], self.p, self.p))
        out[:, self.upper, self.lower] = flat.T
        out[:, self.lower, self.upper] = flat.T
        return out

    @cached_property
    def triples(self) -> tuple[np.ndarray, np.ndarray]:
        """``(t, n)`` products of the ``t = p (p + 1) (p + 2) / 6`` sorted triples of columns, and ``(p, p, p)`` positions.

        ``triples[0] @ v`` holds every ``sum_i v_i x_ir x_ia x_ib``, a symmetric
        3-tensor, once per distinct entry; ``triples[1][r, a, b]`` is the entry's
        row. Made only when Firth's likelihood is fitted, then reused. Single
        precision: the tensor only shapes Newton's steps (whose fixed point, the
        estimate, it does not move), and the product is memory-bound. Stored
        transposed, so that it is made by contiguous row operations.
        """
        combinations = np.array(list(combinations_with_replacement(range(self.p), 3)))
        matrix, pairs = np.ascontiguousarray(self.matrix32.T), self.products32.T  # pairs: contiguous (see make_basis)
        products = np.empty((len(combinations), matrix.shape[1]), dtype=np.float32)
        offset = 0
        for pair, a in enumerate(self.lower):  # pairs (r, a), r <= a, in the triples' order
            np.multiply(pairs[pair], matrix[a:], out=products[offset : offset + self.p - a])
            offset += self.p - a
        position = np.empty((self.p,) * 3, dtype=np.int64)
        for order in permutations(range(3)):  # every entry of the symmetric tensor, in six assignments
            position[tuple(combinations[:, order].T)] = np.arange(len(combinations))
        return products, position

    def pack(self, matrices: np.ndarray) -> np.ndarray:
        """``(w, p, p)`` symmetric ``A_j`` -> ``(q, w)`` such that ``products @ pack(A) = x_i' A_j x_i``."""
        # Off-diagonal pairs appear once in the triangle but twice in the quadratic form.
        return matrices[:, self.upper, self.lower].T * np.where(self.upper == self.lower, 1.0, 2.0)[:, None]


def make_basis(matrix: np.ndarray) -> Basis:
    p = matrix.shape[1]
    upper, lower = np.triu_indices(p)
    # Built pair-major, (q, n) in memory, and used through its transposed view: the
    # Fisher product P' W then reads contiguous rows of P' (measured ~6% faster).
    columns = np.ascontiguousarray(matrix.T)
    pairs = np.empty((upper.size, matrix.shape[0]))
    offset = 0
    for a in range(p):  # row a of the triangle, pairs (a, a..p-1), in triu_indices order
        np.multiply(columns[a], columns[a:], out=pairs[offset : offset + p - a])
        offset += p - a
    return Basis(matrix, pairs.T, upper, lower, matrix.astype(np.float32), pairs.astype(np.float32).T)
