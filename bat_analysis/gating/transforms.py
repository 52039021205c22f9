"""Scale transforms for gating and display: linear, log, asinh, logicle, hyperlog, FlowJo biex.

Each transform is a small frozen dataclass with a ``name``, ``apply`` (data -> scale) and ``inverse``
(scale -> data), computed with FlowUtils (the numerical core of FlowKit's ``flowkit.transforms``); the
matching FlowKit object is available from ``to_flowkit()`` for interchange. Parameters follow Gating-ML
2.0 (T: top of scale, M: decades, W: linearisation width in decades, A: extra negative decades).

:class:`FastLogicle` and :class:`FastHyperlog` evaluate the same functions from a precomputed table:
both scales are defined as the root of an *explicit* inverse function, so the table holds the exact
inverse at equally spaced scale values and the slope there, and a value is found by a binary search and
cubic Hermite interpolation. They agree with FlowUtils to better than 1e-6 relative over the table's
range (data values from ``-x_span`` to ``x_span``, by default the whole float range an FCS channel
reaches after compensation); values outside it are computed exactly.

:func:`from_spec` builds any of them from a template's mapping, e.g.
``{"type": "logicle", "T": 262144, "W": 0.5, "M": 4.5, "A": 0}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar, Mapping

import numpy as np

from ..errors import TemplateError

__all__ = [
    "ScaleTransform", "Linear", "Log", "Asinh", "Logicle", "Hyperlog", "FlowJoBiex", "FlowJoLog",
    "FastLogicle", "FastHyperlog", "from_spec", "TRANSFORM_TYPES",
]


def _f64(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def _fmt(v: float) -> str:
    return format(float(v), "g")


@dataclass(frozen=True, eq=True)
class ScaleTransform:
    """Base of all transforms; subclasses define ``kind``, ``params()``, ``apply`` and ``inverse``."""

    kind: ClassVar[str] = ""
    #: whether ``apply`` is a closed form or a table (a few ns per value), cheaper per value than a binary
    #: search among a few hundred edges; False for the transforms found by root finding
    cheap_apply: ClassVar[bool] = False

    def params(self) -> dict[str, float]:
        raise NotImplementedError

    @property
    def name(self) -> str:
        """A stable, human-readable identifier that also encodes the parameters."""
        args = ",".join(f"{k}={_fmt(v)}" for k, v in self.params().items())
        return f"{self.kind}({args})"

    def spec(self) -> dict[str, Any]:
        """The template mapping that :func:`from_spec` turns back into this transform."""
        return {"type": self.kind, **{k: float(v) for k, v in self.params().items()}}

    def apply(self, values: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def inverse(self, values: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def to_flowkit(self) -> Any:
        """The equivalent ``flowkit.transforms`` object."""
        raise NotImplementedError


@dataclass(frozen=True)
class Linear(ScaleTransform):
    """Gating-ML ``flin``: (x + A) / (T + A)."""

    T: float = 262144.0
    A: float = 0.0
    kind: ClassVar[str] = "linear"
    cheap_apply: ClassVar[bool] = True

    def params(self) -> dict[str, float]:
        return {"T": self.T, "A": self.A}

    def apply(self, values: np.ndarray) -> np.ndarray:
        return (_f64(values) + self.A) / (self.T + self.A)

    def inverse(self, values: np.ndarray) -> np.ndarray:
        return _f64(values) * (self.T + self.A) - self.A

    def to_flowkit(self) -> Any:
        from flowkit import transforms
        return transforms.LinearTransform(param_t=self.T, param_a=self.A)


@dataclass(frozen=True)
class Log(ScaleTransform):
    """Gating-ML ``flog``: log10(x / T) / M + 1 (undefined, NaN, for x <= 0)."""

    T: float = 262144.0
    M: float = 4.5
    kind: ClassVar[str] = "log"

    def params(self) -> dict[str, float]:
        return {"T": self.T, "M": self.M}

    def apply(self, values: np.ndarray) -> np.ndarray:
        from flowutils import transforms as fu
        with np.errstate(divide="ignore", invalid="ignore"):
            return fu.log(_f64(values), None, t=self.T, m=self.M)

    def inverse(self, values: np.ndarray) -> np.ndarray:
        from flowutils import transforms as fu
        return fu.log_inverse(_f64(values), None, t=self.T, m=self.M)

    def to_flowkit(self) -> Any:
        from flowkit import transforms
        return transforms.LogTransform(param_t=self.T, param_m=self.M)


@dataclass(frozen=True)
class Asinh(ScaleTransform):
    """Gating-ML ``fasinh``: (asinh(x sinh(M ln10) / T) + A ln10) / ((M + A) ln10)."""

    T: float = 262144.0
    M: float = 4.5
    A: float = 0.0
    kind: ClassVar[str] = "asinh"
    cheap_apply: ClassVar[bool] = True

    def params(self) -> dict[str, float]:
        return {"T": self.T, "M": self.M, "A": self.A}

    def apply(self, values: np.ndarray) -> np.ndarray:
        from flowutils import transforms as fu
        return fu.asinh(_f64(values), None, t=self.T, m=self.M, a=self.A)

    def inverse(self, values: np.ndarray) -> np.ndarray:
        from flowutils import transforms as fu
        return fu.asinh_inverse(_f64(values), None, t=self.T, m=self.M, a=self.A)

    def to_flowkit(self) -> Any:
        from flowkit import transforms
        return transforms.AsinhTransform(param_t=self.T, param_m=self.M, param_a=self.A)


@dataclass(frozen=True)
class _FlowUtilsTWMA(ScaleTransform):
    """A T/W/M/A scale computed by FlowUtils (exact root finding); subclasses name the functions."""

    T: float = 262144.0
    W: float = 0.5
    M: float = 4.5
    A: float = 0.0
    _flowutils: ClassVar[tuple[str, str]] = ("", "")   # forward and inverse function names
    _flowkit: ClassVar[str] = ""                         # flowkit.transforms class name

    def params(self) -> dict[str, float]:
        return {"T": self.T, "W": self.W, "M": self.M, "A": self.A}

    def _call(self, function: str, values: np.ndarray) -> np.ndarray:
        from flowutils import transforms as fu
        return getattr(fu, function)(_f64(values), None, t=self.T, m=self.M, w=self.W, a=self.A)

    def apply(self, values: np.ndarray) -> np.ndarray:
        return self._call(self._flowutils[0], values)

    def inverse(self, values: np.ndarray) -> np.ndarray:
        return self._call(self._flowutils[1], values)

    def to_flowkit(self) -> Any:
        from flowkit import transforms
        return getattr(transforms, self._flowkit)(param_t=self.T, param_w=self.W, param_m=self.M,
                                                  param_a=self.A)


@dataclass(frozen=True)
class Logicle(_FlowUtilsTWMA):
    """Logicle (Parks, Roederer & Moore 2006; Moore & Parks 2012), exact root finding in FlowUtils."""

    kind: ClassVar[str] = "logicle"
    _flowutils: ClassVar[tuple[str, str]] = ("logicle", "logicle_inverse")
    _flowkit: ClassVar[str] = "LogicleTransform"


@dataclass(frozen=True)
class Hyperlog(_FlowUtilsTWMA):
    """Hyperlog (Bagwell 2005) as parametrised by Gating-ML 2.0, exact root finding in FlowUtils."""

    kind: ClassVar[str] = "hyperlog"
    _flowutils: ClassVar[tuple[str, str]] = ("hyperlog", "hyperlog_inverse")
    _flowkit: ClassVar[str] = "HyperlogTransform"


@dataclass(frozen=True)
class FlowJoBiex(ScaleTransform):
    """FlowJo 10's "biex" scale, evaluated through FlowKit's reproduction of FlowJo's lookup table."""

    negative: float = 0.0
    width: float = -10.0
    positive: float = 4.41854
    max_value: float = 262144.000029
    kind: ClassVar[str] = "biex"
    _impl: Any = field(default=None, init=False, repr=False, compare=False, hash=False)

    def params(self) -> dict[str, float]:
        return {"negative": self.negative, "width": self.width, "positive": self.positive,
                "max_value": self.max_value}

    def _flowkit(self) -> Any:
        if self._impl is None:
            object.__setattr__(self, "_impl", self.to_flowkit())
        return self._impl

    def apply(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(self._flowkit().apply(_f64(values)), dtype=np.float64)

    def inverse(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(self._flowkit().inverse(_f64(values)), dtype=np.float64)

    def to_flowkit(self) -> Any:
        from flowkit import transforms
        return transforms.WSPBiexTransform(negative=self.negative, width=self.width,
                                           positive=self.positive, max_value=self.max_value)


@dataclass(frozen=True)
class FlowJoLog(ScaleTransform):
    """FlowJo 10's "log" scale (offset, decades), as FlowKit reproduces it."""

    offset: float = 1.0
    decades: float = 4.5
    kind: ClassVar[str] = "flowjo_log"

    def params(self) -> dict[str, float]:
        return {"offset": self.offset, "decades": self.decades}

    def apply(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(self.to_flowkit().apply(_f64(values)), dtype=np.float64)

    def inverse(self, values: np.ndarray) -> np.ndarray:
        # FlowKit's WSPLogTransform: (log10(max(x, offset)) - log10(offset)) / decades
        return self.offset * np.power(10.0, _f64(values) * self.decades)

    def to_flowkit(self) -> Any:
        from flowkit import transforms
        return transforms.WSPLogTransform(offset=self.offset, decades=self.decades)


@dataclass(frozen=True, eq=False)
class _TableTransform(ScaleTransform):
    """Shared machinery of the table-based transforms (see the module docstring).

    Equal (and hashing alike) to the exact transform it tabulates; subclasses name it in ``_exact_class``.
    """

    T: float = 262144.0
    W: float = 0.5
    M: float = 4.5
    A: float = 0.0
    n_knots: int = 1 << 14
    x_span: float = 1e7
    _exact_class: ClassVar[type[_FlowUtilsTWMA]] = _FlowUtilsTWMA
    cheap_apply: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "exact", self._exact_class(self.T, self.W, self.M, self.A))
        self._build(self.n_knots, self.x_span)

    @property
    def name(self) -> str:
        return self.exact.name

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, (type(self), self._exact_class))
                and self.params() == other.params())  # type: ignore[union-attr]

    def __hash__(self) -> int:
        return hash(self.exact)

    def _build(self, n_knots: int, x_span: float) -> None:
        ex = self.exact
        # knots equally spaced in u = asinh(x / c), a coordinate in which the scale is nearly linear
        # extreme parameters overflow here: the check below refuses the non-finite scale they give
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            c = ex.T / np.sinh(ex.M * np.log(10.0))
            u_span = float(np.arcsinh(x_span / c))
            u = np.linspace(-u_span, u_span, int(n_knots))
            x = c * np.sinh(u)
            y = ex.apply(x)
            # slope from the explicit inverse: dy/du = (dx/du) / (dx/dy), dx/dy by a five-point stencil
            h = 1e-4 * (float(y[-1]) - float(y[0]))
            dxdy = (8.0 * (ex.inverse(y + h) - ex.inverse(y - h))
                    - (ex.inverse(y + 2 * h) - ex.inverse(y - 2 * h))) / (12.0 * h)
        if not (np.all(np.diff(y) > 0) and np.all(dxdy > 0)):
            raise ValueError(f"{ex.name}: the scale is not increasing over the table range")
        du = u[1] - u[0]
        m = c * np.cosh(u) / dxdy * du          # slope per cell (t in [0, 1])
        y0, y1, m0, m1 = y[:-1], y[1:], m[:-1], m[1:]
        coef = np.stack([y0, m0, 3.0 * (y1 - y0) - 2.0 * m0 - m1, 2.0 * (y0 - y1) + m0 + m1])
        for key, value in (("_coef", coef), ("_c", float(c)), ("_u0", float(u[0])), ("_inv_du", 1.0 / du),
                           ("_ncell", len(u) - 1), ("_lo", float(x[0])), ("_hi", float(x[-1]))):
            object.__setattr__(self, key, value)

    def apply(self, values: np.ndarray) -> np.ndarray:
        v = _f64(values)
        pos = np.arcsinh(v * (1.0 / self._c))
        pos -= self._u0
        pos *= self._inv_du
        with np.errstate(invalid="ignore"):  # NaN/inf positions: fixed up below
            i = pos.astype(np.intp)
        np.clip(i, 0, self._ncell - 1, out=i)
        t = pos
        t -= i                                   # position inside the cell, in [0, 1]
        c0, c1, c2, c3 = self._coef
        out = c3[i]
        out *= t
        out += c2[i]
        out *= t
        out += c1[i]
        out *= t
        out += c0[i]
        outside = (v < self._lo) | (v > self._hi)
        if outside.any():
            infinite = np.isinf(v)
            out[outside & ~infinite] = self.exact.apply(v[outside & ~infinite])
            out[infinite] = v[infinite]  # the scale is unbounded: +-inf stays +-inf (NaN stays NaN)
        return out

    def inverse(self, values: np.ndarray) -> np.ndarray:
        return self.exact.inverse(values)

    def params(self) -> dict[str, float]:
        return self.exact.params()

    def spec(self) -> dict[str, Any]:
        return {**self.exact.spec(), "fast": True}

    def to_flowkit(self) -> Any:
        return self.exact.to_flowkit()


