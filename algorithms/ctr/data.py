"""Synthetic click logs with a known true model, plus the plain CSV format real click logs arrive in.

Every random draw is a counter-based hash (splitmix64) of (seed, row, field), never a stateful RNG, so
any process can produce any slice of the stream on its own, in any order and in any chunking, and get the
same rows. True weights are hashes of (seed, feature) too, so nobody stores a weight table.

The generative model, per row:
  value_f ~ bounded Zipf(zipf_exponent) over [0, vocab_sizes[f])      (rank 0 is the most frequent)
  feature_f = splitmix64(field salt ^ value_f)                           (a 64-bit feature id)
  key_f = feature_f mod key_space                                        (what models see: hashed, with collisions)
  logit = bias + sum_f w(feature_f) + sum_{f<g} <v(feature_f), v(feature_g)>
  label ~ Bernoulli(sigmoid(logit))
w is normal with a per-field importance; v is a rank-`interaction_rank` normal vector (a factorization-
machine interaction, which a linear model cannot represent but an embedding MLP can). The bias is
calibrated once per spec so that the mean CTR is `target_ctr`.

Sharding: training batch `step` of worker `w` among `n` holds rows [(step*n + w)*B, (step*n + w + 1)*B)
(`worker_batch`): workers read disjoint, interleaved blocks of one stream with no coordination. The held-out
evaluation set is the rows from `EVAL_ROW_OFFSET` on, the same for every worker.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.special import expit, ndtri
from scipy.stats import rankdata

from seraphim.proto.errors import FatalJobError

EVAL_ROW_OFFSET = 1 << 48  # first row of the held-out stream; training never reaches it
CALIBRATION_ROW_OFFSET = 1 << 52  # rows used only to calibrate the bias
_CALIBRATION_ROWS = 1 << 15

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
# Distinct salts keep the hash streams for rows, labels, fields, weights and interactions independent.
_SALT_ROW, _SALT_LABEL, _SALT_FIELD, _SALT_WEIGHT, _SALT_INTER, _SALT_IMPORTANCE = (
    np.uint64(s) for s in (0x1F, 0x2E, 0x3D, 0x4C, 0x5B, 0x6A)
)


def splitmix64(x: np.ndarray | np.uint64) -> np.ndarray:
    """The splitmix64 output function, vectorized over uint64 (wrapping arithmetic is intended)."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def _uniform(bits: np.ndarray) -> np.ndarray:
    """Map 64 random bits to float64 in the open interval (0, 1) (top 53 bits, centred)."""
    return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / (1 << 53))


def _default_vocab_sizes(num_fields: int) -> tuple[int, ...]:
    """Log-spaced from 10^2 to 10^6, like device type ... user id."""
    return tuple(int(v) for v in np.logspace(2, 6, num_fields).round())


