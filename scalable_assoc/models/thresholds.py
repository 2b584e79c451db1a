"""Numerical thresholds shared by the OLS, categorical-term and logistic kernels.

One home for each value, so the kernels agree on when a design is singular, an
exposure is explained by the covariates, or a feature is constant.

Pure Python: no imports.
"""

#: Smallest eigenvalue of a feature's Gram matrix in the orthonormal basis below
#: which its design counts as singular (design condition number above ~1e5).
GRAM_SINGULAR = 1e-10
#: Exposure (or column of interest) residual norm, relative to its centred norm,
#: below which it counts as explained by the covariates.
EXPOSURE_COLLINEAR = 1e-8
#: Centred sum of squares below this fraction of y'y: the feature is constant.
CONSTANT_FEATURE = 1e-12
