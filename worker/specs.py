"""What a worker says about a table's initializer and optimizer: small value objects that become proto specs.

They carry names and hyperparameters only; the PS builds the real initializer and optimizer from them, so the
worker never imports server code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from seraphim.proto import ps_pb2


@dataclass(frozen=True)
class _Spec:
    def params(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Zeros(_Spec):
    name = "zeros"


@dataclass(frozen=True)
class Constant(_Spec):
    value: float = 0.0
    name = "constant"


@dataclass(frozen=True)
class Normal(_Spec):
    mean: float = 0.0
    std: float = 0.01
    name = "normal"


@dataclass(frozen=True)
class TruncatedNormal(_Spec):
    mean: float = 0.0
    std: float = 0.01
    name = "truncated_normal"


@dataclass(frozen=True)
class Uniform(_Spec):
    low: float = -0.01
    high: float = 0.01
    name = "uniform"


@dataclass(frozen=True)
class SGD(_Spec):
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    name = "sgd"


@dataclass(frozen=True)
class Adagrad(_Spec):
    lr: float = 0.01
    initial_accumulator: float = 0.1
    eps: float = 1e-10
    weight_decay: float = 0.0
    name = "adagrad"


@dataclass(frozen=True)
class Adam(_Spec):
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    amsgrad: bool = False
    name = "adam"


@dataclass(frozen=True)
class AdamW(_Spec):
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01
    name = "adamw"


Initializer = Zeros | Constant | Normal | TruncatedNormal | Uniform
Optimizer = SGD | Adagrad | Adam | AdamW


def initializer_spec(init: Initializer) -> ps_pb2.InitializerSpec:
    return ps_pb2.InitializerSpec(name=init.name, params=init.params())


def optimizer_spec(opt: Optimizer | None) -> ps_pb2.OptimizerSpec:
    return ps_pb2.OptimizerSpec() if opt is None else ps_pb2.OptimizerSpec(name=opt.name, params=opt.params())
