"""One party of a BlindFL session, from its key file to its last step: the parts every party runs in the same order.

1. **Keys**: the party's Paillier key pair lives in its key file (created on first use, mode 0600, never sent).
2. **Channel**: ``GrpcPartyChannel`` on the party's endpoint; the handshake exchanges public keys (the channel
   binds their fingerprints into each link's MAC key).
3. **Plan** (star through the label party, which is the only party every other one talks to): each party says
   which steps it holds checkpoints for and which sample alignment they belong to; the label party picks the
   newest step that *every* party holds under one alignment (parties in lockstep differ by at most a step or
   two, so each keeps its last ``KEEP_CHECKPOINTS``), or a fresh start with a new alignment and seed.
4. **Alignment** (fresh start): pairwise ECDH-PSI (``psi.py``) between the label party and each feature party,
   then the label party intersects the pairwise results and tells each feature party which of its matched rows
   survive, in one shuffled common order. Without PSI the rows must already be aligned: counts and an id digest
   are compared. No common id: a clear ``AlignmentError`` on every side, which the scheduler does not restart
   (a ``FatalJobError``: the data decide it, a restart would find the same).
5. **Steps** in lockstep: every party derives the same batches from the shared seed; after each completed step a
   party writes its trainer's state to ``<run_dir>/parties/<name>/step-XXXXXXXX.npz`` (atomically), so a restarted
   party resumes at the step the plan picks. Metrics go through ``report``.

Any failure closes the channel with its reason, so the other parties stop at once with a clear error instead of
waiting for their timeouts.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from seraphim.algorithms.vfl import paillier, psi
from seraphim.proto.atomic_file import atomic_write
from seraphim.proto.errors import FatalJobError
from seraphim.proto.rpc import TlsFiles
from seraphim.worker.exchange import GrpcPartyChannel
from seraphim.worker.party_channel import PartyChannel, PartyError, recv_json, send_json

KEEP_CHECKPOINTS = 3
_STEP_FILE = re.compile(r"^step-(\d{8})\.npz$")
_BYTES_MARK = "__bytes__"  # npz entry listing which state entries were bytes


class AlignmentError(FatalJobError, PartyError):
    """The parties' samples cannot be aligned (no id common to every party, or rows that ``psi: false`` requires to
    be aligned are not): the data decide it, so a restarted party would find the same."""


class KeyFileError(FatalJobError, ValueError):
    """A party's key file is not a Paillier private key, or not of the spec's key size: a restart reads the same
    file."""


class Trainer(Protocol):
    """A party's role in the protocol, driven step by step; every party's trainer runs the same calls in order."""

    def train_step(self, step: int, rows: np.ndarray) -> dict[str, float]:
        """One training step on this party's data rows ``rows``; returns metrics (the label party: loss),
        reported as ``train_<name>``."""

    def evaluate(self, rows: np.ndarray) -> dict[str, float]:
        """Forward only on ``rows``; the label party returns its metrics (auc, accuracy, loss), others ``{}``;
        reported as they are, ``loss`` as ``val_loss``."""

    def state(self) -> dict[str, np.ndarray | bytes]:
        """Everything a restarted party needs to continue after this step."""

    def load_state(self, state: dict[str, np.ndarray | bytes]) -> None:
        """Restore what ``state`` returned."""

    def close(self) -> None:
        """Release its pools and processes."""


@dataclass(frozen=True)
class PartySetup:
    """Where a party runs and whom it talks to."""

    name: str
    label_party: str
    endpoints: dict[str, str]  #: every party of the session (this one included) -> host:port
    session_id: str
    run_dir: Path
    token: str
    key_file: Path
    key_bits: int = 2048
    tls: TlsFiles | None = None
    handshake_timeout_s: float = 120.0
    recv_timeout_s: float = 600.0

    @property
    def party_dir(self) -> Path:
        return self.run_dir / "parties" / self.name

    @property
    def is_label(self) -> bool:
        return self.name == self.label_party


@dataclass(frozen=True)
class Schedule:
    """The batches of every step, the same at every party: a seeded train/validation split of the aligned samples
    and a seeded permutation of the training ones per epoch."""

    samples: int
    batch_size: int
    epochs: int
    val_fraction: float
    seed: int

    @property
    def validation_samples(self) -> int:
        return int(round(self.samples * self.val_fraction))

    @functools.cached_property
    def split(self) -> tuple[np.ndarray, np.ndarray]:
        """(training, validation) positions into the aligned order, each sorted."""
        order = np.random.default_rng([self.seed, 0]).permutation(self.samples)
        val = self.validation_samples
        return np.sort(order[val:]), np.sort(order[:val])

    @property
    def steps_per_epoch(self) -> int:
        return max(1, -(-(self.samples - self.validation_samples) // self.batch_size))

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def batch(self, step: int, train: np.ndarray) -> np.ndarray:
        """Positions (into the aligned order) of step ``step``'s batch; ``train`` is ``split[0]``."""
        epoch, i = divmod(step, self.steps_per_epoch)
        perm = np.random.default_rng([self.seed, 1, epoch]).permutation(train)
        return np.sort(perm[i * self.batch_size:(i + 1) * self.batch_size])


