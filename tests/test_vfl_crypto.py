"""BlindFL's cryptography: Paillier (exact integer results of every homomorphic operation), masks, and ECDH-PSI."""

from __future__ import annotations

import time

import numpy as np
import pytest
import rbcl
import scipy.sparse as sp
from gmpy2 import mpz

from seraphim.algorithms.vfl import paillier as P
from seraphim.algorithms.vfl import psi


@pytest.fixture(scope="module")
def keys():
    return P.generate_keypair(512)


@pytest.fixture(scope="module")
def keys1024():
    return P.generate_keypair(1024)


def _obj(a) -> np.ndarray:
    return np.asarray(a).astype(object)


# ------------------------------------------------------------------------------------------------------- keys


def test_keys_have_exact_size_and_serialize(keys):
    pub, priv = keys
    assert pub.bits == 512 and pub.n == priv.p * priv.q
    assert P.PublicKey.from_bytes(pub.to_bytes()) == pub
    assert len(pub.fingerprint()) == 16 and pub.fingerprint() == P.PublicKey(pub.n).fingerprint()
    again = P.PrivateKey.from_bytes(priv.to_bytes())
    assert again.decrypt(pub.encrypt([7, -7])).tolist() == [7, -7]
    with pytest.raises(ValueError, match="even number of bits"):
        P.generate_keypair(256)
    with pytest.raises(ValueError, match="magic"):
        P.PublicKey.from_bytes(priv.to_bytes())


def test_round_trip_signed_big_and_fixed_point(keys):
    pub, priv = keys
    m = np.array([[0, 1, -1], [2**100, -(2**150), int(pub.max_int) - 1]], dtype=object)
    assert (priv.decrypt(pub.encrypt(m)) == m).all()
    ints = np.array([[5, -3], [0, 2**40]], dtype=np.int64)
    assert (priv.decrypt(pub.encrypt(ints)) == _obj(ints)).all()
    fp = P.FixedPoint(24)
    x = np.array([0.5, -1.25, 3.1415926, -1e-6, 0.0])
    back = fp.decode(priv.decrypt(pub.encrypt(fp.encode(x))), 24)
    assert np.allclose(back, x, atol=2.0**-24)
    # a product of two encoded values carries scale 2f, decoded exactly by passing it
    y = np.array([2.0, -0.75, 1.5, 10.0, 4.0])
    prod = pub.encrypt(fp.encode(x)).mul_plain(fp.encode(y))
    assert np.allclose(fp.decode(priv.decrypt(prod), 48), x * y, rtol=1e-6, atol=1e-6)
    assert fp.decode(np.array([2**300], dtype=object), 299)[0] == 2.0


def test_2048_bit_round_trip():
    pub, priv = P.generate_keypair(2048)
    assert pub.bits == 2048 and pub.width == 512
    m = np.array([-(2**64), 12345, 2**1000], dtype=object)
    pool = P.RandomnessPool(pub, 4, processes=0, private_key=priv)
    assert (priv.decrypt(pub.encrypt(m, pool)) == m).all()


def test_plaintext_checks(keys):
    pub, _ = keys
    with pytest.raises(ValueError, match="n/3"):
        pub.encrypt(np.array([pub.max_int], dtype=object))
    with pytest.raises(TypeError, match="FixedPoint"):
        pub.encrypt(np.array([0.5]))
    with pytest.raises(TypeError, match="integers"):
        pub.encrypt(np.array([1, 0.5], dtype=object))


# ------------------------------------------------------------------------------------------- homomorphic ops


