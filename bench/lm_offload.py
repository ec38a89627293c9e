"""Training an LM whose states do not fit in memory: Seraphim's paged PS states against plain PyTorch in RAM, a
memory-mapped file under the same memory limit, and DeepSpeed ZeRO-3 with NVMe offload on the CPU accelerator.

Every contender trains the same model (the Llama-architecture LM of ``lm.transformer``, same initialization by
parameter name) on the same batches (the standard library's sources, tokenized once) with AdamW and the same
hyperparameters, one process each (Seraphim: a worker process and two PS processes), each torch process with
--threads intra-op threads.

- **Same math**: 50 steps of Seraphim (overlap on, no delayed update) against plain PyTorch on the big model with
  small batches; ``loss_rel_diff_vs_torch`` is the largest relative difference of the loss over the steps.
- **Speed** at a batch where compute per step is at least the bytes a step moves at the measured wire speed (both
  printed): tokens/s of each contender over --steps steps after --warmup steps. ``ratio_vs_torch_in_ram`` is ours
  over PyTorch holding everything in RAM; ``overlap_gain`` is our step time with prefetch and early pushes off over
  with them on, printed beside the serial parts it is made of (PyTorch's compute time per step, and the bytes moved
  per step over the wire speed).
- **Peers under the same memory limit** (``memory_cage.py``): each contender runs in a memory cgroup whose limit is
  its own runtime (anonymous memory through the warm-up steps, and the library pages it had cached before touching
  the model) plus the bytes Seraphim may keep of the model states (the PS RAM budgets and the worker's page budget;
  Seraphim's are in its anonymous memory already), plus a margin (MARGIN and MARGIN_SHARE of the runtime);
  ``*_memory_limit_hits`` say how often each group reached its limit (0: the limit did not bind), and
  ``*_major_faults_per_step`` how often a measured step read memory-mapped bytes back from the disk (the state file,
  LMDB; near 0: the states stayed in the page cache, so the limit did not bind on them). (a) ``mmap``: weights,
  gradients and Adam moments in memory-mapped files (one per role) on the same disk, the kernel deciding what stays
  in memory; (b) DeepSpeed ZeRO-3 with parameters and optimizer states offloaded to NVMe (a directory on the same
  disk) through its async-I/O op, on the CPU accelerator. ``ratio_vs_mmap`` and ``ratio_vs_deepspeed_nvme`` are our
  tokens/s over theirs.
- **CPU per step**: ``*_cpu_s_per_step`` is the CPU time each contender used per measured step, its own process and,
  for ours, the PS shards (``ours_ps_cpu_s_per_step``, counted until the worker exits). On a host whose cores the
  compute threads already fill, every CPU-second the PS spends is taken from the compute.

    python bench/lm_offload.py [--quick] [--steps 5] [--threads 2] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MARGIN = 192 << 20  # every cage's limit gets this much on top, plus MARGIN_SHARE of the runtime it measured, so
MARGIN_SHARE = 0.05  # no contender dies of growth after the warm-up (64 MiB flat: lm-medium's worker was
                     # OOM-killed at batch 8; 192 MiB flat: at batch 32, whose steps allocate 4.7 GB)

BIG = dict(preset="lm-medium", vocab=8192, ps_ram_mb=40, ps_page_kb=1024, page_kb=1024, seq_len=256, batch=32)
QUICK = dict(preset="lm-small", vocab=4096, ps_ram_mb=8, ps_page_kb=256, page_kb=256, seq_len=128, batch=8)


# ------------------------------------------------------------------------------------------------ the contenders
def _wait(signal_name: str) -> None:
    """Tell the parent we reached a point, then wait for it to say go (it may change our memory limit meanwhile)."""
    print(signal_name, flush=True)
    if sys.stdin.readline().strip() != "GO":
        sys.exit(0)


def contender(role: str, spec: dict[str, Any]) -> None:
    """One contender's process: set up, warm up, train the measured steps, write what it saw."""
    import torch

    from seraphim.algorithms.transformer.data import TokenData
    from seraphim.algorithms.transformer.model import PRESETS, TransformerConfig
    from seraphim.proto.resources import peak_rss_bytes

    torch.set_num_threads(spec["threads"])
    config = TransformerConfig(**{**PRESETS[spec["preset"]], "vocab_size": spec["vocab"]})
    data = TokenData.open(Path(spec["data_dir"]))
    lr, betas, wd = spec["lr"], (0.9, 0.95), 0.1
    _wait("IMPORTED")
    trainer = {"torch": _TorchInRam, "ours": _Paged, "mmap": _MemoryMapped, "deepspeed": _DeepSpeedNvme}[role](
        config, spec, lr, betas, wd)
    _wait("READY")
    losses, times, cpu_start = [], [], time.process_time()
    for step in range(spec["warmup"] + spec["steps"]):
        if step == spec["warmup"]:
            _wait("WARM")
            cpu_start = time.process_time()
        x, y = data.batch("train", step, 0, 1, spec["batch"], spec["seq_len"], seed=0)
        started = time.perf_counter()
        losses.append(trainer.step(step, torch.from_numpy(x), torch.from_numpy(y)))
        times.append(time.perf_counter() - started)
    result = {"losses": losses, "step_s": times[spec["warmup"]:], "cpu_s": time.process_time() - cpu_start,
              "peak_rss_bytes": peak_rss_bytes(), **trainer.extra()}
    Path(spec["out"]).write_text(json.dumps(result))
    trainer.close()


