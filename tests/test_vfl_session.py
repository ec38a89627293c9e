"""Federated sessions over real gRPC: the party exchange's handshake, ordering and checks (token, mutual TLS,
replayed/reordered/tampered/truncated envelopes, missing, late and killed parties), then the vfl.blindfl job."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

from seraphim.proto.errors import FatalJobError
from seraphim.algorithms.vfl.central import CentralModel
from seraphim.algorithms.vfl.data import PartyData, read_party, write_party
from seraphim.algorithms.vfl.models import ModelConfig
from seraphim.algorithms.vfl.session import (Alignment, AlignmentError, Checkpoints, PartySetup, Schedule, TrainPlan,
                                             run_party)
from seraphim.proto import exchange_pb2, exchange_pb2_grpc, scheduler_pb2
from seraphim.proto.rpc import make_channel, token_metadata
from seraphim.scheduler.job_spec import JobSpecError, load_job, parse_job
from seraphim.worker.exchange import GrpcPartyChannel, address_file, envelope_mac
from seraphim.worker.party_channel import PartyError, PartyMessageRejected, PartyTimeout
from test_scheduler import failed_without_restart

TOKEN = "vfl-test-token"


def _handshake_all(channels: list[GrpcPartyChannel], timeout_s: float = 10.0) -> list[BaseException | None]:
    """Run every party's handshake at once (as separate workers would); returns each one's error or None."""
    errors: list[BaseException | None] = [None] * len(channels)

    def run(i: int) -> None:
        try:
            channels[i].handshake(timeout_s)
        except BaseException as exc:  # collected for the assertions
            errors[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(channels))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


@pytest.fixture
def parties(tmp_path):
    """Open channels on demand (port 0, discovered through the run directory); all closed at teardown."""
    opened: list[GrpcPartyChannel] = []

    def make(names=("label", "f1"), token=TOKEN, session="s1", names_all=None, **kw) -> list[GrpcPartyChannel]:
        endpoints = {n: "127.0.0.1:0" for n in names_all or names}
        chans = [GrpcPartyChannel(n, endpoints, session, token, public_key=f"key of {n}".encode(),
                                  run_dir=tmp_path, **kw) for n in names]
        opened.extend(chans)
        return chans

    yield make
    for chan in opened:
        chan.close()


# ---------------------------------------------------------------------------------------------- transport


def test_handshake_then_messages_arrive_in_order_and_large_ones_are_chunked(parties, tmp_path):
    label, f1, f2 = parties(("label", "f1", "f2"), max_message_bytes=256 * 1024, chunk_bytes=64 * 1024)
    assert address_file(tmp_path, "f1").read_text() == f1.address
    assert _handshake_all([label, f1, f2]) == [None, None, None]
    assert label.peer_public_key("f2") == b"key of f2" and f2.peer_public_key("label") == b"key of label"
    for i in range(50):
        f1.send("label", "fwd", f"f1-{i}".encode())
        f2.send("label", "fwd", f"f2-{i}".encode())
        label.send("f1", "grad", bytes([i]))
    assert [label.recv("f1", "fwd") for _ in range(50)] == [f"f1-{i}".encode() for i in range(50)]
    assert [label.recv("f2", "fwd") for _ in range(50)] == [f"f2-{i}".encode() for i in range(50)]
    assert [f1.recv("label", "grad") for _ in range(50)] == [bytes([i]) for i in range(50)]
    big = bytes(range(256)) * 4096  # 1 MiB: four times the message limit
    f2.send("f1", "big", big)
    assert f1.recv("f2", "big") == big
    with pytest.raises(ValueError, match="reserved"):
        label.send("f1", "seraphim.bye", b"")
    label.close("done")
    with pytest.raises(PartyError, match="'label' .* closed the session \\(done\\)"):
        f1.recv("label", "grad", timeout_s=5)
    started = time.monotonic()  # a send to a party that said goodbye fails at once with its reason, not as
    with pytest.raises(PartyError, match="'label' .* closed the session \\(done\\) before message 'fwd'"):
        f1.send("label", "fwd", b"late")  # "unreachable" after the retry window
    assert time.monotonic() - started < 1.0
    assert not address_file(tmp_path, "label").exists()


def test_calls_without_the_token_are_refused(parties, tmp_path):
    label, = parties(("label",), names_all=("label", "f1"))
    stub = exchange_pb2_grpc.PartyExchangeStub(make_channel(label.address))
    with pytest.raises(grpc.RpcError) as err:
        stub.Ping(exchange_pb2.PingRequest(session_id="s1", party="f1"), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    f1, = parties(("f1",), names_all=("label", "f1"), token="not the cluster token")
    errors = _handshake_all([label, f1], timeout_s=5)
    for err in errors:
        assert isinstance(err, PartyMessageRejected) and "missing or wrong cluster token" in str(err), errors


def _rejection_case(parties, case: str) -> tuple[grpc.RpcError, GrpcPartyChannel]:
    """label and f1 shake hands; then an envelope from f1 is replayed, reordered, tampered with or truncated."""
    label, f1 = parties()
    assert _handshake_all([label, f1]) == [None, None]
    key = f1._peers["label"].out_key  # what a wire-level attacker sees is the envelope, never this key
    stub = exchange_pb2_grpc.PartyExchangeStub(make_channel(label.address))

    def sealed(seq: int, payload: bytes) -> exchange_pb2.Envelope:
        env = exchange_pb2.Envelope(session_id="s1", sender="f1", receiver="label", tag="fwd", seq=seq,
                                    payload_size=len(payload), payload=payload)
        env.mac = envelope_mac(key, env)
        return env

    f1.send("label", "fwd", b"first")
    assert label.recv("f1", "fwd") == b"first"
    env = {"replayed": sealed(0, b"first"), "reordered": sealed(2, b"third")}.get(case) or sealed(1, b"second")
    if case == "tampered":
        env.payload = b"secxnd"
    elif case == "truncated":
        env.payload = env.payload[:3]
    elif case == "relabelled":
        env.tag = "grad"
    with pytest.raises(grpc.RpcError) as err:
        stub.Deliver(env, timeout=5, metadata=token_metadata(TOKEN))
    return err.value, label


@pytest.mark.parametrize("case, code, message", [
    ("replayed", grpc.StatusCode.INVALID_ARGUMENT, "'fwd' #0 is a replay"),
    ("reordered", grpc.StatusCode.INVALID_ARGUMENT, "'fwd' #2 is out of order: #1 is next"),
    ("tampered", grpc.StatusCode.UNAUTHENTICATED, "'fwd' #1 failed its MAC check"),
    ("relabelled", grpc.StatusCode.UNAUTHENTICATED, "'grad' #1 failed its MAC check"),
    ("truncated", grpc.StatusCode.DATA_LOSS, "'fwd' #1 is truncated: 3 of its 6 bytes"),
])
def test_replayed_reordered_tampered_and_truncated_envelopes_are_rejected(parties, case, code, message):
    err, label = _rejection_case(parties, case)
    assert err.code() == code and message in err.details()
    with pytest.raises(PartyMessageRejected, match=f"from party 'f1' .*{message}"):
        label.recv("f1", "fwd", timeout_s=5)


def test_a_missing_party_times_out_naming_it(parties, tmp_path):
    label, _f1 = parties(("label", "f1"))
    lonely = GrpcPartyChannel("label", {"label": "127.0.0.1:0", "f1": _f1.address, "f9": "127.0.0.1:0"}, "s9",
                              TOKEN, run_dir=tmp_path / "other")
    try:
        start = time.monotonic()
        with pytest.raises(PartyTimeout) as err:
            lonely.handshake(2.0)
        assert time.monotonic() - start < 6
        text = str(err.value)
        assert "party 'f9' at 127.0.0.1:0" in text and "f9.addr" in text  # never published its address
        assert f"party 'f1' at {_f1.address}" in text  # serves, but in another session
    finally:
        lonely.close()


_PEER_SCRIPT = """
import sys, time
from pathlib import Path
from seraphim.worker.exchange import GrpcPartyChannel
run_dir, mode = Path(sys.argv[1]), sys.argv[2]
chan = GrpcPartyChannel("f1", {"label": "127.0.0.1:0", "f1": "127.0.0.1:0"}, "s1", "%s", run_dir=run_dir)
chan.handshake(20)
chan.send("label", "fwd", b"step 0")
print("sent", flush=True)
time.sleep(600)
""" % TOKEN


@pytest.mark.parametrize("how", ["killed", "late"])
def test_a_killed_or_late_party_stops_the_other_with_a_clear_error(tmp_path, how):
    proc = subprocess.Popen([sys.executable, "-c", _PEER_SCRIPT, str(tmp_path), how], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    label = GrpcPartyChannel("label", {"label": "127.0.0.1:0", "f1": "127.0.0.1:0"}, "s1", TOKEN, run_dir=tmp_path)
    try:
        label.handshake(30)
        assert label.recv("f1", "fwd", timeout_s=30) == b"step 0"
        if how == "killed":
            proc.send_signal(signal.SIGKILL)
            start = time.monotonic()
            with pytest.raises(PartyError, match=r"party 'f1' at 127\.0\.0\.1:\d+ is gone") as err:
                label.recv("f1", "fwd", timeout_s=60)
            assert not isinstance(err.value, PartyTimeout) and time.monotonic() - start < 15
            with pytest.raises(PartyError, match="is gone"):
                label.send("f1", "grad", b"x")
        else:
            with pytest.raises(PartyTimeout, match=r"no message 'fwd' from party 'f1' at 127\.0\.0\.1:\d+ within 2s"):
                label.recv("f1", "fwd", timeout_s=2)
    finally:
        label.close()
        proc.kill()
        proc.wait()


# ------------------------------------------------------------------------------------------------ mutual TLS


def test_mutual_tls_with_party_certificates(tmp_path, party_certs):
    endpoints = {"label": "127.0.0.1:0", "f1": "127.0.0.1:0"}
    label = GrpcPartyChannel("label", endpoints, "tls", TOKEN, tls=party_certs["label"], run_dir=tmp_path)
    f1 = GrpcPartyChannel("f1", endpoints, "tls", TOKEN, tls=party_certs["f1"], run_dir=tmp_path)
    try:
        assert _handshake_all([label, f1]) == [None, None]
        f1.send("label", "fwd", b"over mTLS")
        assert label.recv("f1", "fwd") == b"over mTLS"
        plaintext = exchange_pb2_grpc.PartyExchangeStub(make_channel(label.address))
        with pytest.raises(grpc.RpcError) as err:
            plaintext.Ping(exchange_pb2.PingRequest(), timeout=3, metadata=token_metadata(TOKEN))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        label.close()
        f1.close()


@pytest.mark.parametrize("impostor", ["f2", "f1-other-ca", "f1-rogue-cert"])
def test_a_party_with_the_wrong_certificate_is_rejected(tmp_path, party_certs, impostor):
    """f2's valid certificate used to play f1; a certificate for f1 from a CA the federation does not trust (f1
    trusting only that CA, or the federation's)."""
    endpoints = {"label": "127.0.0.1:0", "f1": "127.0.0.1:0"}
    label = GrpcPartyChannel("label", endpoints, "tls", TOKEN, tls=party_certs["label"], run_dir=tmp_path)
    f1 = GrpcPartyChannel("f1", endpoints, "tls", TOKEN, tls=party_certs[impostor], run_dir=tmp_path)
    try:
        errors = _handshake_all([label, f1], timeout_s=3)
        if impostor == "f2":
            assert isinstance(errors[0], PartyMessageRejected), errors
            assert "certificate names 'f2' claimed to be party 'f1'" in str(errors[0])
            assert isinstance(errors[1], PartyMessageRejected) and "refused our Hello" in str(errors[1])
            return
        # the label party checks f1's server certificate against the federation's CA: refused at once, by name
        assert isinstance(errors[0], PartyMessageRejected), errors
        assert re.search(r"party 'f1' at 127\.0\.0\.1:\d+ presented a TLS certificate that fails verification "
                         r"against our CA .*ca\.pem \(not issued by it, or expired\)", str(errors[0])), errors[0]
        assert "CERTIFICATE_VERIFY_FAILED" in str(errors[0])
        if impostor == "f1-other-ca":  # f1 trusts only the other CA, so it refuses the label party's certificate too
            assert isinstance(errors[1], PartyMessageRejected), errors
            assert "party 'label' at 127.0.0.1" in str(errors[1]) and "fails verification" in str(errors[1])
        else:  # the label party's server closed the TLS handshake on f1's certificate; f1 is told what to check
            assert isinstance(errors[1], PartyTimeout), errors
            assert f"check that 'label''s tls_ca issued our tls_cert {party_certs[impostor].cert}" in str(errors[1])
    finally:
        label.close()
        f1.close()


