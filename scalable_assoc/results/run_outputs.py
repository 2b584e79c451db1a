"""Reading a finished run's folder for export: its manifest, plan, results and feature table."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from scalable_assoc.errors import DataError
from scalable_assoc.plan.schema import Plan, load_plan
from scalable_assoc.results.harmonise import feature_set_digest


@dataclass(frozen=True)
class RunOutputs:
    """What sumstats reads from a run folder."""

    run_dir: Path
    manifest: dict[str, Any]
    plan: Plan
    results: pd.DataFrame
    features: pd.DataFrame


def read_run(run_dir: Path) -> RunOutputs:
    """The manifest, plan, results and feature table of a finished run (clear errors if any is missing).

    Parameters
    ----------
    run_dir
        Output folder of a finished ``scalable-assoc run``.

    Returns
    -------
    RunOutputs
        The folder, its ``manifest.json``, the run's plan (reloaded; refused if it
        changed since the run), ``results.parquet`` and ``features.parquet``.

    Raises
    ------
    DataError
        A file is missing, or the plan is gone or changed.
    """
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
    """The features a layer's transform ran over: the shared list's, or the kept ones (digest by :func:`feature_set_digest`).

    Parameters
    ----------
    run
        What :func:`read_run` read.
    layer
        A layer of the run.

    Returns
    -------
    dict
        ``from`` (``"feature list"`` or ``"kept features"``), ``sha256`` (the
        digest of the names), ``features`` (how many) and ``absent`` (listed
        features the layer's table lacks).
    """
    info = run.manifest.get("layers", {}).get(layer, {})
    listed = info.get("feature_list")
    if listed:
        return {"from": "feature list", "sha256": listed["names_sha256"], "features": listed["listed"], "absent": listed["absent"]}
    if "transform_features_sha256" in info:
        return {
            "from": "kept features",
            "sha256": info["transform_features_sha256"],
            "features": info.get("transform_features"),
            "absent": 0,
        }
    # a manifest written before the digest was recorded: the kept features of features.parquet
    features = run.features
    kept = features.loc[(features["layer"] == layer) & features["kept"].astype(bool), "feature"].astype(str)
    return {"from": "kept features", "sha256": feature_set_digest(kept), "features": int(len(kept)), "absent": 0}
