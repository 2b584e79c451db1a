"""limma-voom / limma-trend through Rscript against values from a direct R session (tests/reference/limma_methods/)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scalable_assoc.errors import DataError
from scalable_assoc.io.limma_r import LimmaJob, limma_unavailable, run_limma

REFERENCE = Path(__file__).parent / "reference" / "limma_methods"
UNAVAILABLE = limma_unavailable()
# CI installs Debian's r-base-core and r-bioc-limma and sets SCALABLE_ASSOC_REQUIRE_LIMMA=1: there a missing
# limma fails these tests instead of skipping them.
REQUIRE = os.environ.get("SCALABLE_ASSOC_REQUIRE_LIMMA") == "1"
needs_limma = pytest.mark.skipif(UNAVAILABLE is not None and not REQUIRE, reason=f"limma through R unavailable: {UNAVAILABLE}")


def test_limma_is_available_where_required() -> None:
    if REQUIRE:
        assert UNAVAILABLE is None, f"SCALABLE_ASSOC_REQUIRE_LIMMA=1 but {UNAVAILABLE}"


def _reference_job(methods: tuple[str, ...] = ("voom", "trend")) -> LimmaJob:
    counts = np.loadtxt(REFERENCE / "counts.tsv", delimiter="\t", dtype=np.int64)
    design = pd.read_csv(REFERENCE / "design.tsv", sep="\t")
    return LimmaJob(counts, [f"feature_{i:02d}" for i in range(counts.shape[1])], design, "disorder", methods)


def test_unavailable_without_rscript(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    reason = limma_unavailable()
    assert reason is not None and "Rscript is not on PATH" in reason


def test_malformed_jobs_are_refused_naming_the_job(tmp_path: Path) -> None:
    job = _reference_job()
    with pytest.raises(DataError, match=r"limma job 1 \(exposure 'smoking'\): the exposure is not a design column"):
        run_limma([job, LimmaJob(job.counts, job.feature_names, job.design, "smoking")], tmp_path)
    with pytest.raises(DataError, match="limma job 0 .*: the design has 23 rows, the counts 24 samples"):
        run_limma([LimmaJob(job.counts, job.feature_names, job.design.iloc[1:], "disorder")], tmp_path)
    with pytest.raises(DataError, match="non-negative integers"):
        run_limma([LimmaJob(job.counts.astype(float), job.feature_names, job.design, "disorder")], tmp_path)
    with pytest.raises(DataError, match="methods must be among voom, trend"):
        run_limma([LimmaJob(job.counts, job.feature_names, job.design, "disorder", ("edger",))], tmp_path)
    assert run_limma([], tmp_path) == []


@needs_limma
def test_voom_and_trend_match_a_direct_r_session(tmp_path: Path) -> None:
    # reference.tsv: topTable(coef = "disorder") of voom+lmFit+eBayes and log2-CPM(prior 3)+lmFit+eBayes(trend=TRUE), printed
    # with 17 significant digits by make_reference.R; only the TSV round trip separates ours from it: rtol 1e-12.
    reference = pd.read_csv(REFERENCE / "reference.tsv", sep="\t")
    job = _reference_job()
    # a second job (voom only, fewer features) in the same R process must not disturb the first
    other = LimmaJob(job.counts[:, :4], job.feature_names[:4], job.design, "age", ("voom",))
    first, second = run_limma([job, other], tmp_path / "limma")
    assert list(first.columns) == ["model", "feature", "beta", "p"]
    assert first["model"].tolist() == ["limma_voom"] * 10 + ["limma_trend"] * 10
    assert first["feature"].tolist() == list(job.feature_names) * 2
    for method, model in (("voom", "limma_voom"), ("trend", "limma_trend")):
        expected = reference[reference["method"] == method].sort_values("feature")
        ours = first[first["model"] == model]
        np.testing.assert_allclose(ours["beta"].to_numpy(), expected["logFC"].to_numpy(), rtol=1e-12)
        np.testing.assert_allclose(ours["p"].to_numpy(), expected["P.Value"].to_numpy(), rtol=1e-12)
    assert second["model"].eq("limma_voom").all() and len(second) == 4
    # the three planted effects (features 0-2) are the strongest
    assert set(first[first["model"] == "limma_voom"].nsmallest(3, "p")["feature"]) == {"feature_00", "feature_01", "feature_02"}


@needs_limma
def test_a_job_failing_in_r_is_named_with_rs_message(tmp_path: Path) -> None:
    job = _reference_job(("voom",))
    aliased = job.design.assign(twice=2 * job.design["disorder"])  # rank-deficient design
    with pytest.raises(DataError, match=r"limma job 1 \(exposure 'disorder'\) failed in R: the design .* is not of full rank"):
        run_limma([job, LimmaJob(job.counts, job.feature_names, aliased, "disorder", ("voom",))], tmp_path)


@needs_limma
def test_r_process_failure_shows_its_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("scalable_assoc.io.limma_r._SCRIPT", "no_such_script.R")
    with pytest.raises(DataError, match=r"limma: Rscript exited with status \d+: .*no_such_script\.R"):
        run_limma([_reference_job(("voom",))], tmp_path)