@dataclass(frozen=True, eq=False)
class FastLogicle(_TableTransform):
    """Logicle from a table of its explicit inverse (see module docstring); equals :class:`Logicle`."""

    kind: ClassVar[str] = "logicle"
    _exact_class: ClassVar[type[_FlowUtilsTWMA]] = Logicle


@dataclass(frozen=True, eq=False)
class FastHyperlog(_TableTransform):
    """Hyperlog from a table of its explicit inverse; equals :class:`Hyperlog`."""

    kind: ClassVar[str] = "hyperlog"
    _exact_class: ClassVar[type[_FlowUtilsTWMA]] = Hyperlog


# type -> (class, required parameters, optional parameters with defaults)
TRANSFORM_TYPES: dict[str, tuple[type, tuple[str, ...], dict[str, float]]] = {
    "linear": (Linear, ("T",), {"A": 0.0}),
    "log": (Log, ("T", "M"), {}),
    "asinh": (Asinh, ("T", "M"), {"A": 0.0}),
    "logicle": (Logicle, ("T", "W", "M"), {"A": 0.0}),
    "hyperlog": (Hyperlog, ("T", "W", "M"), {"A": 0.0}),
    "biex": (FlowJoBiex, (), {"negative": 0.0, "width": -10.0, "positive": 4.41854,
                              "max_value": 262144.000029}),
    "flowjo_log": (FlowJoLog, ("offset", "decades"), {}),
}
_FAST = {"logicle": FastLogicle, "hyperlog": FastHyperlog}


