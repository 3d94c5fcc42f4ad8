"""The deliberate bugs of the mutation run (``run.py``), one small semantic change each.

Every mutant replaces ``old``, which must occur exactly once in ``file``, by ``new``; the result
compiles and runs, and differs from the original on some input the tests could build (no
equivalent mutants). ``tests`` are the pytest arguments (files and node ids) that should fail
once it is applied, and ``k`` an optional ``-k`` expression narrowing them; both are kept to a
few seconds of tests so that a whole run stays short.

The torch reference backend is the ground truth the other backends are compared with, so a
mutant of it is run with ``torch_ref`` as the only CPU backend (``reference_only``): only
tests that check the reference against an independent formula (a dense product, the
published code, a finite-difference gradient, a known law) can kill it.

Mutants of code the CPU tests never run (``csrc/cuda``, the ``numba_cuda`` backend) are left
out: on a machine without a GPU they would survive for want of a device, not of a test.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    """One deliberate bug: replace ``old`` (exactly one occurrence) by ``new`` in ``file``."""

    id: str
    file: str
    old: str
    new: str
    description: str
    tests: tuple[str, ...]
    k: str | None = None

    @property
    def compiled(self) -> bool:
        """Whether applying it means rebuilding ``micro_fast._C``."""
        return self.file.startswith("csrc/")

    @property
    def reference_only(self) -> bool:
        """Whether its tests run with ``torch_ref`` as the only CPU backend: a bug of the
        reference would otherwise be caught by comparing another backend with it, which shows
        that the two differ, not that the reference is wrong."""
        return self.file == "micro_fast/backends/torch_ref.py"

    def selection(self) -> tuple[str, ...]:
        """The pytest arguments that select its tests."""
        return self.tests + (("-k", self.k) if self.k else ())


TOPK = ("tests/test_topk_similarity.py",)
SPMM = ("tests/test_spmm.py",)
CONTRASTIVE = ("tests/test_contrastive.py",)
FUSION = ("tests/test_contrastive_fusion.py",)
# the op's tests and the fuzzing of the op against its exact oracle
TOPK_OP = TOPK + ("tests/test_fuzz.py::test_topk_similarity",)
METRICS = ("tests/test_metrics.py", "tests/test_fuzz.py::test_full_ranking")

MUTANTS: tuple[Mutant, ...] = (
    # --- C++ kernels: top-k similarity -------------------------------------------------------
    Mutant("cpp-topk-tie-reversed", "csrc/cpu/topk_heap.h",
           "return v > rv || (v == rv && j < rj);",
           "return v > rv || (v == rv && j > rj);",
           "reversed tie rule: equal similarities go to the larger key index", TOPK),
    Mutant("cpp-topk-sort-off-by-one", "csrc/cpu/topk_heap.h",
           "for (int end = n - 1; end > 0; --end) {",
           "for (int end = n - 1; end > 1; --end) {",
           "the final heap sort stops one step early: the two best entries may come out swapped",
           TOPK),
    Mutant("cpp-topk-transposed-exclude-ignored", "csrc/cpu/topk_tile.h",
           "if (val >= cols.thr[j]) heap_offer(cols, j, val, ibase + r, *t.ex);",
           "if (val >= cols.thr[j]) heap_offer(cols, j, val, ibase + r, ExcludeCSR{});",
           "symmetric search: the transposed (column) pairs skip the exclusion mask", TOPK),
    Mutant("cpp-topk-diagonal-tile-twice", "csrc/cpu/topk_similarity.cpp",
           "RowHeaps<T>* cols = (symmetric && bi != bj) ? h : nullptr;",
           "RowHeaps<T>* cols = symmetric ? h : nullptr;",
           "symmetric search: diagonal tiles also feed the column lists, offering every pair "
           "twice", TOPK),
    Mutant("cpp-topk-merge-drops-last-row", "csrc/cpu/topk_similarity.cpp",
           "  for (int64_t r = 0; r < m; ++r) {\n    for (int t = 1; t < threads; ++t) {",
           "  for (int64_t r = 0; r < m - 1; ++r) {\n    for (int t = 1; t < threads; ++t) {",
           "dropped row: the merge of the per-thread lists (and the final sort) skips the last "
           "row", TOPK),
    # --- C++ kernels: CSR products, bipartite graph, sampling, projection ----------------------
    Mutant("cpp-spmm-drops-last-row", "csrc/cpu/spmm.cpp",
           "    fn(int64_t(0), m);",
           "    fn(int64_t(0), m - 1);",
           "dropped row: the one-thread spmm/sddmm range stops one row short", SPMM),
    Mutant("cpp-sddmm-tail-off-by-one", "csrc/cpu/spmm_rows.h",
           "for (; j < d; ++j) s += ar[j] * br[j];",
           "for (; j + 1 < d; ++j) s += ar[j] * br[j];",
           "off-by-one index: sddmm (the values' gradient) drops the last scalar feature", SPMM),
    Mutant("cpp-bipartite-degree-plus-one", "csrc/cpu/bipartite_graph.cpp",
           "T(1) / std::sqrt(deg)",
           "T(1) / std::sqrt(deg + T(1))",
           "wrong degree normalization: 'sym' uses degree + 1", SPMM + ("tests/test_fuzz.py",),
           "bipartite"),
    Mutant("cpp-bipartite-duplicates-not-summed", "csrc/cpu/bipartite_graph.cpp",
           "rval.back() += T(1);",
           "rval.back() = T(1);",
           "repeated (user, item) pairs count once instead of being summed",
           SPMM + ("tests/test_fuzz.py",), "bipartite"),
    Mutant("cpp-sample-edges-uniform-shift", "csrc/cpu/sample_edges.cpp",
           ">> 11) + 0.5)",
           ">> 10) + 0.5)",
           "off-by-one shift: the uniform draw takes 54 bits scaled as 53 (u in (0, 2))",
           ("tests/test_freedom.py",), "sample_edges"),
    Mutant("cpp-project-rows-grad-weight-drops-row", "csrc/cpu/project_rows.cpp",
           "row_products<T>(kern, a.data(), f, b.data(), m, f, d, c.data(), num_threads, true);",
           "row_products<T>(kern, a.data(), f, b.data(), m - 1, f, d, c.data(), num_threads, "
           "true);",
           "dropped row: grad_weight leaves out the last projected row",
           ("tests/test_project_rows.py",)),
    # --- C++ kernels: contrastive losses -------------------------------------------------------
    Mutant("cpp-contrastive-diag-weight-off-by-one", "csrc/cpu/contrastive.cpp",
           "      if (diag)\n        for (int i = 0; i < mb; ++i) e[i * ld + i] = T(0);",
           "      if (diag)\n        for (int i = 0; i + 1 < mb; ++i) e[i * ld + i] = T(0);",
           "backward: the last diagonal pair of a diagonal tile keeps its weight (off by one)",
           CONTRASTIVE),
    Mutant("cpp-contrastive-column-sums-drop-last", "csrc/cpu/contrastive.cpp",
           "    for (int j = 0; j < nb; ++j) cs[j] += col[j];",
           "    for (int j = 0; j + 1 < nb; ++j) cs[j] += col[j];",
           "forward (tau >= 0.05): a tile's column sums skip its last column", CONTRASTIVE),
    Mutant("cpp-contrastive-lse-merge-sign", "csrc/cpu/contrastive.cpp",
           "    s += st * std::exp(mt - m);",
           "    s += st * std::exp(m - mt);",
           "forward (tau < 0.05): the running log-sum-exp rescales a smaller partial the wrong "
           "way", CONTRASTIVE),
    Mutant("cpp-contrastive-intra2-columns-use-lse1", "csrc/cpu/contrastive.cpp",
           "const T* lc = task.kind == kCross ? lse2 : lr;",
           "const T* lc = task.kind == kCross ? lse2 : lse1;",
           "symmetric backward: view 2's intra tiles weight their columns with view 1's "
           "log-sum-exps", CONTRASTIVE),
    Mutant("cpp-fusion-grad-scaled", "csrc/cpu/contrastive_fusion.cpp",
           "alpha[r] = g[r] * inv_tau * T(std::exp(1.0 / tau - double(lse[r])));",
           "alpha[r] = g[r] * inv_tau * T(1.0001) * T(std::exp(1.0 / tau - double(lse[r])));",
           "fused-view backward: every gradient scaled by 1 + 1e-4", FUSION),
    Mutant("cpp-fusion-column-sums-drop-last", "csrc/cpu/contrastive_fusion.cpp",
           "for (int b = 0; b < sp.nb; ++b) rs[b] += col_intra[q][b];",
           "for (int b = 0; b + 1 < sp.nb; ++b) rs[b] += col_intra[q][b];",
           "fused-view forward: off-diagonal tasks drop the last column's intra-view sum",
           FUSION),
    Mutant("cpp-fusion-coef-grad-wrong-view", "csrc/cpu/contrastive_fusion.cpp",
           "for (int b = 0; b < sp.nb; ++b) dc[(sp.j0 + b) * m + k] += col[b];",
           "for (int b = 0; b < sp.nb; ++b) dc[(sp.j0 + b) * m + q] += col[b];",
           "fused-view backward: the coefficients' gradient lands on the wrong view (q for k)",
           FUSION),
    # --- numba kernels -----------------------------------------------------------------------
    Mutant("numba-topk-tie-reversed", "micro_fast/backends/numba/order.py",
           "return v > rv or (v == rv and j < rj)",
           "return v > rv or (v == rv and j > rj)",
           "reversed tie rule: equal similarities go to the larger key index", TOPK),
    Mutant("numba-topk-threshold-armed-early", "micro_fast/backends/numba/topk.py",
           "if n + 1 == k and hv[row, 0] > thr[row]:",
           "if n + 1 == k - 1 and hv[row, 0] > thr[row]:",
           "off by one: a row's threshold is set while its list still lacks one entry, so "
           "the k-th best can be filtered out", TOPK),
    Mutant("numba-topk-sort-off-by-one", "micro_fast/backends/numba/topk.py",
           "for end in range(n - 1, 0, -1):",
           "for end in range(n - 1, 1, -1):",
           "the final heap sort stops one step early: the two best entries may come out swapped",
           TOPK),
    Mutant("numba-topk-merge-drops-last-row", "micro_fast/backends/numba/topk.py",
           "    for r in prange(m):\n        for w in range(1, workers):",
           "    for r in prange(m - 1):\n        for w in range(1, workers):",
           "dropped row: the merge of the per-worker lists (and the final sort) skips the last "
           "row", TOPK),
    Mutant("numba-topk-exclude-last-column", "micro_fast/backends/numba/topk.py",
           "return _in_sorted(ex_idx, ex_ptr[row], ex_ptr[row + 1], col)",
           "return _in_sorted(ex_idx, ex_ptr[row], ex_ptr[row + 1] - 1, col)",
           "exclusion mask off by one: each row's last excluded key is admitted", TOPK),
    Mutant("numba-spmm-skips-first-entry", "micro_fast/backends/numba/sparse.py",
           "        for e in range(indptr[r], indptr[r + 1]):\n            v = values[e]",
           "        for e in range(indptr[r] + 1, indptr[r + 1]):\n            v = values[e]",
           "off-by-one index: spmm skips each row's first stored entry", SPMM),
    Mutant("numba-sddmm-drops-first-feature", "micro_fast/backends/numba/sparse.py",
           "            for j in range(d):\n                s += a[r, j] * b[c, j]",
           "            for j in range(1, d):\n                s += a[r, j] * b[c, j]",
           "off-by-one index: sddmm (the values' gradient) drops the first feature", SPMM),
    Mutant("numba-bipartite-sym-row-degree-twice", "micro_fast/backends/numba/sparse.py",
           "f = scale[r] * scale[indices[e]] if sym else scale[r]",
           "f = scale[r] * scale[r] if sym else scale[r]",
           "wrong degree normalization: 'sym' divides by the row degree twice (rw)",
           SPMM + ("tests/test_fuzz.py",), "bipartite"),
    Mutant("numba-contrastive-diag-block-local", "micro_fast/backends/numba/contrastive.py",
           "s[i, r0 + i] = -np.inf",
           "s[i, i] = -np.inf",
           "forward: the left-out diagonal pair uses the block-local index, not the global one",
           CONTRASTIVE),
    Mutant("numba-contrastive-grad-scaled", "micro_fast/backends/numba/contrastive.py",
           "scale = g[r0 + i] * inv_tau",
           "scale = g[r0 + i] * inv_tau * 1.0001",
           "backward: every weight (so every gradient) scaled by 1 + 1e-4", CONTRASTIVE),
    # --- torch reference backend (the ground truth) --------------------------------------------
    Mutant("ref-topk-tie-reversed", "micro_fast/backends/torch_ref.py",
           "        v, i = torch.sort(sim, dim=1, descending=True, stable=True)\n",
           "        v, i = torch.sort(sim.flip(1), dim=1, descending=True, stable=True)\n"
           "        i = sim.shape[1] - 1 - i\n",
           "reversed tie rule in the reference: equal similarities go to the larger key index",
           TOPK),
    Mutant("ref-topk-padding-index-zero", "micro_fast/backends/torch_ref.py",
           "i = i.masked_fill(v == neg_inf, -1)",
           "i = i.masked_fill(v == neg_inf, 0)",
           "rows short of k admissible keys are padded with index 0 instead of -1", TOPK),
    Mutant("ref-sddmm-grad-scaled", "micro_fast/backends/torch_ref.py",
           "return (a[_rows(indptr)] * b[indices]).sum(dim=1)",
           "return (a[_rows(indptr)] * b[indices]).sum(dim=1) * (1 + 1e-4)",
           "gradient scaled by 1 + 1e-4: the values' gradient of spmm (sddmm)", SPMM),
    Mutant("ref-bipartite-sym-rw-swapped", "micro_fast/backends/torch_ref.py",
           'power = 0.5 if normalization == "sym" else 1.0',
           'power = 0.5 if normalization == "rw" else 1.0',
           "wrong degree normalization: the exponents of 'sym' and 'rw' swapped", SPMM,
           "bipartite"),
    Mutant("ref-sample-edges-skips-smallest", "micro_fast/backends/torch_ref.py",
           "order = torch.sort(keys, stable=True).indices[:m]",
           "order = torch.sort(keys, stable=True).indices[1:m + 1]",
           "off-by-one index: the draw skips the smallest exponential key",
           ("tests/test_freedom.py",), "sample_edges"),
    Mutant("ref-project-rows-grad-weight-drops-row", "micro_fast/backends/torch_ref.py",
           "grad_w = grad.t() @ x.index_select(0, rows)",
           "grad_w = grad[:-1].t() @ x.index_select(0, rows[:-1])",
           "dropped row: grad_weight leaves out the last projected row",
           ("tests/test_project_rows.py",)),
    Mutant("ref-contrastive-grad-scaled", "micro_fast/backends/torch_ref.py",
           "            gy += w_cross.T @ xb",
           "            gy += w_cross.T @ xb * (1 + 1e-4)",
           "gradient scaled by 1 + 1e-4: the cross-view part of the other view's gradient",
           CONTRASTIVE),
    Mutant("ref-contrastive-diag-block-local", "micro_fast/backends/torch_ref.py",
           's[rows, rows + r0] = float("-inf")',
           's[rows, rows] = float("-inf")',
           "forward: the left-out diagonal pair uses the block-local index, not the global one",
           CONTRASTIVE),
    # --- Python op layers ----------------------------------------------------------------------
    Mutant("ops-topk-keys-grad-scaled", "micro_fast/ops/topk_similarity.py",
           "contrib = g.unsqueeze(2) * queries[r0:r1].unsqueeze(1)",
           "contrib = g.unsqueeze(2) * queries[r0:r1].unsqueeze(1) * (1 + 1e-4)",
           "gradient scaled by 1 + 1e-4: the keys' gradient of the top-k values", TOPK_OP),
    Mutant("ops-knn-columns-unsorted", "micro_fast/ops/knn_graph.py",
           "order = torch.argsort(indices, dim=1)",
           "order = torch.arange(k, device=indices.device).expand(n, k)",
           "the kNN graph keeps each row's neighbours in rank order, not sorted by column "
           "(an invalid CSR structure)",
           ("tests/test_fuzz.py::test_knn_graph_values_and_gradients",)),
    Mutant("checks-overflow-limit-too-high", "micro_fast/ops/_checks.py",
           "limit = torch.finfo(queries.dtype).max / 4",
           "limit = torch.finfo(queries.dtype).max * 4",
           "bad input accepted: inner products that overflow pass the magnitude check",
           ("tests/test_fuzz.py::test_topk_similarity",)),
    Mutant("ops-topk-grad-keys-misaligned", "micro_fast/ops/topk_similarity.py",
           "grad_q[r0:r1] = torch.bmm(g.unsqueeze(1), keys[idx]).squeeze(1)",
           "grad_q[r0:r1] = torch.bmm(g.unsqueeze(1), keys[idx.flip(1)]).squeeze(1)",
           "backward: the queries' gradient pairs each value's gradient with another key",
           TOPK_OP),
    Mutant("ops-topk-backward-chunk-boundary", "micro_fast/ops/topk_similarity.py",
           "r1 = min(queries.shape[0], r0 + _BACKWARD_ROWS)",
           "r1 = min(queries.shape[0], r0 + _BACKWARD_ROWS - 1)",
           "dropped row: the backward's row chunks skip the last row of each 4096",
           TOPK_OP),
    Mutant("ops-topk-padding-gets-gradient", "micro_fast/ops/topk_similarity.py",
           "grad_values = grad_values.to(queries.dtype).masked_fill(~valid, 0)",
           "grad_values = grad_values.to(queries.dtype)",
           "backward: padded (-1) entries pass their gradient to key 0", TOPK_OP),
    Mutant("ops-knn-sym-degree-plus-one", "micro_fast/ops/knn_graph.py",
           "dinv = _inverse_power(deg, 0.5)",
           "dinv = _inverse_power(deg + 1, 0.5)",
           "wrong degree normalization: 'sym' uses degree + 1", ("tests/test_knn_graph.py",)),
    Mutant("ops-knn-rw-square-root", "micro_fast/ops/knn_graph.py",
           "return _inverse_power(deg, 1.0).unsqueeze(1) * values",
           "return _inverse_power(deg, 0.5).unsqueeze(1) * values",
           "wrong degree normalization: 'rw' divides by the square root of the degree",
           ("tests/test_knn_graph.py",)),
    Mutant("ops-knn-sym-row-degree-twice", "micro_fast/ops/knn_graph.py",
           "return dinv.unsqueeze(1) * values * dinv_cols",
           "return dinv.unsqueeze(1) * values * dinv.unsqueeze(1)",
           "wrong degree normalization: 'sym' uses the row's degree for the column too",
           ("tests/test_knn_graph.py",)),
    Mutant("ops-contrastive-grad-scaled", "micro_fast/ops/contrastive_loss.py",
           "    return grad1.to(n1.device) - diag_weight * n2, grad2.to(n2.device) - diag_weight"
           " * n1",
           "    return (grad1.to(n1.device) - diag_weight * n2) * (1 + 1e-4), grad2.to(n2.device)"
           " - diag_weight * n1",
           "gradient scaled by 1 + 1e-4: the first view's gradient", CONTRASTIVE),
    Mutant("ops-contrastive-symmetric-diag-once", "micro_fast/ops/contrastive_loss.py",
           "        rows = (rows + lse2 - diag) / 2\n    return rows.mean()",
           "        rows = (rows + lse2) / 2\n    return rows.mean()",
           "symmetric forward: the second direction forgets its positive pair", CONTRASTIVE),
    Mutant("ops-fusion-loss-mean-over-views", "micro_fast/ops/contrastive_fusion.py",
           "loss = (lse - diag).mean(dim=1).sum()",
           "loss = (lse - diag).mean(dim=1).mean()",
           "fused-view loss averaged over the views instead of summed", FUSION),
    Mutant("ops-fusion-shard-grad-not-rescaled", "micro_fast/ops/contrastive_fusion.py",
           'g, kwargs = g * ctx.count, {"shard": ctx.split}',
           'g, kwargs = g, {"shard": ctx.split}',
           "sharded fused-view backward: the gradient share is not scaled by the shard count",
           ("tests/test_sharded_contrastive.py",)),
    Mutant("ops-project-rows-bias-grad-drops-row", "micro_fast/ops/project_rows.py",
           "grad_b = grad.sum(dim=0)",
           "grad_b = grad[:-1].sum(dim=0)",
           "dropped row: the bias gradient leaves out the last projected row",
           ("tests/test_project_rows.py",)),
    Mutant("ops-propagate-mean-off-by-one", "micro_fast/ops/propagate.py",
           "return total / (layers + 1) if total is not None else h",
           "return total / layers if total is not None else h",
           "combine='mean' divides by the number of products, not of layers (layer 0 "
           "forgotten)", SPMM, "propagate"),
    Mutant("ops-spmm-declared-asymmetric-used-as-symmetric", "micro_fast/ops/spmm.py",
           "    if graph.symmetric:\n        return graph.indptr",
           "    if graph.symmetric is not None:\n        return graph.indptr",
           "backward: a graph declared not symmetric (an 'rw' bipartite graph) is used as its "
           "own transpose", SPMM),
    # --- CSRGraph ------------------------------------------------------------------------------
    Mutant("graph-transpose-values-unpermuted", "micro_fast/graph.py",
           "return CSRGraph._from_structure(t, self.values[perm], self.symmetric)",
           "return CSRGraph._from_structure(t, self.values, self.symmetric)",
           "transpose: the values are not permuted into the transpose's entry order",
           ("tests/test_graph.py",)),
    Mutant("graph-double-transpose-wrong-permutation", "micro_fast/graph.py",
           "            inverse[perm] = torch.arange(perm.numel(), device=perm.device)",
           "            inverse = perm.clone()",
           "the transpose's own transpose reuses the permutation instead of its inverse",
           ("tests/test_graph.py",) + SPMM),
    Mutant("graph-from-coo-duplicates-overwrite", "micro_fast/graph.py",
           "values = summed.index_add(0, inverse, values)",
           "values = summed.index_copy(0, inverse, values)",
           "from_coo: a repeated (row, col) keeps one value instead of the sum",
           ("tests/test_graph.py",)),
    # --- evaluation metrics --------------------------------------------------------------------
    Mutant("metrics-dcg-discount-one-rank-late", "micro_fast/metrics.py",
           "torch.arange(2, kmax + 2, dtype=torch.float64, device=device)",
           "torch.arange(3, kmax + 3, dtype=torch.float64, device=device)",
           "metric off by one rank: the DCG discount of rank j is 1 / log2(j + 2)",
           METRICS),
    Mutant("metrics-cutoff-one-rank-short", "micro_fast/metrics.py",
           "h = cum[:, kk - 1]",
           "h = cum[:, max(kk - 2, 0)]",
           "metric off by one rank: hits (recall, precision, hit, published NDCG) are counted "
           "to rank K - 1", METRICS),
    Mutant("metrics-ideal-dcg-one-rank-long", "micro_fast/metrics.py",
           "ideal = cdisc[(n_target.clamp_max(kk) - 1).long()]",
           "ideal = cdisc[n_target.clamp_max(kk - 1).long()]",
           "metric off by one rank: users with fewer than K targets get the ideal DCG of one "
           "more", METRICS),
    # --- distributed shard merging -------------------------------------------------------------
    Mutant("dist-merge-tie-reversed", "micro_fast/distributed.py",
           "torch.iinfo(torch.int64).max, i), dim=1,\n                             stable=True)",
           "torch.iinfo(torch.int64).max, i), dim=1,\n                             stable=True, "
           "descending=True)",
           "reversed tie rule: merged shard lists put equal values' larger index first",
           ("tests/test_distributed.py",), "merge or row_range"),
    Mutant("dist-row-range-extra-row", "micro_fast/distributed.py",
           "return r0, r0 + base + (1 if rank < extra else 0)",
           "return r0, r0 + base + (1 if rank <= extra else 0)",
           "off by one: the rank after the last one owning an extra row also takes one",
           ("tests/test_distributed.py",), "merge or row_range"),
)
