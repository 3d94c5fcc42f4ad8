// Contrastive loss driver. The score matrices are visited in B x B tiles: the cross-view tiles
// (n1 against n2) all, the intra-view tiles (n1 against n1, and n2 against n2 in symmetric mode)
// once per unordered block pair, since those matrices are symmetric: each such tile serves the
// row sums of its row block and the column sums of its column block, and likewise in backward.
// Tiles come from the same register-tiled kernel as the top-k search (topk_tile.h), exps and
// the weight x feature products from dense_tile.h. Work is split statically over threads with
// private accumulators merged in thread order, so results repeat exactly for a thread count.
#include "cpu/contrastive.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "common.h"
#include "cpu/isa.h"
#include "cpu/large_buffer.h"
#include "cpu/packed_panels.h"

namespace micro_fast {
namespace {

enum TileKind : int { kCross = 0, kIntra1 = 1, kIntra2 = 2 };

struct Task {
  int32_t kind, bi, bj;
};

template <typename T>
struct Plan {
  int64_t n, d, block, pad_a, pad_b;
  int nchunks;
  std::vector<Task> tasks;

  Plan(const TileKernel<T>& kern, int64_t n_, int64_t d_, int64_t block_size, bool symmetric,
       Shard shard)
      : n(n_), d(d_) {
    block = quantized_block(block_size, 256);
    pad_a = (block + kern.mr - 1) / kern.mr * kern.mr;
    pad_b = (block + kern.nr - 1) / kern.nr * kern.nr;
    nchunks = static_cast<int>((d + kChunk - 1) / kChunk);
    const int32_t nb = static_cast<int32_t>((n + block - 1) / block);
    int64_t t = 0;
    auto add = [&](Task task) {
      if (shard.owns(t++)) tasks.push_back(task);
    };
    for (int32_t i = 0; i < nb; ++i) {
      for (int32_t j = 0; j < nb; ++j) add({kCross, i, j});
      for (int32_t j = i; j < nb; ++j) add({kIntra1, i, j});
      if (symmetric)
        for (int32_t j = i; j < nb; ++j) add({kIntra2, i, j});
    }
  }
};

// Rows, columns and operands of one task's score tile.
template <typename T>
struct TileSpan {
  int64_t i0, j0;
  int mb, nb;
  int xv, yv;  // views (0: n1, 1: n2) of the tile's rows and columns
  const T* x;  // rows of the tile
  const T* y;  // columns of the tile
  bool diag;   // an intra-view tile on the diagonal: its i == j entries are left out