@dataclass(frozen=True)
class Alignment:
    """This party's data rows in the common sample order, the id naming that order, and the session's seed."""

    rows: np.ndarray
    alignment_id: str
    seed: int

    def save(self, path: Path) -> None:
        atomic_write(path, lambda f: np.savez(f, rows=self.rows, alignment_id=np.array(self.alignment_id),
                                              seed=np.array(self.seed)))

    @classmethod
    def load(cls, path: Path) -> "Alignment | None":
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as z:
            return cls(z["rows"].astype(np.int64), str(z["alignment_id"]), int(z["seed"]))


# --------------------------------------------------------------------------------------------------- keys


def load_or_create_keypair(path: Path, bits: int, log: logging.Logger) -> tuple[paillier.PublicKey,
                                                                                 paillier.PrivateKey]:
    """The party's Paillier key pair from its key file; a new one (written 0600) when the file does not exist."""
    if path.exists():
        try:
            private = paillier.PrivateKey.from_bytes(path.read_bytes())
        except ValueError as exc:
            raise KeyFileError(f"key file {path} is not a Seraphim Paillier private key: {exc}") from None
        if private.public.bits != bits:
            raise KeyFileError(f"key file {path} holds a {private.public.bits}-bit key but the spec asks for "
                             f"key_bits {bits}: delete the file to make a new key, or set key_bits "
                             f"{private.public.bits}")
        log.info("loaded the %d-bit Paillier key %s from %s", bits, private.public.fingerprint(), path)
        return private.public, private
    public, private = paillier.generate_keypair(bits)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(private.to_bytes()), mode=0o600)
    log.info("created the %d-bit Paillier key %s in %s", bits, public.fingerprint(), path)
    return public, private


# ---------------------------------------------------------------------------------------------- checkpoints


