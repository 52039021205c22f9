"""The statistics of ``bat cohort``: each a pure function, a joined per-patient DataFrame in → a DataFrame out.

Inputs are the frame of ``clinical.join`` (text cells; numbers are read with ``clinical.numeric``, so a non-number
in a predictor is a located error) and column names. A patient missing the predictor, the outcome or a covariate
is left out of that analysis only (complete cases); ``n`` columns say how many were used.

- ``outcome_labels(df, outcome, positive)``: booleans (NaN where the outcome is blank). A ``positive`` value that no
  patient has, or an outcome with a single class among the patients, is an ``AnalysisError`` naming the values found.
- ``roc(df, predictors, outcome, positive)`` → ``ROC_COLUMNS`` (one row per predictor) and ``roc_points`` (the
  curves): the empirical AUC (``sklearn.metrics.roc_auc_score``) with DeLong's 95% interval (``delong.py``).
  ``direction`` is chosen as pROC's ``direction="auto"`` does: ``higher`` when the positives' median is ≥ the
  negatives', else ``lower`` (the AUC is then that of the negated predictor, so it is ≥ 0.5 up to median/mean
  disagreement). ``cutoff`` maximises Youden's J = sensitivity + specificity − 1 over the observed values
  (``sklearn.metrics.roc_curve``); a patient is called positive when value ≥ cutoff (``higher``) or ≤ cutoff
  (``lower``); ties in J go to the first (most specific) threshold.
- ``roc_tests(df, predictors, outcome, positive)`` → ``ROC_TEST_COLUMNS``: DeLong's paired test for each pair of
  predictors, on the patients having both, each oriented by its own ``direction``.
- ``associations(df, predictors, outcome, positive, covariates)`` → ``ASSOCIATION_COLUMNS``: per predictor, a
  logistic regression (``statsmodels`` ``Logit``, maximum likelihood, Newton) of the outcome on the predictor divided
  by its sample standard deviation (ddof = 1, over the complete cases of that model) plus the covariates; a covariate
  whose every value is a number enters as it is (linearly: code categories as text to get indicators), one mostly
  of numbers with a few text cells is a located error (``clinical.check_text_or_numbers``), any other enters as
  indicators (``pandas.get_dummies``, first level in
  sorted order = reference, dropped). ``or_per_sd`` = exp(β), Wald 95% interval exp(β ± 1.96·SE), Wald p;
  ``q_value`` = Benjamini–Hochberg (``multipletests(method="fdr_bh")``) across the predictors of the call that could
  be fitted. A model that cannot be fitted (perfect separation, singular design, too few patients) gets NaN and a
  ``note``.
- ``strata(df, outcome, positive, group, stratifications)`` → ``STRATA_COLUMNS``: a stratification is ``COLUMN``
  (one stratum per value) or ``COLUMN OP NUMBER`` with OP in ``>= > <= <`` (two strata; nothing is evaluated, the
  expression is parsed). Per stratum × group: n, events, rate. With a two-level group, on the rows of the
  second (compared) group: risk ratio (log-scale Wald interval; 0.5 added to every cell when one is zero) and risk
  difference (Wald interval) against the first group in sorted order, and a p-value — Fisher's exact test
  (``scipy.stats.fisher_exact``). ``interaction_p`` tests whether the group effect differs between strata: the
  Breslow–Day test of homogeneous odds ratios with Tarone's correction (``statsmodels`` ``StratifiedTable
  .test_equal_odds(adjust=True)``). Without a group, the strata are compared by χ² (``chi2_contingency``) or Fisher.
- ``longitudinal(followup, df, group)`` → ``LONGITUDINAL_COLUMNS``: ``followup`` is long (patient, week, variable,
  value). Per variable, change = value − the patient's week-0 value (the baseline is the earliest week present, which
  must be shared by all: a patient without it is left out and named in the ``model`` column); a linear mixed model (``statsmodels`` ``MixedLM`` on the patsy design of the formula, REML) of change on
  C(group) × C(week) with a random intercept per patient, fitted to the post-baseline visits; rows per variable ×
  week × group give the observed mean change (n, SD), the model's mean change with Wald 95% interval and, on the
  compared groups, the difference from the reference group with its interval and p. The ``model`` column names the
  model, the baseline week, and any warning of the fit (convergence, a variance on the boundary).
- ``table1(df, group, variables)`` → ``table1`` rows: numeric variables as mean (SD) with Welch's t-test (two
  groups) or one-way ANOVA and median [IQR] with Mann–Whitney U or Kruskal–Wallis; other variables as n (%) per level
  with χ² (``chi2_contingency``) or, for a 2 × 2 table with an expected count below 5, Fisher's exact test.
"""

