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


class DataFileError(BatError):
    """A file that may not be opened as an input: ``kind`` is ``"missing"``, ``"outside"`` (out of the data
    folder) or ``"not_regular"`` (a FIFO, device, directory, kernel pseudo-file...); ``detail`` is the message
    without the file's name, for callers that name the file their own way (a layout's row and column)."""

    def __init__(self, detail: str, *, kind: str, source: str | None = None, expected: str | None = None) -> None:
        self.kind = kind
        self.detail = detail
        super().__init__(detail, source=source, expected=expected)


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


class WriteError(BatError):
    """A file or folder that could not be written (disk full, permission denied, a link in the way...).

    ``source`` is the path, ``cause`` the reason in plain words, ``todo`` what to do about it and ``detail``
    the operating system's own message. Raised by :mod:`bat_analysis._fileio`.
    """

    def __init__(self, path: str, cause: str, todo: str, *, action: str = "write", detail: str | None = None
                 ) -> None:
        self.cause = cause
        self.todo = todo
        self.detail = detail
        super().__init__(f"cannot {action} {path}: {cause}. What to do: {todo}"
                         + (f" [{detail}]" if detail else ""))
        self.source = path


class InputParseError(BatError):
    """A YAML or XML input that cannot be parsed safely (:mod:`bat_analysis._safe_parse`).

    ``where`` is the place in the file (``line L, column C``) when the parser gives it, ``problem`` the
    message without the file and place; :attr:`located` is ``where: problem (expected ...)``, the form of
    a ``ProblemsError`` entry.
    """

    def __init__(self, problem: str, *, source: str | None = None, where: str | None = None,
                 expected: str | None = None) -> None:
        self.problem = problem
        self.where = where
        super().__init__(problem, source=source, field=where, expected=expected)

    @property
    def located(self) -> str:
        text = f"{self.where or 'top level'}: {self.problem}"
        return text + (f" (expected {self.expected})" if self.expected else "")