class _TorchInRam:
    def __init__(self, config, spec, lr, betas, wd) -> None:
        import torch

        from seraphim.algorithms.transformer.model import build_model

        self.model = build_model(config, seed=0)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, betas=betas, weight_decay=wd)

    def step(self, step, x, y) -> float:
        self.opt.zero_grad(set_to_none=True)
        loss = self.model(x, y)
        loss.backward()
        self.opt.step()
        return loss.item()

    def extra(self) -> dict:
        return {}

    def close(self) -> None:
        return None


class _Paged:
    def __init__(self, config, spec, lr, betas, wd) -> None:
        from seraphim.algorithms.transformer.model import build_model
        from seraphim.worker.client import PSClient
        from seraphim.worker.paged import PagedModel, PagingConfig
        from seraphim.worker.specs import AdamW

        self.ps = PSClient(spec["ps"])
        self.model = build_model(config, seed=0, device="meta")
        paging = PagingConfig(page_bytes=spec["page_kb"] << 10, ps_page_bytes=spec["ps_page_kb"] << 10,
                              overlap=spec["overlap"], max_in_flight=4)
        self.paged = PagedModel(self.ps, self.model, name="lm", init=self.model.init_tensor, config=paging,
                                optimizer=AdamW(lr=lr, beta1=betas[0], beta2=betas[1], weight_decay=wd))
        self.last = spec["warmup"] + spec["steps"] - 1

    def step(self, step, x, y) -> float:
        with self.paged.step(step, last_step=self.last):
            loss = self.model(x, y)
            loss.backward()
        self.ps.clock()
        return loss.item()

    def extra(self) -> dict:
        r = self.paged.report()
        return {"pulled_bytes": r.pulled_bytes, "pushed_bytes": r.pushed_bytes, "stall_s": r.stall_s,
                "pages_in_flight": r.pages_in_flight, "max_resident_bytes": r.max_resident_bytes,
                "worker_page_budget_bytes": self.paged.budget_bytes, "prefetch_hits": r.prefetch_hits,
                "demand_fetches": r.demand_fetches,
                "model_state_bytes": self.paged.layout.n_pages * self.paged.rows.rows_per_page
                * self.paged.rows.row_bytes()}

    def close(self) -> None:
        self.paged.close()
        self.ps.close()