def test_elementwise_operations_are_exact(keys):
    pub, priv = keys
    rng = np.random.default_rng(1)
    a = rng.integers(-2**40, 2**40, size=(4, 3))
    b = rng.integers(-2**40, 2**40, size=(4, 3))
    ca, cb = pub.encrypt(a), pub.encrypt(b)
    dec = lambda c: priv.decrypt(c)  # noqa: E731
    assert (dec(ca + cb) == _obj(a + b)).all()
    assert (dec(ca - cb) == _obj(a - b)).all()
    assert (dec(ca.neg()) == _obj(-a)).all()
    assert (dec(ca.add_plain(b)) == _obj(a + b)).all()
    mult = rng.integers(-2**30, 2**30, size=(4, 3))
    assert (dec(ca.mul_plain(mult)) == _obj(a) * _obj(mult)).all()
    col = np.array([[3], [-2], [0], [2**70]], dtype=object)  # broadcast, zero and beyond-int64 multipliers
    assert (dec(ca.mul_plain(col)) == _obj(a) * col).all()
    assert (dec(ca.sum(0)) == _obj(a.sum(0))).all() and (dec(ca.sum(1)) == _obj(a.sum(1))).all()
    assert dec(ca.sum()) == a.sum() and ca.sum().shape == ()
    assert (dec(P.CipherTensor.concat([ca, cb], axis=0)) == _obj(np.concatenate([a, b]))).all()
    assert (dec(ca[[2, 0]]) == _obj(a[[2, 0]])).all() and dec(ca[1, 2]) == a[1, 2]
    assert (dec(ca.T) == _obj(a.T)).all()
    other_pub, _ = P.generate_keypair(512)
    with pytest.raises(ValueError, match="different keys"):
        ca + other_pub.encrypt(b)
    with pytest.raises(TypeError, match="add_plain"):
        ca + b


def _int_matrix(rng, shape, bits, density=1.0):
    x = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), size=shape)
    return np.where(rng.random(shape) < density, x, 0)


def test_matrix_products_dense_and_sparse_are_exact(keys):
    pub, priv = keys
    rng = np.random.default_rng(2)
    x = _int_matrix(rng, (9, 13), 33, density=0.7)
    v = rng.integers(-2**40, 2**40, size=(13, 4))
    cv = pub.encrypt(v)
    expect = _obj(x) @ _obj(v)
    assert (priv.decrypt(P.plain_matmul_cipher(x, cv)) == expect).all()
    xs = sp.csr_matrix(x)
    assert (priv.decrypt(P.sparse_matmul_cipher(xs, cv)) == expect).all()
    # no negative multiplier: unsigned windows, no inverse table
    assert (priv.decrypt(P.plain_matmul_cipher(np.abs(x), cv)) == _obj(np.abs(x)) @ _obj(v)).all()
    # beyond int64 multipliers take the object path
    big = _obj(x) * (2**40)
    assert (priv.decrypt(P.plain_matmul_cipher(big, cv)) == big @ _obj(v)).all()
    g = rng.integers(-2**30, 2**30, size=(9, 4))
    cg = pub.encrypt(g)
    assert (priv.decrypt(P.plain_t_matmul_cipher(x, cg)) == _obj(x).T @ _obj(g)).all()
    assert (priv.decrypt(P.sparse_t_matmul_cipher(xs, cg)) == _obj(x).T @ _obj(g)).all()
    k = rng.integers(-1000, 1000, size=(9, 5))
    assert (priv.decrypt(P.cipher_t_matmul_plain(cg, k)) == _obj(g).T @ _obj(k)).all()
    # an all-zero row and an empty matrix give encryptions of zero
    x[3] = 0
    assert (priv.decrypt(P.sparse_matmul_cipher(sp.csr_matrix(x), cv))[3] == 0).all()
    assert (priv.decrypt(P.sparse_matmul_cipher(sp.csr_matrix((2, 13), dtype=np.int64), cv)) == 0).all()
    with pytest.raises(ValueError, match="do not chain"):
        P.plain_matmul_cipher(x[:, :5], cv)
    with pytest.raises(TypeError, match="FixedPoint"):
        P.plain_matmul_cipher(x.astype(float), cv)


