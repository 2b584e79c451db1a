"""Batched numeric kernels (numpy/scipy only): designs, OLS for shared designs and per-feature masks."""

from scalable_assoc.models.design import CovariateDesign, factorise_covariates, project_out
from scalable_assoc.models.ols import STATUS_TEXT, FitStatus, SlopeFits, fit_exposure_slopes

__all__ = [
    "CovariateDesign",
    "FitStatus",
    "STATUS_TEXT",
    "SlopeFits",
    "factorise_covariates",
    "fit_exposure_slopes",
    "project_out",
]
