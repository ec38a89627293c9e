"""A Hunyuan-Large-style mixture-of-experts LM: per layer a shared SwiGLU expert (always on) plus E routed experts
(top-k, capacity, recycle routing: ``routing.py``), grouped-query attention with QK-norm, and cross-layer attention
(CLA: a layer whose index is not a multiple of ``cla_share`` has no key/value projections and reuses the keys and
values of the layer before it).

Following ``modeling_hunyuan.py``: the layer's output is shared(x) + sum of the routed experts' outputs times their
gate probabilities (no renormalization for top-1), times ``routed_scale`` (1 in Hunyuan-Large; DeepSeek's routed
scaling factor: with top-k weights renormalized to sum to 1, k makes k fine-grained experts add up as the hidden
units of a dense MLP k times their width do, where 1 averages them); QK-norm is an RMSNorm over each head's width
applied after RoPE; the KV cache keeps one entry per KV-computing layer, so its bytes per token are
2 * ceil(L / cla_share) * G * K * itemsize (``kv_bytes_per_token``) against MHA's 2 * L * H * K * itemsize.

Where the routed experts live is a placement (``experts.py``): stacked parameters of the model (one process, the
reference), a ``ParameterBank`` on the PS (each step pulls only the chosen experts), or expert parallelism with
all-to-all. The rest of the model is ordinary parameters, paged by the step runtime like the dense LM's.

Shapes: B batch, S sequence, T = B * S tokens, D width, H query heads, G key/value heads, K head width, E routed
experts, F an expert's hidden width, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from seraphim.algorithms.moe.routing import Routing, route
from seraphim.algorithms.transformer.model import (MLP, RMSNorm, apply_rope, attention_shape_problems, init_by_name,
                                                    rope_tables)

EXPERT_SHAPES = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class MoEConfig:
    vocab_size: int = 4096
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int = 2
    max_seq_len: int = 1024
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    qk_norm: bool = True
    cla_share: int = 2               # 1: every layer computes its keys and values
    n_experts: int = 8               # routed experts per layer; 0: a dense model (the shared expert only)
    top_k: int = 1
    expert_ffn_dim: int = 512
    shared_ffn_dim: int = 512
    capacity_factor: float | None = 1.25  # None: no expert drops a token
    recycle: bool = True
    routed_scale: float = 1.0        # the routed experts' summed output times this (DeepSeek's routed scaling factor)
    aux_loss_coef: float = 0.01
    z_loss_coef: float = 0.0

    def __post_init__(self) -> None:
        problems = attention_shape_problems(self.dim, self.n_heads, self.n_kv_heads)
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "max_seq_len", "cla_share",
                     "shared_ffn_dim", "top_k"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_experts < 0:
            problems.append(f"n_experts must be >= 0 (0: dense), got {self.n_experts}")
        if self.n_experts and not 1 <= self.top_k <= self.n_experts:
            problems.append(f"top_k {self.top_k} must be in 1..n_experts ({self.n_experts})")
        if self.n_experts and self.expert_ffn_dim < 1:
            problems.append(f"expert_ffn_dim must be >= 1, got {self.expert_ffn_dim}")
        if not self.routed_scale > 0:
            problems.append(f"routed_scale must be > 0, got {self.routed_scale}")
        if self.capacity_factor is not None and self.capacity_factor <= 0:
            problems.append(f"capacity_factor must be > 0 or None (no limit), got {self.capacity_factor}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_layers(self) -> int:
        """Layers that compute keys and values (the others reuse them: CLA)."""
        return math.ceil(self.n_layers / self.cla_share)

    def kv_bytes_per_token(self, itemsize: int = 2) -> int:
        return 2 * self.kv_layers * self.n_kv_heads * self.head_dim * itemsize

    def expert_parameters(self) -> int:
        return 3 * self.dim * self.expert_ffn_dim

    def parameter_count(self) -> int:
        """Every parameter, all routed experts included."""
        return self._common() + self.n_layers * self.n_experts * self.expert_parameters()

    def active_parameter_count(self) -> int:
        """Parameters one token runs through: the shared expert, k routed ones and the router per layer."""
        return self._common() + self.n_layers * self.top_k * self.expert_parameters() * (self.n_experts > 0)

    def _common(self) -> int:
        kv = self.n_kv_heads * self.head_dim
        attention = self.n_layers * 2 * self.dim * self.dim + self.kv_layers * 2 * self.dim * kv
        qk_norms = (self.n_layers + self.kv_layers) * self.head_dim if self.qk_norm else 0
        norms = self.n_layers * 2 * self.dim + qk_norms + self.dim
        mlp = self.n_layers * (3 * self.dim * self.shared_ffn_dim + self.dim * self.n_experts)
        return attention + norms + mlp + 2 * self.vocab_size * self.dim

    def dense_equivalent(self) -> "MoEConfig":
        """The dense model with the same active parameters (bar the router): its MLP is as wide as the shared
        expert plus k routed ones, the attention the same."""
        return replace(self, n_experts=0, shared_ffn_dim=self.shared_ffn_dim + self.top_k * self.expert_ffn_dim)


#: named shapes, from a smoke-test size up
PRESETS: dict[str, dict] = {
    "moe-tiny": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, n_experts=4, expert_ffn_dim=128,
                     shared_ffn_dim=128, vocab_size=512, max_seq_len=256),
    "moe-small": dict(dim=192, n_layers=4, n_heads=6, n_kv_heads=2, n_experts=8, expert_ffn_dim=384,
                      shared_ffn_dim=384, vocab_size=4096, max_seq_len=512),
    "moe-medium": dict(dim=512, n_layers=8, n_heads=8, n_kv_heads=2, n_experts=16, expert_ffn_dim=1024,
                       shared_ffn_dim=1024, vocab_size=8192, max_seq_len=1024),
}


class ExpertPlacement(Protocol):
    """Runs one layer's routed experts on its tokens grouped by expert: x [N, D] -> [N, D]."""

    def __call__(self, x: torch.Tensor, routing: Routing) -> torch.Tensor: ...


