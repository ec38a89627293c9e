"""What every DiT here shares around its blocks: the configuration, patchify and embed, caption conditioning,
RoPE angles, the final layer, unpatchify, and one ``initialize_weights``.

A family (``hunyuan_dit.py``, ``hunyuan_video.py``) subclasses :class:`PatchDiT` and writes ``run_blocks`` and
``blocks_in_order``; ``paged_units`` lists every layer in forward order, which is what the paged step runtime
(``worker.paged``) fetches weights by: a unit's parameters are read only inside its own forward.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from seraphim.algorithms.dit.layers import AdaLNModulation, Conditioning, FinalLayer, patchify, unpatchify
from seraphim.algorithms.dit.rope import rope_angles, rope_split, sincos_embedding
from seraphim.algorithms.dit.text import TextEncoder


class DiTConfig(BaseModel):
    """Architecture of one model; ``models.PRESETS`` names the usual ones."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    family: Literal["hunyuan_dit", "hunyuan_video"]
    dim: int = Field(128, ge=8, description="model width D")
    heads: int = Field(4, ge=1)
    depth: int = Field(0, ge=0, description="hunyuan_dit: cross-attention blocks (even: half give long skips)")
    double_blocks: int = Field(0, ge=0, description="hunyuan_video: dual-stream blocks (video and text weights)")
    single_blocks: int = Field(0, ge=0, description="hunyuan_video: single-stream blocks over the joined tokens")
    mlp_ratio: float = Field(4.0, gt=0)
    patch: tuple[int, ...] = Field((4, 4), description="(p, p) for images, (p_t, p, p) for video")
    channels: int = Field(3, ge=1, description="image channels (input and output)")
    text_dim: int = Field(128, ge=8)
    text_depth: int = Field(2, ge=0)
    text_heads: int = Field(4, ge=1)
    max_text_len: int = Field(16, ge=2, description="caption tokens, [BOS] included")
    rope_theta: float = Field(10000.0, gt=1)

    @model_validator(mode="after")
    def _consistent(self) -> "DiTConfig":
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be a multiple of heads {self.heads}")
        if self.text_dim % self.text_heads:
            raise ValueError(f"text_dim {self.text_dim} must be a multiple of text_heads {self.text_heads}")
        if len(self.patch) not in (2, 3) or min(self.patch) < 1:
            raise ValueError(f"patch must be 2 (image) or 3 (video) sizes >= 1, got {self.patch}")
        if self.family == "hunyuan_dit" and (self.depth < 2 or self.depth % 2 or self.double_blocks or
                                             self.single_blocks):
            raise ValueError(f"hunyuan_dit takes an even depth >= 2 and no double/single blocks; got depth "
                             f"{self.depth}, double_blocks {self.double_blocks}, single_blocks {self.single_blocks}")
        if self.family == "hunyuan_video" and (self.depth or self.double_blocks + self.single_blocks < 1):
            raise ValueError(f"hunyuan_video takes double_blocks + single_blocks >= 1 and no depth; got depth "
                             f"{self.depth}, double_blocks {self.double_blocks}, single_blocks {self.single_blocks}")
        rope_split(self.dim // self.heads, len(self.patch))  # raise when the head cannot be split over the axes,
        rope_split(self.dim, len(self.patch))  # or the width (the absolute position embedding)
        return self

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.dim * self.mlp_ratio)

    @property
    def patch_values(self) -> int:
        return math.prod(self.patch) * self.channels


class PatchDiT(nn.Module):
    """x_t [B, C, *S], timestep t [B] (0..1000 scale), caption ids [B, L] -> prediction [B, C, *S].

    Tokens carry DiT's fixed sin-cos position embedding as well as RoPE in attention: RoPE alone gives only relative
    positions, and captions here name absolute ones ("in the top left"); without it a 6-block model scattered its
    digits over the canvas (position accuracy 0.46 after 1000 steps, against chance 0.25).
    """

    def __init__(self, config: DiTConfig, vocab_size: int) -> None:
        super().__init__()
        self.config = config
        self.x_embed = nn.Linear(config.patch_values, config.dim)
        self.cond = Conditioning(config.dim, TextEncoder(vocab_size, config.text_dim, config.text_depth,
                                                         config.text_heads, config.max_text_len))
        self.final = FinalLayer(config.dim, config.patch_values)
        self.rope_dims = rope_split(config.head_dim, len(config.patch))

    @abstractmethod
    def run_blocks(self, x: Tensor, c: Tensor, text: Tensor, text_mask: Tensor, angles: Tensor) -> Tensor:
        """The family's blocks: image tokens x [B, N, D] in, [B, N, D] out."""

    def forward(self, x: Tensor, t: Tensor, ids: Tensor) -> Tensor:
        patches, grid = patchify(x, self.config.patch)  # (B, N, P*C)
        h = self.x_embed(patches) + sincos_embedding(grid, self.config.dim)  # (B, N, D)
        c, text, text_mask = self.cond(t, ids)  # (B, D), (B, L, D), (B, L)
        angles = rope_angles(grid, self.rope_dims, self.config.rope_theta)  # (N, Dh/2)
        h = self.run_blocks(h, c, text, text_mask, angles)  # (B, N, D)
        return unpatchify(self.final(h, c), grid, self.config.patch, self.config.channels)  # (B, C, *S)

    def initialize_weights(self) -> None:
        """Called once by each family's constructor, after its blocks exist."""
        # Linear layers: Xavier-uniform weights, zero biases (as DiT, whose patch-embedding conv is a Linear here).
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        # Caption word embeddings: N(0, 1), the scale of what the encoder's (Xavier-initialised) layers add to the
        # residual stream from their LayerNorm'd inputs. At DiT's 0.02 a word's own embedding was drowned by those
        # O(1) branch outputs, which mix all the caption's tokens: a digit word moved its token by under a tenth of
        # its norm, the DiT never learned to use it (class accuracy 0.11 after 1000 steps; 0.62 at N(0, 1)).
        nn.init.normal_(self.cond.text.embed.weight, std=1.0)
        # Learned caption positions and the timestep MLP: N(0, 0.02), as DiT's label table and t_embedder.
        nn.init.normal_(self.cond.text.position, std=0.02)
        for layer in self.cond.t_embed.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=0.02)
        # adaLN-Zero: every modulation starts at shift = scale = gate = 0, so every block is the identity.
        for module in self.modules():
            if isinstance(module, AdaLNModulation):
                nn.init.zeros_(module.linear.weight)
                nn.init.zeros_(module.linear.bias)
        # Residual branches that adaLN does not gate (long skips) start at zero too; so does the output layer.
        for linear in (*self.zero_init_linears(), self.final.linear):
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def paged_units(self) -> list[nn.Module]:
        """Every layer holding weights, in the order forward runs them (what the paged step runtime pages by)."""
        return [self.x_embed, self.cond, *self.blocks_in_order(), self.final]

    @abstractmethod
    def blocks_in_order(self) -> list[nn.Module]:
        """The family's blocks in the order ``run_blocks`` calls them."""

    def zero_init_linears(self) -> list[nn.Linear]:
        """A family's residual Linear layers outside adaLN's gates, zeroed at init; none by default."""
        return []

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

