"""The ``vfl.blindfl`` job: each worker rank is one party of a BlindFL session (rank i runs ``parties[i]``).

The spec names the parties (role, data file, key file, endpoint, optional mutual-TLS files), the model, the key
size, the schedule and whether to run PSI. ``session.run_party`` does the rest; this module validates the spec,
resolves paths, makes the data when the spec says ``generate``, and builds the party's trainer.

Paths that are not absolute are relative to the job's run directory (the worker's working directory under
``seraphim run``). A spec should set ``cluster: {ps: 1, workers: <number of parties>, ps_per_worker: true}`` so
that every party has PS shards of its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from seraphim.algorithms.registry import Job, JobContext, register
from seraphim.algorithms.vfl import blindfl, data, models
from seraphim.algorithms.vfl.session import PartySetup, Schedule, TrainPlan, run_party
from seraphim.proto.errors import FatalJobError
from seraphim.proto.rpc import TlsFiles, resolve_token
from seraphim.worker.exchange import PARTY_NAME_PATTERN


class PartySpec(BaseModel):
    """One party: who it is, its data, its key, where it serves."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(pattern=PARTY_NAME_PATTERN, description="a DNS label; the name in the party's TLS certificate")
    role: Literal["label", "feature"]
    data: str | None = Field(None, description="the party's data file; omitted when the job has `generate`")
    key_file: str | None = Field(None, description="its Paillier private key (created on first use if missing; "
                                                   "never sent); default parties/<name>/paillier.key")
    endpoint: str = Field("127.0.0.1:0", pattern=r"^[^:\s]+:\d{1,5}$",
                          description="host:port it serves on; port 0 picks a free one and publishes it in "
                                      "parties/<name>.addr (one host only)")
    tls_cert: str | None = Field(None, description="mutual TLS: its certificate (CN and DNS SAN = name)")
    tls_key: str | None = None
    tls_ca: str | None = Field(None, description="the CA bundle that issued the parties' certificates")

    @model_validator(mode="after")
    def _tls_complete(self) -> "PartySpec":
        given = [f for f in ("tls_cert", "tls_key", "tls_ca") if getattr(self, f)]
        if given and len(given) != 3:
            raise ValueError(f"party {self.name!r}: mutual TLS needs tls_cert, tls_key and tls_ca; got only {given}")
        return self