PlacementFactory = Callable[[int], ExpertPlacement]  # layer -> where its routed experts live


def run_experts(x: torch.Tensor, counts: list[int], weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """SwiGLU experts on tokens grouped by expert: x [N, D], counts per expert (the weights' order), weights
    {gate_proj, up_proj: [A, F, D], down_proj: [A, D, F]} -> [N, D]. One matmul per expert: a grouped GEMM."""
    outputs, start = [], 0
    for a, n in enumerate(counts):
        if n:
            xs = x[start:start + n]                                                    # (n, D)
            hidden = F.silu(xs @ weights["gate_proj"][a].t()) * (xs @ weights["up_proj"][a].t())  # (n, F)
            outputs.append(hidden @ weights["down_proj"][a].t())                       # (n, D)
        start += n
    return torch.cat(outputs) if outputs else x.new_zeros(0, x.shape[1])


def expert_shapes(c: MoEConfig) -> dict[str, tuple[int, int]]:
    return {"gate_proj": (c.expert_ffn_dim, c.dim), "up_proj": (c.expert_ffn_dim, c.dim),
            "down_proj": (c.dim, c.expert_ffn_dim)}


def expert_tensor_name(layer: int, expert: int, which: str) -> str:
    """A routed expert's weight name (Hugging Face Hunyuan's layout), which also seeds its initialization."""
    return f"model.layers.{layer}.mlp.experts.{expert}.{which}.weight"


def init_expert(seed: int, std: float, layer: int, expert: int, which: str, tensor: torch.Tensor) -> None:
    init_by_name(seed, std, expert_tensor_name(layer, expert, which), tensor)


# -- blocks ----------------------------------------------------------------------------------------------------------
@dataclass
class MoECache:
    """Keys and values per KV-computing layer, for generation one token at a time (CLA layers store nothing)."""

    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    values: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return next(iter(self.keys.values())).shape[2] if self.keys else 0

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if layer in self.keys:
            k, v = torch.cat([self.keys[layer], k], dim=2), torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v

    def nbytes(self) -> int:
        return sum(t.nbytes for t in [*self.keys.values(), *self.values.values()])


class Attention(nn.Module):
    """Causal GQA with QK-norm; a CLA layer takes the previous layer's keys and values instead of computing them."""

    def __init__(self, c: MoEConfig, layer: int) -> None:
        super().__init__()
        self.layer, self.n_heads, self.n_kv_heads, self.head_dim = layer, c.n_heads, c.n_kv_heads, c.head_dim
        self.computes_kv = layer % c.cla_share == 0
        self.q_proj = nn.Linear(c.dim, c.n_heads * c.head_dim, bias=False)
        if self.computes_kv:
            self.k_proj = nn.Linear(c.dim, c.n_kv_heads * c.head_dim, bias=False)
            self.v_proj = nn.Linear(c.dim, c.n_kv_heads * c.head_dim, bias=False)
        self.o_proj = nn.Linear(c.n_heads * c.head_dim, c.dim, bias=False)
        self.query_layernorm = RMSNorm(c.head_dim, c.norm_eps) if c.qk_norm else None
        self.key_layernorm = RMSNorm(c.head_dim, c.norm_eps) if c.qk_norm and self.computes_kv else None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                kv: tuple[torch.Tensor, torch.Tensor] | None, cache: MoECache | None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        b, s, _ = x.shape
        q = apply_rope(self.q_proj(x).view(b, s, self.n_heads, self.head_dim).transpose(1, 2), cos, sin)  # (B,H,S,K)
        if self.query_layernorm is not None:
            q = self.query_layernorm(q)
        if self.computes_kv:
            k = apply_rope(self.k_proj(x).view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2), cos, sin)
            if self.key_layernorm is not None:
                k = self.key_layernorm(k)                                              # (B, G, S, K)
            v = self.v_proj(x).view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, G, S, K)
            if cache is not None:
                k, v = cache.extend(self.layer, k, v)                                  # (B, G, S_all, K)
            kv = (k, v)
        elif kv is None:
            raise RuntimeError(f"layer {self.layer} reuses the previous layer's keys and values (CLA) but got none")
        causal = cache is None or cache.length == s  # later generation calls add one position that sees them all
        attended = F.scaled_dot_product_attention(q, kv[0], kv[1], is_causal=causal, enable_gqa=True)  # (B,H,S,K)
        return self.o_proj(attended.transpose(1, 2).reshape(b, s, -1)), kv            # (B, S, D)


