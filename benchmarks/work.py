"""The arithmetic each implementation actually performs, for achieved rates (GFLOP/s and the
share of a GEMM ceiling measured in the same run).

Counts are multiply-adds (one FMA = 2 flop) of the products each implementation issues, read
off its source, not the work a naive formulation would need:

* ``topk_similarity`` / ``knn_graph`` (cpp and numba): row blocks of ``B`` rows; against
  other keys every (query block, key block) tile, ``M N d``; without keys (the symmetric
  self-join) each unordered block pair once, diagonal blocks in full:
  ``d (N^2 + sum_i s_i^2) / 2`` for block sizes ``s_i``, just above ``N (N + 1) / 2 d``;
* FAISS ``IndexFlatIP.search``, the blocked torch search, the published dense path and
  scikit-learn: every query against every key, ``M N d`` (no symmetry);
* ``contrastive_loss`` (cpp, one direction): forward the cross-view tiles in full and the
  intra-view tiles once per unordered block pair, ``(N^2 + S) d`` with
  ``S = (N^2 + sum s_i^2) / 2``; backward recomputes them and multiplies each tile's weights
  into both its row block and (off the intra-view diagonal) its column block:
  ``(4 N^2 + 4 S - sum s_i^2) d`` forward + backward, about ``6 N^2 d``;
* ``contrastive_fusion_loss`` with the fused-view kernel (m views): the ``m^2`` Gram tiles of
  every unordered block pair, ``m^2 S d`` forward, three times that in backward (recomputed
  tiles, row and column products): ``4 m^2 S d`` forward + backward, about ``8 N^2 d`` for two
  views;
* ``contrastive_loss`` on torch_ref and numba: every intra-view and cross-view score in full,
  ``2 N^2 d`` forward, ``8 N^2 d`` forward + backward (scores recomputed, three products);
* the published chunked loss: ``2 N^2 d`` forward (the intra-view and cross-view products of
  every chunk in full), ``6 N^2 d`` forward + backward (each product's two gradient products).

The block size is the one the op runs with here (``micro_fast.tuning``'s measured size for a
problem this large, else the compiled default), rounded up to the kernels' 32-row quantum.
"""

from __future__ import annotations

QUANTUM = 32
DEFAULT_BLOCK = {"topk_similarity": 256, "contrastive": 256, "contrastive_fusion": 128}


def kernel_block(op: str, rows: int) -> int:
    """Rows per tile the cpp kernel of ``op`` uses for a problem of ``rows`` rows."""
    block = None
    try:
        from micro_fast import dispatch

        block = dispatch.plan(op, "cpp", "cpu", rows=rows).block_size
    except Exception:  # noqa: BLE001 - no tuning: the compiled default
        block = None
    block = block or DEFAULT_BLOCK[op]
    return (block + QUANTUM - 1) // QUANTUM * QUANTUM


def _blocks(n: int, block: int) -> list[int]:
    return [min(block, n - i) for i in range(0, n, block)]


def pair_sum(n: int, block: int) -> int:
    """``sum_{i <= j} s_i s_j`` over row blocks: the entries of the unordered block pairs."""
    s = _blocks(n, block)
    return (n * n + sum(x * x for x in s)) // 2


def diag_sum(n: int, block: int) -> int:
    return sum(x * x for x in _blocks(n, block))


def numba_topk_block(n: int) -> int:
    """Rows per tile of the numba top-k self-join of n rows (its own default)."""
    from micro_fast.backends.numba._jit import workers
    from micro_fast.backends.numba.topk import _default_block

    return _default_block(n, n, True, workers())


def topk_macs(m: int, n: int | None, d: int, block: int | None = None,
              backend: str = "cpp") -> int:
    """Multiply-adds of the cpp or numba top-k search (``n=None``: the symmetric self-join of
    m rows, each unordered block pair once)."""
    if n is None:
        if block is None:
            block = (numba_topk_block(m) if backend == "numba"
                     else kernel_block("topk_similarity", m))
        return pair_sum(m, block) * d
    return m * n * d


def dense_macs(m: int, n: int, d: int) -> int:
    """Every query against every key (FAISS flat search, blocked torch, the dense paths)."""
    return m * n * d


def contrastive_macs(n: int, d: int, backward: bool, block: int | None = None) -> int:
    b = block or kernel_block("contrastive", n)
    s, dg = pair_sum(n, b), diag_sum(n, b)
    if not backward:
        return (n * n + s) * d
    return (4 * n * n + 4 * s - dg) * d


def fusion_macs(n: int, d: int, views: int, backward: bool, block: int | None = None) -> int:
    b = block or kernel_block("contrastive_fusion", n)
    s = pair_sum(n, b)
    return (4 if backward else 1) * views * views * s * d


def published_contrastive_macs(n: int, d: int, backward: bool) -> int:
    return (6 if backward else 2) * n * n * d


def blocked_contrastive_macs(n: int, d: int, backward: bool) -> int:
    """torch_ref and numba (one direction): the intra-view and cross-view scores of every row
    block in full, forward and again in backward, and the three weight x feature products."""
    return (8 if backward else 2) * n * n * d


def gflops(macs: float, seconds: float) -> float:
    return 2.0 * macs / seconds / 1e9
