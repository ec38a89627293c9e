"""Fuzzing every RPC of every service (PS, scheduler, party exchange) over real gRPC: random bytes, mutated valid
requests and valid messages with random field values, plus random job specs to SubmitJob.

Every answer must be OK or a precise status with a message (INVALID_ARGUMENT, NOT_FOUND, UNAUTHENTICATED, ...):
never UNKNOWN or INTERNAL (an unhandled exception), never the client's own deadline (a hang). After each method's
fuzzing the server must still answer a valid request correctly. Bytes go out as they are through a generic
channel (no serializer), so a request need not be a message at all.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import grpc
import numpy as np
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from google.protobuf.descriptor import FieldDescriptor, ServiceDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seraphim.proto import common_pb2, exchange_pb2, ps_pb2, scheduler_pb2
from seraphim.proto.codec import encode_array, encode_keys, encode_push_request
from seraphim.proto.rpc import make_channel, split_message, token_metadata
from seraphim.worker import SGD, PSClient, Zeros
from seraphim.worker.exchange import GrpcPartyChannel, fingerprint

TOKEN = "fuzz-token"
CALL_TIMEOUT_S = 10.0  # the client's deadline: a server that has not answered by then hangs
STREAM_MESSAGES = 8    # a streamed answer is read this far
FUZZ = settings(max_examples=100, deadline=3000, database=None, suppress_health_check=[HealthCheck.too_slow])
PRECISE_FAILURES = {c for c in grpc.StatusCode} - {grpc.StatusCode.OK, grpc.StatusCode.UNKNOWN,
                                                    grpc.StatusCode.INTERNAL}
CANARY = np.arange(12, dtype=np.float32).reshape(4, 3)


@dataclass
class Target:
    """A running service: where it is, its descriptor, a few valid requests per method to mutate, and a check
    that it still answers a valid request correctly."""

    address: str
    service: ServiceDescriptor
    seeds: dict[str, list[bytes]]
    still_serving: Callable[[], None]
    token: str = TOKEN
    strings: list[str] = field(default_factory=list)  # names worth trying in string fields (tables, jobs, parties)

    def methods(self) -> list[str]:
        return [m.name for m in self.service.methods]


# -- sending bytes as they are ---------------------------------------------------------------------------------------
def call_raw(channel: grpc.Channel, target: Target, method: str, payload: list[bytes],
             metadata: tuple) -> tuple[grpc.StatusCode, str]:
    """Send `payload` (one request, or the messages of a request stream) to `method`; its status and message."""
    desc = target.service.methods_by_name[method]
    path = f"/{target.service.full_name}/{method}"
    kw = dict(request_serializer=None, response_deserializer=None)
    try:
        if desc.client_streaming:
            for _ in zip(range(STREAM_MESSAGES), channel.stream_stream(path, **kw)(
                    iter(payload), metadata=metadata, timeout=CALL_TIMEOUT_S)):
                pass
        elif desc.server_streaming:
            for _ in zip(range(STREAM_MESSAGES), channel.unary_stream(path, **kw)(
                    payload[0], metadata=metadata, timeout=CALL_TIMEOUT_S)):
                pass
        else:
            channel.unary_unary(path, **kw)(payload[0], metadata=metadata, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


def check_answer(method: str, payload: list[bytes], code: grpc.StatusCode, details: str, authenticated: bool) -> None:
    what = f"{method} with {[p[:80] for p in payload[:3]]}"
    if not authenticated:
        assert code == grpc.StatusCode.UNAUTHENTICATED, f"{what} without the token got {code}: {details}"
        return
    assert code != grpc.StatusCode.DEADLINE_EXCEEDED or details != "Deadline Exceeded", \
        f"{what} hung: no answer within {CALL_TIMEOUT_S} s"
    assert code == grpc.StatusCode.OK or code in PRECISE_FAILURES, f"{what} got {code.name}: {details}"
    assert code == grpc.StatusCode.OK or details.strip(), f"{what} got {code.name} without a message"


# -- what to send ----------------------------------------------------------------------------------------------------
INTS = st.one_of(st.sampled_from([0, 1, -1, 2, 7, 2**31 - 1, -2**31, 2**63 - 1, -2**63, 2**32]),
                 st.integers(-2**63, 2**63 - 1))
ODD_FLOATS = [0.0, -0.0, 1.0, -1.0, 1e-30, 1e30, math.inf, -math.inf, math.nan]
FLOATS = st.one_of(st.sampled_from(ODD_FLOATS), st.floats(allow_nan=True, allow_infinity=True))
FLOATS32 = st.one_of(st.sampled_from(ODD_FLOATS), st.floats(width=32, allow_nan=True, allow_infinity=True))
ODD_STRINGS = ["", "../../etc/passwd", "\x00", "a" * 300, "ps-0", "job", "worker-1", "float32", "mip",
               "best_fit", "sgd", "adam", "normal", "sum", "norm", "topk", "Pull", "Deliver"]


def _scalar(fd: FieldDescriptor, strings: list[str]) -> st.SearchStrategy:
    t = fd.type
    if t == FieldDescriptor.TYPE_STRING:
        return st.one_of(st.sampled_from(ODD_STRINGS + strings), st.text(max_size=24))
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=96)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return FLOATS if t == FieldDescriptor.TYPE_DOUBLE else FLOATS32
    if t == FieldDescriptor.TYPE_ENUM:
        return st.integers(-3, 8)
    bits = 32 if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32,
                       FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32) else 64
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED32,
             FieldDescriptor.TYPE_FIXED64):
        return INTS.map(lambda v: v % 2**bits)
    return INTS.map(lambda v: (v + 2**(bits - 1)) % 2**bits - 2**(bits - 1))


def _randomize(data: st.DataObject, message: Any, strings: list[str], depth: int = 0) -> None:
    """Give some fields of `message` (a valid request) random values of their type, nested messages too."""
    for fd in message.DESCRIPTOR.fields:
        if not data.draw(st.booleans()):
            continue
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            entry = fd.message_type.fields_by_name
            container = getattr(message, fd.name)
            for key in data.draw(st.lists(_scalar(entry["key"], strings), max_size=3)):
                if entry["value"].message_type is None:
                    container[key] = data.draw(_scalar(entry["value"], strings))
        elif fd.message_type is not None:
            if depth < 2:
                children = [getattr(message, fd.name)] if not _repeated(fd) else [getattr(message, fd.name).add()
                                                                                  for _ in range(2)]
                for child in children:
                    _randomize(data, child, strings, depth + 1)
        elif _repeated(fd):
            getattr(message, fd.name)[:] = data.draw(st.lists(_scalar(fd, strings), max_size=6))
        else:
            setattr(message, fd.name, data.draw(_scalar(fd, strings)))


def _repeated(fd: FieldDescriptor) -> bool:
    return fd.is_repeated


def _mutate(data: st.DataObject, seed: bytes) -> bytes:
    """A valid request's bytes with a few bytes flipped, inserted or cut."""
    out = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "cut", "truncate"]))
        pos = data.draw(st.integers(0, len(out)))
        if op == "flip" and out:
            out[min(pos, len(out) - 1)] ^= data.draw(st.integers(1, 255))
        elif op == "insert":
            out[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "cut":
            del out[pos:pos + data.draw(st.integers(1, 8))]
        else:
            del out[pos:]
    return bytes(out)


def draw_request(data: st.DataObject, target: Target, method: str) -> bytes:
    seeds = target.seeds.get(method) or [b""]
    kind = data.draw(st.sampled_from(["random", "mutated", "fields"]))
    if kind == "random":
        return data.draw(st.binary(max_size=256))
    seed = data.draw(st.sampled_from(seeds))
    if kind == "mutated":
        return _mutate(data, seed)
    desc = target.service.methods_by_name[method].input_type
    message = _message_class(desc).FromString(seed)
    _randomize(data, message, target.strings)
    return message.SerializeToString()


def _message_class(desc) -> type:
    for module in (ps_pb2, scheduler_pb2, exchange_pb2, common_pb2):
        if desc.file.name == module.DESCRIPTOR.name:
            return getattr(module, desc.name)
    raise LookupError(desc.full_name)


def draw_payload(data: st.DataObject, target: Target, method: str) -> list[bytes]:
    """One request; for a request stream (Chunked), the chunks of a fuzzed request of another method or random
    chunk messages."""
    if not target.service.methods_by_name[method].client_streaming:
        return [draw_request(data, target, method)]
    unary = [m for m in target.methods() if not target.service.methods_by_name[m].client_streaming]
    inner = data.draw(st.sampled_from(unary))
    chunks = [c.SerializeToString() for c in split_message(inner, draw_request(data, target, inner),
                                                           data.draw(st.sampled_from([7, 64, 4096])))]
    return data.draw(st.one_of(st.just(chunks), st.lists(st.binary(max_size=64), max_size=4),
                               st.just(chunks).map(lambda c: [_mutate(data, m) for m in c][:5])))


def fuzz(target: Target, method: str) -> None:
    """Fuzz one method for FUZZ's examples, then check that the server still serves."""
    with make_channel(target.address) as channel:
        @FUZZ
        @given(st.data())
        def run(data: st.DataObject) -> None:
            payload = draw_payload(data, target, method)
            authenticated = data.draw(st.integers(0, 7)) > 0  # one call in 8 without the token, or a wrong one
            metadata = token_metadata(target.token) if authenticated else data.draw(st.sampled_from(
                [(), token_metadata("wrong"), token_metadata(target.token + "x")]))
            code, details = call_raw(channel, target, method, payload, metadata)
            check_answer(method, payload, code, details, authenticated)

        run()
    target.still_serving()


def _names(target: Target) -> list[str]:
    # DropTable last: its seeds drop the table the other methods' seeds name
    return sorted(target.methods(), key=lambda m: m == "DropTable")


# -- the parameter server --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ps_target(module_cluster_factory) -> Target:
    cluster = module_cluster_factory(num_ps=1, num_workers=1, ram_mb=4, page_kb=64, token=TOKEN)
    client = PSClient(cluster.addresses, token=TOKEN)
    canary = client.dense_table("canary", CANARY.shape, init=Zeros())
    canary.push_all(CANARY, mode="assign")
    fuzzed = client.sparse_table("fuzzed", dim=4, optimizer=SGD(lr=0.1))
    fuzzed.pull(np.arange(4))
    keys, values = np.array([1, 2, 3], np.int64), np.ones((3, 4), np.float32)
    table_spec = ps_pb2.TableSpec(name="fuzzed-2", kind=ps_pb2.SPARSE, dtype="float32", dim=4, num_shards=1,
                                  optimizer=ps_pb2.OptimizerSpec(name="sgd", params={"lr": 0.1}))
    seeds = {
        "CreateTable": [ps_pb2.CreateTableRequest(spec=table_spec, shard=0).SerializeToString()],
        "DropTable": [ps_pb2.DropTableRequest(name="fuzzed-2").SerializeToString()],
        "Pull": [ps_pb2.PullRequest(table="fuzzed", keys=encode_keys(keys)).SerializeToString(),
                 ps_pb2.PullRequest(table="canary", keys=encode_keys(keys), read_only=True).SerializeToString()],
        "Push": [encode_push_request("fuzzed", keys, values, ps_pb2.GRADIENT, 0),
                 encode_push_request("fuzzed", keys, values, ps_pb2.ADD, 0, lr_scale=0.5)],
        "Call": [ps_pb2.PsfRequest(table="fuzzed", name="norm").SerializeToString(),
                 ps_pb2.PsfRequest(table="fuzzed", name="topk", args={"k": "2"}).SerializeToString(),
                 ps_pb2.PsfRequest(table="fuzzed", name="axpy", args={"a": "1"},
                                   tensors=[encode_array(np.ones((2, 4), np.float32))]).SerializeToString()],
        "Clock": [ps_pb2.ClockRequest(worker=0, clock=1, timeout_s=1.0).SerializeToString()],
        "GetClock": [b""], "Snapshot": [b""], "Stats": [b""], "Health": [b""],
    }

    def still_serving() -> None:
        np.testing.assert_array_equal(canary.pull_all(), CANARY)
        assert client.health()[0].status == "SERVING"

    try:
        yield Target(cluster.addresses[0], ps_pb2.DESCRIPTOR.services_by_name["ParameterServer"], seeds,
                     still_serving, strings=["fuzzed", "fuzzed-2"])
    finally:
        client.close()


@pytest.mark.parametrize("method", _names(Target("", ps_pb2.DESCRIPTOR.services_by_name["ParameterServer"], {},
                                                  lambda: None)))
def test_ps_answers_fuzzed_requests_with_precise_statuses(ps_target, method):
    fuzz(ps_target, method)


# -- the scheduler ---------------------------------------------------------------------------------------------------
def _manual_spec(run_root: Path) -> dict:
    """examples/ctr.yaml for the manual launcher (nothing is started) with its runs under run_root."""
    spec = yaml.safe_load((Path(__file__).parents[1] / "examples" / "ctr.yaml").read_text())
    spec["cluster"]["launcher"] = "manual"
    spec["storage"]["dir"] = str(run_root)
    return spec


@pytest.fixture(scope="module")
def scheduler_target(module_scheduler_factory, tmp_path_factory) -> Target:
    sched = module_scheduler_factory("fuzz")
    runs = tmp_path_factory.mktemp("fuzz-runs")
    spec_yaml = yaml.safe_dump(_manual_spec(runs))
    with sched.client() as client:
        active = client.submit(spec_yaml).job_id
        ended = client.submit(spec_yaml).job_id
        client.cancel(ended)
    seeds = {
        "SubmitJob": [scheduler_pb2.SubmitJobRequest(spec_yaml=spec_yaml, launcher="manual",
                                                     run_root=str(runs)).SerializeToString()],
        "GetJob": [scheduler_pb2.JobRef(job_id=active).SerializeToString()],
        "ListJobs": [b""],
        "CancelJob": [scheduler_pb2.JobRef(job_id=ended).SerializeToString()],
        # logs of the ended job only: following an active job's logs rightly streams until it ends
        "GetLogs": [scheduler_pb2.LogsRequest(job_id=ended, source="job").SerializeToString(),
                    scheduler_pb2.LogsRequest(job_id=ended, follow=True).SerializeToString()],
        "Register": [scheduler_pb2.RegisterRequest(job_id=active, role=role, rank=0, address="127.0.0.1:9",
                                                   host="fuzz").SerializeToString() for role in ("ps", "worker")],
        "Heartbeat": [scheduler_pb2.HeartbeatRequest(job_id=active, role="worker", rank=0, step=3, state="RUNNING",
                                                     prometheus="seraphim_steps_total 3\n").SerializeToString()],
        "ReportMetrics": [scheduler_pb2.MetricsReport(job_id=active, rank=0, rows=[scheduler_pb2.MetricRow(
            step=1, seconds=0.5, name="loss", value=0.7)]).SerializeToString()],
        "GetClusterView": [scheduler_pb2.ClusterViewRequest(job_id=active).SerializeToString()],
        "PlanMemory": [scheduler_pb2.MemoryTrace(job_id=ended, lower=[0, 1], upper=[2, 3], size=[64, 32],
                                                 method="best_fit").SerializeToString()],
        "GetMemoryPlan": [scheduler_pb2.MemoryPlanRequest(job_id=ended).SerializeToString()],
    }

    def still_serving() -> None:
        with sched.client() as client:
            assert client.job(active).name == "ctr"
            assert {active, ended} <= {j.job_id for j in client.jobs()}

    yield Target(sched.address, scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"], seeds, still_serving,
                 token=sched.token, strings=[ended, "ps", "worker", "manual", "kubernetes", str(runs)])


@pytest.mark.parametrize("method", [m.name for m in scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].methods])
def test_scheduler_answers_fuzzed_requests_with_precise_statuses(scheduler_target, method):
    fuzz(scheduler_target, method)