class MoEMLP(nn.Module):
    """The shared expert plus the routed experts of one layer; the routing of its last forward is kept."""

    def __init__(self, c: MoEConfig, layer: int, placement: ExpertPlacement) -> None:
        super().__init__()
        self.layer, self.config = layer, c
        self.shared_mlp = MLP(c.dim, c.shared_ffn_dim)
        self.gate = nn.Linear(c.dim, c.n_experts, bias=False)
        self.experts = placement  # a module (stacked parameters) is registered; a PS placement is not
        self.last_routing: Routing | None = None
        self.generator: torch.Generator | None = None  # recycle routing's draws

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        flat = x.reshape(b * s, d)                                                     # (T, D)
        c = self.config
        logits = F.linear(flat.float(), self.gate.weight.float())  # the router runs in float32 at any dtype
        routing = route(logits, c.top_k, c.capacity_factor if self.training else None, c.recycle, self.generator)
        self.last_routing = routing
        routed = self.experts(flat[routing.token], routing)                            # (N, D)
        gate = (routing.weight[:, None] * c.routed_scale).to(x.dtype)                   # (N, 1)
        combined = torch.zeros_like(flat).index_add(0, routing.token, routed * gate)
        return (self.shared_mlp(flat) + combined).view(b, s, d)                        # (B, S, D)


class DecoderLayer(nn.Module):
    def __init__(self, c: MoEConfig, layer: int, placement: PlacementFactory) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(c.dim, c.norm_eps)
        self.self_attn = Attention(c, layer)
        self.post_attention_layernorm = RMSNorm(c.dim, c.norm_eps)
        self.mlp = MoEMLP(c, layer, placement(layer)) if c.n_experts else MLP(c.dim, c.shared_ffn_dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None, cache: MoECache | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        attended, kv = self.self_attn(self.input_layernorm(x), cos, sin, kv, cache)
        x = x + attended                                                               # (B, S, D)
        return x + self.mlp(self.post_attention_layernorm(x)), kv                      # (B, S, D)


class Decoder(nn.Module):
    def __init__(self, c: MoEConfig, placement: PlacementFactory) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.dim)
        self.layers = nn.ModuleList(DecoderLayer(c, i, placement) for i in range(c.n_layers))
        self.norm = RMSNorm(c.dim, c.norm_eps)


