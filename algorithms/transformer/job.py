"""The Transformer LM as a Seraphim job (``lm.transformer``): Llama-architecture training whose weights and AdamW
states live in pages on the PS shards, data-parallel over the workers, through the paged step runtime.

Worker 0 builds the corpus and the tokenizer (under the run directory) and writes the initial pages; every worker
then trains its rows of each step's global batch, its gradients summed per page on the PS, and reports loss,
tokens/s, pages in flight and bytes moved each step. After the last step, worker 0 samples a few continuations
and writes the trained model (safetensors, Hugging Face's Llama names) and the tokenizer to ``model/`` of the run
directory; ``seraphim export`` turns that into a directory ``transformers`` loads. A restarted worker resumes at
the clock the PS shards hold for it, on the same batches.
"""

from __future__ import annotations

import math
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from seraphim.algorithms.lr_scaling import GradientNoiseScale
from seraphim.algorithms.registry import Job, JobContext, register
from seraphim.algorithms.transformer.data import (TextDataError, TextSourceSpec, TokenData, load_tokenizer,
                                                   prepare_corpus, wait_for_corpus)
from seraphim.algorithms.transformer.export import write_model
from seraphim.algorithms.transformer.model import (PRESETS, TransformerConfig, TransformerLM, build_model,
                                                    rope_tables)
from seraphim.proto import scheduler_pb2
from seraphim.proto.agent import request_memory_plan
from seraphim.proto.errors import AlreadyExists, FatalJobError
from seraphim.proto.resources import peak_rss_bytes
from seraphim.worker.memo.alpha import alpha_closed_form, measure_bandwidth, measure_layer
from seraphim.worker.memo.tier import ActivationTier
from seraphim.worker.memo.tokenwise import TokenwiseMemo
from seraphim.worker.paged import PagedModel, PagingConfig, row_shape
from seraphim.worker.paged.activations import ActivationPlan
from seraphim.worker.paged.layout import PageLayout
from seraphim.worker.specs import AdamW

TABLE = "lm"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class ModelSpec(BaseModel):
    """The architecture: a preset, with any field overridden (the vocabulary comes from data.vocab_size)."""

    model_config = ConfigDict(extra="forbid")
    preset: str = Field("lm-small", description=f"one of {sorted(PRESETS)}")
    dim: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    n_kv_heads: int | None = None
    ffn_dim: int | None = None
    max_seq_len: int | None = None
    rope_theta: float | None = None
    norm_eps: float | None = None
    tie_embeddings: bool | None = None
    init_std: float | None = None

    @model_validator(mode="after")
    def _known_preset(self) -> "ModelSpec":
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; known: {sorted(PRESETS)}")
        return self

    def config(self, vocab_size: int) -> TransformerConfig:
        fields = dict(PRESETS[self.preset], vocab_size=vocab_size)
        fields.update({k: v for k, v in self.model_dump(exclude={"preset"}).items() if v is not None})
        return TransformerConfig(**fields)