def test_bitsliced_products_equal_straus_and_the_plaintext_product(keys):
    """Dense products go by bit slices over joint tables when cheaper: negative multipliers through the offset,
    tables split into blocks, zero patterns skipped; the ciphertexts equal Straus's (a product mod n² is unique)."""
    pub, priv = keys
    rng = np.random.default_rng(7)
    x = _int_matrix(rng, (40, 23), 20)
    v = rng.integers(-2**40, 2**40, size=(23, 2))
    cv = pub.encrypt(v)
    assert P._bitslice_plan(x, 2)[0] < P._choose_plan(40, 23, x.size, 2, 20, True)[0]  # the path under test
    straus = P._multiexp_block(*np.nonzero(np.ones_like(x)), P._window_digits(x.ravel(), 4, True), True, cv.values,
                               40, 4, False, pub.nsquare)
    for exps in (x, np.abs(x), np.where(rng.random(x.shape) < 0.9, 0, np.abs(x))):
        cost, t, per_block, offset = P._bitslice_plan(exps, 2)
        assert (offset > 0) == bool((exps < 0).any())
        for block in (per_block, 1):  # every group in one table block, or one group per block
            out = P._bitslice_multiexp(exps, cv.values, pub.nsquare, t, block, offset)
            assert (priv.decrypt(P.CipherTensor(out, pub)) == _obj(exps) @ _obj(v)).all()
            if exps is x:
                assert (out == straus).all()
    assert (P.plain_matmul_cipher(x, cv).values == straus).all()


def test_sparse_product_costs_only_nonzeros_and_handles_wide_inputs(keys):
    """One-hot-like rows over 50k features: the columns never touched must not be computed (this would take
    minutes if they were), and untouched rows of X^T G are encryptions of zero."""
    pub, priv = keys
    rng = np.random.default_rng(3)
    rows, d, h, per_row = 40, 50_000, 3, 30
    cols = rng.choice(d, size=(rows, per_row), replace=False)
    where = (np.repeat(np.arange(rows), per_row), cols.ravel())
    signs = rng.choice([-1, 1], size=rows * per_row)
    x = sp.csr_matrix((signs * rng.integers(1, 2**12, size=rows * per_row), where), shape=(rows, d))
    onehot = sp.csr_matrix((np.ones(rows * per_row, dtype=np.int64), where), shape=(rows, d))
    used = np.unique(cols)
    values = np.zeros((d, h), dtype=np.int64)
    values[used] = rng.integers(-2**20, 2**20, size=(len(used), h))
    table = np.empty((d, h), dtype=object)
    table[:] = mpz(1)
    with P.RandomnessPool(pub, 1, processes=0, private_key=priv) as owner_pool:
        table[used] = pub.encrypt(values[used], owner_pool).values
    cv = P.CipherTensor(table, pub)
    start = time.perf_counter()
    out = P.sparse_matmul_cipher(x, cv)
    assert time.perf_counter() - start < 5
    assert (priv.decrypt(out) == _obj(x.toarray() @ values)).all()
    grad = pub.encrypt(rng.integers(-100, 100, size=(rows, h)))
    for xm in (x, onehot):  # signed and unsigned window digits
        xt = P.sparse_t_matmul_cipher(xm, grad)
        assert xt.shape == (d, h)
        untouched = np.setdiff1d(np.arange(d), used)[:50]
        assert (xt.values[untouched] == 1).all()
        assert (priv.decrypt(xt[used]) == _obj(xm.toarray().T[used]) @ priv.decrypt(grad)).all()


def test_hepool_equals_serial(keys1024):
    pub, priv = keys1024
    rng = np.random.default_rng(4)
    x = _int_matrix(rng, (12, 10), 20, density=0.8)
    cv = pub.encrypt(rng.integers(-2**30, 2**30, size=(10, 3)))
    mult = rng.integers(-2**20, 2**20, size=(10, 3))
    with P.HEPool(2) as pool:
        assert (P.plain_matmul_cipher(x, cv, pool).values == P.plain_matmul_cipher(x, cv).values).all()
        assert (P.sparse_matmul_cipher(sp.csr_matrix(x), cv, pool).values
                == P.plain_matmul_cipher(x, cv).values).all()
        assert (cv.mul_plain(mult, pool).values == cv.mul_plain(mult).values).all()
        assert (priv.decrypt(cv, pool) == priv.decrypt(cv)).all()


