"""Hardened parsing of every YAML and XML input: one set of guards, every failure a located error.

Templates, overrides files, FlowJo workspaces and Gating-ML documents are untrusted input. They are read
only through this module (YAML with :func:`load_yaml`, XML with :func:`read_xml` / :func:`parse_xml`),
and whatever a third-party parser (FlowKit, lxml) does with XML afterwards is wrapped in :func:`guarded`.
The contract:

* Every failure raises :class:`~bat_analysis.errors.InputParseError` (a ``BatError``): the file, the place
  (``line L, column C`` where the parser gives it) and, in a technician's words first, what is wrong and
  what was expected, then the technical detail. No ``RecursionError``, ``ValueError``, ``MemoryError`` or
  parser exception escapes, and no input can take more than a bounded time or memory.
* YAML is ``yaml.safe_load`` semantics (plain data only, no Python objects), composed by a loader that
  checks, before any value is built:

  ======================  ===========  =============================================================
  limit                   default      why
  ======================  ===========  =============================================================
  ``MAX_YAML_BYTES``      10 MiB       a template is a few KB and an overrides file for thousands of
                                       tubes about a MB; bigger is a mistake or an attack
  ``MAX_YAML_DEPTH``      100          the deepest template or overrides value is about 6 levels;
                                       deeper nesting (``[[[[...``) would exhaust Python's recursion
  ``MAX_YAML_NODES``      1,000,000    values counted with aliases expanded as often as used, so that a
                                       675-byte alias bomb (billions of values) is refused at once
  ``MAX_NUMBER_CHARS``    100          a number longer than this is no measurement; Python refuses to
                                       convert integers over 4,300 digits (and slows down before)
  ======================  ===========  =============================================================

  The expanded depth (through aliases) is held to ``MAX_YAML_DEPTH`` too, and an alias that refers to the
  collection it is in (a cycle) is refused.
* XML is parsed with ``defusedxml`` (expat underneath): a DTD (``<!DOCTYPE``), any entity declaration
  (internal "billion laughs", parameter or external ``SYSTEM`` entities) and external references are
  refused, never expanded or fetched; nothing touches the network. FlowJo workspaces and Gating-ML never
  need a DTD. Limits:

  ======================  ===========  =============================================================
  ``MAX_XML_BYTES``       128 MiB      a FlowJo workspace of a large experiment is tens of MB
  ``MAX_XML_DEPTH``       256          gate hierarchies are a few dozen elements deep; 256 is also
                                       libxml2's own limit (what FlowKit's lxml would refuse)
  ``MAX_XML_ELEMENTS``    2,000,000    a gated sample is about 1,000 elements (about 110 bytes each in
                                       the corpus workspaces), so 2,000 samples; the byte limit alone
                                       would let 33 million empty elements take gigabytes of memory
  ======================  ===========  =============================================================

  :func:`read_xml` returns the checked bytes with the tree: those bytes hold no DTD, so handing them to
  another parser (FlowKit parses with lxml) cannot expand entities or reach the network.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar
from xml.etree import ElementTree as ET

from .errors import BatError, InputParseError

__all__ = ["MAX_YAML_BYTES", "MAX_YAML_DEPTH", "MAX_YAML_NODES", "MAX_NUMBER_CHARS", "MAX_XML_BYTES",
           "MAX_XML_DEPTH", "MAX_XML_ELEMENTS", "load_yaml", "read_xml", "parse_xml", "XmlDocument", "guarded",
           "read_limited"]

MAX_YAML_BYTES = 10 * 1024 * 1024
MAX_YAML_DEPTH = 100
MAX_YAML_NODES = 1_000_000
MAX_NUMBER_CHARS = 100
MAX_XML_BYTES = 128 * 1024 * 1024
MAX_XML_DEPTH = 256
MAX_XML_ELEMENTS = 2_000_000

_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
T = TypeVar("T")


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):g} MiB"


def read_limited(path: str | Path, limit: int, *, what: str) -> bytes:
    """The bytes of ``path``, refused (located error) when missing, unreadable or over ``limit`` bytes."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > limit:
            raise InputParseError(f"the {what} is too large ({size:,} bytes)", source=str(p),
                                  expected=f"at most {_mib(limit)}")
        with p.open("rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise InputParseError(f"cannot read the {what} ({exc.strerror or exc})", source=str(p)) from None
    if len(data) > limit:  # grew while being read
        raise InputParseError(f"the {what} is too large", source=str(p), expected=f"at most {_mib(limit)}")
    return data


# ---------------------------------------------------------------------------------------------- YAML
def _where(mark: Any) -> str | None:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else None


class _Refused(Exception):
    """A limit hit while composing (carries the place and the message)."""

    def __init__(self, mark: Any, message: str, expected: str | None = None) -> None:
        super().__init__(message)
        self.mark, self.message, self.expected = mark, message, expected


def _loader_class() -> type:
    import yaml

    class GuardedLoader(yaml.SafeLoader):
        """``SafeLoader`` that refuses deep nesting and over-long numbers while composing."""

        def __init__(self, stream: Any) -> None:
            super().__init__(stream)
            self._depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self._depth >= MAX_YAML_DEPTH:
                raise _Refused(self.peek_event().start_mark, f"values are nested more than {MAX_YAML_DEPTH} "
                               "levels deep", f"at most {MAX_YAML_DEPTH} levels of lists and mappings")
            self._depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

        def compose_scalar_node(self, anchor: Any) -> Any:
            node = super().compose_scalar_node(anchor)
            if node.tag in _NUMBER_TAGS and len(node.value) > MAX_NUMBER_CHARS:
                raise _Refused(node.start_mark, f"a number written with {len(node.value):,} characters is too long",
                               f"a number of at most {MAX_NUMBER_CHARS} characters")
            return node

        def construct_object(self, node: Any, deep: bool = False) -> Any:
            try:
                return super().construct_object(node, deep=deep)
            except (ValueError, TypeError, OverflowError) as exc:  # e.g. a date 2024-13-45, !!int on text
                raise _Refused(node.start_mark, f"value {node.tag.rsplit(':', 1)[-1]} cannot be read "
                               f"({type(exc).__name__}: {exc})") from exc

    return GuardedLoader


_LOADER: type | None = None


def _expanded_size(root: Any) -> None:
    """Refuse a composed YAML graph whose alias-expanded size or depth exceeds the limits, or that has a cycle.

    Aliases make the graph a DAG whose shared nodes count once per use; sizes and depths are computed once
    per node (memoised), iteratively, so that the check itself is linear in the file.
    """
    import yaml

    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if isinstance(node, yaml.SequenceNode):
            kids = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            kids = [x for pair in node.value for x in pair]
        else:
            kids = []
        if done:
            on_path.discard(key)
            s = 1 + sum(size[id(k)] for k in kids)
            d = 1 + max((depth[id(k)] for k in kids), default=0)
            if s > MAX_YAML_NODES:
                raise _Refused(node.start_mark, f"more than {MAX_YAML_NODES:,} values once aliases (*name) "
                               "are expanded", f"at most {MAX_YAML_NODES:,} values")
            if d > MAX_YAML_DEPTH:
                raise _Refused(node.start_mark, f"values are nested more than {MAX_YAML_DEPTH} levels deep once "
                               "aliases (*name) are expanded", f"at most {MAX_YAML_DEPTH} levels")
            size[key], depth[key] = s, d
            continue
        if key in size:
            continue
        if key in on_path:
            raise _Refused(node.start_mark, "an alias (*name) refers to a list or mapping that contains it",
                           "no self-referring aliases")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in kids if id(k) not in size)


