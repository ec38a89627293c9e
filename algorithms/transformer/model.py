"""A decoder-only Transformer LM with the Llama architecture: pre-norm RMSNorm, RoPE, grouped-query attention,
SwiGLU MLP, optionally tied embeddings.

Parameter names and every convention (RoPE on rotated halves, RMSNorm computed in float32, no biases) are Hugging
Face's ``LlamaForCausalLM``'s, so a state dict exported from here loads there unchanged. The same class trains in
one process (the reference) and on paged PS states (``paged_units`` lists its layers for the step runtime).
Initialization is one function of a parameter's name and the seed (``init_tensor``), so a model built on the meta
device and initialized page by page equals one built in RAM.

Shapes: B batch, S sequence, D model width, H query heads, G key/value heads, K head width, V vocabulary.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TransformerConfig:
    vocab_size: int = 4096
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int = 4
    ffn_dim: int = 704
    max_seq_len: int = 1024
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    init_std: float = 0.02

    def __post_init__(self) -> None:
        problems = []
        if self.dim % self.n_heads:
            problems.append(f"dim {self.dim} is not a multiple of n_heads {self.n_heads}")
        elif self.head_dim % 2:
            problems.append(f"the head width dim/n_heads = {self.head_dim} must be even for RoPE")
        if self.n_heads % self.n_kv_heads:
            problems.append(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "max_seq_len"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def parameter_count(self) -> int:
        kv = self.n_kv_heads * self.head_dim
        layer = 2 * self.dim + self.dim * (2 * self.dim + 2 * kv) + 3 * self.dim * self.ffn_dim
        embeddings = self.vocab_size * self.dim * (1 if self.tie_embeddings else 2)
        return self.n_layers * layer + embeddings + self.dim

    def kv_bytes_per_token(self, itemsize: int = 2) -> int:
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * itemsize


#: named shapes, from a smoke-test size to one that does not fit a worker's page budget many times over
PRESETS: dict[str, dict] = {
    "lm-tiny": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=176, vocab_size=512, max_seq_len=256),
    "lm-small": dict(dim=256, n_layers=4, n_heads=8, n_kv_heads=4, ffn_dim=704, vocab_size=4096, max_seq_len=1024),
    "lm-medium": dict(dim=512, n_layers=8, n_heads=8, n_kv_heads=4, ffn_dim=1408, vocab_size=8192,
                      max_seq_len=1024),
    "lm-large": dict(dim=768, n_layers=12, n_heads=12, n_kv_heads=4, ffn_dim=2048, vocab_size=16384,
                     max_seq_len=2048),
}


# -- helpers ---------------------------------------------------------------------------------------------------------
def rope_tables(head_dim: int, start: int, length: int, theta: float,
                device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [length, K] of positions start..start+length-1 (float32, halves repeated as Llama does)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
    positions = torch.arange(start, start + length, dtype=torch.float32, device=device)
    freqs = torch.outer(positions, inv_freq)                        # (S, K/2)
    angles = torch.cat([freqs, freqs], dim=-1)                     # (S, K)
    return angles.cos(), angles.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, heads, S, K] by the positions' angles: x cos + rotate_half(x) sin."""
    return (x * cos + _rotate_half(x) * sin).to(x.dtype)


@dataclass
class KVCache:
    """Keys and values of the positions seen so far, per layer, for generation one token at a time."""

    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)

    @property
    def length(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if layer == len(self.keys):
            self.keys.append(k)
            self.values.append(v)
        else:
            self.keys[layer] = torch.cat([self.keys[layer], k], dim=2)
            self.values[layer] = torch.cat([self.values[layer], v], dim=2)
        return self.keys[layer], self.values[layer]


# -- blocks ----------------------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, computed in float32."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Attention(nn.Module):
    """Causal grouped-query attention: H query heads share G key/value heads; RoPE on queries and keys.

    ``qkv`` and ``out`` are the token-local halves around the token-mixing ``scaled_dot_product_attention``, so
    MEMO's token-wise recomputation (``worker/memo``) can run them on any subset of the tokens.
    """

    def __init__(self, c: TransformerConfig, layer: int) -> None:
        super().__init__()
        self.layer, self.n_heads, self.n_kv_heads, self.head_dim = layer, c.n_heads, c.n_kv_heads, c.head_dim
        self.q_proj = nn.Linear(c.dim, c.n_heads * c.head_dim, bias=False)
        self.k_proj = nn.Linear(c.dim, c.n_kv_heads * c.head_dim, bias=False)
        self.v_proj = nn.Linear(c.dim, c.n_kv_heads * c.head_dim, bias=False)
        self.o_proj = nn.Linear(c.n_heads * c.head_dim, c.dim, bias=False)

    def qkv(self, x: torch.Tensor, cos: torch.Tensor,
            sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.n_heads, self.head_dim).transpose(1, 2)     # (B, H, S, K)
        k = self.k_proj(x).view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, G, S, K)
        v = self.v_proj(x).view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, G, S, K)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def out(self, attended: torch.Tensor) -> torch.Tensor:
        b, _, s, _ = attended.shape
        return self.o_proj(attended.transpose(1, 2).reshape(b, s, -1))                # (B, S, D)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None) -> torch.Tensor:
        q, k, v = self.qkv(x, cos, sin)
        causal = True
        if cache is not None:
            causal = cache.length == 0  # later calls add one position, which sees every earlier one
            k, v = cache.extend(self.layer, k, v)                                      # (B, G, S_all, K)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)  # (B, H, S, K)
        return self.out(attended)                                                      # (B, S, D)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, c: TransformerConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(c.dim, c.ffn_dim, bias=False)
        self.up_proj = nn.Linear(c.dim, c.ffn_dim, bias=False)
        self.down_proj = nn.Linear(c.ffn_dim, c.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))            # (B, S, D)


