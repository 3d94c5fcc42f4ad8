// Fused-view contrastive loss driver (see contrastive_fusion.h for the math).
//
// MICRO contrasts every view u_q with the fused view f = normalize(sum_k a_k H_k). As
// f_j = sum_k coef[j, k] u_k[j], every score the loss needs is a combination of entries of the
// Gram blocks P^{qk} = u_q u_k^T: cross scores S^q_ij = sum_k coef[j, k] P^{qk}_ij, and their
// transposes S^q_ji = sum_k coef[i, k] P^{kq}_ij. Tasks are unordered pairs of row blocks
// (I <= J); each computes the m^2 tiles P^{qk}_IJ once and serves the row sums of I and J, in
// every view. For m = 2 that is 2 N^2 d multiply-adds forward (against 3 for two separate
// contrastive_forward calls) and 6 N^2 d backward (against 9).
//
// Backward: with alpha_q[i] = g[q, i] exp(1/tau - lse[q, i]) / tau, the derivative of L w.r.t.
// P^{qk}_IJ(a, b) (i = I0 + a, j = J0 + b) is
//   G^{qk} = [q == k] exp((P^{qq} - 1)/tau) (alpha_q[i] + alpha_q[j])
//          + coef[j, k] A^q_ij + coef[i, q] A^k_ji,    A^q_ij = alpha_q[i] exp((S^q_ij - 1)/tau)
// (diagonal pairs I == J: every ordered (i, j) is its own entry, so only the alpha_q[i] and
// A^q_ij terms, and i == j left out of the first). Then grad u_q[I] += G^{qk} u_k[J] and
// grad u_k[J] += G^{qk T} u_q[I], and grad coef[j, k] += sum_q sum_i A^q_ij P^{qk}_ij.
// Work is split statically over threads with private accumulators merged in thread order, so
// results repeat exactly for a thread count.
#include "cpu/contrastive_fusion.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "common.h"
#include "cpu/contrastive.h"
#include "cpu/isa.h"
#include "cpu/large_buffer.h"
#include "cpu/packed_panels.h"

namespace micro_fast {
namespace {

constexpr int64_t kDefaultBlock = 128;  // m^2 + 2m tiles per thread stay in L2

template <typename T>
struct FusionPlan {
  int64_t m, n, d, block, pad_a, pad_b, tile, nblocks;
  int nchunks;
  std::vector<std::pair<int32_t, int32_t>> tasks;

