"""Scenario files of the methods benchmark and the scenario simulator: each knob does what it says (no cluster)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from scalable_assoc.cli import main
from scalable_assoc.engine.methods_benchmark import BENCHMARK_WORK_DIR
from scalable_assoc.errors import UserInputError
from scalable_assoc.io.runstate import folder_lock
from scalable_assoc.simulate.scenarios import Scenario, load_scenarios, simulate_scenario


@pytest.fixture(scope="module")
def base() -> Scenario:
    """The shipped baseline at 4,000 participants x 40 features (large enough to see each knob clearly)."""
    baseline = load_scenarios(None).scenarios[0]
    return replace(baseline, participants=4000, features=40, n_effects=12)


def test_shipped_grid_has_the_issue_scenarios() -> None:
    grid = load_scenarios(None)
    assert grid.names() == [
        "baseline",
        "global_null",
        "small_effects",
        "rare_features",
        "depth_variation",
        "compositional",
        "confounded_drug",
        "families",
    ]
    by_name = {s.name: s for s in grid.scenarios}
    assert by_name["global_null"].disorder_effects == 0 and by_name["baseline"].disorder_effects > 0
    assert by_name["small_effects"].effect_size < by_name["baseline"].effect_size
    assert by_name["confounded_drug"].drug_odds_ratio > 1 and by_name["confounded_drug"].drug_features > 0
    assert by_name["families"].has_families and not by_name["baseline"].has_families


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("scenarios:\n  a: {effects: {sise: 1}}\n", "scenarios.a.effects.sise: unknown key"),
        ("scenarios:\n  a: {compositional: {shift: big}}\n", "scenarios.a.compositional.shift: expected a number >= 0, got 'big'"),
        ("scenarios:\n  a: {participants: 12.5}\n", "scenarios.a.participants: expected a whole number"),
        ("scenarios:\n  a: {disorder_prevalence: 1.5}\n", "scenarios.a.disorder_prevalence: expected a number > 0 and < 1"),
        ("scenarios:\n  a: {prevalence: [0.9, 0.2]}\n", "scenarios.a.prevalence: expected a list [lo, hi]"),
        ("defaults: {alpha: -1}\nscenarios:\n  a: {}\n", "defaults.alpha: expected a number > 0 and < 1"),
        ("defaults: {drug: 3}\nscenarios:\n  a: {}\n", "defaults.drug: expected a mapping"),
        ("scenario:\n  a: {}\n", "scenario: unknown key"),
        ("scenarios: []\n", "scenarios: expected a mapping"),
        ("scenarios:\n  a: {global_null: yes please}\n", "scenarios.a.global_null: expected true or false"),
        ("scenarios:\n  a: !!python/object:os.system {}\n", "not a YAML file of scenarios"),
        ("scenarios:\n  a: {features: 10, effects: {count: 11}}\n", "scenarios.a: effects.count + compositional.features"),
    ],
)
def test_bad_scenario_file_exits_2_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, named: str) -> None:
    path = tmp_path / "scenarios.yaml"
    path.write_text(text)
    assert main(["benchmark-methods", "--out", str(tmp_path / "out"), "--scenarios", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: {named}" in err, err
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_a_folder_held_by_another_benchmark_exits_75_and_is_left_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench"
    (out / "replicates").mkdir(parents=True)
    (out / "replicates" / "theirs.txt").write_text("in use")
    with folder_lock(out / BENCHMARK_WORK_DIR, "benchmark-methods (another process)"):
        assert main(["benchmark-methods", "--out", str(out), "--force", "--replicates", "1"]) == 75
    err = capsys.readouterr().err
    assert f"the output folder {out}" in err and "lock.json" in err, err
    assert (out / "replicates" / "theirs.txt").read_text() == "in use"  # --force removed nothing


def test_a_file_changes_the_defaults_and_lists_its_own_scenarios(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("defaults: {participants: 500, drug: {odds_ratio: 3.0}}\nscenarios:\n  one: {effects: {size: 0.2}}\n  two: {}\n")
    grid = load_scenarios(path)
    assert grid.names() == ["one", "two"]
    one, two = grid.scenarios
    assert one.participants == two.participants == 500 and one.drug_odds_ratio == 3.0
    assert one.effect_size == 0.2 and two.effect_size == load_scenarios(None).scenarios[0].effect_size
    assert grid.with_replicates(3).scenarios[0].replicates == 3
    with pytest.raises(UserInputError, match="cannot be read"):
        load_scenarios(tmp_path / "missing.yaml")


def test_simulation_is_deterministic_and_shaped(base: Scenario) -> None:
    a, b, c = simulate_scenario(base, 0), simulate_scenario(base, 0), simulate_scenario(base, 1)
    assert np.array_equal(a.abundance, b.abundance) and a.metadata.equals(b.metadata) and a.truth.equals(b.truth)
    assert not np.array_equal(a.abundance, c.abundance)
    assert np.allclose(a.abundance.sum(axis=1), 100.0)
    assert a.counts.dtype == np.int64 and a.counts.shape == a.abundance.shape
    depth = base.reads * np.exp(a.metadata["log_depth"].to_numpy())
    assert np.allclose(a.counts.sum(axis=1), depth, rtol=0.01, atol=a.abundance.shape[1])
    assert list(a.metadata.columns) == ["sample_id", "disorder", "drug", "age", "sex", "log_depth"]
    assert list(a.truth.columns) == ["feature", "abundance_effect", "presence_effect", "drug_effect", "compositional"]
    assert abs(a.metadata["disorder"].mean() - base.disorder_prevalence) < 0.03


def _log_mean_where_present(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    logs = np.where(x[rows] > 0, np.log(np.where(x[rows] > 0, x[rows], 1.0)), np.nan)
    return np.nanmean(logs, axis=0)


def test_effects_move_abundance_or_presence_as_planted(base: Scenario) -> None:
    data = simulate_scenario(replace(base, presence_only_share=0.5, effect_size=1.0, presence_log_odds=1.5), 0)
    truth, x = data.truth, data.abundance
    cases = data.metadata["disorder"].to_numpy() == 1
    ordinary = (truth["abundance_effect"] != 0).to_numpy()
    presence_only = ((truth["abundance_effect"] == 0) & (truth["presence_effect"] != 0)).to_numpy()
    null = ~(ordinary | presence_only)
    assert ordinary.sum() == presence_only.sum() == 6 and np.all(np.abs(truth["abundance_effect"][ordinary]) == 1.0)
    assert np.allclose(truth["presence_effect"][ordinary], 0.5 * truth["abundance_effect"][ordinary])
    shift = _log_mean_where_present(x, cases) - _log_mean_where_present(x, ~cases)
    # Relative abundance: every feature shares the per-sample closure shift; compare to the nulls' median.
    shift -= np.median(shift[null])
    sign = np.sign(truth["abundance_effect"].to_numpy())
    assert np.all(shift[ordinary] * sign[ordinary] > 0.5)
    assert np.all(np.abs(shift[presence_only]) < 0.25)  # presence-only: abundance where present unchanged
    prev_shift = (x[cases] > 0).mean(axis=0) - (x[~cases] > 0).mean(axis=0)
    p_sign = np.sign(truth["presence_effect"].to_numpy())
    assert np.all(prev_shift[presence_only] * p_sign[presence_only] > 0.05)
    assert np.all(np.abs(prev_shift[null]) < 0.06)


def test_global_null_has_no_effects(base: Scenario) -> None:
    truth = simulate_scenario(replace(base, global_null=True, compositional_features=3), 0).truth
    assert not truth[["abundance_effect", "presence_effect"]].to_numpy().any() and not truth["compositional"].any()


def test_prevalence_range_and_zero_inflation(base: Scenario) -> None:
    rare = simulate_scenario(replace(base, prevalence=(0.1, 0.2), n_effects=0), 0)
    observed = (rare.abundance > 0).mean(axis=0)
    assert 0.05 < observed.min() and observed.max() < 0.3
    dense = replace(base, prevalence=(0.6, 0.6), n_effects=0, depth_sd=0.0)
    plain, inflated = simulate_scenario(dense, 0), simulate_scenario(replace(dense, zero_inflation=0.5), 0)
    ratio = (inflated.abundance > 0).mean() / (plain.abundance > 0).mean()
    assert 0.45 < ratio < 0.55


def test_presence_depends_on_depth(base: Scenario) -> None:
    def depth_slope(sd: float) -> tuple[float, float]:
        data = simulate_scenario(replace(base, depth_sd=sd), 0)
        richness = (data.abundance > 0).sum(axis=1)
        depth = data.metadata["log_depth"].to_numpy()
        return float(np.std(depth)), float(np.corrcoef(depth, richness)[0, 1]) if np.std(depth) > 0 else 0.0

    assert depth_slope(0.0) == (0.0, 0.0)
    sd, corr = depth_slope(1.0)
    assert abs(sd - 1.0) < 0.05 and corr > 0.5


def test_compositional_shift_moves_every_relative_abundance(base: Scenario) -> None:
    data = simulate_scenario(replace(base, compositional_features=4, compositional_shift=2.0, compositional_share=0.5), 0)
    dominant = data.truth["compositional"].to_numpy()
    cases = data.metadata["disorder"].to_numpy() == 1
    assert dominant.sum() == 4 and np.all(data.truth["abundance_effect"][dominant] == 2.0)
    share_controls = data.abundance[~cases][:, dominant].sum(axis=1).mean() / 100
    assert 0.35 < share_controls < 0.65
    null = ((data.truth["abundance_effect"] == 0) & (data.truth["presence_effect"] == 0)).to_numpy()
    shift = _log_mean_where_present(data.abundance, cases) - _log_mean_where_present(data.abundance, ~cases)
    assert np.median(shift[null]) < -0.5  # closure: the large shift depletes every other feature's relative abundance
    assert np.median(shift[dominant]) > 0.5


def test_drug_confounder(base: Scenario) -> None:
    data = simulate_scenario(replace(base, drug_odds_ratio=6.0, drug_rate=0.2, drug_features=5, drug_effect=1.0), 0)
    m = data.metadata
    p1, p0 = m.loc[m.disorder == 1, "drug"].mean(), m.loc[m.disorder == 0, "drug"].mean()
    assert 3.5 < (p1 / (1 - p1)) / (p0 / (1 - p0)) < 10
    drugged = (data.truth["drug_effect"] != 0).to_numpy()
    assert drugged.sum() == 5 and not (data.truth["abundance_effect"][drugged] != 0).any()
    on = m["drug"].to_numpy() == 1
    shift = _log_mean_where_present(data.abundance, on) - _log_mean_where_present(data.abundance, ~on)
    shift -= np.median(shift[~drugged])
    assert np.all(shift[drugged] * np.sign(data.truth["drug_effect"][drugged]) > 0.5)
    unconfounded = simulate_scenario(base, 0).metadata
    assert (
        abs(unconfounded.loc[unconfounded.disorder == 1, "drug"].mean() - unconfounded.loc[unconfounded.disorder == 0, "drug"].mean())
        < 0.05
    )


def test_families_cluster_abundance_and_disorder(base: Scenario) -> None:
    data = simulate_scenario(replace(base, family_size=2, family_icc=0.3, disorder_family_icc=0.6, n_effects=0), 0)
    m = data.metadata
    assert m["family_id"].value_counts().eq(2).all()
    first, second = m.index[::2], m.index[1::2]
    assert np.corrcoef(m["disorder"][first], m["disorder"][second])[0, 1] > 0.15
    x = data.abundance
    both = (x[first] > 0) & (x[second] > 0)
    logs = np.log(np.where(x > 0, x, 1.0))
    corr = [np.corrcoef(logs[first, j][both[:, j]], logs[second, j][both[:, j]])[0, 1] for j in range(x.shape[1])]
    assert np.median(corr) > 0.15
    plain = simulate_scenario(base, 0)
    assert "family_id" not in plain.metadata.columns
