"""The mixture-of-experts LM as a Seraphim job (``lm.moe``): Hunyuan-Large's layer (shared expert plus routed
experts with recycle routing, GQA with QK-norm and cross-layer attention) trained data-parallel like
``lm.transformer``, on the same corpus, loop, evaluation and sampling (``LMRun``).

The dense parts (attention, norms, the shared experts, routers, embeddings) are pages of the paged step runtime.
The routed experts are sets of a ``ParameterBank`` on the PS keyed by (layer, expert): with placement ``ps`` a
worker pulls only the experts its tokens chose and pushes only their gradients; with ``all_to_all`` (expert
parallelism over gloo) tokens travel to the worker that owns their expert. The routed experts' learning rate is
the advisor's ``expert_lr``: a routed expert sees B*k/E of the batch's tokens a step, so it gets that batch's rate
(Surge's law; Hunyuan-Large's expert-specific learning rate), or a fixed ratio.

``model.dense: true`` trains the dense model with the same active parameters (the shared expert widened by k
routed ones), the baseline the MoE is compared with at equal tokens.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from dataclasses import fields
from typing import Any, Iterator, Literal

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from seraphim.algorithms.lr_scaling import expert_lr
from seraphim.algorithms.moe.model import (PRESETS, MoECache, MoEConfig, MoELM, expert_shapes, expert_tensor_name,
                                           init_expert)
from seraphim.algorithms.moe.placement import AllToAllExperts, BankExperts
from seraphim.algorithms.registry import Job, JobContext, register
from seraphim.algorithms.transformer.export import MOE_CONFIG, write_model
from seraphim.algorithms.transformer.job import LMRun, LMTrainingSpec
from seraphim.algorithms.transformer.model import sample
from seraphim.worker.paged import PagedModel
from seraphim.worker.paged.bank import ParameterBank
from seraphim.worker.specs import AdamW

EXPERT_TABLE = "moe.experts"
_OVERRIDABLE = [f.name for f in fields(MoEConfig) if f.name != "vocab_size"]


class MoEModelSpec(BaseModel):
    """The architecture: a preset with any field of MoEConfig overridden (the vocabulary comes from data)."""

    model_config = ConfigDict(extra="forbid")
    preset: str = Field("moe-small", description=f"one of {sorted(PRESETS)}")
    dense: bool = Field(False, description="train the dense model with the same active parameters instead")
    dim: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    n_kv_heads: int | None = None
    max_seq_len: int | None = None
    rope_theta: float | None = None
    norm_eps: float | None = None
    init_std: float | None = None
    qk_norm: bool | None = None
    cla_share: int | None = None
    n_experts: int | None = None
    top_k: int | None = None
    expert_ffn_dim: int | None = None
    shared_ffn_dim: int | None = None
    capacity_factor: float | Literal["none"] | None = Field(None, description="'none': no expert drops a token")
    recycle: bool | None = None
    routed_scale: float | None = None
    aux_loss_coef: float | None = None
    z_loss_coef: float | None = None

    @model_validator(mode="after")
    def _valid(self) -> "MoEModelSpec":
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; known: {sorted(PRESETS)}")
        self.config(PRESETS[self.preset]["vocab_size"])  # MoEConfig's own checks, one line each
        return self

    def config(self, vocab_size: int) -> MoEConfig:
        values = dict(PRESETS[self.preset], vocab_size=vocab_size)
        values.update({k: getattr(self, k) for k in _OVERRIDABLE if getattr(self, k) is not None})
        if values.get("capacity_factor") == "none":
            values["capacity_factor"] = None
        config = MoEConfig(**values)
        return config.dense_equivalent() if self.dense else config


class ExpertLRSpec(BaseModel):
    """The routed experts' learning rate relative to the rest of the model (a per-row scale of their PS table)."""

    model_config = ConfigDict(extra="forbid")
    rule: Literal["advisor", "fixed"] = "advisor"
    b_noise_tokens: float | None = Field(None, gt=0, description="advisor: the gradient noise scale in tokens "
                                                                  "(seraphim lr-advise, or an lr_scaling.sweep)")
    ratio: float | None = Field(None, gt=0, description="fixed: the routed experts' rate over the rest's")

    @model_validator(mode="after")
    def _complete(self) -> "ExpertLRSpec":
        if self.rule == "advisor" and self.b_noise_tokens is None:
            raise ValueError("experts.lr.rule 'advisor' needs b_noise_tokens (the gradient noise scale in tokens, "
                             "from seraphim lr-advise RUN_DIR or a sweep); or use rule 'fixed' with a ratio")
        if self.rule == "fixed" and self.ratio is None:
            raise ValueError("experts.lr.rule 'fixed' needs ratio (routed experts' learning rate over the rest's)")
        return self

    def ratio_for(self, batch_tokens: int, top_k: int, n_experts: int, lr: float) -> float:
        """Routed over shared learning rate at a global batch of batch_tokens (Adam's law, Surge eq. 2)."""
        if self.rule == "fixed":
            return float(self.ratio)
        return expert_lr(batch_tokens, top_k, n_experts, ref=(batch_tokens, lr), b_noise=self.b_noise_tokens) / lr


class ExpertsSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    placement: Literal["ps", "all_to_all"] = Field(
        "ps", description="ps: pull the chosen experts from the PS; all_to_all: expert parallelism over gloo")
    lr: ExpertLRSpec = Field(default_factory=lambda: ExpertLRSpec(rule="fixed", ratio=1.0))


class MoESpec(LMTrainingSpec):
    model: MoEModelSpec = Field(default_factory=MoEModelSpec)
    experts: ExpertsSpec = Field(default_factory=ExpertsSpec)


@register("lm.moe")
class MoEJob(Job):
    Spec = MoESpec

    def total_steps(self) -> int:
        return self.spec.steps

    def check_cluster(self, cluster: Any, storage: Any) -> list[str]:
        spec: MoESpec = self.spec
        config = spec.model.config(spec.data.vocab_size)
        if spec.experts.placement == "all_to_all" and config.n_experts % cluster.workers:
            return [f"train.experts.placement: all_to_all splits the {config.n_experts} routed experts of a layer "
                    f"over the {cluster.workers} workers, which needs n_experts to be a multiple of cluster.workers; "
                    f"change one, or use placement 'ps'"]
        return []

    def run(self, ctx: JobContext) -> dict[str, Any]:
        return MoERun(self.spec, ctx).train()


class MoERun(LMRun):
    """The LM run with routed experts in a ParameterBank (see the module docstring)."""

    bank: ParameterBank | None = None

    def model(self) -> tuple[MoEConfig, nn.Module]:
        spec, ctx = self.spec, self.ctx
        config = spec.model.config(spec.data.vocab_size)
        if not config.n_experts:
            with torch.device("meta"):
                return config, MoELM(config, seed=spec.seed)
        o = spec.optimizer
        batch_tokens = spec.batch_size * spec.seq_len * self.world
        self.expert_lr_ratio = spec.experts.lr.ratio_for(batch_tokens, config.top_k, config.n_experts, o.lr)
        e = config.n_experts
        self.bank = ParameterBank(
            ctx.ps, EXPERT_TABLE, expert_shapes(config), config.n_layers * e,
            optimizer=AdamW(lr=o.lr, beta1=o.beta1, beta2=o.beta2, eps=o.eps, weight_decay=o.weight_decay),
            ps_page_bytes=int(ctx.ps.stats()[0].page_bytes),
            init=lambda i, which, t: init_expert(spec.seed, config.init_std, i // e, i % e, which, t),
            rank=ctx.rank, world_size=self.world, seed=spec.seed, lr_scale=self.expert_lr_ratio)
        if spec.experts.placement == "all_to_all":
            self._join_expert_group()
            placement = lambda layer: AllToAllExperts(self.bank, layer, e, ctx.rank, self.world)  # noqa: E731
        else:
            placement = lambda layer: BankExperts(self.bank, layer, e)  # noqa: E731
        with torch.device("meta"):
            model = MoELM(config, placement, seed=spec.seed)
        model.set_routing_seed(spec.seed * 100 + ctx.rank)
        ctx.log.info("MoE: %d layers x (1 shared + %d routed experts, top-%d, capacity factor %s, recycle %s), "
                     "%.2fM parameters of which %.2fM active; experts on the PS (%s, %d sets of %.2f MB); routed "
                     "experts' lr x%.3f (%s); KV cache %d B/token (bf16)", config.n_layers, e, config.top_k,
                     config.capacity_factor, config.recycle, config.parameter_count() / 1e6,
                     config.active_parameter_count() / 1e6, spec.experts.placement, self.bank.count,
                     self.bank.set_bytes / 1e6, self.expert_lr_ratio, spec.experts.lr.rule,
                     config.kv_bytes_per_token())
        return config, model

    def _join_expert_group(self) -> None:
        """The workers' gloo group for the all-to-all, met through a file store in the shared run directory."""
        store_dir = self.ctx.run_dir / "expert_group"
        store_dir.mkdir(parents=True, exist_ok=True)
        store = dist.FileStore(str(store_dir / f"store-{self.ctx.start_step}"), self.world)
        dist.init_process_group("gloo", store=store, rank=self.ctx.rank, world_size=self.world)

    def memo(self, model: nn.Module, paged: PagedModel, data: Any) -> None:
        return None

    @contextmanager
    def training_step(self, paged: PagedModel, step: int, lr_scale: float) -> Iterator[None]:
        with super().training_step(paged, step, lr_scale):
            if self.bank is None:
                yield
            else:
                with self.bank.step(step, lr_scale):
                    yield

    @contextmanager
    def inference(self, paged: PagedModel) -> Iterator[None]:
        paged.model.eval()
        try:
            with super().inference(paged):
                if self.bank is None:
                    yield
                else:
                    with self.bank.inference():
                        yield
        finally:
            paged.model.train()

    def step_metrics(self, model: nn.Module) -> dict[str, float]:
        metrics = {f"train_{k}": v for k, v in model.last_losses.items()}
        counts = model.routing_counts()
        if counts["assignments"]:
            metrics.update(drop_rate=counts["dropped"] / counts["assignments"],
                           recycle_rate=counts["recycled"] / counts["assignments"])
        for layer, (_, dropped, recycled) in model.routing_counts_per_layer().items():
            metrics.update({f"dropped_l{layer}": dropped, f"recycled_l{layer}": recycled})
        if self.bank is not None:
            metrics.update(expert_pulled_mb=self.bank.stats.pulled_bytes / 2**20,
                           expert_pushed_mb=self.bank.stats.pushed_bytes / 2**20)
        return metrics

    def generate(self, model: nn.Module, ids: torch.Tensor, generator: torch.Generator,
                 stop_token: int | None) -> torch.Tensor:
        g = self.spec.generate
        return sample(model, MoECache(), model.config.max_seq_len, ids, g.max_new_tokens, g.temperature, g.top_k,
                      generator, stop_token)

    def write_model(self, paged: PagedModel, config: MoEConfig) -> None:
        tensors = paged.named_tensors()
        if self.bank is not None:
            e = config.n_experts
            experts = ((expert_tensor_name(i // e, i % e, which), t)
                       for i, weights in self.bank.read_all() for which, t in weights.items())
            tensors = itertools.chain(tensors, experts)
        write_model(tensors, config, self.corpus_dir, self.ctx.run_dir / "model", config_file=MOE_CONFIG)

    def summary_extra(self) -> dict[str, Any]:
        config = self.spec.model.config(self.spec.data.vocab_size)
        extra: dict[str, Any] = {"active_parameters": config.active_parameter_count(),
                                 "kv_bytes_per_token": config.kv_bytes_per_token()}
        if self.bank is not None:
            s = self.bank.stats
            extra.update(placement=self.spec.experts.placement, expert_lr_ratio=self.expert_lr_ratio,
                         expert_pulled_mb=s.pulled_bytes / 2**20, expert_pushed_mb=s.pushed_bytes / 2**20,
                         expert_sets_fetched=s.sets_fetched, expert_absent_keys=s.absent_keys,
                         expert_set_bytes=self.bank.set_bytes)
        return extra

    def gradient_tables(self) -> list[str]:
        # the dense twin (model.dense) has no bank, so no expert table to ask for its gradient norms
        return [*super().gradient_tables(), *([EXPERT_TABLE] if self.bank is not None else [])]

    def step_grad_sq(self, paged: PagedModel) -> float:
        return super().step_grad_sq(paged) + (self.bank.step_grad_sq if self.bank is not None else 0.0)

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
