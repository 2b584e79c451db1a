"""How long the HTML report takes to write: the reference study, and a run with 100,000 features.

Cases, each in its own process (so peak memory is the case's own):

- ``reference``: ``write_report`` on a finished reference-study run (``scalable-assoc
  simulate`` defaults, run with ``--no-report``), in-process (as the load allows: helper
  processes only on idle cores; then with one helper forced, as on an idle 2-core
  machine), and ``scalable-assoc report`` as a command (Python start-up included);
- ``wide``: a run folder with ``--features`` features x ``--exposures`` exposures x 2
  adjustment sets (the reference run's manifest and plan, synthetic ``results.parquet``,
  ``significant_results.tsv`` and ``adjustment_survival.tsv`` written as a run writes
  them: ``results_table``, ``adjustment_summary``, ``survival_readout``): each figure kind
  built and rendered (one process, one core), then the whole ``write_report``.

Prints a JSON line per case and writes them to ``--json``. Wall times on a shared
machine are noisy; CPU time (the process and its helper processes) and ``load`` (the
1-minute load average before the case) are recorded beside them.

    python benchmarks/bench_report.py [--run-dir RUN] [--features 100000] [--exposures 3] [--json out.json] [--label after]

Without ``--run-dir`` the reference study is simulated and run first (about a minute).
To measure an older revision, put its source first on ``PYTHONPATH`` (``git archive REV
| tar -x -C DIR``; ``PYTHONPATH=DIR python benchmarks/bench_report.py ...``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

KINDS = ("heatmap", "qq_plot", "volcano", "forest", "survival_chart")


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _timed(action: Any) -> dict[str, float]:
    wall, own, children = time.perf_counter(), _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN)
    action()
    return {
        "wall_s": round(time.perf_counter() - wall, 3),
        "cpu_s": round(_cpu(resource.RUSAGE_SELF) - own + _cpu(resource.RUSAGE_CHILDREN) - children, 3),
    }


def _peak_mb() -> float:
    return round(max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024, 1)


def _cli() -> list[str]:
    return [sys.executable, "-m", "scalable_assoc.cli"]


def _same_code() -> dict[str, Any]:
    """Subprocess options so that ``python -m scalable_assoc.cli`` runs the scalable_assoc this process imported, not the cwd's."""
    import scalable_assoc

    root = str(Path(scalable_assoc.__file__).resolve().parents[1])
    return {"cwd": root, "env": {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}}


def reference_run(folder: Path) -> Path:
    """Simulate the reference study and run it without a report; returns the run folder."""
    subprocess.run([*_cli(), "simulate", "--out", str(folder / "study")], check=True, capture_output=True, **_same_code())
    subprocess.run(
        [*_cli(), "run", str(folder / "study" / "plan.yaml"), "--out", str(folder / "results"), "--no-report", "--top", "0"],
        check=True,
        capture_output=True,
        **_same_code(),
    )
    return folder / "results"


def wide_run(reference: Path, folder: Path, features: int, exposures: int, seed: int = 5) -> Path:
    """A run folder with ``features`` features of one layer x ``exposures`` exposures x 2 adjustment sets (synthetic rows, real formats)."""
    from scalable_assoc.io.atomic import write_parquet, write_tsv
    from scalable_assoc.results.gather import results_table
    from scalable_assoc.results.run_outputs import read_run
    from scalable_assoc.results.summary import adjustment_summary, survival_readout
    from scalable_assoc.stats.multitest import benjamini_hochberg_grouped

    run = read_run(reference)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("manifest.json", "features.parquet"):
        shutil.copy2(reference / name, folder / name)
    template = run.results.iloc[0]
    order = list(run.plan.adjustments)
    chosen_exposures = list(dict.fromkeys(run.results["exposure"]))[:exposures]
    sets = order[:2]
    rng = np.random.default_rng(seed)
    names = np.array([f"k__Bacteria|s__Synthetic_species_{i:06d}" for i in range(features)], dtype=object)
    blocks = []
    for exposure in chosen_exposures:
        effect = np.where(rng.random(features) < 0.01, rng.normal(0.0, 0.4, features), 0.0)
        for k, adjustment in enumerate(sets):
            se = rng.uniform(0.05, 0.15, features)
            beta = effect * (1.0 - 0.2 * k) + rng.normal(0.0, 1.0, features) * se
            t = beta / se
            p = 2.0 * stats.norm.sf(np.abs(t))
            blocks.append(
                pd.DataFrame(
                    {
                        "feature": names,
                        "exposure": exposure,
                        "adjustment": adjustment,
                        "beta": beta,
                        "se": se,
                        "t": t,
                        "p": p,
                        "analysis_id": f"{exposure}-{adjustment}",
                    }
                )
            )
    rows = pd.concat(blocks, ignore_index=True)
    results = pd.DataFrame({column: pd.Series([template[column]] * len(rows), dtype=run.results[column].dtype) for column in run.results})
    for column in rows:
        results[column] = rows[column].to_numpy()
    results["layer"], results["model"] = str(template["layer"]), "lm"
    family = (results["layer"] + "|" + results["exposure"] + "|" + results["adjustment"] + "|" + results["model"]).to_numpy()
    results["q"] = pd.array(benjamini_hochberg_grouped(results["p"].to_numpy(dtype=float), family), dtype="Float64")
    write_parquet(folder / "results.parquet", results_table(results))
    alpha = run.plan.fdr.alpha
    summary = adjustment_summary(results, order, alpha)
    write_tsv(folder / "significant_results.tsv", results[results["q"].lt(alpha).fillna(False).to_numpy(dtype=bool)])
    write_tsv(folder / "adjustment_summary.tsv", summary)
    write_tsv(folder / "adjustment_survival.tsv", survival_readout(summary, order))
    return folder


