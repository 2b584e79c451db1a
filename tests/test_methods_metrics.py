"""Metrics of the methods benchmark against hand counts and independent scipy/statsmodels calculations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from scalable_assoc.results.methods_metrics import (
    CALIBRATION_COLUMNS,
    REPLICATE_COLUMNS,
    SUMMARY_COLUMNS,
    binomial_two_sided_p,
    method_q,
    null_calibration,
    null_pvalues,
    replicate_metrics,
    summarise_methods,
    truth_for_model,
)


def _truth() -> pd.DataFrame:
    # f0: abundance +, f1: abundance - and presence +, f2: presence only -, f3..f5: null (f5 drug only), f6 compositional null
    return pd.DataFrame(
        {
            "feature": [f"f{i}" for i in range(7)],
            "abundance_effect": [0.5, -0.4, 0.0, 0.0, 0.0, 0.0, 0.0],
            "presence_effect": [0.0, 0.3, -0.7, 0.0, 0.0, 0.0, 0.0],
            "drug_effect": [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            "compositional": [False, False, False, False, False, False, True],
        }
    )


def _method_rows(method: str, beta: list[float], p: list[float], q: list[float], features: list[str] | None = None) -> pd.DataFrame:
    model, transform, adjustment = method.split("/")
    features = features if features is not None else [f"f{i}" for i in range(len(p))]
    return pd.DataFrame(
        {
            "method": method,
            "model": model,
            "transform": transform,
            "adjustment": adjustment,
            "feature": features,
            "beta": beta,
            "p": p,
            "q": q,
        }
    )


def test_truth_for_model_by_model() -> None:
    truth = _truth()
    is_true, sign = truth_for_model(truth, "lm")
    assert is_true.tolist() == [True, True, True, False, False, False, False]
    assert sign.tolist() == [1, -1, -1, 0, 0, 0, 0] and sign.dtype == np.int8
    is_true, sign = truth_for_model(truth, "lm_nonzero")
    assert is_true.tolist() == [True, True, False, False, False, False, False]
    assert sign.tolist() == [1, -1, 0, 0, 0, 0, 0]
    is_true, sign = truth_for_model(truth, "prevalence")
    assert is_true.tolist() == [False, True, True, False, False, False, False]
    assert sign.tolist() == [0, 1, -1, 0, 0, 0, 0]
    for model in ("lmm", "joint", "limma_voom", "limma_trend"):
        assert truth_for_model(truth, model)[0].tolist() == truth_for_model(truth, "lm")[0].tolist()
    with pytest.raises(ValueError, match="unknown model 'glm'"):
        truth_for_model(truth, "glm")


def test_replicate_metrics_hand_counts() -> None:
    truth = _truth()
    nan = np.nan
    fits = pd.concat(
        [
            # lm: discovers f0 (right sign), f1 (wrong sign: beta + for a - effect), f3 (false); f2 missed; f6 no estimate.
            _method_rows(
                "lm/clr/adjusted",
                beta=[0.4, 0.2, -0.1, 0.3, 0.1, 0.0, nan],
                p=[0.001, 0.002, 0.2, 0.003, 0.5, 0.9, nan],
                q=[0.01, 0.01, 0.3, 0.05, 0.6, 0.9, nan],  # q == alpha is a discovery
            ),
            # prevalence: true features are f1 and f2; f2 discovered with the right sign; f5 (drug only) falsely; f0 is null here.
            _method_rows(
                "prevalence/-/unadjusted",
                beta=[0.1, 0.2, -0.5, 0.0, 0.1, 0.6, 0.0],
                p=[0.04, 0.3, 0.0001, 0.7, 0.8, 0.001, 0.6],
                q=[0.1, 0.4, 0.001, 0.8, 0.8, 0.004, 0.7],
            ),
            # joint without beta, testing only f0..f3: f4..f6 untested count as not discovered.
            _method_rows(
                "joint/log/adjusted",
                beta=[nan] * 4,
                p=[0.01, 0.02, 0.03, 0.04],
                q=[0.04, 0.04, 0.04, 0.04],
                features=["f0", "f1", "f2", "f3"],
            ),
        ]
    )
    out = replicate_metrics(fits, truth, alpha=0.05).set_index("method")
    assert list(out.reset_index().columns) == list(REPLICATE_COLUMNS)
    lm = out.loc["lm/clr/adjusted"]
    assert (lm.n_features, lm.n_true, lm.n_tested, lm.discoveries) == (7, 3, 6, 3)
    assert (lm.true_discoveries, lm.false_discoveries, lm.sign_errors) == (2, 1, 1)
    assert lm.power == pytest.approx(2 / 3) and lm.fdr == pytest.approx(1 / 3)
    assert (lm.null_tested, lm.null_below_005) == (3, 1)
    # AUC by hand: true tested p {0.001, 0.002, 0.2} vs null {0.003, 0.5, 0.9}: pairs won 2*3 + 2 = 8 of 9.
    assert lm.auc == pytest.approx(8 / 9)
    prev = out.loc["prevalence/-/unadjusted"]
    assert (prev.n_true, prev.discoveries, prev.true_discoveries, prev.false_discoveries, prev.sign_errors) == (2, 2, 1, 1, 0)
    assert prev.power == 0.5 and prev.fdr == 0.5
    assert (prev.null_tested, prev.null_below_005) == (5, 2)
    joint = out.loc["joint/log/adjusted"]
    assert (joint.n_true, joint.n_tested, joint.discoveries, joint.true_discoveries, joint.false_discoveries) == (3, 4, 4, 3, 1)
    assert joint.sign_errors == 0 and joint.power == 1.0 and joint.fdr == 0.25
    assert joint.auc == 1.0
    assert out["model"].tolist() == ["joint", "lm", "prevalence"]
    for column, (dtype, _) in REPLICATE_COLUMNS.items():
        if dtype in ("int64", "float64"):
            assert out.reset_index()[column].dtype == dtype, column


def test_no_discovery_fdr_zero_and_global_null_power_nan() -> None:
    truth = _truth().assign(abundance_effect=0.0, presence_effect=0.0)
    fits = _method_rows("lm/log/adjusted", beta=[0.1] * 7, p=[0.5] * 7, q=[0.9] * 7)
    row = replicate_metrics(fits, truth, alpha=0.05).iloc[0]
    assert row.n_true == 0 and np.isnan(row.power) and row.fdr == 0.0 and np.isnan(row.auc)
    assert row.discoveries == 0 and row.null_tested == 7


def _random_fits(rng: np.random.Generator, truth: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    frames = []
    features = truth["feature"].tolist()
    for method in methods:
        # p-values on a coarse grid so that ties (between and within classes) are common; some NaN.
        p = rng.integers(1, 40, len(features)) / 40.0
        p[rng.random(len(features)) < 0.1] = np.nan
        true_row = truth_for_model(truth, method.split("/")[0])[0]
        p[true_row] = p[true_row] ** 3
        beta = rng.normal(size=len(features))
        frames.append(_method_rows(method, beta.tolist(), p.tolist(), [np.nan] * len(features), features))
    fits = pd.concat(frames, ignore_index=True)
    return fits.drop(columns="q").sample(frac=1.0, random_state=1).reset_index(drop=True)


def _random_truth(rng: np.random.Generator, features: int) -> pd.DataFrame:
    kind = rng.integers(0, 5, features)
    return pd.DataFrame(
        {
            "feature": [f"feature_{i:04d}" for i in range(features)],
            "abundance_effect": np.where(kind == 1, rng.normal(size=features), np.where(kind == 3, -0.5, 0.0)),
            "presence_effect": np.where(kind == 2, rng.normal(size=features), np.where(kind == 3, 0.7, 0.0)),
        }
    )


METHODS = ["lm/clr/adjusted", "lm/log/unadjusted", "lm_nonzero/log/adjusted", "prevalence/-/adjusted", "joint/log/adjusted"]


def test_replicate_metrics_against_independent_per_method_calculation() -> None:
    rng = np.random.default_rng(7)
    truth = _random_truth(rng, 300)
    fits = _random_fits(rng, truth, METHODS)
    alpha = 0.1
    out = replicate_metrics(fits, truth, alpha).set_index("method")
    assert sorted(out.index) == sorted(METHODS)
    for method in METHODS:
        rows = fits[fits["method"] == method].set_index("feature").reindex(truth["feature"])
        is_true, sign = truth_for_model(truth, method.split("/")[0])
        p = rows["p"].to_numpy()
        tested = ~np.isnan(p)
        # BH by statsmodels on the tested features only.
        q = np.full(p.shape, np.nan)
        q[tested] = multipletests(p[tested], method="fdr_bh")[1]
        hit = tested & (q <= alpha)
        row = out.loc[method]
        assert row.discoveries == hit.sum()
        assert row.true_discoveries == (hit & is_true).sum()
        assert row.false_discoveries == (hit & ~is_true).sum()
        assert row.power == pytest.approx((hit & is_true).sum() / is_true.sum())
        assert row.fdr == pytest.approx((hit & ~is_true).sum() / max(hit.sum(), 1))
        assert row.sign_errors == (hit & is_true & (np.sign(rows["beta"].to_numpy()) != sign)).sum()
        assert row.null_below_005 == (tested & ~is_true & (p < 0.05)).sum()
        # AUC = U / (n1 n0) from scipy's Mann-Whitney U on -log10 p (ties count half).
        score = -np.log10(p)
        u = stats.mannwhitneyu(score[tested & is_true], score[tested & ~is_true]).statistic
        assert row.auc == pytest.approx(u / ((tested & is_true).sum() * (tested & ~is_true).sum()), rel=1e-12)
        assert 0.5 < row.auc < 1.0


def test_method_q_matches_statsmodels_within_each_method() -> None:
    rng = np.random.default_rng(3)
    truth = _random_truth(rng, 200)
    fits = _random_fits(rng, truth, METHODS[:3])
    q = method_q(fits)
    for method in METHODS[:3]:
        rows = (fits["method"] == method).to_numpy()
        p = fits["p"].to_numpy()[rows]
        tested = ~np.isnan(p)
        np.testing.assert_allclose(q[rows][tested], multipletests(p[tested], method="fdr_bh")[1], rtol=1e-12)
        assert np.isnan(q[rows][~tested]).all()


def test_bad_fits_frames_are_refused() -> None:
    truth = _truth()
    fits = _method_rows("lm/clr/adjusted", beta=[0.1] * 7, p=[0.5] * 7, q=[0.9] * 7)
    with pytest.raises(ValueError, match="more than one row"):
        replicate_metrics(pd.concat([fits, fits.iloc[:1]]), truth, 0.05)
    with pytest.raises(ValueError, match="not in the truth, e.g. zz"):
        replicate_metrics(fits.assign(feature=fits["feature"].where(fits.index > 0, "zz")), truth, 0.05)
    with pytest.raises(ValueError, match="disagree"):
        replicate_metrics(fits.assign(transform=["clr"] * 6 + ["log"]), truth, 0.05)


def test_binomial_two_sided_p_equals_binomtest() -> None:
    rng = np.random.default_rng(11)
    n = np.r_[np.arange(1, 41), [100, 997, 5000, 20000]]
    pairs = [(int(k), int(m)) for m in n for k in {0, 1, m // 20, m // 20 + 1, m // 10, m, *rng.integers(0, m + 1, 4).tolist()}]
    k, m = np.array(pairs).T
    for p0 in (0.05, 0.5):
        expected = [stats.binomtest(int(a), int(b), p0).pvalue for a, b in pairs]
        np.testing.assert_allclose(binomial_two_sided_p(k, m, p0), expected, rtol=1e-12, atol=0)


def _per_replicate(rng: np.random.Generator) -> pd.DataFrame:
    truth = _random_truth(rng, 120)
    frames = []
    for scenario in ("null", "shift"):
        scenario_truth = truth.assign(abundance_effect=0.0, presence_effect=0.0) if scenario == "null" else truth
        for replicate in range(5):
            fits = _random_fits(rng, scenario_truth, METHODS[:3])
            frames.append(replicate_metrics(fits, scenario_truth, 0.1).assign(scenario=scenario, replicate=replicate))
    return pd.concat(frames, ignore_index=True)


def test_summarise_methods_against_numpy_and_binomtest() -> None:
    rng = np.random.default_rng(5)
    per_replicate = _per_replicate(rng)
    alpha = 0.1
    summary = summarise_methods(per_replicate, alpha)
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    assert len(summary) == 6 and summary["replicates"].eq(5).all()
    for row in summary.itertuples():
        rows = per_replicate[(per_replicate["scenario"] == row.scenario) & (per_replicate["method"] == row.method)]
        fdr = rows["fdr"].to_numpy()
        assert row.fdr == pytest.approx(fdr.mean())
        assert row.fdr_se == pytest.approx(fdr.std(ddof=1) / np.sqrt(5))
        assert row.fdr_controlled == bool(fdr.mean() <= alpha + 2 * fdr.std(ddof=1) / np.sqrt(5))
        k, n = int(rows["null_below_005"].sum()), int(rows["null_tested"].sum())
        assert row.null_share_p05 == pytest.approx(k / n)
        shares = (rows["null_below_005"] / rows["null_tested"]).to_numpy()
        se = max(np.sqrt(0.05 * 0.95 / n), shares.std(ddof=1) / np.sqrt(len(shares)))
        assert row.null_share_se == pytest.approx(se)
        assert row.calibrated == (abs(k / n - 0.05) <= stats.norm.isf(0.0005) * se)
        assert row.sign_errors == pytest.approx(rows["sign_errors"].mean())
        if row.scenario == "null":
            assert np.isnan(row.power) and np.isnan(row.power_se) and np.isnan(row.auc)
        else:
            assert row.power == pytest.approx(rows["power"].mean())
            assert row.power_se == pytest.approx(rows["power"].std(ddof=1) / np.sqrt(5))
            assert row.auc == pytest.approx(rows["auc"].mean())
    assert summary["calibrated"].dtype == "boolean" and summary["fdr_controlled"].dtype == bool


def test_summarise_flags_uncontrolled_fdr_and_miscalibration() -> None:
    base = {"method": "lm/clr/unadjusted", "model": "lm", "transform": "clr", "adjustment": "unadjusted", "scenario": "confounded"}
    rows = pd.DataFrame(
        [
            {**base, "replicate": r, "power": 0.8, "fdr": fdr, "auc": 0.9, "sign_errors": 0, "true_discoveries": 8, "null_tested": 100}
            | {"null_below_005": 30}
            for r, fdr in enumerate([0.3, 0.35, 0.4, 0.3])
        ]
    )
    ok = rows.assign(method="lm/clr/adjusted", adjustment="adjusted", fdr=[0.0, 0.1, 0.05, 0.0], null_below_005=5)
    none = rows.assign(method="lm/log/adjusted", transform="log", adjustment="adjusted", null_tested=0, null_below_005=0).iloc[:1]
    summary = summarise_methods(pd.concat([rows, ok, none]), alpha=0.05).set_index("method")
    assert not summary.loc["lm/clr/unadjusted", "fdr_controlled"] and summary.loc["lm/clr/adjusted", "fdr_controlled"]
    assert not summary.loc["lm/clr/unadjusted", "calibrated"] and summary.loc["lm/clr/adjusted", "calibrated"]
    # One replicate: no Monte-Carlo SE; no null p-value: calibration unknown.
    assert np.isnan(summary.loc["lm/log/adjusted", "fdr_se"]) and pd.isna(summary.loc["lm/log/adjusted", "calibrated"])
    assert summary.loc["lm/clr/unadjusted", "sign_error_share"] == 0.0


def test_null_calibration_against_kstest_and_binomtest() -> None:
    rng = np.random.default_rng(2)
    truth = _random_truth(rng, 150)
    frames = []
    pvalues_nan: dict[str, int] = {}
    for replicate in range(3):
        fits = _random_fits(rng, truth, METHODS)
        # an anti-conservative method: p-values squashed towards 0 (strongly: 3 replicates give a wide between-replicate error)
        fits.loc[fits["method"] == "lm/log/unadjusted", "p"] **= 4
        nulls = null_pvalues(fits, truth)
        tested_null = fits.merge(nulls[["method", "feature"]], on=["method", "feature"])
        assert tested_null["p"].notna().all()
        for method, rows in fits.groupby("method"):
            untested_null = rows["p"].isna() & ~truth_for_model(truth, rows["model"].iloc[0])[0][rows["feature"].str[8:].astype(int)]
            pvalues_nan[method] = pvalues_nan.get(method, 0) + int(untested_null.sum())
        frames.append(nulls.assign(scenario="s", replicate=replicate))
    pvalues = pd.concat(frames, ignore_index=True)
    assert set(pvalues.columns) == {"scenario", "replicate", "method", "model", "transform", "adjustment", "feature", "p"}
    assert pvalues["p"].notna().all()
    # Ties within a group on the coarse p grid and continuous p-values both appear.
    pvalues.loc[pvalues["method"] == "lm/clr/adjusted", "p"] = rng.random(int((pvalues["method"] == "lm/clr/adjusted").sum()))
    out = null_calibration(pvalues)
    assert list(out.columns) == list(CALIBRATION_COLUMNS) and len(out) == len(METHODS)
    for row in out.itertuples():
        p = pvalues.loc[pvalues["method"] == row.method, "p"].to_numpy()
        assert row.n == len(p) == 3 * int((~truth_for_model(truth, row.model)[0]).sum()) - int(pvalues_nan[row.method])
        reference = stats.kstest(p, "uniform")
        assert row.ks_statistic == pytest.approx(reference.statistic, rel=1e-12)
        assert row.ks_p == pytest.approx(reference.pvalue, rel=1e-9)
        assert row.share_below_005 == pytest.approx((p < 0.05).mean())
        assert row.binomial_p == pytest.approx(stats.binomtest(int((p < 0.05).sum()), len(p), 0.05).pvalue, rel=1e-12)
        rows = pvalues[pvalues["method"] == row.method]
        shares = (rows["p"] < 0.05).groupby(rows["replicate"]).mean().to_numpy()
        se = max(np.sqrt(0.05 * 0.95 / len(p)), shares.std(ddof=1) / np.sqrt(3))
        assert row.share_se == pytest.approx(se)
        assert row.calibrated == (abs((p < 0.05).mean() - 0.05) <= stats.norm.isf(0.0005) * se)
    assert out.set_index("method").loc["lm/log/unadjusted", "ks_p"] < 1e-6
    assert not out.set_index("method").loc["lm/log/unadjusted", "calibrated"]


def test_null_pvalues_keeps_null_features_of_each_model() -> None:
    truth = _truth()
    fits = pd.concat(
        [
            _method_rows("lm/clr/adjusted", [0.1] * 7, [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, np.nan], [0.9] * 7),
            _method_rows("prevalence/-/adjusted", [0.1] * 7, [0.5] * 7, [0.9] * 7),
        ]
    )
    out = null_pvalues(fits, truth)
    assert out.loc[out["method"] == "lm/clr/adjusted", "feature"].tolist() == ["f3", "f4", "f5"]
    assert out.loc[out["method"] == "prevalence/-/adjusted", "feature"].tolist() == ["f0", "f3", "f4", "f5", "f6"]


def test_p_zero_ties_and_empty_inputs() -> None:
    truth = _truth()
    # p = 0 (-log p infinite) ties between a true and a null feature count half: true {0, 0, 0.5} vs null {0, 0.2, 0.9, 1.0}
    p = [0.0, 0.0, 0.5, 0.0, 0.2, 0.9, 1.0]
    fits = _method_rows("lm/tss/adjusted", [0.1] * 7, p, [np.nan] * 7).drop(columns="q")
    row = replicate_metrics(fits, truth, 0.05).iloc[0]
    score = -np.log10(np.clip(p, 1e-320, None))
    u = stats.mannwhitneyu(score[:3], score[3:]).statistic
    assert row.auc == pytest.approx(u / 12) and row.auc == pytest.approx((2 * 3.5 + 1 * 2) / 12)
    assert row.discoveries == 3  # BH q of the three zeros is 0
    empty = pd.DataFrame(columns=["scenario", "replicate", "method", "model", "transform", "adjustment", "feature", "p"])
    assert list(null_calibration(empty).columns) == list(CALIBRATION_COLUMNS) and null_calibration(empty).empty
    assert list(summarise_methods(pd.DataFrame(columns=[*REPLICATE_COLUMNS, "scenario", "replicate"]), 0.05).columns) == list(
        SUMMARY_COLUMNS
    )
    assert replicate_metrics(fits.iloc[:0], truth, 0.05).empty
