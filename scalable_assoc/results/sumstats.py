"""Summary statistics of one cohort's run, under disclosure control, with a checksummed sidecar.

What may leave a biobank (DataSHIELD-style rules, configurable):

* per layer x feature x exposure x adjustment x model: ``beta, se, p, n,
  n_cases, n_controls`` and the feature's prevalence, never sample IDs,
  residuals or fitted values;
* optionally (``--sufficient``) the within-cohort centred cross-products of each
  ``lm`` analysis (:mod:`scalable_assoc.models.pooled`), from which an exact
  pooled model is solved without individual data.

A row is withheld when its case or control count is below ``min_cell_count``
(DataSHIELD ``nfilter.tab``, 3) or its model has more parameters than
``max_parameter_fraction`` x n (``nfilter.glm``, 0.33). It is also withheld,
from the summary file and the cross-products alike, when among the model's
participants fewer than ``min_cell_count`` have the feature, between 1 and
``min_cell_count - 1`` lack it (not for ``lm_nonzero``, whose participants all
have it) or, for a binary exposure, any non-zero cell of feature present/absent
x case/control is below ``min_cell_count`` (the carrier counts of the run's
results, whatever the run's own ``min_carriers``): a single carrier's row would
disclose that person. A prevalence resting on fewer than ``min_cell_count``
participants with or without the feature is blanked. The sidecar counts every
withheld row by reason.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import pyarrow as pa

from scalable_assoc import __version__
from scalable_assoc.errors import UserInputError
from scalable_assoc.io.atomic import file_checksum, write_json, write_parquet
from scalable_assoc.results.cohort_files import CohortFile, open_cohort_file, open_cohorts
from scalable_assoc.results.compatibility import (
    PSEUDOCOUNT_TRANSFORMS,
    SET_DEPENDENT_TRANSFORMS,
    analysis_spec,
    check_compatible,
    spec_hash,
)
from scalable_assoc.results.disclosure import DisclosureRules, carrier_reason, disclose_sufficient, sufficient_carrier_reason, summary_table
from scalable_assoc.results.run_outputs import RunOutputs, read_run, transform_feature_set
from scalable_assoc.results.signing import SIGNATURE_FIELD, SigningKey, load_signing_key, sign_sidecar
from scalable_assoc.results.sumstats_format import (
    FORMAT,
    SUFFICIENT_SCHEMA,
    SUMMARY_COLUMNS,
    cross_products_table,
    sidecar_path,
    sufficient_path,
)

# The pieces of an export live in their own modules; their names stay importable from here.
__all__ = [
    "FORMAT",
    "PSEUDOCOUNT_TRANSFORMS",
    "SET_DEPENDENT_TRANSFORMS",
    "SUFFICIENT_SCHEMA",
    "SUMMARY_COLUMNS",
    "CohortFile",
    "DisclosureRules",
    "RunOutputs",
    "analysis_spec",
    "carrier_reason",
    "check_compatible",
    "cross_products_table",
    "disclose_sufficient",
    "open_cohort_file",
    "open_cohorts",
    "read_run",
    "sidecar_content",
    "sidecar_path",
    "spec_hash",
    "sufficient_carrier_reason",
    "sufficient_path",
    "summary_table",
    "transform_feature_set",
    "write_sumstats",
]


def check_export_names(cohort: str, out: str | Path) -> Path:
    """The export's cohort name and file, checked before any work: a plain name, a ``.parquet`` file; returns ``out`` as a path.

    Parameters
    ----------
    cohort
        The cohort's name.
    out
        The summary-statistics file to write.

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    UserInputError
        The name holds slashes, tabs or newlines, or the file does not end in ``.parquet``.
    """
    if not cohort or any(ch in cohort for ch in "/\\\n\t"):
        raise UserInputError(f"--cohort {cohort!r}: give a plain name (no slashes, tabs or newlines)")
    out = Path(out)
    if out.suffix != ".parquet":
        raise UserInputError(f"--out {out}: the summary statistics file must end in .parquet")
    return out


def write_sumstats(
    run: RunOutputs,
    cohort: str,
    out: Path,
    rules: DisclosureRules,
    sufficient: pa.Table | None = None,
    sign_key: Path | SigningKey | None = None,
) -> dict[str, Any]:
    """Write ``out`` (Parquet), optionally ``<stem>.sufficient.parquet``, and the sidecar ``<stem>.json``; return the sidecar.

    The sidecar is written last: a file without one, or whose checksum differs
    from it, is refused by ``meta`` and ``pool``. With ``sign_key`` (a key file,
    see :mod:`scalable_assoc.results.signing`: a shared secret or an Ed25519
    private key in PEM) the sidecar carries a signature over its content, which
    ``meta`` / ``pool --verify-key`` check.

    Parameters
    ----------
    run
        What :func:`read_run` read from the run's folder.
    cohort
        The cohort's name (no slashes, tabs or newlines).
    out
        The summary-statistics file to write; must end in ``.parquet``.
    rules
        The disclosure rules.
    sufficient
        The run's cross-products (``scalable_assoc.engine.sufficient.sufficient_statistics``),
        or None to export the summary rows only (an earlier cross-products file is removed).
    sign_key
        A signing key or its file, or None for an unsigned sidecar.

    Returns
    -------
    dict
        The sidecar as written (:func:`sidecar_content`, plus the signature).
    """
    out = check_export_names(cohort, out)
    key = load_signing_key(sign_key) if sign_key is not None and not isinstance(sign_key, SigningKey) else sign_key
    sidecar_path(out).unlink(missing_ok=True)
    files, withheld = _write_tables(run, out, rules, sufficient)
    sidecar = sidecar_content(run, cohort, rules, files, withheld)
    if key is not None:
        sidecar[SIGNATURE_FIELD] = sign_sidecar(sidecar, key)
    write_json(sidecar_path(out), sidecar)
    return sidecar


def _write_tables(run: RunOutputs, out: Path, rules: DisclosureRules, sufficient: pa.Table | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write the rows that may leave; return the sidecar's ``files`` and ``withheld`` entries."""
    summary, summary_report = summary_table(run, rules)
    write_parquet(out, summary)
    files: dict[str, Any] = {"summary": {"name": out.name, "sha256": file_checksum(out), "rows": int(len(summary))}}
    withheld: dict[str, Any] = {"summary": summary_report}
    if sufficient is not None:
        kept, sufficient_report = disclose_sufficient(sufficient, run.manifest, rules, run.results)
        path = sufficient_path(out)
        write_parquet(path, kept)
        files["sufficient"] = {"name": path.name, "sha256": file_checksum(path), "rows": int(kept.num_rows)}
        withheld["sufficient"] = sufficient_report
    else:
        sufficient_path(out).unlink(missing_ok=True)
    return files, withheld