def case_reference(run_dir: Path, repeats: int) -> dict[str, Any]:
    from scalable_assoc.report.html import write_report

    timings = [_timed(lambda: write_report(run_dir)) for _ in range(repeats)]
    two_cores: list[dict[str, float]] = []
    try:
        import scalable_assoc.report.rendering as rendering
    except ImportError:  # before the helpers existed
        rendering = None
    if rendering is not None:  # as on an idle 2-core machine, whatever the load now: one helper process
        automatic, rendering.free_cores = rendering.free_cores, lambda most=4: 2
        try:
            two_cores = [_timed(lambda: write_report(run_dir)) for _ in range(repeats)]
        finally:
            rendering.free_cores = automatic
    command = _timed(lambda: subprocess.run([*_cli(), "report", str(run_dir)], check=True, capture_output=True, **_same_code()))
    rows = len(pd.read_parquet(run_dir / "results.parquet", columns=["p"]))
    return {
        "case": "reference",
        "rows": rows,
        "write_report": timings,
        "write_report_best_wall_s": min(t["wall_s"] for t in timings),
        "write_report_one_helper": two_cores,
        "command": command,
        "report_html_mb": round((run_dir / "report.html").stat().st_size / 1e6, 2),
        "peak_rss_mb": _peak_mb(),
    }


def case_wide(run_dir: Path) -> dict[str, Any]:
    """Each figure kind built and rendered on one core, then the whole report."""
    import scalable_assoc.report.figures as figures_module
    from scalable_assoc.report.html import write_report
    from scalable_assoc.results.run_outputs import read_run

    render_one = getattr(figures_module, "render_figure", None) or figures_module._render  # before: _render
    run = read_run(run_dir)
    survival = pd.read_csv(run_dir / "adjustment_survival.tsv", sep="\t")
    built: dict[str, float] = dict.fromkeys(KINDS, 0.0)
    captured: list[tuple[str, Any]] = []
    originals = {kind: getattr(figures_module, kind) for kind in KINDS}

    def wrap(kind: str, function: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.process_time()
            out = function(*args, **kwargs)
            built[kind] += time.process_time() - start
            captured.append((kind, out[0] if isinstance(out, tuple) else out))
            return out

        return timed

    def keep(figure: Any) -> tuple[bytes, bytes]:
        return b"", b""

    for kind, function in originals.items():
        setattr(figures_module, kind, wrap(kind, function))
    patched = (
        {"_render": keep}
        if not hasattr(figures_module, "render_figures")
        else {"render_figures": lambda fs, workers=None: [keep(f) for f in fs]}
    )
    saved = {name: getattr(figures_module, name) for name in patched}
    for name, value in patched.items():
        setattr(figures_module, name, value)
    try:
        figures_module.run_figures(run.results, survival, list(run.plan.adjustments), run.plan.fdr.alpha, 30)
    finally:
        for kind, function in originals.items():
            setattr(figures_module, kind, function)
        for name, value in saved.items():
            setattr(figures_module, name, value)
    kinds: dict[str, dict[str, float]] = {}
    for kind, figure in captured:
        start = time.process_time()
        svg, png = render_one(figure)
        kinds[kind] = {
            "build_cpu_s": round(built[kind], 3),
            "render_cpu_s": round(time.process_time() - start, 3),
            "svg_kb": round(len(svg) / 1e3),
            "png_kb": round(len(png) / 1e3),
        }
    whole = _timed(lambda: write_report(run_dir))
    return {
        "case": "wide",
        "rows": len(run.results),
        "features": int(run.results["feature"].nunique()),
        "figures": kinds,
        "write_report": whole,
        "report_html_mb": round((run_dir / "report.html").stat().st_size / 1e6, 2),
        "peak_rss_mb": _peak_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, help="a finished reference-study run (default: simulate and run one)")
    parser.add_argument("--features", type=int, default=100_000)
    parser.add_argument("--exposures", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--label", default="")
    parser.add_argument("--cases", default="reference,wide", help="comma-separated: reference, wide")
    parser.add_argument("--case", choices=("reference", "wide"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case == "reference":
        print(json.dumps(case_reference(args.run_dir, args.repeats)))
        return
    if args.case == "wide":
        print(json.dumps(case_wide(args.run_dir)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-report-") as scratch:
        work = Path(scratch)
        reference = Path(args.run_dir) if args.run_dir else reference_run(work)
        copy = work / "reference-copy"  # the report is written into the run folder: leave the given one as it was
        shutil.copytree(reference, copy)
        wide = wide_run(copy, work / "wide", args.features, args.exposures)
        measured = []
        for case, folder in (("reference", copy), ("wide", wide)):
            if case not in args.cases.split(","):
                continue
            load = os.getloadavg()[0]
            out = subprocess.run(
                [sys.executable, __file__, "--case", case, "--run-dir", str(folder), "--repeats", str(args.repeats)],
                check=True,
                capture_output=True,
                text=True,
            )
            row = {"label": args.label, "load_before": round(load, 2), **json.loads(out.stdout.strip().splitlines()[-1])}
            print(json.dumps(row), flush=True)
            measured.append(row)
    if args.json:
        args.json.write_text(json.dumps(measured, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