from __future__ import annotations

import itertools
import math
import re
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import AnalysisError, BatError
from ._clinical import MISSING_TOKENS, ROW, check_text_or_numbers, columns_text, is_numeric, numeric
from ._delong import Z975, delong_auc, delong_paired

ROC_COLUMNS = ["predictor", "outcome", "n_positive", "n_negative", "auroc", "auroc_ci_low", "auroc_ci_high",
               "direction", "cutoff", "sensitivity", "specificity"]
ROC_POINT_COLUMNS = ["predictor", "threshold", "sensitivity", "specificity"]
ROC_TEST_COLUMNS = ["predictor_a", "predictor_b", "outcome", "n", "auroc_a", "auroc_b", "difference", "z",
                    "p_value", "diff_ci_low", "diff_ci_high"]
ASSOCIATION_COLUMNS = ["predictor", "outcome", "n", "or_per_sd", "or_ci_low", "or_ci_high", "p_value", "q_value",
                       "covariates", "n_events", "predictor_sd", "note"]
STRATA_COLUMNS = ["stratification", "stratum", "group", "n", "events", "rate", "reference_group", "risk_ratio",
                  "rr_ci_low", "rr_ci_high", "risk_difference", "rd_ci_low", "rd_ci_high", "p_value", "test",
                  "interaction_p", "interaction_test"]
LONGITUDINAL_COLUMNS = ["variable", "week", "group", "n", "mean_change", "sd_change", "model_change",
                        "model_ci_low", "model_ci_high", "reference_group", "difference", "diff_ci_low",
                        "diff_ci_high", "p_value", "model"]
TABLE1_FIXED = ["variable", "level", "statistic", "overall"]


def _is_blank(value: object) -> bool:
    return str(value).strip().casefold() in MISSING_TOKENS


def _norm_value(value: object) -> str:
    t = str(value).strip()
    try:
        f = float(t)
    except ValueError:
        return t.casefold()
    return repr(f) if math.isfinite(f) else t.casefold()


def outcome_labels(df: pd.DataFrame, outcome: str, positive: str) -> np.ndarray:
    """1.0 where the outcome equals ``positive`` (case-insensitive; 1 equals 1.0), 0.0 otherwise, NaN if blank."""
    if outcome not in df.columns:
        raise BatError(f"outcome column {outcome!r} is missing", field="--outcome",
                       expected="a column of the clinical sheet; columns: " + columns_text(df))
    cells = df[outcome]
    blank = cells.map(_is_blank).to_numpy()
    want = _norm_value(positive)
    pos = cells.map(lambda v: _norm_value(v) == want).to_numpy()
    values = sorted({str(v).strip() for v, b in zip(cells, blank) if not b})
    if not pos.any():
        raise AnalysisError(f"no patient has outcome {outcome!r} = {positive!r}", field="--positive",
                            expected="one of the values found: " + ", ".join(repr(v) for v in values[:20]))
    if len(values) < 2 or pos[~blank].all():
        raise AnalysisError(f"the outcome {outcome!r} has a single class among the joined patients "
                            f"(every patient with a value is {values[0]!r})", field="--outcome",
                            expected="both positive and negative patients")
    return np.where(blank, np.nan, pos.astype(float))


