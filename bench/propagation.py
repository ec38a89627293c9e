"""One propagation hop ``Â X`` (r = 0.5 by default) on an R-MAT graph: ours (numba) vs DGL update_all vs scipy.

The graph is Graph500-style R-MAT (a=.57, b=c=.19, d=.05; vertex labels randomly permuted, as Graph500 does),
made undirected, self-loops and repeated edges dropped. Every contender computes the same matrix
``D̃^(r-1) (A+I) D̃^(-r) X`` and is checked equal to ours; edges/s counts the nnz of ``A+I`` (the ``I`` is
implicit in our kernel, explicit in the peers' matrices). DGL runs its fastest of two forms: pre-scaling,
``update_all(copy_u, sum)``, post-scaling; and ``update_all(u_mul_e, sum)`` with the normalized edge weights.
Every contender gets the same thread count; each is warmed up, then timed in --runs interleaved rounds
(median).

    python bench/propagation.py [--scale 20] [--edge-factor 8] [--dim 64] [--r 0.5] [--runs 7] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable

import numpy as np

from common import print_figures


def rmat_edges(scale: int, edge_factor: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Graph500 R-MAT edges (src, dst) over 2^scale nodes as int64, vertex labels permuted; self-loops and repeats
    are left for ``csr_from_edges`` to drop."""
    n, m = 1 << scale, edge_factor << scale
    rng = np.random.default_rng(seed)
    src, dst = np.zeros(m, np.int64), np.zeros(m, np.int64)
    for level in range(scale):
        u = rng.random(m, dtype=np.float32)
        src |= (u >= 0.76).astype(np.int64) << level                       # quadrants c, d (a + b = .76)
        dst |= (((u >= 0.57) & (u < 0.76)) | (u >= 0.95)).astype(np.int64) << level  # quadrants b, d
    perm = rng.permutation(n).astype(np.int64)
    return perm[src], perm[dst]


def with_self_loops(indptr: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR of A + I from the CSR of A (rows sorted, no self-loops): the diagonal inserted in sorted place."""
    n, m = len(indptr) - 1, len(indices)
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    below = indices < rows
    tilde_indptr = indptr + np.arange(n + 1, dtype=np.int64)
    tilde_indices = np.empty(m + n, np.int64)
    tilde_indices[np.arange(m) + rows + ~below] = indices
    tilde_indices[tilde_indptr[:-1] + np.bincount(rows[below], minlength=n)] = np.arange(n, dtype=np.int64)
    return tilde_indptr, tilde_indices


def interleaved_medians(contenders: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    """Median seconds of each contender over `runs` rounds, each round running every contender once (after one
    warm-up call each), so that load from other processes on the host hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(runs):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=20, help="log2 of the node count")
    parser.add_argument("--edge-factor", type=int, default=8, help="R-MAT edges drawn per node before symmetrizing")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--r", type=float, default=0.5)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import numba
    import scipy.sparse as sp
    import torch
    from seraphim.algorithms.gnn.dgl_compat import import_dgl
    from seraphim.algorithms.gnn.graph_io import csr_from_edges
    from seraphim.algorithms.gnn.propagation import normalization, propagate

    dgl = import_dgl()
    import dgl.function as fn
    numba.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    dgl.utils.set_num_threads(args.threads)

    start = time.perf_counter()
    graph = csr_from_edges(*rmat_edges(args.scale, args.edge_factor, args.seed), 1 << args.scale)
    indptr, indices = graph.indptr, graph.indices
    n = graph.num_nodes
    nnz = graph.num_edges + n
    x = np.random.default_rng(args.seed + 1).standard_normal((n, args.dim), dtype=np.float32)
    scales = normalization(graph, args.r)
    row_scale, col_scale = scales
    generate_s = time.perf_counter() - start

    tilde_indptr, tilde_indices = with_self_loops(indptr, indices)
    tilde_rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(tilde_indptr))
    weights = row_scale[tilde_rows] * col_scale[tilde_indices]

    ours_out = np.empty_like(x)
    propagate(graph, x, out=ours_out, scales=scales)
    matrix = sp.csr_matrix((weights, tilde_indices.astype(np.int32), tilde_indptr.astype(np.int32)), shape=(n, n))
    scipy_out = matrix @ x

    g = dgl.graph(("csc", (torch.from_numpy(tilde_indptr), torch.from_numpy(tilde_indices), torch.tensor([], dtype=torch.int64))),
                  num_nodes=n)
    eids = g.edge_ids(torch.from_numpy(tilde_indices), torch.from_numpy(tilde_rows))
    g.edata["w"] = torch.empty(nnz, dtype=torch.float32)
    g.edata["w"][eids] = torch.from_numpy(weights)
    xt, rs, cs = torch.from_numpy(x), torch.from_numpy(row_scale)[:, None], torch.from_numpy(col_scale)[:, None]

    def dgl_scaled() -> torch.Tensor:
        g.srcdata["h"] = xt * cs
        g.update_all(fn.copy_u("h", "m"), fn.sum("m", "h"))
        return g.dstdata["h"] * rs

    def dgl_weighted() -> torch.Tensor:
        g.srcdata["h"] = xt
        g.update_all(fn.u_mul_e("h", "w", "m"), fn.sum("m", "h"))
        return g.dstdata["h"]

    dgl_scaled_out, dgl_weighted_out = dgl_scaled().numpy(), dgl_weighted().numpy()
    for name, other in (("scipy", scipy_out), ("dgl_copy_u", dgl_scaled_out), ("dgl_u_mul_e", dgl_weighted_out)):
        if not np.allclose(ours_out, other, rtol=1e-4, atol=1e-5):
            sys.exit(f"{name} disagrees with ours: max abs diff {np.abs(ours_out - other).max()}")

    seconds = interleaved_medians({
        "ours": lambda: propagate(graph, x, out=ours_out, scales=scales), "scipy": lambda: matrix @ x,
        "dgl_copy_u": dgl_scaled, "dgl_u_mul_e": dgl_weighted}, args.runs)
    ours_s, scipy_s, dgl_scaled_s, dgl_weighted_s = (seconds[k] for k in ("ours", "scipy", "dgl_copy_u", "dgl_u_mul_e"))
    dgl_s = min(dgl_scaled_s, dgl_weighted_s)
    print_figures({
        "nodes": n, "edges_without_self_loops": graph.num_edges, "nnz_a_plus_i": nnz, "dim": args.dim,
        "r": args.r, "numba_threads": numba.get_num_threads(), "torch_threads": torch.get_num_threads(),
        "dgl_omp_threads": dgl.utils.get_num_threads(), "generate_s": generate_s,
        "ours_s": ours_s, "scipy_s": scipy_s, "dgl_copy_u_s": dgl_scaled_s, "dgl_u_mul_e_s": dgl_weighted_s,
        "ours_edges_per_s": nnz / ours_s, "scipy_edges_per_s": nnz / scipy_s,
        "dgl_edges_per_s": nnz / dgl_s,
        "ratio_vs_dgl": dgl_s / ours_s, "ratio_vs_scipy": scipy_s / ours_s,
    })


if __name__ == "__main__":
    main()
