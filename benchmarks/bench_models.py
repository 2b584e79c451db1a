"""Each model on the reference study shape, next to its per-feature reference implementation.

Same simulated data (7,656 participants in families), same designs, one process,
one BLAS thread for both sides:

| model | ours | per-feature reference, timed on a sample and scaled |
|---|---|---|
| lm_nonzero | batched OLS on present values | statsmodels OLS on each feature's present participants |
| prevalence | batched logistic IRLS | statsmodels Logit |
| lmm | batched REML random intercept | statsmodels MixedLM (REML) |
| lm + cluster-robust | batched OLS, CR1 sandwich | statsmodels OLS(cov_type="cluster") |

Prints the times and ratios and writes ``benchmarks/results/<date>-<host>-models.json``.

    python benchmarks/bench_models.py [--participants 7656] [--species 400] [--sample 100] [--only MODEL ...] [--out FILE.json]
"""

from __future__ import annotations

import os

for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse
import json
import platform
import socket
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import statsmodels.api as sm
from bench_reference_study import kept_raw  # the script beside this one

from scalable_assoc import __version__
from scalable_assoc.engine.prepare import LayerWork, prepare_study
from scalable_assoc.models import (
    SlopeFits,
    factorise_covariates,
    fit_design_batch,
    fit_logistic_designs,
    fit_random_intercept,
    prepare_block,
)
from scalable_assoc.plan.schema import load_plan
from scalable_assoc.simulate import plan_yaml, simulate_study
from scalable_assoc.stats.transforms import apply_transform, nonzero_values, presence_indicator, sample_summaries


def layer_views(layer: LayerWork) -> dict[str, np.ndarray]:
    """The three views a run computes for one layer, in memory: transformed, non-zero, presence."""
    raw, pseudocount = kept_raw(layer)
    total, count = sample_summaries(raw, "clr", pseudocount)
    nonzero = nonzero_values(raw, 0.0)
    nz_total, nz_count = sample_summaries(nonzero, "clr", 0.0)
    return {
        "transformed": apply_transform(raw, "clr", pseudocount, total, count),
        "nonzero": apply_transform(nonzero, "clr", 0.0, nz_total, nz_count),
        "presence": presence_indicator(raw, 0.0),
    }


