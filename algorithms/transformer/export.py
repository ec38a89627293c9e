"""The trained LM out of the platform: safetensors with Hugging Face's Llama names, and a directory that
``transformers`` loads as ``LlamaForCausalLM`` with its tokenizer.

``write_model`` runs on worker 0 at the end of a job: it streams the final pages from the PS tensor by tensor into
safetensors shards under ``<run>/model/`` (bounded memory: one shard's tensors at a time), with the model's config
and the run's tokenizer. ``export_run`` (``seraphim export RUN_DIR --out DIR``) turns that directory into the
layout and config files Hugging Face reads.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Iterable

import torch
from safetensors.torch import save_file

from seraphim.algorithms.transformer.data import END_OF_TEXT, TOKENIZER_FILE, load_tokenizer
from seraphim.algorithms.transformer.model import TransformerConfig
from seraphim.worker.paged import PagedModel

LM_CONFIG = "lm_config.json"
INDEX = "model.safetensors.index.json"
SHARD_BYTES = 1 << 30


class ExportError(ValueError):
    """A run directory that holds no exportable model."""


def write_model(paged: PagedModel, config: TransformerConfig, corpus_dir: Path, out: Path,
                shard_bytes: int = SHARD_BYTES) -> Path:
    """The paged model's final weights as safetensors shards (and their index), its config and the tokenizer."""
    out.mkdir(parents=True, exist_ok=True)
    shards = _write_shards(paged.named_tensors(), out, shard_bytes)
    weight_map = {name: file for file, names in shards for name in names}
    total = sum((out / file).stat().st_size for file, _ in shards)
    (out / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    shutil.copyfile(corpus_dir / TOKENIZER_FILE, out / TOKENIZER_FILE)
    (out / LM_CONFIG).write_text(json.dumps(asdict(config), indent=2))
    return out


def _write_shards(tensors: Iterable[tuple[str, torch.Tensor]], out: Path,
                  shard_bytes: int) -> list[tuple[str, list[str]]]:
    pending: dict[str, torch.Tensor] = {}
    written: list[list[str]] = []
    size = 0

    def flush() -> None:
        nonlocal pending, size
        save_file(pending, str(out / f"part-{len(written):05d}.safetensors"), metadata={"format": "pt"})
        written.append(list(pending))
        pending, size = {}, 0

    for name, tensor in tensors:
        if pending and size + tensor.nbytes > shard_bytes:
            flush()
        pending[name] = tensor.contiguous()
        size += tensor.nbytes
    if pending:
        flush()
    files = []
    for i, names in enumerate(written):  # Hugging Face's shard names carry the count, known only now
        final = f"model-{i + 1:05d}-of-{len(written):05d}.safetensors"
        (out / f"part-{i:05d}.safetensors").replace(out / final)
        files.append((final, names))
    return files


def export_run(run_dir: Path, out: Path) -> Path:
    """A Hugging Face Llama directory from a finished lm.transformer run's ``model/``."""
    model_dir = run_dir / "model"
    if not (model_dir / LM_CONFIG).exists() or not (model_dir / INDEX).exists():
        raise ExportError(f"{model_dir} holds no trained model ({LM_CONFIG} and {INDEX}); it is written by worker "
                          f"0 of an lm.transformer job after its last step: did the job finish?")
    config = TransformerConfig(**json.loads((model_dir / LM_CONFIG).read_text()))
    index = json.loads((model_dir / INDEX).read_text())
    files = sorted(set(index["weight_map"].values()))
    missing = [f for f in files if not (model_dir / f).exists()]
    if missing:
        raise ExportError(f"{model_dir} lacks the weight files {missing} its index names")
    out.mkdir(parents=True, exist_ok=True)
    for file in files:
        shutil.copyfile(model_dir / file, out / file)
    shutil.copyfile(model_dir / INDEX, out / INDEX)
    tokenizer = load_tokenizer(model_dir)
    eot = tokenizer.token_to_id(END_OF_TEXT)
    (out / "config.json").write_text(json.dumps(llama_config(config, eot), indent=2))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": eot, "eos_token_id": eot, "do_sample": True, "temperature": 0.8, "top_k": 40}, indent=2))
    shutil.copyfile(model_dir / TOKENIZER_FILE, out / TOKENIZER_FILE)
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": END_OF_TEXT, "eos_token": END_OF_TEXT,
         "unk_token": END_OF_TEXT, "model_max_length": config.max_seq_len, "add_prefix_space": False}, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": END_OF_TEXT, "eos_token": END_OF_TEXT, "unk_token": END_OF_TEXT}, indent=2))
    return out


def llama_config(config: TransformerConfig, end_of_text: int) -> dict:
    """Hugging Face's LlamaConfig fields for this architecture."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "float32",
        "vocab_size": config.vocab_size, "hidden_size": config.dim, "intermediate_size": config.ffn_dim,
        "num_hidden_layers": config.n_layers, "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads, "head_dim": config.head_dim,
        "max_position_embeddings": config.max_seq_len, "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta, "tie_word_embeddings": config.tie_embeddings, "hidden_act": "silu",
        "attention_bias": False, "mlp_bias": False, "initializer_range": config.init_std,
        "bos_token_id": end_of_text, "eos_token_id": end_of_text,
    }