# ------------------------------------------------------------------------------------- the session skeleton


class _IdEchoTrainer:
    """A stand-in for a protocol trainer: each step every feature party sends the ids of its batch rows to the
    label party, which checks them against its own rows' ids (so alignment and lockstep batches are exercised over
    real gRPC); its state is the sum of the ids it has trained on."""

    def __init__(self, chan, setup, ids, fail_at=None):
        self.chan, self.setup, self.ids, self.fail_at = chan, setup, ids, fail_at
        self.total = 0

    def _exchange(self, tag: str, rows) -> None:
        mine = [int(self.ids[r]) for r in rows]
        if self.setup.is_label:
            for p in self.chan.peers():
                theirs = json.loads(self.chan.recv(p, tag, 20))
                if theirs != mine:
                    raise PartyError(f"{p} trained on ids {theirs[:5]}..., the label party on {mine[:5]}...")
                self.chan.send(p, tag + "/ok", b"")
        else:
            self.chan.send(self.setup.label_party, tag, json.dumps(mine).encode())
            self.chan.recv(self.setup.label_party, tag + "/ok", 20)

    def train_step(self, step, rows):
        if step == self.fail_at:
            raise RuntimeError(f"{self.setup.name} crashed at step {step}")
        self._exchange("toy/step", rows)
        self.total += int(sum(int(self.ids[r]) for r in rows))
        return {"loss": 1.0 / (step + 1)} if self.setup.is_label else {}

    def evaluate(self, rows):
        self._exchange("toy/eval", rows)
        return {"auc": 1.0} if self.setup.is_label else {}

    def state(self):
        return {"total": np.array(self.total), "note": b"bytes survive"}

    def load_state(self, state):
        assert state["note"] == b"bytes survive"
        self.total = int(state["total"])

    def close(self):
        self.closed = True


