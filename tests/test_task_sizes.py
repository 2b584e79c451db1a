"""The scheduler sees the real size of the results the fit tasks share, so fits run where their inputs are."""

from __future__ import annotations

import numpy as np
from dask.sizeof import sizeof

from scalable_assoc.engine.tasks import ModelBlock, SharedDesign
from scalable_assoc.models.design import factorise_covariates


def test_model_block_counts_its_arrays() -> None:
    values = np.zeros((200, 30))
    present = np.zeros((200, 30), dtype=bool)
    assert sizeof(ModelBlock(values, present)) >= values.nbytes + present.nbytes


def test_shared_design_counts_its_arrays() -> None:
    rng = np.random.default_rng(1)
    matrix = np.column_stack([np.ones(100), rng.normal(size=(100, 3))])
    design = factorise_covariates(matrix, ("(intercept)", "a", "b", "c"))
    rows = np.arange(100)
    assert sizeof(SharedDesign("k", rows, design, None)) >= rows.nbytes + design.covariates.nbytes + design.q.nbytes
