"""Batched numeric kernels (numpy/scipy only): designs, OLS for shared designs and per-feature masks."""

from scalable_assoc.models.design import CovariateDesign, factorise_covariates, project_out
from scalable_assoc.models.fits import ESTIMATED, STATUS_TEXT, FitStatus, SlopeFits, two_sided_p
from scalable_assoc.models.lmm import fit_random_intercept as fit_random_intercept
from scalable_assoc.models.logistic import PresenceBlock, fit_logistic_designs, fit_logistic_slopes
from scalable_assoc.models.ols import PreparedBlock, fit_design_batch, fit_exposure_slopes, prepare_block

__all__ = [
    "ESTIMATED",
    "CovariateDesign",
    "FitStatus",
    "STATUS_TEXT",
    "PreparedBlock",
    "PresenceBlock",
    "SlopeFits",
    "factorise_covariates",
    "fit_design_batch",
    "fit_exposure_slopes",
    "fit_logistic_designs",
    "fit_logistic_slopes",
    "prepare_block",
    "project_out",
    "two_sided_p",
]