def _run_toy_session(run_dir: Path, ids: dict[str, list[int]], fail: dict[str, int] | None = None,
                     use_psi: bool = True) -> dict[str, object]:
    """Run every party of a toy session in its own thread; returns each party's result or exception."""
    names = list(ids)
    endpoints = {n: "127.0.0.1:0" for n in names}
    results: dict[str, object] = {}
    trainers: dict[str, _IdEchoTrainer] = {}
    reports: dict[str, list] = {n: [] for n in names}

    def party(name: str) -> None:
        setup = PartySetup(name=name, label_party=names[0], endpoints=endpoints, session_id="toy", run_dir=run_dir,
                           token=TOKEN, key_file=run_dir / "parties" / name / "paillier.key", key_bits=512,
                           handshake_timeout_s=20, recv_timeout_s=20)

        def make(chan, private, peer_keys):
            assert set(peer_keys) == set(names) - {name} and private.public.bits == 512
            trainers[name] = _IdEchoTrainer(chan, setup, ids[name], (fail or {}).get(name))
            return trainers[name]

        try:
            results[name] = run_party(setup, ids[name], use_psi, TrainPlan(batch_size=16, epochs=2), make,
                                      lambda step, m: reports[name].append((step, m)), logging.getLogger(name))
        except Exception as exc:  # collected for the assertions
            results[name] = exc

    threads = [threading.Thread(target=party, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    results["trainers"], results["reports"] = trainers, reports
    return results


def _overlapping_ids() -> dict[str, list[int]]:
    rng = np.random.default_rng(7)
    return {"label": rng.permutation(np.arange(0, 200)).tolist(), "f1": rng.permutation(np.arange(50, 250)).tolist(),
            "f2": rng.permutation(np.arange(30, 230)).tolist()}


def test_psi_aligns_three_parties_and_steps_run_in_lockstep(tmp_path):
    ids = _overlapping_ids()
    out = _run_toy_session(tmp_path, ids)
    for name in ids:
        assert isinstance(out[name], dict), out[name]
    assert out["label"]["auc"] == 1.0 and out["label"]["samples"] == 150  # ids 50..199 are common to all three
    aligned = {n: Alignment.load(tmp_path / "parties" / n / "alignment.npz") for n in ids}
    common = [[ids[n][r] for r in aligned[n].rows] for n in ids]
    assert common[0] == common[1] == common[2] and sorted(common[0]) == list(range(50, 200))
    assert (tmp_path / "parties" / "f1" / "paillier.key").stat().st_mode & 0o077 == 0
    schedule = Schedule(150, 16, 2, 0.2, aligned["label"].seed)
    steps = [s for s, _ in out["reports"]["f2"]]
    assert steps == list(range(schedule.total_steps)) and out["reports"]["f2"][-1][1]["progress"] == 1.0
    assert "train_loss" in out["reports"]["label"][0][1] and "train_loss" not in out["reports"]["f1"][0][1]


def test_no_common_ids_is_a_clear_error_at_every_party(tmp_path):
    out = _run_toy_session(tmp_path, {"label": list(range(0, 100)), "f1": list(range(100, 200)),
                                      "f2": list(range(50, 150))})
    for name in ("label", "f1", "f2"):
        assert isinstance(out[name], AlignmentError) and "no sample id common to every party" in str(out[name]), out
        assert isinstance(out[name], PartyError) and isinstance(out[name], FatalJobError)  # no use restarting
    assert "100 ids; 0 match 'f1', 50 match 'f2'" in str(out["f2"])
    out = _run_toy_session(tmp_path / "nopsi", {"label": list(range(100)), "f1": list(range(99))}, use_psi=False)
    assert all(isinstance(out[n], AlignmentError) and "'f1' has 99 rows against 100" in str(out[n])
               for n in ("label", "f1")), out


def test_a_party_crashing_mid_epoch_stops_the_others_and_all_resume_from_the_last_step(tmp_path):
    ids = _overlapping_ids()
    out = _run_toy_session(tmp_path, ids, fail={"f2": 5})
    assert isinstance(out["f2"], RuntimeError)
    for name in ("label", "f1"):  # told at once by f2's channel (or the label party's) as it closed
        assert isinstance(out[name], PartyError) and "closed the session (failed: " in str(out[name]), out[name]
    assert Checkpoints(tmp_path / "parties" / "f2").steps() == [3, 4, 5]
    again = _run_toy_session(tmp_path, ids)
    assert all(isinstance(again[n], dict) for n in ids), again
    assert [s for s, _ in again["reports"]["label"]][0] == 5  # resumed after the 5 completed steps
    aligned = Alignment.load(tmp_path / "parties" / "label" / "alignment.npz")
    train, _ = Schedule(150, 16, 2, 0.2, aligned.seed).split
    for name in ids:  # every sample of the training split counted once per epoch, across the restart
        rows = Alignment.load(tmp_path / "parties" / name / "alignment.npz").rows[train]
        expected = 2 * sum(ids[name][r] for r in rows)
        assert again["trainers"][name].total == expected


# ------------------------------------------------------------------------------------------- the vfl.blindfl job


def _central_accuracy(run_dir: Path, spec: dict) -> float:
    """The plaintext baseline on the samples the parties aligned, with the same split and batches."""
    names = [p["name"] for p in spec["parties"]]
    aligned = {n: Alignment.load(run_dir / "parties" / n / "alignment.npz") for n in names}
    parts = {n: read_party(run_dir / "parties" / n / "data.npz").subset(aligned[n].rows) for n in names}
    assert len({tuple(parts[n].ids) for n in names}) == 1  # PSI aligned the same ids at every party
    config = ModelConfig(kind="lr", lr=spec["lr"])
    central = CentralModel(parts, names[0], config)
    schedule = Schedule(len(parts[names[0]]), spec["batch_size"], spec["epochs"], 0.2, aligned[names[0]].seed)
    train, val = schedule.split
    for step in range(schedule.total_steps):
        central.train_step(schedule.batch(step, train))
    return central.evaluate(val)["accuracy"]


def test_blindfl_job_trains_lr_on_breast_cancer_and_survives_a_killed_party(tmp_path, scheduler_factory):
    train = {"parties": [{"name": "hospital", "role": "label"}, {"name": "lab", "role": "feature"}],
             "generate": "breast_cancer", "generate_options": {"missing": 0.03}, "model": "lr", "key_bits": 1024,
             "epochs": 8, "batch_size": 64, "lr": 0.1, "handshake_timeout_s": 60, "recv_timeout_s": 60}
    job = {"name": "vfl-bc", "algorithm": "vfl.blindfl", "cluster": {"ps": 1, "workers": 2, "ps_per_worker": True},
           "storage": {"ram_mb": 16, "page_kb": 64}, "train": train}
    sched = scheduler_factory()
    with sched.client() as client:
        status = client.submit(yaml.safe_dump(job), "local", str(tmp_path))
        job_id, run_dir = status.job_id, Path(status.run_dir)
        lab = Checkpoints(run_dir / "parties" / "lab")
        deadline = time.monotonic() + 60
        while not (lab.dir.is_dir() and any(s >= 6 for s in lab.steps())):
            assert time.monotonic() < deadline and client.job(job_id).state in (0, 1), client.job(job_id).reason
            time.sleep(0.05)
        worker = next(n for n in client.job(job_id).nodes if n.role == "worker" and n.rank == 1)
        os.kill(worker.pid, signal.SIGKILL)  # the feature party dies mid-epoch
        deadline = time.monotonic() + 120
        while (status := client.job(job_id)).state not in (scheduler_pb2.SUCCEEDED, scheduler_pb2.FAILED):
            assert time.monotonic() < deadline, "the job did not end"
            time.sleep(0.2)
        assert status.state == scheduler_pb2.SUCCEEDED, status.reason
        assert status.restarts >= 1
    events = (run_dir / "logs" / "job.log").read_text()  # the label party stopped with an error naming the dead one
    assert re.search(r"worker-0 reported failure: PartyError: .*party 'lab' at 127\.0\.0\.1:\d+ "
                     r"(is gone|is unreachable|handshook again)", events), events
    resumed = [int(s) for s in re.findall(r"resuming at step (\d+)", (run_dir / "logs" / "worker-1.log").read_text())]
    assert resumed and resumed[0] >= 6
    result = json.loads((run_dir / "results" / "worker-0.json").read_text())
    central = _central_accuracy(run_dir, train)
    assert central > 0.9 and abs(result["accuracy"] - central) <= 0.01 + 1e-9, (result, central)


def _vfl_job(name: str, parties: list[dict], **train) -> dict:
    """A small vfl.blindfl job: one PS shard per party, 512-bit keys (tests only), one epoch."""
    return {"name": name, "algorithm": "vfl.blindfl",
            "cluster": {"ps": 1, "workers": len(parties), "ps_per_worker": True, "max_restarts": 3},
            "storage": {"ram_mb": 16, "page_kb": 64},
            "train": {"parties": parties, "model": "lr", "key_bits": 512, "epochs": 1, "batch_size": 128,
                      "handshake_timeout_s": 30, "recv_timeout_s": 30, **train}}


def test_a_vfl_job_whose_parties_share_no_id_fails_at_once_without_restarts(tmp_path, scheduler_factory):
    rng = np.random.default_rng(5)
    write_party(tmp_path / "bank.npz", PartyData(ids=np.arange(60), dense=rng.normal(size=(60, 2)),
                                                 labels=rng.integers(0, 2, 60)))
    write_party(tmp_path / "shop.npz", PartyData(ids=np.arange(1000, 1060), dense=rng.normal(size=(60, 3))))
    job = _vfl_job("vfl-disjoint", [{"name": "bank", "role": "label", "data": str(tmp_path / "bank.npz")},
                                    {"name": "shop", "role": "feature", "data": str(tmp_path / "shop.npz")}])
    sched = scheduler_factory()
    start = time.monotonic()
    with sched.client() as client:
        status = client.submit(yaml.safe_dump(job), "local", str(tmp_path))
        status = failed_without_restart(client, status.job_id)
    assert time.monotonic() - start < 60
    assert re.search(r"worker-[01] failed with an input error that a restart would repeat \(not restarted\): "
                     r"AlignmentError: PSI found no sample id common to every party \(label party 'bank' has 60 ids; "
                     r"0 match 'shop'\)", status.reason), status.reason
    events = (Path(status.run_dir) / "logs" / "job.log").read_text()
    assert "attempt 2" not in events and events.count("job FAILED") == 1, events


@pytest.mark.parametrize("change, message", [
    ({"parties": [{"name": "a", "role": "label"}, {"name": "b", "role": "label"}]},
     "exactly one party must have role 'label', got ['a', 'b']"),
    ({"parties": [{"name": "a", "role": "label"}, {"name": "b", "role": "feature"}], "generate": None},
     "parties ['a', 'b'] have no data file"),
    ({"parties": [{"name": "A_1", "role": "label"}, {"name": "b", "role": "feature"}]}, "train.parties.0.name"),
    ({"parties": [{"name": "a", "role": "label", "tls_cert": "a.pem"}, {"name": "b", "role": "feature"}]},
     "mutual TLS needs tls_cert, tls_key and tls_ca"),
])
def test_vfl_job_specs_are_validated(change, message):
    job = {"name": "v", "algorithm": "vfl.blindfl", "train": {"generate": "breast_cancer", **change}}
    with pytest.raises(JobSpecError, match=re.escape(message)):
        parse_job(job)


@pytest.mark.parametrize("example", ["vfl_breast_cancer.yaml", "vfl_click.yaml"])
def test_the_examples_parse(example):
    spec, train = load_job(Path(__file__).parent.parent / "examples" / example)
    assert spec.cluster.ps_per_worker and spec.cluster.workers == len(train.parties)