def _complete(y: np.ndarray, *xs: np.ndarray) -> np.ndarray:
    ok = np.isfinite(y)
    for x in xs:
        ok &= np.isfinite(x)
    return ok


def _direction(x: np.ndarray, y: np.ndarray) -> str:
    return "higher" if np.median(x[y == 1]) >= np.median(x[y == 0]) else "lower"


def _check_classes(y: np.ndarray, what: str) -> None:
    if (y == 1).sum() == 0 or (y == 0).sum() == 0:
        raise AnalysisError(f"{what}: the patients with a value all have the same outcome", field=what,
                            expected="both positive and negative patients with a value")


def roc(df: pd.DataFrame, predictors: list[str], outcome: str, positive: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ROC per predictor (see the module contract): (roc table, curve points)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y_all = outcome_labels(df, outcome, positive)
    rows, points = [], []
    for p in predictors:
        x_all = numeric(df, p)
        ok = _complete(y_all, x_all)
        x, y = x_all[ok], y_all[ok]
        _check_classes(y, p)
        direction = _direction(x, y)
        score = x if direction == "higher" else -x
        d = delong_auc(score, y.astype(bool))
        auc = float(roc_auc_score(y, score))
        fpr, tpr, thr = roc_curve(y, score, drop_intermediate=False)
        j = tpr - fpr
        best = int(np.argmax(j[1:]) + 1)  # threshold 0 is +inf (no patient positive)
        cutoff = float(thr[best]) if direction == "higher" else -float(thr[best])
        rows.append({"predictor": p, "outcome": f"{outcome}={positive}", "n_positive": d.n_positive,
                     "n_negative": d.n_negative, "auroc": auc, "auroc_ci_low": d.ci_low,
                     "auroc_ci_high": d.ci_high, "direction": direction, "cutoff": cutoff,
                     "sensitivity": float(tpr[best]), "specificity": float(1.0 - fpr[best])})
        for t, se, fp in zip(thr, tpr, fpr):
            th = float(t) if direction == "higher" else -float(t)
            points.append({"predictor": p, "threshold": th, "sensitivity": float(se), "specificity": float(1 - fp)})
    return pd.DataFrame(rows, columns=ROC_COLUMNS), pd.DataFrame(points, columns=ROC_POINT_COLUMNS)


def roc_tests(df: pd.DataFrame, predictors: list[str], outcome: str, positive: str,
              directions: dict[str, str] | None = None) -> pd.DataFrame:
    """Paired DeLong tests between every pair of predictors (see the module contract)."""
    y_all = outcome_labels(df, outcome, positive)
    xs = {p: numeric(df, p) for p in predictors}
    rows = []
    for a, b in itertools.combinations(predictors, 2):
        ok = _complete(y_all, xs[a], xs[b])
        y = y_all[ok]
        _check_classes(y, f"{a} vs {b}")
        oriented = []
        for p in (a, b):
            x = xs[p][ok]
            direction = (directions or {}).get(p) or _direction(x, y)
            oriented.append(x if direction == "higher" else -x)
        t = delong_paired(oriented[0], oriented[1], y.astype(bool))
        rows.append({"predictor_a": a, "predictor_b": b, "outcome": f"{outcome}={positive}", "n": int(ok.sum()),
                     "auroc_a": t.auc_a, "auroc_b": t.auc_b, "difference": t.difference, "z": t.z,
                     "p_value": t.p_value, "diff_ci_low": t.ci_low, "diff_ci_high": t.ci_high})
    return pd.DataFrame(rows, columns=ROC_TEST_COLUMNS)


def covariate_matrix(df: pd.DataFrame, covariates: list[str]) -> pd.DataFrame:
    """The covariates as model columns: numbers as they are, other columns as indicators (NaN when blank)."""
    parts = []
    for c in covariates:
        if c not in df.columns:
            raise BatError(f"covariate column {c!r} is missing", field="--covariates",
                           expected="a column of the clinical sheet or the results")
        check_text_or_numbers(df, c)
        if is_numeric(df, c):
            parts.append(pd.Series(numeric(df, c), index=df.index, name=c))
            continue
        text = df[c].astype(str).str.strip()
        blank = text.map(_is_blank)
        levels = sorted(set(text[~blank]))
        for level in levels[1:]:
            col = (text == level).astype(float)
            col[blank] = np.nan
            parts.append(col.rename(f"{c}[{level}]"))
    return pd.concat(parts, axis=1) if parts else pd.DataFrame(index=df.index)


def associations(df: pd.DataFrame, predictors: list[str], outcome: str, positive: str,
                 covariates: list[str] | None = None) -> pd.DataFrame:
    """Adjusted odds ratio per SD of each predictor, with BH q-values (see the module contract)."""
    import statsmodels.api as sm
    from statsmodels.stats.multitest import multipletests
    from statsmodels.tools.sm_exceptions import PerfectSeparationError

    covariates = [c for c in (covariates or []) if c]
    y_all = outcome_labels(df, outcome, positive)
    cov = covariate_matrix(df, covariates)
    rows = []
    for p in predictors:
        x_all = numeric(df, p)
        ok = _complete(y_all, x_all, *[cov[c].to_numpy() for c in cov.columns])
        y, x = y_all[ok], x_all[ok]
        row = {"predictor": p, "outcome": f"{outcome}={positive}", "n": int(ok.sum()),
               "n_events": int((y == 1).sum()), "covariates": ";".join(covariates), "or_per_sd": math.nan,
               "or_ci_low": math.nan, "or_ci_high": math.nan, "p_value": math.nan, "predictor_sd": math.nan,
               "note": ""}
        sd = float(np.std(x, ddof=1)) if x.size > 1 else math.nan
        row["predictor_sd"] = sd
        design = cov.loc[ok].copy()
        design = design.loc[:, design.std(ddof=0) > 0] if len(design.columns) else design
        design.insert(0, p, x / sd if sd > 0 else x)
        design = sm.add_constant(design, has_constant="add")
        if not sd > 0:
            row["note"] = "the predictor does not vary"
        elif (y == 1).sum() < 2 or (y == 0).sum() < 2 or ok.sum() <= design.shape[1]:
            row["note"] = f"too few patients for {design.shape[1]} parameters"
        else:
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    fit = sm.Logit(y, design.to_numpy(dtype=float)).fit(disp=0, method="newton", maxiter=100)
                beta, se = float(fit.params[1]), float(fit.bse[1])
                separated = any("separation" in str(w.message).casefold() for w in caught)
                if separated or abs(beta) > 30:
                    row["note"] = "perfect or quasi-complete separation: the odds ratio is not estimable"
                elif not fit.mle_retvals.get("converged", True) or not (math.isfinite(se) and se > 0):
                    row["note"] = ("the fit did not converge (a covariate level where every patient has the same "
                                   "outcome?)")
                else:
                    row.update(or_per_sd=math.exp(beta), or_ci_low=math.exp(beta - Z975 * se),
                               or_ci_high=math.exp(beta + Z975 * se), p_value=float(fit.pvalues[1]))
            except (PerfectSeparationError, np.linalg.LinAlgError, ValueError) as exc:
                name = type(exc).__name__
                row["note"] = ("perfect separation" if "Separation" in name or "separation" in str(exc)
                               else f"cannot be fitted ({name}: {str(exc)[:80]})")
        rows.append(row)
    out = pd.DataFrame(rows, columns=ASSOCIATION_COLUMNS)
    out["q_value"] = math.nan
    fitted = out["p_value"].notna()
    if fitted.any():
        out.loc[fitted, "q_value"] = multipletests(out.loc[fitted, "p_value"].to_numpy(), method="fdr_bh")[1]
    return out


_STRAT = re.compile(r"^\s*(?P<col>[^<>=]+?)\s*(?P<op>>=|<=|>|<)\s*(?P<num>[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?)\s*$")


@dataclass(frozen=True)
class Stratification:
    text: str
    column: str
    op: str | None = None
    threshold: float | None = None


def parse_stratification(text: str, columns) -> Stratification:
    """``COLUMN`` or ``COLUMN OP NUMBER`` (OP one of >= > <= <); the column must exist."""
    m = _STRAT.match(text)
    col = m.group("col").strip() if m else text.strip()
    if col not in columns:
        raise BatError(f"--stratify {text!r}: no column {col!r}", field="--stratify",
                       expected="COLUMN or COLUMN>=NUMBER (also >, <=, <) naming a column of the sheet or a "
                                "derived column")
    if m:
        return Stratification(text.strip(), col, m.group("op"), float(m.group("num")))
    return Stratification(text.strip(), col)


def _strata_labels(df: pd.DataFrame, s: Stratification) -> pd.Series:
    if s.op is None:
        text = df[s.column].astype(str).str.strip()
        return text.where(~text.map(_is_blank), None)
    x = numeric(df, s.column)
    cmp = {">=": np.greater_equal, ">": np.greater, "<=": np.less_equal, "<": np.less}[s.op]
    inverse = {">=": "<", ">": "<=", "<=": ">", "<": ">="}[s.op]
    th = f"{s.threshold:g}"
    lab = np.where(cmp(x, s.threshold), f"{s.column}{s.op}{th}", f"{s.column}{inverse}{th}")
    return pd.Series(np.where(np.isfinite(x), lab, None), index=df.index)


def _rr_rd(e1: int, n1: int, e0: int, n0: int) -> dict[str, float]:
    p1, p0 = e1 / n1, e0 / n0
    rd = p1 - p0
    se_rd = math.sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0)
    a, b, c, d = e1, n1 - e1, e0, n0 - e0
    if min(a, c) == 0 or min(b, d) == 0:
        a, b, c, d = a + 0.5, b + 0.5, c + 0.5, d + 0.5
    rr = (a / (a + b)) / (c / (c + d))
    se_log = math.sqrt(1 / a - 1 / (a + b) + 1 / c - 1 / (c + d))
    return {"risk_ratio": rr, "rr_ci_low": rr * math.exp(-Z975 * se_log), "rr_ci_high": rr * math.exp(Z975 * se_log),
            "risk_difference": rd, "rd_ci_low": rd - Z975 * se_rd, "rd_ci_high": rd + Z975 * se_rd}


