"""Rotary position embeddings over a 2-D or 3-D grid of patch tokens (Hunyuan-DiT's 2-D RoPE, HunyuanVideo's 3-D).

Each query/key head of width ``Dh`` is split into one channel group per grid axis (``dims``, summing to ``Dh``);
the group of axis ``a`` is rotated pairwise by ``pos_a * theta^(-2i/d_a)``, so ``<R_m q, R_n k>`` depends only on
``m - n`` along every axis. Pairs are adjacent channels ``(2i, 2i+1)``, as in HunyuanVideo's real-valued path.

    angles = rope_angles(grid=(4, 8, 8), dims=rope_split(32, 3))   # [256, 16]
    q = apply_rope(q, angles)                                       # q [B, heads, 256, 32]
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from seraphim.algorithms.dit.errors import DiTInputError

#: share of a head's channels that the time axis gets in a 3-D split; HunyuanVideo gives it 16 of 128 (1/8), we give
#: it 1/4 because our clips are short and motion is what the video captions are about
TIME_SHARE = 0.25


def rope_split(head_dim: int, axes: int) -> tuple[int, ...]:
    """Channels per axis: an even split over (h, w) for 2-D; for 3-D the time axis takes TIME_SHARE and (h, w)
    share the rest. Every part is even (channels rotate in pairs; sin-cos embeddings pair too) and the parts sum
    to ``head_dim``. The absolute position embedding splits the model width the same way."""
    if axes not in (2, 3):
        raise DiTInputError(f"rope_split: axes must be 2 (image) or 3 (video), got {axes}")
    multiple = 4 if axes == 2 else 2
    if head_dim % multiple or head_dim < 4 * axes:
        raise DiTInputError(f"rope_split: head_dim {head_dim} must be a multiple of {multiple} and >= {4 * axes} "
                            f"to give each of {axes} axes an even number of channels")
    if axes == 2:
        return head_dim // 2, head_dim // 2
    time = max(2, 2 * round(head_dim * TIME_SHARE / 2))
    space = (head_dim - time) // 2
    space -= space % 2
    return head_dim - 2 * space, space, space


def grid_positions(grid: Sequence[int]) -> Tensor:
    """Integer coordinates of every token of a grid in row-major (patchify) order: [prod(grid), len(grid)]."""
    axes = [torch.arange(g, dtype=torch.float32) for g in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(grid))


def rope_angles(grid: Sequence[int], dims: Sequence[int], theta: float = 10000.0,
                positions: Tensor | None = None) -> Tensor:
    """Rotation angle of every (token, channel pair): [N, sum(dims) / 2]; ``positions`` [N, axes] overrides the grid."""
    if len(dims) != len(grid):
        raise DiTInputError(f"rope_angles: {len(dims)} channel groups {tuple(dims)} for a {len(grid)}-axis grid "
                            f"{tuple(grid)}; give one group per axis")
    pos = grid_positions(grid) if positions is None else positions.to(torch.float32)
    parts = []
    for axis, d in enumerate(dims):
        freqs = theta ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)  # [d/2]
        parts.append(pos[:, axis, None] * freqs[None, :])  # [N, d/2]
    return torch.cat(parts, dim=-1)  # [N, Dh/2]


def sincos_embedding(grid: Sequence[int], dim: int) -> Tensor:
    """DiT's fixed sin-cos position embedding generalised to N axes: each axis's share of ``dim`` (rope_split) holds
    ``[sin(pos f_i), cos(pos f_i)]`` with ``f_i = 10000^(-2i/d_a)``: [prod(grid), dim]."""
    pos = grid_positions(grid)
    parts = []
    for axis, d in enumerate(rope_split(dim, len(grid))):
        freqs = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)  # [d/2]
        args = pos[:, axis, None] * freqs[None, :]
        parts += [torch.sin(args), torch.cos(args)]
    return torch.cat(parts, dim=-1)  # (N, dim)


def apply_rope(x: Tensor, angles: Tensor) -> Tensor:
    """Rotate channel pairs (2i, 2i+1) of x [..., N, Dh] by angles [N, Dh/2]."""
    if x.shape[-2:] != (angles.shape[0], 2 * angles.shape[1]):
        raise DiTInputError(f"apply_rope: x ends in {tuple(x.shape[-2:])} but the angles are for "
                            f"({angles.shape[0]} tokens, {2 * angles.shape[1]} channels)")
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    pairs = x.unflatten(-1, (-1, 2))  # [..., N, Dh/2, 2]
    even, odd = pairs[..., 0], pairs[..., 1]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)  # [..., N, Dh]
