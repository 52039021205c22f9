"""The cohort statistics against the libraries called directly, with expected values computed here."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats

from bat_analysis.cohort import _analyses as analyses
from bat_analysis.cohort._clinical import derive_columns
from bat_analysis.cohort._simulate_clinical import TRUTH, simulate_cohort
from bat_analysis.errors import AnalysisError, BatError


def _joined(n: int = 240, seed: int = 1) -> pd.DataFrame:
    sim = simulate_cohort(n, seed)
    df = sim.clinical.merge(sim.results, on="patient")
    df, _ = derive_columns(df.astype(str))
    return df


def _bh(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values by their definition: min over k ≥ i of p_(k)·m/k, capped at 1."""
    m = len(p)
    order = np.argsort(p)
    ranked = p[order] * m / np.arange(1, m + 1)
    adj = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adj, 1.0)
    return out


def test_adjusted_odds_ratios_equal_statsmodels_logit_fitted_directly():
    df = _joined()
    predictors = ["auc_inhibition_pct", "ec50_shift_log10", "bmi"]
    covariates = ["age", "sex", "baseline_exacerbations", "treatment", "allergen"]
    got = analyses.associations(df, predictors, "response", "yes", covariates)
    y = (df["response"] == "yes").to_numpy(dtype=float)
    expected_p = []
    for p, row in zip(predictors, got.itertuples(index=False)):
        x = df[p].astype(float).to_numpy()
        z = x / x.std(ddof=1)  # per sample SD
        X = pd.DataFrame({"const": 1.0, p: z, "age": df["age"].astype(float),
                          "sex_M": (df["sex"] == "M").astype(float),  # F is the reference (first in sorted order)
                          "exac": df["baseline_exacerbations"].astype(float),
                          "standard": (df["treatment"] == "standard").astype(float)})
        for level in ("cat", "house_dust_mite", "peanut"):  # birch, first in sorted order, is the reference
            X[f"allergen_{level}"] = (df["allergen"] == level).astype(float)
        fit = sm.Logit(y, X).fit(disp=0)
        b, se = fit.params[p], fit.bse[p]
        assert row.n == len(df) and row.n_events == int(y.sum())
        assert row.or_per_sd == pytest.approx(math.exp(b), rel=1e-7)
        assert row.or_ci_low == pytest.approx(math.exp(b - 1.959963984540054 * se), rel=1e-7)
        assert row.or_ci_high == pytest.approx(math.exp(b + 1.959963984540054 * se), rel=1e-7)
        assert row.p_value == pytest.approx(fit.pvalues[p], rel=1e-6)
        assert row.predictor_sd == pytest.approx(x.std(ddof=1), rel=1e-12)
        assert row.covariates == "age;sex;baseline_exacerbations;treatment;allergen"
        expected_p.append(fit.pvalues[p])
    assert got["q_value"].to_numpy() == pytest.approx(_bh(np.array(expected_p)), rel=1e-6)


def test_simulated_slope_is_recovered_on_a_large_cohort():
    """The simulator's logistic slope for AUC inhibition (per 25 points) is found within its 95% interval."""
    sim = simulate_cohort(4000, 7)
    df = sim.clinical.merge(sim.results, on="patient").astype(str)
    df, _ = derive_columns(df)
    df["oma_high"] = np.where((df["treatment"] == "omalizumab")
                              & (df["sige_total_ige_ratio_pct"].astype(float) >= 10), "1", "0")
    got = analyses.associations(df, ["auc_inhibition_pct"], "response", "yes",
                                ["age", "sex", "baseline_exacerbations", "oma_high"]).iloc[0]
    sd = got["predictor_sd"]
    true_or = math.exp(TRUTH["response"]["b_auc"] / 25.0 * sd)
    assert got["or_ci_low"] < true_or < got["or_ci_high"]


def test_an_unfittable_model_is_reported_not_raised():
    df = pd.DataFrame({"patient": [f"P{i}" for i in range(8)], "out": ["y"] * 4 + ["n"] * 4,
                       "sep": ["1", "2", "3", "4", "-1", "-2", "-3", "-4"], "flat": ["1"] * 8,
                       "ok": ["1", "3", "2", "5", "4", "2", "6", "1"]})
    got = analyses.associations(df, ["sep", "flat", "ok"], "out", "y")
    by = got.set_index("predictor")
    assert math.isnan(by.loc["sep", "or_per_sd"]) and "separation" in by.loc["sep", "note"]
    assert by.loc["flat", "note"] == "the predictor does not vary"
    assert math.isfinite(by.loc["ok", "or_per_sd"]) and by.loc["ok", "q_value"] == pytest.approx(
        by.loc["ok", "p_value"])  # BH over the one fitted predictor