def _group_labels(df: pd.DataFrame, group: str | None) -> pd.Series:
    if group is None:
        return pd.Series("all", index=df.index)
    if group not in df.columns:
        raise BatError(f"group column {group!r} is missing", field="--group",
                       expected="a column of the clinical sheet or the results")
    text = df[group].astype(str).str.strip()
    return text.where(~text.map(_is_blank), None)


def strata(df: pd.DataFrame, outcome: str, positive: str, group: str | None,
           stratifications: list[str]) -> pd.DataFrame:
    """Event rates per stratum × group with RR, RD, p and the interaction test (see the module contract)."""
    from statsmodels.stats.contingency_tables import StratifiedTable

    y_all = outcome_labels(df, outcome, positive)
    g_all = _group_labels(df, group)
    groups = sorted({g for g in g_all if g is not None})
    if group is not None and len(groups) != 2:
        raise AnalysisError(f"group column {group!r} has {len(groups)} level(s) ({', '.join(groups)})",
                            field="--group", expected="exactly two groups to compare per stratum")
    rows = []
    for text in stratifications:
        s = parse_stratification(text, df.columns)
        lab = _strata_labels(df, s)
        ok = np.isfinite(y_all) & lab.notna().to_numpy() & g_all.notna().to_numpy()
        sub = pd.DataFrame({"stratum": lab[ok].to_numpy(), "group": g_all[ok].to_numpy(), "y": y_all[ok]})
        levels = sorted(set(sub["stratum"]), key=_natural)
        tables = []
        block = []
        for st in levels:
            part = sub[sub["stratum"] == st]
            counts = {g: (int(part.loc[part["group"] == g, "y"].sum()), int((part["group"] == g).sum()))
                      for g in groups}
            for g in groups:
                e, n = counts[g]
                row = {"stratification": s.text, "stratum": st, "group": g, "n": n, "events": e,
                       "rate": e / n if n else math.nan}
                block.append(row)
            if group is not None:
                (e0, n0), (e1, n1) = counts[groups[0]], counts[groups[1]]
                row = block[-1]
                row["reference_group"] = groups[0]
                if n0 and n1:
                    row.update(_rr_rd(e1, n1, e0, n0))
                    row["p_value"] = float(stats.fisher_exact([[e1, n1 - e1], [e0, n0 - e0]])[1])
                    row["test"] = "Fisher exact"
                    tables.append(np.array([[e1, n1 - e1], [e0, n0 - e0]], dtype=float))
        if group is not None:
            if len(tables) >= 2:
                res = StratifiedTable(tables, shift_zeros=True).test_equal_odds(adjust=True)
                p_int, name = float(res.pvalue), "Breslow-Day (Tarone)"
            else:
                p_int, name = math.nan, "Breslow-Day (Tarone): needs two strata with both groups"
            for row in block:
                row["interaction_p"] = p_int
                row["interaction_test"] = name
        elif len(levels) >= 2:
            table = np.array([[r["events"], r["n"] - r["events"]] for r in block])
            if table.shape == (2, 2):
                p, name = float(stats.fisher_exact(table)[1]), "Fisher exact (between strata)"
            elif (table.sum(axis=0) > 0).all():
                p, name = float(stats.chi2_contingency(table)[1]), "chi-squared (between strata)"
            else:
                p, name = math.nan, "no test: a single outcome class"
            for row in block:
                row["p_value"], row["test"] = p, name
        rows.extend(block)
    return pd.DataFrame(rows, columns=STRATA_COLUMNS)