def best_of(repeats: int, run: Callable[[], int]) -> tuple[float, int]:
    """Best wall time of ``repeats`` calls and the regression count the call reports."""
    times = []
    count = 0
    for _ in range(repeats):
        started = time.perf_counter()
        count = run()
        times.append(time.perf_counter() - started)
    return min(times), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=7656)
    parser.add_argument("--species", type=int, default=400)
    parser.add_argument("--sample", type=int, default=100, help="reference regressions to time per model (MixedLM: a tenth)")
    parser.add_argument("--out", type=Path, help="write the JSON here (default benchmarks/results/<date>-<host>-models.json)")
    parser.add_argument("--only", nargs="+", choices=["lm_nonzero", "lm_cluster", "prevalence", "lmm"], help="time these models only")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="bench-models-"))
    simulated = simulate_study(folder / "study", participants=args.participants, n_species=args.species, n_pathways=10)
    plan_path = folder / "study" / "models.yaml"
    plan_path.write_text(plan_yaml(models=["lm"], cluster="family_id").replace("    pathways: pathways.tsv\n    gbm: gbm.tsv\n", ""))
    study = prepare_study(load_plan(plan_path), folder / "stores")
    layer = study.layers[0]
    views = layer_views(layer)
    designs = {key: factorise_covariates(d.matrix, d.names) for key, d in layer.designs.items()}
    groups: dict[str, list] = {}
    for analysis in layer.analyses:
        groups.setdefault(analysis.design_key, []).append(analysis)
    keys = list(groups)

    def exposures(key: str) -> tuple[np.ndarray, np.ndarray]:
        return np.stack([a.exposure for a in groups[key]]), np.array([a.binary for a in groups[key]])

    def ols(view: str, robust: bool) -> int:
        block = prepare_block(views[view])
        fits = fit_design_batch(
            [designs[k] for k in keys],
            [layer.designs[k].rows for k in keys],
            [exposures(k)[0] for k in keys],
            [exposures(k)[1] for k in keys],
            block,
            [layer.designs[k].clusters for k in keys] if robust else None,
        )
        return sum(f.beta.size for f in fits)

    def mixed() -> int:
        block = prepare_block(views["transformed"])
        count = 0
        for k in keys:
            fits, _ = fit_random_intercept(designs[k], *exposures(k), block, layer.designs[k].clusters, layer.designs[k].rows)
            count += fits.beta.size
        return count

    def logistic() -> int:
        fits: list[SlopeFits] = fit_logistic_designs(
            [designs[k] for k in keys],
            [layer.designs[k].rows for k in keys],
            [exposures(k)[0] for k in keys],
            [exposures(k)[1] for k in keys],
            views["presence"],
        )
        return sum(f.beta.size for f in fits)

    rng = np.random.default_rng(0)
    pairs = [(a, f) for a in layer.analyses for f in range(views["transformed"].shape[1])]

    def reference(kind: str, sample: int) -> float:
        """Seconds per regression of the per-feature statsmodels fit."""
        chosen = [pairs[i] for i in rng.integers(0, len(pairs), size=sample)]
        started = time.perf_counter()
        for analysis, feature in chosen:
            design = layer.designs[analysis.design_key]
            exog = np.column_stack([design.matrix, analysis.exposure])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if kind == "lm_nonzero":
                    sm.OLS(views["nonzero"][design.rows, feature], exog, missing="drop").fit()
                elif kind == "lm_cluster":
                    sm.OLS(views["transformed"][design.rows, feature], exog).fit(cov_type="cluster", cov_kwds={"groups": design.clusters})
                elif kind == "prevalence":
                    try:
                        sm.Logit(views["presence"][design.rows, feature], exog, missing="drop").fit(disp=0)
                    except Exception:  # noqa: BLE001  (separation errors count as a fit attempt)
                        pass
                elif kind == "lmm":
                    sm.MixedLM(views["transformed"][design.rows, feature], exog, groups=design.clusters).fit(reml=True)
        return (time.perf_counter() - started) / sample

    cases = {
        "lm_nonzero": (lambda: ols("nonzero", False), args.sample),
        "lm_cluster": (lambda: ols("transformed", True), args.sample),
        "prevalence": (logistic, args.sample),
        "lmm": (mixed, max(3, args.sample // 10)),
    }
    report = {}
    for name, (run, sample) in cases.items():
        if args.only and name not in args.only:
            continue
        try:
            ours, regressions = best_of(3, run)
        except ImportError as error:
            print(f"  {name}: not available ({error})")
            continue
        per_reference = reference(name, sample)
        scaled = per_reference * regressions
        report[name] = {
            "regressions": regressions,
            "ours_seconds": round(ours, 3),
            "reference_per_regression_ms": round(per_reference * 1e3, 3),
            "reference_scaled_seconds": round(scaled, 1),
            "reference_sampled": sample,
            "ratio": round(scaled / ours, 1),
        }
        print(
            f"  {name:<11} ours {ours:7.2f} s   statsmodels loop {scaled:9.1f} s ({per_reference * 1e3:.2f} ms x {regressions})   ratio "
            f"{scaled / ours:7.0f}x"
        )
    result = {
        "benchmark": "models",
        "date": date.today().isoformat(),
        "host": socket.gethostname(),
        "machine": {"platform": platform.platform(), "cores": len(os.sched_getaffinity(0))},
        "versions": {"scalable_assoc": __version__, "python": platform.python_version(), "numpy": np.__version__},
        "shape": {
            "participants": args.participants,
            "families": simulated.n_families,
            "features": views["transformed"].shape[1],
            "analyses": len(layer.analyses),
        },
        "models": report,
    }
    out = args.out or Path(__file__).parent / "results" / f"{date.today().isoformat()}-{socket.gethostname()}-models.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
