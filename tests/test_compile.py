"""The ops as PyTorch custom operators: torch.library.opcheck, torch.compile without graph
breaks, CSRGraph through compiled code, no host read-back on the op path."""

from __future__ import annotations

import json

import pytest
import torch
from bounds import assert_close
from helpers import assert_gradients_parity, assert_parity
from oracles import project_rows_exact

import micro_fast as mf
from micro_fast import backends
from micro_fast.graph import CSRGraph

CPU = [b for b in ("cpp", "numba", "torch_ref") if b in backends.available("cpu")]
DTYPES = [torch.float32, torch.float64]


def _graph(n: int, dtype: torch.dtype, symmetric: bool, seed: int = 0) -> CSRGraph:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=gen, dtype=dtype)
    g = mf.knn_graph(x, k=4, normalization="sym" if symmetric else "rw")
    return g


def _breaks(fn, *args) -> tuple[int, list[str]]:
    torch._dynamo.reset()
    ex = torch._dynamo.explain(fn)(*args)
    return ex.graph_break_count, [str(b.reason) for b in ex.break_reasons]


@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("grad", [False, True])
def test_opcheck_spmm_and_sddmm(backend, dtype, grad):
    g = _graph(30, dtype, symmetric=False)
    t_indptr, t_indices = g.transposed_structure()
    values = g.values.detach().clone().requires_grad_(grad)
    x = torch.randn(30, 5, dtype=dtype, requires_grad=grad)
    torch.library.opcheck(torch.ops.micro_fast.spmm.default,
                          (g.indptr, g.indices, values, x, t_indptr, t_indices,
                           g.transposed_values(), backend))
    a, b = torch.randn(30, 5, dtype=dtype), torch.randn(30, 5, dtype=dtype)
    torch.library.opcheck(torch.ops.micro_fast.sddmm.default,
                          (g.indptr, g.indices, a, b, backend))


@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("symmetric", "grad"), [(False, False), (False, True), (True, True)])
def test_opcheck_topk_similarity(backend, dtype, symmetric, grad):
    gen = torch.Generator().manual_seed(6)
    q = torch.randn(25, 6, generator=gen, dtype=dtype, requires_grad=grad)
    keys = None if symmetric else torch.randn(18, 6, generator=gen, dtype=dtype,
                                              requires_grad=grad)
    exclude = mf.CSRGraph.from_dense((torch.rand(25, 25 if symmetric else 18,
                                                 generator=gen) < 0.2).to(dtype))
    torch.library.opcheck(torch.ops.micro_fast.topk_similarity.default,
                          (q, keys, q.detach(), None if keys is None else keys.detach(), 4,
                           exclude.indptr, exclude.indices, None, backend, False, "queries",
                           "keys"))


@pytest.mark.parametrize("symmetric", [False, True])
def test_spmm_and_propagate_compile_without_graph_breaks(symmetric):
    g = _graph(40, torch.float64, symmetric)
    g.values.requires_grad_(True)
    x = torch.randn(40, 6, dtype=torch.float64, requires_grad=True,
                    generator=torch.Generator().manual_seed(1))

    def step(graph: CSRGraph, x: torch.Tensor) -> torch.Tensor:
        y = mf.spmm(graph, x).relu()
        return (mf.propagate(graph, y, 2, combine="mean") ** 2).sum()

    count, reasons = _breaks(step, g, x)
    assert count == 0, reasons
    eager = step(g, x)
    grads = torch.autograd.grad(eager, (g.values, x))
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)
    out = compiled(g, x)
    got = torch.autograd.grad(out, (g.values, x))
    # float64: the compiled graph fuses the elementwise torch around the same kernels
    assert_parity(out, eager, "loss")
    assert_gradients_parity(got, grads)


def test_csr_graph_is_a_pytree():
    g = _graph(20, torch.float64, symmetric=False)
    leaves, spec = torch.utils._pytree.tree_flatten(g)
    assert len(leaves) == 3                         # no transpose built yet
    g.transposed_structure()
    leaves, spec = torch.utils._pytree.tree_flatten(g)
    assert len(leaves) == 6                         # the cached transpose travels along
    back = torch.utils._pytree.tree_unflatten(leaves, spec)
    assert isinstance(back, CSRGraph) and back.shape == g.shape
    assert back.symmetric == g.symmetric
    assert torch.equal(back.to_dense(), g.to_dense())
    assert torch.equal(back.transposed_structure()[1], g.transposed_structure()[1])

    @torch.compile(fullgraph=True)
    def reweight(graph: CSRGraph) -> CSRGraph:
        return graph.with_values(graph.values * 2)

    out = reweight(g)
    assert isinstance(out, CSRGraph) and torch.equal(out.values, g.values * 2)