# -------------------------------------------------------------------------------------------- randomness


def test_rerandomize_changes_bytes_not_plaintext(keys):
    pub, priv = keys
    m = np.array([1, -2, 3, 0])
    with P.RandomnessPool(pub, 16, processes=0) as peer_pool, \
            P.RandomnessPool(pub, 16, processes=0, private_key=priv) as owner_pool:
        c = pub.encrypt(m, owner_pool)
        for pool in (peer_pool, owner_pool, None):
            fresh = c.rerandomize(pool)
            assert (priv.decrypt(fresh) == _obj(m)).all()
            assert fresh.to_bytes() != c.to_bytes()
            assert not (fresh.values == c.values).any()
        taken = np.concatenate([owner_pool.take(8), owner_pool.take(8), peer_pool.take(8)])
        assert len(set(int(v) for v in taken)) == len(taken)  # every r^n handed out once
    # an arithmetic result is deterministic until re-randomised: 0·c is the trivial encryption 1
    assert (c.mul_plain(np.zeros(4, dtype=np.int64)).values == 1).all()
    other_pub, _ = P.generate_keypair(512)
    with pytest.raises(ValueError, match="randomness pool is for key"):
        c.rerandomize(P.RandomnessPool(other_pub, 1, processes=0))


def test_owner_randomness_is_fixed_base_nth_residues(keys):
    """The owner's hs^α values are n-th residues (encryptions of 0), all distinct, from a secret base per source."""
    pub, priv = keys
    first, second = (P._FixedBaseRandomness(pub.n, priv.p, priv.q) for _ in range(2))
    values = first.batch(64) + second.batch(64)
    lam = (priv.p - 1) * (priv.q - 1)
    assert all(pow(v, lam, pub.nsquare) == 1 for v in values)
    assert len(set(values)) == 128 and first.tables[0][0, 1] != second.tables[0][0, 1]
    assert (priv.decrypt(P.CipherTensor(np.array(values, dtype=object), pub)) == 0).all()


def test_randomness_pool_fills_in_background(keys):
    pub, priv = keys
    pool = P.RandomnessPool(pub, 32, processes=1, private_key=priv, chunk=8)
    try:
        deadline = time.monotonic() + 20
        while pool.available() < 32 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool.available() >= 32
        c = pub.encrypt(np.arange(-16, 16), pool)
        assert (priv.decrypt(c) == _obj(np.arange(-16, 16))).all()
        proc = pool._procs[0]
    finally:
        pool.close()
    assert not proc.is_alive()


# ------------------------------------------------------------------------------------------ serialization


def test_serialization_round_trip_and_rejections(keys):
    pub, priv = keys
    m = np.arange(-6, 6).reshape(3, 4)
    c = pub.encrypt(m)
    b = c.to_bytes()
    back = P.CipherTensor.from_bytes(b, pub)
    assert back.shape == (3, 4) and (back.values == c.values).all()
    assert len(b) == P._CT_HEADER.size + 2 * 8 + 12 * pub.width
    scalar = c.sum()
    assert P.CipherTensor.from_bytes(scalar.to_bytes(), pub).shape == ()
    with pytest.raises(ValueError, match="payload"):
        P.CipherTensor.from_bytes(b[:-1], pub)
    with pytest.raises(ValueError, match="truncated"):
        P.CipherTensor.from_bytes(b[:10], pub)
    header = len(b) - 12 * pub.width
    too_big = b[:header] + b"\xff" * pub.width + b[header + pub.width:]
    with pytest.raises(ValueError, match=r"outside \[1, n²\)"):
        P.CipherTensor.from_bytes(too_big, pub)
    zero = b[:header] + bytes(pub.width) + b[header + pub.width:]
    with pytest.raises(ValueError, match="outside"):
        P.CipherTensor.from_bytes(zero, pub)
    with pytest.raises(ValueError, match="magic"):
        P.CipherTensor.from_bytes(b"XXXX" + b[4:], pub)
    other_pub, _ = P.generate_keypair(512)
    with pytest.raises(ValueError, match="under key"):
        P.CipherTensor.from_bytes(b, other_pub)


