"""Tuning constants of the logistic kernel: defaults, thresholds and the precision rules of Newton's passes.

Each value says why it is what it is; the modules of the kernel import them from here.
The thresholds shared with the OLS kernels live in :mod:`scalable_assoc.models.thresholds`.
"""

#: Defaults of :func:`fit_logistic_slopes` (and of :func:`fit_logistic_designs`, which uses them):
#: fewest participants with, and without, the feature for an estimate; Newton iterations
#: per fit; the longest final step that needs no variance correction (see ``tol``).
MIN_EVENTS = 5
MAX_ITERATIONS = 100
TOLERANCE = 1e-10
#: |linear predictor| beyond which a fitted probability is numerically 0 or 1
#: (1 - expit(30) ~ 1e-13, about R's "fitted probabilities numerically 0 or 1").
ETA_DIVERGED = 30.0
#: Consecutive iterations beyond ``ETA_DIVERGED`` that make a fit diverging: an
#: overshoot is corrected in an iteration or two, while under separation the
#: predictor grows by about one unit per iteration forever.
DIVERGED_ITERATIONS = 3
#: Iterations before the divergence rule applies: under separation the predictor
#: grows by about one unit per iteration, so it cannot pass ``ETA_DIVERGED``
#: much earlier, while the early iterations are where harmless overshoots happen.
DIVERGENCE_CHECKS_FROM = 10
#: A fit still iterating at ``max_iter`` counts as separated (rather than merely
#: not converged) when some used participant's |eta| exceeds this.
ETA_SEPARATED_AT_END = 15.0
#: A Newton step that moves no linear predictor by more than this cannot lower the
#: log-likelihood, so it needs no check. Along the step, f(1) - f(0) >= g (1 -
#: (e^M - 1 - M) / M^2) with g = U'I^-1 U >= 0 the Newton decrement and M the
#: largest move, because |d log w / d eta| = |1 - 2 mu| <= 1 bounds how fast the
#: weights, hence the curvature, can grow; the bracket is positive for M < ~1.79.
SAFE_STEP = 1.5
#: A pass runs in single precision when every live feature's step (its bound on
#: the largest move of a linear predictor) exceeds this: a Newton step that long
#: leaves an error of ~1e-7 or more (about a tenth of its square on the reference
#: study), so the next steps are no shorter than the ~1e-7 rounding single
#: precision leaves in them, none of them is taken as final (only steps from
#: double-precision scores are), and the next double-precision pass removes that
#: rounding with the rest of the error (what it leaves is the square of ~1e-7).
SINGLE_PRECISION_STEP = 1e-3
#: A pass computes the Fisher information's product in single precision when every
#: live feature's step exceeds this, unless it follows a single-precision pass (see
#: ``newton``), even if the rest is double: its error only perturbs the next steps
#: by ~1e-7 of themselves, and such passes are followed by at least one more (whose
#: information is exact, for the variance; a feature that converges anyway gets its
#: variance recomputed exactly).
EXACT_FISHER_STEP = 1e-4
#: A pass computes the log-likelihood of all its features when more than one in this
#: many needs it for a step check; otherwise those few get a pass of their own.
CHECKED_TOGETHER = 4
#: Longest final step where the pass measured the variance's first-order change along
#: it: the estimate takes the step (what is left is of the order of its square times a
#: curvature ratio, ~1e-13) and the variance moves along it to first order (what is left,
#: ~1e-12 relative, plus ~1e-3 of the correction for measuring it with the previous
#: pass's direction: below 1e-9). A single-precision pass leaves steps of ~3e-7, so the
#: double pass after one can be the last.
CORRECTED_STEP = 1e-5
#: Largest relative error tolerated in a corrected variance from measuring its change
#: along the previous pass's direction (see ``newton``); the rest of its error is of
#: the order of the step squared.
CORRECTED_VARIANCE = 1e-9
#: Participants below which counts of 0/1 values summed in single precision are exact.
EXACT_SINGLE_COUNTS = 1 << 24
#: Step halvings tried before a feature is given up as not converging.
MAX_HALVINGS = 30
#: Relative decrease of the (penalised) log-likelihood tolerated before halving
#: a step: far above its rounding, far below any decrease that matters. Values
#: from single-precision passes carry ~1e-7 relative rounding, hence the wider one.
OBJECTIVE_SLACK = 1e-10
OBJECTIVE_SLACK_SINGLE = 1e-5
#: Cells (participants x features) per chunk of a pass: the chunk's temporaries
#: stay in cache, so the elementwise work runs at compute speed, not memory speed;
#: at least ``CHUNK_ROWS`` participants, so that narrow passes (few features) are
#: not dominated by the per-chunk overhead.
CHUNK_CELLS = 1 << 17
CHUNK_ROWS = 256
