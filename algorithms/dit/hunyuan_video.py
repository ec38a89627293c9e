"""HunyuanVideo's diffusion Transformer (Tencent/HunyuanVideo ``hyvideo/modules/models.py``): dual-stream blocks,
in which video and caption tokens keep their own weights (modulation, QKV, MLP) and meet in one joint attention,
then single-stream blocks over the joined sequence with attention and MLP in parallel (one ``linear1`` gives QKV and
the MLP input, one ``linear2`` takes both back).

RoPE (3-D over (T, H, W) for video, 2-D for images) rotates the video tokens' queries and keys; caption tokens
sit at angle 0, i.e. are not rotated, as in HunyuanVideo. Every branch is gated by adaLN-Zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seraphim.algorithms.dit.backbone import DiTConfig, PatchDiT
from seraphim.algorithms.dit.layers import (
    QKV, AdaLNModulation, Mlp, QKNorm, attention, gated, layer_norm, merge_heads, modulate, split_heads,
)
from seraphim.algorithms.dit.rope import apply_rope


class StreamWeights(nn.Module):
    """One modality's half of a dual-stream block: its modulation, attention input and output, and MLP."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.modulation = AdaLNModulation(dim, 6)
        self.norm1 = layer_norm(dim)
        self.qkv = QKV(dim, heads)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = layer_norm(dim)
        self.mlp = Mlp(dim, mlp_hidden)

    def attention_inputs(self, x: Tensor, shift: Tensor, scale: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.qkv(modulate(self.norm1(x), shift, scale))  # 3 x (B, H, N, Dh)

    def residuals(self, x: Tensor, attended: Tensor, mods: tuple[Tensor, ...]) -> Tensor:
        """The attention output's and the MLP's gated residuals (mods: this stream's six modulation vectors)."""
        _, _, g1, sh2, sc2, g2 = mods
        x = x + gated(self.proj(attended), g1)  # (B, N, D)
        return x + gated(self.mlp(modulate(self.norm2(x), sh2, sc2)), g2)  # (B, N, D)


class DoubleStreamBlock(nn.Module):
    """Video tokens x [B, N, D] and caption tokens [B, L, D], each with its own weights, in one joint attention."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.video = StreamWeights(dim, heads, mlp_hidden)
        self.text = StreamWeights(dim, heads, mlp_hidden)

    def forward(self, x: Tensor, text: Tensor, c: Tensor, key_mask: Tensor, angles: Tensor) -> tuple[Tensor, Tensor]:
        video_mods, text_mods = self.video.modulation(c), self.text.modulation(c)  # 6 x (B, D) each
        xq, xk, xv = self.video.attention_inputs(x, video_mods[0], video_mods[1])  # (B, H, N, Dh)
        tq, tk, tv = self.text.attention_inputs(text, text_mods[0], text_mods[1])  # (B, H, L, Dh)
        q = apply_rope(torch.cat([xq, tq], dim=2), angles)  # (B, H, N+L, Dh)
        k = apply_rope(torch.cat([xk, tk], dim=2), angles)
        attended = merge_heads(attention(q, k, torch.cat([xv, tv], dim=2), key_mask))  # (B, N+L, D)
        x_att, t_att = attended.split([x.shape[1], text.shape[1]], dim=1)
        return self.video.residuals(x, x_att, video_mods), self.text.residuals(text, t_att, text_mods)


class SingleStreamBlock(nn.Module):
    """``x += g * linear2(cat(Attn(qkv), GELU(mlp_in)))`` with ``(qkv, mlp_in) = linear1(mod(LN x))``."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.heads, self.dim, self.mlp_hidden = heads, dim, mlp_hidden
        self.norm = layer_norm(dim)
        self.modulation = AdaLNModulation(dim, 3)
        self.linear1 = nn.Linear(dim, 3 * dim + mlp_hidden)
        self.qk_norm = QKNorm(dim // heads)
        self.linear2 = nn.Linear(dim + mlp_hidden, dim)

    def forward(self, x: Tensor, c: Tensor, key_mask: Tensor, angles: Tensor) -> Tensor:
        shift, scale, gate = self.modulation(c)  # 3 x (B, D)
        qkv, mlp_in = self.linear1(modulate(self.norm(x), shift, scale)).split([3 * self.dim, self.mlp_hidden], -1)
        q, k, v = (split_heads(part, self.heads) for part in qkv.chunk(3, dim=-1))  # (B, H, N+L, Dh)
        q, k = self.qk_norm(q, k)
        attended = merge_heads(attention(apply_rope(q, angles), apply_rope(k, angles), v, key_mask))  # (B, N+L, D)
        out = self.linear2(torch.cat([attended, F.gelu(mlp_in, approximate="tanh")], dim=-1))  # (B, N+L, D)
        return x + gated(out, gate)


class HunyuanVideoDiT(PatchDiT):
    """``double_blocks`` dual-stream blocks, then ``single_blocks`` single-stream blocks (either may be 0)."""

    def __init__(self, config: DiTConfig, vocab_size: int) -> None:
        super().__init__(config, vocab_size)
        d, h, m = config.dim, config.heads, config.mlp_hidden
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(d, h, m) for _ in range(config.double_blocks))
        self.single_blocks = nn.ModuleList(SingleStreamBlock(d, h, m) for _ in range(config.single_blocks))
        self.initialize_weights()

    def blocks_in_order(self) -> list[nn.Module]:
        return [*self.double_blocks, *self.single_blocks]

    def run_blocks(self, x: Tensor, c: Tensor, text: Tensor, text_mask: Tensor, angles: Tensor) -> Tensor:
        n = x.shape[1]
        angles = torch.cat([angles, angles.new_zeros(text.shape[1], angles.shape[1])])  # (N+L, Dh/2)
        key_mask = torch.cat([text_mask.new_ones(x.shape[0], n), text_mask], dim=1)  # (B, N+L)
        for block in self.double_blocks:
            x, text = block(x, text, c, key_mask, angles)  # (B, N, D), (B, L, D)
        joined = torch.cat([x, text], dim=1)  # (B, N+L, D)
        for block in self.single_blocks:
            joined = block(joined, c, key_mask, angles)  # (B, N+L, D)
        return joined[:, :n]  # (B, N, D)
