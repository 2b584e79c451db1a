"""Whole-command cases of the benchmark suite (``suite.py``): what a user waits for, next to its alternative.

* The reference study with its stores already converted: the three tables are added
  once to one store (``scalable-assoc ingest --layer``, timed as a case of its own)
  and a second plan naming that store runs into a fresh output folder, so nothing but
  the conversion is reused.
* The whole CLI next to limma's ``lmFit`` alone: 5,000 species x 7,656 participants
  without missing values, 6 analyses (3 disorders x 2 adjustment sets), our command end
  to end (TSV in, every output written) against limma fitting the same transformed
  matrix and designs, nothing else (``suite_r.R``).
* The groups measured by a script of their own (``bench_*.py --json OUT``): each script
  writes ``{"cases": [...], "aims": [...]}``; the suite runs it as one measured process
  and adds its cases and aims to the report.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

#: The plan of the limma comparison: one layer, 3 exposures x 2 adjustment sets = 6 analyses.
LIMMA_PLAN = """\
name: limma-comparison
data:
  metadata: {metadata}
  layers:
    species: {species}
preprocess: {{min_prevalence: 0.05, transform: clr, pseudocount: half_min}}
exposures:
  MDD:    {{cases: "MDD == 1", controls: "no_disorder == 1"}}
  AnyDep: {{cases: "AnyDep == 1", controls: "no_disorder == 1"}}
  AnyAnx: {{cases: "AnyAnx == 1", controls: "no_disorder == 1"}}
covariates: {{categorical: [sex]}}
adjustments:
  base: [age, sex, bmi, bristol_stool, read_depth]
  meds: [base, any_ptd, ppi, laxatives, metformin]
fdr: {{method: bh, by: [layer, exposure, adjustment], alpha: 0.05}}
"""

#: The groups measured by their own script: script, what it measures, its option naming a folder for its data (kept
#: and reused with the suite's --data-dir), and further options.
SCRIPT_GROUPS = {
    "convert": ("bench_convert.py", "table conversion (TSV -> Zarr): time and client memory", "--data-dir", ()),
    "ingest_sums": (
        "bench_ingest_sums.py",
        "per-sample sums kept at ingest: cost at ingest, filter phase saved (20,000 features; 100,000 in the chunks group)",
        "--dir",
        ("--features", "20000"),
    ),
    "chunks": (
        "bench_chunks.py",
        "per-chunk read, decompress, transform and fit against their floors; 100,000 features with 1 and 2 workers",
        "--data-dir",
        (),
    ),
    "meta": ("bench_meta.py", "meta-analysis and pooled model at consortium scale", "--dir", ("--keep",)),
    "startup": ("bench_startup.py", "imports, cluster start, command to first task", "--data-dir", ()),
}


def console_script() -> str:
    """The ``scalable-assoc`` command installed beside this interpreter, else the one on PATH.

    A version manager's shim on PATH (pyenv's is a bash script running ``pyenv exec``) added 0.2-0.5 s to each
    command on the reference machine: the suite measures the project's command, as a virtual environment runs it.
    """
    beside = Path(sys.executable).parent / "scalable-assoc"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("scalable-assoc") or "scalable-assoc"


def ingested_plan(study: Path, store: Path, plan_out: Path, ingest: Callable[[list[str]], dict]) -> tuple[Path, dict]:
    """Add the study's three tables to one store (``ingest --layer``) and write a plan naming it; the ingest measurements.

    ``ingest(command)`` runs and measures one command. The plan is the study's own with
    each layer's table replaced by the store and its layer.
    """
    import yaml

    if store.exists():
        shutil.rmtree(store)
    plan = yaml.safe_load((study / "plan.yaml").read_text())
    cli = console_script()
    measured: dict = {"wall_s": 0.0, "cpu_s": 0.0, "peak_rss_mb": 0.0, "peak_rss_main_mb": 0.0, "peak_rss_largest_child_mb": 0.0}
    measured["other_processes_cores"] = 0.0
    for name, table in plan["data"]["layers"].items():
        one = ingest([cli, "ingest", str(study / table), "--out", str(store), "--layer", name])
        for key in ("wall_s", "cpu_s"):
            measured[key] = round(measured[key] + one[key], 3)
        for key in ("peak_rss_mb", "peak_rss_main_mb"):
            measured[key] = max(measured[key], one[key])
        plan["data"]["layers"][name] = {"path": str(store), "store_layer": name}
    plan["data"]["metadata"] = str(study / plan["data"]["metadata"])
    plan["name"] = f"{plan['name']}-from-store"
    plan_out.write_text(yaml.safe_dump(plan, sort_keys=False))
    return plan_out, measured


def limma_study(folder: Path, participants: int, species: int) -> Path:
    """Simulate the limma comparison's study (no missing values) and write its plan; the plan's path."""
    from scalable_assoc.simulate import simulate_study

    study = folder / "study"
    if not (study / "species.tsv").is_file():
        simulate_study(study, participants=participants, n_species=species, n_pathways=10, missing_abundance_fraction=0.0)
    plan = study / "plan-limma.yaml"
    plan.write_text(LIMMA_PLAN.format(metadata=study / "metadata.tsv", species=study / "species.tsv"))
    return plan


def limma_check(r_folder: Path, features: int, analyses: int) -> dict:
    """Largest relative differences of limma's beta and se from ours, on the same matrix and designs."""
    ours_beta, ours_se = np.load(r_folder / "ours_beta.npy"), np.load(r_folder / "ours_se.npy")
    limma_beta = np.fromfile(r_folder / "limma_beta.bin", dtype="<f8").reshape((features, analyses), order="F")
    limma_se = np.fromfile(r_folder / "limma_se.bin", dtype="<f8").reshape((features, analyses), order="F")
    return {
        "beta": float(np.nanmax(np.abs(limma_beta - ours_beta) / np.maximum(np.abs(ours_beta), 1e-12))),
        "se": float(np.nanmax(np.abs(limma_se - ours_se) / ours_se)),
    }


def script_group(name: str, quick: bool, folder: Path, measure: Callable[[list[str], Path], dict], log: Path) -> dict | None:
    """Run ``bench_<name>.py --json`` as one measured process; its measurement with the script's cases and aims.

    None (with a message) when the script is absent, so the suite still runs the other groups.
    """
    script, _, data_option, options = SCRIPT_GROUPS[name]
    if not (HERE / script).is_file():
        print(f"  {name}: {script} not found, group skipped", flush=True)
        return None
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{name}.json"
    command = [sys.executable, str(HERE / script), "--json", str(out), data_option, str(folder / "data"), *options]
    measured = measure([*command, *(["--quick"] if quick else [])], log)
    measured["result"] = json.loads(out.read_text())
    return measured
