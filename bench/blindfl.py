"""BlindFL MatMul source layer, one training epoch: ours against a straightforward per-element ``phe`` implementation
of the same protocol, measured in one run, each party in its own process (as parties run on their own machines).

Setup: a label party and one feature party, each with ``--features`` dense features (standardized normals), 2048-bit
keys. Both implementations run the same protocol: the weights shared as U + [[V]] (the peer's key), masked encrypted
products re-randomised before sending, decrypted masked shares, plaintext shares T, encrypted gradients
[[-lr·dZ]], homomorphic updates of [[V]]; fixed-point encodings (features 2^-16, gradients 2^-32). Two
configurations of the layer's output width H:

- ``h1``: logistic regression (H = 1), batch ``--batch``, 4 timed steps;
- ``h{hidden}``: a Hetero-NN bottom layer (H = ``--hidden``, 16; batch 256, 2 timed steps), the kind of model
  FATE's published epoch time is for; ``ratio_vs_naive_phe`` and ``ours_epoch_100k_est_s`` are this configuration's.

- **ours**: ``blindfl.MatMulSourceLayer`` (bit-sliced multi-exponentiation products over numpy object arrays, slots
  packed by columns and rows folded into one ciphertext before re-randomisation and decryption, the label party's
  gradient randomness and each party's share re-randomisation from pools with one background process each, at a
  lower priority), timed steps after one warm-up step. The pools are emptied when the timing starts, so values
  made before it cannot flatter the figure; their refill during the timing is counted, which understates a
  steady state a little.
- **naive phe**: one ``phe.EncryptedNumber`` per value, per-element multiply/add, ``obfuscate()`` and ``decrypt``
  per value, ``encrypt`` per gradient value. It runs a few samples (one step); its per-sample time does not depend
  on the batch size (every operation is per element), so samples/s is extrapolated from that subset.

The machine is shared and its load varies: ours and naive run in alternating rounds (``--rounds``) and each reports
its best round. Printed next to ours: the estimated epoch for 100k samples × ``--features`` per party, and FATE's
published 347 s/epoch (FATE v1.11.4 Hetero-NN with its HE interactive layer, 100k rows, guest 30 and host 300
features, 2 hosts × 16 cores: another machine and model, for scale only); then the Paillier primitives of
``bench/paillier_primitives.py`` (incl. ``ratio_encrypt_vs_heu``).

    python bench/blindfl.py [--features 100] [--hidden 16] [--batch 512] [--rounds 2] [--bits 2048]
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing as mp
import os
import pickle
import queue
import time

import numpy as np
from phe import EncodedNumber, EncryptedNumber, paillier

from common import print_figures
from paillier_primitives import primitive_figures
from seraphim.algorithms.vfl import paillier as he
from seraphim.algorithms.vfl.blindfl import MatMulSourceLayer, PartyKeys, Precision

LABEL, FEATURE = "label", "f1"
FATE_HETERO_NN_EPOCH_S = 347.0  #: FATE v1.11.4 Hetero-NN, HE interactive layer, 100k rows (doc/2.0/fate/performance.md)
LR = 0.1
_PREC = Precision()


class PipeChannel:
    """A PartyChannel between processes: one inbox queue per party, messages demultiplexed by (peer, tag)."""

    def __init__(self, party: str, inboxes: dict[str, mp.Queue]) -> None:
        self.party, self._inboxes = party, inboxes
        self._pending: dict[tuple[str, str], collections.deque] = collections.defaultdict(collections.deque)

    def peers(self) -> list[str]:
        return [p for p in self._inboxes if p != self.party]

    def send(self, peer: str, tag: str, payload: bytes) -> None:
        self._inboxes[peer].put((self.party, tag, bytes(payload)))

    def recv(self, peer: str, tag: str, timeout_s: float = 600.0) -> bytes:
        deadline = time.monotonic() + timeout_s
        while not self._pending[(peer, tag)]:
            try:
                sender, got, payload = self._inboxes[self.party].get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"{self.party} waited {timeout_s} s for {tag} from {peer}") from None
            self._pending[(sender, got)].append(payload)
        return self._pending[(peer, tag)].popleft()

    def close(self) -> None:
        pass


def _data(samples: int, features: int, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    x = {p: rng.normal(size=(samples, features)) for p in (LABEL, FEATURE)}
    w = rng.normal(size=features) / np.sqrt(features)
    y = (rng.random(samples) < 1 / (1 + np.exp(-(x[LABEL] @ w + x[FEATURE] @ w)))).astype(np.float64)
    return x, y


# ------------------------------------------------------------------------------------------------------- ours


def _ours_party(name: str, keys: dict, inboxes: dict, features: int, h: int, batch: int, steps: int,
                he_processes: int, results: mp.Queue) -> None:
    x, y = _data(batch * (steps + 1), features)
    chan = PipeChannel(name, inboxes)
    peer = FEATURE if name == LABEL else LABEL
    pk = PartyKeys(keys[name][1], {peer: keys[peer][0]}, pool_processes=1, he_processes=he_processes)
    layer = MatMulSourceLayer("bench", chan, pk, LABEL, {LABEL: features, FEATURE: features}, h, precision=_PREC)
    layer.setup()
    start = 0.0
    for s in range(steps + 1):
        if s == 1:
            pk.drain_pools()
            start = time.perf_counter()
        rows = slice(s * batch, (s + 1) * batch)
        z = layer.forward(x[name][rows])
        if name == LABEL:
            layer.backward(_grad(z, y[rows], 0), LR)
        else:
            layer.backward()
    results.put((name, time.perf_counter() - start))
    pk.close()


# ------------------------------------------------------------------------------------------------- naive phe


def _pk(n: int) -> paillier.PaillierPublicKey:
    return paillier.PaillierPublicKey(int(n))


def _sk(key: he.PrivateKey) -> paillier.PaillierPrivateKey:
    return paillier.PaillierPrivateKey(_pk(key.public.n), int(key.p), int(key.q))


class NaivePheLayer:
    """The same protocol with one phe EncryptedNumber per value (no packing, no pools, no batched products)."""

    def __init__(self, chan: PipeChannel, own: he.PrivateKey, peer: he.PublicKey, is_label: bool, d: int,
                 h: int) -> None:
        self.chan, self.is_label, self.d, self.h = chan, is_label, d, h
        self.sk, self.pub, self.peer_pub = _sk(own), _pk(own.public.n), _pk(peer.n)
        self.peer = FEATURE if is_label else LABEL
        self.share_bits = _PREC.scales().share_bits
        self.z_scale = 2.0 ** _PREC.scales().z
        self.rng = np.random.default_rng()

    def _send(self, tag: str, values: list) -> None:
        self.chan.send(self.peer, tag, pickle.dumps(values))

    def _recv(self, tag: str) -> list:
        return pickle.loads(self.chan.recv(self.peer, tag))

    def _encode_x(self, v: float) -> EncodedNumber:
        return EncodedNumber.encode(self.peer_pub, float(v), precision=2.0 ** -_PREC.feature_bits)

    def setup(self) -> None:
        std = 0.01 / np.sqrt(2)
        self.u = self.rng.normal(0.0, std, (self.d, self.h))
        v = [[self.pub.encrypt(float(a), precision=2.0 ** -_PREC.scales().w) for a in row]
             for row in self.rng.normal(0.0, std, (self.d, self.h))]
        self._send("init", [[(c.ciphertext(), c.exponent) for c in row] for row in v])
        self.v = [[EncryptedNumber(self.peer_pub, c, e) for c, e in row] for row in self._recv("init")]

    def _masked(self, x: np.ndarray) -> tuple[list, np.ndarray]:
        out, masks = [], np.empty((len(x), self.h), dtype=object)
        for b, row in enumerate(x):
            xs = [self._encode_x(v) for v in row]
            cts = []
            for k in range(self.h):
                acc = None
                for d in range(self.d):
                    term = self.v[d][k] * xs[d]
                    acc = term if acc is None else acc + term
                masks[b, k] = int(he.random_mask(1, self.share_bits)[0])
                acc = acc + EncodedNumber(self.peer_pub, (-masks[b, k]) % self.peer_pub.n, acc.exponent)
                acc.obfuscate()
                cts.append((acc.ciphertext(), acc.exponent))
            out.append(cts)
        return out, masks

    def _open(self, msg: list) -> np.ndarray:
        n = self.pub.n
        vals = [[self.sk.raw_decrypt(c) for c, _ in row] for row in msg]
        return np.array([[v - n if v > n // 2 else v for v in row] for row in vals], dtype=object)

    def _plain(self, x: np.ndarray) -> np.ndarray:
        return np.array([[int(round(float(v) * self.z_scale)) for v in row] for row in x @ self.u], dtype=object)

    def forward(self, x: np.ndarray) -> np.ndarray | None:
        self.x = x
        shares, masks = self._masked(x)
        self._send("share", shares)
        own = self._plain(x) + masks + self._open(self._recv("share"))
        if not self.is_label:
            self._send("t", own.tolist())
            return None
        total = own + np.array(self._recv("t"), dtype=object)
        return np.array([[float(v) / self.z_scale for v in row] for row in total])

    def backward(self, grad: np.ndarray | None = None) -> None:
        if self.is_label:
            enc = [[self.pub.encrypt(float(-LR * g), precision=2.0 ** -_PREC.grad_bits) for g in row] for row in grad]
            self._send("grad", [[(c.ciphertext(), c.exponent) for c in row] for row in enc])
            self.u -= LR * self.x.T @ grad
            return
        g = [[EncryptedNumber(self.peer_pub, c, e) for c, e in row] for row in self._recv("grad")]
        for d in range(self.d):
            xs = [self._encode_x(self.x[b, d]) for b in range(len(g))]
            for k in range(self.h):
                upd = None
                for b in range(len(g)):
                    term = g[b][k] * xs[b]
                    upd = term if upd is None else upd + term
                self.v[d][k] = self.v[d][k] + upd


def _grad(z: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """dL/dZ of the log-loss through a fixed random readout of the H outputs (H = 1: logistic regression)."""
    readout = np.random.default_rng(seed).normal(size=z.shape[1]) if z.shape[1] > 1 else np.ones(1)
    p = 1 / (1 + np.exp(-(z @ readout)))
    return np.outer((p - y) / len(y), readout)


def _naive_party(name: str, keys: dict, inboxes: dict, features: int, h: int, batch: int, results: mp.Queue) -> None:
    x, y = _data(batch, features, seed=1)
    peer = FEATURE if name == LABEL else LABEL
    layer = NaivePheLayer(PipeChannel(name, inboxes), keys[name][1], keys[peer][0], name == LABEL, features, h)
    layer.setup()
    start = time.perf_counter()
    z = layer.forward(x[name])
    if name == LABEL:
        layer.backward(_grad(z, y, 0))
    else:
        layer.backward()
    results.put((name, time.perf_counter() - start))


# ------------------------------------------------------------------------------------------------------- run


def _run_parties(target, keys: dict, *args) -> float:
    """Start one process per party, return the slowest party's timed seconds."""
    ctx = mp.get_context("fork")
    inboxes = {p: ctx.Queue() for p in (LABEL, FEATURE)}
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(p, keys, inboxes, *args, results)) for p in (LABEL, FEATURE)]
    for proc in procs:
        proc.start()
    try:
        times = dict(results.get(timeout=1800) for _ in procs)
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
    return max(times.values())


