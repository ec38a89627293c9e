"""TLS with given certificates: a PS and a whole scheduled job over TLS; plaintext clients are refused."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from seraphim.proto import scheduler_pb2
from seraphim.proto.errors import InvalidArgument, Unavailable
from seraphim.proto.rpc import TlsFiles, make_channel, make_server, token_metadata
from seraphim.scheduler.client import SchedulerClient
from seraphim.worker import PSClient


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A CA and a server certificate for localhost / 127.0.0.1, as PEM files."""
    out = tmp_path_factory.mktemp("certs")
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "seraphim test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    (out / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (out / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return out


def test_ps_over_tls(cluster_factory, certs):
    cluster = cluster_factory(num_ps=1, ram_mb=4, page_kb=64, token="t0k",
                              extra_args=("--tls-cert", str(certs / "server.pem"), "--tls-key",
                                          str(certs / "server.key")))
    tls = TlsFiles(ca=str(certs / "ca.pem"))
    with PSClient(cluster.addresses, token="t0k", tls=tls) as ps:
        t = ps.dense_table("secure", (4, 2))
        t.push_all(np.arange(8, dtype=np.float32).reshape(4, 2), mode="assign")
        np.testing.assert_array_equal(t.pull_all(), np.arange(8, dtype=np.float32).reshape(4, 2))
    with PSClient(cluster.addresses, token="t0k", retry_s=1) as plaintext, pytest.raises(Unavailable):
        plaintext.health()


def test_a_scheduled_job_runs_over_tls(tmp_path, scheduler_factory, certs):
    sched = scheduler_factory(extra=("--tls-cert", str(certs / "server.pem"), "--tls-key",
                                     str(certs / "server.key"), "--tls-ca", str(certs / "ca.pem"), "--metrics-public"),
                              http_port=0)
    job = {"name": "secure", "algorithm": "ctr", "cluster": {"ps": 1, "workers": 1},
           "storage": {"ram_mb": 8, "page_kb": 64},
           "train": {"model": "lr", "batch_size": 128, "steps": 20, "eval_rows": 1000,
                     "data": {"num_fields": 4, "vocab_sizes": [5, 10, 20, 40]}}}
    with SchedulerClient(sched.address, token=sched.token, tls=TlsFiles(ca=str(certs / "ca.pem"))) as client:
        job_id = client.submit(yaml.safe_dump(job), "local", str(tmp_path)).job_id
        deadline = time.monotonic() + 120
        while (status := client.job(job_id)).state not in (scheduler_pb2.SUCCEEDED, scheduler_pb2.FAILED):
            assert time.monotonic() < deadline
            time.sleep(0.3)
        assert status.state == scheduler_pb2.SUCCEEDED, status.reason
    with SchedulerClient(sched.address, token=sched.token) as plaintext, pytest.raises(Unavailable):
        plaintext.jobs()
    # the HTTP port is under the same certificate: /metrics public (--metrics-public), the dashboard's API not
    https = f"https://127.0.0.1:{sched.http_port}"
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    assert sched.dashboard_url.startswith(https + "/#token=")
    with urllib.request.urlopen(f"{https}/metrics", context=context, timeout=30) as reply:
        assert f'seraphim_job_state{{algorithm="ctr",job_id="{job_id}",name="secure",state="SUCCEEDED"}} 1.0' in \
            reply.read().decode()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{https}/api/jobs", context=context, timeout=30)
    assert refused.value.code == 401
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # no plaintext HTTP on it
        urllib.request.urlopen(f"http://127.0.0.1:{sched.http_port}/metrics", timeout=30)


def test_make_server_with_client_auth_requires_a_certificate_from_the_ca(certs):
    tls = TlsFiles(ca=str(certs / "ca.pem"), cert=str(certs / "server.pem"), key=str(certs / "server.key"))
    with pytest.raises(InvalidArgument, match=r"require_client_auth \(mutual TLS\) needs tls with cert, key and "):
        make_server("127.0.0.1", 0, tls=TlsFiles(cert=tls.cert, key=tls.key), require_client_auth=True)
    server, port = make_server("127.0.0.1", 0, token="t0k", tls=tls, require_client_auth=True)
    echo = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", {"Echo": echo}),))
    server.start()

    def call(client: TlsFiles) -> bytes:
        with make_channel(f"127.0.0.1:{port}", client) as channel:
            return channel.unary_unary("/test.Echo/Echo")(b"hi", timeout=5, metadata=token_metadata("t0k"))

    try:
        assert call(tls) == b"hi"  # the CA issued the server's certificate: it serves as a client certificate too
        with pytest.raises(grpc.RpcError) as err:
            call(TlsFiles(ca=tls.ca))  # trusts the server, presents no certificate of its own
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(None)