class Checkpoints:
    """A party's step checkpoints in its own directory: ``step-XXXXXXXX.npz`` holds the state after that many
    completed steps; the newest ``KEEP_CHECKPOINTS`` are kept."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)

    def steps(self) -> list[int]:
        return sorted(int(m.group(1)) for p in self.dir.iterdir() if (m := _STEP_FILE.match(p.name)))

    def path(self, step: int) -> Path:
        return self.dir / f"step-{step:08d}.npz"

    def save(self, step: int, state: dict[str, np.ndarray | bytes]) -> None:
        arrays = {k: np.frombuffer(v, dtype=np.uint8) if isinstance(v, bytes) else np.asarray(v)
                  for k, v in state.items()}
        if _BYTES_MARK in arrays or any(a.dtype == object for a in arrays.values()):
            raise ValueError(f"trainer state entries must be bytes or non-object arrays and not be named "
                             f"{_BYTES_MARK!r}; got {sorted(state)}")
        arrays[_BYTES_MARK] = np.array([k for k, v in state.items() if isinstance(v, bytes)], dtype=str)
        atomic_write(self.path(step), lambda f: np.savez(f, **arrays))
        for old in self.steps()[:-KEEP_CHECKPOINTS]:
            self.path(old).unlink(missing_ok=True)

    def load(self, step: int) -> dict[str, np.ndarray | bytes]:
        with np.load(self.path(step), allow_pickle=False) as z:
            as_bytes = set(z[_BYTES_MARK].tolist())
            return {k: z[k].tobytes() if k in as_bytes else z[k] for k in z.files if k != _BYTES_MARK}

    def clear(self) -> None:
        for step in self.steps():
            self.path(step).unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------- plan and alignment


def negotiate_plan(chan: PartyChannel, setup: PartySetup, held: list[int], alignment: Alignment | None,
                   log: logging.Logger) -> dict:
    """Agree on where to start: ``{"resume": step, "alignment_id": id}`` (resume 0 with id "" = a fresh start)."""
    mine = {"steps": held, "alignment_id": alignment.alignment_id if alignment else ""}
    if not setup.is_label:
        send_json(chan, setup.label_party, "session/state", mine)
        return recv_json(chan, setup.label_party, "session/plan", setup.recv_timeout_s)
    states = {setup.name: mine} | {p: recv_json(chan, p, "session/state", setup.recv_timeout_s) for p in chan.peers()}
    ids = {s["alignment_id"] for s in states.values()}
    common = set.intersection(*(set(s["steps"]) for s in states.values()))
    plan = {"resume": 0, "alignment_id": ""}
    if len(ids) == 1 and "" not in ids and common:
        plan = {"resume": max(common), "alignment_id": ids.pop()}
    elif any(s["steps"] for s in states.values()):
        log.warning("no checkpoint step common to every party under one sample alignment (%s); starting afresh",
                    {p: (s["alignment_id"], s["steps"]) for p, s in states.items()})
    for p in chan.peers():
        send_json(chan, p, "session/plan", plan)
    return plan


def _pairwise_psi(chan: PartyChannel, peer: str, ids: Sequence, timeout_s: float) -> np.ndarray:
    """ECDH-PSI with one peer (both run this): indices into ``ids`` of the common ids, in an order both share."""
    me = psi.PsiParty()
    chan.send(peer, "psi/blind", psi.pack_points(me.blind(ids)))
    theirs = psi.unpack_points(chan.recv(peer, "psi/blind", timeout_s))
    peer_double = me.reblind(theirs)
    chan.send(peer, "psi/reblind", psi.pack_points(peer_double))
    own_double = psi.unpack_points(chan.recv(peer, "psi/reblind", timeout_s))
    return psi.intersect(me.order, own_double, peer_double)


def _id_digest(ids: Sequence) -> str:
    h = hashlib.sha256()
    for x in ids:
        h.update(str(x).encode() + b"\x00")
    return h.hexdigest()


def align_samples(chan: PartyChannel, setup: PartySetup, ids: Sequence, use_psi: bool,
                  log: logging.Logger) -> Alignment:
    """This party's rows in the common sample order (see the module docstring); AlignmentError if there is none."""
    timeout = setup.recv_timeout_s
    if not setup.is_label:
        if use_psi:
            matched = _pairwise_psi(chan, setup.label_party, ids, timeout)
            log.info("PSI with %s: %d of our %d ids match", setup.label_party, len(matched), len(ids))
        else:
            matched = np.arange(len(ids), dtype=np.int64)
            send_json(chan, setup.label_party, "align/ids", {"count": len(ids), "digest": _id_digest(ids)})
        reply = recv_json(chan, setup.label_party, "align/rows", timeout)
        if reply.get("error"):
            raise AlignmentError(reply["error"])
        positions = np.frombuffer(chan.recv(setup.label_party, "align/positions", timeout), dtype="<i8")
        if positions.size and (positions.min() < 0 or positions.max() >= len(matched)):
            raise PartyError(f"party {setup.label_party!r} sent row positions outside our {len(matched)} matches")
        return Alignment(matched[positions], reply["alignment_id"], int(reply["seed"]))

    peers = chan.peers()
    if use_psi:
        pairwise = {}
        for p in peers:  # the feature parties blind theirs meanwhile
            pairwise[p] = _pairwise_psi(chan, p, ids, timeout)
            log.info("PSI with %s: %d of our %d ids match", p, len(pairwise[p]), len(ids))
        common = set(pairwise[peers[0]].tolist()).intersection(*(set(r.tolist()) for r in pairwise.values()))
        error = "" if common else (
            f"PSI found no sample id common to every party (label party {setup.name!r} has {len(ids)} ids; "
            + ", ".join(f"{len(r)} match {p!r}" for p, r in pairwise.items())
            + "): check that the parties' id columns hold the same kind of ids")
    else:
        claims = {p: recv_json(chan, p, "align/ids", timeout) for p in peers}
        bad = {p: c for p, c in claims.items() if c["count"] != len(ids) or c["digest"] != _id_digest(ids)}
        common = set(range(len(ids))) if not bad else set()
        error = "" if not bad else (
            "psi is off, so every party's rows must already be aligned, but " + ", ".join(
                f"{p!r} has {c['count']} rows" + (" with other ids" if c["count"] == len(ids) else "")
                for p, c in bad.items()) + f" against {len(ids)} at the label party {setup.name!r}")
        pairwise = {p: np.arange(len(ids), dtype=np.int64) for p in peers}
    rows = np.array(sorted(common), dtype=np.int64)
    rows = rows[np.random.default_rng(secrets.randbits(64)).permutation(len(rows))]
    alignment = Alignment(rows, secrets.token_hex(8), secrets.randbits(62))
    for p in peers:
        send_json(chan, p, "align/rows", {"error": error, "alignment_id": alignment.alignment_id,
                                           "seed": alignment.seed})
        if not error:
            position = {int(r): k for k, r in enumerate(pairwise[p])}
            chan.send(p, "align/positions", np.array([position[int(r)] for r in rows], dtype="<i8").tobytes())
    if error:
        raise AlignmentError(error)
    log.info("aligned %d samples common to all %d parties", len(rows), len(peers) + 1)
    return alignment