# ------------------------------------------------------------------------------------------------- masks


def _total_variation(a: np.ndarray, b: np.ndarray, bins: np.ndarray) -> float:
    ha, _ = np.histogram(a, bins)
    hb, _ = np.histogram(b, bins)
    return 0.5 * np.abs(ha / len(a) - hb / len(b)).sum()


def test_masks_hide_the_value_statistically():
    bits, count = 8, 20_000
    masks = P.random_mask(count, bits)
    top = 2 ** (bits + P.STAT_SECURITY_BITS)
    assert all(0 <= v < top for v in masks) and max(masks) > top // 2
    lo, hi = -(2**bits) + 1, 2**bits - 1  # the two most different secrets
    bins = np.linspace(-(2.0**bits), top + 2.0**bits, 17)
    shares_lo = (masks + lo).astype(np.float64)
    shares_hi = (P.random_mask(count, bits) + hi).astype(np.float64)
    assert _total_variation(shares_lo, shares_hi, bins) < 0.06  # sampling noise is ~0.015
    # the check has teeth: masks only as wide as the value separate the two secrets completely
    weak = np.array([int(v) >> P.STAT_SECURITY_BITS for v in P.random_mask(count, bits)], dtype=np.float64)
    weak_bins = np.linspace(lo - 1, 2 * hi + 1, 17)
    assert _total_variation(weak + lo, weak + hi, weak_bins) > 0.9


def test_masked_share_recombines_over_the_integers(keys):
    """BlindFL's step: A sends [[v - ε]] under B's key and keeps ε; B's decrypted share plus ε is v over Z."""
    pub_b, priv_b = keys
    v = np.array([-(2**60), 5, 2**62 - 1], dtype=object)
    eps = P.random_mask(3, 63)
    share_b = priv_b.decrypt(pub_b.encrypt(v).add_plain(-eps).rerandomize(None))
    assert (share_b + eps == v).all()


# ---------------------------------------------------------------------------------------------- packing


def test_slot_packing_survives_linear_operations(keys1024):
    pub, priv = keys1024
    slot_bits = 64
    slots = P.slots_per_ciphertext(pub, slot_bits)
    assert slots == (1024 - 3) // 64
    rng = np.random.default_rng(5)
    a = rng.integers(-2**40, 2**40, size=(6, 4))
    b = rng.integers(-2**40, 2**40, size=(6, 4))
    ca, cb = pub.encrypt(P.pack_slots(a, slot_bits)), pub.encrypt(P.pack_slots(b, slot_bits))
    mult = rng.integers(-2**15, 2**15, size=6)
    out = (ca + cb).mul_plain(mult)
    assert (P.unpack_slots(priv.decrypt(out), 4, slot_bits) == _obj(a + b) * _obj(mult)[:, None]).all()
    x = rng.integers(-2**10, 2**10, size=(3, 6))  # plain @ packed cipher: each slot is its own column
    z = P.unpack_slots(priv.decrypt(P.plain_matmul_cipher(x, ca.reshape(6, 1))), 4, slot_bits)
    assert (z[:, 0, :] == _obj(x) @ _obj(a)).all()
    with pytest.raises(ValueError, match="overflowed"):
        P.unpack_slots(priv.decrypt(ca.mul_plain(np.full(6, 2**30))), 4, slot_bits)


# -------------------------------------------------------------------------------------------------- PSI