def from_spec(spec: Mapping[str, Any], *, source: str | None = None, where: str = "transform") -> ScaleTransform:
    """Build a transform from a template mapping such as ``{type: logicle, T: 262144, W: 0.5, M: 4.5}``.

    Parameter names are case-insensitive for the one-letter Gating-ML parameters. ``fast: true`` (the
    default for logicle and hyperlog) selects the table-based implementation. Every problem is reported
    in one :class:`TemplateError` naming ``where``.
    """
    problems: list[str] = []
    if not isinstance(spec, Mapping):
        raise TemplateError("a transform must be a mapping", source=source,
                            problems=[f"{where}: got {type(spec).__name__}, expected a mapping with 'type'"])
    kind = str(spec.get("type", "")).strip().lower()
    if kind not in TRANSFORM_TYPES:
        raise TemplateError("unknown transform type", source=source,
                            problems=[f"{where}.type: got {spec.get('type')!r}, expected one of "
                                      f"{', '.join(sorted(TRANSFORM_TYPES))}"])
    cls, required, optional = TRANSFORM_TYPES[kind]
    given = {str(k): v for k, v in spec.items() if k not in ("type", "fast")}
    names = {k.upper() if len(k) == 1 else k: v for k, v in given.items()}
    allowed = set(required) | set(optional)
    kwargs: dict[str, float] = {}
    for key in sorted(set(names) - allowed):
        problems.append(f"{where}.{key}: unknown parameter for {kind} (expected {', '.join(sorted(allowed))})")
    for key in required:
        if key not in names:
            problems.append(f"{where}.{key}: missing (required for {kind})")
    for key in allowed:
        if key in names:
            value = names[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                problems.append(f"{where}.{key}: got {value!r}, expected a finite number")
            else:
                kwargs[key] = float(value)
        elif key in optional:
            kwargs[key] = optional[key]
    if "T" in kwargs and kwargs["T"] <= 0:
        problems.append(f"{where}.T: got {kwargs['T']}, expected > 0")
    if "M" in kwargs and kwargs["M"] <= 0:
        problems.append(f"{where}.M: got {kwargs['M']}, expected > 0")
    if kind == "hyperlog" and kwargs.get("W", 1.0) <= 0:
        problems.append(f"{where}.W: got {kwargs['W']}, expected > 0 for hyperlog")
    if kind in ("logicle", "hyperlog") and {"W", "M", "A"} <= kwargs.keys():
        if kwargs["W"] < 0 or 2 * kwargs["W"] > kwargs["M"] or -kwargs["A"] > kwargs["W"]:
            problems.append(f"{where}: W={kwargs['W']}, M={kwargs['M']}, A={kwargs['A']} outside the valid "
                            f"domain (expected 0 <= W <= M/2 and -W <= A)")
    fast = spec.get("fast", kind in _FAST)
    if not isinstance(fast, bool):
        problems.append(f"{where}.fast: got {fast!r}, expected true or false")
    if problems:
        raise TemplateError(f"invalid {kind} transform", source=source, problems=problems)
    if fast and kind in _FAST:
        return _fast_table(kind, tuple(sorted(kwargs.items())))
    return cls(**kwargs)


@lru_cache(maxsize=64)
def _fast_table(kind: str, params: tuple[tuple[str, float], ...]) -> ScaleTransform:
    """Tables are immutable and cost ~10 ms to build: one shared instance per parameter set."""
    return _FAST[kind](**dict(params))
