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
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from scalable_assoc import __version__
from scalable_assoc.errors import DataError, UserInputError
from scalable_assoc.io.atomic import file_checksum, write_json, write_parquet
from scalable_assoc.models.fits import too_few_carriers
from scalable_assoc.models.pooled import CrossProducts
from scalable_assoc.plan.schema import OLS_MODELS, OlsOptions, Plan, load_plan
from scalable_assoc.results.harmonise import feature_set_digest
from scalable_assoc.results.signing import (
    SIGNATURE_FIELD,
    SigningKey,
    VerifyKey,
    load_signing_key,
    load_verify_key,
    sign_sidecar,
    verify_sidecar,
)

FORMAT = "scalable_assoc.sumstats/1"

#: Columns of the summary-statistics file, in order.
SUMMARY_COLUMNS = ("layer", "feature", "exposure", "adjustment", "model", "beta", "se", "p", "n", "n_cases", "n_controls", "prevalence")

#: Rows of the sufficient-statistics file: one per (lm analysis, feature).
SUFFICIENT_SCHEMA = pa.schema(
    [
        pa.field("layer", pa.string()),
        pa.field("feature", pa.string()),
        pa.field("exposure", pa.string()),
        pa.field("adjustment", pa.string()),
        pa.field("analysis_id", pa.string()),
        pa.field("n", pa.int64()),
        pa.field("n_cases", pa.int64()),
        pa.field("n_controls", pa.int64()),
        # exposure first, then covariate columns (every categorical level as a dummy)
        pa.field("terms", pa.list_(pa.string())),
        # upper triangle of the centred Z'Z (row-major, numpy triu_indices order)
        pa.field("zz", pa.list_(pa.float64())),
        pa.field("zy", pa.list_(pa.float64())),
        pa.field("yy", pa.float64()),
    ]
)


@dataclass(frozen=True)
class DisclosureRules:
    """Which rows may leave the cohort; defaults are DataSHIELD's.

    ``min_cases`` (``sumstats --min-cases``, default 0: off) also withholds rows
    with fewer cases or controls than that: a cohort that ran with a lower
    ``run --min-cases`` keeps its small groups out of the consortium's files.
    """

    min_cell_count: int = 3
    max_parameter_fraction: float = 0.33
    min_cases: int = 0

    def __post_init__(self) -> None:
        if self.min_cell_count < 0:
            raise UserInputError(f"--min-cell-count must be >= 0, got {self.min_cell_count}")
        if self.min_cases < 0:
            raise UserInputError(f"--min-cases must be >= 0, got {self.min_cases}")
        if not 0 < self.max_parameter_fraction <= 1:
            raise UserInputError(f"--max-parameter-fraction must be in (0, 1], got {self.max_parameter_fraction}")


def cross_products_table(
    layer: str, feature_ids: Sequence[str], exposure: str, adjustment: str, analysis_id: str, terms: tuple[str, ...], products: CrossProducts
) -> pa.Table:
    """One analysis' cross-products for ``m`` features as rows of :data:`SUFFICIENT_SCHEMA`."""
    m = len(feature_ids)
    q = products.zz.shape[1]
    c = len(terms)

    def matrix_column(values: np.ndarray, width: int) -> pa.Array:
        offsets = pa.array(np.arange(0, (m + 1) * width, width, dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(values).ravel(), pa.float64()))

    binary = products.n_cases >= 0
    return pa.table(
        {
            "layer": pa.array([layer] * m, pa.string()),
            "feature": pa.array(list(feature_ids), pa.string()),
            "exposure": pa.array([exposure] * m, pa.string()),
            "adjustment": pa.array([adjustment] * m, pa.string()),
            "analysis_id": pa.array([analysis_id] * m, pa.string()),
            "n": pa.array(products.n, pa.int64()),
            "n_cases": pa.array(products.n_cases, pa.int64(), mask=~binary),
            "n_controls": pa.array(products.n_controls, pa.int64(), mask=~binary),
            "terms": pa.array([list(terms)] * m, pa.list_(pa.string())),
            "zz": matrix_column(products.zz, q),
            "zy": matrix_column(products.zy, c),
            "yy": pa.array(products.yy, pa.float64(), from_pandas=True),
        },
        schema=SUFFICIENT_SCHEMA,
    )