@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("symmetric", [False, True])
def test_opcheck_contrastive_loss(backend, dtype, symmetric):
    gen = torch.Generator().manual_seed(1)
    z1 = torch.randn(20, 6, generator=gen, dtype=dtype, requires_grad=True)
    z2 = torch.randn(20, 6, generator=gen, dtype=dtype, requires_grad=True)
    n1 = (z1 / z1.norm(dim=1, keepdim=True)).detach().requires_grad_()
    n2 = (z2 / z2.norm(dim=1, keepdim=True)).detach().requires_grad_()
    args = (z1.detach(), z2.detach(), n1, n2, 0.5, symmetric, None, backend, "z1", "z2")
    torch.library.opcheck(torch.ops.micro_fast.contrastive_loss.default, args)
    loss, lse1, lse2 = torch.ops.micro_fast.contrastive_loss(*args)
    torch.library.opcheck(torch.ops.micro_fast.contrastive_loss_backward.default,
                          (n1.detach(), n2.detach(), lse1, lse2, torch.ones((), dtype=dtype),
                           0.5, symmetric, None, backend))


@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck_contrastive_fusion_lse(dtype):
    if "cpp" not in CPU:
        pytest.skip("the fused kernel is compiled")
    gen = torch.Generator().manual_seed(2)
    views = [torch.randn(16, 5, generator=gen, dtype=dtype) for _ in range(2)]
    weights = torch.softmax(torch.randn(16, 2, generator=gen, dtype=dtype), dim=1)
    fused = weights[:, :1] * views[0] + weights[:, 1:] * views[1]
    u = torch.stack([v / v.norm(dim=1, keepdim=True) for v in views]).requires_grad_()
    norms = torch.stack([v.norm(dim=1) for v in views], dim=1)
    fused_norm = fused.norm(dim=1, keepdim=True)
    coef = (weights * norms / fused_norm).requires_grad_()
    torch.library.opcheck(torch.ops.micro_fast.contrastive_fusion_lse.default,
                          (views, weights, u, coef, fused_norm, 0.5, None, "cpp"))


