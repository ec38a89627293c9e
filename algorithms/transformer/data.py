"""Text for the LM: documents from the standard library's sources (which every Python install carries) or from
files users have (plain text, or JSONL with a text field), a byte-level BPE tokenizer trained on them with the
``tokenizers`` library, and token arrays on disk that every worker memory-maps.

Documents are cut into pieces of ``PIECE_CHARS`` characters, and a piece goes to the held-out split by a hash of
its document's name and its index, so the split is fixed whatever the order, the size cap or the number of
workers, and even a handful of long documents gives both splits text. Batches are windows at positions drawn from the step number alone, and worker r of
W takes rows r, r + W, ... of the step's global batch: the data a step sees does not depend on how many workers
share it, so a restarted worker redoes exactly the batch it lost.
"""

from __future__ import annotations

import json
import sysconfig
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from seraphim.proto.atomic_file import atomic_write
from seraphim.proto.errors import FatalJobError

END_OF_TEXT = "<|endoftext|>"
PIECE_CHARS = 4000
TOKENIZER_FILE = "tokenizer.json"
CORPUS_META = "corpus.json"


class TextDataError(FatalJobError, ValueError):
    """Text that cannot be read or is too short for the job; a restart would meet it again."""


class TextSourceSpec(BaseModel):
    """Where the text comes from: the standard library's sources, or the user's files."""

    model_config = ConfigDict(extra="forbid")
    source: Literal["stdlib", "files"] = "stdlib"
    paths: list[str] = Field(default_factory=list, description="files: text files, .jsonl files or directories "
                                                               "(every .txt, .md, .rst, .py and .jsonl below)")
    jsonl_field: str = Field("text", description="the field of each JSONL line that holds the text")
    max_bytes: int = Field(4_000_000, ge=10_000, description="stop reading documents past this many characters")
    val_fraction: float = Field(0.05, gt=0, lt=0.5, description="share of the text held out (pieces chosen by a "
                                                                "hash of their document and position)")
    vocab_size: int = Field(4096, ge=300, le=65535, description="BPE vocabulary, the end-of-text token included")


def stdlib_documents() -> Iterator[tuple[str, str]]:
    """(name, text) of the standard library's modules, tests excluded: code with its docstrings and comments."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if parts[0] in ("site-packages", "dist-packages") or {"test", "tests", "idle_test"} & set(parts):
            continue
        yield str(path.relative_to(root)), path.read_text(encoding="utf-8", errors="replace")


_TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".jsonl")


def file_documents(paths: list[str], jsonl_field: str) -> Iterator[tuple[str, str]]:
    """(name, text) of the users' files: a text file is one document, each JSONL line one."""
    if not paths:
        raise TextDataError("data.source 'files' needs data.paths: text files, .jsonl files or directories")
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise TextDataError(f"data.paths: {given!r} does not exist")
        files = sorted(p for p in path.rglob("*") if p.suffix in _TEXT_SUFFIXES) if path.is_dir() else [path]
        for file in files:
            if file.suffix == ".jsonl":
                yield from _jsonl_documents(file, jsonl_field)
            else:
                yield str(file), file.read_text(encoding="utf-8", errors="replace")


