"""Reports: gate drawings, per-patient HTML and PDF reports, and the review gallery."""

from __future__ import annotations

from ._html import ReportPaths, render_reports

__all__ = ["ReportPaths", "render_reports"]