class VFLSpec(BaseModel):
    """A BlindFL training session between one label party and one or more feature parties."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    parties: list[PartySpec] = Field(min_length=2, description="worker rank i runs parties[i]")
    model: Literal["lr", "mlp", "wide_deep"] = "lr"
    key_bits: int = Field(2048, ge=512, le=8192, description="Paillier modulus bits (1024 for tests only)")
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(64, ge=1, le=1 << 16)
    lr: float = Field(0.1, gt=0.0, description="SGD learning rate of the source layers (and the top model)")
    top_optimizer: Literal["sgd", "adam"] = "sgd"
    top_lr: float | None = Field(None, gt=0.0, description="the top model's learning rate; default lr")
    hidden: tuple[int, ...] = Field((16,), description="hidden sizes: the source layer's output, then the top "
                                                       "model's layers (mlp, wide_deep)")
    embedding_dim: int = Field(4, ge=1, le=256, description="embedding size of categorical fields (wide_deep)")
    psi: bool = Field(True, description="align samples by private set intersection of ids; off: rows already "
                                        "aligned")
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="held-out share of the aligned samples")
    checkpoint_every: int = Field(1, ge=1, description="steps between checkpoints of each party's state")
    share_store: Literal["memory", "ps"] = Field(
        "memory", description="where a party keeps its encrypted weight shares: in memory, or in its own PS "
                              "shards (cluster.ps_per_worker) for models larger than memory")
    generate: Literal["breast_cancer", "click"] | None = Field(
        None, description="make each party's data file on first start (default parties/<name>/data.npz)")
    generate_options: dict[str, Any] = Field(default_factory=dict,
                                             description="options of data.breast_cancer_split / click_split")
    seed: int = Field(0, ge=0, description="top-model initialization and generated data")
    session_id: str | None = Field(None, description="default: derived from the run directory and this spec")
    token_file: str | None = Field(None, description="secret the parties share; default: the cluster token")
    handshake_timeout_s: float = Field(120.0, gt=0, description="how long a party waits for its peers to start")
    recv_timeout_s: float = Field(600.0, gt=0, description="how long a party waits for one protocol message")
    pool_processes: int = Field(0, ge=0, le=64, description="background processes precomputing encryption "
                                                            "randomness (0: on demand)")
    he_processes: int = Field(0, ge=0, le=256, description="processes for ciphertext products (0: in-process)")

    @model_validator(mode="after")
    def _parties_valid(self) -> "VFLSpec":
        names = [p.name for p in self.parties]
        if len(set(names)) != len(names):
            raise ValueError(f"party names must be distinct, got {names}")
        labels = [p.name for p in self.parties if p.role == "label"]
        if len(labels) != 1:
            raise ValueError(f"exactly one party must have role 'label', got {labels or 'none'}")
        missing = [p.name for p in self.parties if p.data is None]
        if missing and self.generate is None:
            raise ValueError(f"parties {missing} have no data file: give `data` or set `generate`")
        if len({p.tls_ca is not None for p in self.parties}) > 1:
            raise ValueError("either every party uses mutual TLS or none does")
        if self.model != "lr" and (not self.hidden or min(self.hidden) < 1):
            raise ValueError(f"model {self.model!r} needs hidden sizes >= 1, got {list(self.hidden)}")
        return self

    @property
    def label_party(self) -> str:
        return next(p.name for p in self.parties if p.role == "label")


def _resolve(path: str, run_dir: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else run_dir / p


class PartyLayoutError(FatalJobError, ValueError):
    """The cluster does not fit the parties (a rank without a party, no token to authenticate with): every
    restart would fail the same way."""


def _session_id(spec: VFLSpec, run_dir: Path) -> str:
    digest = hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:12]
    return spec.session_id or f"{run_dir.resolve().name}-{digest}"


def party_setup(spec: VFLSpec, rank: int, run_dir: Path, token: str | None) -> PartySetup:
    """Where party ``rank`` runs: endpoints, session, keys, TLS; PartyLayoutError naming what is missing."""
    if not 0 <= rank < len(spec.parties):
        raise PartyLayoutError(f"worker rank {rank} has no party: the spec names {len(spec.parties)} parties; set "
                         f"cluster.workers to {len(spec.parties)}")
    me = spec.parties[rank]
    if spec.token_file:
        token = resolve_token(token_file=str(_resolve(spec.token_file, run_dir)))
    if not token:
        raise PartyLayoutError("the parties authenticate with the cluster token: run under a scheduler, or pass --token / "
                         "SERAPHIM_TOKEN, or set train.token_file")
    tls = None
    if me.tls_ca:
        tls = TlsFiles(ca=str(_resolve(me.tls_ca, run_dir)), cert=str(_resolve(me.tls_cert, run_dir)),
                       key=str(_resolve(me.tls_key, run_dir)))
    key_file = _resolve(me.key_file, run_dir) if me.key_file else run_dir / "parties" / me.name / "paillier.key"
    return PartySetup(name=me.name, label_party=spec.label_party, endpoints={p.name: p.endpoint for p in spec.parties},
                      session_id=_session_id(spec, run_dir), run_dir=run_dir, token=token, key_file=key_file,
                      key_bits=spec.key_bits, tls=tls, handshake_timeout_s=spec.handshake_timeout_s,
                      recv_timeout_s=spec.recv_timeout_s)


def party_data(spec: VFLSpec, rank: int, run_dir: Path, log: logging.Logger) -> data.PartyData:
    """Party ``rank``'s rows: its data file, first generated (only this party's part is written) when the spec
    says ``generate`` and the file does not exist yet."""
    me = spec.parties[rank]
    path = _resolve(me.data, run_dir) if me.data else run_dir / "parties" / me.name / "data.npz"
    if spec.generate and not path.exists():
        makers = {"breast_cancer": data.breast_cancer_split, "click": data.click_split}
        features = [p.name for p in spec.parties if p.role == "feature"]
        parts = makers[spec.generate](spec.label_party, features, seed=spec.seed, **spec.generate_options)
        data.write_party(path, parts[me.name])
        log.info("generated %s data for party %s: %d rows in %s", spec.generate, me.name, len(parts[me.name]), path)
    return data.read_party(path)


@register("vfl.blindfl")
class BlindFLJob(Job):
    """Vertical federated learning: one party per worker rank, Paillier-encrypted source layers, a top model at the
    label party."""

    Spec = VFLSpec

    def total_steps(self) -> int:
        """From the label party's row count (known for generated data; read from its file when reachable here):
        PSI may align fewer samples, so this is an upper bound for the progress bar."""
        spec: VFLSpec = self.spec
        try:
            rows = data.expected_rows(spec)
        except (OSError, ValueError, KeyError):
            return spec.epochs
        return Schedule(rows, spec.batch_size, spec.epochs, spec.val_fraction, seed=0).total_steps

    def run(self, ctx: JobContext) -> dict[str, Any]:
        spec: VFLSpec = self.spec
        if ctx.world_size != len(spec.parties):
            raise PartyLayoutError(f"the job runs {ctx.world_size} workers but names {len(spec.parties)} parties: set "
                             f"cluster.workers to {len(spec.parties)}")
        token = ctx.scheduler.token if ctx.scheduler is not None else resolve_token()
        setup = party_setup(spec, ctx.rank, ctx.run_dir, token)
        rows = party_data(spec, ctx.rank, ctx.run_dir, ctx.log)
        config = models.ModelConfig(kind=spec.model, lr=spec.lr, top_optimizer=spec.top_optimizer, top_lr=spec.top_lr,
                                    hidden=spec.hidden, embedding_dim=spec.embedding_dim, seed=spec.seed)
        store = blindfl.ps_store(ctx.ps) if spec.share_store == "ps" else blindfl.MemoryShareStore

        def make_trainer(chan, private, peer_keys):
            return models.make_trainer(chan, rows, config, private, peer_keys, spec.label_party, store=store,
                                       pool_processes=spec.pool_processes, he_processes=spec.he_processes,
                                       timeout_s=spec.recv_timeout_s)

        plan = TrainPlan(batch_size=spec.batch_size, epochs=spec.epochs, val_fraction=spec.val_fraction,
                         checkpoint_every=spec.checkpoint_every)
        result = run_party(setup, rows.ids.tolist(), spec.psi, plan, make_trainer, ctx.report, ctx.log)
        return {"party": setup.name, "role": spec.parties[ctx.rank].role, **result}
