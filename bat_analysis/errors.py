"""The project's exception hierarchy: every refusal is a ``BatError`` naming file, field and expectation."""

from __future__ import annotations


class BatError(Exception):
    """Base class of every error bat_analysis raises on purpose.

    ``source`` is the file (or sheet, or template) concerned, ``field`` the keyword, column,
    byte offset or template path, and ``expected`` what was expected there. ``summary``, when given, is the
    problem in a technician's words; it leads the text, before the field and the technical ``message``:
    ``SOURCE: SUMMARY — FIELD: MESSAGE (expected EXPECTED)``.
    """

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None,
                 expected: str | None = None, summary: str | None = None) -> None:
        self.message = message
        self.source = source
        self.field = field
        self.expected = expected
        self.summary = summary
        detail = f"{field}: {message}" if field else message
        if summary:
            detail = f"{summary} — {detail}"
        text = f"{source}: {detail}" if source else detail
        if expected:
            text += f" (expected {expected})"
        super().__init__(text)


class FcsFormatError(BatError):
    """An FCS file that cannot be read as the standard says."""


class MarkerError(BatError):
    """A marker that is absent from a file, or matches more than one channel."""


class ProblemsError(BatError):
    """An input with several problems, all reported at once; ``problems`` lists each with its location."""

    def __init__(self, message: str, *, source: str | None = None,
                 problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        if self.problems:
            message = message + "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message, source=source)


class LayoutError(ProblemsError):
    """An experiment layout sheet with problems (row, column, what was expected)."""


class TemplateError(ProblemsError):
    """A gating template that does not validate (each problem with its place in the template)."""


class GatingError(BatError):
    """A gate that cannot be evaluated or estimated."""


class AnalysisError(BatError):
    """Metrics, fits or classes that cannot be computed from the inputs given."""