class _MemoryMapped:
    """Weights, gradients and AdamW moments as views of shared memory-mapped files: the kernel pages them."""

    def __init__(self, config, spec, lr, betas, wd) -> None:
        import torch
        from torch import nn

        from seraphim.algorithms.transformer.model import build_model

        self.model = build_model(config, seed=0, device="meta")
        params = list(self.model.named_parameters())
        numel = sum(p.numel() for _, p in params)
        # one file per role: views of one storage share autograd's version counter, so gradients accumulating
        # into the weights' storage would look like in-place changes of the weights backward saved
        paths = [Path(spec["scratch"]) / f"states-{role}.bin" for role in ("weight", "grad", "exp_avg", "exp_avg_sq")]
        stores = []
        for path in paths:
            path.unlink(missing_ok=True)
            stores.append(torch.from_file(str(path), shared=True, size=numel, dtype=torch.float32))
        parts = {}
        offset = 0
        for name, p in params:
            parts[name] = [store[offset:offset + p.numel()].view(p.shape) for store in stores]
            offset += p.numel()
        replaced = {}
        for name, p in params:
            weight, grad, _, _ = parts[name]
            self.model.init_tensor(name, weight)
            grad.zero_()
            replaced[id(p)] = nn.Parameter(weight)
            replaced[id(p)].grad = grad  # autograd accumulates into the file in place
        for module in self.model.modules():
            for key, p in list(module._parameters.items()):
                if p is not None and id(p) in replaced:
                    module._parameters[key] = replaced[id(p)]
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, betas=betas, weight_decay=wd)
        for name, p in self.model.named_parameters():
            _, _, exp_avg, exp_avg_sq = parts[name]
            exp_avg.zero_()
            exp_avg_sq.zero_()
            self.opt.state[p] = {"step": torch.tensor(0.0), "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
        self.file_bytes = sum(path.stat().st_size for path in paths)

    def step(self, step, x, y) -> float:
        self.opt.zero_grad(set_to_none=False)
        loss = self.model(x, y)
        loss.backward()
        self.opt.step()
        return loss.item()

    def extra(self) -> dict:
        return {"file_bytes": self.file_bytes}

    def close(self) -> None:
        return None


class _DeepSpeedNvme:
    """ZeRO-3 with parameters and optimizer states on NVMe (a directory of the same disk), CPU accelerator."""

    def __init__(self, config, spec, lr, betas, wd) -> None:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(spec["port"]), RANK="0", WORLD_SIZE="1",
                          LOCAL_RANK="0")
        import warnings

        import deepspeed

        from seraphim.algorithms.transformer.model import TransformerLM

        # ZeRO-3 calls torch.distributed's deprecated collectives on every step: one warning each, hundreds of lines
        warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
        deepspeed.init_distributed(dist_backend="gloo")
        nvme = Path(spec["scratch"]) / "nvme"
        nvme.mkdir(exist_ok=True)
        budget = spec["state_budget_bytes"] // 4  # float32 values the states may keep in RAM
        largest = max(config.vocab_size, config.ffn_dim) * config.dim  # a swap buffer holds one whole parameter
        buffer = max(int(budget // 8), largest)
        self.cfg = {
            "train_micro_batch_size_per_gpu": spec["batch"], "gradient_accumulation_steps": 1,
            "optimizer": {"type": "AdamW", "params": {"lr": lr, "betas": list(betas), "eps": 1e-8,
                                                        "weight_decay": wd}},
            "zero_optimization": {
                "stage": 3, "sub_group_size": max(int(budget // 4), largest),
                "stage3_max_live_parameters": max(int(budget // 2), 2 * largest),
                "stage3_prefetch_bucket_size": buffer, "stage3_param_persistence_threshold": 0,
                "stage3_max_reuse_distance": 0,  # release a parameter after its use (the default keeps every
                                                 # parameter reused within 1e9 elements: all of them, past the buffers)
                "offload_param": {"device": "nvme", "nvme_path": str(nvme), "pin_memory": False,
                                  "buffer_count": 5, "buffer_size": buffer, "max_in_cpu": 0},
                "offload_optimizer": {"device": "nvme", "nvme_path": str(nvme), "pin_memory": False}},
            "aio": {"block_size": 1 << 20, "queue_depth": 8, "single_submit": False, "overlap_events": True,
                    "thread_count": 1},
        }
        with deepspeed.zero.Init(remote_device="nvme", config_dict_or_path=self.cfg):
            model = TransformerLM(config, seed=0)
        self.engine, _, _, _ = deepspeed.initialize(model=model, config=self.cfg,
                                                    model_parameters=model.parameters())

    def step(self, step, x, y) -> float:
        loss = self.engine(x, y)
        self.engine.backward(loss)
        self.engine.step()
        return loss.item()

    def extra(self) -> dict:
        return {}

    def close(self) -> None:
        return None


# ------------------------------------------------------------------------------------------------ the parent
class Run:
    """A contender's process, stepped through its handshake; optionally in a memory cage."""

    def __init__(self, role: str, spec: dict[str, Any], scratch: Path, helper_pids: list[int] | None = None,
                 state_budget: int = 0, cage: bool = False) -> None:
        self.role, self.spec = role, dict(spec, out=str(scratch / f"{role}.json"), scratch=str(scratch))
        spec_file = scratch / f"{role}.spec.json"
        spec_file.write_text(json.dumps(self.spec))
        env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1", MALLOC_ARENA_MAX="2")  # bounded heap growth
        if role == "ours":  # as `seraphim worker start` runs a worker
            from seraphim.proto.resources import WORKER_OPENMP_ENV

            env = {**WORKER_OPENMP_ENV, **env}
        self.proc = subprocess.Popen([sys.executable, __file__, "--role", role, "--spec", str(spec_file)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.helper_pids = helper_pids or []  # processes serving this one (PS shards): caged and counted with it
        self.cage = None
        self.limit_bytes = 0
        if cage:
            from memory_cage import MemoryCage

            self.cage = MemoryCage(f"seraphim-bench-{role}-{os.getpid()}")
            for pid in [self.proc.pid, *self.helper_pids]:
                self.cage.add(pid)
        self.state_budget = state_budget

    def _until(self, signal_name: str) -> None:
        for line in self.proc.stdout:
            if line.strip() == signal_name:
                return
        raise RuntimeError(f"{self.role} ended before {signal_name} (exit {self.proc.wait()})")

    def _go(self) -> None:
        self.proc.stdin.write("GO\n")
        self.proc.stdin.flush()

    def run(self) -> dict[str, Any]:
        from common import process_cpu_s

        self._until("IMPORTED")
        libraries = self.cage.cache_bytes if self.cage else 0
        self._go()
        self._until("READY")
        if self.cage:
            self.cage.start_sampling()
        self._go()
        self._until("WARM")
        if self.cage:
            runtime = self.cage.stop_sampling()
            self.limit_bytes = libraries + runtime + self.state_budget + MARGIN + int(MARGIN_SHARE * runtime)
            self.cage.limit(self.limit_bytes)
            faults_before = self.cage.major_faults
        helpers_cpu = sum(process_cpu_s(pid) for pid in self.helper_pids)
        self._go()
        code = self.proc.wait()
        if code:
            raise RuntimeError(f"{self.role} failed with exit code {code}")
        result = json.loads(Path(self.spec["out"]).read_text())
        result["helpers_cpu_s"] = sum(process_cpu_s(pid) for pid in self.helper_pids) - helpers_cpu
        if self.cage:
            result["cage_limit_bytes"] = self.limit_bytes
            result["cage_peak_bytes"] = self.cage.peak_usage_bytes
            result["cage_limit_hits"] = self.cage.limit_hits
            result["cage_major_faults"] = self.cage.major_faults - faults_before
        return result

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.cage:
            self.cage.close()


def tokens_per_s(result: dict, spec: dict) -> float:
    step_s = sorted(result["step_s"])[len(result["step_s"]) // 2]
    return spec["batch"] * spec["seq_len"] / step_s


def cage_figures(name: str, result: dict, steps: int) -> dict[str, float]:
    """A caged contender's limit, how often it hit it, and its reads from the disk per measured step."""
    if "cage_limit_bytes" not in result:
        return {}
    return {f"{name}_memory_limit_bytes": result["cage_limit_bytes"],
            f"{name}_memory_limit_hits": result["cage_limit_hits"],
            f"{name}_major_faults_per_step": result["cage_major_faults"] / steps}


def cpu_figures(name: str, result: dict, steps: int) -> dict[str, float]:
    """CPU seconds a contender used per measured step, its own process and the processes serving it (the PS shards):
    on a host with few cores, what the step's compute has to share them with."""
    figures = {f"{name}_cpu_s_per_step": (result["cpu_s"] + result["helpers_cpu_s"]) / steps}
    if result["helpers_cpu_s"]:
        figures[f"{name}_ps_cpu_s_per_step"] = result["helpers_cpu_s"] / steps
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the small model, for a check in a few minutes")
    p.add_argument("--steps", type=int, default=5, help="measured steps per contender")
    p.add_argument("--warmup", type=int, default=3, help="steps before the measured ones (>= 1: a caged contender's "
                                                          "memory limit is set from what its warm-up used)")
    p.add_argument("--same-math-steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads of every contender")
    p.add_argument("--batch", type=int, default=None, help="sequences per step of the speed runs (default: the "
                                                           "model's: 32 for lm-medium, 8 for --quick)")
    p.add_argument("--skip", default="", help="comma-separated contenders to skip: mmap, deepspeed")
    a = p.parse_args()
    if a.warmup < 1:
        p.error("--warmup must be >= 1")
    sys.path.insert(0, str(REPO / "bench"))
    import memory_cage
    from common import print_figures
    from seraphim.algorithms.transformer.data import TextSourceSpec, prepare_corpus
    from seraphim.algorithms.transformer.model import PRESETS, TransformerConfig
    from seraphim.scheduler.local_cluster import LocalCluster, PSProcessSpec
    from seraphim.worker.client import PSClient

    shape = QUICK if a.quick else BIG
    skip = set(filter(None, a.skip.split(",")))
    scratch = Path(tempfile.mkdtemp(prefix="lm-offload-"))  # /tmp: the same disk as the runs here
    config = TransformerConfig(**{**PRESETS[shape["preset"]], "vocab_size": shape["vocab"]})
    print(f"# model {shape['preset']}: {config.parameter_count() / 1e6:.1f}M parameters, vocabulary {shape['vocab']};"
          f" {a.threads} torch threads per process; host {os.cpu_count()} cores", flush=True)
    started = time.monotonic()
    prepare_corpus(TextSourceSpec(max_bytes=3_000_000, vocab_size=shape["vocab"]), scratch / "data")
    base = dict(preset=shape["preset"], vocab=shape["vocab"], threads=a.threads, data_dir=str(scratch / "data"),
                lr=1e-3, page_kb=shape["page_kb"], ps_page_kb=shape["ps_page_kb"], port=29511, overlap=True)
    cage_reason = memory_cage.available()
    figures: dict[str, float] = {}

    def ours(spec: dict, cage: bool) -> dict:
        ps_spec = PSProcessSpec(num_ps=2, ram_mb=shape["ps_ram_mb"], page_kb=shape["ps_page_kb"], staleness=-1,
                                snapshot_every=0)
        with LocalCluster(scratch / f"ps-{time.monotonic_ns()}", ps_spec) as cluster:
            pids = [proc.pid for proc in cluster.ps_procs]
            run = Run("ours", dict(spec, ps=cluster.addresses), scratch, pids, cage=cage)
            try:
                result = run.run()
            finally:
                run.close()
            with PSClient(cluster.addresses) as ps:
                stats = ps.stats()
            result["ps_ram_budget_bytes"] = sum(s.ram_budget for s in stats)
            result["ps_peak_rss_bytes"] = [s.peak_rss_bytes for s in stats]
            result["lmdb_bytes"] = sum(s.lmdb_bytes for s in stats)
            return result

    def peer(role: str, spec: dict, budget: int, cage: bool) -> dict:
        run = Run(role, spec, scratch, state_budget=budget, cage=cage)
        try:
            return run.run()
        finally:
            run.close()

    try:
        # -- same math: small batches, 50 steps ----------------------------------------------------------------
        math_spec = dict(base, batch=1, seq_len=32, warmup=0, steps=a.same_math_steps)
        exact = ours(math_spec, cage=False)
        reference = peer("torch", math_spec, 0, cage=False)
        diffs = [abs(x - y) / abs(y) for x, y in zip(exact["losses"], reference["losses"])]
        figures["loss_rel_diff_vs_torch"] = max(diffs)
        figures["loss_after_same_math_steps"] = exact["losses"][-1]

        # -- speed and peers -----------------------------------------------------------------------------------
        speed = dict(base, batch=a.batch or shape["batch"], seq_len=shape["seq_len"], warmup=a.warmup, steps=a.steps)
        torch_ram = peer("torch", speed, 0, cage=False)
        if cage_reason:
            print(f"# memory limit not applied: {cage_reason}", flush=True)
        ours_on = ours(speed, cage=cage_reason is None)
        ours_off = ours(dict(speed, overlap=False), cage=cage_reason is None)
        state_budget = ours_on["ps_ram_budget_bytes"] + ours_on["worker_page_budget_bytes"]
        figures.update({
            "model_state_bytes": ours_on["model_state_bytes"],
            "ps_ram_budget_bytes": ours_on["ps_ram_budget_bytes"],
            "worker_page_budget_bytes": ours_on["worker_page_budget_bytes"],
            "state_over_ps_ram_budget": ours_on["model_state_bytes"] / ours_on["ps_ram_budget_bytes"],
            "state_over_worker_page_budget": ours_on["model_state_bytes"] / ours_on["worker_page_budget_bytes"],
            "worker_peak_rss_bytes": ours_on["peak_rss_bytes"],
            "ps_peak_rss_bytes_max": max(ours_on["ps_peak_rss_bytes"]),
            "lmdb_bytes": ours_on["lmdb_bytes"],
        })
        figures.update(cage_figures("ours", ours_on, a.steps))
        figures.update(cpu_figures("torch_in_ram", torch_ram, a.steps) | cpu_figures("ours", ours_on, a.steps))
        wire = _wire_bytes_per_s(shape["page_kb"], shape["ps_page_kb"], scratch)
        moved = (ours_on["pulled_bytes"] + ours_on["pushed_bytes"]) / (a.warmup + a.steps)
        compute_s = sorted(torch_ram["step_s"])[len(torch_ram["step_s"]) // 2]
        figures.update({"wire_bytes_per_s": wire, "bytes_moved_per_step": moved,
                        "transfer_s_per_step": moved / wire, "compute_s_per_step": compute_s,
                        "compute_over_transfer": compute_s / (moved / wire)})
        ours_tps, off_tps = tokens_per_s(ours_on, speed), tokens_per_s(ours_off, speed)
        torch_tps = tokens_per_s(torch_ram, speed)
        figures.update({"tokens_per_s_ours": ours_tps, "tokens_per_s_ours_no_overlap": off_tps,
                        "tokens_per_s_torch_in_ram": torch_tps, "ratio_vs_torch_in_ram": ours_tps / torch_tps,
                        "serial_compute_plus_transfer_s": compute_s + moved / wire,
                        "step_s_ours": speed["batch"] * speed["seq_len"] / ours_tps,
                        "step_s_ours_no_overlap": speed["batch"] * speed["seq_len"] / off_tps,
                        "overlap_gain": ours_tps / off_tps,
                        "page_wait_s_per_step_ours": ours_on["stall_s"] / (a.warmup + a.steps),
                        "demand_fetches_per_step_ours": ours_on["demand_fetches"] / (a.warmup + a.steps)})
        if "mmap" not in skip:
            mmap = peer("mmap", speed, state_budget, cage=cage_reason is None)
            figures["tokens_per_s_mmap"] = tokens_per_s(mmap, speed)
            figures["ratio_vs_mmap"] = ours_tps / figures["tokens_per_s_mmap"]
            figures.update(cage_figures("mmap", mmap, a.steps) | cpu_figures("mmap", mmap, a.steps))
        if "deepspeed" not in skip:
            why = _deepspeed_unavailable()
            if why:
                print(f"# deepspeed not run: {why}", flush=True)
            else:
                try:
                    ds = peer("deepspeed", dict(speed, state_budget_bytes=state_budget), state_budget,
                              cage=cage_reason is None)
                    figures["tokens_per_s_deepspeed_nvme"] = tokens_per_s(ds, speed)
                    figures["ratio_vs_deepspeed_nvme"] = ours_tps / figures["tokens_per_s_deepspeed_nvme"]
                    figures.update(cage_figures("deepspeed", ds, a.steps) | cpu_figures("deepspeed", ds, a.steps))
                except RuntimeError as exc:
                    print(f"# deepspeed not run: {exc}", flush=True)
        figures["bench_s"] = time.monotonic() - started
        print_figures(figures)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _wire_bytes_per_s(page_kb: int, ps_page_kb: int, scratch: Path) -> float:
    """Bytes/s of model-page pulls from a PS shard on this host (its pages in RAM): 64 pulls, 4 in flight."""
    import numpy as np

    from seraphim.scheduler.local_cluster import LocalCluster, PSProcessSpec
    from seraphim.worker.client import PSClient
    from seraphim.worker.paged import row_shape
    from seraphim.worker.specs import AdamW, Zeros

    page_numel = page_kb * 256
    with LocalCluster(scratch / "wire", PSProcessSpec(num_ps=1, ram_mb=256, page_kb=ps_page_kb)) as c:
        with PSClient(c.addresses) as ps:
            rows = row_shape(page_numel, ps_page_kb << 10)
            table = ps.dense_table("wire", (16 * rows.rows_per_page, rows.row_dim), init=Zeros(), optimizer=AdamW(),
                                   sum_workers=1)
            keys = [np.arange(p * rows.rows_per_page, (p + 1) * rows.rows_per_page) for p in range(16)]
            for k in keys:
                table.pull(k)
            started = time.perf_counter()
            futures = [table.pull_async(keys[i % 16]) for i in range(64)]
            for f in futures:
                f.result()
            return 64 * page_numel * 4 / (time.perf_counter() - started)


def _deepspeed_unavailable() -> str | None:
    try:
        import deepspeed  # noqa: F401
    except ImportError as exc:
        return f"deepspeed is not installed ({exc}); pip install -e '.[bench]' and apt-get install libaio-dev"
    return None


if __name__ == "__main__":
    if "--role" in sys.argv:
        role = sys.argv[sys.argv.index("--role") + 1]
        spec_file = sys.argv[sys.argv.index("--spec") + 1]
        contender(role, json.loads(Path(spec_file).read_text()))
    else:
        main()
