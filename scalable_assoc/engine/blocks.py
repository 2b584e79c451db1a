"""What a block task returns (:class:`ModelBlock`), in a module of its own that imports no kernel at its import.

A client holding a task's future is sent the type of its result as the task
ends, and unpickles it (distributed's ``key-in-memory`` report): for a block
task's :class:`ModelBlock` that imports this module in the client. Here, and
not beside the task functions in :mod:`scalable_assoc.engine.tasks`, it costs
the client nothing it has not imported already; the OLS kernel a block's
:meth:`ModelBlock.prepared` calls is imported by the worker's first fit (the
workers have it from their preload).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from scalable_assoc.models.ols import PreparedBlock


def array_bytes(*arrays: np.ndarray | None) -> int:
    """Bytes held by ``arrays`` (None counts 0), plus a little for the object holding them.

    The ``__sizeof__`` of task results (:class:`ModelBlock`, ``tasks.SharedDesign``), which Dask's ``sizeof`` reads
    (it counts a dataclass as its bare object, a few dozen bytes). The scheduler
    places a task on the worker holding most of its inputs' bytes and weighs
    moving it by them: with a 33 MB model block counted as 56 bytes, it ran fits
    away from their blocks and moved the blocks between workers.
    """
    return 64 + sum(a.nbytes for a in arrays if a is not None)


@dataclass(frozen=True)
class ModelBlock:
    """What a fit task reads of a block: a model's view and where the features are present.

    ``values`` ``(N, m)``: the view (:func:`~scalable_assoc.engine.tasks.model_block`); ``present`` ``(N, m)``
    bool: the raw value is above the presence threshold (False where missing),
    from which every row's carrier count is taken whatever the model's view.

    A block held on a worker is read by several fit tasks there (one per batch
    of analyses), so what they derive from it alike is derived once per worker,
    on first use, and kept with the block (:meth:`prepared`). That cache stays
    on its worker: a block moved to another worker travels without it (see
    ``__getstate__``).
    """

    values: np.ndarray
    present: np.ndarray

    def __sizeof__(self) -> int:
        # What Dask's ``sizeof`` reports to the scheduler (see :func:`array_bytes`).
        prepared = self.__dict__.get(_PREPARED)
        extra = (prepared.values, prepared.__dict__.get("squares")) if prepared is not None else ()
        return array_bytes(self.values, self.present, *extra)

    def __getstate__(self) -> dict[str, np.ndarray]:
        # Only the fields: a copy on another worker derives its own caches rather than receiving them.
        return {"values": self.values, "present": self.present}

    def prepared(self) -> PreparedBlock:
        """The view centred and zero-filled (:func:`~scalable_assoc.models.ols.prepare_block`), computed once per block.

        Its own cached views (squares, missing cells) are computed once too, by the
        first fit needing them; every OLS-based fit reads it, none writes into it.
        """
        found = self.__dict__.get(_PREPARED)
        if found is None:
            from scalable_assoc.models.ols import prepare_block  # a worker's (see the module's docstring)

            found = self.__dict__[_PREPARED] = prepare_block(self.values)  # frozen: set in __dict__ directly
        return found

    def present_counts(self, weights: np.ndarray) -> np.ndarray:
        """``(r, m)`` int64: ``weights @ present``, for ``(r, N)`` whole-number row weights (participants counted per row).

        One product for all the carrier counts of a task, over slabs of
        :data:`PRESENCE_SLAB_ROWS` rows of ``present`` made floating one at a
        time into a buffer that stays in cache: a float copy of the whole block
        (17 MB at 7,656 x 546) cost as much to write and read back as the
        product itself, and its fresh pages to fault in. Exact in any order of
        summation: every partial sum is a whole number no larger than the
        weights' row sums, which the floating type holds exactly (float32 up to
        2**24, float64 beyond).
        """
        exact_float32 = weights.size == 0 or float(weights.sum(axis=1).max()) < 2**24
        dtype = np.float32 if exact_float32 else np.float64
        n, m = self.present.shape
        row_weights = weights.astype(dtype)
        counts = np.zeros((weights.shape[0], m), dtype=dtype)
        slab = np.empty((min(PRESENCE_SLAB_ROWS, n), m), dtype=dtype)
        for start in range(0, n, PRESENCE_SLAB_ROWS):
            stop = min(start + PRESENCE_SLAB_ROWS, n)
            rows = slab[: stop - start]
            np.copyto(rows, self.present[start:stop])
            counts += row_weights[:, start:stop] @ rows
        return np.rint(counts).astype(np.int64)


#: Rows of a block's presence made floating at a time for :meth:`ModelBlock.present_counts` (2 MB of float32 at 546 features).
PRESENCE_SLAB_ROWS = 1024
#: Where :class:`ModelBlock` keeps its worker-local cache (an instance attribute outside its fields).
_PREPARED = "_prepared"