def _natural(label: str):
    try:
        return (0, float(label), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(label))


FOLLOWUP_COLUMNS = ("patient", "week", "variable", "value")


def check_followup(followup: pd.DataFrame, source: str | None = None) -> pd.DataFrame:
    """The long follow-up sheet with numeric week/value (located errors) and the required columns."""
    missing = [c for c in FOLLOWUP_COLUMNS if c not in followup.columns]
    if missing:
        raise BatError(f"column(s) {', '.join(missing)} missing", source=source, field="row 1",
                       expected="columns patient, week, variable, value (one row per patient × week × variable)")
    out = followup.copy()
    out["week"] = numeric(followup, "week", source)
    out["value"] = numeric(followup, "value", source)
    out["patient"] = out["patient"].astype(str).str.strip()
    out["variable"] = out["variable"].astype(str).str.strip()
    return out[np.isfinite(out["week"]) & np.isfinite(out["value"])]


def longitudinal(followup: pd.DataFrame, df: pd.DataFrame, group: str | None) -> pd.DataFrame:
    """Change from baseline per variable × week × group from a mixed model (see the module contract)."""
    import patsy
    import statsmodels.api as sm

    fu = followup[followup["patient"].isin(set(df["patient"]))].copy()
    g = _group_labels(df, group)
    gmap = dict(zip(df["patient"], g))
    fu["grp"] = fu["patient"].map(gmap)
    fu = fu[fu["grp"].notna()]
    rows = []
    for var in sorted(set(fu["variable"])):
        d = fu[fu["variable"] == var]
        dup = d.duplicated(["patient", "week"])
        if dup.any():
            first = d[dup].iloc[0]
            raise BatError(f"variable {var!r}: patient {first['patient']!r} has two values at week "
                           f"{first['week']:g}", field=f"row {first.get(ROW, '?')}",
                           expected="one value per patient, week and variable")
        base_week = float(d["week"].min())
        base = d[d["week"] == base_week].set_index("patient")["value"]
        no_base = sorted(set(d["patient"]) - set(base.index))
        d = d[(d["week"] != base_week) & d["patient"].isin(base.index)].copy()
        if d.empty:
            continue
        d["change"] = d["value"].to_numpy() - base.reindex(d["patient"]).to_numpy()
        weeks = sorted(set(d["week"]))
        groups = sorted(set(d["grp"]))
        d["visit"] = d["week"].map(lambda w: f"{w:g}")
        formula = "change ~ C(visit)" if len(groups) < 2 else "change ~ C(grp) * C(visit)"
        model_name = f"mixedlm({formula}, random intercept per patient, REML); baseline week {base_week:g}"
        if no_base:
            model_name += (f"; {len(no_base)} patient(s) without a week-{base_week:g} value left out: "
                           + ", ".join(no_base[:10]) + (" …" if len(no_base) > 10 else ""))
        fe, cov, info, note = None, None, None, ""
        try:
            endog, exog = patsy.dmatrices(formula, d, return_type="dataframe")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fit = sm.MixedLM(endog, exog, groups=d["patient"].to_numpy()).fit(reml=True)
            said = sorted({str(w.message).splitlines()[0][:120] for w in caught})
            if said or not fit.converged:
                note = "; fit warnings: " + (" | ".join(said) if said else "did not converge")
            names = list(exog.columns)
            fe = fit.fe_params.to_numpy()
            cov = fit.cov_params().loc[names, names].to_numpy()
            info = exog.design_info
        except (np.linalg.LinAlgError, ValueError) as exc:
            note = f"; the model cannot be fitted ({type(exc).__name__})"
        for w in weeks:
            est = {}
            for gr in groups:
                part = d[(d["week"] == w) & (d["grp"] == gr)]["change"]
                row = {"variable": var, "week": w, "group": gr, "n": int(part.size),
                       "mean_change": float(part.mean()) if part.size else math.nan,
                       "sd_change": float(part.std(ddof=1)) if part.size > 1 else math.nan,
                       "model": model_name + note}
                if fe is not None:
                    L = np.asarray(patsy.build_design_matrices(
                        [info], pd.DataFrame({"grp": [gr], "visit": [f"{w:g}"], "change": [0.0]}))[0])[0]
                    m, se = float(L @ fe), math.sqrt(max(float(L @ cov @ L), 0.0))
                    row.update(model_change=m, model_ci_low=m - Z975 * se, model_ci_high=m + Z975 * se)
                    est[gr] = L
                rows.append(row)
            if fe is not None and len(groups) >= 2:
                for gr in groups[1:]:
                    Ld = est[gr] - est[groups[0]]
                    diff, se = float(Ld @ fe), math.sqrt(max(float(Ld @ cov @ Ld), 0.0))
                    target = next(r for r in rows[::-1] if r["group"] == gr and r["week"] == w
                                  and r["variable"] == var)
                    target.update(reference_group=groups[0], difference=diff, diff_ci_low=diff - Z975 * se,
                                  diff_ci_high=diff + Z975 * se,
                                  p_value=float(2 * stats.norm.sf(abs(diff / se))) if se > 0 else math.nan)
    return pd.DataFrame(rows, columns=LONGITUDINAL_COLUMNS)


