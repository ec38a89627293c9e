"""Settings of one PS process: where it listens, where its LMDB lives, its RAM budget and consistency model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from seraphim.proto.rpc import MAX_MESSAGE_BYTES, TlsFiles

DURABILITY_MODES = ("snapshot", "strict")


@dataclass
class PSConfig:
    """One PS shard. staleness: 0 BSP, N>0 SSP, -1 ASP (Angel's single knob); deterministic: hold each clock's
    gradient pushes and apply them in worker order (BSP only)."""

    data_dir: Path
    shard: int = 0
    num_shards: int = 1
    host: str = "127.0.0.1"
    port: int = 0
    num_workers: int = 1
    staleness: int = 0
    deterministic: bool = False
    ram_bytes: int = 256 * 1024 * 1024
    page_bytes: int = 256 * 1024
    durability: str = "snapshot"
    snapshot_every: int = 10
    clock_timeout_s: float = 600.0
    token: str | None = None
    tls: TlsFiles | None = None
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_threads: int = 32
    extra: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ValueError naming the first setting that is out of range."""
        if not 0 <= self.shard < self.num_shards:
            raise ValueError(f"shard {self.shard} is outside [0, num_shards={self.num_shards})")
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be at least 1, got {self.num_workers}")
        if self.staleness < -1:
            raise ValueError(f"staleness must be -1 (ASP), 0 (BSP) or a positive bound (SSP), got {self.staleness}")
        if self.deterministic and self.staleness != 0:
            raise ValueError(f"deterministic mode applies a clock's pushes when every worker has completed it, so it "
                             f"needs BSP (staleness 0), got staleness {self.staleness}")
        if self.durability not in DURABILITY_MODES:
            raise ValueError(f"durability {self.durability!r} is not one of {DURABILITY_MODES}")
        if self.snapshot_every < 0:
            raise ValueError(f"snapshot_every must be >= 0 (0 turns periodic snapshots off), got {self.snapshot_every}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is outside 0..65535")
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise ValueError(f"data_dir {str(self.data_dir)!r} exists and is not a directory")

    @property
    def shard_dir(self) -> Path:
        return self.data_dir / f"ps-{self.shard}"
