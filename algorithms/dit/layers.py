"""The pieces both DiT families share, in reading order: helpers (modulate, patchify, attention), embedders
(timestep, patches, conditioning), attention and MLP modules, adaLN modulation, and the final layer.

After facebookresearch/DiT's ``models.py``: ``modulate(x, shift, scale) = x * (1 + scale) + shift``, a sinusoidal
timestep embedding of 256 frequencies through Linear-SiLU-Linear, LayerNorms without affine parameters, and
adaLN-Zero (every modulation's last Linear starts at zero, so every block starts as the identity). Queries and keys
are RMS-normalised per head (HunyuanVideo's ``qk_norm``), which keeps attention logits bounded at any learning rate.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seraphim.algorithms.dit.errors import DiTInputError
from seraphim.algorithms.dit.rope import apply_rope
from seraphim.algorithms.dit.text import TextEncoder

# --------------------------------------------------------------------------------------------------- helpers


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x [B, N, D] shifted and scaled per sample by shift, scale [B, D]."""
    return x * (1 + scale[:, None]) + shift[:, None]


def gated(x: Tensor, gate: Tensor) -> Tensor:
    """x [B, N, D] times a per-sample gate [B, D]: the residual branch adaLN-Zero starts at zero."""
    return x * gate[:, None]