def carrier_reason(results: pd.DataFrame, rules: DisclosureRules) -> np.ndarray:
    """Per results row: '' or why its carrier counts keep it from leaving the cohort.

    Read from the run's columns ``n, n_cases, n_controls, n_present,
    n_present_cases`` and ``model``: fewer than ``min_cell_count`` participants
    with the feature; 1 .. ``min_cell_count - 1`` without it (not ``lm_nonzero``,
    whose participants all have it); for a binary exposure, a non-zero cell of
    present/absent x case/control below ``min_cell_count``. Rows whose counts
    were not recorded (results of an older version) are withheld too.
    """
    k = rules.min_cell_count
    n = results["n"].to_numpy(dtype=np.float64, na_value=np.nan)
    cases = results["n_cases"].to_numpy(dtype=np.float64, na_value=-1).astype(np.int64)
    controls = results["n_controls"].to_numpy(dtype=np.float64, na_value=-1).astype(np.int64)
    present_column = results["n_present"] if "n_present" in results else pd.Series(np.nan, index=results.index)
    present_cases_column = results["n_present_cases"] if "n_present_cases" in results else pd.Series(np.nan, index=results.index)
    present = present_column.to_numpy(dtype=np.float64, na_value=np.nan)
    present_cases = present_cases_column.to_numpy(dtype=np.float64, na_value=np.nan)
    unknown = np.isnan(present) | np.isnan(n) | ((cases >= 0) & np.isnan(present_cases))
    present_counts = np.nan_to_num(present, nan=0).astype(np.int64)
    participants = np.nan_to_num(n, nan=0).astype(np.int64)
    present_case_counts = np.nan_to_num(present_cases, nan=-1).astype(np.int64)
    # lm_nonzero's participants all carry the feature: only the present cells count there.
    with_absent = (results["model"] != "lm_nonzero").to_numpy()
    few = too_few_carriers(participants, present_counts, k, with_absent, present_case_counts, cases, controls)
    reason = np.full(len(results), "", dtype=object)
    reason[few] = f"fewer than {k} participants with or without the feature (overall or among cases or controls)"
    reason[unknown] = "carrier counts not recorded (results of an older version; run again)"
    return reason


def _withheld_reason(
    n: np.ndarray, cases: np.ndarray, controls: np.ndarray, parameters: np.ndarray, rules: DisclosureRules, carriers: np.ndarray | None = None
) -> np.ndarray:
    """Per row: '' (may leave) or the rule it breaks.

    Disclosure rules first (cases, then controls, then ``carriers``: the
    reasons of :func:`carrier_reason`), then ``--min-cases`` (cases, then
    controls), then parameters. ``cases``/``controls`` are -1 for continuous
    exposures (only the parameter and carrier rules apply).
    """
    reason = np.full(n.shape, "", dtype=object)
    too_many = parameters > rules.max_parameter_fraction * n
    reason[too_many] = f"model parameters above {rules.max_parameter_fraction:g} x n"
    reason[(controls >= 0) & (controls < rules.min_cases)] = f"fewer than {rules.min_cases} controls (--min-cases)"
    reason[(cases >= 0) & (cases < rules.min_cases)] = f"fewer than {rules.min_cases} cases (--min-cases)"
    if carriers is not None:
        reason[carriers != ""] = carriers[carriers != ""]
    reason[(controls >= 0) & (controls < rules.min_cell_count)] = f"fewer than {rules.min_cell_count} controls"
    reason[(cases >= 0) & (cases < rules.min_cell_count)] = f"fewer than {rules.min_cell_count} cases"
    return reason


