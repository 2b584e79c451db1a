"""The plan's ``diversity`` block: defaults, and every wrong key refused naming it (exit 2 from the CLI)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scalable_assoc.errors import PlanError
from scalable_assoc.plan.diversity import ALPHA_METRICS, DISTANCES, BetaSpec, DiversitySpec
from scalable_assoc.plan.schema import load_plan
from scalable_assoc.stats.diversity import ALPHA_METRICS as KERNEL_METRICS
from scalable_assoc.testing import write_plan

BASE = """
data:
  metadata: metadata.tsv
  layers: {species: species.tsv, pathways: pathways.tsv}
exposures:
  MDD: {cases: "MDD == 1", controls: "MDD == 0"}
adjustments:
  base: [age]
"""


def _load(tmp_path: Path, block: str):
    return load_plan(write_plan(tmp_path, BASE + block))


def test_defaults_and_hashes(tmp_path: Path) -> None:
    assert ALPHA_METRICS == KERNEL_METRICS and DISTANCES == ("aitchison", "bray_curtis")
    without = _load(tmp_path, "")
    assert without.diversity is None
    plan = _load(tmp_path, "diversity: {beta: {}}\n")
    assert plan.diversity == DiversitySpec(None, ALPHA_METRICS, BetaSpec(("aitchison",), 999, 1))
    assert plan.diversity.layers_of(("species", "pathways")) == ("species", "pathways")
    # a diversity block changes the plan but no feature result: finished chunks are reused
    assert plan.rows_hash() == without.rows_hash() and plan.content_hash() != without.content_hash()
    picked = _load(
        tmp_path, "diversity: {layers: species, alpha: [shannon], beta: {distances: [bray_curtis], permutations: 99, seed: 7}}\n"
    )
    assert picked.diversity == DiversitySpec(("species",), ("shannon",), BetaSpec(("bray_curtis",), 99, 7))


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("diversity: {alpha: [shannon, chao1]}", r"key 'diversity.alpha': 'chao1' is not one of shannon, simpson, richness"),
        ("diversity: {beta: {distances: [jaccard]}}", r"key 'diversity.beta.distances': 'jaccard' is not one of aitchison, bray_curtis"),
        ("diversity: {beta: {permutations: 0}}", r"key 'diversity.beta.permutations': expected a whole number of at least 1, got 0"),
        ("diversity: {beta: {permutations: 9.5}}", r"key 'diversity.beta.permutations': expected a whole number"),
        ("diversity: {beta: {seed: -1}}", r"key 'diversity.beta.seed': expected a whole number of at least 0"),
        ("diversity: {layers: [genus]}", r"key 'diversity.layers': 'genus' is not one of species, pathways"),
        ("diversity: {alpha: []}", r"key 'diversity': asks for nothing"),
        ("diversity: {beta: {permutation: 9}}", r"unknown key 'diversity.beta.permutation'.*permutations"),
        ("diversity: {alpah: [shannon]}", r"unknown key 'diversity.alpah'"),
    ],
)
def test_bad_diversity_blocks_name_the_key(tmp_path: Path, block: str, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        _load(tmp_path, block + "\n")
