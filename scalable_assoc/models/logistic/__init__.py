"""Batched logistic regression of feature presence (the prevalence model).

Model for every feature ``j`` and exposure ``e`` of one covariate design::

    logit P(feature j present in participant i) = z_i' gamma_j + x_ei beta_ej

over the design's participants, minus those whose presence of feature ``j`` is
missing.

Parametrisation. Newton's method runs on the orthonormal basis ``B = [Q, b_e]``
of the design (``Q`` from the design's QR, ``b_e = x_r / s_e`` the exposure with
the covariates projected out, as in the OLS kernel). It spans the same model as
``[covariates, exposure]``, so the fitted probabilities are identical, while its
Gram matrix is the identity (for complete features) whatever the scale of the
raw covariates (read depth ~1e7 included). The exposure slope is ``c / s_e``
with ``c`` the coefficient on ``b_e``, and its standard error likewise.

Method. Newton's method for every feature of a block at once:

* the start is the constant fit ``logit(prevalence)``, whose weights are
  constant, so its Fisher information and score have closed forms;
* an iteration is one pass over the participants, in chunks of rows that stay
  in cache. Per chunk, the Fisher information ``B' diag(w_j) B`` of every
  feature is ONE product ``P' W`` (``P`` the products of pairs of basis columns,
  ``W`` the chunk's weights, zero in missing cells), the scores ``B'(Y - M)``
  another; the ``(w, p, p)`` systems are then inverted as one stack;
* a feature has converged when its next step provably moves no linear predictor
  by more than ``tol``; it takes that step and is frozen. A double-precision pass
  also measures how each variance bends along the next step (``evaluate``'s
  ``bend_along``), so a step up to ``CORRECTED_STEP`` (1e-5) can be the last:
  the estimate takes it (what is left is of the order of its square) and the
  variance is moved along it to first order, to a relative 1e-9. Single-precision
  passes leave steps of ~3e-7, so the double pass after them is the last for most
  features instead of the one after that;
* a step that lowers the log-likelihood is halved until it does not. Short
  steps need no check: one that moves no linear predictor by more than 1.5
  cannot lower a logistic log-likelihood (see ``SAFE_STEP``);
* passes with long steps (far from the optimum, where only the direction
  matters) run in single precision; every estimate and variance comes from
  double-precision passes.

Firth's penalised likelihood is maximised the same way, with its modified
score ``B'(y - mu + h (1/2 - mu))`` (``h`` the hat-matrix diagonal) and its exact
Hessian, penalty curvature included: Fisher scoring alone crawls under complete
separation. Every step is checked against the penalised log-likelihood.

Separation (no finite maximum-likelihood estimate) is recognised two ways:
directly, when a level of a two-valued design column (a binary exposure, a
dummy covariate, or the whole sample via the intercept) has all its used
participants present or all absent, which is quasi-complete separation; and
by divergence, when Newton's iterations keep pushing some fitted probability
to numerically 0 or 1 (``|eta| > 30``) without converging. Those features are
refitted with Firth's penalised likelihood (``l + 0.5 log det I``, finite
whenever the design has full rank), whose estimate and standard error (from
the inverse Fisher information at the penalised estimate) are reported with
status FIRTH, or, with ``firth=False``, reported as SEPARATION without one.

Layout: :mod:`.tuning` (constants and why), :mod:`.packed` (the basis with its packed
pair products, missing cells, chunks of rows), :mod:`.passes` (a pass over the
participants; Newton's stacked solve), :mod:`.firth` (Firth's score, Hessian and
penalty), :mod:`.newton` (Newton's iterations), :mod:`.separation` (separation and
singularity from counts), :mod:`.designs` (the per-design driver and the public API).

Pure numpy/scipy: no Dask, no files, no pandas.
"""

from scalable_assoc.models.logistic.designs import PresenceBlock, fit_logistic_designs, fit_logistic_slopes
from scalable_assoc.models.logistic.tuning import MAX_ITERATIONS, MIN_EVENTS, TOLERANCE

__all__ = ["MAX_ITERATIONS", "MIN_EVENTS", "TOLERANCE", "PresenceBlock", "fit_logistic_designs", "fit_logistic_slopes"]
