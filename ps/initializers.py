"""Row initializers for tables: a sparse row is created on first touch, a dense table at creation.

Each initializer is a small frozen dataclass so that it travels in a ``CreateTable`` request as a
``(name, {param: float})`` spec; :func:`spec_to_dataclass` and :func:`dataclass_to_spec` are the spec codec
shared with :mod:`seraphim.ps.optimizers`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

import numpy as np
from numba import njit
from scipy.special import ndtr, ndtri


class RandomSource(Protocol):
    """What initializers draw from: a numpy Generator, or KeyedRandom for sparse rows."""

    def standard_normal(self, size: tuple[int, int], dtype: type = np.float64) -> np.ndarray: ...

    def uniform(self, low: float, high: float, size: tuple[int, int]) -> np.ndarray: ...


class Initializer(Protocol):
    def __call__(self, n: int, dim: int, rng: RandomSource) -> np.ndarray:
        """Return float32 [n, dim] initial weights, drawn once as one [n, dim] array."""


_GOLDEN = 0x9E3779B97F4A7C15


@njit(cache=True)
def _mix64(x: np.uint64) -> np.uint64:
    """SplitMix64's finaliser (wrapping uint64 arithmetic): the mix of a counter-based generator."""
    x = x + np.uint64(_GOLDEN)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@njit(cache=True)
def _row_streams(keys: np.ndarray, seed: np.uint64) -> np.ndarray:
    out = np.empty(len(keys), dtype=np.uint64)
    mixed_seed = _mix64(seed)
    for i in range(len(keys)):
        out[i] = _mix64(np.uint64(keys[i]) ^ mixed_seed)
    return out


@njit(cache=True)
def _uniforms(rows: np.ndarray, dim: int, draw: np.uint64) -> np.ndarray:
    """float64 uniforms in (0, 1), [len(rows), dim], from (row stream, column, draw)."""
    out = np.empty((len(rows), dim), dtype=np.float64)
    offset = draw * np.uint64(0xD1B54A32D192ED03)
    for i in range(len(rows)):
        for j in range(dim):
            bits = _mix64(rows[i] + np.uint64(j) * np.uint64(_GOLDEN) + offset)
            out[i, j] = (np.float64(bits >> np.uint64(11)) + 0.5) * 2.0 ** -53
    return out


class KeyedRandom:
    """Random draws that depend on (seed, row key, column, draw) only, so a sparse row gets the same initial
    weights whatever batch, order or shard creates it (reproducible runs; a numpy Generator's stream would follow
    the order workers' pulls arrive in). Each call draws one [len(keys), dim] array."""

    def __init__(self, seed: int, keys: np.ndarray) -> None:
        self._rows = _row_streams(np.ascontiguousarray(keys, dtype=np.int64), np.uint64(seed % 2**64))
        self._draws = 0

    def _uniform01(self, size: tuple[int, int]) -> np.ndarray:
        """float64 uniforms in (0, 1), [n, dim]."""
        n, dim = size
        if n != len(self._rows):
            raise ValueError(f"KeyedRandom draws one value per row and column: asked for {n} rows, has "
                             f"{len(self._rows)} keys")
        self._draws += 1
        return _uniforms(self._rows, dim, np.uint64(self._draws))

    def uniform(self, low: float, high: float, size: tuple[int, int]) -> np.ndarray:
        return low + (high - low) * self._uniform01(size)

    def standard_normal(self, size: tuple[int, int], dtype: type = np.float64) -> np.ndarray:
        """Box-Muller on two uniform draws."""
        radius = np.sqrt(-2.0 * np.log(self._uniform01(size)))
        return (radius * np.cos(2.0 * np.pi * self._uniform01(size))).astype(dtype)


def _number(kind: str, name: str, param: str, value: Any, type_name: str) -> float | bool:
    """Validate one spec value against its field type ('float' or 'bool')."""
    if type_name == "bool":
        if isinstance(value, (bool, np.bool_)) or value in (0, 1):
            return bool(value)
        raise ValueError(f"{kind} {name!r}: param {param!r} must be a bool (or 0/1); got {value!r}")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{kind} {name!r}: param {param!r} must be a number; got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{kind} {name!r}: param {param!r} must be finite; got {value!r}")
    return float(value)