def test_logs_name_a_log_never_a_path(scheduler_target):
    ended = scheduler_pb2.JobRef.FromString(scheduler_target.seeds["CancelJob"][0]).job_id
    with make_channel(scheduler_target.address) as channel:
        for source in ("../../scheduler", "/etc/passwd", "job\x00"):
            request = scheduler_pb2.LogsRequest(job_id=ended, source=source).SerializeToString()
            code, details = call_raw(channel, scheduler_target, "GetLogs", [request],
                                     token_metadata(scheduler_target.token))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a log name" in details, (source, code, details)


YAML_VALUES = st.recursive(st.one_of(st.none(), st.booleans(), INTS, FLOATS, st.text(max_size=12)),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                           max_leaves=6)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a nested dict (the places a mutation can hit)."""
    if not isinstance(node, dict):
        return []
    return [p for key, value in node.items() for p in [prefix + (key,), *_paths(value, prefix + (key,))]]


@st.composite
def job_specs(draw: Callable, run_root: Path) -> str:
    """A job spec YAML: a valid one with a few fields replaced, deleted or added, or text that is no spec at all."""
    if draw(st.integers(0, 5)) == 0:
        return draw(st.one_of(st.text(max_size=200), YAML_VALUES.map(yaml.safe_dump)))
    spec = _manual_spec(run_root)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(spec)))
        parent = spec
        for key in path[:-1]:
            parent = parent[key]
        if not isinstance(parent, dict) or path[-1] not in parent:
            continue
        op = draw(st.sampled_from(["replace", "delete", "add"]))
        if op == "replace":
            parent[path[-1]] = draw(YAML_VALUES)
        elif op == "delete":
            del parent[path[-1]]
        else:
            parent[draw(st.text(min_size=1, max_size=8))] = draw(YAML_VALUES)
    spec.setdefault("cluster", {})
    if isinstance(spec["cluster"], dict):  # never start processes: a spec that names a launcher keeps manual
        spec["cluster"]["launcher"] = "manual"
    return yaml.safe_dump(spec)


def test_submit_answers_random_job_specs_with_a_job_or_invalid_argument(scheduler_target, tmp_path):
    with make_channel(scheduler_target.address) as channel:
        submit = channel.unary_unary("/seraphim.scheduler.Scheduler/SubmitJob",
                                     request_serializer=scheduler_pb2.SubmitJobRequest.SerializeToString,
                                     response_deserializer=scheduler_pb2.JobStatus.FromString)

        @FUZZ
        @given(job_specs(tmp_path))
        def run(spec_yaml: str) -> None:
            request = scheduler_pb2.SubmitJobRequest(spec_yaml=spec_yaml, launcher="manual", run_root=str(tmp_path))
            try:
                status = submit(request, metadata=token_metadata(scheduler_target.token), timeout=CALL_TIMEOUT_S)
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details(), \
                    f"spec {spec_yaml!r} got {err.code().name}: {err.details()}"
                return
            assert status.state == scheduler_pb2.PENDING and status.launcher == "manual"

        run()
    scheduler_target.still_serving()


# -- the party exchange of a federated session -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def exchange_target(tmp_path_factory) -> Target:
    """Party "label" of a session with "f1"; the fuzzer calls as anyone (f1 never runs)."""
    run_dir = tmp_path_factory.mktemp("exchange")
    label = GrpcPartyChannel("label", {"label": "127.0.0.1:0", "f1": "127.0.0.1:0"}, "fuzz-session", TOKEN,
                             public_key=b"label key", run_dir=run_dir)
    try:
        key = b"f1 key"
        hello = exchange_pb2.HelloRequest(session_id="fuzz-session", party="f1", peer="label", public_key=key,
                                          fingerprint=fingerprint(key), incarnation=secrets.token_hex(8),
                                          exchange_key=X25519PrivateKey.generate().public_key().public_bytes_raw())
        envelope = exchange_pb2.Envelope(session_id="fuzz-session", sender="f1", receiver="label", tag="x", seq=0,
                                         payload_size=3, payload=b"abc", mac=bytes(32))
        seeds = {"Hello": [hello.SerializeToString()], "Deliver": [envelope.SerializeToString()],
                 "Ping": [exchange_pb2.PingRequest(session_id="fuzz-session", party="f1").SerializeToString()]}

        def still_serving() -> None:
            with make_channel(label.address) as channel:
                ping = channel.unary_unary("/seraphim.exchange.PartyExchange/Ping",
                                           request_serializer=exchange_pb2.PingRequest.SerializeToString,
                                           response_deserializer=exchange_pb2.PingReply.FromString)
                reply = ping(exchange_pb2.PingRequest(session_id="fuzz-session", party="f1"),
                             metadata=token_metadata(TOKEN), timeout=CALL_TIMEOUT_S)
            assert (reply.party, reply.session_id) == ("label", "fuzz-session")

        yield Target(label.address, exchange_pb2.DESCRIPTOR.services_by_name["PartyExchange"], seeds, still_serving,
                     strings=["f1", "label", "fuzz-session"])
    finally:
        label.close()


@pytest.mark.parametrize("method", [m.name for m in exchange_pb2.DESCRIPTOR.services_by_name["PartyExchange"].methods])
def test_party_exchange_answers_fuzzed_requests_with_precise_statuses(exchange_target, method):
    fuzz(exchange_target, method)
