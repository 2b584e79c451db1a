"""``manifest.json``: what a run was made from and how, for resuming, exports and people."""

from __future__ import annotations

import platform

import dask
import distributed
import numpy as np
import pandas as pd

from scalable_assoc import __version__
from scalable_assoc.engine.filters import LayerFilter
from scalable_assoc.engine.prepare import LayerWork, PreparedAnalysis, PreparedStudy
from scalable_assoc.io.atomic import file_checksum
from scalable_assoc.results.harmonise import feature_set_digest


def layer_manifest(layer: LayerWork, f: LayerFilter) -> dict:
    """Filter, transform and feature set of one layer, as ``manifest.json`` records them.

    ``transform_features_sha256`` identifies the features the transform ran over
    (the list's names, absent ones included, or the kept features): cohorts whose
    CLR/TSS/AST values are comparable have the same one. With ``filter: after_transform``
    the transform ran over all the layer's features (``filter`` is then recorded);
    ``clr_reference`` names the layer whose features gave the CLR denominator.
    """
    listed = layer.listed
    preprocess = layer.spec.preprocess
    entry = {
        "features_total": f.n_features,
        "features_kept": f.n_kept,
        "pseudocount": f.pseudocount,
        "samples": int(layer.sample_positions.size),
        "feature_list_used": listed is not None,
        "feature_list": listed.manifest_entry() if listed is not None else None,
        "transform_features": listed.n_listed if listed is not None else f.n_kept,
        "transform_features_sha256": listed.digest if listed is not None else feature_set_digest(i for ids in f.kept_ids for i in ids),
        # What the table's reader left out (HUMAnN's UNMAPPED rows, ...) and sample IDs as written -> as used.
        "notes": list(layer.store.notes),
        "renamed_samples": dict(layer.store.renamed_samples),
    }
    if preprocess.transform_all_features:
        # the CLR/TSS/AST ran over every feature of the layer; a feature list only chose what was fitted
        entry["filter"] = preprocess.filter
        entry["transform_features"] = f.n_features
        entry["transform_features_sha256"] = feature_set_digest(layer.store.feature_ids)
    if preprocess.clr_reference is not None:
        entry["clr_reference"] = preprocess.clr_reference
    return entry


def run_manifest(
    study: PreparedStudy,
    filters: dict[str, LayerFilter],
    chunks_total: int,
    chunks_reused: int,
    timings: dict[str, float],
    client_info: dict,
    chunk_features: int | None = None,
    intersect_samples: bool = False,
) -> dict:
    """What ``manifest.json`` records of a run.

    Version, plan, inputs and their checksums, filters, analyses, chunks, timings, cluster, environment.
    """
    plan = study.plan
    analyses = [_analysis_manifest(study, a) for layer in study.layers for a in layer.analyses]
    return {
        "package": "scalable_assoc",
        "version": __version__,
        "plan": str(plan.source),
        "plan_name": plan.name,
        "plan_hash": study.plan_hash,
        # the plan may name files outside its folder (run --allow-outside-paths); sumstats reopens it the same way
        "allow_outside_paths": plan.allow_outside_paths,
        "inputs": {
            "metadata": {"path": str(plan.metadata), "sha256": study.metadata_sha256},
            **{
                f"layer:{layer.spec.name}": {"path": str(layer.spec.path), "sha256": layer.input_sha256, "store": str(layer.store.path)}
                for layer in study.layers
            },
        },
        # a shared feature list (run --features or the plan's features:), else None
        "features": {"path": str(study.features), "sha256": file_checksum(study.features)} if study.features is not None else None,
        # the minimum group size enforced: the plan's, unless run --min-cases overrode it for this run
        "min_cases": {"plan": plan.min_cases, "used": study.min_cases},
        "layers": {layer.spec.name: layer_manifest(layer, filters[layer.spec.name]) for layer in study.layers},
        "cluster": plan.cluster,
        "analyses": analyses,
        # everything the run warned about (also in its log)
        "warnings": list(study.warnings),
        # as given to the run (None: automatic); a later export re-opens the same stores
        "chunk_features": chunk_features,
        "intersect_samples": intersect_samples,
        "designs": sum(len(layer.designs) for layer in study.layers),
        "chunks_total": chunks_total,
        "chunks_reused": chunks_reused,
        "timings_seconds": {k: round(v, 3) for k, v in timings.items()},
        "dask": client_info,
        "environment": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pandas": pd.__version__,
            "dask": dask.__version__,
            "distributed": distributed.__version__,
        },
    }


def _analysis_manifest(study: PreparedStudy, a: PreparedAnalysis) -> dict:
    """One analysis as the manifest lists it (what sumstats and meta later compare)."""
    layer = next(layer for layer in study.layers if layer.spec.name == a.key.layer)
    return {
        "analysis_id": a.key.analysis_id,
        "layer": a.key.layer,
        "exposure": a.key.exposure,
        "adjustment": a.key.adjustment,
        "model": a.key.model,
        "n": a.n,
        "n_cases": a.n_cases,
        "n_controls": a.n_controls,
        # intercept + exposure + covariate columns (dummies included): the disclosure rule's p
        "parameters": int(layer.designs[a.design_key].matrix.shape[1]) + max(len(a.levels) - 1, 1),
        "covariates": list(a.covariates),
        "left_out_identical_to_exposure": list(a.left_out),
        "left_out_constant": list(a.constant),
        "design": a.design_key,
        # lm / lm_nonzero: standard errors (classical | cluster) and, for cluster-robust ones, the p reference
        "ols_options": {"se": a.ols.se, "reference": a.ols.reference if a.ols.cluster_robust else None} if a.ols is not None else None,
        # clusters of the plan's cluster column among the participants, where the model uses them (lmm, se: cluster)
        "n_clusters": a.n_clusters,
    }