def _counts(reasons: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(reasons[reasons != ""].astype(str), return_counts=True)
    return {str(v): int(c) for v, c in zip(values, counts, strict=True)}


def analysis_spec(plan: Plan) -> dict[str, Any]:
    """What must agree between cohorts for their estimates to be combined: the analysis, not the file paths.

    The OLS models' options (standard errors, p reference) appear only where
    they differ from the defaults, so cohorts that use none compare as before.
    """
    spec: dict[str, Any] = {
        "layers": {
            layer.name: {
                "transform": layer.preprocess.transform,
                "pseudocount": layer.preprocess.pseudocount,
                "min_prevalence": layer.preprocess.min_prevalence,
                "presence_threshold": layer.presence_threshold,
                "models": list(layer.models),
            }
            for layer in plan.layers
        },
        "exposures": {e.name: {"cases": e.cases, "controls": e.controls, "column": e.column} for e in plan.exposures},
        "adjustments": {name: list(columns) for name, columns in plan.adjustments.items()},
        "categorical": sorted(plan.categorical),
        "cluster": plan.cluster,
        "fdr_by": list(plan.fdr.by),
    }
    chosen = {model: asdict(getattr(plan, model)) for model in OLS_MODELS if getattr(plan, model) != OlsOptions()}
    if chosen:
        spec["ols_options"] = chosen
    return spec


def spec_hash(spec: dict[str, Any]) -> str:
    """Stable hash of an :func:`analysis_spec`."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def sidecar_path(path: Path) -> Path:
    """``cohort.parquet`` -> ``cohort.json``."""
    return path.with_suffix(".json")


def sufficient_path(path: Path) -> Path:
    """``cohort.parquet`` -> ``cohort.sufficient.parquet``."""
    return path.with_name(path.stem + ".sufficient.parquet")


@dataclass(frozen=True)
class RunOutputs:
    """What sumstats reads from a run folder."""

    run_dir: Path
    manifest: dict[str, Any]
    plan: Plan
    results: pd.DataFrame
    features: pd.DataFrame


def read_run(run_dir: Path) -> RunOutputs:
    """The manifest, plan, results and feature table of a finished run (clear errors if any is missing)."""
    run_dir = Path(run_dir)
    manifest_path = run_dir / "manifest.json"
    if not manifest_path.is_file():
        raise DataError(f"{run_dir}: no manifest.json; is this the output folder of a finished 'scalable-assoc run'?")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    for name in ("results.parquet", "features.parquet"):
        if not (run_dir / name).is_file():
            raise DataError(f"{run_dir}: {name} is missing; run 'scalable-assoc run' again to complete this folder")
    plan_file = Path(manifest["plan"])
    if not plan_file.is_file():
        raise DataError(f"{run_dir}: the run's plan {plan_file} no longer exists")
    plan = load_plan(plan_file, allow_outside_paths=bool(manifest.get("allow_outside_paths", False)))
    if plan.content_hash() != manifest.get("plan_hash"):
        raise DataError(f"{run_dir}: the plan {plan_file} changed since this run; run it again before exporting")
    return RunOutputs(run_dir, manifest, plan, pd.read_parquet(run_dir / "results.parquet"), pd.read_parquet(run_dir / "features.parquet"))


def transform_feature_set(run: RunOutputs, layer: str) -> dict[str, Any]:
    """The features a layer's transform ran over: the shared list's, or the kept ones (digest by :func:`feature_set_digest`)."""
    info = run.manifest.get("layers", {}).get(layer, {})
    listed = info.get("feature_list")
    if listed:
        return {"from": "feature list", "sha256": listed["names_sha256"], "features": listed["listed"], "absent": listed["absent"]}
    if "transform_features_sha256" in info:
        return {"from": "kept features", "sha256": info["transform_features_sha256"], "features": info.get("transform_features"), "absent": 0}
    # a manifest written before the digest was recorded: the kept features of features.parquet
    features = run.features
    kept = features.loc[(features["layer"] == layer) & features["kept"].astype(bool), "feature"].astype(str)
    return {"from": "kept features", "sha256": feature_set_digest(kept), "features": int(len(kept)), "absent": 0}


def summary_table(run: RunOutputs, rules: DisclosureRules) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The rows that may leave, and what was withheld and why."""
    results = run.results
    parameters_by_analysis = {a["analysis_id"]: a["parameters"] for a in run.manifest["analyses"]}
    estimated = results["p"].notna().to_numpy()
    frame = results[estimated].reset_index(drop=True)
    n = frame["n"].to_numpy(dtype=np.int64)
    cases = frame["n_cases"].to_numpy(dtype=np.float64, na_value=-1).astype(np.int64)
    controls = frame["n_controls"].to_numpy(dtype=np.float64, na_value=-1).astype(np.int64)
    parameters = frame["analysis_id"].map(parameters_by_analysis).to_numpy(dtype=np.int64)
    reasons = _withheld_reason(n, cases, controls, parameters, rules, carrier_reason(frame, rules))
    frame = frame[reasons == ""].reset_index(drop=True)
    features = run.features
    blank = (features["n_present"] < rules.min_cell_count) | (features["n_observed"] - features["n_present"] < rules.min_cell_count)
    prevalence = features["prevalence"].where(~blank)
    lookup = pd.Series(prevalence.to_numpy(), index=pd.MultiIndex.from_frame(features[["layer", "feature"]]))
    frame["prevalence"] = lookup.reindex(pd.MultiIndex.from_frame(frame[["layer", "feature"]])).to_numpy()
    report = {
        "rows_in_run": int(len(results)),
        "rows_without_estimate": int((~estimated).sum()),
        "rows_withheld": int((reasons != "").sum()),
        "withheld_by_reason": _counts(reasons),
        "rows_exported": int(len(frame)),
        "prevalence_blanked_features": int(blank.sum()),
    }
    return frame[list(SUMMARY_COLUMNS)], report


def sufficient_carrier_reason(table: pa.Table, results: pd.DataFrame, rules: DisclosureRules) -> np.ndarray:
    """:func:`carrier_reason` of each cross-product row, from the run's ``lm`` row of the same (layer, analysis, feature).

    A cross-product row without such a results row is withheld (its carriers are unknown).
    """
    keys = ["layer", "analysis_id", "feature"]
    linear = results[results["model"] == "lm"]
    reasons = pd.Series(carrier_reason(linear, rules), index=pd.MultiIndex.from_frame(linear[keys].astype(str)))
    # one reason per key (a key repeated would be a categorical exposure's rows, which have no cross-products)
    reasons = reasons[~reasons.index.duplicated(keep="first")]
    wanted = pd.MultiIndex.from_arrays([table.column(key).to_pylist() for key in keys])
    found = reasons.reindex(wanted)
    return found.fillna("carrier counts not recorded (results of an older version; run again)").to_numpy(dtype=object)


def disclose_sufficient(
    table: pa.Table, manifest: dict[str, Any], rules: DisclosureRules, results: pd.DataFrame | None = None
) -> tuple[pa.Table, dict[str, Any]]:
    """The cross-product rows that may leave (same rules as the summary rows), sorted by key.

    ``results`` (the run's ``results.parquet``) gives the carrier counts of the
    carrier rule (:func:`carrier_reason`); without it every row is withheld,
    since a cross-product row alone cannot show it rests on enough carriers.
    """
    parameters_by_analysis = {a["analysis_id"]: a["parameters"] for a in manifest["analyses"]}
    n = table.column("n").to_numpy(zero_copy_only=False)
    cases = table.column("n_cases").fill_null(-1).to_numpy(zero_copy_only=False)
    controls = table.column("n_controls").fill_null(-1).to_numpy(zero_copy_only=False)
    parameters = np.array([parameters_by_analysis[a] for a in table.column("analysis_id").to_pylist()], dtype=np.int64)
    if results is None:
        carriers = np.full(table.num_rows, "carrier counts not given (pass the run's results)", dtype=object)
    else:
        carriers = sufficient_carrier_reason(table, results, rules)
    reasons = _withheld_reason(n, cases, controls, parameters, rules, carriers)
    usable = ~np.isnan(pc.fill_null(table.column("yy"), np.nan).to_numpy(zero_copy_only=False))
    keep = (reasons == "") & usable
    kept = table.filter(pa.array(keep)).sort_by([("layer", "ascending"), ("exposure", "ascending"), ("adjustment", "ascending"), ("feature", "ascending")])
    report = {
        "rows": int(table.num_rows),
        "rows_without_estimate": int((~usable).sum()),
        "rows_withheld": int((reasons != "").sum()),
        "withheld_by_reason": _counts(reasons),
        "rows_exported": int(kept.num_rows),
    }
    return kept, report


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
    """
    if not cohort or any(ch in cohort for ch in "/\\\n\t"):
        raise UserInputError(f"--cohort {cohort!r}: give a plain name (no slashes, tabs or newlines)")
    out = Path(out)
    if out.suffix != ".parquet":
        raise UserInputError(f"--out {out}: the summary statistics file must end in .parquet")
    key = load_signing_key(sign_key) if sign_key is not None and not isinstance(sign_key, SigningKey) else sign_key
    sidecar_path(out).unlink(missing_ok=True)
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
    sidecar = {
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
        "disclosure": {"min_cell_count": rules.min_cell_count, "max_parameter_fraction": rules.max_parameter_fraction, "min_cases": rules.min_cases},
        "withheld": withheld,
        "files": files,
    }
    if key is not None:
        sidecar[SIGNATURE_FIELD] = sign_sidecar(sidecar, key)
    write_json(sidecar_path(out), sidecar)
    return sidecar


@dataclass(frozen=True)
class CohortFile:
    """A verified summary-statistics file and its sidecar."""

    path: Path
    cohort: str
    sidecar: dict[str, Any]

    def summary(self) -> pd.DataFrame:
        """The summary rows (:data:`SUMMARY_COLUMNS`)."""
        return pd.read_parquet(self.path)

    def sufficient(self) -> pa.Table:
        """The cross-product rows; a clear error if this file was exported without ``--sufficient``."""
        entry = self.sidecar["files"].get("sufficient")
        if entry is None:
            raise DataError(f"{self.path}: exported without --sufficient; re-export with 'scalable-assoc sumstats RUN_DIR --sufficient'")
        return pq.read_table(self.path.with_name(entry["name"]), schema=SUFFICIENT_SCHEMA)


def open_cohort_file(
    path: Path, need_sufficient: bool = False, verify_key: Path | VerifyKey | Sequence[Path | VerifyKey] | None = None
) -> CohortFile:
    """Open a summary-statistics file, refusing it unless its sidecar exists and every checksum matches.

    With ``verify_key`` (a shared-secret file or an Ed25519 public key in PEM,
    see :mod:`scalable_assoc.results.signing`) the sidecar must also carry a
    signature made with that key over its current content (with several keys,
    e.g. one public key per cohort: with the one it names); without it a
    signed or unsigned file is accepted on its checksums.
    """
    path = Path(path)
    keys = None
    if verify_key is not None:
        given = [verify_key] if isinstance(verify_key, str | Path | VerifyKey) else list(verify_key)
        keys = [k if isinstance(k, VerifyKey) else load_verify_key(Path(k)) for k in given]
    if not path.is_file():
        raise DataError(f"{path}: no such summary-statistics file")
    side = sidecar_path(path)
    if not side.is_file():
        raise DataError(f"{path}: its sidecar {side.name} is missing; was it written by 'scalable-assoc sumstats'?")
    try:
        sidecar = json.loads(side.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"{side}: not valid JSON ({error})") from None
    if sidecar.get("format") != FORMAT:
        raise DataError(f"{side}: format {sidecar.get('format')!r} is not {FORMAT!r}")
    if keys is not None:
        verify_sidecar(sidecar, keys, path, side.name)
    files = sidecar.get("files", {})
    entries = [("summary", path)]
    if need_sufficient:
        if "sufficient" not in files:
            raise DataError(f"{path}: exported without --sufficient; re-export with 'scalable-assoc sumstats RUN_DIR --sufficient'")
        entries.append(("sufficient", path.with_name(files["sufficient"]["name"])))
    for kind, file in entries:
        if not file.is_file():
            raise DataError(f"{file}: missing (listed in {side.name})")
        if file_checksum(file) != files[kind]["sha256"]:
            raise DataError(f"{file}: checksum does not match its sidecar {side.name}; the file was changed or damaged after export")
    return CohortFile(path, str(sidecar["cohort"]), sidecar)


#: Transforms whose values depend on which features they run over (a sample's CLR mean, TSS/AST total).
SET_DEPENDENT_TRANSFORMS = ("clr", "tss", "ast")
#: Transforms that add the pseudocount.
PSEUDOCOUNT_TRANSFORMS = ("clr", "log")


def check_compatible(cohorts: Sequence[CohortFile], allow_mismatch: bool) -> list[str]:
    """Refuse cohorts whose analyses differ (transform, models, exposures, adjustments ...) or whose
    set-dependent transforms (CLR, TSS, AST) ran over different feature sets, unless allowed.

    Returns warnings: the differences when ``allow_mismatch``, and differing
    realised pseudocounts (never refused).
    """
    names = [c.cohort for c in cohorts]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise DataError(f"cohort name(s) {', '.join(duplicated)} appear in more than one file; export each cohort under its own --cohort name")
    first = cohorts[0]
    problems = []
    for other in cohorts[1:]:
        if other.sidecar["analysis_hash"] == first.sidecar["analysis_hash"]:
            continue
        a, b = first.sidecar["analysis"], other.sidecar["analysis"]
        differing = sorted(_differences(a, b))
        problems.append(f"{other.path} (cohort {other.cohort}) differs from {first.path} (cohort {first.cohort}) in " + ", ".join(differing[:8]))
    set_problems = _feature_set_problems(cohorts)
    if (problems or set_problems) and not allow_mismatch:
        parts = []
        if problems:
            parts.append("; ".join(problems) + ". Cohorts must run the same analysis (same transforms, models, exposures and adjustments)")
        if set_problems:
            parts.append(
                "; ".join(set_problems) + ". Run every cohort with the same feature list ('scalable-assoc run PLAN --features FILE', "
                "for example one cohort's results/features.parquet, or the plan key 'features') and export again"
            )
        raise DataError(". ".join(parts) + "; or pass --allow-mismatch to combine them anyway")
    return problems + set_problems + _pseudocount_warnings(cohorts)


def _layers(cohorts: Sequence[CohortFile]) -> list[str]:
    return list(dict.fromkeys(name for c in cohorts for name in c.sidecar.get("layers", {})))


def _transform(cohort: CohortFile, layer: str) -> str | None:
    return cohort.sidecar.get("analysis", {}).get("layers", {}).get(layer, {}).get("transform")


def _feature_set_problems(cohorts: Sequence[CohortFile]) -> list[str]:
    """One message per layer whose set-dependent transform ran over different feature sets in different cohorts."""
    problems = []
    for layer in _layers(cohorts):
        having = [c for c in cohorts if layer in c.sidecar.get("layers", {})]
        if len(having) < 2 or not any(_transform(c, layer) in SET_DEPENDENT_TRANSFORMS for c in having):
            continue
        groups: dict[str | None, list[CohortFile]] = {}
        for cohort in having:
            feature_set = cohort.sidecar["layers"][layer].get("transform_features") or {}
            groups.setdefault(feature_set.get("sha256"), []).append(cohort)
        if len(groups) < 2:
            continue
        described = []
        for digest, members in groups.items():
            who = ", ".join(c.cohort for c in members)
            if digest is None:
                described.append(f"{who}: not recorded (exported by an older version; export again)")
                continue
            feature_set = members[0].sidecar["layers"][layer]["transform_features"]
            described.append(f"{who}: {feature_set.get('features')} {feature_set.get('from', 'features')}, sha256 {digest[:12]}")
        transforms = "/".join(sorted({str(_transform(c, layer)) for c in having}))
        problems.append(
            f"layer '{layer}': cohorts {', '.join(c.cohort for c in having)} transformed ({transforms}) over different feature sets "
            f"({'; '.join(described)}), so their values and betas are on different scales"
        )
    return problems


def _pseudocount_warnings(cohorts: Sequence[CohortFile]) -> list[str]:
    """One warning per layer whose transform adds a pseudocount that differs between cohorts."""
    warnings = []
    for layer in _layers(cohorts):
        used = {
            c.cohort: c.sidecar["layers"][layer].get("pseudocount_used")
            for c in cohorts
            if layer in c.sidecar.get("layers", {}) and _transform(c, layer) in PSEUDOCOUNT_TRANSFORMS
        }
        values = [float(v) for v in used.values() if v is not None]
        if len(values) < 2 or np.allclose(values, values[0], rtol=1e-12, atol=0.0):
            continue
        listed = ", ".join(f"{name} {value:.3g}" for name, value in used.items() if value is not None)
        warnings.append(
            f"layer '{layer}': the realised pseudocounts differ between cohorts ({listed}); values of zero-heavy features "
            "depend on it, so their betas are not on one scale (a fixed number as preprocess.pseudocount in the plan makes them equal)"
        )
    return warnings


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            out += _differences(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    return [] if a == b else [prefix or "(root)"]
