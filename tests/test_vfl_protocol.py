"""BlindFL's source layers and trainers, every party in its own thread over an in-process channel: the forward
equals X·W, training equals the central plaintext run up to fixed-point error, what crosses between parties is
ciphertexts or masked shares only, tampering is caught, schemas are checked, state resumes."""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Callable

import numpy as np
import pytest
import scipy.sparse as sp

from seraphim.algorithms.vfl import data as D
from seraphim.algorithms.vfl import paillier as P
from seraphim.algorithms.vfl.blindfl import (EmbedSourceLayer, MatMulSourceLayer, PartyKeys, Precision,
                                             PSShareStore, _Packing, ints_from_bytes, ps_store, reveal_weight)
from seraphim.algorithms.vfl.central import CentralModel
from seraphim.algorithms.vfl.local_channel import LocalHub, Message
from seraphim.algorithms.vfl.models import ModelConfig, make_trainer
from seraphim.worker.client import PSClient
from seraphim.worker.party_channel import PartyError, PartyMessageRejected

LABEL = "label"


@pytest.fixture(scope="module")
def keys():
    return {p: P.generate_keypair(512) for p in (LABEL, "f1", "f2")}


def _party_keys(keys, names, p) -> PartyKeys:
    return PartyKeys(keys[p][1], {q: keys[q][0] for q in names if q != p})


