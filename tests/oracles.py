"""Independent dense statements of every op, the ground truth the tests compare every backend
with (torch_ref included).

Each statement follows the math in the op's docstring (and MICRO.md), written here in dense
float64 torch without calling the library: forward values and, where the op is differentiable,
explicit backward formulas. They are evaluated on ``bounds.Bounded`` values, so each result
carries the rounding error a computation in the kernel's dtype is expected to make, entry by
entry; ``bounds.assert_close`` compares with that tolerance.
"""

from __future__ import annotations

import math

import torch
from bounds import Bounded, cat, matmul, normalize_rows, tolerance


def _dense_mask(exclude, m: int, n: int) -> torch.Tensor:
    """A boolean [m, n] mask from ``None``, a dense tensor, or anything with ``to_dense``."""
    if exclude is None:
        return torch.zeros(m, n, dtype=torch.bool)
    if isinstance(exclude, torch.Tensor):
        return exclude.bool().cpu()
    return exclude.to_dense().cpu() != 0


# ---------------------------------------------------------------------------------------------
# top-k similarity


def is_exact_regime(*tensors: torch.Tensor, dtype: torch.dtype, d: int) -> bool:
    """Whether every inner product of these rows is computed without rounding in ``dtype``:
    integer entries whose products and partial sums stay below 2^(mantissa bits)."""
    mantissa = 24 if dtype == torch.float32 else 53
    for t in tensors:
        if t.numel() and not bool((t == t.round()).all()):
            return False
    largest = max(float(t.abs().max()) if t.numel() else 0.0 for t in tensors)
    return largest * largest * d < 2.0**mantissa


def similarity_scores(queries: torch.Tensor, keys: torch.Tensor | None, normalize: bool,
                      dtype: torch.dtype | None = None) -> Bounded:
    """[M, N] inner products (cosines with ``normalize``) with their error bounds for a
    computation in ``dtype`` (the queries' by default); zero bounds where the arithmetic is
    exact (integer inputs, no normalization)."""
    dtype = dtype or queries.dtype
    q = Bounded.exact(queries.cpu(), dtype)
    k = q if keys is None else Bounded.exact(keys.cpu(), dtype)
    if normalize:
        q, _ = normalize_rows(q)
        k = q if keys is None else normalize_rows(k)[0]
    scores = matmul(q, k.T)
    raw = [queries] + ([] if keys is None else [keys])
    if not normalize and is_exact_regime(*[t.detach().cpu().double() for t in raw], dtype=dtype,
                                          d=queries.shape[1]):
        scores.err.zero_()
    return scores


