"""What a person sees at the end of a run: where the results are and the top findings."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from scalable_assoc.results.summary import base_sets, sets_run


def _format_p(value: float) -> str:
    return f"{value:.2e}" if value < 1e-3 else f"{value:.4f}"


def run_report(
    out_dir: Path, results: pd.DataFrame, survival: pd.DataFrame, adjustment_order: Sequence[str], alpha: float, top: int = 5
) -> str:
    """A short plain-text report of a finished run: files, survival of adjustment, top findings per layer (and model).

    Each layer x exposure x model is read under its own base set, the first
    set in plan order it ran under (with ``analyses:`` blocks that need not be
    the plan's first set). The top findings are the ``top`` rows with the
    smallest q among every exposure's base-set results, per layer (and model).
    """
    ok = results["status"] == "ok"
    significant = results["q"].lt(alpha).fillna(False).to_numpy(dtype=bool)
    lines = [
        f"results in {out_dir}",
        f"  results.parquet / all_results.tsv: {len(results)} rows ({int(ok.sum())} estimated, {int((~ok).sum())} without estimate)",
        f"  significant_results.tsv: {int(significant.sum())} rows with q < {alpha}",
        "  adjustment_summary.tsv, adjustment_survival.tsv, features.parquet / features.tsv, manifest.json",
    ]
    runs = sets_run(results, adjustment_order)
    if len(survival):
        survival = survival.assign(base=base_sets(survival, runs))
        bases = list(dict.fromkeys(survival["base"]))
        totals = survival.groupby(["base", "adjustment"], sort=False)[["significant_base", "still_significant"]].sum()
        if len(bases) == 1:
            lines.append(f"associations significant under '{bases[0]}' that stay significant after further adjustment:")
        else:
            lines.append(
                "associations significant under each exposure's base set (the first it ran under) that stay significant after further "
                "adjustment:"
            )
        for (base_set, adjustment), row in totals.iterrows():
            total, kept = int(row["significant_base"]), int(row["still_significant"])
            share = f"{100 * kept / total:.0f}%" if total else "n/a"
            lines.append(f"  {'' if len(bases) == 1 else base_set + ' '}+ {adjustment}: {kept}/{total} ({share})")
    # Each significant row's base set, not every row's: a run at 100,000 features has 400,000 rows, few of them significant.
    candidates = results[significant]
    base_rows = candidates[candidates["adjustment"].to_numpy(dtype=object) == base_sets(candidates, runs)]
    if not len(base_rows):
        if significant.any():
            lines.append(
                f"no association reached the FDR threshold under its base adjustment set; {int(significant.sum())} did under "
                "later sets (significant_results.tsv)"
            )
        else:
            lines.append("no association reached the FDR threshold")
    # Per layer (and model), so a layer with weaker signals (species next to pathways) is still shown.
    several_models = results["model"].nunique() > 1
    for (layer, model), rows in base_rows.groupby(["layer", "model"], sort=False) if top > 0 else ():
        label = f"{layer}, {model}" if several_models else layer
        shown_bases = list(dict.fromkeys(rows["adjustment"]))
        # One base for every exposure of this layer: named in the heading; else on each line.
        which = f"{shown_bases[0]} adjustment" if len(shown_bases) == 1 else "each exposure under its base adjustment set"
        lines.append(f"top findings in {label} ({which}, by q):")
        best = rows.sort_values(["q", "p"], kind="stable").head(top)
        width = max(len(str(f)) for f in best["feature"])
        for _, row in best.iterrows():
            direction = "higher" if row["beta"] > 0 else "lower"
            under = f"  ({row['adjustment']})" if len(shown_bases) > 1 else ""
            lines.append(
                f"  {str(row['feature']):<{width}}  {direction:<6} in {row['exposure']:<10} "
                f"beta {row['beta']:+.3f}  q {_format_p(float(row['q']))}{under}"
            )
    return "\n".join(lines)