def _parallel(names, fn: Callable[[str], object], hub: LocalHub | None = None) -> dict[str, object]:
    """Run fn(party) for every party at once (as separate processes would); re-raise the first error. A party
    that fails closes its channel so the others stop instead of waiting."""
    out: dict[str, object] = {}
    errors: dict[str, BaseException] = {}

    def go(p: str) -> None:
        try:
            out[p] = fn(p)
        except BaseException as exc:  # collected and re-raised below
            errors[p] = exc
            if hub is not None:
                hub.channel(p).close(repr(exc))

    threads = [threading.Thread(target=go, args=(p,)) for p in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise next(iter(errors.values()))
    return out


def _owner_key(layer, keys):
    """The private key that opens ``layer``'s encrypted share (the label party's, or its partner's)."""
    return keys[layer.partner if layer.is_label else LABEL][1]


def _federation(parts, config, keys, **kw):
    names = list(parts)
    hub = LocalHub(names, record=kw.pop("record", False), intercept=kw.pop("intercept", None))
    trainers = _parallel(names, lambda p: make_trainer(hub.channel(p), parts[p], config, keys[p][1],
                                                       {q: keys[q][0] for q in names if q != p}, LABEL, **kw), hub)
    _parallel(names, lambda p: [layer.setup() for layer in trainers[p].layers], hub)
    return hub, trainers


def _weights(trainers, keys) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    for p, t in trainers.items():
        for layer in t.layers:
            if layer.store is not None:
                out.setdefault(layer.name, {})[p] = reveal_weight(layer, _owner_key(layer, keys))
    return out


def _train(trainers, batches, hub=None) -> list[float]:
    losses = _parallel(list(trainers), lambda p: [trainers[p].train_step(s, b).get("loss")
                                                  for s, b in enumerate(batches)], hub)
    return losses[LABEL]


def _batches(n: int, size: int, epochs: int, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    val, train = np.sort(perm[:n // 5]), perm[n // 5:]
    return [np.sort(np.random.default_rng([seed, e]).permutation(train)[i:i + size])
            for e in range(epochs) for i in range(0, len(train), size)], val


@pytest.fixture(scope="module")
def bc_parts():
    return D.breast_cancer_split(LABEL, ["f1"], shuffle=False)


# ------------------------------------------------------------------------------------------- layers alone


def test_forward_and_update_equal_plaintext_dense_sparse_embed(keys):
    names = [LABEL, "f1", "f2"]
    rng = np.random.default_rng(1)
    batch, h = 12, 5
    dims = {LABEL: 4, "f1": 6, "f2": 9}
    x = {p: rng.normal(size=(batch, d)) for p, d in dims.items()}
    x["f2"] = sp.csr_matrix(np.where(rng.random((batch, 9)) < 0.3, x["f2"], 0.0))  # sparse party
    fields, vocab = {LABEL: 2, "f1": 0, "f2": 3}, {LABEL: 7, "f1": 0, "f2": 11}
    codes = {p: rng.integers(0, vocab[p], size=(batch, fields[p])) for p in names}
    hub = LocalHub(names)
    layers = {}

    def build_and_forward(p):
        pk = _party_keys(keys, names, p)
        mm = MatMulSourceLayer("mm", hub.channel(p), pk, LABEL, dims, h, init_std=0.5)
        em = EmbedSourceLayer("em", hub.channel(p), pk, LABEL, vocab, 3, fields=fields, init_std=0.5)
        layers[p] = (mm, em)
        return mm.forward(x[p]), em.forward(codes[p] if vocab[p] else None, batch=batch)

    out = _parallel(names, build_and_forward, hub)
    assert out["f1"] == (None, None) and out["f2"] == (None, None)
    z, e = out[LABEL]
    w = {p: reveal_weight(layers[p][0], _owner_key(layers[p][0], keys)) for p in names}
    dense = {p: np.asarray(sp.csr_matrix(x[p]).todense()) for p in names}
    assert np.allclose(z, sum(dense[p] @ w[p] for p in names), atol=1e-3)  # features at 2^-16
    table = {p: reveal_weight(layers[p][1], _owner_key(layers[p][1], keys)) for p in (LABEL, "f2")}
    want = np.concatenate([table[p][codes[p]].reshape(batch, -1) for p in (LABEL, "f2")], axis=1)
    assert e.shape == (batch, 15) and np.allclose(e, want, atol=1e-9)

    gz, ge = rng.normal(size=z.shape), rng.normal(size=e.shape)
    _parallel(names, lambda p: (layers[p][0].backward(gz, 0.1), layers[p][1].backward(ge, 0.1)) if p == LABEL
              else (layers[p][0].backward(), layers[p][1].backward()), hub)
    for p in names:
        xq = np.rint(dense[p] * 2**16) / 2**16
        new = reveal_weight(layers[p][0], _owner_key(layers[p][0], keys))
        assert np.allclose(new, w[p] - 0.1 * xq.T @ gz, atol=1e-8), p
    for p, g in ((LABEL, ge[:, :6].reshape(-1, 3)), ("f2", ge[:, 6:].reshape(-1, 3))):
        want_table = table[p].copy()
        np.add.at(want_table, codes[p].reshape(-1), -0.1 * g)
        assert np.allclose(reveal_weight(layers[p][1], _owner_key(layers[p][1], keys)), want_table, atol=1e-8)


def test_pools_of_own_and_peer_keys_fill_at_lower_priority_and_drain(keys):
    """Both the own key's pool (gradients) and a peer key's pool (share re-randomisation) fill in background
    processes niced below the party's, so they take idle cores; drain_pools empties them."""
    pk = PartyKeys(keys[LABEL][1], {"f1": keys["f1"][0]}, pool_processes=1)
    try:
        pools = [pk.pool(pk.public, 4), pk.pool(keys["f1"][0], 4)]
        deadline = time.monotonic() + 20
        while any(pool.available() < pool.size for pool in pools) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [pool.available() >= pool.size for pool in pools] == [True, True]
        mine = os.getpriority(os.PRIO_PROCESS, 0)
        for pool in pools:
            assert os.getpriority(os.PRIO_PROCESS, pool._procs[0].pid) == min(19, mine + P._FILL_NICENESS)
        assert pk.drain_pools() >= sum(pool.size for pool in pools)
        ct = keys["f1"][0].encrypt(np.array([5, -7]), pools[1])
        assert (keys["f1"][1].decrypt(ct) == np.array([5, -7], dtype=object)).all()
    finally:
        pk.close()


def test_sparse_inputs_cost_only_their_nonzeros(keys):
    """A batch touching 3 of 5000 features computes 3 ciphertext rows, not 5000: it finishes at once and the
    untouched rows of [[V]] stay bitwise unchanged."""
    names = [LABEL, "f1"]
    dims = {LABEL: 0, "f1": 5000}
    x = sp.csr_matrix((np.array([1.0, -2.0, 0.5]), np.array([7, 4000, 4999]), np.array([0, 2, 2, 3])),
                      shape=(3, 5000))
    hub = LocalHub(names)
    layers = {p: MatMulSourceLayer("s", hub.channel(p), _party_keys(keys, names, p), LABEL, dims, 2)
              for p in names}
    _parallel(names, lambda p: layers[p].setup(), hub)
    before = layers["f1"].store.get(None).values.copy()
    _parallel(names, lambda p: layers[p].forward(x if p == "f1" else None, batch=3), hub)
    _parallel(names, lambda p: layers[p].backward(np.ones((3, 2)), 0.5) if p == LABEL else layers[p].backward(),
              hub)
    after = layers["f1"].store.get(None).values
    changed = np.flatnonzero((after != before).any(axis=1))
    assert changed.tolist() == [7, 4000, 4999]


# ---------------------------------------------------------------------------------------- against central


def test_lr_steps_equal_the_central_run(bc_parts, keys):
    parts = {p: bc_parts[p] for p in (LABEL, "f1")}
    config = ModelConfig(kind="lr", lr=0.2)
    hub, trainers = _federation(parts, config, keys)
    central = CentralModel(parts, LABEL, config, weights=_weights(trainers, keys))
    batches, _ = _batches(len(parts[LABEL]), 32, 1)
    batches = batches[:5]
    fed = _train(trainers, batches, hub)
    cen = [central.train_step(b) for b in batches]
    assert np.allclose(fed, cen, atol=1e-5)
    after = _weights(trainers, keys)["linear"]
    for p, w in central.weights()["linear"].items():
        assert np.allclose(after[p], w, atol=1e-5)


@pytest.mark.parametrize("kind,epochs,lr", [("lr", 4, 0.2), ("mlp", 4, 0.5)])
def test_accuracy_within_one_point_of_central(bc_parts, keys, kind, epochs, lr):
    parts = {p: bc_parts[p] for p in (LABEL, "f1")}
    config = ModelConfig(kind=kind, lr=lr, hidden=(4,))
    hub, trainers = _federation(parts, config, keys)
    central = CentralModel(parts, LABEL, config, weights=_weights(trainers, keys))
    batches, val = _batches(len(parts[LABEL]), 64, epochs)
    fed_losses = _train(trainers, batches, hub)
    for b in batches:
        central.train_step(b)
    fed = _parallel(list(parts), lambda p: trainers[p].evaluate(val), hub)
    assert fed["f1"] == {}
    want = central.evaluate(val)
    assert abs(fed[LABEL]["accuracy"] - want["accuracy"]) <= 0.01
    assert abs(fed[LABEL]["auc"] - want["auc"]) <= 0.01
    assert fed[LABEL]["accuracy"] > 0.9 and fed_losses[-1] < fed_losses[0]


def test_wide_and_deep_over_three_parties_equals_central(keys):
    """Click data: categorical fields (Embed), sparse and dense columns (MatMul) at the label party and two feature
    parties; zero-sum masks among the feature parties cancel exactly."""
    parts = D.click_split(LABEL, ["f1", "f2"], samples=300, fields_per_party=2, vocab=8, dense_per_party=2,
                          sparse_dim=10, seed=3)
    rows = D.align_by_ids(parts, LABEL)
    parts = {p: parts[p].subset(rows[p]) for p in parts}
    config = ModelConfig(kind="wide_deep", lr=0.1, hidden=(4,), embedding_dim=2)
    hub, trainers = _federation(parts, config, keys)
    assert [layer.name for layer in trainers[LABEL].layers] == ["wide", "embed", "deep"]
    assert set(trainers["f2"].layers[0].seeds) == {"f1"}
    central = CentralModel(parts, LABEL, config, weights=_weights(trainers, keys))
    batches, val = _batches(len(parts[LABEL]), 40, 2)
    fed = _train(trainers, batches, hub)
    assert np.allclose(fed, [central.train_step(b) for b in batches], atol=1e-5)
    got = _parallel(list(parts), lambda p: trainers[p].evaluate(val), hub)[LABEL]
    want = central.evaluate(val)
    assert abs(got["accuracy"] - want["accuracy"]) <= 0.01 and abs(got["auc"] - want["auc"]) <= 0.01


# ------------------------------------------------------------------------------------------------- privacy


def _patterns(arrays: list[np.ndarray], scales: list[int]) -> set[bytes]:
    """8-byte encodings a leak would show: float64 (both byte orders) and, at each fixed-point scale, int64 (both
    orders), keeping encodings with at least 3 non-zero bytes (round numbers such as 1.0 or 2^16 also occur in
    headers: 0/1 labels and one-hot columns are covered by what feature parties may receive at all)."""
    out: set[bytes] = set()
    for a in arrays:
        v = np.asarray(a, dtype=np.float64).reshape(-1)
        v = v[np.abs(v) > 1e-3]
        out |= {x.tobytes() for x in v.astype("<f8")} | {x.tobytes() for x in v.astype(">f8")}
        for s in scales:
            ints = np.rint(v * 2.0**s)
            ints = ints[(np.abs(ints) >= 2**16) & (np.abs(ints) < 2**62)].astype(np.int64)
            out |= {x.tobytes() for x in ints.astype("<i8")} | {x.tobytes() for x in ints.astype(">i8")}
    return {b for b in out if sum(c != 0 for c in b) >= 3}


def _windows(payload: bytes) -> set[bytes]:
    return {payload[i:i + 8] for i in range(len(payload) - 7)}


def test_messages_are_ciphertexts_or_masked_shares_only(keys):
    names = [LABEL, "f1", "f2"]
    parts = D.click_split(LABEL, ["f1", "f2"], samples=120, fields_per_party=1, vocab=5, dense_per_party=2,
                          sparse_dim=0, seed=5)
    rows = D.align_by_ids(parts, LABEL)
    parts = {p: parts[p].subset(rows[p]) for p in parts}
    config = ModelConfig(kind="lr", lr=0.3)
    hub, trainers = _federation(parts, config, keys, record=True)
    w0 = _weights(trainers, keys)
    batches = [np.arange(0, 30), np.arange(30, 60)]
    grads: list[np.ndarray] = []
    layer = trainers[LABEL].layers[0]
    original = layer.backward
    layer.backward = lambda g, lr: (grads.append(np.array(g)), original(g, lr))[1]
    _train(trainers, batches, hub)
    w1 = _weights(trainers, keys)
    publics = {p: keys[p][0] for p in names}
    sc = layer.scales
    secrets_ = [p.wide().toarray() if sp.issparse(p.wide()) else p.wide() for p in parts.values()]
    secrets_ += [parts[LABEL].labels, *grads, *[0.3 * g for g in grads]]
    secrets_ += [w for ws in (w0, w1) for layer_w in ws.values() for w in layer_w.values()]
    forbidden = _patterns(secrets_, [sc.x, sc.g, sc.w, sc.z])
    kinds = {"cipher": 0, "ints": 0, "json": 0}
    for m in hub.messages:
        assert not (_windows(m.payload) & forbidden), f"{m.tag} from {m.sender} to {m.receiver} holds a secret"
        what = m.tag.rsplit("/", 1)[-1]
        if m.tag in ("blindfl/schema", "blindfl/plan"):
            json.loads(m.payload)  # metadata: widths and the plan, no values
            kinds["json"] += 1
        elif what in ("t", "back"):
            shares = ints_from_bytes(m.payload, _shape(m.payload), sc.share_bits + 40 + 16, m.tag)
            magnitudes = np.array([abs(int(v)).bit_length() for v in shares.reshape(-1)])
            assert np.median(magnitudes) > sc.share_bits + 30, f"{m.tag}: shares are not masked"
            kinds["ints"] += 1
        else:  # share, grad, init, seed: ciphertexts under the receiver's key (shares, seeds) or the sender's
            owner = m.receiver if what in ("share", "seed") else m.sender
            ct = P.CipherTensor.from_bytes(m.payload, publics[owner])
            n = publics[owner].n
            assert all(1 <= int(c) < n * n and int(c) % n != 1 for c in ct.values.reshape(-1)), \
                f"{m.tag}: a ciphertext is trivial (not re-randomised)"
            kinds["cipher"] += 1
        if m.receiver != LABEL:  # feature parties receive nothing but ciphertexts and the plan
            assert what in ("grad", "init", "seed", "share", "plan"), m.tag
    assert kinds["cipher"] > 0 and kinds["ints"] > 0 and kinds["json"] == 4


def _shape(payload: bytes) -> tuple[int, ...]:
    ndim = payload[4]
    return tuple(int.from_bytes(payload[9 + 8 * i:17 + 8 * i], "big") for i in range(ndim))


def test_masked_shares_are_independent_of_what_they_hide(keys):
    """Over many forwards with fresh inputs, the label party's decrypted share of X_A·V_A and the plaintext
    share T_A are uncorrelated with the values they hide (masks of value + 40 bits); the unmasked value would
    correlate perfectly."""
    names = [LABEL, "f1"]
    dims = {LABEL: 0, "f1": 3}
    rng = np.random.default_rng(7)
    hidden, seen, plain, sent = [], [], [], []
    for _ in range(40):
        hub = LocalHub(names, record=True)
        layers = {p: MatMulSourceLayer("m", hub.channel(p), _party_keys(keys, names, p), LABEL, dims, 1,
                                       init_std=1.0) for p in names}
        x = rng.normal(size=(8, 3))
        _parallel(names, lambda p: layers[p].forward(x if p == "f1" else None, batch=8), hub)
        f1 = layers["f1"]
        v = reveal_weight(f1, keys[LABEL][1]) - f1.U
        xq = np.rint(x * 2**16) / 2**16
        share_msg = next(m for m in hub.messages if m.tag.endswith("/share"))
        t_msg = next(m for m in hub.messages if m.tag.endswith("/t"))
        ct = P.CipherTensor.from_bytes(share_msg.payload, keys[LABEL][0])
        share = _Packing(keys[LABEL][0], 1, f1.scales.slot_bits).unrows(keys[LABEL][1].decrypt(ct), 8)
        hidden += (xq @ v).reshape(-1).tolist()
        seen += [float(s) for s in share.reshape(-1)]
        plain += (xq @ f1.U).reshape(-1).tolist()
        sent += [float(t) for t in ints_from_bytes(t_msg.payload, (8, 1), f1._t_bits(), "t").reshape(-1)]
    hidden, seen, plain, sent = map(np.array, (hidden, seen, plain, sent))
    assert np.std(hidden) > 0.5 and np.std(plain) > 0.5
    assert abs(np.corrcoef(hidden, seen)[0, 1]) < 0.25
    assert abs(np.corrcoef(plain, sent)[0, 1]) < 0.25
    z = f1.scales.z  # shares are fixed-point at 2^-z: their spread dwarfs the hidden values' by the 40 mask bits
    assert np.std(seen) / 2.0**z > 2.0**40 * np.std(hidden) and np.std(sent) / 2.0**z > 2.0**40 * np.std(plain)


def test_tampered_or_forged_ciphertexts_are_rejected(keys):
    names = [LABEL, "f1"]
    dims = {LABEL: 2, "f1": 3}
    x = {LABEL: np.ones((4, 2)), "f1": np.ones((4, 3))}

    def flip(m: Message) -> bytes:
        if m.tag.endswith("/share") and m.sender == "f1":
            body = bytearray(m.payload)
            body[-40] ^= 0x10
            return bytes(body)
        return m.payload

    def forge(m: Message) -> bytes:  # a valid ciphertext under the right key, of a share no mask allows
        if m.tag.endswith("/share") and m.sender == "f1":
            ct = P.CipherTensor.from_bytes(m.payload, keys[LABEL][0])
            too_big = 2 ** (Precision().scales().share_bits + 1)
            return keys[LABEL][0].encrypt(np.full(ct.shape, too_big, dtype=object)).to_bytes()
        return m.payload

    def truncate(m: Message) -> bytes:
        return m.payload[:-7] if m.tag.endswith("/share") and m.sender == "f1" else m.payload

    for intercept, match in ((flip, "share"), (forge, "share"), (truncate, "payload")):
        hub = LocalHub(names, intercept=intercept)
        layers = {p: MatMulSourceLayer("m", hub.channel(p), _party_keys(keys, names, p), LABEL, dims, 1,
                                       timeout_s=5.0) for p in names}
        with pytest.raises((PartyMessageRejected, PartyError)) as err:
            _parallel(names, lambda p: (layers[p].forward(x[p]), layers[p].backward(np.ones((4, 1)), 0.1)
                                        if p == LABEL else layers[p].backward()), hub)
        assert isinstance(err.value, PartyMessageRejected) and match in str(err.value)
        # the label party stopped before sending anything derived from the bad share: no gradient went out
        assert not hub._queue(LABEL, "f1", "blindfl/m/grad").qsize()


# ------------------------------------------------------------------------------------- state, stores, data


def test_state_resumes_exactly(bc_parts, keys):
    parts = {p: bc_parts[p] for p in (LABEL, "f1")}
    config = ModelConfig(kind="mlp", lr=0.1, hidden=(4,), top_optimizer="adam", top_lr=0.01)
    hub, trainers = _federation(parts, config, keys)
    batches, _ = _batches(len(parts[LABEL]), 32, 1)
    _train(trainers, batches[:2], hub)
    saved = {p: t.state() for p, t in trainers.items()}
    for state in saved.values():
        assert all(isinstance(v, bytes) or v.dtype != object for v in state.values())
    _train(trainers, batches[2:4], hub)
    straight = _weights(trainers, keys)

    hub2 = LocalHub(list(parts))
    again = _parallel(list(parts), lambda p: make_trainer(hub2.channel(p), parts[p], config, keys[p][1],
                                                          {q: keys[q][0] for q in parts if q != p}, LABEL), hub2)
    for p, t in again.items():
        t.load_state(saved[p])
    _train(again, batches[2:4], hub2)
    resumed = _weights(again, keys)
    for p in parts:
        assert np.allclose(resumed["hidden"][p], straight["hidden"][p], atol=1e-12)


def test_encrypted_share_in_a_ps_bytes_table(cluster_factory, keys):
    """The feature party keeps [[V]] in its PS (a dense bytes table): forward and update equal the in-memory store."""
    cluster = cluster_factory(num_ps=1, num_workers=1, ram_mb=8, page_kb=64)
    names = [LABEL, "f1"]
    dims = {LABEL: 0, "f1": 40}
    rng = np.random.default_rng(2)
    x = sp.csr_matrix(np.where(rng.random((6, 40)) < 0.2, rng.normal(size=(6, 40)), 0.0))
    with PSClient(cluster.addresses) as client:
        hub = LocalHub(names)
        layers = {LABEL: MatMulSourceLayer("ps", hub.channel(LABEL), _party_keys(keys, names, LABEL), LABEL, dims, 3),
                  "f1": MatMulSourceLayer("ps", hub.channel("f1"), _party_keys(keys, names, "f1"), LABEL, dims, 3,
                                          store=ps_store(client))}
        assert isinstance(layers["f1"].store, PSShareStore)
        out = _parallel(names, lambda p: layers[p].forward(x if p == "f1" else None, batch=6), hub)
        w = reveal_weight(layers["f1"], keys[LABEL][1])
        xq = np.rint(x.toarray() * 2**16) / 2**16
        assert np.allclose(out[LABEL], xq @ w, atol=1e-8)
        g = rng.normal(size=(6, 3))
        _parallel(names, lambda p: layers[p].backward(g, 0.1) if p == LABEL else layers[p].backward(), hub)
        assert np.allclose(reveal_weight(layers["f1"], keys[LABEL][1]), w - 0.1 * xq.T @ g, atol=1e-8)
        state = layers["f1"].state()
        layers["f1"].store.put(None, P.CipherTensor(np.full((40, 1), 1, dtype=object), keys[LABEL][0]))
        layers["f1"].load_state(state)
        assert np.allclose(reveal_weight(layers["f1"], keys[LABEL][1]), w - 0.1 * xq.T @ g, atol=1e-8)


def test_party_files_round_trip_and_schema_errors(tmp_path):
    parts = D.click_split(LABEL, ["f1"], samples=50, fields_per_party=2, vocab=6, sparse_dim=5, missing=0.1)
    assert len(parts[LABEL]) == 45 and parts["f1"].labels is None
    back = D.read_party(D.write_party(tmp_path / "l.npz", parts[LABEL]), expect=parts[LABEL].schema)
    assert (back.ids == parts[LABEL].ids).all() and (back.sparse != parts[LABEL].sparse).nnz == 0
    assert (back.categorical == parts[LABEL].categorical).all() and (back.labels == parts[LABEL].labels).all()
    bc = D.breast_cancer_split(LABEL, ["f1", "f2"], missing=0.05)
    assert {p: d.dense.shape[1] for p, d in bc.items()} == {LABEL: 15, "f1": 8, "f2": 7}
    assert len(set(bc[LABEL].ids) & set(bc["f1"].ids)) < 569  # parties lost different rows: PSI has work
    csv_back = D.read_party(D.write_party(tmp_path / "f1.csv", bc["f1"]))
    assert np.allclose(csv_back.dense, bc["f1"].dense) and csv_back.schema == bc["f1"].schema
    cat = D.PartyData(["a", "b"], np.zeros((2, 1)), ("x",), None, np.array([[1], [4]]), (("site", 5),))
    assert D.read_party(D.write_party(tmp_path / "c.csv", cat)).schema == cat.schema
    with pytest.raises(D.SchemaError, match=r"missing \['worst_area'\]"):
        D.read_party(tmp_path / "f1.csv", expect=D.Schema(("worst_area",) + bc["f1"].schema.dense))
    with pytest.raises(D.SchemaError, match="categorical fields"):
        cat.schema.check(D.Schema(("x",), 0, (("site", 6),)))
    with pytest.raises(D.SchemaError, match="codes must be in"):
        D.PartyData(["a"], np.zeros((1, 0)), (), None, np.array([[9]]), (("site", 5),))
    with pytest.raises(D.SchemaError, match="distinct"):
        D.PartyData(["a", "a"], np.zeros((2, 1)))
    (tmp_path / "bad.csv").write_text("id,x\n1,2\n3\n")
    with pytest.raises(D.SchemaError, match="lines"):
        D.read_party(tmp_path / "bad.csv")
    np.savez(tmp_path / "other.npz", ids=np.arange(3))  # an npz, but not one of ours: no schema entry
    with pytest.raises(D.SchemaError, match=r"other.npz is not a party data file: .*schema"):
        D.read_party(tmp_path / "other.npz")


def test_labels_at_a_feature_party_are_refused(keys):
    parts = D.breast_cancer_split(LABEL, ["f1"], shuffle=False)
    parts["f1"] = D.PartyData(parts["f1"].ids, parts["f1"].dense, parts["f1"].dense_names,
                              labels=parts[LABEL].labels)
    hub = LocalHub([LABEL, "f1"])
    with pytest.raises(D.SchemaError, match="holds labels"):
        make_trainer(hub.channel("f1"), parts["f1"], ModelConfig(), keys["f1"][1], {LABEL: keys[LABEL][0]}, LABEL)
