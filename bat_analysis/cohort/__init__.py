"""``bat cohort``: the runs' per-patient results joined with clinical data, and the statistics on them.

Modules: ``run`` (``run_cohort``: everything the command does; the public entry point) and, internal,
``_clinical`` (reading and checking the clinical sheet and the runs' ``patients.csv``, the join, derived columns),
``_delong`` (DeLong's AUC variance and paired test, Sun & Xu's fast algorithm), ``_analyses`` (ROC, associations,
strata, longitudinal, Table 1: DataFrame in, DataFrame out), ``_report`` (cohort.html, cohort.pdf) and
``_simulate_clinical`` (a simulated cohort with known relations for ``--demo`` and the tests).
Nothing here is imported by ``bat_analysis`` itself, so the package's import time does not include statsmodels
or scikit-learn.
"""