def patchify(x: Tensor, patch: Sequence[int]) -> tuple[Tensor, tuple[int, ...]]:
    """Cut x [B, C, *S] (S = (H, W) or (T, H, W)) into non-overlapping patches: tokens [B, N, prod(patch) * C] in
    row-major grid order, and the grid (S_i / patch_i). Each token's values run patch-position major, channel minor."""
    b, c, *space = x.shape
    if len(space) != len(patch) or any(s % p for s, p in zip(space, patch)):
        raise DiTInputError(f"patchify: input of spatial shape {tuple(space)} cannot be cut into patches "
                            f"{tuple(patch)}; each size must be a multiple of its patch size")
    grid = tuple(s // p for s, p in zip(space, patch))
    n = len(space)
    x = x.reshape(b, c, *(v for g, p in zip(grid, patch) for v in (g, p)))  # (B, C, g0, p0, g1, p1, ...)
    order = (0, *(2 + 2 * i for i in range(n)), *(3 + 2 * i for i in range(n)), 1)
    return x.permute(order).reshape(b, math.prod(grid), math.prod(patch) * c), grid  # (B, N, P*C)


def unpatchify(tokens: Tensor, grid: Sequence[int], patch: Sequence[int], channels: int) -> Tensor:
    """The inverse of patchify: tokens [B, N, prod(patch) * C] back to [B, C, *(grid_i * patch_i)]."""
    b, n_tokens, width = tokens.shape
    if n_tokens != math.prod(grid) or width != math.prod(patch) * channels:
        raise DiTInputError(f"unpatchify: tokens {tuple(tokens.shape)} do not match grid {tuple(grid)} x patch "
                            f"{tuple(patch)} x {channels} channels")
    n = len(grid)
    x = tokens.reshape(b, *grid, *patch, channels)  # (B, g0, g1, ..., p0, p1, ..., C)
    order = (0, 2 * n + 1, *(v for i in range(n) for v in (1 + i, 1 + n + i)))
    return x.permute(order).reshape(b, channels, *(g * p for g, p in zip(grid, patch)))  # (B, C, *S)


def split_heads(x: Tensor, heads: int) -> Tensor:
    """[B, N, D] -> [B, heads, N, D / heads]."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """[B, heads, N, Dh] -> [B, N, heads * Dh]."""
    return x.transpose(1, 2).flatten(2)


def attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None) -> Tensor:
    """Scaled dot-product attention over heads: q [B, H, Nq, Dh], k and v [B, H, Nk, Dh]; key_mask [B, Nk] is True
    for keys that may be attended (caption padding is False). Returns [B, H, Nq, Dh]."""
    mask = None if key_mask is None else key_mask[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


# ------------------------------------------------------------------------------------------------- embedders


class TimestepEmbedder(nn.Module):
    """A scalar timestep (on the 0..1000 scale both objectives use) -> [B, D]: 256 sinusoids, then Linear-SiLU-Linear."""

    def __init__(self, dim: int, frequencies: int = 256) -> None:
        super().__init__()
        self.frequencies = frequencies
        self.mlp = nn.Sequential(nn.Linear(frequencies, dim), nn.SiLU(), nn.Linear(dim, dim))

    @staticmethod
    def sinusoids(t: Tensor, n: int, max_period: float = 10000.0) -> Tensor:
        """[cos(t * f_i), sin(t * f_i)] with f_i = max_period^(-i / (n/2)): t [B] -> [B, n]."""
        half = n // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        args = t.to(torch.float32)[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(self.sinusoids(t, self.frequencies))  # (B, D)


class Conditioning(nn.Module):
    """The condition of every block: ``c = t_emb + MLP(pooled caption)`` (HunyuanVideo adds CLIP's pooled token to
    the timestep embedding the same way) and the caption's tokens projected to the model width."""

    def __init__(self, dim: int, text: TextEncoder) -> None:
        super().__init__()
        self.t_embed = TimestepEmbedder(dim)
        self.text = text
        self.pooled_proj = nn.Sequential(nn.Linear(text.dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.text_proj = nn.Linear(text.dim, dim)

    def forward(self, t: Tensor, ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        tokens, mask, pooled = self.text(ids)  # (B, L, Dt), (B, L), (B, Dt)
        c = self.t_embed(t) + self.pooled_proj(pooled)  # (B, D)
        return c, self.text_proj(tokens), mask  # (B, D), (B, L, D), (B, L)


# ------------------------------------------------------------------------------------------- attention, MLP


class QKNorm(nn.Module):
    """RMSNorm of queries and keys per head (learned scale), applied before RoPE."""

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.q = nn.RMSNorm(head_dim, eps=1e-6)
        self.k = nn.RMSNorm(head_dim, eps=1e-6)

    def forward(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        return self.q(q), self.k(k)


class QKV(nn.Module):
    """One Linear to queries, keys and values, split into heads and qk-normalised: x [B, N, D] -> 3 x [B, H, N, Dh]."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.linear = nn.Linear(dim, 3 * dim)
        self.norm = QKNorm(dim // heads)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = (split_heads(part, self.heads) for part in self.linear(x).chunk(3, dim=-1))  # (B, H, N, Dh)
        q, k = self.norm(q, k)
        return q, k, v


class CrossAttention(nn.Module):
    """Image tokens query caption tokens (Hunyuan-DiT's ``attn2``): RoPE rotates the queries only, since the
    caption tokens have no place on the image grid."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.norm = QKNorm(dim // heads)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, text: Tensor, text_mask: Tensor, angles: Tensor) -> Tensor:
        q = split_heads(self.q(x), self.heads)  # (B, H, N, Dh)
        k, v = (split_heads(part, self.heads) for part in self.kv(text).chunk(2, dim=-1))  # (B, H, L, Dh)
        q, k = self.norm(q, k)
        out = attention(apply_rope(q, angles), k, v, text_mask)  # (B, H, N, Dh)
        return self.proj(merge_heads(out))  # (B, N, D)


class Mlp(nn.Module):
    """Linear -> GELU(tanh) -> Linear, the Transformer feed-forward."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def layer_norm(dim: int) -> nn.LayerNorm:
    """DiT's LayerNorm: no affine parameters (adaLN supplies shift and scale), eps 1e-6."""
    return nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)


# ----------------------------------------------------------------------------------------- adaLN, final layer


class AdaLNModulation(nn.Module):
    """``SiLU -> Linear(D, k * D)`` of the condition c, split into k vectors [B, D] (shifts, scales, gates).

    Zero-initialised by the model's ``initialize_weights`` (adaLN-Zero): all shifts, scales and gates start at 0.
    """

    def __init__(self, dim: int, chunks: int) -> None:
        super().__init__()
        self.chunks = chunks
        self.linear = nn.Linear(dim, chunks * dim)

    def forward(self, c: Tensor) -> tuple[Tensor, ...]:
        return self.linear(F.silu(c)).chunk(self.chunks, dim=-1)  # k x (B, D)


class FinalLayer(nn.Module):
    """adaLN (shift, scale) then Linear(D -> prod(patch) * C_out); zero-initialised, so the model starts at 0."""

    def __init__(self, dim: int, patch_values: int) -> None:
        super().__init__()
        self.norm = layer_norm(dim)
        self.modulation = AdaLNModulation(dim, 2)
        self.linear = nn.Linear(dim, patch_values)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.modulation(c)
        return self.linear(modulate(self.norm(x), shift, scale))  # (B, N, P*C)