def _measure(keys: dict, args: argparse.Namespace, h: int, batch: int, steps: int, naive_batch: int) -> dict:
    """Alternating rounds of ours and naive for output width h; the best round of each."""
    ours, naive = [], []
    for _ in range(args.rounds):
        seconds = _run_parties(_ours_party, keys, args.features, h, batch, steps, args.he_processes)
        ours.append(batch * steps / seconds)
        naive.append(naive_batch / _run_parties(_naive_party, keys, args.features, h, naive_batch))
    ours_sps, naive_sps = max(ours), max(naive)
    return {f"h{h}_ours_samples_per_round": batch * steps, f"h{h}_ours_samples_per_s": ours_sps,
            f"h{h}_naive_phe_samples_per_round": naive_batch, f"h{h}_naive_phe_samples_per_s_extrapolated": naive_sps,
            f"h{h}_ratio_vs_naive_phe": ours_sps / naive_sps, f"h{h}_ours_epoch_100k_est_s": 100_000 / ours_sps,
            f"h{h}_naive_phe_epoch_100k_est_s": 100_000 / naive_sps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=100, help="dense features per party")
    parser.add_argument("--hidden", type=int, default=16, help="output width of the Hetero-NN-like configuration")
    parser.add_argument("--batch", type=int, default=512, help="batch of the LR (H = 1) configuration")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of ours and naive; best counts")
    parser.add_argument("--he-processes", type=int, default=0, help="product processes per party (ours)")
    parser.add_argument("--bits", type=int, default=2048)
    parser.add_argument("--primitives-n", type=int, default=32, help="ciphertexts per primitive measurement")
    args = parser.parse_args()

    keys = {p: he.generate_keypair(args.bits) for p in (LABEL, FEATURE)}
    figures = {"key_bits": args.bits, "features_per_party": args.features, "cpu_cores": os.cpu_count() or 0}
    figures |= _measure(keys, args, 1, args.batch, 4, 16)
    figures |= _measure(keys, args, args.hidden, 256, 2, 2)
    h = args.hidden
    figures |= {"ratio_vs_naive_phe": figures[f"h{h}_ratio_vs_naive_phe"],
                "ours_epoch_100k_est_s": figures[f"h{h}_ours_epoch_100k_est_s"],
                "fate_hetero_nn_he_epoch_100k_published_s": FATE_HETERO_NN_EPOCH_S,
                "load_average_1m": os.getloadavg()[0]}
    print_figures(figures)
    print_figures(primitive_figures(args.bits, n=args.primitives_n))


if __name__ == "__main__":
    main()
