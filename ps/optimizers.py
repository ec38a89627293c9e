"""Server-side optimizers: a push's gradients are applied on the PS to the touched rows only.

Every optimizer follows torch.optim's update rule step for step (float32 arithmetic, same operation order),
with two PS-specific choices:

- a learning-rate multiplier per row (``lr_scale``; Hunyuan-Large's expert-specific learning rate is one),
  so a row's effective learning rate is ``lr * lr_scale[row]`` everywhere torch uses ``lr``;
- an all-zero state is a fresh state for every optimizer, so storage can create rows with zeroed state.
  Sparse rows are touched at different rates, so Adam/AdamW count steps per row (``t`` in the state) and
  bias-correct with the row's own ``t``: a row equals a torch parameter stepped only when it was touched.

Kernels are numba loops over ``[n, dim]``; the Python wrapper validates shapes and dtypes once per call.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar

import numpy as np
from numba import njit

from seraphim.ps.initializers import dataclass_to_spec, spec_to_dataclass
from seraphim.ps.row_layout import describe_array


def _check_lr(kind: str, lr: float) -> None:
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"{kind}: lr must be a finite number > 0; got {lr}")


def _check_range(kind: str, param: str, value: float, low: float, high: float) -> None:
    if not low <= value < high:
        raise ValueError(f"{kind}: {param} must be in [{low}, {high}); got {value}")


class Optimizer(ABC):
    """Server-side optimizer applied on push to the touched rows (vectorized/numba kernels)."""

    name: ClassVar[str]

    @abstractmethod
    def state_cols(self, dim: int) -> int:
        """float32 state columns stored beside a row of ``dim`` weights."""

    def apply(self, weights: np.ndarray, state: np.ndarray, grads: np.ndarray, lr_scale: np.ndarray) -> None:
        """Update ``weights`` and ``state`` in place.

        weights float32 [n, dim], state float32 [n, state_cols] (a strided view into rows is fine),
        grads float32 [n, dim] (duplicate keys already merged), lr_scale float32 [n] (per-row multiplier).
        """
        for label, arr in (("weights", weights), ("grads", grads), ("state", state), ("lr_scale", lr_scale)):
            if not isinstance(arr, np.ndarray) or arr.dtype != np.float32:
                raise ValueError(f"{self.name}.apply: {label} must be a float32 ndarray; got {describe_array(arr)}")
        if weights.ndim != 2 or grads.shape != weights.shape:
            raise ValueError(f"{self.name}.apply: weights and grads must both be [n, dim]; got {weights.shape} and {grads.shape}")
        n, dim = weights.shape
        if state.shape != (n, self.state_cols(dim)):
            raise ValueError(f"{self.name}.apply: state must be [{n}, {self.state_cols(dim)}]; got {list(state.shape)}")
        if lr_scale.shape != (n,):
            raise ValueError(f"{self.name}.apply: lr_scale must be [{n}]; got {list(lr_scale.shape)}")
        if not (weights.flags.writeable and state.flags.writeable):
            raise ValueError(f"{self.name}.apply: weights and state must be writeable (they are updated in place)")
        self._kernel(weights, state, grads, lr_scale)

    @abstractmethod
    def _kernel(self, weights: np.ndarray, state: np.ndarray, grads: np.ndarray, lr_scale: np.ndarray) -> None:
        """Run the compiled update on validated arrays."""


@njit(cache=True, fastmath=False)
def _sgd_kernel(w, state, g, lr, scale, momentum, wd, nesterov):  # pragma: no cover - compiled
    n, d = w.shape
    for i in range(n):
        lr_i = np.float32(lr * scale[i])
        for j in range(d):
            gj = g[i, j]
            if wd != 0:
                gj = gj + wd * w[i, j]
            if momentum != 0:
                buf = state[i, j] * momentum + gj
                state[i, j] = buf
                gj = gj + momentum * buf if nesterov else buf
            w[i, j] = w[i, j] - lr_i * gj


@njit(cache=True, fastmath=False)
def _adagrad_kernel(w, state, g, lr, scale, init_acc, eps, wd):  # pragma: no cover - compiled
    n, d = w.shape
    for i in range(n):
        neg_lr = np.float32(-(lr * scale[i]))
        for j in range(d):
            gj = g[i, j]
            if wd != 0:
                gj = gj + wd * w[i, j]
            acc = state[i, j] + gj * gj
            state[i, j] = acc
            std = np.sqrt(acc + init_acc) + eps
            w[i, j] = w[i, j] + neg_lr * gj / std


@njit(cache=True, fastmath=False)
def _adam_kernel(w, state, g, lr, scale, beta1, beta2, eps, wd, decoupled, amsgrad):  # pragma: no cover - compiled
    # Scalars arrive as float64 and are rounded to float32 where torch rounds them (its CPU opmath for float32).
    n, d = w.shape
    t_col = state.shape[1] - 1
    one = np.float32(1.0)
    b2 = np.float32(beta2)
    w1 = np.float32(1.0 - beta1)  # lerp weight of exp_avg.lerp_(grad, 1 - beta1)
    w2 = np.float32(1.0 - beta2)
    eps32 = np.float32(eps)
    wd32 = np.float32(wd)
    for i in range(n):
        lr_i = lr * scale[i]
        t = state[i, t_col] + one
        state[i, t_col] = t
        bc1 = 1.0 - beta1 ** float(t)
        bc2_sqrt = np.float32(math.sqrt(1.0 - beta2 ** float(t)))
        neg_step = np.float32(-(lr_i / bc1))
        decay = np.float32(1.0 - lr_i * wd)
        for j in range(d):
            gj = g[i, j]
            wj = w[i, j]
            if wd != 0:
                if decoupled:
                    wj = wj * decay
                else:
                    gj = gj + wd32 * wj
            m = state[i, j]
            if w1 < 0.5:
                m = m + w1 * (gj - m)
            else:
                m = gj - (gj - m) * (one - w1)
            state[i, j] = m
            v = state[i, d + j] * b2 + w2 * gj * gj
            state[i, d + j] = v
            if amsgrad:
                v = max(state[i, 2 * d + j], v)
                state[i, 2 * d + j] = v
            denom = np.sqrt(v) / bc2_sqrt + eps32
            w[i, j] = wj + neg_step * m / denom


@dataclasses.dataclass(frozen=True)
class SGD(Optimizer):
    """torch.optim.SGD without dampening; state = momentum buffer [dim] when momentum > 0."""

    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    name: ClassVar[str] = "sgd"

    def __post_init__(self) -> None:
        _check_lr("sgd", self.lr)
        _check_range("sgd", "momentum", self.momentum, 0.0, 1.0)
        _check_range("sgd", "weight_decay", self.weight_decay, 0.0, math.inf)
        if self.nesterov and self.momentum == 0:
            raise ValueError("sgd: nesterov needs momentum > 0; got momentum=0")

    def state_cols(self, dim: int) -> int:
        return dim if self.momentum else 0

    def _kernel(self, weights, state, grads, lr_scale) -> None:
        f = np.float32
        _sgd_kernel(weights, state, grads, float(self.lr), lr_scale, f(self.momentum), f(self.weight_decay), bool(self.nesterov))


@dataclasses.dataclass(frozen=True)
class Adagrad(Optimizer):
    """torch.optim.Adagrad (lr_decay=0); state = squared-gradient sum accumulated since the row was created [dim].

    The update uses ``sqrt(initial_accumulator + state) + eps``, the same as torch's
    ``initial_accumulator_value``, but the stored state excludes the initial value so zeros mean "fresh".
    Default 0.1 (TensorFlow/Keras's choice: it damps the first steps of rare sparse rows); torch's default is 0,
    so pass ``initial_accumulator=0`` to reproduce torch's default behaviour.
    """

    lr: float
    initial_accumulator: float = 0.1
    eps: float = 1e-10
    weight_decay: float = 0.0
    name: ClassVar[str] = "adagrad"

    def __post_init__(self) -> None:
        _check_lr("adagrad", self.lr)
        _check_range("adagrad", "initial_accumulator", self.initial_accumulator, 0.0, math.inf)
        _check_range("adagrad", "eps", self.eps, 0.0, math.inf)
        _check_range("adagrad", "weight_decay", self.weight_decay, 0.0, math.inf)

    def state_cols(self, dim: int) -> int:
        return dim

    def _kernel(self, weights, state, grads, lr_scale) -> None:
        f = np.float32
        _adagrad_kernel(weights, state, grads, float(self.lr), lr_scale, f(self.initial_accumulator), f(self.eps), f(self.weight_decay))


def _check_adam(kind: str, opt: "Adam | AdamW") -> None:
    _check_lr(kind, opt.lr)
    _check_range(kind, "beta1", opt.beta1, 0.0, 1.0)
    _check_range(kind, "beta2", opt.beta2, 0.0, 1.0)
    if not opt.eps > 0:
        raise ValueError(f"{kind}: eps must be > 0; got {opt.eps}")
    _check_range(kind, "weight_decay", opt.weight_decay, 0.0, math.inf)


def _run_adam(opt: "Adam | AdamW", decoupled: bool, amsgrad: bool, weights, state, grads, lr_scale) -> None:
    _adam_kernel(weights, state, grads, float(opt.lr), lr_scale, float(opt.beta1), float(opt.beta2), float(opt.eps),
                 float(opt.weight_decay), decoupled, bool(amsgrad))


@dataclasses.dataclass(frozen=True)
class Adam(Optimizer):
    """torch.optim.Adam, L2 weight decay added to the gradient.

    State = ``[m (dim) | v (dim) | t (1)]``, with ``max v (dim)`` before ``t`` when amsgrad. ``t`` is a float32
    step count, exact to 2**24 steps per row (past that, bias correction is 1 to float precision anyway).
    """

    lr: float
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    amsgrad: bool = False
    name: ClassVar[str] = "adam"

    def __post_init__(self) -> None:
        _check_adam("adam", self)

    def state_cols(self, dim: int) -> int:
        return (3 if self.amsgrad else 2) * dim + 1

    def _kernel(self, weights, state, grads, lr_scale) -> None:
        _run_adam(self, False, self.amsgrad, weights, state, grads, lr_scale)


@dataclasses.dataclass(frozen=True)
class AdamW(Optimizer):
    """torch.optim.AdamW: decoupled decay ``w *= 1 - lr*weight_decay`` before the Adam step; state as :class:`Adam`."""

    lr: float
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01
    name: ClassVar[str] = "adamw"

    def __post_init__(self) -> None:
        _check_adam("adamw", self)

    def state_cols(self, dim: int) -> int:
        return 2 * dim + 1

    def _kernel(self, weights, state, grads, lr_scale) -> None:
        _run_adam(self, True, False, weights, state, grads, lr_scale)


OPTIMIZERS: dict[str, type] = {c.name: c for c in (SGD, Adagrad, Adam, AdamW)}


def optimizer_from_spec(name: str, params: Mapping[str, float]) -> Optimizer:
    return spec_to_dataclass("optimizer", OPTIMIZERS, name, params)


def optimizer_to_spec(opt: Optimizer) -> tuple[str, dict[str, float]]:
    return dataclass_to_spec("optimizer", OPTIMIZERS, opt)