class ClickLogSpec(BaseModel):
    """What a click log looks like; frozen and hashable so derived constants can be cached per spec."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_fields: int = Field(16, ge=1, le=1024)
    vocab_sizes: tuple[int, ...] | None = Field(None, description="one size per field; default 10^2..10^6 log-spaced")
    key_space: int = Field(1 << 24, ge=1, le=1 << 62)
    zipf_exponent: float = Field(1.1, gt=0.0, le=10.0)
    seed: int = Field(0, ge=0, lt=1 << 63)
    interaction_rank: int = Field(4, ge=0, le=64)
    linear_scale: float = Field(1.0, ge=0.0, description="std of the linear part of the true logit")
    interaction_scale: float = Field(0.8, ge=0.0, description="std of the pairwise part of the true logit")
    target_ctr: float = Field(0.1, gt=0.0, lt=1.0)

    @model_validator(mode="before")
    @classmethod
    def _fill_vocab(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("vocab_sizes") is None:
            try:
                num_fields = int(data.get("num_fields", 16))
            except (TypeError, ValueError):
                return data  # the num_fields error is reported by field validation
            return {**data, "vocab_sizes": _default_vocab_sizes(max(num_fields, 1))}
        return data

    @model_validator(mode="after")
    def _check_vocab(self) -> "ClickLogSpec":
        if len(self.vocab_sizes) != self.num_fields:
            raise ValueError(
                f"vocab_sizes has {len(self.vocab_sizes)} entries but num_fields is {self.num_fields}; "
                "give exactly one vocabulary size per field"
            )
        bad = [v for v in self.vocab_sizes if not 1 <= v <= 1 << 53]
        if bad:
            raise ValueError(f"vocab_sizes must each be in [1, 2^53] (exact in float64), got {bad[:5]}")
        return self


@dataclass
class ClickBatch:
    """Rows of a click log: hashed keys [n, F] int64, labels [n] float32 in {0, 1}, the true click probability
    [n] float32 (None for logs read from files)."""

    keys: np.ndarray
    labels: np.ndarray
    true_prob: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


@functools.lru_cache(maxsize=64)
def _spec_constants(spec: ClickLogSpec) -> dict[str, np.ndarray | np.uint64 | float]:
    """Per-spec salts and scales, computed once."""
    f = np.arange(spec.num_fields, dtype=np.uint64)
    seed = np.uint64(spec.seed)
    importance = 0.25 + 1.5 * _uniform(splitmix64(splitmix64(seed ^ _SALT_IMPORTANCE) + f))
    importance /= np.sqrt(np.mean(importance**2))
    pairs = spec.num_fields * (spec.num_fields - 1) / 2
    inter_var = spec.interaction_scale / np.sqrt(max(spec.interaction_rank * pairs, 1.0))
    return {
        "field_salt": splitmix64(splitmix64(f + _SALT_FIELD)),  # no seed: like a production feature hasher
        "row_salt": splitmix64(seed ^ _SALT_ROW),
        "label_salt": splitmix64(splitmix64(seed ^ _SALT_LABEL)),
        "weight_salt": splitmix64(seed ^ _SALT_WEIGHT),
        "inter_salt": splitmix64(splitmix64(seed ^ _SALT_INTER) + np.arange(spec.interaction_rank, dtype=np.uint64)),
        "w_std": spec.linear_scale / np.sqrt(spec.num_fields) * importance,
        "v_std": float(np.sqrt(inter_var)),
        "vocab": np.asarray(spec.vocab_sizes, dtype=np.float64),
    }


def zipf_ranks(u: np.ndarray, vocab: np.ndarray, exponent: float) -> np.ndarray:
    """Bounded Zipf by inverse CDF: the power law x^-s on [1, V+1) floored to ranks 0..V-1.

    u: uniforms in (0, 1), any shape broadcasting with vocab. O(1) memory per draw, no per-vocabulary table.
    """
    a = 1.0 - exponent
    if abs(a) < 1e-9:
        x = np.power(vocab + 1.0, u)
    else:
        x = np.power(1.0 + u * (np.power(vocab + 1.0, a) - 1.0), 1.0 / a)
    return np.minimum(np.floor(x) - 1.0, vocab - 1.0).astype(np.uint64)


def _rows(spec: ClickLogSpec, start_row: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keys [n, F] int64, the logit without bias [n] float64 and label uniforms [n] for rows start..start+n."""
    c = _spec_constants(spec)
    row = np.arange(start_row, start_row + n, dtype=np.uint64)
    row_h = splitmix64(row ^ c["row_salt"])
    cell = splitmix64(row_h[:, None] + c["field_salt"][None, :])
    ranks = zipf_ranks(_uniform(cell), c["vocab"], spec.zipf_exponent)
    feature = splitmix64(c["field_salt"][None, :] ^ ranks)
    keys = (feature % np.uint64(spec.key_space)).astype(np.int64)
    logit = (ndtri(_uniform(splitmix64(feature ^ c["weight_salt"]))) * c["w_std"]).sum(axis=1)
    if spec.interaction_rank > 0 and spec.interaction_scale > 0:
        v = ndtri(_uniform(splitmix64(feature[:, :, None] ^ c["inter_salt"]))) * c["v_std"]  # [n, F, r]
        logit += 0.5 * ((v.sum(axis=1) ** 2).sum(axis=1) - (v**2).sum(axis=(1, 2)))
    return keys, logit, _uniform(splitmix64(row_h ^ c["label_salt"]))


@functools.lru_cache(maxsize=64)
def calibrated_bias(spec: ClickLogSpec) -> float:
    """The bias that makes the mean click probability equal target_ctr (bisection over calibration rows)."""
    _, logit, _ = _rows(spec, CALIBRATION_ROW_OFFSET, _CALIBRATION_ROWS)
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if expit(logit + mid).mean() < spec.target_ctr else (lo, mid)
    return 0.5 * (lo + hi)


def generate_batch(spec: ClickLogSpec, start_row: int, n: int) -> ClickBatch:
    """Rows [start_row, start_row + n) of the stream; identical however the stream is chunked.

    Temporaries take about n * num_fields * (interaction_rank + 4) * 8 bytes: use iter_batches for long ranges.
    """
    if start_row < 0 or n < 0:
        raise ValueError(f"start_row and n must be non-negative, got start_row={start_row}, n={n}")
    keys, logit, u = _rows(spec, start_row, n)
    prob = expit(logit + calibrated_bias(spec))
    return ClickBatch(keys=keys, labels=(u < prob).astype(np.float32), true_prob=prob.astype(np.float32))