def test_youden_cutoff_is_the_best_threshold_by_brute_force():
    df = _joined(150, 4)
    table, points = analyses.roc(df, ["auc_inhibition_pct"], "response", "yes")
    row = table.iloc[0]
    x = df["auc_inhibition_pct"].astype(float).to_numpy()
    y = (df["response"] == "yes").to_numpy()
    best = max(((x[y] >= c).mean() + (x[~y] < c).mean() - 1, c) for c in np.unique(x))
    assert row["direction"] == "higher"
    assert row["sensitivity"] + row["specificity"] - 1 == pytest.approx(best[0], abs=1e-12)
    assert row["sensitivity"] == pytest.approx((x[y] >= row["cutoff"]).mean())
    assert row["specificity"] == pytest.approx((x[~y] < row["cutoff"]).mean())
    assert set(points["predictor"]) == {"auc_inhibition_pct"}


def test_lower_direction_is_oriented_and_cutoff_reads_as_at_most():
    x = np.array([1, 2, 3, 4, 5, 6, 7, 8], dtype=float)
    df = pd.DataFrame({"patient": list("abcdefgh"), "o": ["p", "p", "p", "n", "p", "n", "n", "n"],
                       "x": x.astype(str)})
    row = analyses.roc(df, ["x"], "o", "p")[0].iloc[0]
    assert row["direction"] == "lower" and row["auroc"] == pytest.approx(15 / 16)
    y = df["o"].eq("p").to_numpy()
    assert row["sensitivity"] == pytest.approx((x[y] <= row["cutoff"]).mean())
    assert row["specificity"] == pytest.approx((x[~y] > row["cutoff"]).mean())


def test_strata_rates_risk_ratios_fisher_and_breslow_day():
    from statsmodels.stats.contingency_tables import StratifiedTable

    rows = []
    # stratum high: omalizumab 2/20, standard 9/20; stratum low: omalizumab 3/30, standard 4/30
    for stratum, ratio, counts in (("high", "20", {"omalizumab": (2, 20), "standard": (9, 20)}),
                                   ("low", "5", {"omalizumab": (3, 30), "standard": (4, 30)})):
        for g, (e, n) in counts.items():
            rows += [{"r": ratio, "g": g, "o": "yes" if i < e else "no"} for i in range(n)]
    df = pd.DataFrame(rows).assign(patient=lambda d: [f"P{i}" for i in range(len(d))])
    got = analyses.strata(df, "o", "yes", "g", ["r>=10"])
    cmp = got[got["group"] == "standard"].set_index("stratum")
    hi = cmp.loc["r>=10"]
    assert hi["rate"] == pytest.approx(9 / 20) and hi["reference_group"] == "omalizumab"
    assert hi["risk_ratio"] == pytest.approx((9 / 20) / (2 / 20))
    se = math.sqrt(1 / 9 - 1 / 20 + 1 / 2 - 1 / 20)
    assert hi["rr_ci_low"] == pytest.approx(4.5 * math.exp(-1.959963984540054 * se))
    assert hi["risk_difference"] == pytest.approx(0.35)
    assert hi["p_value"] == pytest.approx(stats.fisher_exact([[9, 11], [2, 18]])[1])
    tables = [np.array([[9, 11], [2, 18]]), np.array([[4, 26], [3, 27]])]
    bd = StratifiedTable(tables).test_equal_odds(adjust=True).pvalue
    assert got["interaction_p"].iloc[0] == pytest.approx(bd)
    assert set(got["stratum"]) == {"r>=10", "r<10"}


def test_stratify_expressions_are_parsed_not_evaluated():
    df = pd.DataFrame({"patient": ["a", "b", "c", "d"], "o": ["y", "n", "y", "n"], "x": ["1", "2", "3", "4"]})
    for bad in ["__import__('os').system('true')", "x>=1; import os", "x >= abc"]:
        with pytest.raises(BatError, match="--stratify"):
            analyses.strata(df, "o", "y", None, [bad])
    got = analyses.strata(df, "o", "y", None, ["x > 2"])
    assert list(got["stratum"]) == ["x<=2", "x>2"] and list(got["events"]) == [1, 1]


def test_strata_need_two_groups():
    df = pd.DataFrame({"patient": list("abcd"), "o": ["y", "n", "y", "n"], "g": ["1", "2", "3", "3"],
                       "x": ["1", "2", "3", "4"]})
    with pytest.raises(AnalysisError, match="exactly two groups"):
        analyses.strata(df, "o", "y", "g", ["x"])


