"""The review loop: reviewer corrections, where they come from, and how a run applies them. ``corrections`` is
its public model; the ``_``-prefixed modules are internal.

* :mod:`.corrections` -- what a correction is (``GateCorrection``, ``ThresholdCorrection``, ``Withdrawal``,
  ``Corrections``), the gate geometry check, and the overrides YAML file (``read_overrides``);
* :mod:`._exchange` -- a run's gates out to FlowJo / Gating-ML (``export_run_gates``) and gates edited there
  back as corrections (``read_edited_gates``);
* :mod:`._load` -- the corrections given to one run (``--overrides``, ``--gates-from``) read together;
* :mod:`._log` -- the results store's corrections log: what a run adds to it, which of its corrections apply,
  which are stale (and the tubes they flag), the geometry in force for a gate;
* :mod:`._status` -- the review state derived from the log (``bat review``'s decisions): excluded tubes
  flagged for scoring, the review-status columns of the tables.

Imports go one way: ``corrections`` <- ``_exchange`` <- ``_load``; ``corrections`` <- ``_log``; ``_status``
imports none of them. This package imports nothing from it on import (each module is imported by name).
"""