def exact_topk(scores: torch.Tensor, k: int, admissible: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-k of exact ``scores`` over the ``admissible`` entries, by value descending and
    then index ascending; rows with fewer candidates padded with (-inf, -1)."""
    m, n = scores.shape
    masked = scores.masked_fill(~admissible, -math.inf)
    # stable sort of -value: among equal values the smaller index comes first
    order = torch.sort(-masked, dim=1, stable=True).indices[:, :k]
    values = torch.gather(masked, 1, order)
    indices = torch.where(torch.isfinite(values), order, torch.full_like(order, -1))
    return values, indices


def assert_topk(values: torch.Tensor, indices: torch.Tensor, queries: torch.Tensor,
                keys: torch.Tensor | None, k: int, *, exclude=None, normalize: bool = False,
                ) -> int:
    """Checks a top-k result against the exact scores (float64, from the inputs alone).

    * shapes, dtypes, and padding: row i holds min(k, admissible keys) entries, then (-inf, -1);
    * every value equals the exact score of its pair within that pair's tolerance;
    * each row is sorted: values non-increasing, equal values in increasing index order;
    * no admissible key outside the row scores above the row's last one by more than the two
      pairs' tolerances; with exact arithmetic a key tied with the last one has a larger index;
    * position by position the indices equal the exact ranking's, except where the two keys'
      exact scores are within their tolerances of each other (a certified near tie);
    * no excluded pair, no repeated key.

    Returns the number of positions that differ from the exact ranking by a certified near tie.
    """
    q = queries.detach().cpu()
    kk = None if keys is None else keys.detach().cpu()
    m = q.shape[0]
    n = m if kk is None else kk.shape[0]
    assert values.shape == (m, k) and indices.shape == (m, k), (values.shape, indices.shape)
    assert indices.dtype == torch.int64, indices.dtype
    assert values.dtype == q.dtype, (values.dtype, q.dtype)
    values, indices = values.detach().cpu().double(), indices.cpu()
    scores = similarity_scores(q, kk, normalize, dtype=queries.dtype)
    tol = tolerance(scores, queries.dtype)
    admissible = ~_dense_mask(exclude, m, n)
    count = admissible.sum(1).clamp_max(k)
    slot = torch.arange(k).expand(m, k)
    filled = slot < count[:, None]
    assert torch.equal(indices >= 0, filled), "padding (-1) does not match the candidate count"
    assert bool(torch.isneginf(values[~filled]).all()), "padded values are not -inf"
    safe = indices.clamp_min(0)
    rows = torch.arange(m)[:, None].expand(m, k)
    assert bool((safe[filled] < n).all()), "an index is out of range"
    assert bool(admissible[rows[filled], safe[filled]].all()), "an excluded pair was returned"
    for r in range(m):
        row = indices[r, : int(count[r])]
        assert row.unique().numel() == row.numel(), f"row {r} repeats a key"
    exact = scores.value
    pair_tol = torch.gather(tol, 1, safe)
    pair_exact = torch.gather(exact, 1, safe)
    err = (values - pair_exact).abs()
    bad = filled & (err > pair_tol)
    if bool(bad.any()):
        r, c = (int(x) for x in torch.nonzero(bad)[0])
        raise AssertionError(f"value at ({r}, {c}) (key {int(indices[r, c])}) is "
                             f"{float(values[r, c])!r}, exact {float(pair_exact[r, c])!r}, "
                             f"tolerance {float(pair_tol[r, c]):.3g}")
    # sorted, ties in index order
    both = filled[:, 1:] & filled[:, :-1]
    assert bool((values[:, 1:] <= values[:, :-1])[both].all()), "a row is not sorted by value"
    tied = both & (values[:, 1:] == values[:, :-1])
    assert bool((indices[:, 1:] > indices[:, :-1])[tied].all()), \
        "equal values are not in increasing index order (ties go to the smaller index)"
    # nothing better left out
    last = safe.gather(1, (count - 1).clamp_min(0)[:, None]).squeeze(1)
    chosen = torch.zeros(m, n, dtype=torch.bool)
    chosen[rows[filled], safe[filled]] = True
    outside = admissible & ~chosen & (count > 0)[:, None]
    last_exact = exact.gather(1, last[:, None])
    last_tol = tol.gather(1, last[:, None])
    missed = outside & (exact > last_exact + tol + last_tol)
    if bool(missed.any()):
        r, j = (int(x) for x in torch.nonzero(missed)[0])
        raise AssertionError(f"row {r}: key {j} (exact {float(exact[r, j])!r}) was left out "
                             f"for key {int(last[r])} (exact {float(last_exact[r, 0])!r})")
    exact_tie = outside & (tol == 0) & (last_tol == 0) & (exact == last_exact)
    assert not bool((exact_tie & (torch.arange(n)[None, :] < last[:, None])).any()), \
        "a key tied with the last one and a smaller index was left out"
    # the exact ranking, position by position
    _, ref = exact_topk(exact, k, admissible)
    differ = filled & (indices != ref)
    if bool(differ.any()):
        ref_safe = ref.clamp_min(0)
        gap = (exact.gather(1, safe) - exact.gather(1, ref_safe)).abs()
        allowed = tol.gather(1, safe) + tol.gather(1, ref_safe)
        beyond = differ & (gap > allowed)
        if bool(beyond.any()):
            r, c = (int(x) for x in torch.nonzero(beyond)[0])
            raise AssertionError(f"position ({r}, {c}) holds key {int(indices[r, c])} where the "
                                 f"exact ranking has {int(ref[r, c])}, {float(gap[r, c]):.3g} "
                                 f"apart (tolerance {float(allowed[r, c]):.3g})")
    return int(differ.sum())


def assert_topk_sets(indices: torch.Tensor, scores: Bounded, kernel_dtype: torch.dtype) -> None:
    """Each row of ``indices`` [M, k] (any order) is a set of k distinct keys that no left-out
    key beats by more than the two pairs' tolerances (``scores``: the exact [M, N] scores)."""
    m, k = indices.shape
    idx = indices.cpu()
    n = scores.shape[1]
    assert bool(((idx >= 0) & (idx < n)).all()), "a neighbour index is out of range"
    for r in range(m):
        assert idx[r].unique().numel() == k, f"row {r} repeats a neighbour"
    tol = tolerance(scores, kernel_dtype)
    exact = scores.value
    chosen = torch.zeros(m, n, dtype=torch.bool)
    chosen.scatter_(1, idx, True)
    # the weakest kept key against the strongest left-out key, with their tolerances
    kept_low = torch.where(chosen, exact - tol, torch.full_like(exact, math.inf)).min(1).values
    left_high = torch.where(~chosen, exact + tol, torch.full_like(exact, -math.inf)).max(1).values
    bad = left_high > kept_low
    # compare pairwise only where the cheap test fails: tolerances differ per pair
    for r in torch.nonzero(bad).flatten().tolist():
        kept = idx[r]
        out = torch.nonzero(~chosen[r]).flatten()
        gap = exact[r, out][:, None] - exact[r, kept][None, :]
        allowed = tol[r, out][:, None] + tol[r, kept][None, :]
        assert not bool((gap > allowed).any()), f"row {r}: a left-out key beats a kept one"


def similarity_grads(queries: torch.Tensor, keys: torch.Tensor | None, indices: torch.Tensor,
                     weights: torch.Tensor, normalize: bool,
                     ) -> tuple[Bounded, Bounded | None]:
    """Gradients of sum_{i,r} w_ir s(i, indices_ir) w.r.t. the queries and the keys (``None``
    when ``keys`` is None: both parts land on the queries), for the given index lists."""
    dtype = queries.dtype
    q = Bounded.exact(queries.detach().cpu(), dtype)
    kb = q if keys is None else Bounded.exact(keys.detach().cpu(), dtype)
    m, n = q.shape[0], kb.shape[0]
    valid = indices.cpu() >= 0
    w = torch.zeros(m, n, dtype=torch.float64)
    rows = torch.arange(m)[:, None].expand_as(indices)
    w[rows[valid], indices.cpu()[valid]] = weights.detach().cpu().double()[valid]
    nq = q if not normalize else normalize_rows(q)[0]
    nk = kb if not normalize else (nq if keys is None else normalize_rows(kb)[0])
    per_row = int(valid.sum(1).max()) if valid.numel() else 1
    per_col = int((w != 0).sum(0).max()) if w.numel() else 1
    gq = matmul(Bounded.exact(w, dtype), nk, n=per_row)
    gk = matmul(Bounded.exact(w.T, dtype), nq, n=per_col)
    if normalize:
        gq = _normalize_backward(q, gq)
        gk = _normalize_backward(kb, gk)
    if keys is None:
        return gq + gk, None
    return gq, gk


def _normalize_backward(x: Bounded, g: Bounded) -> Bounded:
    """The gradient w.r.t. x of a function of x / |x| whose gradient w.r.t. x / |x| is g."""
    nx, norm = normalize_rows(x)
    radial = (nx * g).sum(1, keepdim=True)
    return (g - nx * radial) / norm


# ---------------------------------------------------------------------------------------------
# kNN graph


def knn_graph_exact(features: torch.Tensor, indices: torch.Tensor, normalization: str,
                    upstream: torch.Tensor | None = None) -> tuple[Bounded, Bounded | None]:
    """The values [N, k] of the normalized kNN graph with the kernel's neighbour lists
    ``indices`` [N, k] (row i's columns), and the gradient w.r.t. ``features`` of
    sum(values * upstream) (when given). Degrees are row sums of the kept cosines;
    ``sym``: d_i^-1/2 s_ij d_j^-1/2, ``rw``: s_ij / d_i, ``none``: s_ij."""
    dtype = features.dtype
    x = Bounded.exact(features.detach().cpu(), dtype)
    nx, _ = normalize_rows(x)
    n, k = indices.shape
    idx = indices.cpu()
    sims = matmul(nx, nx.T)
    raw = sims.apply(lambda t: t.gather(1, idx))
    deg = raw.sum(1, keepdim=True)
    zero = deg.value == 0  # a zero degree gives zero weights, as published
    safe = deg.masked_fill(zero, 1.0).apply(lambda t: t.masked_fill(zero, 1.0))
    if normalization == "sym":
        a = safe.pow(-0.5).masked_fill(zero, 0.0)
        a_cols = a.apply(lambda t: t.squeeze(1)[idx])
        values = a * raw * a_cols
    elif normalization == "rw":
        b = (1.0 / safe).masked_fill(zero, 0.0)
        values = raw * b
    else:
        values = raw
    if upstream is None:
        return values, None
    w = Bounded.exact(upstream.detach().cpu().reshape(n, k), dtype)
    if normalization == "sym":
        d_raw = w * a * a_cols
        contrib = w * raw
        # d/da_i: as the row's factor and as a column factor of other rows
        by_row = (contrib * a_cols).sum(1, keepdim=True)
        col_terms = (contrib * a).apply(lambda t: _scatter_rows(t, idx, n))
        in_degree = int(torch.bincount(idx.reshape(-1), minlength=n).max())
        da = by_row + col_terms.sum(0, n=in_degree).apply(lambda t: t[:, None])
        d_deg = da * (-0.5) * a * a * a
        d_raw = d_raw + d_deg
    elif normalization == "rw":
        d_deg = -(w * raw).sum(1, keepdim=True) * b * b
        d_raw = w * b + d_deg
    else:
        d_raw = w
    dense = d_raw.apply(lambda t: _scatter_rows(t, idx, n))
    sym_dense = dense + dense.T
    both = (_scatter_rows(torch.ones(n, k), idx, n) != 0)
    fan = int((both | both.T).sum(1).max())
    d_nx = matmul(sym_dense, nx, n=fan)
    return values, _normalize_backward(x, d_nx)


def _scatter_rows(t: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    """Dense [n, n] with t[i, r] at (i, idx[i, r])."""
    out = torch.zeros(n, n, dtype=t.dtype)
    out.scatter_(1, idx, t)
    return out


# ---------------------------------------------------------------------------------------------
# sparse products


def _sparse_matmul(rows: torch.Tensor, cols: torch.Tensor, vals: Bounded, x: Bounded,
                   n_rows: int) -> Bounded:
    """A x for A given by its stored entries (rows, cols, vals): only stored entries take part
    (a NaN or inf in x reaches only the rows that store its column, as in a sparse product)."""
    prod = vals.apply(lambda t: t[:, None]) * x[cols]
    count = torch.bincount(rows, minlength=n_rows)
    n = int(count.max()) if count.numel() else 1
    out = torch.zeros(n_rows, x.shape[1], dtype=torch.float64)
    value = out.index_add(0, rows, prod.value)
    err = out.index_add(0, rows, prod.err) \
        + x.u * math.sqrt(max(n, 1)) * out.index_add(0, rows, prod.value.abs())
    return Bounded(value, err, x.u)


def spmm_exact(dense: torch.Tensor, x: torch.Tensor, upstream: torch.Tensor | None = None,
               ) -> tuple[Bounded, Bounded | None, Bounded | None]:
    """y = A x for the dense image ``dense`` [M, N] of a sparse A (its nonzeros are the stored
    entries), and the gradients of sum(y * upstream) w.r.t. x (A^T G) and w.r.t. A's stored
    values (row of G dot row of x, one per nonzero, in CSR order)."""
    dtype = x.dtype
    r, c = torch.nonzero(dense.cpu(), as_tuple=True)
    vals = Bounded.exact(dense.cpu()[r, c], dtype)
    xb = Bounded.exact(x.detach().cpu(), dtype)
    y = _sparse_matmul(r, c, vals, xb, dense.shape[0])
    if upstream is None:
        return y, None, None
    g = Bounded.exact(upstream.detach().cpu(), dtype)
    gx = _sparse_matmul(c, r, vals, g, dense.shape[1])
    gv = (g[r] * xb[c]).sum(1)
    return y, gx, gv


def propagate_exact(dense: torch.Tensor, x: torch.Tensor, layers: int, combine: str,
                    ) -> tuple[Bounded, Bounded]:
    """``layers`` products by A (``"last"``: the final one, ``"mean"``: the mean of x and
    every layer's output) and the gradient of its sum w.r.t. x."""
    dtype = x.dtype
    r, c = torch.nonzero(dense.cpu(), as_tuple=True)
    vals = Bounded.exact(dense.cpu()[r, c], dtype)
    n = dense.shape[0]
    h = Bounded.exact(x.detach().cpu(), dtype)
    outs = [h]
    for _ in range(layers):
        h = _sparse_matmul(r, c, vals, h, n)
        outs.append(h)
    g = Bounded.exact(torch.ones(x.shape, dtype=torch.float64), dtype)
    grads = [g]
    for _ in range(layers):
        g = _sparse_matmul(c, r, vals, g, n)
        grads.append(g)
    if combine == "last":
        return outs[-1], grads[-1]
    total, gtotal = outs[0], grads[0]
    for o, gr in zip(outs[1:], grads[1:], strict=True):
        total, gtotal = total + o, gtotal + gr
    return total / (layers + 1), gtotal / (layers + 1)


def bipartite_exact(users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int,
                    normalization: str, self_loops: bool, dtype: torch.dtype,
                    binary: bool = False) -> Bounded:
    """The dense (U+I) x (U+I) adjacency [[0, R], [R^T, 0]] (+ I with ``self_loops``), R the
    interaction counts (or 0/1 with ``binary``), normalized by its row sums: ``sym``
    D^-1/2 A D^-1/2, ``rw`` D^-1 A, ``none`` A; zero degrees give zero rows."""
    n = n_users + n_items
    r = torch.zeros(n_users, n_items, dtype=torch.float64)
    for u, i in zip(users.tolist(), items.tolist(), strict=True):
        r[u, i] = 1.0 if binary else r[u, i] + 1.0
    a = torch.zeros(n, n, dtype=torch.float64)
    a[:n_users, n_users:] = r
    a[n_users:, :n_users] = r.T
    if self_loops:
        a += torch.eye(n, dtype=torch.float64)
    ab = Bounded.exact(a, dtype)
    deg = ab.sum(1, keepdim=True)
    zero = deg.value == 0
    safe = deg.masked_fill(zero, 1.0).apply(lambda t: t.masked_fill(zero, 1.0))
    if normalization == "sym":
        s = safe.pow(-0.5).masked_fill(zero, 0.0)
        return ab * s * s.T
    if normalization == "rw":
        return ab * (1.0 / safe).masked_fill(zero, 0.0)
    return ab


def project_rows_exact(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       rows: torch.Tensor, upstream: torch.Tensor | None = None):
    """z = x[rows] W^T + b and the gradients of sum(z * upstream) w.r.t. x (dense, zero off
    ``rows``), W and b."""
    dtype = x.dtype
    xb = Bounded.exact(x.detach().cpu(), dtype)
    wb = Bounded.exact(weight.detach().cpu(), dtype)
    sel = xb[rows.cpu()]
    z = matmul(sel, wb.T)
    if bias is not None:
        z = z + Bounded.exact(bias.detach().cpu(), dtype)
    if upstream is None:
        return z, None, None, None
    g = Bounded.exact(upstream.detach().cpu(), dtype)
    gsel = matmul(g, wb)
    full = torch.zeros_like(xb.value)
    full_err = torch.zeros_like(xb.value)
    full[rows.cpu()] = gsel.value
    full_err[rows.cpu()] = gsel.err
    gx = Bounded(full, full_err, gsel.u)
    gw = matmul(g.T, sel)
    gb = g.sum(0)
    return z, gx, gw, gb


# ---------------------------------------------------------------------------------------------
# contrastive losses


def _direction(n1: Bounded, n2: Bounded, tau: float) -> tuple[Bounded, Bounded, Bounded]:
    """For unit rows n1, n2 [N, d]: (sum_i l_i, d/dn1, d/dn2) of the per-item loss
    l_i = log(sum_{j != i} e^{<n1_i, n1_j>/tau} + sum_j e^{<n1_i, n2_j>/tau}) - <n1_i, n2_i>/tau
    (MICRO.md, one direction z1 -> z2)."""
    n = n1.shape[0]
    eye = torch.eye(n, dtype=torch.bool)
    s11 = matmul(n1, n1.T) / tau
    s12 = matmul(n1, n2.T) / tau
    s11m = s11.masked_fill(eye, -math.inf)
    lse = cat([s11m, s12], 1).logsumexp(1)
    diag = s12.apply(torch.diagonal)
    total = (lse - diag).sum(0)
    lse_col = lse.apply(lambda t: t[:, None])
    p = (s11m - lse_col).exp().masked_fill(eye, 0.0)
    q = (s12 - lse_col).exp()
    d12 = q - torch.eye(n, dtype=torch.float64)
    d_n1 = (matmul(p + p.T, n1) + matmul(d12, n2)) / tau
    d_n2 = matmul(d12.T, n1) / tau
    return total, d_n1, d_n2


def contrastive_exact(z1, z2, tau: float, symmetric: bool = False,
                      ) -> tuple[Bounded, Bounded, Bounded]:
    """(loss, d loss / d z1, d loss / d z2) of MICRO's all-pairs InfoNCE (mean over items;
    ``symmetric``: the mean of both directions). ``z1``, ``z2``: tensors (exact inputs) or
    ``Bounded`` (inputs carrying errors, e.g. a fused view)."""
    dtype = z1.dtype if isinstance(z1, torch.Tensor) else None
    b1 = z1 if isinstance(z1, Bounded) else Bounded.exact(z1.detach().cpu(), dtype)
    b2 = z2 if isinstance(z2, Bounded) else Bounded.exact(z2.detach().cpu(), z2.dtype)
    n = b1.shape[0]
    n1, _ = normalize_rows(b1)
    n2, _ = normalize_rows(b2)
    total, g1, g2 = _direction(n1, n2, tau)
    if symmetric:
        total2, h2, h1 = _direction(n2, n1, tau)
        total, g1, g2 = (total + total2) * 0.5, (g1 + h1) * 0.5, (g2 + h2) * 0.5
    scale = 1.0 / n
    return total * scale, _normalize_backward(b1, g1 * scale), _normalize_backward(b2, g2 * scale)


def fusion_exact(views: list[torch.Tensor], weights: torch.Tensor, tau: float,
                 symmetric: bool = False):
    """(loss, [d/d view_m], d/d weights) of sum_m contrastive(view_m, h, symmetric) with the
    fused view h_i = sum_m weights[i, m] view_m[i] (MICRO's fusion loss: one direction)."""
    dtype = views[0].dtype
    vs = [Bounded.exact(v.detach().cpu(), dtype) for v in views]
    w = Bounded.exact(weights.detach().cpu(), dtype)
    h = vs[0] * w[:, 0:1]
    for m in range(1, len(vs)):
        h = h + vs[m] * w[:, m:m + 1]
    loss, grads, gh = None, [], None
    for v in vs:
        lm, gv, ghm = contrastive_exact(v, h, tau, symmetric)
        loss = lm if loss is None else loss + lm
        grads.append(gv)
        gh = ghm if gh is None else gh + ghm
    view_grads = [g + gh * w[:, m:m + 1] for m, g in enumerate(grads)]
    gw = cat([(v * gh).sum(1, keepdim=True) for v in vs], 1)
    return loss, view_grads, gw


def fuse(views: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """h_i = sum_m weights[i, m] views[m][i] in plain torch (for references that need h)."""
    return sum(weights[:, m:m + 1] * v for m, v in enumerate(views))


# ---------------------------------------------------------------------------------------------
# full-ranking metrics, by brute force


def ranking_metrics(scores, train: list[set[int]], target: list[set[int]], ks, ndcg: str,
                    ) -> dict[str, float]:
    """Recall, precision, NDCG and hit at each K, by sorting every user's admissible items
    (not in ``train``) by score descending, ties to the smaller item id, in plain Python.
    ``ndcg="standard"``: ideal DCG of min(|T|, K) hits; ``"published"``: of the retrieved list
    (the top max(ks)) sorted hits first, cut at K (0 when there are no hits). Means over users
    with a target item."""
    n_users, n_items = len(scores), len(scores[0]) if len(scores) else 0
    sums: dict[str, float] = {}
    evaluated = 0
    for u in range(n_users):
        if not target[u]:
            continue
        evaluated += 1
        ranked = sorted((i for i in range(n_items) if i not in train[u]),
                        key=lambda i, row=scores[u]: (-float(row[i]), i))
        retrieved = sum(1 for i in ranked[:max(ks)] if i in target[u])
        for k in dict.fromkeys(ks):  # a repeated cut-off is one metric
            hits = [1.0 if i in target[u] else 0.0 for i in ranked[:k]]
            h = sum(hits)
            dcg = sum(x / math.log2(j + 2) for j, x in enumerate(hits))
            n_ideal = min(len(target[u]) if ndcg == "standard" else retrieved, k)
            idcg = sum(1.0 / math.log2(j + 2) for j in range(n_ideal))
            values = {"recall": h / len(target[u]), "precision": h / k,
                      "ndcg": dcg / idcg if idcg > 0 else 0.0, "hit": 1.0 if h > 0 else 0.0}
            for name, v in values.items():
                key = f"{name}@{k}"
                sums[key] = sums.get(key, 0.0) + v
    out = {key: (v / evaluated) for key, v in sums.items()}
    out["users"] = evaluated
    return out