def load_yaml(text_or_path: str | bytes | Path, *, source: str | None = None, what: str = "YAML file") -> Any:
    """``yaml.safe_load`` behind the limits of this module; a :class:`Path` is read (size-checked) first.

    ``what`` names the file for the technician ("template", "overrides file"). Raises
    :class:`InputParseError` located at ``line L, column C`` for every failure.
    """
    import yaml

    global _LOADER
    if isinstance(text_or_path, Path):
        source = source or str(text_or_path)
        data: str | bytes = read_limited(text_or_path, MAX_YAML_BYTES, what=what)
    else:
        data = text_or_path
    if len(data) > MAX_YAML_BYTES:
        raise InputParseError(f"the {what} is too large ({len(data):,} characters)", source=source,
                              expected=f"at most {_mib(MAX_YAML_BYTES)}")
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InputParseError(f"the {what} is not UTF-8 text (byte {exc.start} cannot be decoded)",
                                  source=source, where=f"byte {exc.start}", expected="a UTF-8 text file") from None
    if _LOADER is None:
        _LOADER = _loader_class()
    loader = None
    try:
        loader = _LOADER(data)  # the reader already refuses control characters here
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node)
        return loader.construct_document(node)
    except _Refused as exc:
        raise InputParseError(exc.message, source=source, where=_where(exc.mark),
                              expected=exc.expected) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        detail = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        raise InputParseError(f"the {what} is not valid YAML: {detail or exc}", source=source,
                              where=_where(mark)) from None
    except yaml.reader.ReaderError as exc:  # a control character, or bytes that are not the text's encoding
        raise InputParseError(f"the {what} holds a character YAML does not allow ({exc.reason}, "
                              f"#x{exc.character:04x})", source=source, where=f"character {exc.position + 1}",
                              expected="printable text") from None
    except yaml.YAMLError as exc:
        raise InputParseError(f"the {what} is not valid YAML: {' '.join(str(exc).split())}", source=source,
                              where=_where(getattr(exc, "problem_mark", None))) from None
    except RecursionError:  # not reachable within the depth limit; kept so that none can ever escape
        raise InputParseError(f"the {what} is nested too deeply", source=source,
                              expected=f"at most {MAX_YAML_DEPTH} levels") from None
    finally:
        if loader is not None:
            loader.dispose()


