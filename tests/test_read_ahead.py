"""Readers' block re-use (rebatch, reused_block) and the reader thread (read_ahead): same values, errors and clean-up."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from scalable_assoc.errors import DataError
from scalable_assoc.io.table_values import read_ahead, rebatch, reused_block


def _pieces() -> list[np.ndarray]:
    return [np.arange(i * 6, i * 6 + 6, dtype=float).reshape(3, 2) for i in range(7)]


def test_blocks_kept_by_the_consumer_are_never_overwritten() -> None:
    blocks = list(rebatch(iter(_pieces()), 3))
    assert len({id(block) for block in blocks}) == len(blocks)
    np.testing.assert_array_equal(np.hstack(blocks), np.hstack(_pieces()))


def test_a_block_let_go_is_filled_again_with_the_next_values() -> None:
    ids, copies = [], []
    for block in rebatch(iter(_pieces()), 3):
        ids.append(id(block))
        copies.append(block.copy())
        del block
    assert len(set(ids[:-1])) == 1  # every full block in one array; the last, narrower one is its own
    np.testing.assert_array_equal(np.hstack(copies), np.hstack(_pieces()))


def test_a_block_with_a_view_alive_is_not_reused() -> None:
    spare: list[np.ndarray] = []
    first = reused_block(spare, (2, 2))
    view = first[:, :1]
    address = id(first)
    del first
    assert id(reused_block(spare, (2, 2))) != address
    assert view.base is not None


def test_read_ahead_yields_the_items_then_raises_their_error() -> None:
    def items() -> Iterator[int]:
        yield 1
        yield 2
        raise DataError("bad cell")

    seen = []
    with pytest.raises(DataError, match="bad cell"):
        for item in read_ahead(items()):
            seen.append(item)
    assert seen == [1, 2]


def test_read_ahead_closes_its_items_when_the_consumer_stops() -> None:
    closed = []

    def items() -> Iterator[int]:
        try:
            yield from range(100)
        finally:
            closed.append(True)

    ahead = read_ahead(items(), depth=1)
    assert next(ahead) == 0
    ahead.close()  # waits for the thread, which closes items()
    assert closed == [True]
