"""The report's Community diversity section: alpha diversity by case/control and PERMANOVA, checked in a real browser.

Uses ``tests/browser.py`` (headless chromium through playwright; skipped when missing unless
``SCALABLE_ASSOC_REQUIRE_BROWSER=1``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from browser import check_report_in_browser
from reference_model import read_layer

from scalable_assoc import write_report
from scalable_assoc.engine.run import run_study
from scalable_assoc.simulate import SimulatedStudy
from scalable_assoc.testing import write_plan

pytestmark = pytest.mark.cluster

PLAN = """
name: diversity_report
data:
  metadata: {metadata}
  layers:
    species: {layer}
preprocess: {{min_prevalence: 0.1, transform: clr, pseudocount: half_min}}
exposures:
  MDD: {{cases: "MDD == 1", controls: "no_disorder == 1"}}
  ssri: {{cases: "ssri == 1", controls: "ssri == 0"}}
  age: {{column: age}}
covariates: {{categorical: [sex]}}
adjustments:
  none: []
  base: [sex, bmi]
models: [lm]
min_cases: 5
diversity: {{alpha: [shannon], beta: {{distances: [aitchison], permutations: 19}}}}
"""


@pytest.fixture(scope="module")
def diversity_run(tmp_path_factory: pytest.TempPathFactory, client, small_study: SimulatedStudy) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("diversity_report")
    plan = write_plan(folder, PLAN.format(metadata=small_study.out_dir / "metadata.tsv", layer=small_study.out_dir / "species.tsv"))
    out = folder / "out"
    run_study(plan, out, client=client, allow_outside_paths=True)
    return out, write_report(out, features_top=0)


def test_the_alpha_values_file_holds_every_used_sample_and_metric(diversity_run: tuple[Path, Path], small_study: SimulatedStudy) -> None:
    out, _ = diversity_run
    values = pd.read_parquet(out / "alpha_diversity.parquet")
    assert list(values.columns) == ["sample_id", "species:shannon"]
    table = read_layer(small_study.out_dir / "species.tsv")  # samples x features
    table.index = table.index.astype(str)
    x = table.reindex(values["sample_id"]).to_numpy(dtype=float)
    p = x / x.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        shannon = -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(axis=1)
    shannon[np.isnan(x).any(axis=1)] = np.nan
    np.testing.assert_allclose(values["species:shannon"].to_numpy(dtype=float), shannon, rtol=1e-10)


def test_the_diversity_section_in_a_browser(diversity_run: tuple[Path, Path]) -> None:
    out, report = diversity_run
    results = pd.read_parquet(out / "results.parquet", columns=["layer", "model"])
    groups = len(results.drop_duplicates())
    significant = len(pd.read_csv(out / "significant_results.tsv", sep="\t"))

    def read(page) -> dict[str, object]:
        return {
            "rows": page.eval_on_selector_all(
                "#permanova-table tr", "rows => rows.map(r => Array.from(r.children).map(c => c.textContent))"
            ),
            "contents": page.eval_on_selector_all("nav.contents a", "links => links.map(a => a.getAttribute('href'))"),
            "kinds": page.eval_on_selector_all("#diversity ~ figure", "fs => fs.map(f => [f.dataset.kind, f.id])"),
        }

    # heatmap, qq, volcano, forest, survival per layer x model (species and alpha:species), one alpha figure, the PERMANOVA figure
    links, seen = check_report_in_browser(report, 5 * groups + 2, significant, read)
    assert "#diversity" in seen["contents"]
    kinds = dict((kind, name) for kind, name in seen["kinds"] if kind in ("alpha", "permanova"))
    assert kinds == {"alpha": "figure-alpha_species_shannon", "permanova": "figure-permanova"}
    assert (out / "figures" / "alpha_species_shannon.png").is_file() and (out / "figures" / "permanova.svg").is_file()
    assert {"permanova.tsv", "alpha_diversity.parquet"} <= set(links)
    _assert_permanova_table_equals_the_file(seen["rows"], out)


def _assert_permanova_table_equals_the_file(shown: list[list[str]], out: Path) -> None:
    permanova = pd.read_csv(out / "permanova.tsv", sep="\t")
    header, body = shown[0], shown[1:]
    assert header == ["layer", "distance", "exposure", "adjustment", "n", "R\u00b2", "F", "p", "permutations"]
    assert len(body) == len(permanova) == 3 * 2  # three exposures x two adjustment sets, one distance
    for cells, row in zip(body, permanova.itertuples(index=False), strict=True):
        assert cells[:4] == [row.layer, row.distance, row.exposure, row.adjustment]
        assert int(cells[4]) == row.n and int(cells[8]) == row.permutations
        for cell, value in zip(cells[5:8], (row.r2, row.f, row.p), strict=True):
            assert cell == (f"{value:.4g}" if np.isfinite(value) else "NA"), (cell, value)