# ---------------------------------------------------------------------------------------------- XML
@dataclass(frozen=True)
class XmlDocument:
    """A checked XML document: its root element, and its bytes (no DTD: safe to hand to another parser)."""

    data: bytes
    root: ET.Element
    source: str | None = None

    @property
    def root_name(self) -> str:
        """The root element's local name (``Workspace``, ``Gating-ML``)."""
        return self.root.tag.rsplit("}", 1)[-1]

    @property
    def root_namespace(self) -> str:
        """The root element's namespace URI ('' when none)."""
        return self.root.tag[1:].split("}", 1)[0] if self.root.tag.startswith("{") else ""


def _line_of(data: bytes, needle: bytes) -> str | None:
    at = data.find(needle)
    if at < 0:
        return None
    line = data.count(b"\n", 0, at) + 1
    column = at - (data.rfind(b"\n", 0, at) + 1) + 1
    return f"line {line}, column {column}"


def read_xml(data_or_path: bytes | str | Path, *, source: str | None = None, what: str = "XML file") -> XmlDocument:
    """Parse XML with DTDs, entities and external references refused, within the size and depth limits.

    A ``str`` or :class:`Path` is a file name (read size-checked); ``bytes`` are the document itself.
    """
    import defusedxml
    import defusedxml.ElementTree as DET

    if isinstance(data_or_path, (str, Path)):
        source = source or str(data_or_path)
        data = read_limited(data_or_path, MAX_XML_BYTES, what=what)
    else:
        data = bytes(data_or_path)
        if len(data) > MAX_XML_BYTES:
            raise InputParseError(f"the {what} is too large ({len(data):,} bytes)", source=source,
                                  expected=f"at most {_mib(MAX_XML_BYTES)}")
    root: ET.Element | None = None
    depth = elements = 0
    try:
        for event, el in DET.iterparse(io.BytesIO(data), events=("start", "end"), forbid_dtd=True,
                                       forbid_entities=True, forbid_external=True):
            if event == "start":
                if root is None:
                    root = el
                depth += 1
                elements += 1
                if elements > MAX_XML_ELEMENTS:
                    raise InputParseError(f"the {what} has more than {MAX_XML_ELEMENTS:,} elements",
                                          source=source, expected=f"at most {MAX_XML_ELEMENTS:,} elements")
                if depth > MAX_XML_DEPTH:
                    raise InputParseError(f"elements of the {what} are nested more than {MAX_XML_DEPTH} deep",
                                          source=source, where=f"element <{el.tag[:60]}>",
                                          expected=f"at most {MAX_XML_DEPTH} levels")
            else:
                depth -= 1
    except defusedxml.DTDForbidden:
        raise InputParseError(f"the {what} declares a DTD (<!DOCTYPE ...>), which could expand entities or read "
                              "other files; refused", source=source, where=_line_of(data, b"<!DOCTYPE"),
                              expected="a FlowJo workspace or Gating-ML document without <!DOCTYPE>") from None
    except (defusedxml.EntitiesForbidden, defusedxml.ExternalReferenceForbidden) as exc:
        raise InputParseError(f"the {what} declares entities or external references ({exc}); refused",
                              source=source, where=_line_of(data, b"<!ENTITY"),
                              expected="XML without entity declarations") from None
    except ET.ParseError as exc:
        line, col = getattr(exc, "position", (None, None))
        reason = str(exc).split(": line", 1)[0]
        raise InputParseError(f"the {what} is not well-formed XML ({reason})", source=source,
                              where=f"line {line}, column {col + 1}" if line is not None else None) from None
    except (ValueError, LookupError, RecursionError, MemoryError) as exc:  # e.g. an unknown encoding
        raise InputParseError(f"the {what} cannot be read as XML ({type(exc).__name__}: {exc})",
                              source=source) from None
    if root is None:
        raise InputParseError(f"the {what} is empty", source=source, expected="an XML document")
    return XmlDocument(data, root, source)


def parse_xml(data_or_path: bytes | str | Path, *, source: str | None = None, what: str = "XML file") -> ET.Element:
    """The root element of a checked XML document (see :func:`read_xml`)."""
    return read_xml(data_or_path, source=source, what=what).root


# ---------------------------------------------------------------------------------------------- others' parsers
def guarded(call: Callable[[], T], *, source: str | None, what: str, library: str = "FlowKit",
            error: type[BatError] = InputParseError) -> T:
    """Run a third-party parser call; any exception it raises becomes a located ``error`` (a ``BatError``).

    Our own ``BatError`` passes unchanged. The message leads with what could not be read, then the library's
    own words: ``FILE: this FlowJo workspace could not be read (FlowKit: TypeError: ...)``; the library's
    exception is chained for debugging.
    """
    try:
        return call()
    except BatError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the library raises is reported, never a traceback
        detail = " ".join(str(exc).split())
        if len(detail) > 300:
            detail = detail[:297] + "..."
        raise error(f"this {what} could not be read ({library}: {type(exc).__name__}: {detail})",
                    source=source) from exc