  FusionPlan(const TileKernel<T>& kern, int64_t m_, int64_t n_, int64_t d_, int64_t block_size,
             Shard shard)
      : m(m_), n(n_), d(d_) {
    block = quantized_block(block_size, kDefaultBlock);
    pad_a = (block + kern.mr - 1) / kern.mr * kern.mr;
    pad_b = (block + kern.nr - 1) / kern.nr * kern.nr;
    tile = pad_a * pad_b;
    nchunks = static_cast<int>((d + kChunk - 1) / kChunk);
    nblocks = (n + block - 1) / block;
    const int32_t nb = static_cast<int32_t>(nblocks);
    int64_t t = 0;
    for (int32_t i = 0; i < nb; ++i)
      for (int32_t j = i; j < nb; ++j)
        if (shard.owns(t++)) tasks.push_back({i, j});
  }
};

// Per-thread scratch: the m^2 Gram tiles of a task, the column accumulators of its row passes
// (2m forward, m^2 backward) and the row pointers handed to them.
template <typename T>
struct FusionScratch {
  std::vector<T> p, cols;
  std::vector<T*> p_rows, col;
  std::vector<const T*> coef_j, alpha_j;
  std::vector<double> out1, out2;
  explicit FusionScratch(const FusionPlan<T>& pl)
      : p(pl.m * pl.m * pl.tile), cols(std::max<int64_t>(2, pl.m) * pl.m * pl.pad_b),
        p_rows(pl.m * pl.m), col(std::max<int64_t>(2, pl.m) * pl.m), coef_j(pl.m), alpha_j(pl.m),
        out1(pl.m * pl.m), out2(pl.m) {}
  T* gram(const FusionPlan<T>& pl, int64_t q, int64_t k) { return p.data() + (q * pl.m + k) * pl.tile; }
  // c zeroed column accumulators of nb entries in col[0..c)
  void zero_cols(const FusionPlan<T>& pl, int64_t c, int nb) {
    for (int64_t t = 0; t < c; ++t) {
      col[t] = cols.data() + t * pl.pad_b;
      std::fill(col[t], col[t] + nb, T(0));
    }
  }
  // The row pass operands of row a of a task: its Gram rows and the column coefficients.
  FusionRow<T> row(const FusionPlan<T>& pl, const T* coef, const T* coef_t, int64_t i0,
                   int64_t j0, int a, int nb, bool diag, T inv_tau) {
    for (int64_t q = 0; q < pl.m; ++q) {
      coef_j[q] = coef_t + q * pl.n + j0;
      for (int64_t k = 0; k < pl.m; ++k) p_rows[q * pl.m + k] = gram(pl, q, k) + a * pl.pad_b;
    }
    return FusionRow<T>{p_rows.data(), coef_j.data(), coef + (i0 + a) * pl.m, nullptr,
                        nullptr, diag ? a : -1, nb, inv_tau, inv_tau};
  }
};

// One task's block pair and its m^2 Gram tiles P^{qk} (row stride pad_b) in w.p.
struct Span {
  int64_t i0, j0;
  int mb, nb;
  bool diag;
};

template <typename T>
PackedPanels<T> pack_views(const TileKernel<T>& kern, const FusionPlan<T>& pl, const T* u,
                           int threads) {
  std::vector<const T*> views(pl.m);
  for (int64_t q = 0; q < pl.m; ++q) views[q] = u + q * pl.n * pl.d;
  return PackedPanels<T>(kern, views.data(), pl.m, pl.n, pl.d, pl.block, threads);
}

template <typename T>
Span gram_tiles(const TileKernel<T>& kern, const FusionPlan<T>& pl, const PackedPanels<T>& pk,
                FusionScratch<T>& w, std::pair<int32_t, int32_t> task) {
  const Span sp{task.first * pl.block, task.second * pl.block,
                static_cast<int>(std::min(pl.block, pl.n - task.first * pl.block)),
                static_cast<int>(std::min(pl.block, pl.n - task.second * pl.block)),
                task.first == task.second};
  for (int c = 0; c < pl.nchunks; ++c) {
    const int kc = pk.kc(c);
    for (int64_t q = 0; q < pl.m; ++q)
      for (int64_t k = 0; k < pl.m; ++k) {
        TileArgs<T> args{pk.pa(c, q, task.first), pk.pb(c, k, task.second), kc, sp.i0,
                         sp.mb, sp.j0, sp.nb, c == 0, false, w.gram(pl, q, k),
                         static_cast<int>(pl.pad_b), nullptr, nullptr, nullptr};
        kern.tile(args);
      }
  }
  return sp;
}

template <typename T>
std::vector<T> transposed(const T* coef, int64_t n, int64_t m) {
  std::vector<T> t(m * n);
  for (int64_t j = 0; j < n; ++j)
    for (int64_t k = 0; k < m; ++k) t[k * n + j] = coef[j * m + k];
  return t;
}

void check_args(int64_t m, int64_t n, int64_t d, double tau, Shard shard) {
  MF_CHECK(m > 0 && n > 0 && d > 0, "views must be non-empty");
  MF_CHECK(m <= kMaxFusedViews, "the fused-view kernel takes at most 8 views");
  MF_CHECK(std::isfinite(tau) && tau >= kFixedShiftTau,
           "tau must be finite and >= 0.05 for the fused-view kernel");
  check_shard(shard);
}

}  // namespace

template <typename T>
void contrastive_fusion_forward(const T* u, const T* coef, int64_t m, int64_t n, int64_t d,
                                double tau, int64_t block_size, int num_threads, T* lse,
                                Shard shard) {
  check_args(m, n, d, tau, shard);
  const auto& ks = isa_kernels<T>();
  const FusionPlan<T> pl(ks.tile, m, n, d, block_size, shard);
  const int threads = contrastive_team(num_threads, n, m * d);
  const std::vector<T> coef_t = transposed(coef, n, m);
  std::vector<std::vector<double>> sums(threads, std::vector<double>(m * n, 0.0));
  const PackedPanels<T> pk = pack_views(ks.tile, pl, u, threads);
  const T inv_tau = T(1.0 / tau);
  const int64_t ntasks = static_cast<int64_t>(pl.tasks.size());
  const int mm = static_cast<int>(m);
  const FusionRowKernel<T>& rows = ks.fusion(m);
#pragma omp parallel num_threads(threads)
  {
    FusionScratch<T> w(pl);
    double* acc = sums[omp_get_thread_num()].data();
    double* cross = w.out1.data();
    double* intra = w.out2.data();
#pragma omp for schedule(static, 1)
    for (int64_t t = 0; t < ntasks; ++t) {
      const Span sp = gram_tiles(ks.tile, pl, pk, w, pl.tasks[t]);
      if (!sp.diag) w.zero_cols(pl, 2 * m, sp.nb);
      T* const* col_cross = sp.diag ? nullptr : w.col.data();
      T* const* col_intra = sp.diag ? nullptr : w.col.data() + m;
      for (int a = 0; a < sp.mb; ++a) {
        const FusionRow<T> r =
            w.row(pl, coef, coef_t.data(), sp.i0, sp.j0, a, sp.nb, sp.diag, inv_tau);
        rows.forward(r, mm, cross, intra, col_cross, col_intra);
        for (int64_t q = 0; q < m; ++q) {
          double& rs = acc[q * n + sp.i0 + a];
          rs += cross[q];
          rs += intra[q];
        }
      }
      if (!sp.diag)
        for (int64_t q = 0; q < m; ++q) {
          double* rs = acc + q * n + sp.j0;
          for (int b = 0; b < sp.nb; ++b) rs[b] += col_cross[q][b];
          for (int b = 0; b < sp.nb; ++b) rs[b] += col_intra[q][b];
        }
    }
  }
  for (int64_t r = 0; r < m * n; ++r) {
    double s = 0.0;
    for (int t = 0; t < threads; ++t) s += sums[t][r];
    lse[r] = T(1.0 / tau + std::log(s));
  }
}

template <typename T>
void contrastive_fusion_backward(const T* u, const T* coef, int64_t m, int64_t n, int64_t d,
                                 double tau, const T* lse, const T* g, int64_t block_size,
                                 int num_threads, T* grad_u, T* grad_coef, Shard shard) {
  check_args(m, n, d, tau, shard);
  const auto& ks = isa_kernels<T>();
  const auto& dk = ks.dense;
  const FusionPlan<T> pl(ks.tile, m, n, d, block_size, shard);
  const int threads = contrastive_team(num_threads, n, m * d);
  const std::vector<T> coef_t = transposed(coef, n, m);
  const T inv_tau = T(1.0 / tau);
  std::vector<T> alpha(m * n);
  for (int64_t r = 0; r < m * n; ++r)
    alpha[r] = g[r] * inv_tau * T(std::exp(1.0 / tau - double(lse[r])));
  const int64_t nd = n * d;
  std::fill(grad_u, grad_u + m * nd, T(0));
  const auto priv = zeroed_buffers<T>(threads - 1, m * nd);
  std::vector<std::vector<double>> dcoef(threads, std::vector<double>(n * m, 0.0));
  const int64_t ntasks = static_cast<int64_t>(pl.tasks.size());
  const int64_t ld = pl.pad_b;
  const PackedPanels<T> pk = pack_views(ks.tile, pl, u, threads);
  const int mm = static_cast<int>(m);
  const FusionRowKernel<T>& rows = ks.fusion(m);
#pragma omp parallel num_threads(threads)
  {
    FusionScratch<T> w(pl);
    std::vector<T> alpha_i(m);
    const int tid = omp_get_thread_num();
    T* gu = tid == 0 ? grad_u : priv[tid - 1].data();
    double* dc = dcoef[tid].data();
#pragma omp for schedule(static, 1)
    for (int64_t t = 0; t < ntasks; ++t) {
      const Span sp = gram_tiles(ks.tile, pl, pk, w, pl.tasks[t]);
      w.zero_cols(pl, m * m, sp.nb);
      for (int a = 0; a < sp.mb; ++a) {
        const int64_t i = sp.i0 + a;
        FusionRow<T> r = w.row(pl, coef, coef_t.data(), sp.i0, sp.j0, a, sp.nb, sp.diag, inv_tau);
        for (int64_t q = 0; q < m; ++q) {
          alpha_i[q] = alpha[q * n + i];
          w.alpha_j[q] = alpha.data() + q * n + sp.j0;
        }
        r.alpha_i = alpha_i.data();
        r.alpha_j = sp.diag ? nullptr : w.alpha_j.data();
        rows.backward(r, mm, w.col.data(), w.out1.data());
        if (!sp.diag)
          for (int64_t q = 0; q < m; ++q)
            for (int64_t k = 0; k < m; ++k) dc[i * m + q] += w.out1[q * m + k];
      }
      // G^{qk} now holds the tiles' gradients: the products, in the order (q, k)
      for (int64_t q = 0; q < m; ++q)
        for (int64_t k = 0; k < m; ++k) {
          const T* pt = w.gram(pl, q, k);
          const T* col = w.col[q * m + k];
          for (int b = 0; b < sp.nb; ++b) dc[(sp.j0 + b) * m + k] += col[b];
          dk.gemm_acc(pt, ld, 1, sp.mb, sp.nb, u + k * nd + sp.j0 * d, d, static_cast<int>(d),
                      gu + q * nd + sp.i0 * d, d);
          dk.gemm_acc(pt, 1, ld, sp.nb, sp.mb, u + q * nd + sp.i0 * d, d, static_cast<int>(d),
                      gu + k * nd + sp.j0 * d, d);
        }
    }
  }
  if (threads > 1) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < m * n; ++r)
      for (int t = 1; t < threads; ++t) {
        const T* p = priv[t - 1].data() + r * d;
        for (int64_t c = 0; c < d; ++c) grad_u[r * d + c] += p[c];
      }
  }
  for (int64_t r = 0; r < n * m; ++r) {
    double s = 0.0;
    for (int t = 0; t < threads; ++t) s += dcoef[t][r];
    grad_coef[r] = T(s);
  }
}

template void contrastive_fusion_forward<float>(const float*, const float*, int64_t, int64_t,
                                                int64_t, double, int64_t, int, float*, Shard);
template void contrastive_fusion_forward<double>(const double*, const double*, int64_t, int64_t,
                                                 int64_t, double, int64_t, int, double*, Shard);
template void contrastive_fusion_backward<float>(const float*, const float*, int64_t, int64_t,
                                                 int64_t, double, const float*, const float*,
                                                 int64_t, int, float*, float*, Shard);
template void contrastive_fusion_backward<double>(const double*, const double*, int64_t, int64_t,
                                                  int64_t, double, const double*, const double*,
                                                  int64_t, int, double*, double*, Shard);

}  // namespace micro_fast
