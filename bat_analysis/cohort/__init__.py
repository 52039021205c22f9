"""``bat cohort``: the runs' per-patient results joined with clinical data, and the statistics on them.

Modules: ``clinical`` (reading and checking the clinical sheet and the runs' ``patients.csv``, the join, derived
columns), ``delong`` (DeLong's AUC variance and paired test, Sun & Xu's fast algorithm), ``analyses`` (ROC,
associations, strata, longitudinal, Table 1: DataFrame in, DataFrame out), ``report`` (cohort.html, cohort.pdf),
``run`` (``run_cohort``: everything the command does) and ``simulate_clinical`` (a simulated cohort with known
relations for ``--demo`` and the tests). Nothing here is imported by ``bat_analysis`` itself, so the package's
import time does not include statsmodels or scikit-learn.
"""