class OptimizerSpec(BaseModel):
    """AdamW on the PS, with a linear warm-up and a cosine decay applied as each step's learning-rate scale."""

    model_config = ConfigDict(extra="forbid")
    lr: float = Field(1e-3, gt=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    warmup_steps: int = Field(20, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.1, ge=0, le=1)

    def scale(self, step: int, steps: int) -> float:
        """The learning-rate multiplier of a step."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        progress = (step - self.warmup_steps) / max(1, steps - self.warmup_steps)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class PagingSpec(BaseModel):
    """How the model states move between the PS and the worker."""

    model_config = ConfigDict(extra="forbid")
    page_kb: int = Field(256, ge=4, description="a model page in the compute precision, KiB")
    budget_mb: float | None = Field(None, gt=0, description="the worker's resident pages, MiB (default: two of the "
                                                            "largest layer's page sets)")
    max_in_flight: int = Field(4, ge=1, le=64, description="prefetches in flight at once")
    overlap: bool = Field(True, description="prefetch by the step trace and push each page's gradient at once; "
                                            "false: fetch on demand and push after backward")
    staleness: int = Field(0, ge=0, le=1, description="1: one-step-delayed update (forward of step t reads "
                                                      "version t-1 or later; changes the math)")
    compute_dtype: Literal["float32", "bfloat16"] = "float32"

    def runtime(self, ps_page_bytes: int) -> PagingConfig:
        return PagingConfig(page_bytes=self.page_kb * 1024,
                            budget_bytes=int(self.budget_mb * 2**20) if self.budget_mb else None,
                            max_in_flight=self.max_in_flight, overlap=self.overlap, staleness=self.staleness,
                            compute_dtype=_DTYPES[self.compute_dtype], ps_page_bytes=ps_page_bytes)


class MemorySpec(BaseModel):
    """MEMO's activation memory (worker/memo): token-wise swapping and recomputation of the layers' saved activations,
    and a memory plan that places what stays at offsets of one buffer."""

    model_config = ConfigDict(extra="forbid")
    swap: Literal["off", "layer", "token"] = Field(
        "off", description="layer: each layer's input and attention output go to the tier, the rest is recomputed; "
                           "token: a share alpha of the other saved tensors' tokens goes there too")
    alpha: Literal["auto"] | float = Field("auto", description="auto: MEMO's LP from the measured tier bandwidth, "
                                                               "layer time and tier budget")
    plan: Literal["off", "mip", "best_fit"] = Field("off", description="plan the saved activations' offsets (the "
                                                                       "scheduler's planner)")
    tier_mb: float = Field(256.0, ge=0, description="the tier's memory; past it swapped tensors spill to disk")
    plan_time_limit_s: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _alpha(self) -> "MemorySpec":
        if self.alpha != "auto" and not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be 'auto' or a share in [0, 1], got {self.alpha}")
        if self.alpha not in ("auto", 0.0) and self.swap != "token":
            raise ValueError(f"alpha {self.alpha} applies to swap 'token' only (swap is {self.swap!r})")
        return self


class GenerateSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompts: list[str] = Field(default_factory=lambda: ["def parse", "class Parser:\n    def", "import"])
    max_new_tokens: int = Field(48, ge=1)
    temperature: float = Field(0.8, ge=0)
    top_k: int = Field(40, ge=1)


class LMTrainingSpec(BaseModel):
    """What every LM workload's run takes besides its model (a subclass adds `model`, with config(vocab_size))."""

    model_config = ConfigDict(extra="forbid")
    data: TextSourceSpec = Field(default_factory=TextSourceSpec)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    paging: PagingSpec = Field(default_factory=PagingSpec)
    generate: GenerateSpec = Field(default_factory=GenerateSpec)
    seq_len: int = Field(256, ge=2, description="tokens per training sequence")
    batch_size: int = Field(8, ge=1, description="sequences per step on each worker")
    steps: int = Field(200, ge=1)
    eval_every: int = Field(50, ge=1)
    eval_batches: int = Field(4, ge=1, description="held-out batches per evaluation, split over the workers")
    seed: int = 0

    @model_validator(mode="after")
    def _fits(self) -> "LMTrainingSpec":
        config = self.model.config(self.data.vocab_size)
        if self.seq_len > config.max_seq_len:
            raise ValueError(f"seq_len {self.seq_len} exceeds model.max_seq_len {config.max_seq_len} (the RoPE "
                             f"table); raise model.max_seq_len or shorten seq_len")
        return self


class LMSpec(LMTrainingSpec):
    model: ModelSpec = Field(default_factory=ModelSpec)
    memory: MemorySpec = Field(default_factory=MemorySpec)


def paged_layout(spec: LMSpec) -> tuple[TransformerConfig, PageLayout, int]:
    """The model's config, its page layout and the largest layer's page count, without building any weight."""
    config = spec.model.config(spec.data.vocab_size)
    model = build_model(config, device="meta")
    names = {id(p): n for n, p in model.named_parameters()}
    order: list[str] = []
    unit_params = [[names[id(p)] for p in unit.parameters()] for unit in model.paged_units()]
    for params in unit_params:
        order.extend(n for n in params if n not in order)
    shapes = dict(model.named_parameters())
    page_numel = spec.paging.runtime(256 << 10).page_numel
    layout = PageLayout.pack(((n, tuple(shapes[n].shape)) for n in order), page_numel)
    return config, layout, max(len(layout.pages_of(p)) for p in unit_params)


@register("lm.transformer")
class TransformerLMJob(Job):
    Spec = LMSpec

    def total_steps(self) -> int:
        return self.spec.steps

    def check_cluster(self, cluster: Any, storage: Any) -> list[str]:
        spec: LMSpec = self.spec
        config = spec.model.config(spec.data.vocab_size)
        page_numel = spec.paging.runtime(storage.page_kb * 1024).page_numel
        try:
            rows = row_shape(page_numel, storage.page_kb * 1024)
        except ValueError as exc:
            return [f"storage.page_kb: {exc}"]
        state_bytes = -(-config.parameter_count() // page_numel) * rows.rows_per_page * rows.row_bytes()
        root = Path(storage.dir).resolve()
        while not root.exists():
            root = root.parent
        free = shutil.disk_usage(root).free
        if 2 * state_bytes > free:  # LMDB copies a page on write until the next snapshot lets the old one go
            return [f"train.model: the model's PS states take {state_bytes / 1e9:.2f} GB (room for twice that is "
                    f"needed while snapshots turn over) but {root} has {free / 1e9:.2f} GB free"]
        _, _, largest = paged_layout(spec)
        page_bytes = spec.paging.page_kb * 1024
        if spec.paging.budget_mb is not None and spec.paging.budget_mb * 2**20 < largest * page_bytes:
            return [f"train.paging.budget_mb: {spec.paging.budget_mb} MiB is smaller than one layer's pages "
                    f"({largest} pages of {spec.paging.page_kb} KiB = {largest * page_bytes / 2**20:.2f} MiB); raise "
                    f"it to at least that, or lower train.paging.page_kb"]
        return []

    def run(self, ctx: JobContext) -> dict[str, Any]:
        return LMRun(self.spec, ctx).train()


class LMRun:
    """One worker's training run of a language model on paged PS states. Its hooks (model, memo, training_step,
    inference, step_metrics, generate, write_model, summary_extra, gradient_tables, step_grad_sq, close) are what another LM workload (``lm.moe``)
    overrides; the corpus, the loop, evaluation and sampling are shared."""

    def __init__(self, spec: Any, ctx: JobContext) -> None:
        self.spec, self.ctx = spec, ctx
        self.corpus_dir = ctx.run_dir / "data"
        self.world = ctx.world_size
        torch.manual_seed(spec.seed)

    # -- hooks -----------------------------------------------------------------------------------------------------
    def model(self) -> tuple[Any, nn.Module]:
        """The model's config and the model on the meta device (the paged runtime fills it)."""
        config = self.spec.model.config(self.spec.data.vocab_size)
        return config, build_model(config, seed=self.spec.seed, device="meta")

    @contextmanager
    def training_step(self, paged: PagedModel, step: int, lr_scale: float) -> Iterator[None]:
        with paged.step(step, lr_scale=lr_scale, last_step=self.spec.steps - 1):
            yield

    @contextmanager
    def inference(self, paged: PagedModel) -> Iterator[None]:
        with paged.inference():
            yield

    def step_metrics(self, model: nn.Module) -> dict[str, float]:
        """Workload-specific metrics of the step just run."""
        return {}

    def generate(self, model: nn.Module, ids: torch.Tensor, generator: torch.Generator,
                 stop_token: int | None) -> torch.Tensor:
        g = self.spec.generate
        return model.generate(ids, g.max_new_tokens, g.temperature, g.top_k, generator, stop_token=stop_token)

    def write_model(self, paged: PagedModel, config: Any) -> None:
        """Worker 0 writes the trained model under the run directory."""
        write_model(paged.named_tensors(), config, self.corpus_dir, self.ctx.run_dir / "model")

    def summary_extra(self) -> dict[str, Any]:
        return {}

    def gradient_tables(self) -> list[str]:
        """The versioned PS tables this run pushes gradients to (their applied norms give the noise scale)."""
        return [TABLE]

    def step_grad_sq(self, paged: PagedModel) -> float:
        """|gradient this worker pushed in the step just run|^2, over every table of gradient_tables()."""
        return paged.grads.step_grad_sq

    def close(self) -> None:
        """Release what the hooks opened."""

    def train(self) -> dict[str, Any]:
        spec, ctx = self.spec, self.ctx
        corpus = self._corpus()
        config, model = self.model()
        if corpus["vocab_size"] > config.vocab_size:
            raise TextDataError(f"the run's tokenizer has {corpus['vocab_size']} tokens but the model's vocabulary "
                                f"is {config.vocab_size} (data.vocab_size changed since {self.corpus_dir} was "
                                f"written); use a new run directory or the old vocab_size")
        data = TokenData.open(self.corpus_dir)
        data.check(spec.seq_len)
        stats = ctx.ps.stats()
        paged = self._paged(model, int(stats[0].page_bytes))
        ctx.log.info("model %s: %.1fM parameters in %d pages of %d KiB (%d PS rows of %d values each); worker page "
                     "budget %.1f MiB; PS RAM budget %.1f MiB over %d shards", spec.model.preset,
                     config.parameter_count() / 1e6, paged.layout.n_pages, spec.paging.page_kb,
                     paged.rows.rows_per_page, paged.rows.row_dim, paged.budget_bytes / 2**20,
                     sum(s.ram_budget for s in stats) / 2**20, len(stats))
        memo = self.memo(model, paged, data)
        try:
            history = self._loop(model, paged, data, memo)
            evaluation = self._evaluate(model, paged, data)
            result = self._summary(config, paged, history, evaluation)
            result["model_digest"] = ctx.ps.digest(self.gradient_tables())  # evaluation read the final version
            if ctx.rank == 0:
                result["samples"] = self._samples(model, paged)
                self.write_model(paged, config)
            return result
        finally:
            self.close()
            paged.close()
            if memo is not None:
                memo.tier.close()

    def memo(self, model: nn.Module, paged: PagedModel, data: TokenData) -> TokenwiseMemo | None:
        """Hook: MEMO on the layers (all but the last two), with alpha from its LP unless the spec gives it."""
        spec, ctx = self.spec, self.ctx
        if spec.memory.swap == "off":
            return None
        spill = ctx.run_dir / "tier" / f"worker-{ctx.rank}"
        tier = ActivationTier(int(spec.memory.tier_mb * 2**20), spill)
        alpha = 0.0 if spec.memory.swap == "layer" else spec.memory.alpha
        if alpha == "auto":
            x, _ = data.batch("train", 0, ctx.rank, self.world, spec.batch_size, spec.seq_len, spec.seed)
            layer = model.model.layers[0]
            with paged.inference():
                hidden = model.model.embed_tokens(torch.from_numpy(x))
            with paged.inference(), paged.unit_weights(layer):
                cos, sin = rope_tables(model.config.head_dim, 0, spec.seq_len, model.config.rope_theta)
                acts = measure_layer(layer, hidden, cos, sin)
            choice = alpha_closed_form(acts, measure_bandwidth(str(spill)), tier.budget_bytes,
                                       model.config.n_layers)
            alpha = choice.alpha
            ctx.log.info("MEMO alpha %.3f from its LP: overlap bound %.3f, tier bound %.3f; tier %.0f MB/s, layer "
                         "forward %.3fs, per layer %d B input + %d B attention output + %d B other saved", alpha,
                         choice.overlap_bound, choice.capacity_bound, choice.bandwidth_bytes_per_s / 1e6,
                         acts.forward_s, acts.input_bytes, acts.attention_bytes, acts.other_bytes)
        memo = TokenwiseMemo(tier, float(alpha), weights=paged.unit_weights, saved_ref=paged.saved_ref,
                             unpack_ref=paged.unpack_ref)
        memo.wrap(model.model.layers)
        ctx.log.info("MEMO swap %s, alpha %.3f on %d of %d layers (the last two are never swapped)",
                     spec.memory.swap, memo.alpha, max(0, model.config.n_layers - 2), model.config.n_layers)
        return memo

    def _install_plan(self, paged: PagedModel) -> None:
        """After this process's first step: worker 0 reports its saved-activation trace and the scheduler plans it
        once for the job; every worker places its saved activations by that plan from the next step on."""
        spec, ctx = self.spec, self.ctx
        if ctx.scheduler is None or not ctx.scheduler.job_id:
            ctx.log.warning("memory.plan %s needs a scheduler (a managed worker); running without a plan",
                            spec.memory.plan)
            return
        rows = paged.activations.stats.trace
        trace = None
        if ctx.rank == 0:
            trace = scheduler_pb2.MemoryTrace(job_id=ctx.scheduler.job_id, rank=ctx.rank,
                                              lower=[r[0] for r in rows], upper=[r[1] for r in rows],
                                              size=[r[2] for r in rows], method=spec.memory.plan,
                                              time_limit_s=spec.memory.plan_time_limit_s)
        plan = request_memory_plan(ctx.scheduler.address, ctx.scheduler.token, ctx.scheduler.tls, trace,
                                   ctx.scheduler.job_id, timeout_s=spec.memory.plan_time_limit_s + 300)
        paged.install_activation_plan(ActivationPlan(list(plan.offsets), list(plan.size), plan.peak))
        ctx.log.info("memory plan (%s): %d saved activations in one buffer of %d bytes (lower bound %d)",
                     plan.method, len(plan.offsets), plan.peak, plan.lower_bound)

    def _corpus(self) -> dict:
        if self.ctx.rank == 0 and not (self.corpus_dir / "corpus.json").exists():
            started = time.monotonic()
            meta = prepare_corpus(self.spec.data, self.corpus_dir)
            self.ctx.log.info("corpus: %s tokens (train) and %s (held out) from %s documents, tokenizer of %d tokens, "
                              "in %.1fs", meta["tokens"]["train"], meta["tokens"]["val"], meta["documents"],
                              meta["vocab_size"], time.monotonic() - started)
            return meta
        return wait_for_corpus(self.corpus_dir, timeout_s=900)

    def _paged(self, model: nn.Module, ps_page_bytes: int) -> PagedModel:
        spec, ctx = self.spec, self.ctx
        o = spec.optimizer
        optimizer = AdamW(lr=o.lr, beta1=o.beta1, beta2=o.beta2, eps=o.eps, weight_decay=o.weight_decay)
        try:
            return PagedModel(ctx.ps, model, name=TABLE, optimizer=optimizer,
                              config=spec.paging.runtime(ps_page_bytes),
                              init=model.init_tensor, rank=ctx.rank, world_size=self.world, seed=spec.seed)
        except AlreadyExists as exc:
            raise FatalJobError(f"the PS already holds model pages {TABLE!r} of another shape or optimizer ({exc}); "
                                f"the model, its vocabulary or the optimizer changed since they were written: use a "
                                f"new run directory") from None

    def _loop(self, model: TransformerLM, paged: PagedModel, data: TokenData,
              memo: TokenwiseMemo | None) -> list[dict[str, float]]:
        spec, ctx = self.spec, self.ctx
        history = []
        tokens = spec.batch_size * spec.seq_len
        noise = GradientNoiseScale(decay=0.95)
        local_grad_sq: dict[int, float] = {}
        for step in range(ctx.start_step, spec.steps):
            x, y = data.batch("train", step, ctx.rank, self.world, spec.batch_size, spec.seq_len, spec.seed)
            started = time.perf_counter()
            with self.training_step(paged, step, spec.optimizer.scale(step, spec.steps)):
                loss = model(torch.from_numpy(x), torch.from_numpy(y))
                (loss / self.world).backward()
            ctx.ps.clock()
            elapsed = time.perf_counter() - started
            if self.world > 1:  # one worker has no smaller batch to set against the global one
                local_grad_sq[step] = self.step_grad_sq(paged)
            report = paged.report()
            metrics = {"train_loss": loss.item(), "tokens_per_s": tokens / elapsed,
                       "pages_in_flight": report.pages_in_flight,
                       "bytes_moved_mb": (report.pulled_bytes + report.pushed_bytes) / 2**20,
                       "stall_s": report.stall_s, "lr": spec.optimizer.lr * spec.optimizer.scale(step, spec.steps),
                       "saved_activations_mb": paged.activations.stats.peak_bytes / 2**20}
            metrics.update(self.step_metrics(model))
            metrics.update(self._noise_scale(noise, local_grad_sq, step - 1, tokens))
            if memo is not None:
                metrics.update(alpha=memo.alpha, tier_mb=memo.tier.stats.put_bytes / 2**20)
            if step == ctx.start_step and memo is not None and spec.memory.plan != "off":
                self._install_plan(paged)
            if paged.activations.planned_bytes:
                metrics["planned_peak_mb"] = paged.activations.planned_bytes / 2**20
            if (step + 1) % spec.eval_every == 0 and step + 1 < spec.steps:
                metrics.update(self._evaluate(model, paged, data))
            ctx.report(step, metrics)
            history.append(metrics)
        return history

    def _noise_scale(self, noise: GradientNoiseScale, local_grad_sq: dict[int, float], version: int,
                     tokens: int) -> dict[str, float]:
        """McCandlish's gradient noise scale in tokens from a finished version: this worker's gradient (its share of
        the batch: the pushed gradient of loss / W, times W) against the global sum the PS shards applied."""
        if version not in local_grad_sq:
            return {}
        global_sq = self.ctx.ps.applied_grad_sq(self.gradient_tables(), version)
        if global_sq is None:
            return {}
        noise.observe(self.world ** 2 * local_grad_sq.pop(version), global_sq, tokens, tokens * self.world)
        return noise.metrics()

    @torch.no_grad()
    def _evaluate(self, model: TransformerLM, paged: PagedModel, data: TokenData) -> dict[str, float]:
        """Mean held-out loss over this worker's share of the evaluation batches."""
        spec, ctx = self.spec, self.ctx
        losses = []
        with self.inference(paged):
            for batch in range(ctx.rank, spec.eval_batches, self.world):
                x, y = data.batch("val", batch, 0, 1, spec.batch_size, spec.seq_len, spec.seed)
                losses.append(model(torch.from_numpy(x), torch.from_numpy(y)).item())
        if not losses:
            return {}
        val = float(np.mean(losses))
        return {"val_loss": val, "val_ppl": math.exp(min(val, 50.0))}

    def _samples(self, model: TransformerLM, paged: PagedModel) -> list[str]:
        spec = self.spec.generate
        tokenizer = load_tokenizer(self.corpus_dir)
        generator = torch.Generator().manual_seed(self.spec.seed)
        samples = []
        with self.inference(paged):
            for prompt in spec.prompts:
                ids = torch.tensor([tokenizer.encode(prompt).ids], dtype=torch.int64)
                out = self.generate(model, ids, generator, tokenizer.token_to_id("<|endoftext|>"))
                samples.append(tokenizer.decode(out[0].tolist()))
        (self.ctx.run_dir / "samples.txt").write_text("\n\n-----\n\n".join(samples) + "\n")
        return samples

    def _summary(self, config: Any, paged: PagedModel, history: list[dict[str, float]],
                 evaluation: dict[str, float]) -> dict[str, Any]:
        report = paged.report()
        steady = [h["tokens_per_s"] for h in history[1:]] or [h["tokens_per_s"] for h in history]
        stats = self.ctx.ps.stats()
        result: dict[str, Any] = {
            "train_loss": float(np.mean([h["train_loss"] for h in history[-10:]])) if history else float("nan"),
            "tokens_per_s": float(np.mean(steady)) if steady else 0.0,
            "parameters": config.parameter_count(),
            "model_state_bytes": paged.layout.n_pages * paged.rows.rows_per_page * paged.rows.row_bytes(),
            "worker_page_budget_bytes": paged.budget_bytes,
            "ps_ram_budget_bytes": sum(s.ram_budget for s in stats),
            "pulled_mb": report.pulled_bytes / 2**20, "pushed_mb": report.pushed_bytes / 2**20,
            "stall_s": report.stall_s, "prefetch_hits": report.prefetch_hits, "demand_fetches": report.demand_fetches,
            "max_resident_bytes": report.max_resident_bytes, "activation_peak_bytes": report.activation_peak_bytes,
            "worker_peak_rss_bytes": peak_rss_bytes(), "ps_peak_rss_bytes": [s.peak_rss_bytes for s in stats],
            "activations_planned": paged.activations.stats.planned,
            "activations_unplanned": paged.activations.stats.unplanned,
        }
        result.update(evaluation)
        result.update(self.summary_extra())
        return result