def _jsonl_documents(file: Path, field: str) -> Iterator[tuple[str, str]]:
    with open(file, encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TextDataError(f"{file}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                raise TextDataError(f"{file}:{number}: no text field {field!r} (set data.jsonl_field)")
            yield f"{file}:{number}", record[field]


def documents(spec: TextSourceSpec) -> Iterator[tuple[str, str]]:
    """The source's documents up to spec.max_bytes characters."""
    source = stdlib_documents() if spec.source == "stdlib" else file_documents(spec.paths, spec.jsonl_field)
    total = 0
    for name, text in source:
        if total >= spec.max_bytes:
            return
        yield name, text
        total += len(text)


def split_pieces(name: str, text: str, val_fraction: float) -> tuple[list[str], list[str]]:
    """A document's pieces for training and for the held-out split; its last piece ends with the end-of-text
    token, which the tokenizer sees as one token."""
    pieces = [text[i:i + PIECE_CHARS] for i in range(0, len(text), PIECE_CHARS)] or [""]
    pieces[-1] += END_OF_TEXT
    train, held_out = [], []
    for i, piece in enumerate(pieces):
        held = zlib.crc32(f"{name}#{i}".encode()) % 10_000 < val_fraction * 10_000
        (held_out if held else train).append(piece)
    return train, held_out


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE (GPT-2's scheme: every byte has a token, so any text encodes) with one end-of-text token."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def prepare_corpus(spec: TextSourceSpec, out: Path) -> dict:
    """Read the documents, train the tokenizer on the training split, write train.bin / val.bin (uint16 tokens,
    documents separated by the end-of-text token), the tokenizer and corpus.json (written last: its presence
    means the rest is complete)."""
    train_pieces, val_pieces, n_docs = [], [], 0
    for name, text in documents(spec):
        train, held_out = split_pieces(name, text, spec.val_fraction)
        train_pieces += train
        val_pieces += held_out
        n_docs += 1
    if not train_pieces or not val_pieces:
        raise TextDataError(f"the text source gave {len(train_pieces)} training and {len(val_pieces)} held-out pieces "
                            f"of {PIECE_CHARS} characters; both splits need at least one (more text, or a larger "
                            f"val_fraction)")
    tokenizer = train_tokenizer(train_pieces, spec.vocab_size)
    out.mkdir(parents=True, exist_ok=True)
    eot = tokenizer.token_to_id(END_OF_TEXT)
    sizes = {}
    for split, pieces in (("train", train_pieces), ("val", val_pieces)):
        tokens = np.concatenate([np.asarray(e.ids, dtype=np.uint16) for e in tokenizer.encode_batch(pieces)])
        atomic_write(out / f"{split}.bin", tokens.tofile)
        sizes[split] = int(tokens.size)
    atomic_write(out / TOKENIZER_FILE, lambda f: f.write(tokenizer.to_str()), text=True)
    meta = {"vocab_size": tokenizer.get_vocab_size(), "end_of_text": eot, "tokens": sizes, "documents": n_docs,
            "pieces": {"train": len(train_pieces), "val": len(val_pieces)}, "source": spec.model_dump()}
    atomic_write(out / CORPUS_META, lambda f: json.dump(meta, f, indent=2), text=True)
    return meta


def wait_for_corpus(out: Path, timeout_s: float) -> dict:
    """corpus.json once worker 0 has written the corpus (other workers and restarts read what is there)."""
    deadline = time.monotonic() + timeout_s
    while not (out / CORPUS_META).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:.0f}s for worker 0 to write the corpus under {out}")
        time.sleep(0.2)
    return json.loads((out / CORPUS_META).read_text())


@dataclass
class TokenData:
    """The memory-mapped token arrays of a prepared corpus, and the batches of each step."""

    train: np.ndarray
    val: np.ndarray

    @classmethod
    def open(cls, out: Path) -> "TokenData":
        return cls(np.memmap(out / "train.bin", dtype=np.uint16, mode="r"),
                   np.memmap(out / "val.bin", dtype=np.uint16, mode="r"))

    def check(self, seq_len: int) -> None:
        for split in ("train", "val"):
            tokens = getattr(self, split)
            if tokens.size < seq_len + 2:
                raise TextDataError(f"train.seq_len {seq_len} needs more than {seq_len + 1} tokens, but the {split} "
                                    f"split has {tokens.size}; give more text (data.max_bytes) or a shorter seq_len")

    def batch(self, split: str, step: int, rank: int, world: int, batch_size: int, seq_len: int,
              seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and next-token targets [batch_size, seq_len] of this worker's rows of the step's global batch."""
        tokens = self.train if split == "train" else self.val
        rng = np.random.default_rng([seed, step, 0 if split == "train" else 1])
        starts = rng.integers(0, tokens.size - seq_len - 1, size=batch_size * world)[rank::world]
        windows = np.stack([np.asarray(tokens[s:s + seq_len + 1], dtype=np.int64) for s in starts])
        return windows[:, :-1], windows[:, 1:]


def load_tokenizer(out: Path) -> Tokenizer:
    return Tokenizer.from_file(str(out / TOKENIZER_FILE))
