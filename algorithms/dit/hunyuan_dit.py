"""Hunyuan-DiT (Tencent/HunyuanDiT ``hydit/modules/models.py``): blocks of RoPE self-attention, cross-attention to
the caption tokens and an MLP, with U-ViT long skips from the first half of the blocks into the second.

Two departures, both to keep adaLN-Zero's "every block starts as the identity": Hunyuan-DiT modulates only a shift
before self-attention ("add like SDXL") and fuses a skip as ``Linear(LN(cat(x, skip)))``; here all three branches
get adaLN-Zero's shift, scale and gate, and a skip enters as the zero-initialised residual ``x + Linear(cat(x, skip))``.
The skip pattern is Hunyuan-DiT's: blocks ``0 .. depth/2 - 2`` save their outputs, blocks ``depth/2 + 1 ..`` take
them back in reverse order, the two middle blocks neither.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seraphim.algorithms.dit.backbone import DiTConfig, PatchDiT
from seraphim.algorithms.dit.layers import (
    QKV, AdaLNModulation, CrossAttention, Mlp, attention, gated, layer_norm, merge_heads, modulate,
)
from seraphim.algorithms.dit.rope import apply_rope


class CrossAttentionBlock(nn.Module):
    """``x += g1 * SelfAttn(mod(LN x)); x += g2 * CrossAttn(mod(LN x), text); x += g3 * MLP(mod(LN x))``."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int, takes_skip: bool) -> None:
        super().__init__()
        self.skip = nn.Linear(2 * dim, dim) if takes_skip else None
        self.norm1 = layer_norm(dim)
        self.qkv = QKV(dim, heads)
        self.attn_proj = nn.Linear(dim, dim)
        self.norm2 = layer_norm(dim)
        self.cross = CrossAttention(dim, heads)
        self.norm3 = layer_norm(dim)
        self.mlp = Mlp(dim, mlp_hidden)
        self.modulation = AdaLNModulation(dim, 9)

    @property
    def takes_skip(self) -> bool:
        return self.skip is not None

    def self_attention(self, x: Tensor, angles: Tensor) -> Tensor:
        q, k, v = self.qkv(x)  # (B, H, N, Dh)
        return self.attn_proj(merge_heads(attention(apply_rope(q, angles), apply_rope(k, angles), v)))  # (B, N, D)

    def forward(self, x: Tensor, c: Tensor, text: Tensor, text_mask: Tensor, angles: Tensor,
                skip: Tensor | None = None) -> Tensor:
        if self.skip is not None:
            if skip is None:
                raise ValueError("this block takes a long skip: pass the saved output of its mirror block")
            x = x + self.skip(torch.cat([x, skip], dim=-1))  # (B, N, D)
        sh1, sc1, g1, sh2, sc2, g2, sh3, sc3, g3 = self.modulation(c)  # 9 x (B, D)
        x = x + gated(self.self_attention(modulate(self.norm1(x), sh1, sc1), angles), g1)  # (B, N, D)
        x = x + gated(self.cross(modulate(self.norm2(x), sh2, sc2), text, text_mask, angles), g2)  # (B, N, D)
        return x + gated(self.mlp(modulate(self.norm3(x), sh3, sc3)), g3)  # (B, N, D)


class HunyuanDiT(PatchDiT):
    """Cross-attention DiT with long skips over 2-D (or 3-D) patch tokens."""

    def __init__(self, config: DiTConfig, vocab_size: int) -> None:
        super().__init__(config, vocab_size)
        half = config.depth // 2
        self.blocks = nn.ModuleList(CrossAttentionBlock(config.dim, config.heads, config.mlp_hidden, layer > half)
                                    for layer in range(config.depth))
        self.initialize_weights()

    def blocks_in_order(self) -> list[nn.Module]:
        return list(self.blocks)

    def zero_init_linears(self) -> list[nn.Linear]:
        return [block.skip for block in self.blocks if block.skip is not None]

    def run_blocks(self, x: Tensor, c: Tensor, text: Tensor, text_mask: Tensor, angles: Tensor) -> Tensor:
        saved: list[Tensor] = []
        for layer, block in enumerate(self.blocks):
            x = block(x, c, text, text_mask, angles, saved.pop() if block.takes_skip else None)  # (B, N, D)
            if layer < len(self.blocks) // 2 - 1:
                saved.append(x)
        return x
