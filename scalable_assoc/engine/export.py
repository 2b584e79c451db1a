"""``scalable-assoc sumstats`` as one library call: a run's summary statistics (and cross-products) under disclosure control.

It lives in the engine because the cross-products are computed on a Dask
cluster (:func:`~scalable_assoc.engine.sufficient.sufficient_statistics`);
everything else is :mod:`scalable_assoc.results.sumstats`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distributed.security import Security

from scalable_assoc.engine.profiles import ClusterProfile
from scalable_assoc.engine.sufficient import sufficient_statistics
from scalable_assoc.results.disclosure import DisclosureRules
from scalable_assoc.results.run_outputs import read_run
from scalable_assoc.results.signing import SigningKey, load_signing_key
from scalable_assoc.results.sumstats import check_export_names, write_sumstats


def export_sumstats(
    run_dir: str | Path,
    cohort: str,
    out: str | Path,
    *,
    rules: DisclosureRules | None = None,
    sufficient: bool = False,
    sign_key: str | Path | SigningKey | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    security: Security | None = None,
    dashboard: str | None = None,
    cluster_profile: ClusterProfile | str | Path | None = None,
) -> dict[str, Any]:
    """Export a finished run's summary statistics, as ``scalable-assoc sumstats`` does.

    The signing key is read first (a bad key file fails before any work), then
    the run (:func:`~scalable_assoc.results.run_outputs.read_run`); with
    ``sufficient`` the ``lm`` cross-products are computed from the run's inputs
    on a cluster; then the files and the sidecar are written
    (:func:`~scalable_assoc.results.sumstats.write_sumstats`).

    Parameters
    ----------
    run_dir
        Output folder of a finished ``scalable-assoc run``.
    cohort
        The cohort's name (no slashes, tabs or newlines).
    out
        Summary-statistics file to write (``.parquet``); its sidecar ``<stem>.json``
        and, with ``sufficient``, ``<stem>.sufficient.parquet`` are written beside it.
    rules
        Disclosure rules; None: :class:`~scalable_assoc.results.disclosure.DisclosureRules` defaults (DataSHIELD's).
    sufficient
        Also export the cross-products of every ``lm`` analysis (for ``pool``).
    sign_key
        Signing key or its file (shared secret, or Ed25519 private key in PEM); None: unsigned.
    scheduler, workers, security, dashboard, cluster_profile
        Where the cross-products are computed, as for
        :func:`~scalable_assoc.engine.sufficient.sufficient_statistics` (unused without ``sufficient``).

    Returns
    -------
    dict
        The sidecar as written: ``files`` (name, sha256, rows per file),
        ``withheld`` (rows withheld by reason per file), ``signature`` when signed, ...

    Examples
    --------
    >>> from scalable_assoc import export_sumstats, run_study
    >>> for name, cohort in biobanks.studies.items():  # each biobank runs and exports at home
    ...     _ = run_study(cohort.plan_path, cohort.out_dir / "results", workers=1, min_cases=3)
    ...     sidecar = export_sumstats(cohort.out_dir / "results", name, tmp / f"{name}.parquet", sufficient=True, workers=1)
    >>> sorted(sidecar["files"])
    ['sufficient', 'summary']
    """
    rules = DisclosureRules() if rules is None else rules
    check_export_names(cohort, out)  # before the cross-products' cluster work, not after it
    key = sign_key if sign_key is None or isinstance(sign_key, SigningKey) else load_signing_key(Path(sign_key))
    run = read_run(Path(run_dir))
    products = None
    if sufficient:
        products = sufficient_statistics(
            run, scheduler=scheduler, workers=workers, security=security, dashboard=dashboard, cluster_profile=cluster_profile
        )
    return write_sumstats(run, cohort, Path(out), rules, products, sign_key=key)
