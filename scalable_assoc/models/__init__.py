"""Batched numeric kernels (numpy/scipy only): designs, OLS for shared designs and per-feature masks."""

from scalable_assoc.models.design import CovariateDesign, factorise_covariates, project_out
from scalable_assoc.models.ols import STATUS_TEXT, FitStatus, PreparedBlock, SlopeFits, fit_exposure_slopes, prepare_block

__all__ = [
    "CovariateDesign",
    "FitStatus",
    "STATUS_TEXT",
    "PreparedBlock",
    "SlopeFits",
    "factorise_covariates",
    "fit_exposure_slopes",
    "prepare_block",
    "project_out",
]