  TileSpan(const Task& task, int64_t block, int64_t n, const T* n1, const T* n2)
      : i0(task.bi * block), j0(task.bj * block),
        mb(static_cast<int>(std::min(block, n - task.bi * block))),
        nb(static_cast<int>(std::min(block, n - task.bj * block))),
        xv(task.kind == kIntra2 ? 1 : 0), yv(task.kind == kIntra1 ? 0 : 1),
        x(xv ? n2 : n1), y(yv ? n2 : n1), diag(task.kind != kCross && task.bi == task.bj) {}
};

// Below this many row blocks each block is packed per tile instead of once per call: the few
// repeats cost less than the page faults of a call-sized buffer, and the panels stay hot.
constexpr int64_t kPrepackBlocks = 8;

template <typename T>
struct Scratch {
  std::vector<T> a, b, s, e, colmax, colw;
  std::vector<double> colsum;
  Scratch(const Plan<T>& p, bool per_tile_panels)
      : a(per_tile_panels ? p.pad_a * std::min<int64_t>(p.d, kChunk) : 0),
        b(per_tile_panels ? p.pad_b * std::min<int64_t>(p.d, kChunk) : 0),
        s(p.pad_a * p.pad_b), e(p.pad_a * p.pad_b) {}
};

// The task's span, with its score tile s[mb x nb] (row stride pad_b) = rows [i0, i0+mb) of x
// times rows [j0, j0+nb) of y, transposed, computed into w.s; operands from the per-call
// panels `pk`, or packed here when there are none.
template <typename T>
TileSpan<T> scored_tile(const TileKernel<T>& kern, const Plan<T>& p, const PackedPanels<T>* pk,
                        Scratch<T>& w, const Task& task, const T* n1, const T* n2) {
  const TileSpan<T> sp(task, p.block, p.n, n1, n2);
  for (int c = 0; c < p.nchunks; ++c) {
    const int64_t p0 = int64_t(c) * kChunk;
    const int kc = static_cast<int>(std::min<int64_t>(kChunk, p.d - p0));
    const T *a, *b;
    if (pk != nullptr) {
      a = pk->pa(c, sp.xv, task.bi);
      b = pk->pb(c, sp.yv, task.bj);
    } else {
      kern.pack_a(sp.x, p.d, sp.i0, sp.mb, p0, kc, w.a.data());
      kern.pack_b(sp.y, p.d, sp.j0, sp.nb, p0, kc, w.b.data());
      a = w.a.data();
      b = w.b.data();
    }
    TileArgs<T> args{a, b, kc, sp.i0, sp.mb, sp.j0, sp.nb, c == 0, false, w.s.data(),
                     static_cast<int>(p.pad_b), nullptr, nullptr, nullptr};
    kern.tile(args);
  }
  return sp;
}

// Scores every task's tile on a team of `threads`, statically interleaved so the assignment
// (and with it each thread's accumulation order) does not depend on timing, and hands each
// to fn(scratch, thread, task, span).
template <typename T, typename Fn>
void for_each_scored_tile(const TileKernel<T>& kern, const Plan<T>& plan, int threads,
                          const T* n1, const T* n2, Fn fn) {
  const int64_t ntasks = static_cast<int64_t>(plan.tasks.size());
  const T* views[2] = {n1, n2};
  std::unique_ptr<PackedPanels<T>> pk;
  if ((plan.n + plan.block - 1) / plan.block >= kPrepackBlocks)
    pk = std::make_unique<PackedPanels<T>>(kern, views, 2, plan.n, plan.d, plan.block, threads);
#pragma omp parallel num_threads(threads)
  {
    Scratch<T> w(plan, pk == nullptr);
    const int tid = omp_get_thread_num();
#pragma omp for schedule(static, 1)
    for (int64_t t = 0; t < ntasks; ++t) {
      const Task& task = plan.tasks[t];
      fn(w, tid, task, scored_tile(kern, plan, pk.get(), w, task, n1, n2));
    }
  }
}

inline void lse_merge(double& m, double& s, double mt, double st) {
  if (st == 0.0) return;
  if (mt > m) {
    s = s * std::exp(m - mt) + st;
    m = mt;
  } else {
    s += st * std::exp(mt - m);
  }
}

struct LseAcc {
  std::vector<double> m1, s1, m2, s2;
  LseAcc(int64_t n, bool symmetric)
      : m1(n, -std::numeric_limits<double>::infinity()), s1(n, 0.0),
        m2(symmetric ? n : 0, -std::numeric_limits<double>::infinity()), s2(symmetric ? n : 0, 0.0) {}
};

// Adds exp(s / tau) of a stored tile to the running sums of its rows and/or its columns.
// `diag` marks a tile on the diagonal of an intra-view matrix, whose i == j entries are skipped.
template <typename T>
void accumulate_tile(const DenseKernel<T>& dk, Scratch<T>& w, int64_t ld, int mb, int nb,
                     T inv_tau, bool diag, double* rm, double* rs, double* cm, double* cs) {
  T* s = w.s.data();
  T* e = w.e.data();
  const T neg_inf = -std::numeric_limits<T>::infinity();
  if (diag)
    for (int i = 0; i < std::min(mb, nb); ++i) s[i * ld + i] = neg_inf;
  if (rm != nullptr) {
    for (int i = 0; i < mb; ++i) {
      const T* si = s + i * ld;
      T* ei = e + i * ld;
      const T mx = dk.max(si, nb) * inv_tau;
      if (mx == neg_inf) continue;
      dk.exp_affine(si, inv_tau, nullptr, mx, nb, ei);
      if (diag && i < nb) ei[i] = T(0);
      lse_merge(rm[i], rs[i], double(mx), dk.sum(ei, nb));
    }
  }
  if (cm != nullptr) {  // never a diagonal tile
    w.colmax.assign(nb, neg_inf);
    for (int i = 0; i < mb; ++i) dk.max_into(w.colmax.data(), s + i * ld, nb);
    for (int j = 0; j < nb; ++j) w.colmax[j] *= inv_tau;
    w.colsum.assign(nb, 0.0);
    for (int i = 0; i < mb; ++i) {
      T* ei = e + i * ld;
      dk.exp_affine(s + i * ld, inv_tau, w.colmax.data(), T(0), nb, ei);
      dk.add_into(w.colsum.data(), ei, nb);
    }
    for (int j = 0; j < nb; ++j) lse_merge(cm[j], cs[j], double(w.colmax[j]), w.colsum[j]);
  }
}


template <typename T>
void accumulate_tile_fixed(const DenseKernel<T>& dk, Scratch<T>& w, int64_t ld, int mb, int nb,
                           T inv_tau, bool diag, double* rs, double* cs) {
  T* s = w.s.data();
  T* col = nullptr;
  if (cs != nullptr) {
    w.colmax.assign(nb, T(0));  // reused as the tile's float column sums
    col = w.colmax.data();
  }
  for (int i = 0; i < mb; ++i)
    rs[i] += dk.exp_sum(s + i * ld, inv_tau, inv_tau, diag ? i : -1, nb, col);
  if (cs != nullptr)
    for (int j = 0; j < nb; ++j) cs[j] += col[j];
}

}  // namespace

void check_shard(Shard shard) {
  MF_CHECK(shard.count >= 1 && shard.index >= 0 && shard.index < shard.count,
           "shard must be in [0, num_shards)");
}

template <typename T>
void contrastive_forward(const T* n1, const T* n2, int64_t n, int64_t d, double tau,
                         bool symmetric, int64_t block_size, int num_threads, T* lse1, T* lse2,
                         Shard shard) {
  MF_CHECK(n > 0 && d > 0, "z1 and z2 must be non-empty");
  MF_CHECK(tau > 0 && std::isfinite(tau), "tau must be positive and finite");
  check_shard(shard);
  const auto& ks = isa_kernels<T>();
  const Plan<T> plan(ks.tile, n, d, block_size, symmetric, shard);
  const int threads = contrastive_team(num_threads, n, d);
  std::vector<LseAcc> acc;
  for (int t = 0; t < threads; ++t) acc.emplace_back(n, symmetric);
  const T inv_tau = T(1.0 / tau);
  const bool fixed = tau >= kFixedShiftTau;
  for_each_scored_tile(ks.tile, plan, threads, n1, n2,
                       [&](Scratch<T>& w, int tid, const Task& task, const TileSpan<T>& sp) {
      LseAcc& a = acc[tid];
      const int64_t i0 = sp.i0, j0 = sp.j0;
      const int mb = sp.mb, nb = sp.nb;
      const bool diag = sp.diag;
      double *rm, *rs, *cm = nullptr, *cs = nullptr;
      if (task.kind == kIntra2) {
        rm = a.m2.data() + i0;
        rs = a.s2.data() + i0;
      } else {
        rm = a.m1.data() + i0;
        rs = a.s1.data() + i0;
      }
      if (task.kind == kCross && symmetric) {
        cm = a.m2.data() + j0;
        cs = a.s2.data() + j0;
      } else if (task.kind != kCross && task.bi != task.bj) {
        cm = (task.kind == kIntra1 ? a.m1.data() : a.m2.data()) + j0;
        cs = (task.kind == kIntra1 ? a.s1.data() : a.s2.data()) + j0;
      }
      if (fixed)
        accumulate_tile_fixed(ks.dense, w, plan.pad_b, mb, nb, inv_tau, diag, rs, cs);
      else
        accumulate_tile(ks.dense, w, plan.pad_b, mb, nb, inv_tau, diag, rm, rs, cm, cs);
  });
  if (fixed) {
    for (int64_t i = 0; i < n; ++i) {
      double s1 = 0.0, s2 = 0.0;
      for (int t = 0; t < threads; ++t) {
        s1 += acc[t].s1[i];
        if (symmetric) s2 += acc[t].s2[i];
      }
      lse1[i] = T(1.0 / tau + std::log(s1));
      if (symmetric) lse2[i] = T(1.0 / tau + std::log(s2));
    }
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    double m = -std::numeric_limits<double>::infinity(), s = 0.0;
    for (int t = 0; t < threads; ++t) lse_merge(m, s, acc[t].m1[i], acc[t].s1[i]);
    lse1[i] = T(m + std::log(s));
    if (symmetric) {
      m = -std::numeric_limits<double>::infinity();
      s = 0.0;
      for (int t = 0; t < threads; ++t) lse_merge(m, s, acc[t].m2[i], acc[t].s2[i]);
      lse2[i] = T(m + std::log(s));
    }
  }
}

template <typename T>
void contrastive_backward(const T* n1, const T* n2, int64_t n, int64_t d, double tau,
                          const T* lse1, const T* lse2, const T* g1, const T* g2,
                          int64_t block_size, int num_threads, T* grad1, T* grad2, Shard shard) {
  MF_CHECK(n > 0 && d > 0, "z1 and z2 must be non-empty");
  MF_CHECK(tau > 0 && std::isfinite(tau), "tau must be positive and finite");
  check_shard(shard);
  const bool symmetric = lse2 != nullptr;
  const auto& ks = isa_kernels<T>();
  const Plan<T> plan(ks.tile, n, d, block_size, symmetric, shard);
  const int threads = contrastive_team(num_threads, n, d);
  std::fill(grad1, grad1 + n * d, T(0));
  std::fill(grad2, grad2 + n * d, T(0));
  const auto priv = zeroed_buffers<T>(2 * (threads - 1), n * d);
  const T inv_tau = T(1.0 / tau);
  const bool fixed = tau >= kFixedShiftTau;
  const int64_t ld = plan.pad_b;
  for_each_scored_tile(ks.tile, plan, threads, n1, n2,
                       [&](Scratch<T>& w, int tid, const Task& task, const TileSpan<T>& sp) {
      T* gr1 = tid == 0 ? grad1 : priv[2 * (tid - 1)].data();
      T* gr2 = tid == 0 ? grad2 : priv[2 * (tid - 1) + 1].data();
      const int64_t i0 = sp.i0, j0 = sp.j0;
      const int mb = sp.mb, nb = sp.nb;
      const bool diag = sp.diag;
      // Row-shifted and column-shifted exps: exp(s / tau - lse) <= 1, never overflowing.
      const T* lr = task.kind == kIntra2 ? lse2 : lse1;
      const T* gr = task.kind == kIntra2 ? g2 : g1;
      const T* lc = task.kind == kCross ? lse2 : lr;  // null for a cross tile unless symmetric
      const T* gc = task.kind == kCross ? g2 : gr;
      T* s = w.s.data();
      T* e = w.e.data();
      if (fixed) {
        // W = exp(s/tau - 1/tau) * (alpha_i + beta_j), alpha_i = g_i exp(1/tau - lse_i) / tau
        w.colw.resize(nb);
        if (lc != nullptr)
          for (int j = 0; j < nb; ++j)
            w.colw[j] = gc[j0 + j] * inv_tau * T(std::exp(double(inv_tau) - double(lc[j0 + j])));
        for (int i = 0; i < mb; ++i) {
          const T alpha =
              gr[i0 + i] * inv_tau * T(std::exp(double(inv_tau) - double(lr[i0 + i])));
          ks.dense.exp_scale(s + i * ld, inv_tau, inv_tau, alpha,
                             lc != nullptr ? w.colw.data() : nullptr, nb, e + i * ld);
        }
      } else {
        if (lc != nullptr) {
          w.colw.resize(nb);
          for (int j = 0; j < nb; ++j) w.colw[j] = gc[j0 + j] * inv_tau;
        }
        for (int i = 0; i < mb; ++i) {
          T* si = s + i * ld;
          T* ei = e + i * ld;
          ks.dense.exp_affine(si, inv_tau, nullptr, lr[i0 + i], nb, ei);
          if (lc == nullptr) {
            const T wi = gr[i0 + i] * inv_tau;
            for (int j = 0; j < nb; ++j) ei[j] *= wi;
          } else {
            // e = g_i exp(s/tau - lse_i)/tau + g_j exp(s/tau - lse_j)/tau, the column part in
            // place of the scores (each score row is read for the last time here)
            ks.dense.exp_affine(si, inv_tau, lc + j0, T(0), nb, si);
            ks.dense.mul_add(ei, si, w.colw.data(), gr[i0 + i] * inv_tau, nb);
          }
        }
      }
      if (diag)
        for (int i = 0; i < mb; ++i) e[i * ld + i] = T(0);
      // e now holds the weights W of this tile; scatter W y_J to rows I and W^T x_I to rows J.
      T* out_rows = task.kind == kIntra2 ? gr2 : gr1;
      T* out_cols = task.kind == kIntra1 ? gr1 : gr2;
      ks.dense.gemm_acc(e, ld, 1, mb, nb, sp.y + j0 * d, d, static_cast<int>(d),
                        out_rows + i0 * d, d);
      if (!diag)
        ks.dense.gemm_acc(e, 1, ld, nb, mb, sp.x + i0 * d, d, static_cast<int>(d),
                          out_cols + j0 * d, d);
  });
  if (threads > 1) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      for (int t = 1; t < threads; ++t) {
        const T* p1 = priv[2 * (t - 1)].data() + i * d;
        const T* p2 = priv[2 * (t - 1) + 1].data() + i * d;
        for (int64_t j = 0; j < d; ++j) {
          grad1[i * d + j] += p1[j];
          grad2[i * d + j] += p2[j];
        }
      }
    }
  }
}

template void contrastive_forward<float>(const float*, const float*, int64_t, int64_t, double,
                                         bool, int64_t, int, float*, float*, Shard);
template void contrastive_forward<double>(const double*, const double*, int64_t, int64_t, double,
                                          bool, int64_t, int, double*, double*, Shard);
template void contrastive_backward<float>(const float*, const float*, int64_t, int64_t, double,
                                          const float*, const float*, const float*, const float*,
                                          int64_t, int, float*, float*, Shard);
template void contrastive_backward<double>(const double*, const double*, int64_t, int64_t,
                                           double, const double*, const double*, const double*,
                                           const double*, int64_t, int, double*, double*, Shard);

}  // namespace micro_fast
