"""Shared fixtures: real PS processes on loopback, stopped after each test even when it fails."""

from __future__ import annotations

import pytest

import datetime
import os
import signal
import sqlite3
from pathlib import Path

import torch
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from seraphim.proto.rpc import TlsFiles

from seraphim.scheduler.client import SchedulerClient
from seraphim.scheduler.embedded import SchedulerProcess
from seraphim.scheduler.local_cluster import LocalCluster, PSProcessSpec


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test: its default (a thread per core) oversubscribes a shared 2-core machine,
    and small FFTs and convolutions then ran 40x slower than on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _clusters(root: Path):
    """Start LocalClusters under root on demand; every one started is stopped when the generator closes."""
    started: list[LocalCluster] = []

    def make(name: str = "cluster", **spec) -> LocalCluster:
        cluster = LocalCluster(root / name, PSProcessSpec(**spec))
        started.append(cluster)
        return cluster.start()

    try:
        yield make
    finally:
        for cluster in started:
            cluster.stop()


@pytest.fixture
def cluster_factory(tmp_path):
    """Start LocalClusters on demand; every one started is stopped at teardown."""
    yield from _clusters(tmp_path)


@pytest.fixture(scope="module")
def module_cluster_factory(tmp_path_factory):
    """cluster_factory for clusters a whole test module shares (started once, stopped after its last test)."""
    yield from _clusters(tmp_path_factory.mktemp("clusters"))


@pytest.fixture
def two_ps(cluster_factory):
    return cluster_factory(num_ps=2, num_workers=1, ram_mb=8, page_kb=64)


class SchedulerUnderTest(SchedulerProcess):
    """A real scheduler process for tests: a client, SIGKILL, and the pids of every job process it launched."""

    def client(self, **kw) -> SchedulerClient:
        return SchedulerClient(self.address, token=self.token, **kw)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def job_pids(self) -> list[int]:
        db = sqlite3.connect(self.data_dir / "scheduler.db")
        try:
            # only the local launcher's processes: a manual job's pids are whatever its processes reported
            return [pid for (pid,) in db.execute("SELECT pid FROM nodes JOIN jobs USING (job_id) "
                                                 "WHERE pid > 0 AND launcher = 'local'")]
        finally:
            db.close()


def kill_schedulers(started: list[SchedulerUnderTest]) -> None:
    """SIGKILL the schedulers, then every job process they launched (each leads its own process group)."""
    for sched in started:
        sched.kill()
    for sched in started:
        for pid in sched.job_pids():
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _schedulers(root: Path):
    """Start scheduler processes under root; when the generator closes, kill them and every job process they
    launched."""
    started: list[SchedulerUnderTest] = []

    def make(name: str = "sched", port: int = 0, heartbeat_timeout: float = 10.0, extra=(),
             http_port: int | None = None) -> SchedulerUnderTest:
        # 10 s, the scheduler's default: with 3 s a PS starved of CPU on a loaded 2-core host was declared dead
        sched = SchedulerUnderTest(root / name, port=port, heartbeat_timeout_s=heartbeat_timeout, extra_args=extra,
                                   http_port=http_port)
        started.append(sched)
        return sched

    try:
        yield make
    finally:
        kill_schedulers(started)


@pytest.fixture
def scheduler_factory(tmp_path):
    """Start scheduler processes; at teardown kill them and every job process they launched."""
    yield from _schedulers(tmp_path)


@pytest.fixture(scope="module")
def module_scheduler_factory(tmp_path_factory):
    """scheduler_factory for schedulers a whole test module shares."""
    yield from _schedulers(tmp_path_factory.mktemp("schedulers"))


# ------------------------------------------------------------------------------------------------ mutual TLS


def _ca(name: str):
    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def _party_cert(out: Path, ca, party: str) -> TlsFiles:
    """A certificate naming the party (CN and DNS SAN), as each organisation would issue for its worker."""
    ca_cert, ca_key = ca
    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, party)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(party)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (out / f"{party}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / f"{party}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    return TlsFiles(ca=str(out / "ca.pem"), cert=str(out / f"{party}.pem"), key=str(out / f"{party}.key"))


@pytest.fixture(scope="module")
def party_certs(tmp_path_factory) -> dict[str, TlsFiles]:
    """Mutual-TLS files per party of a federation (label, f1, f2), plus f1 with another CA's certificate: under
    that CA (``f1-other-ca``) and beside the federation's CA (``f1-rogue-cert``)."""
    out = tmp_path_factory.mktemp("party-certs")
    ca = _ca("federation CA")
    (out / "ca.pem").write_bytes(ca[0].public_bytes(serialization.Encoding.PEM))
    tls = {p: _party_cert(out, ca, p) for p in ("label", "f1", "f2")}
    rogue_dir = out / "rogue"
    rogue_dir.mkdir()
    rogue_ca = _ca("someone else's CA")
    (rogue_dir / "ca.pem").write_bytes(rogue_ca[0].public_bytes(serialization.Encoding.PEM))
    tls["f1-other-ca"] = _party_cert(rogue_dir, rogue_ca, "f1")
    # an outsider's certificate for f1 beside the federation's CA: only its own certificate is wrong
    tls["f1-rogue-cert"] = TlsFiles(ca=str(out / "ca.pem"), cert=tls["f1-other-ca"].cert, key=tls["f1-other-ca"].key)
    return tls