def test_longitudinal_matches_mixedlm_fitted_directly():
    import statsmodels.formula.api as smf

    sim = simulate_cohort(60, 2)
    df = sim.clinical.astype(str)
    fu = analyses.check_followup(sim.followup.astype(str))
    got = analyses.longitudinal(fu, df, "treatment")
    act = sim.followup[sim.followup["variable"] == "ACT"].copy()
    base = act[act["week"] == 0].set_index("patient")["value"]
    act = act[act["week"] > 0].copy()
    act["change"] = act["value"] - act["patient"].map(base)
    act["treatment"] = act["patient"].map(dict(zip(sim.clinical["patient"], sim.clinical["treatment"])))
    act["visit"] = act["week"].astype(str)
    fit = smf.mixedlm("change ~ C(treatment) * C(visit)", act, groups=act["patient"]).fit(reml=True)
    fe = fit.fe_params
    # standard − omalizumab at week 48 = group effect + the interaction at week 48
    names = [n for n in fe.index if "standard" in n and ("48" in n or ":" not in n)]
    diff48 = sum(fe[n] for n in names)
    cov = fit.cov_params().loc[names, names].to_numpy()
    se = math.sqrt(cov.sum())
    row = got[(got["variable"] == "ACT") & (got["week"] == 48) & (got["group"] == "standard")].iloc[0]
    assert row["difference"] == pytest.approx(diff48, rel=1e-6)
    assert row["diff_ci_high"] - row["diff_ci_low"] == pytest.approx(2 * 1.959963984540054 * se, rel=1e-5)
    ref = got[(got["variable"] == "ACT") & (got["week"] == 48) & (got["group"] == "omalizumab")].iloc[0]
    observed = act[(act["week"] == 48) & (act["treatment"] == "omalizumab")]["change"]
    assert ref["n"] == observed.size and ref["mean_change"] == pytest.approx(observed.mean())
    # balanced complete data: the model's cell means are the observed means
    assert ref["model_change"] == pytest.approx(observed.mean(), rel=1e-6)
    # the simulated gain (4 ACT points at week 48 with omalizumab) is within the interval
    assert ref["model_ci_low"] < TRUTH["act_gain"] < ref["model_ci_high"]


def test_followup_sheet_problems_are_located():
    bad = pd.DataFrame({"patient": ["a", "a"], "week": ["0", "twelve"], "variable": ["ACT", "ACT"],
                        "value": ["10", "12"], "__row__": [2, 3]})
    with pytest.raises(BatError, match=r"row 3, column 'week': 'twelve' is not a number"):
        analyses.check_followup(bad, "f.csv")
    with pytest.raises(BatError, match="patient, week, variable, value"):
        analyses.check_followup(bad.drop(columns=["variable"]), "f.csv")


def test_table1_summaries_and_tests():
    df = _joined(80, 3)
    t1 = analyses.table1(df, "treatment", ["age", "sex"])
    assert list(t1.columns) == ["variable", "level", "statistic", "overall", "treatment=omalizumab",
                                "treatment=standard", "p_value", "test"]
    age = df["age"].astype(float)
    g = df["treatment"]
    a, b = age[g == "omalizumab"], age[g == "standard"]
    r = t1[(t1["variable"] == "age") & (t1["statistic"] == "mean (SD)")].iloc[0]
    assert r["overall"] == f"{age.mean():.2f} ({age.std(ddof=1):.2f})"
    assert r["p_value"] == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    r = t1[(t1["variable"] == "age") & (t1["statistic"] == "median [IQR]")].iloc[0]
    assert r["p_value"] == pytest.approx(stats.mannwhitneyu(a, b).pvalue)
    sex = t1[t1["variable"] == "sex"]
    n_f = int((df["sex"] == "F").sum())
    assert sex.iloc[0]["level"] == "F" and sex.iloc[0]["overall"] == f"{n_f} ({100 * n_f / len(df):.1f}%)"
    table = pd.crosstab(df["sex"], df["treatment"]).to_numpy()
    assert sex.iloc[0]["p_value"] == pytest.approx(stats.chi2_contingency(table).pvalue)
    assert t1.iloc[0]["overall"] == str(len(df))


def test_outcome_single_class_and_unknown_positive_are_clear_errors():
    df = pd.DataFrame({"patient": list("abc"), "o": ["no", "no", ""], "x": ["1", "2", "3"]})
    with pytest.raises(AnalysisError, match="no patient has outcome 'o' = 'yes'.*'no'"):
        analyses.roc(df, ["x"], "o", "yes")
    df["o"] = ["yes", "YES", ""]
    with pytest.raises(AnalysisError, match="single class"):
        analyses.roc(df, ["x"], "o", "yes")
    with pytest.raises(BatError, match="outcome column 'nope' is missing"):
        analyses.roc(df, ["x"], "nope", "yes")


def test_mixed_model_warnings_are_reported_not_hidden():
    fu = pd.DataFrame({"patient": list("aabbccdd"), "week": [0.0, 12.0] * 4, "variable": "X",
                       "value": [1.0, 2.0] * 4})  # no variance at all: the fit cannot converge
    cl = pd.DataFrame({"patient": list("abcd"), "g": ["x", "x", "y", "y"]})
    got = analyses.longitudinal(fu, cl, "g")
    assert list(got["mean_change"]) == [1.0, 1.0]
    assert got["model"].str.contains("fit warnings: ", regex=False).all()