@pytest.mark.parametrize("backend", CPU)
def test_contrastive_losses_compile_without_graph_breaks(backend):
    gen = torch.Generator().manual_seed(3)
    z1 = torch.randn(30, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(30, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(30, 2, generator=gen, dtype=torch.float64, requires_grad=True)

    def loss_fn(z1, z2, w):
        weights = torch.softmax(w, dim=1)
        return mf.contrastive_loss(z1, z2, tau=0.5, backend=backend) + \
            mf.contrastive_fusion_loss([z1, z2], weights, tau=0.5, backend=backend)

    count, reasons = _breaks(loss_fn, z1, z2, w)
    assert count == 0, reasons
    eager = loss_fn(z1, z2, w)
    grads = torch.autograd.grad(eager, (z1, z2, w))
    torch._dynamo.reset()
    out = torch.compile(loss_fn, fullgraph=True)(z1, z2, w)
    got = torch.autograd.grad(out, (z1, z2, w))
    assert_parity(out, eager, "loss")
    assert_gradients_parity(got, grads)


def _refuse_reads_outside_the_checks(monkeypatch) -> list[str]:
    """Patches the Tensor methods that read a value back to the host: a read from anywhere but
    the ops' value checks (which on a GPU become device assertions) fails the test."""
    import traceback

    allowed = ("micro_fast/ops/_checks.py",)
    reads: list[str] = []

    def guard(original):
        def read(self, *args, **kwargs):
            caller = traceback.extract_stack()[-2]
            if not any(caller.filename.endswith(a) for a in allowed):
                raise AssertionError(f"read back at {caller.filename}:{caller.lineno}")
            reads.append(f"{caller.filename}:{caller.lineno}")
            return original(self, *args, **kwargs)
        return read

    for name in ("item", "__bool__", "tolist", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, guard(getattr(torch.Tensor, name)))
    return reads


def test_ops_read_back_only_in_their_value_checks(monkeypatch):
    gen = torch.Generator().manual_seed(4)
    z1 = torch.randn(25, 8, generator=gen, requires_grad=True)
    z2 = torch.randn(25, 8, generator=gen, requires_grad=True)
    weights = torch.softmax(torch.randn(25, 2, generator=gen), dim=1).requires_grad_()
    reads = _refuse_reads_outside_the_checks(monkeypatch)
    loss = mf.contrastive_loss(z1, z2) + mf.contrastive_fusion_loss([z1, z2], weights)
    graph = mf.knn_graph(z1, k=5)                  # the top-k search and the normalization
    values, _ = mf.topk_similarity(z1, z2, k=3)
    (loss + graph.values.sum() + values.sum()).backward()
    assert reads and z1.grad is not None and weights.grad is not None


def test_no_host_read_back_on_the_spmm_path(monkeypatch):
    g = _graph(25, torch.float32, symmetric=False)
    x = torch.randn(25, 4, requires_grad=True)
    g.transposed_values()                           # built where the graph is made

    def refuse(*_a, **_k):
        raise AssertionError("a tensor value was read back to the host")

    for name in ("item", "__bool__", "tolist", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    y = mf.propagate(g, mf.spmm(g, x), 2, combine="mean")
    y.sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("build", [False, True])
def test_micro_training_step_compiles_with_fullgraph(build):
    """model.loss (with the kNN rebuild or without) has no graph break; the compiled loss and
    its gradients equal the eager ones."""
    from micro_fast.data import BPRSampler, synthetic
    from micro_fast.models import MICRO

    ds = synthetic("tiny", seed=0)
    torch.manual_seed(0)
    model = MICRO(ds.n_users, ds.n_items, ds.features).double()
    users, items = ds.train_pairs()
    ui = mf.bipartite_graph(users, items, ds.n_users, ds.n_items, normalization="rw",
                            self_loops=True, dtype=torch.float64)
    batch = BPRSampler(ds.train, batch_size=64, seed=0).sample()
    model.loss(ui, *batch, build_item_graph=True)       # the learned graphs exist

    def step(ui, u, p, n):
        return model.loss(ui, u, p, n, build_item_graph=build)[0]

    count, reasons = _breaks(step, ui, *batch)
    assert count == 0, reasons
    params = [p for p in model.parameters() if p.requires_grad]
    eager = step(ui, *batch)
    want = torch.autograd.grad(eager, params, allow_unused=True)
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)
    got_loss = compiled(ui, *batch)
    got = torch.autograd.grad(got_loss, params, allow_unused=True)
    assert_parity(got_loss, eager, "loss")
    assert [a is None for a in got] == [b is None for b in want]
    assert_gradients_parity(got, want)


@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("normalization", ["sym", "rw", "none"])
def test_opcheck_bipartite_graph(backend, normalization):
    gen = torch.Generator().manual_seed(5)
    users = torch.randint(0, 7, (30,), generator=gen)
    items = torch.randint(0, 9, (30,), generator=gen)
    torch.library.opcheck(torch.ops.micro_fast.bipartite_graph.default,
                          (users, items, 7, 9, normalization, True, "sum", torch.float64,
                           backend))


def test_training_with_compile_matches_eager(tmp_path):
    """``micro-fast train --compile``: the same losses and metrics as eager, and no
    recompilation per epoch (the kNN graphs rebuilt each epoch keep their shapes)."""
    from torch._dynamo.utils import counters

    from micro_fast.train import TrainConfig, train

    base = dict(data="synthetic:tiny", epochs=3, eval_every=1, progress=False, seed=4)
    eager = train(TrainConfig(out=str(tmp_path / "eager"), **base))
    torch._dynamo.reset()
    counters.clear()
    compiled = train(TrainConfig(out=str(tmp_path / "compiled"), compile=True, **base))
    # the first rebuilding batch, the first ordinary one, each once more when the stored
    # graphs' values start requiring grad; none for the later epochs
    assert counters["stats"]["unique_graphs"] <= 4, dict(counters["stats"])

    def rows(name):
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    for a, b in zip(rows("eager"), rows("compiled"), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["valid"]["recall@20"] == pytest.approx(b["valid"]["recall@20"], abs=1e-3)
    assert compiled["test_at_best"]["recall@20"] == pytest.approx(
        eager["test_at_best"]["recall@20"], abs=2e-3)


@pytest.mark.parametrize("backend", [b for b in ("cpp", "torch_ref") if b in CPU])
def test_opcheck_sample_edges(backend):
    w = torch.rand(40, dtype=torch.float64)
    torch.library.opcheck(torch.ops.micro_fast.sample_edges.default, (w, 12, 7, backend))


@pytest.mark.parametrize("backend", [b for b in ("cpp", "torch_ref") if b in CPU])
def test_opcheck_project_rows(backend):
    from helpers import projection_problem

    x, w, b, rows = projection_problem(10, 7, 3, [1, 4, 5, 9], seed=4)
    torch.library.opcheck(torch.ops.micro_fast.project_rows.default, (x, rows, w, b, backend))
    g = torch.randn(4, 3, dtype=torch.float64)
    torch.library.opcheck(torch.ops.micro_fast.project_rows_backward.default,
                          (x.detach(), rows, w.detach(), g, True, True, backend))
    compiled = torch.compile(lambda x, w, b: mf.project_rows(x, w, b, rows, backend=backend),
                             fullgraph=True)
    assert_close(compiled(x, w, b), project_rows_exact(x, w, b, rows)[0])