class DecoderLayer(nn.Module):
    def __init__(self, c: TransformerConfig, layer: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(c.dim, c.norm_eps)
        self.self_attn = Attention(c, layer)
        self.post_attention_layernorm = RMSNorm(c.dim, c.norm_eps)
        self.mlp = MLP(c)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache)              # (B, S, D)
        return x + self.mlp(self.post_attention_layernorm(x))                         # (B, S, D)

    # the token-local halves of a training forward, around causal attention (worker/memo's TokenwiseLayer)
    def attention_inputs(self, x: torch.Tensor, cos: torch.Tensor,
                         sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries [B, H, S, K], keys and values [B, G, S, K] of the tokens of x [B, S, D]."""
        return self.self_attn.qkv(self.input_layernorm(x), cos, sin)

    def attention_output(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """The layer's output [B, S, D] for tokens x [B, S, D] given their attention output [B, H, S, K]."""
        x = x + self.self_attn.out(attended)                                          # (B, S, D)
        return x + self.mlp(self.post_attention_layernorm(x))                         # (B, S, D)


class Decoder(nn.Module):
    """Embeddings, the layers and the final norm (Hugging Face's LlamaModel)."""

    def __init__(self, c: TransformerConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.dim)
        self.layers = nn.ModuleList(DecoderLayer(c, i) for i in range(c.n_layers))
        self.norm = RMSNorm(c.dim, c.norm_eps)


# -- the model -------------------------------------------------------------------------------------------------------
class TransformerLM(nn.Module):
    """The LM: tokens [B, S] -> logits [B, S, V], or the mean next-token cross-entropy given targets [B, S]."""

    def __init__(self, config: TransformerConfig, seed: int = 0) -> None:
        super().__init__()
        self.config, self.seed = config, seed
        self.model = Decoder(config)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        if not any(p.device.type == "meta" for p in self.parameters()):
            self.initialize()

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        c = self.config
        b, s = tokens.shape
        start = cache.length if cache is not None else 0
        if start + s > c.max_seq_len:
            raise ValueError(f"positions up to {start + s} exceed max_seq_len {c.max_seq_len} (the RoPE table)")
        cos, sin = rope_tables(c.head_dim, start, s, c.rope_theta, tokens.device)       # (S, K)
        x = self.model.embed_tokens(tokens)                                            # (B, S, D)
        for layer in self.model.layers:
            x = layer(x, cos, sin, cache)                                              # (B, S, D)
        logits = self.lm_head(self.model.norm(x))                                      # (B, S, V)
        if targets is None:
            return logits
        return F.cross_entropy(logits.reshape(b * s, -1).float(), targets.reshape(-1))

    def paged_units(self) -> list[nn.Module]:
        """The layers in forward order, for the paged step runtime."""
        return [self.model.embed_tokens, *self.model.layers, self.model.norm, self.lm_head]

    # -- initialization --------------------------------------------------------------------------------------------
    def init_tensor(self, name: str, tensor: torch.Tensor) -> None:
        """Fill parameter `name`'s tensor: norms with ones, weights with N(0, init_std) from a generator seeded by
        the model seed and the name (Hugging Face Llama's initializer, made order-independent)."""
        if name.endswith("norm.weight"):
            tensor.fill_(1.0)
            return
        generator = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}:{name}".encode()))
        with torch.no_grad():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * self.config.init_std)

    @torch.no_grad()
    def initialize(self) -> None:
        for name, param in self.named_parameters():
            self.init_tensor(name, param.data)

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 0.8, top_k: int = 50,
                 generator: torch.Generator | None = None, stop_token: int | None = None) -> torch.Tensor:
        """Sample continuations of prompts [B, S] one token at a time with a KV cache; returns [B, S + new]."""
        cache = KVCache()
        tokens = prompt
        logits = self(prompt, cache=cache)[:, -1]                                      # (B, V)
        for _ in range(max_new_tokens):
            if tokens.shape[1] >= self.config.max_seq_len:
                break
            if temperature <= 0:
                nxt = logits.argmax(-1, keepdim=True)                                  # (B, 1)
            else:
                top = torch.topk(logits.float() / temperature, min(top_k, logits.shape[-1]))
                probs = torch.softmax(top.values, dim=-1)
                nxt = top.indices.gather(-1, torch.multinomial(probs, 1, generator=generator))
            tokens = torch.cat([tokens, nxt], dim=1)
            if stop_token is not None and bool((nxt == stop_token).all()):
                break
            logits = self(nxt, cache=cache)[:, -1]
        return tokens


def build_model(config: TransformerConfig, seed: int = 0, device: str | torch.device = "cpu") -> TransformerLM:
    """The LM on `device`; on "meta" no memory is taken (the paged runtime fills it page by page)."""
    with torch.device(device):
        return TransformerLM(config, seed)


def model_flops_per_token(config: TransformerConfig, seq_len: int) -> float:
    """Training FLOPs per token (PaLM's 6N + 12 L D S, causal attention counted in full)."""
    return 6 * config.parameter_count() + 12 * config.n_layers * config.dim * seq_len
