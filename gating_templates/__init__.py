"""Gating templates shipped with bat_analysis (YAML files; see ``bat templates list``)."""
