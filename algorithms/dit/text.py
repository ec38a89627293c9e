"""Caption conditioning: a word-level tokenizer (Hugging Face ``tokenizers``) and a small bidirectional Transformer
encoder trained together with the DiT.

Hunyuan-DiT conditions on frozen CLIP and mT5 states and HunyuanVideo on a frozen multimodal LLM refined by a small
bidirectional "token refiner"; offline and at our size, the refiner alone, trained from scratch on the captions, is
that encoder. Every caption starts with ``[BOS]``, so the empty caption (the unconditional input of classifier-free
guidance) is one token, and pooling is always defined.

    tok = CaptionTokenizer.from_captions(captions, max_len=16)
    ids = tok.encode(["a thick red 3 in the top left on a dark background"])   # [1, 16] int64, 0 = [PAD]
    tokens, mask, pooled = TextEncoder(tok.vocab_size, dim=128, depth=2, heads=4, max_len=16)(ids)
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from torch import Tensor, nn

from seraphim.algorithms.dit.errors import DiTInputError

PAD, UNK, BOS = "[PAD]", "[UNK]", "[BOS]"


class CaptionTokenizer:
    """Lower-cased words and punctuation to ids, ``[BOS]`` first, padded (id 0) or truncated to ``max_len``."""

    def __init__(self, tokenizer: Tokenizer, max_len: int) -> None:
        if max_len < 2:
            raise DiTInputError(f"CaptionTokenizer: max_len must be >= 2 ([BOS] and one word), got {max_len}")
        if tokenizer.token_to_id(PAD) != 0 or tokenizer.token_to_id(BOS) is None:
            raise DiTInputError(f"CaptionTokenizer: the vocabulary must map {PAD} to 0 and contain {BOS}")
        self.tokenizer = tokenizer
        self.max_len = max_len
        tokenizer.post_processor = processors.TemplateProcessing(single=f"{BOS} $A",
                                                                 special_tokens=[(BOS, tokenizer.token_to_id(BOS))])
        tokenizer.enable_padding(pad_id=0, pad_token=PAD, length=max_len)
        tokenizer.enable_truncation(max_len)

    @classmethod
    def from_captions(cls, captions: Iterable[str], max_len: int = 16) -> "CaptionTokenizer":
        """A vocabulary of every word in ``captions`` (unseen words later map to ``[UNK]``)."""
        tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
        tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        tokenizer.train_from_iterator(list(captions), trainers.WordLevelTrainer(special_tokens=[PAD, UNK, BOS]))
        return cls(tokenizer, max_len)

    @classmethod
    def load(cls, path: Path, max_len: int) -> "CaptionTokenizer":
        return cls(Tokenizer.from_file(str(path)), max_len)

    def save(self, path: Path) -> None:
        self.tokenizer.save(str(path))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, captions: list[str]) -> Tensor:
        """[len(captions), max_len] int64 ids."""
        return torch.tensor([e.ids for e in self.tokenizer.encode_batch(captions)], dtype=torch.int64)


class TextEncoder(nn.Module):
    """Token and learned position embeddings, pre-norm Transformer encoder layers, a final LayerNorm:
    ids [B, L] -> tokens [B, L, D], mask [B, L] (True for real tokens) and the mask-averaged pooled token [B, D]."""

    def __init__(self, vocab_size: int, dim: int, depth: int, heads: int, max_len: int) -> None:
        super().__init__()
        self.dim, self.max_len = dim, max_len
        self.embed = nn.Embedding(vocab_size, dim)
        self.position = nn.Parameter(torch.zeros(max_len, dim))
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if ids.ndim != 2 or ids.shape[1] > self.max_len:
            raise DiTInputError(f"TextEncoder: ids must be [batch, <= {self.max_len}], got {tuple(ids.shape)}")
        mask = ids != 0  # (B, L)
        x = self.embed(ids) + self.position[: ids.shape[1]]  # (B, L, D)
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=~mask)  # (B, L, D)
        x = self.norm(x)
        weights = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # (B, D)
        return x, mask, pooled