def sidecar_content(
    run: RunOutputs, cohort: str, rules: DisclosureRules, files: dict[str, Any], withheld: dict[str, Any]
) -> dict[str, Any]:
    """The sidecar of an export, unsigned: what ran, what was withheld, and the files with their checksums.

    Parameters
    ----------
    run
        What :func:`read_run` read.
    cohort
        The cohort's name.
    rules
        The disclosure rules applied.
    files
        Per kind (``summary``, ``sufficient``): the file's name, SHA-256 and row count.
    withheld
        Per kind: the disclosure report (:func:`summary_table`, :func:`disclose_sufficient`).

    Returns
    -------
    dict
        JSON-ready, format :data:`FORMAT`.
    """
    spec = analysis_spec(run.plan)
    layers = {
        name: {
            **spec["layers"].get(name, {}),
            "pseudocount_used": info.get("pseudocount"),
            "features_total": info.get("features_total"),
            "features_kept": info.get("features_kept"),
            "samples": info.get("samples"),
            "transform_features": transform_feature_set(run, name),
        }
        for name, info in run.manifest.get("layers", {}).items()
    }
    return {
        "format": FORMAT,
        "cohort": cohort,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "package_version": __version__,
        "plan_name": run.manifest.get("plan_name"),
        "plan_hash": run.manifest.get("plan_hash"),
        "analysis": spec,
        "analysis_hash": spec_hash(spec),
        # reporting settings of the plan (not part of the analysis compared between cohorts)
        "fdr": {"by": list(run.plan.fdr.by), "alpha": run.plan.fdr.alpha},
        "min_cases": run.manifest.get("min_cases", {"plan": run.plan.min_cases, "used": run.plan.min_cases}),
        "layers": layers,
        "disclosure": {
            "min_cell_count": rules.min_cell_count,
            "max_parameter_fraction": rules.max_parameter_fraction,
            "min_cases": rules.min_cases,
        },
        "withheld": withheld,
        "files": files,
    }