def _fmt(v: float, digits: int = 1) -> str:
    return "" if not math.isfinite(v) else f"{v:.{digits}f}"


def table1(df: pd.DataFrame, group: str | None, variables: list[str]) -> pd.DataFrame:
    """Baseline characteristics by group with tests (see the module contract)."""
    g = _group_labels(df, group)
    groups = sorted({x for x in g if x is not None})
    cols = TABLE1_FIXED + [f"{group}={x}" if group else x for x in groups] + ["p_value", "test"]
    if not group:
        cols = TABLE1_FIXED + ["p_value", "test"]
    gcols = cols[len(TABLE1_FIXED):-2]
    rows = [dict({"variable": "patients", "level": "", "statistic": "n", "overall": str(len(df))},
                 **{c: str(int((g == x).sum())) for c, x in zip(gcols, groups)})]
    for var in variables:
        if var not in df.columns:
            continue
        if is_numeric(df, var):
            x = numeric(df, var)
            samples = [x[(g == gr).to_numpy() & np.isfinite(x)] for gr in groups]
            allx = x[np.isfinite(x)]

            def msd(v):
                return f"{_fmt(float(np.mean(v)), 2)} ({_fmt(float(np.std(v, ddof=1)), 2)})" if v.size > 1 else \
                    (_fmt(float(v[0]), 2) if v.size else "")

            def miqr(v):
                if not v.size:
                    return ""
                q1, med, q3 = np.percentile(v, [25, 50, 75])
                return f"{med:.2f} [{q1:.2f}, {q3:.2f}]"

            r1 = {"variable": var, "level": "", "statistic": "mean (SD)", "overall": msd(allx)}
            r2 = {"variable": var, "level": "", "statistic": "median [IQR]", "overall": miqr(allx)}
            for c, v in zip(gcols, samples):
                r1[c], r2[c] = msd(v), miqr(v)
            if group and len(groups) >= 2 and all(v.size > 1 for v in samples):
                if len(groups) == 2:
                    r1["p_value"] = float(stats.ttest_ind(*samples, equal_var=False).pvalue)
                    r1["test"] = "Welch t"
                    r2["p_value"] = float(stats.mannwhitneyu(*samples, alternative="two-sided").pvalue)
                    r2["test"] = "Mann-Whitney U"
                else:
                    r1["p_value"] = float(stats.f_oneway(*samples).pvalue)
                    r1["test"] = "one-way ANOVA"
                    r2["p_value"] = float(stats.kruskal(*samples).pvalue)
                    r2["test"] = "Kruskal-Wallis"
            n_missing = int((~np.isfinite(x)).sum())
            rows += [r1, r2]
        else:
            text = df[var].astype(str).str.strip()
            blank = text.map(_is_blank)
            levels = sorted(set(text[~blank]), key=_natural)
            if len(levels) > 20:
                continue  # free text (an ID, a comment): not a baseline characteristic
            table = np.array([[int(((text == lv) & (g == gr)).sum()) for gr in groups] for lv in levels])
            first = True
            for i, lv in enumerate(levels):
                n_all = int((text == lv).sum())
                r = {"variable": var, "level": lv, "statistic": "n (%)",
                     "overall": f"{n_all} ({100 * n_all / max(int((~blank).sum()), 1):.1f}%)"}
                for j, (c, gr) in enumerate(zip(gcols, groups)):
                    tot = int(((~blank) & (g == gr)).sum())
                    r[c] = f"{table[i, j]} ({100 * table[i, j] / tot:.1f}%)" if tot else "0"
                if first and group and len(groups) >= 2 and len(levels) >= 2:
                    t = table[:, (table.sum(axis=0) > 0)]
                    t = t[t.sum(axis=1) > 0]
                    if t.shape[0] >= 2 and t.shape[1] >= 2:
                        chi = stats.chi2_contingency(t)
                        if t.shape == (2, 2) and (chi.expected_freq < 5).any():
                            r["p_value"], r["test"] = float(stats.fisher_exact(t)[1]), "Fisher exact"
                        else:
                            r["p_value"], r["test"] = float(chi.pvalue), "chi-squared"
                first = False
                rows.append(r)
            n_missing = int(blank.sum())
        if n_missing:
            rows.append({"variable": var, "level": "", "statistic": "missing, n", "overall": str(n_missing)})
    return pd.DataFrame(rows, columns=cols)