def iter_batches(spec: ClickLogSpec, start_row: int, stop_row: int, chunk_rows: int = 65536) -> Iterator[ClickBatch]:
    """Rows [start_row, stop_row) in chunks of at most chunk_rows, so memory stays bounded."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    for lo in range(start_row, stop_row, chunk_rows):
        yield generate_batch(spec, lo, min(chunk_rows, stop_row - lo))


def worker_batch(spec: ClickLogSpec, step: int, batch_size: int, worker_id: int, num_workers: int) -> ClickBatch:
    """Training batch `step` of worker `worker_id`: rows [(step*num_workers + worker_id) * batch_size, ...+batch_size)."""
    if not 0 <= worker_id < num_workers:
        raise ValueError(f"worker_id must be in [0, num_workers={num_workers}), got {worker_id}")
    return generate_batch(spec, (step * num_workers + worker_id) * batch_size, batch_size)


def eval_batch(spec: ClickLogSpec, n_eval: int) -> ClickBatch:
    """The held-out set: the first n_eval rows of the evaluation stream, the same for every worker."""
    return generate_batch(spec, EVAL_ROW_OFFSET, n_eval)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula; tied scores get average ranks."""
    labels = np.asarray(labels).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels and scores must have the same length, got {labels.shape[0]} and {scores.shape[0]}")
    pos = labels > 0.5
    n_pos = int(pos.sum())
    n_neg = pos.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs both classes; got {n_pos} positives and {n_neg} negatives")
    rank_sum = rankdata(scores)[pos].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, prob: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities (clipped away from 0 and 1)."""
    p = np.clip(np.asarray(prob, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def bayes_auc(spec: ClickLogSpec, n_eval: int) -> float:
    """AUC of the true probabilities on the held-out set: the ceiling any model can reach there."""
    batch = eval_batch(spec, n_eval)
    return roc_auc(batch.labels, batch.true_prob)


class CSVFormatError(FatalJobError, ValueError):
    """A click-log CSV line is malformed; the message names the file, the line and what was expected."""


def write_csv(path: str | os.PathLike, batch: ClickBatch) -> None:
    """One row per line: the label (0 or 1), then the F hashed keys, comma-separated, no header."""
    table = np.concatenate([batch.labels.astype(np.int64)[:, None], batch.keys.astype(np.int64)], axis=1)
    np.savetxt(path, table, fmt="%d", delimiter=",")


def read_csv(path: str | os.PathLike, num_fields: int | None = None) -> ClickBatch:
    """Read what write_csv writes. num_fields: the expected key count per line (default: the first line's).

    Raises CSVFormatError naming the line number and what was expected for the first malformed line.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # numpy warns on an empty file; we raise instead
            table = np.loadtxt(path, dtype=np.int64, delimiter=",", ndmin=2, comments=None)
    except ValueError:
        _raise_first_error(path, num_fields)
    if table.size == 0:
        raise CSVFormatError(f"{path}: no rows; expected lines of 'label,key_1,...,key_F'")
    if (num_fields is not None and table.shape[1] != num_fields + 1) or (table[:, 0] > 1).any() or (table < 0).any():
        _raise_first_error(path, num_fields)
    return ClickBatch(keys=np.ascontiguousarray(table[:, 1:]), labels=table[:, 0].astype(np.float32))


def _raise_first_error(path: Path, num_fields: int | None) -> NoReturn:
    """Slow path, run only once parsing has failed: find the first bad line and say what is wrong with it."""
    expected = num_fields
    with path.open() as fh:
        for lineno, line in enumerate(fh, start=1):
            text = line.strip()
            if not text:
                continue
            parts = text.split(",")
            expected = len(parts) - 1 if expected is None else expected
            where = f"{path}:{lineno}"
            if len(parts) != expected + 1:
                raise CSVFormatError(
                    f"{where}: expected {expected + 1} comma-separated values (label, then {expected} keys), "
                    f"got {len(parts)}: {text[:80]!r}"
                )
            if parts[0].strip() not in ("0", "1"):
                raise CSVFormatError(f"{where}: the label must be 0 or 1, got {parts[0].strip()!r}")
            for col, part in enumerate(parts[1:], start=2):
                p = part.strip()
                if not (p.isdigit() and int(p) < 1 << 63):
                    raise CSVFormatError(
                        f"{where}, column {col}: a key must be an integer in [0, 2^63), got {p!r}"
                    )
    raise CSVFormatError(f"{path}: could not be read as lines of 'label,key_1,...,key_F' (integers)")
