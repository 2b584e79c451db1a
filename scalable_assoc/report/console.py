"""What a person sees at the end of a run: where the results are and the top findings."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd


def _format_p(value: float) -> str:
    return f"{value:.2e}" if value < 1e-3 else f"{value:.4f}"


def run_report(out_dir: Path, results: pd.DataFrame, survival: pd.DataFrame, adjustment_order: Sequence[str], alpha: float, top: int = 5) -> str:
    """A short plain-text report of a finished run: files, survival of adjustment, top findings per layer."""
    ok = results["status"] == "ok"
    significant = results["q"].lt(alpha).fillna(False).to_numpy(dtype=bool)
    lines = [
        f"results in {out_dir}",
        f"  results.parquet / all_results.tsv: {len(results)} rows ({int(ok.sum())} estimated, {int((~ok).sum())} without estimate)",
        f"  significant_results.tsv: {int(significant.sum())} rows with q < {alpha}",
        "  adjustment_summary.tsv, adjustment_survival.tsv, manifest.json",
    ]
    if len(adjustment_order) > 1 and len(survival):
        base = adjustment_order[0]
        lines.append(f"associations significant under '{base}' that stay significant after further adjustment:")
        totals = survival.groupby("adjustment", sort=False)[["significant_base", "still_significant"]].sum()
        for adjustment, row in totals.iterrows():
            total, kept = int(row["significant_base"]), int(row["still_significant"])
            share = f"{100 * kept / total:.0f}%" if total else "n/a"
            lines.append(f"  + {adjustment}: {kept}/{total} ({share})")
    base_rows = results[(results["adjustment"] == adjustment_order[0]) & significant] if adjustment_order else results[significant]
    if not len(base_rows):
        lines.append("no association reached the FDR threshold")
    # Per layer (and model), so a layer with weaker signals (species next to pathways) is still shown.
    several_models = results["model"].nunique() > 1
    for (layer, model), rows in base_rows.groupby(["layer", "model"], sort=False):
        label = f"{layer}, {model}" if several_models else layer
        lines.append(f"top findings in {label} ({adjustment_order[0] if adjustment_order else 'all'} adjustment, by q):")
        best = rows.sort_values(["q", "p"], kind="stable").head(top)
        width = max(len(str(f)) for f in best["feature"])
        for _, row in best.iterrows():
            direction = "higher" if row["beta"] > 0 else "lower"
            lines.append(
                f"  {str(row['feature']):<{width}}  {direction:<6} in {row['exposure']:<10} "
                f"beta {row['beta']:+.3f}  q {_format_p(float(row['q']))}"
            )
    return "\n".join(lines)