def _run_psi(ids_a, ids_b, pool=None):
    a, b = psi.PsiParty(), psi.PsiParty()
    m1_a, m1_b = a.blind(ids_a, pool), b.blind(ids_b, pool)
    m2_a, m2_b = a.reblind(m1_b, pool), b.reblind(m1_a, pool)
    wire = [m1_a, m1_b, m2_a, m2_b]
    return (psi.intersect(a.order, m2_b, m2_a), psi.intersect(b.order, m2_a, m2_b), wire,
            psi.intersection_size(m2_b, m2_a))


def test_psi_finds_the_intersection_and_aligns_rows():
    rng = np.random.default_rng(6)
    common = [f"user-{i}" for i in rng.choice(10**6, size=300, replace=False)]
    only_a = [f"a-{i}" for i in range(400)]
    only_b = [f"b-{i}" for i in range(250)]
    ids_a = list(rng.permutation(common + only_a))
    ids_b = list(rng.permutation(common + only_b))
    rows_a, rows_b, wire, size = _run_psi(ids_a, ids_b)
    assert size == len(rows_a) == len(rows_b) == 300
    assert [ids_a[i] for i in rows_a] == [ids_b[i] for i in rows_b]
    assert set(ids_a[i] for i in rows_a) == set(common)


def test_psi_messages_reveal_no_ids():
    ids_a = [f"alice-{i}" for i in range(200)] + [str(i) for i in range(50)]
    ids_b = [f"bob-{i}" for i in range(200)] + list(range(50))  # ints match their decimal text
    rows_a, rows_b, wire, _ = _run_psi(ids_a, ids_b)
    assert len(rows_a) == 50 and [ids_a[i] for i in rows_a] == [str(ids_b[i]) for i in rows_b]
    hashes = set(psi.hash_to_group(ids_a + ids_b))
    for message in wire:
        assert all(len(p) == psi.POINT_BYTES and rbcl.crypto_core_ristretto255_is_valid_point(p) for p in message)
        assert not hashes & set(message)  # the unblinded hash of an id never travels
        blob = psi.pack_points(message)
        assert b"alice" not in blob and b"bob" not in blob
    m1_a, _, _, m2_b = wire
    # round-1 is shuffled: not in the order of the ids, and a new session blinds the same ids differently
    fresh = psi.PsiParty()
    again = fresh.blind(ids_a)
    assert not set(again) & set(m1_a)
    assert not np.array_equal(fresh.order, np.arange(len(ids_a)))


def test_psi_disjoint_sets_give_an_empty_intersection():
    rows_a, rows_b, _, size = _run_psi([f"x{i}" for i in range(100)], [f"y{i}" for i in range(80)])
    assert size == 0 and len(rows_a) == 0 and len(rows_b) == 0 and rows_a.dtype == np.int64


def test_psi_rejects_bad_input():
    party = psi.PsiParty()
    with pytest.raises(ValueError, match="distinct"):
        party.blind(["a", "b", "a"])
    with pytest.raises(TypeError, match="ids must be"):
        party.blind([1.5])
    with pytest.raises(ValueError, match="not a valid ristretto255"):
        party.reblind([b"\xff" * 32])
    with pytest.raises(ValueError, match="32 bytes"):
        party.reblind([b"short"])
    with pytest.raises(ValueError, match="multiple of 32"):
        psi.unpack_points(b"x" * 33)
    with pytest.raises(ValueError, match="reduced"):
        psi.PsiParty(b"\xff" * 32)


def test_psi_with_process_pool_matches_serial():
    ids_a = [f"id{i}" for i in range(0, 600)]
    ids_b = [f"id{i}" for i in range(300, 900)]
    with P.HEPool(2) as pool:
        rows_a, rows_b, _, size = _run_psi(ids_a, ids_b, pool)
    assert size == 300 and sorted(ids_a[i] for i in rows_a) == sorted(f"id{i}" for i in range(300, 600))
    assert [ids_a[i] for i in rows_a] == [ids_b[i] for i in rows_b]