# -- the model -------------------------------------------------------------------------------------------------------
class MoELM(nn.Module):
    """tokens [B, S] -> logits [B, S, V], or (given targets) the loss: next-token cross-entropy, plus in training
    the load-balancing and z losses (their parts in ``last_losses``)."""

    def __init__(self, config: MoEConfig, placement: PlacementFactory | None = None, seed: int = 0) -> None:
        super().__init__()
        self.config, self.seed = config, seed
        self.model = Decoder(config, placement or (lambda layer: LocalExperts(config)))
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.last_losses: dict[str, float] = {}
        if not any(p.device.type == "meta" for p in self.parameters()):
            self.initialize()

    def moe_layers(self) -> list[MoEMLP]:
        return [layer.mlp for layer in self.model.layers if isinstance(layer.mlp, MoEMLP)]

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None,
                cache: MoECache | None = None) -> torch.Tensor:
        c = self.config
        b, s = tokens.shape
        start = cache.length if cache is not None else 0
        if start + s > c.max_seq_len:
            raise ValueError(f"positions up to {start + s} exceed max_seq_len {c.max_seq_len} (the RoPE table)")
        cos, sin = rope_tables(c.head_dim, start, s, c.rope_theta, tokens.device)       # (S, K)
        x = self.model.embed_tokens(tokens)                                            # (B, S, D)
        kv = None
        for layer in self.model.layers:
            x, kv = layer(x, cos, sin, kv, cache)                                      # (B, S, D)
        logits = self.lm_head(self.model.norm(x))                                      # (B, S, V)
        if targets is None:
            return logits
        ce = F.cross_entropy(logits.reshape(b * s, -1).float(), targets.reshape(-1))
        loss = ce
        moe = [m.last_routing for m in self.moe_layers()]
        self.last_losses = {"ce": ce.item()}
        if moe and self.training:
            aux = torch.stack([r.aux_loss for r in moe]).mean()
            z = torch.stack([r.z_loss for r in moe]).mean()
            loss = ce + c.aux_loss_coef * aux + c.z_loss_coef * z
            self.last_losses.update(aux_loss=aux.item(), z_loss=z.item())
        return loss

    def routing_counts(self) -> dict[str, int]:
        """Assignments, dropped and recycled ones over the MoE layers of the last forward."""
        routings = [m.last_routing for m in self.moe_layers() if m.last_routing is not None]
        return {"assignments": sum(r.assignments for r in routings), "dropped": sum(r.dropped for r in routings),
                "recycled": sum(r.recycled for r in routings)}

    def routing_counts_per_layer(self) -> dict[int, tuple[int, int, int]]:
        """Layer -> (assignments, dropped, recycled) of the last forward."""
        return {m.layer: (m.last_routing.assignments, m.last_routing.dropped, m.last_routing.recycled)
                for m in self.moe_layers() if m.last_routing is not None}

    def paged_units(self) -> list[nn.Module]:
        """The layers in forward order, for the paged step runtime (routed experts on the PS are not in them)."""
        return [self.model.embed_tokens, *self.model.layers, self.model.norm, self.lm_head]

    def init_tensor(self, name: str, tensor: torch.Tensor) -> None:
        """Fill parameter `name` (stacked routed experts expert by expert, under their per-expert names)."""
        if ".mlp.experts." in name:  # model.layers.{l}.mlp.experts.{which}: [E, ...]
            layer, which = int(name.split(".")[2]), name.split(".")[-1]
            for e in range(tensor.shape[0]):
                init_expert(self.seed, self.config.init_std, layer, e, which, tensor[e])
            return
        init_by_name(self.seed, self.config.init_std, name, tensor)

    @torch.no_grad()
    def initialize(self) -> None:
        for name, param in self.named_parameters():
            self.init_tensor(name, param.data)

    def set_routing_seed(self, seed: int) -> None:
        """Seed recycle routing's draws, layer by layer (reproducible runs)."""
        for m in self.moe_layers():
            m.generator = torch.Generator().manual_seed(seed * 1000 + m.layer)


class LocalExperts(nn.Module):
    """One layer's routed experts as stacked parameters [E, ...] of the model (one process: the reference)."""

    def __init__(self, c: MoEConfig) -> None:
        super().__init__()
        shapes = expert_shapes(c)
        for which in EXPERT_SHAPES:
            setattr(self, which, nn.Parameter(torch.empty(c.n_experts, *shapes[which])))

    def forward(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        active = torch.nonzero(routing.counts).squeeze(1)
        weights = {w: getattr(self, w)[active] for w in EXPERT_SHAPES}
        return run_experts(x, routing.counts[active].tolist(), weights)
