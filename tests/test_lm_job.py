"""lm.transformer as a job: real scheduler, PS and worker processes; a killed worker resumes; the exported model
loads in Hugging Face transformers with our logits; bad specs and text get one-line errors before anything runs."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from seraphim.algorithms.transformer.data import TextDataError, TextSourceSpec, file_documents, stdlib_documents
from seraphim.algorithms.transformer.model import TransformerConfig, TransformerLM
from seraphim.scheduler.job_spec import JobSpecError, parse_job
from test_scheduler import cli, done, node, wait_for


def _user_text(root: Path) -> Path:
    """A folder of the kind users have: some documents as .txt files, others as JSONL records."""
    docs = [text for _, (_, text) in zip(range(90), stdlib_documents())]
    root.mkdir()
    for i, text in enumerate(docs[:40]):
        (root / f"doc{i}.txt").write_text(text)
    with open(root / "more.jsonl", "w") as f:
        for text in docs[40:]:
            f.write(json.dumps({"text": text, "source": "stdlib"}) + "\n")
    return root


def lm_job(name: str, text_dir: Path, **train) -> dict:
    return {
        "name": name, "algorithm": "lm.transformer",
        "cluster": {"ps": 2, "workers": 2},
        "storage": {"ram_mb": 0.5, "page_kb": 64, "snapshot_every": 4},
        "train": {"model": {"preset": "lm-tiny"},
                  "data": {"source": "files", "paths": [str(text_dir)], "vocab_size": 512, "max_bytes": 600_000},
                  "paging": {"page_kb": 16}, "seq_len": 48, "batch_size": 4, "steps": 14, "eval_every": 7,
                  "memory": {"swap": "token", "plan": "mip", "tier_mb": 0.05, "plan_time_limit_s": 5},
                  "optimizer": {"warmup_steps": 2},
                  "generate": {"prompts": ["def"], "max_new_tokens": 8}, **train},
    }


def test_the_lm_trains_on_two_workers_resumes_a_killed_one_and_exports_for_transformers(tmp_path,
                                                                                        scheduler_factory):
    """With MEMO's swapping (the tier spills to disk) and a planned placement of the saved activations."""
    job = lm_job("lm", _user_text(tmp_path / "text"))
    sched = scheduler_factory()
    with sched.client() as client:
        status = client.submit(yaml.safe_dump(job), "local", str(tmp_path))
        job_id, run = status.job_id, Path(status.run_dir)
        status = wait_for(client, job_id, lambda s: s.step >= 5, timeout=180)
        os.kill(node(status, "worker", 1).pid, signal.SIGKILL)
        status = wait_for(client, job_id, done, timeout=240)
        assert node(status, "worker", 1).attempt == 2
    resumed = int(re.search(r"resuming at step (\d+)", (run / "logs" / "worker-1.log").read_text()).group(1))
    assert 1 <= resumed < 14
    results = [json.loads((run / "results" / f"worker-{r}.json").read_text()) for r in (0, 1)]
    for r in results:
        assert r["model_state_bytes"] > r["ps_ram_budget_bytes"]  # the PS shards spill pages to LMDB
        assert 0 < r["max_resident_bytes"] <= r["worker_page_budget_bytes"] < r["model_state_bytes"]
        assert r["val_loss"] < 6.14  # ln(512) = 6.24 is a uniform guess
    assert results[0]["samples"][0].startswith("def")
    assert results[0]["activations_planned"] > 0 and (run / "memory_plan.csv").exists()
    memo_log = (run / "logs" / "worker-0.log").read_text()
    assert re.search(r"MEMO alpha \d\.\d+ from its LP", memo_log) and "memory plan (" in memo_log
    metrics = (run / "metrics" / "worker-0.csv").read_text()
    assert all(m in metrics for m in ("tokens_per_s", "pages_in_flight", "bytes_moved_mb", "val_ppl"))

    out = tmp_path / "hf"
    shown = cli("export", str(run), "--out", str(out))
    assert shown.returncode == 0, shown.stderr
    from transformers import AutoTokenizer, LlamaForCausalLM

    hf = LlamaForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    ours = TransformerLM(TransformerConfig(**json.loads((run / "model" / "lm_config.json").read_text())))
    weights = {}
    for file in sorted(out.glob("*.safetensors")):
        weights.update(load_file(file))
    ours.load_state_dict(weights)
    ids = torch.tensor([tokenizer.encode("def parse(text):\n    return text.split()")])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids), rtol=1e-4, atol=1e-4)
    assert cli("export", str(tmp_path / "nowhere"), "--out", str(out)).stderr.count("holds no trained model") == 1


@pytest.mark.parametrize("train, message", [
    ({"paging": {"page_kb": 16, "budget_mb": 0.02}}, r"train.paging.budget_mb: 0.02 MiB is smaller than one "
                                                     r"layer's pages \(13 pages of 16 KiB"),
    ({"seq_len": 4096}, r"seq_len 4096 exceeds model.max_seq_len 256 \(the RoPE table\)"),
    ({"model": {"preset": "gpt-9"}}, r"unknown preset 'gpt-9'"),
    ({"model": {"preset": "lm-large", "dim": 32768, "n_heads": 256, "n_kv_heads": 64, "ffn_dim": 88064,
                "n_layers": 40}}, r"train.model: the model's PS states take \d+\.\d+ GB"),
])
def test_lm_specs_that_cannot_run_are_refused_before_anything_starts(tmp_path, train, message):
    job = lm_job("bad", tmp_path)
    job["storage"]["dir"] = str(tmp_path)
    job["train"].update(train)
    with pytest.raises(JobSpecError, match=message):
        parse_job(job)


def test_user_text_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    with pytest.raises(TextDataError, match=r"bad.jsonl:2: no text field 'text' \(set data.jsonl_field\)"):
        list(file_documents([str(bad)], "text"))
    bad.write_text('{"text": "fine"}\n{oops\n')
    with pytest.raises(TextDataError, match=r"bad.jsonl:2: not valid JSON"):
        list(file_documents([str(bad)], "text"))
    with pytest.raises(TextDataError, match="does not exist"):
        list(file_documents([str(tmp_path / "missing.txt")], "text"))
    with pytest.raises(ValueError, match="vocab_size"):
        TextSourceSpec(vocab_size=100)
