"""A typed JSON form for the scoring objects cached in the results store (nothing a reader must unpickle).

``encode(obj)`` turns a value made of ``None``/bool/int/float/str, lists, tuples, dicts (any hashable keys),
numpy arrays and scalars of plain numeric dtypes, pandas DataFrames of plain columns, and dataclasses of an
allowed set into JSON text. ``decode(text, allowed, expected)`` reads it back and **validates** it: only the
tags below are accepted, only the dataclasses named in ``allowed`` are built, every dataclass field is checked
against its type annotation, arrays must have a numeric dtype and a data length matching their shape, and the
result must be an instance of ``expected``. Anything else raises :class:`TypedJsonError` naming the place in
the document (``fits[2].value.ec50: expected a float, got str``). Decoding never imports a module or calls
anything named by the document: a name only selects a class from ``allowed``.

Tags (a JSON object with exactly one of these keys)::

    {"$t": [...]}                         tuple
    {"$m": [[key, value], ...]}           dict (keys encoded like values)
    {"$a": [dtype, shape, flat values]}   numpy array
    {"$s": [dtype, value]}                numpy scalar
    {"$c": [class name, {field: value}]}  dataclass
    {"$df": [columns, dtypes, index, [column values, ...]]}   pandas DataFrame

Floats are written with Python's shortest round-trip representation (NaN and ±Infinity as JSON extensions),
so a decoded object holds exactly the numbers that were encoded.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any, Mapping, Union

import numpy as np

_NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float: dtypes that carry no Python objects


class TypedJsonError(ValueError):
    """A document that is not a valid typed-JSON form of the expected object; the message names the place."""


def _dtype_name(dtype: np.dtype) -> str:
    return dtype.newbyteorder("<").str if dtype.kind in "iuf" else dtype.str


def _enc(value: Any) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic):
        if value.dtype.kind not in _NUMERIC_KINDS:
            raise TypeError(f"cannot encode a numpy {value.dtype} scalar")
        return {"$s": [_dtype_name(value.dtype), value.item()]}
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, list):
        return [_enc(v) for v in value]
    if isinstance(value, tuple):
        return {"$t": [_enc(v) for v in value]}
    if isinstance(value, dict):
        return {"$m": [[_enc(k), _enc(v)] for k, v in value.items()]}
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in _NUMERIC_KINDS:
            raise TypeError(f"cannot encode a numpy array of dtype {value.dtype}")
        return {"$a": [_dtype_name(value.dtype), list(value.shape), value.ravel().tolist()]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"$c": [type(value).__name__,
                       {f.name: _enc(getattr(value, f.name)) for f in dataclasses.fields(value)}]}
    import pandas as pd

    if isinstance(value, pd.DataFrame):
        cols = [_enc(c) for c in value.columns]
        dtypes = [str(value[c].dtype) if value.columns.is_unique else str(value.iloc[:, i].dtype)
                  for i, c in enumerate(value.columns)]
        for name, dt in zip(value.columns, dtypes):
            if dt not in _FRAME_DTYPES:
                raise TypeError(f"cannot encode column {name!r} of dtype {dt}")
        data = [[_enc(_plain(v)) for v in value.iloc[:, i].tolist()] for i in range(value.shape[1])]
        return {"$df": [cols, dtypes, [_enc(_plain(v)) for v in value.index.tolist()], data]}
    raise TypeError(f"cannot encode a {type(value).__name__}")


def _plain(v: Any) -> Any:
    import pandas as pd

    if v is pd.NA or v is pd.NaT:
        return None
    return v


_FRAME_DTYPES = {"float64", "float32", "int64", "int32", "bool", "object"}


def encode(obj: Any) -> str:
    """JSON text of ``obj`` (see the module docstring for what can be encoded)."""
    return json.dumps(_enc(obj), separators=(",", ":"), allow_nan=True)


# ------------------------------------------------------------------------------------------------ decoding
class _Decoder:
    def __init__(self, allowed: Mapping[str, type]) -> None:
        self.allowed = dict(allowed)

    def fail(self, where: str, what: str) -> TypedJsonError:
        return TypedJsonError(f"{where or '(top level)'}: {what}")

    def value(self, doc: Any, where: str) -> Any:
        if doc is None or isinstance(doc, (bool, str, int, float)):
            return doc
        if isinstance(doc, list):
            return [self.value(v, f"{where}[{i}]") for i, v in enumerate(doc)]
        if not isinstance(doc, dict) or len(doc) != 1:
            raise self.fail(where, "expected a value or a tagged object with one key")
        tag, body = next(iter(doc.items()))
        if tag == "$t":
            if not isinstance(body, list):
                raise self.fail(where, "a tuple must hold a list")
            return tuple(self.value(v, f"{where}[{i}]") for i, v in enumerate(body))
        if tag == "$m":
            if not isinstance(body, list) or not all(isinstance(p, list) and len(p) == 2 for p in body):
                raise self.fail(where, "a mapping must hold [key, value] pairs")
            out = {}
            for i, (k, v) in enumerate(body):
                key = self.value(k, f"{where}.key[{i}]")
                try:
                    hash(key)
                except TypeError:
                    raise self.fail(f"{where}.key[{i}]", "a mapping key must be a number, text or tuple") from None
                out[key] = self.value(v, f"{where}[{key!r}]")
            return out
        if tag == "$a":
            return self.array(body, where)
        if tag == "$s":
            if not (isinstance(body, list) and len(body) == 2 and isinstance(body[0], str)):
                raise self.fail(where, "a numpy scalar must be [dtype, value]")
            dtype = self.dtype(body[0], where)
            if isinstance(body[1], bool) and dtype.kind != "b" or not isinstance(body[1], (bool, int, float)):
                raise self.fail(where, f"a {dtype} scalar must hold a number")
            return dtype.type(body[1])
        if tag == "$c":
            return self.dataclass(body, where)
        if tag == "$df":
            return self.frame(body, where)
        raise self.fail(where, f"unknown tag {tag!r}")

    def dtype(self, name: Any, where: str) -> np.dtype:
        try:
            dtype = np.dtype(name) if isinstance(name, str) else None
        except TypeError:
            dtype = None
        if dtype is None or dtype.kind not in _NUMERIC_KINDS or dtype.hasobject:
            raise self.fail(where, f"unsupported dtype {name!r} (expected a numeric dtype)")
        return dtype

    def array(self, body: Any, where: str) -> np.ndarray:
        if not (isinstance(body, list) and len(body) == 3 and isinstance(body[1], list) and isinstance(body[2], list)):
            raise self.fail(where, "an array must be [dtype, shape, values]")
        dtype = self.dtype(body[0], where)
        shape = body[1]
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape) or len(shape) > 8:
            raise self.fail(where, f"bad array shape {shape!r}")
        if math.prod(shape) != len(body[2]):
            raise self.fail(where, f"array of shape {shape} holds {len(body[2])} values")
        if not all(isinstance(v, (int, float)) for v in body[2]):
            raise self.fail(where, "array values must be numbers")
        try:
            return np.array(body[2], dtype=dtype).reshape(shape)
        except (ValueError, OverflowError) as exc:
            raise self.fail(where, f"array values do not fit {dtype} ({exc})") from None

    def dataclass(self, body: Any, where: str) -> Any:
        if not (isinstance(body, list) and len(body) == 2 and isinstance(body[0], str) and isinstance(body[1], dict)):
            raise self.fail(where, "a dataclass must be [name, {field: value}]")
        name, fields = body
        cls = self.allowed.get(name)
        if cls is None:
            raise self.fail(where, f"class {name!r} is not allowed here "
                                   f"(expected one of {', '.join(sorted(self.allowed))})")
        declared = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(fields) - set(declared))
        if unknown:
            raise self.fail(where, f"unknown field(s) of {name}: {', '.join(unknown)}")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for fname, raw in fields.items():
            value = self.value(raw, f"{where}.{fname}")
            _check(value, hints[fname], f"{where}.{fname}", self)
            kwargs[fname] = value
        missing = [f for f, d in declared.items() if f not in kwargs and d.default is dataclasses.MISSING
                   and d.default_factory is dataclasses.MISSING]
        if missing:
            raise self.fail(where, f"missing field(s) of {name}: {', '.join(missing)}")
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise self.fail(where, f"not a valid {name} ({exc})") from None

    def frame(self, body: Any, where: str) -> Any:
        import pandas as pd

        if not (isinstance(body, list) and len(body) == 4 and all(isinstance(b, list) for b in body)):
            raise self.fail(where, "a table must be [columns, dtypes, index, data]")
        cols, dtypes, index, data = body
        if not (len(cols) == len(dtypes) == len(data)):
            raise self.fail(where, "a table needs as many dtypes and data columns as column names")
        columns = [self.value(c, f"{where}.columns[{i}]") for i, c in enumerate(cols)]
        if not all(isinstance(c, str) for c in columns):
            raise self.fail(where, "table column names must be text")
        idx = [self.value(v, f"{where}.index[{i}]") for i, v in enumerate(index)]
        if not all(isinstance(v, (int, str)) for v in idx):
            raise self.fail(where, "a table index must hold integers or text")
        series = {}
        for i, (name, dt, values) in enumerate(zip(columns, dtypes, data)):
            here = f"{where}[{name!r}]"
            if dt not in _FRAME_DTYPES:
                raise self.fail(here, f"unsupported column dtype {dt!r}")
            if not isinstance(values, list) or len(values) != len(idx):
                raise self.fail(here, f"expected {len(idx)} values")
            vals = [self.value(v, f"{here}[{j}]") for j, v in enumerate(values)]
            if dt != "object" and not all(isinstance(v, (int, float, np.number, np.bool_)) for v in vals):
                raise self.fail(here, f"a {dt} column must hold numbers")
            try:
                series[i] = pd.Series(vals, dtype=dt, index=idx if idx else None)
            except (ValueError, TypeError, OverflowError) as exc:
                raise self.fail(here, f"values do not fit {dt} ({exc})") from None
        frame = pd.DataFrame(series, index=pd.Index(idx) if idx else pd.RangeIndex(0))
        if isinstance(frame.index, pd.Index) and idx == list(range(len(idx))):
            frame.index = pd.RangeIndex(len(idx))
        frame.columns = columns
        return frame


def _check(value: Any, hint: Any, where: str, dec: _Decoder) -> None:
    """Raise TypedJsonError unless ``value`` fits the annotation ``hint``."""
    if hint is Any or hint is object:
        return
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        for option in args:
            try:
                _check(value, option, where, dec)
                return
            except TypedJsonError:
                continue
        raise dec.fail(where, f"expected {_name(hint)}, got {type(value).__name__}")
    if hint is type(None):
        if value is not None:
            raise dec.fail(where, f"expected nothing (null), got {type(value).__name__}")
        return
    if origin is list or hint is list:
        if not isinstance(value, list):
            raise dec.fail(where, f"expected a list, got {type(value).__name__}")
        for i, v in enumerate(value):
            if args:
                _check(v, args[0], f"{where}[{i}]", dec)
        return
    if origin is tuple or hint is tuple:
        if not isinstance(value, tuple):
            raise dec.fail(where, f"expected a tuple, got {type(value).__name__}")
        if args and not (len(args) == 2 and args[1] is Ellipsis) and len(args) != len(value):
            raise dec.fail(where, f"expected {len(args)} items, got {len(value)}")
        for i, v in enumerate(value):
            if args:
                _check(v, args[0] if len(args) == 2 and args[1] is Ellipsis else args[i], f"{where}[{i}]", dec)
        return
    if origin in (dict, Mapping) or hint is dict:
        if not isinstance(value, dict):
            raise dec.fail(where, f"expected a mapping, got {type(value).__name__}")
        if args:
            for k, v in value.items():
                _check(k, args[0], f"{where}.key {k!r}", dec)
                _check(v, args[1], f"{where}[{k!r}]", dec)
        return
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise dec.fail(where, f"expected a number, got {type(value).__name__}")
        return
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise dec.fail(where, f"expected an integer, got {type(value).__name__}")
        return
    if hint is bool:
        if not isinstance(value, (bool, np.bool_)):
            raise dec.fail(where, f"expected true or false, got {type(value).__name__}")
        return
    if isinstance(hint, type):
        if not isinstance(value, hint):
            raise dec.fail(where, f"expected {hint.__name__}, got {type(value).__name__}")
        return
    raise dec.fail(where, f"cannot check a value against {hint!r}")


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def decode(text: str | bytes, allowed: Mapping[str, type], expected: type) -> Any:
    """The object encoded in ``text``; raises TypedJsonError (naming the place) for anything not valid."""
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TypedJsonError(f"not valid JSON ({exc})") from None
    except RecursionError:
        raise TypedJsonError("nested too deeply") from None
    try:
        obj = _Decoder(allowed).value(doc, "")
    except RecursionError:
        raise TypedJsonError("nested too deeply") from None
    if not isinstance(obj, expected):
        raise TypedJsonError(f"(top level): expected a {expected.__name__}, got {type(obj).__name__}")
    return obj
