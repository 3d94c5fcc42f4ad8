"""Every GPU kernel of micro_fast called on small, odd-sized problems, forward and backward,
each result checked against ``torch_ref`` on the CPU: the workload of the GPU check's
compute-sanitizer runs (memcheck, racecheck, synccheck).

    compute-sanitizer --tool memcheck python benchmarks/gpu_sanitize_ops.py
    python benchmarks/gpu_sanitize_ops.py                       # the same, without a sanitizer
    python benchmarks/gpu_sanitize_ops.py --device cpu          # the CPU backends instead

On a CUDA device it runs the ``cuda`` backend (``micro_fast._cuda``), ``triton`` (where it is
installed: its kernels are named ``micro_fast_*`` for the sanitizer's filter) and ``numba_cuda``; on
the CPU, ``cpp``; ``--backends`` names others. What each backend has (``hasattr``) is called:

* ``topk_similarity``: symmetric (keys = queries) and against other keys, N = 37 and 129,
  d = 1, 5, 33 and 100, k = 1, 10 and k near or at N, default and 7-row blocks, with and
  without an exclude graph that has empty rows and one fully excluded row (padded output),
  float32 and float64, and its backward; for ``cuda`` also key chunks of 13 (ragged last
  chunk) through the backend function;
* ``knn_graph`` (``"sym"`` and ``"rw"``, k = 10 and k = N) and its backward;
* ``spmm`` forward and backward (``sddmm`` for the values, ``spmm`` with the transpose for
  ``x``) on a rectangular graph with empty rows and an empty column, a symmetric one and an
  empty one, d = 1, 5, 33, 100 and 130; ``propagate`` (2 layers, ``"mean"``) forward and
  backward; a backend's own ``csr_transpose``, where it has one, against torch_ref's;
* ``contrastive_loss`` forward and backward, one- and two-direction, N = 1, 37 and 129,
  default and 16-row blocks, tau 0.5 and 0.2; ``contrastive_fusion_loss`` of two views;
* ``metrics.full_ranking`` (a user whose every item is a training item, so padded rows).

Tolerances: float64 to 1e-9 relative, float32 to 2e-4 relative of the largest reference value.
Each call prints one line (``ok`` or ``FAIL``, backend, op, problem, largest error); the last
line counts them. Exit status: 0 when every call ran and matched, 1 otherwise, 2 when a
backend asked for is not available. Nothing is timed.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import traceback

import torch

import micro_fast as mf
from micro_fast import CSRGraph, backends
from micro_fast.metrics import full_ranking

TOL = {torch.float32: (2e-4, 1e-5), torch.float64: (1e-9, 1e-12)}


class Runner:
    def __init__(self, device: torch.device, dtypes: list[torch.dtype]) -> None:
        self.device = device
        self.dtypes = dtypes
        self.calls = 0
        self.failed: list[str] = []
        self.ops: dict[str, set[str]] = {}
        self.gen = torch.Generator().manual_seed(0)

    def randn(self, *shape, dtype=torch.float64) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen, dtype=torch.float64).to(dtype)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def check(self, backend: str, op: str, desc: str, fn) -> None:
        """Runs ``fn() -> (ok, largest error)`` and prints the outcome; an exception fails."""
        self.calls += 1
        self.ops.setdefault(backend, set()).add(op)
        try:
            ok, err = fn()
            self.sync()
        except Exception as exc:  # noqa: BLE001 - every call runs, failures are counted
            traceback.print_exc()
            ok, err = False, f"{type(exc).__name__}: {str(exc)[:200]}"
        if not ok:
            self.failed.append(f"{backend} {op} {desc}")
        shown = f"{err:.1e}" if isinstance(err, float) else str(err)
        print(f"{'ok  ' if ok else 'FAIL'} {backend:<10} {op:<24} {desc}  err {shown}",
              flush=True)


def _close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> tuple[bool, float]:
    got, want = got.detach().cpu().double(), want.detach().cpu().double()
    if got.shape != want.shape:
        return False, float("inf")
    if got.numel() == 0:
        return True, 0.0
    rtol, atol = TOL[dtype]
    err = float((got - want).abs().max())
    return err <= atol + rtol * max(1.0, float(want.abs().max())), err


def _all_close(pairs, dtype) -> tuple[bool, float]:
    ok, worst = True, 0.0
    for got, want in pairs:
        o, e = _close(got, want, dtype)
        ok, worst = ok and o, max(worst, e)
    return ok, worst


def _mask_graph(r: Runner, m: int, n: int, p: float = 0.3) -> tuple[CSRGraph, torch.Tensor]:
    """An exclude graph with empty rows and one fully excluded row."""
    mask = torch.rand(m, n, generator=r.gen) < p
    mask[torch.rand(m, generator=r.gen) < 0.3] = False
    mask[min(2, m - 1)] = True
    return CSRGraph.from_dense(mask.to(torch.float64)), mask


def _topk_ok(v, i, rv, ri, sim, mask, dtype) -> tuple[bool, float]:
    """Same padding, values within tolerance, the values are the similarities of the returned
    keys, no key twice in a row, no excluded key."""
    v, i = v.detach().cpu(), i.cpu()
    if v.shape != rv.shape or not torch.equal(i < 0, ri < 0):
        return False, float("inf")
    pad = i < 0
    if not bool(torch.isneginf(v[pad]).all()):
        return False, float("inf")
    ok, err = _close(v[~pad], rv[~pad], dtype)
    true = torch.gather(sim, 1, i.clamp_min(0))[~pad]
    ok2, err2 = _close(true, v[~pad].double(), dtype)
    ok, err = ok and ok2, max(err, err2)
    for row in i:
        row = row[row >= 0]
        ok = ok and row.unique().numel() == row.numel()
    if mask is not None and bool((~pad).any()):
        rows = torch.nonzero(~pad)[:, 0]
        ok = ok and not bool(mask[rows, i[~pad]].any())
    return ok, err


def topk_cases(r: Runner, backend: str) -> None:
    dev = r.device
    shapes = [(37, None, 5), (129, None, 33), (37, 129, 100), (129, 37, 1)]
    for dtype in r.dtypes:
        for c, (m, n, d) in enumerate(shapes):
            q = r.randn(m, d, dtype=dtype)
            keys = None if n is None else r.randn(n, d, dtype=dtype)
            nk = m if n is None else n
            sim = q.double() @ (q if keys is None else keys).double().T
            for k in sorted({1, min(10, nk), nk - 1 if nk > 1 else 1, nk}):
                for block in (None, 7):
                    with_ex = (k + (block or 0) + c) % 2 == 0
                    ex, mask = _mask_graph(r, m, nk) if with_ex else (None, None)
                    desc = (f"{'sym' if keys is None else 'keys'} M={m} N={nk} d={d} k={k} "
                            f"block={block} {'exclude ' if with_ex else ''}{str(dtype)[6:]}")

                    def run(q=q, keys=keys, k=k, block=block, ex=ex, mask=mask, sim=sim,
                            dtype=dtype):
                        rv, ri = mf.topk_similarity(q, keys, k, exclude=ex, block_size=block,
                                                    backend="torch_ref")
                        qd = q.to(dev).requires_grad_()
                        kd = None if keys is None else keys.to(dev)
                        v, i = mf.topk_similarity(qd, kd, k, block_size=block,
                                                  exclude=None if ex is None else ex.to(dev),
                                                  backend=backend)
                        v.masked_fill(i < 0, 0).sum().backward()  # the sparse backward
                        return _topk_ok(v, i, rv, ri, sim, mask, dtype)

                    r.check(backend, "topk_similarity", desc, run)
        if backend == "cuda":
            from micro_fast.backends import cuda as cuda_backend

            q = r.randn(129, 33, dtype=dtype)
            sim = q.double() @ q.double().T
            for keys in (None, r.randn(100, 33, dtype=dtype)):
                nk = 129 if keys is None else 100
                ksim = sim if keys is None else q.double() @ keys.double().T
                ex, mask = _mask_graph(r, 129, nk)
                for k in (10, nk):
                    desc = (f"backend chunk=13 {'sym' if keys is None else 'keys'} M=129 "
                            f"N={nk} d=33 k={k} block=7 exclude {str(dtype)[6:]}")

                    def run(q=q, keys=keys, k=k, ex=ex, mask=mask, ksim=ksim, dtype=dtype):
                        rv, ri = mf.topk_similarity(q, keys, k, exclude=ex, backend="torch_ref")
                        v, i = cuda_backend.topk_similarity(
                            q.to(dev), None if keys is None else keys.to(dev), k,
                            (ex.indptr.to(dev), ex.indices.to(dev)), 7, chunk_size=13)
                        return _topk_ok(v, i, rv, ri, ksim, mask, dtype)

                    r.check(backend, "topk_similarity", desc, run)


def knn_cases(r: Runner, backend: str) -> None:
    for dtype in r.dtypes:
        for n, d, k, norm in ((129, 33, 10, "sym"), (37, 5, 37, "rw"), (37, 100, 10, "none")):
            x = r.randn(n, d, dtype=dtype)
            w = r.randn(n * k, dtype=dtype)

            def run(x=x, k=k, norm=norm, w=w, dtype=dtype):
                xr = x.clone().requires_grad_()
                g = mf.knn_graph(xr, k, normalization=norm, backend="torch_ref")
                (g.values * w).sum().backward()
                xd = x.to(r.device).requires_grad_()
                gd = mf.knn_graph(xd, k, normalization=norm, backend=backend)
                (gd.values * w.to(r.device)).sum().backward()
                return _all_close([(gd.to_dense(), g.to_dense()), (xd.grad, xr.grad)], dtype)

            r.check(backend, "knn_graph", f"N={n} d={d} k={k} {norm} fwd+bwd "
                    f"{str(dtype)[6:]}", run)


def _graphs(r: Runner, dtype: torch.dtype) -> list[tuple[str, CSRGraph]]:
    dense = r.randn(37, 129, dtype=dtype) * (torch.rand(37, 129, generator=r.gen) < 0.1)
    dense[[0, 5, 36]] = 0  # empty rows
    dense[:, 7] = 0  # an empty column
    rect = CSRGraph.from_dense(dense)
    users = torch.randint(0, 60, (300,), generator=r.gen)
    items = torch.randint(0, 69, (300,), generator=r.gen)
    sym = mf.bipartite_graph(users, items, 60, 69, normalization="sym", dtype=dtype)
    empty = CSRGraph.from_dense(torch.zeros(37, 37, dtype=dtype))
    return [("rect 37x129 empty rows", rect), ("bipartite sym 129", sym), ("empty 37", empty)]


def spmm_cases(r: Runner, backend: str) -> None:
    dev = r.device
    for dtype in r.dtypes:
        for name, g in _graphs(r, dtype):
            for d in (1, 5, 33, 100, 130):
                x = r.randn(g.shape[1], d, dtype=dtype)
                w = r.randn(g.shape[0], d, dtype=dtype)

                def run(g=g, x=x, w=w, dtype=dtype):
                    out = []
                    for b, device in (("torch_ref", torch.device("cpu")), (backend, dev)):
                        gd = g.to(device)
                        v = gd.values.clone().requires_grad_()
                        xr = x.to(device).requires_grad_()
                        y = mf.spmm(gd.with_values(v), xr, backend=b)
                        (y * w.to(device)).sum().backward()
                        out.append((y, xr.grad, v.grad))
                    return _all_close(list(zip(out[1], out[0], strict=True)), dtype)

                r.check(backend, "spmm+sddmm", f"{name} d={d} fwd+bwd "
                        f"{str(dtype)[6:]}", run)
        users = torch.randint(0, 50, (250,), generator=r.gen)
        items = torch.randint(0, 79, (250,), generator=r.gen)
        g = mf.bipartite_graph(users, items, 50, 79, normalization="rw", self_loops=True,
                               dtype=dtype)
        x = r.randn(g.shape[1], 33, dtype=dtype)

        def run_prop(g=g, x=x, dtype=dtype):
            out = []
            for b, device in (("torch_ref", torch.device("cpu")), (backend, dev)):
                xr = x.to(device).requires_grad_()
                y = mf.propagate(g.to(device), xr, 2, combine="mean", backend=b)
                (y * y).sum().backward()
                out.append((y, xr.grad))
            return _all_close(list(zip(out[1], out[0], strict=True)), dtype)

        r.check(backend, "propagate", f"rw+I 129 layers=2 mean d=33 fwd+bwd "
                f"{str(dtype)[6:]}", run_prop)


def transpose_cases(r: Runner, backend: str) -> None:
    from micro_fast.backends import torch_ref

    mod = backends.get(backend, r.device, op="topk_similarity")
    if not hasattr(mod, "csr_transpose") or not hasattr(torch_ref, "csr_transpose"):
        return

    for m, n, p in ((37, 129, 0.1), (129, 37, 0.3), (37, 37, 0.0)):
        dense = (torch.rand(m, n, generator=r.gen) < p).to(torch.float64)
        dense[1] = 0
        g = CSRGraph.from_dense(dense)

        def run(g=g, n=n):
            want = torch_ref.csr_transpose(g.indptr, g.indices, n)
            got = mod.csr_transpose(g.indptr.to(r.device), g.indices.to(r.device), n)
            ok = all(torch.equal(a.cpu(), b) for a, b in zip(got, want, strict=True))
            return ok, 0.0 if ok else float("inf")

        r.check(backend, "csr_transpose", f"{m}x{n} nnz={g.nnz}", run)


def contrastive_cases(r: Runner, backend: str) -> None:
    mod = backends.get(backend, r.device, op="topk_similarity")
    if not hasattr(mod, "contrastive_forward"):
        return
    dev = r.device
    for dtype in r.dtypes:
        for n, d in ((1, 3), (37, 5), (129, 33)):
            a, b = r.randn(n, d, dtype=dtype), r.randn(n, d, dtype=dtype)
            for symmetric in (False, True):
                for block, tau in ((None, 0.5), (16, 0.2)):
                    def run(a=a, b=b, symmetric=symmetric, block=block, tau=tau, dtype=dtype):
                        out = []
                        for bk, device in (("torch_ref", torch.device("cpu")), (backend, dev)):
                            z1 = a.to(device).requires_grad_()
                            z2 = b.to(device).requires_grad_()
                            loss = mf.contrastive_loss(z1, z2, tau=tau, symmetric=symmetric,
                                                       block_size=block, backend=bk)
                            loss.backward()
                            out.append((loss, z1.grad, z2.grad))
                        return _all_close(list(zip(out[1], out[0], strict=True)), dtype)

                    r.check(backend, "contrastive_loss", f"N={n} d={d} "
                            f"{'symmetric' if symmetric else 'one-way'} block={block} "
                            f"tau={tau} fwd+bwd {str(dtype)[6:]}", run)
        views = [r.randn(129, 33, dtype=dtype) for _ in range(2)]
        logits = r.randn(129, 2, dtype=dtype)

        def run_fusion(views=views, logits=logits, dtype=dtype):
            out = []
            for bk, device in (("torch_ref", torch.device("cpu")), (backend, dev)):
                vs = [v.to(device).requires_grad_() for v in views]
                lg = logits.to(device).requires_grad_()
                loss = mf.contrastive_fusion_loss(vs, torch.softmax(lg, dim=1), tau=0.5,
                                                  backend=bk)
                loss.backward()
                out.append((loss, vs[0].grad, vs[1].grad, lg.grad))
            return _all_close(list(zip(out[1], out[0], strict=True)), dtype)

        r.check(backend, "contrastive_fusion_loss", f"2 views N=129 d=33 fwd+bwd "
                f"{str(dtype)[6:]}", run_fusion)


def ranking_cases(r: Runner, backend: str) -> None:
    n_users, n_items = 37, 129
    train_mask = torch.rand(n_users, n_items, generator=r.gen) < 0.1
    train_mask[3] = True  # every item seen: the ranking has no candidate left
    target_mask = (torch.rand(n_users, n_items, generator=r.gen) < 0.05) & ~train_mask
    target_mask[4, :3] = True
    train_mask[4, :3] = False
    train = CSRGraph.from_dense(train_mask.to(torch.float32))
    target = CSRGraph.from_dense(target_mask.to(torch.float32))
    for dtype in r.dtypes:
        u, i = r.randn(n_users, 16, dtype=dtype), r.randn(n_items, 16, dtype=dtype)

        def run(u=u, i=i):
            want = full_ranking(u, i, train, target, ks=(5, 20, 200), backend="torch_ref")
            dev = r.device
            got = full_ranking(u.to(dev), i.to(dev), train.to(dev), target.to(dev),
                               ks=(5, 20, 200), user_block=7, backend=backend)
            err = max(abs(got[k] - want[k]) for k in want)
            return err <= 1e-6 and got.keys() == want.keys(), float(err)

        r.check(backend, "full_ranking", f"U={n_users} I={n_items} d=16 ks=5,20,200 "
                f"user_block=7 {str(dtype)[6:]}", run)


CASES = [topk_cases, knn_cases, spmm_cases, transpose_cases, contrastive_cases, ranking_cases]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--backends", default=None,
                   help="comma list (default: cuda,numba_cuda on a CUDA device, cpp on the CPU)")
    p.add_argument("--dtypes", default="float32,float64")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda but torch sees no CUDA device (use --device cpu)")
        return 2
    gpu_default = ["cuda", *(["triton"] if importlib.util.find_spec("triton") else []),
                   "numba_cuda"]
    names = (args.backends.split(",") if args.backends
             else gpu_default if device.type == "cuda" else ["cpp"])
    dtypes = [getattr(torch, t.strip()) for t in args.dtypes.split(",") if t.strip()]
    os.environ.setdefault("MICRO_FAST_TUNE", "0")
    status = backends.status()
    missing = [b for b in names if status.get(b) != "available"]
    for b in missing:
        print(f"backend {b} not available: {status.get(b, 'unknown backend')}")
    names = [b for b in names if b not in missing]
    print(f"gpu_sanitize_ops: device {device}, backends {names}, dtypes {args.dtypes}",
          flush=True)
    r = Runner(device, dtypes)
    for name in names:
        for case in CASES:
            case(r, name)
    print("called: " + "; ".join(f"{b}: {', '.join(sorted(ops))}" for b, ops in r.ops.items()))
    print(f"{r.calls} calls, {len(r.failed)} failed"
          + (f", backends not available: {', '.join(missing)}" if missing else ""))
    for f in r.failed:
        print(f"  failed: {f}")
    if missing:
        return 2
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())