def spec_to_dataclass(kind: str, registry: Mapping[str, type], name: str, params: Mapping[str, Any]) -> Any:
    """Build ``registry[name](**params)`` with errors that name the allowed names, params and types."""
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; allowed: {sorted(registry)}")
    cls = registry[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise ValueError(f"unknown param(s) {unknown} for {kind} {name!r}; allowed: {sorted(fields)}")
    missing = [f for f in fields if fields[f].default is dataclasses.MISSING and f not in params]
    if missing:
        raise ValueError(f"{kind} {name!r} needs param(s) {missing}; allowed: {sorted(fields)}")
    return cls(**{p: _number(kind, name, p, v, str(fields[p].type)) for p, v in params.items()})


def dataclass_to_spec(kind: str, registry: Mapping[str, type], obj: Any) -> tuple[str, dict[str, float]]:
    """Inverse of :func:`spec_to_dataclass` (bools become 1.0/0.0)."""
    name = getattr(type(obj), "name", None)
    if registry.get(name) is not type(obj):
        raise ValueError(f"cannot describe {obj!r} as a {kind} spec; allowed {kind}s: {sorted(registry)}")
    return name, {f.name: float(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def _check_size(n: int, dim: int) -> None:
    if n < 0 or dim <= 0:
        raise ValueError(f"initializer needs n >= 0 rows and dim > 0; got n={n}, dim={dim}")


def _check_std(kind: str, std: float) -> None:
    if not std > 0:
        raise ValueError(f"{kind}: std must be > 0; got {std}")


@dataclasses.dataclass(frozen=True)
class Zeros:
    name: ClassVar[str] = "zeros"

    def __call__(self, n: int, dim: int, rng: RandomSource) -> np.ndarray:
        _check_size(n, dim)
        return np.zeros((n, dim), dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class Constant:
    value: float
    name: ClassVar[str] = "constant"

    def __call__(self, n: int, dim: int, rng: RandomSource) -> np.ndarray:
        _check_size(n, dim)
        return np.full((n, dim), self.value, dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class Normal:
    mean: float = 0.0
    std: float = 0.01
    name: ClassVar[str] = "normal"

    def __post_init__(self) -> None:
        _check_std("normal", self.std)

    def __call__(self, n: int, dim: int, rng: RandomSource) -> np.ndarray:
        _check_size(n, dim)
        out = np.asarray(rng.standard_normal((n, dim), dtype=np.float32))
        out *= np.float32(self.std)
        out += np.float32(self.mean)
        return out


@dataclasses.dataclass(frozen=True)
class Uniform:
    """Uniform on [low, high)."""

    low: float = -0.01
    high: float = 0.01
    name: ClassVar[str] = "uniform"

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"uniform: low must be < high; got low={self.low}, high={self.high}")

    def __call__(self, n: int, dim: int, rng: RandomSource) -> np.ndarray:
        _check_size(n, dim)
        return rng.uniform(self.low, self.high, (n, dim)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class TruncatedNormal:
    """Normal(mean, std) redrawn until within mean ± 2·std (TensorFlow's ``truncated_normal``)."""

    mean: float = 0.0
    std: float = 0.01
    name: ClassVar[str] = "truncated_normal"

    def __post_init__(self) -> None:
        _check_std("truncated_normal", self.std)

    def __call__(self, n: int, dim: int, rng: RandomSource) -> np.ndarray:
        _check_size(n, dim)
        edge = ndtr(-2.0)  # inverse-CDF sampling of the truncated normal: one draw per value, no redraws
        z = ndtri(rng.uniform(edge, 1.0 - edge, (n, dim)))
        return (z * self.std + self.mean).astype(np.float32)


INITIALIZERS: dict[str, type] = {c.name: c for c in (Zeros, Constant, Normal, Uniform, TruncatedNormal)}


def initializer_from_spec(name: str, params: Mapping[str, float]) -> Initializer:
    return spec_to_dataclass("initializer", INITIALIZERS, name, params)


def initializer_to_spec(init: Initializer) -> tuple[str, dict[str, float]]:
    return dataclass_to_spec("initializer", INITIALIZERS, init)