# --------------------------------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class TrainPlan:
    batch_size: int
    epochs: int
    val_fraction: float = 0.2
    checkpoint_every: int = 1


TrainerFactory = Callable[[GrpcPartyChannel, paillier.PrivateKey, dict[str, paillier.PublicKey]], Trainer]


def run_party(setup: PartySetup, ids: Sequence, use_psi: bool, plan: TrainPlan, make_trainer: TrainerFactory,
              report: Callable[[int, dict[str, float]], None], log: logging.Logger) -> dict[str, float]:
    """Run this party's whole session; returns its final metrics (the label party's evaluation)."""
    public, private = load_or_create_keypair(setup.key_file, setup.key_bits, log)
    checkpoints = Checkpoints(setup.party_dir)
    alignment_file = setup.party_dir / "alignment.npz"
    chan = GrpcPartyChannel(setup.name, setup.endpoints, setup.session_id, setup.token,
                            public_key=public.to_bytes(), tls=setup.tls, run_dir=setup.run_dir)
    with chan:
        chan.handshake(setup.handshake_timeout_s)
        peer_keys = {p: paillier.PublicKey.from_bytes(chan.peer_public_key(p)) for p in chan.peers()}
        log.info("party %s (key %s) joined session %s with %s", setup.name, public.fingerprint(), setup.session_id,
                 {p: k.fingerprint() for p, k in peer_keys.items()})
        alignment = Alignment.load(alignment_file)
        agreed = negotiate_plan(chan, setup, checkpoints.steps() if alignment else [], alignment, log)
        if agreed["resume"] == 0:
            checkpoints.clear()
            alignment = align_samples(chan, setup, ids, use_psi, log)
            alignment.save(alignment_file)
        schedule = Schedule(len(alignment.rows), plan.batch_size, plan.epochs, plan.val_fraction, alignment.seed)
        trainer = make_trainer(chan, private, peer_keys)
        try:
            start = agreed["resume"]
            if start:
                trainer.load_state(checkpoints.load(start))
                log.info("resuming at step %d of %d (checkpoint %s)", start, schedule.total_steps,
                         checkpoints.path(start))
            return _steps(trainer, schedule, alignment, checkpoints, start, plan, report, log)
        finally:
            trainer.close()


def _steps(trainer: Trainer, schedule: Schedule, alignment: Alignment, checkpoints: Checkpoints, start: int,
           plan: TrainPlan, report: Callable[[int, dict[str, float]], None], log: logging.Logger) -> dict[str, float]:
    train, val = schedule.split
    total, per_epoch = schedule.total_steps, schedule.steps_per_epoch
    final: dict[str, float] = {}
    for step in range(start, total):
        metrics = {f"train_{k}": v for k, v in trainer.train_step(step, alignment.rows[schedule.batch(step, train)])
                   .items()}
        done = step + 1
        if done % per_epoch == 0 or done == total:
            final = _evaluate(trainer, alignment.rows[val if len(val) else train])
            metrics |= final
            log.info("epoch %d: %s", done // per_epoch, final)
        if done % plan.checkpoint_every == 0 or done == total:
            checkpoints.save(done, trainer.state())
        report(step, metrics | {"progress": done / total, "epoch": step // per_epoch})
    if start >= total:  # restarted after the last step: every party evaluates once more, in lockstep
        final = _evaluate(trainer, alignment.rows[val if len(val) else train])
    return final | {"steps": float(total), "samples": float(schedule.samples)}


def _evaluate(trainer: Trainer, rows: np.ndarray) -> dict[str, float]:
    return {"val_loss" if k == "loss" else k: v for k, v in trainer.evaluate(rows).items()}
