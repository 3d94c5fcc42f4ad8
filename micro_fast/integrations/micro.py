"""The published MICRO code on this library's kernels, installed with one call.

The published implementation (CRIPAC-DIG/MICRO, ``codes/``) builds each item graph from a dense
N x N cosine matrix (``build_sim``), keeps the top k per row with ``torch.topk`` and a Python
loop over the indices, normalizes with ``torch_scatter``, evaluates the contrastive loss over all
items in 4096-row chunks with the exponentiated score blocks kept for autograd, multiplies
torch COO tensors, and ranks users with a process pool over heapq. The drop-ins below keep the
published signatures and numbers:

* ``build_sim(context)`` returns a ``SimilarityHandle``: the cosine similarity of the rows of
  ``context``, never formed; ``build_knn_normalized_graph``, ``build_knn_neighbourhood`` accept
  it (and still accept a dense similarity matrix, on the published path of ``torch.topk``).
* ``build_knn_normalized_graph(adj, topk, is_sparse, norm_type)`` returns the normalized top-k
  graph as a ``CSRGraph`` for both values of ``is_sparse`` (the published dense and sparse paths
  compute the same graph); ``torch.mm``, ``torch.sparse.mm``, ``*`` and ``+`` accept it, so the
  published forward (graphs mixed as ``(1 - lambda) * learned + lambda * original``, then
  ``torch.sparse.mm`` or ``torch.mm``) runs unchanged on the library's spmm.
* ``get_sparse_laplacian(edge_index, edge_weight, num_nodes, normalization)`` without
  torch_scatter; ``compute_normalized_laplacian(adj)`` (LATTICE's form) on graphs too.
* ``<model>.batched_contrastive_loss(z1, z2, batch_size)`` is the fused contrastive loss (its
  ``batch_size`` no longer matters: nothing N x N is formed). Rows are normalized as published
  (``F.normalize``: a zero row is a zero vector).
* ``<trainer>.sparse_mx_to_torch_sparse_tensor(sparse_mx)`` returns the user-item adjacency as a
  float32 ``CSRGraph`` (``.float()``, ``.cuda()`` and ``torch.sparse.mm`` work on it), so the
  LightGCN product written inline in the published ``forward`` runs on the library's spmm.
* ``test_torch(ua_embeddings, ia_embeddings, users_to_test, is_val, ...)`` returns the
  published metric dict (recall, precision, the published NDCG, hit ratio at the module's
  ``Ks``, and ``auc``) from a streamed top-k with the training items excluded: no users x items
  block, no process pool (the published ``cpu_count() // 5`` workers are none on small
  machines).

``patch(*modules)`` installs every drop-in whose name it finds in the given modules (and in
their classes, for the two methods), and returns the ``Patch``; ``unpatch`` restores it. For
the published training script, in ``main.py`` after its imports::

    import Models, utility.batch_test as batch_test, micro_fast.integrations.micro as mf_micro
    mf_micro.patch(Models, batch_test, sys.modules[__name__])

What stays on torch: the projections, the attention fusion, the BPR loss, the optimizer and the
data sampling of the published code.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from micro_fast.errors import InputError, InputTypeError
from micro_fast.graph import CSRGraph
from micro_fast.integrations import _patching
from micro_fast.integrations.ranking import published_test_torch
from micro_fast.ops.bipartite_graph import bipartite_graph
from micro_fast.ops.contrastive_loss import contrastive_loss
from micro_fast.ops.knn_graph import graph_from_topk, knn_graph

NORMALIZATIONS = ("sym", "rw", "none")


class SimilarityHandle:
    """The cosine similarity matrix of the rows of ``context`` [N, d] (float32/float64), as the
    published ``build_sim`` defines it, without forming it: the graph builders of this module
    search it with the library's fused top-k. ``dense()`` forms it (the published result)."""

    def __init__(self, context: torch.Tensor):
        if not isinstance(context, torch.Tensor) or context.dim() != 2:
            raise InputTypeError(f"context must be a 2-d tensor, got {type(context).__name__}")
        self.context = context

    @property
    def shape(self) -> torch.Size:
        n = self.context.shape[0]
        return torch.Size((n, n))

    @property
    def device(self) -> torch.device:
        return self.context.device

    @property
    def dtype(self) -> torch.dtype:
        return self.context.dtype

    def dense(self) -> torch.Tensor:
        """[N, N]: the rows divided by their norms, times their transpose (published)."""
        unit = self.context / torch.linalg.vector_norm(self.context, dim=-1, keepdim=True)
        return unit @ unit.T

    def __repr__(self) -> str:
        return f"SimilarityHandle(N={self.context.shape[0]}, d={self.context.shape[1]})"


def build_sim(context: torch.Tensor) -> SimilarityHandle:
    """The published ``build_sim``: cosine similarities of the rows of ``context`` [N, d], here
    a lazy ``SimilarityHandle`` (the published code returns the dense [N, N] matrix; a zero row,
    which it turns into NaN, is an error in the graph builders)."""
    return SimilarityHandle(context)


def _check_norm(norm_type: str) -> str:
    if norm_type not in NORMALIZATIONS:
        raise InputError(f"norm_type must be one of {NORMALIZATIONS}, got {norm_type!r}")
    return norm_type


def _topk_graph(adj: SimilarityHandle | torch.Tensor, topk: int, normalization: str,
                name: str) -> CSRGraph:
    if isinstance(adj, SimilarityHandle):
        return knn_graph(adj.context, topk, normalization=normalization)
    if isinstance(adj, torch.Tensor) and adj.layout == torch.strided and adj.dim() == 2:
        # a dense similarity matrix: the published torch.topk over it (ties as torch orders them)
        values, indices = torch.topk(adj, topk, dim=-1)
        return graph_from_topk(values, indices, normalization)
    raise InputTypeError(f"{name} must be build_sim's result or a dense [N, N] tensor, got "
                         f"{type(adj).__name__}")


def build_knn_normalized_graph(adj: SimilarityHandle | torch.Tensor, topk: int,
                               is_sparse: bool = True, norm_type: str = "sym") -> CSRGraph:
    r"""The published graph builder: each row's ``topk`` largest similarities (the item itself
    included), normalized with the row sums :math:`d` of the kept values: ``"sym"``
    :math:`d_i^{-1/2} s_{ij} d_j^{-1/2}`, ``"rw"`` :math:`d_i^{-1} s_{ij}`, ``"none"``
    (a zero degree gives zero weights). A ``CSRGraph`` (N, N) for either ``is_sparse`` (the
    published dense and sparse paths give the same numbers), differentiable w.r.t. the
    features behind ``adj`` through the kept values."""
    del is_sparse  # both published paths compute the same graph
    return _topk_graph(adj, topk, _check_norm(norm_type), "adj")


def build_knn_neighbourhood(adj: SimilarityHandle | torch.Tensor, topk: int) -> CSRGraph:
    """LATTICE's builder: each row's ``topk`` largest similarities, unnormalized, as a
    ``CSRGraph`` (N, N) (the published code scatters them into a dense [N, N] matrix)."""
    return _topk_graph(adj, topk, "none", "adj")


def compute_normalized_laplacian(adj: CSRGraph | torch.Tensor) -> CSRGraph | torch.Tensor:
    r"""LATTICE's normalization :math:`D^{-1/2} A D^{-1/2}` with :math:`D` the row sums of
    ``adj`` (a zero row sum gives zero weights): a ``CSRGraph`` for a graph, the published dense
    product for a dense tensor."""
    if isinstance(adj, CSRGraph):
        deg = torch.zeros(adj.shape[0], dtype=adj.values.dtype, device=adj.device)
        deg = deg.index_add(0, adj.row_indices(), adj.values)
        dinv = _inverse_sqrt(deg)
        values = dinv.index_select(0, adj.row_indices()) * adj.values \
            * dinv.index_select(0, adj.indices)
        return adj.with_values(values)
    if isinstance(adj, torch.Tensor) and adj.layout == torch.strided and adj.dim() == 2:
        dinv = _inverse_sqrt(adj.sum(-1))
        return dinv[:, None] * adj * dinv[None, :]
    raise InputTypeError(f"adj must be a CSRGraph or a dense tensor, got {type(adj).__name__}")


def _inverse_sqrt(deg: torch.Tensor) -> torch.Tensor:
    # deg ** -0.5 with 0 -> 0 (the published masked_fill of inf)
    safe = torch.where(deg == 0, torch.ones_like(deg), deg)
    return torch.where(deg == 0, torch.zeros_like(deg), safe.pow(-0.5))


def get_sparse_laplacian(edge_index: torch.Tensor, edge_weight: torch.Tensor, num_nodes: int,
                         normalization: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
    r"""The published edge normalization without torch_scatter: with :math:`d` the sums of
    ``edge_weight`` over each source row (``edge_index[0]``), ``"sym"`` gives
    :math:`d_r^{-1/2} w d_c^{-1/2}`, ``"rw"`` :math:`d_r^{-1} w`, ``"none"`` ``w`` (a zero sum
    gives zero weights). Returns ``(edge_index, edge_weight)``."""
    _check_norm(normalization)
    if not isinstance(edge_index, torch.Tensor) or edge_index.dim() != 2 \
            or edge_index.shape[0] != 2:
        raise InputError("edge_index must be a [2, E] tensor")
    row, col = edge_index[0], edge_index[1]
    deg = torch.zeros(num_nodes, dtype=edge_weight.dtype, device=edge_weight.device)
    deg = deg.index_add(0, row, edge_weight)
    if normalization == "sym":
        dinv = _inverse_sqrt(deg)
        edge_weight = dinv.index_select(0, row) * edge_weight * dinv.index_select(0, col)
    elif normalization == "rw":
        safe = torch.where(deg == 0, torch.ones_like(deg), deg)
        dinv = torch.where(deg == 0, torch.zeros_like(deg), 1.0 / safe)
        edge_weight = dinv.index_select(0, row) * edge_weight
    return edge_index, edge_weight


def batched_contrastive_loss(self: Any, z1: torch.Tensor, z2: torch.Tensor,
                             batch_size: int = 4096) -> torch.Tensor:
    """The published loss method: the mean over items of
    ``-log(e(i,i) / (sum_j r(i,j) + sum_j e(i,j) - r(i,i)))`` with ``e``, ``r`` the
    exponentiated cosines ``z1``-``z2`` and ``z1``-``z1`` over ``self.tau``, fused
    (``micro_fast.contrastive_loss``); ``batch_size`` is accepted and unused."""
    del batch_size
    return contrastive_loss(z1, z2, tau=float(self.tau), zero_rows="zero")


def sparse_mx_to_torch_sparse_tensor(self: Any, sparse_mx: Any) -> CSRGraph:
    """The published trainer's conversion of the scipy user-item adjacency, to a float32
    ``CSRGraph`` instead of a COO tensor (duplicates summed, as in the COO product)."""
    del self
    return CSRGraph.from_scipy(sparse_mx.tocoo().astype(np.float32))


def user_item_adjacency(interactions: Any, n_users: int | None = None,
                        n_items: int | None = None, *, dtype: torch.dtype = torch.float32,
                        device: torch.device | str = "cpu") -> CSRGraph:
    r"""The published normalized adjacency :math:`D^{-1}(A + I)` of the users and items,
    :math:`A = [[0, R], [R^T, 0]]`, from the user-item matrix ``interactions`` (a scipy sparse
    matrix [U, I], or a ``(users, items)`` pair of id arrays with ``n_users``/``n_items``). A
    repeated or weighted (user, item) entry counts once, as in the published dok matrix."""
    if isinstance(interactions, tuple):
        users, items = (torch.as_tensor(np.asarray(a), dtype=torch.int64) for a in interactions)
        if n_users is None or n_items is None:
            raise InputError("n_users and n_items are needed with (users, items) arrays")
    else:
        try:
            coo = interactions.tocoo()
        except AttributeError:
            raise InputTypeError("interactions must be a scipy sparse matrix or a (users, items)"
                                 f" pair, got {type(interactions).__name__}") from None
        keep = coo.data != 0
        users = torch.as_tensor(coo.row[keep].astype(np.int64))
        items = torch.as_tensor(coo.col[keep].astype(np.int64))
        n_users, n_items = coo.shape
    return bipartite_graph(users.to(device), items.to(device), int(n_users), int(n_items),
                           normalization="rw", self_loops=True, duplicates="once", dtype=dtype)


#: module-level functions installed by ``patch`` (by name)
FUNCTIONS: dict[str, Callable] = {
    "build_sim": build_sim,
    "build_knn_normalized_graph": build_knn_normalized_graph,
    "build_knn_neighbourhood": build_knn_neighbourhood,
    "compute_normalized_laplacian": compute_normalized_laplacian,
    "get_sparse_laplacian": get_sparse_laplacian,
}
#: methods installed on every class of a patched module that defines them
METHODS: dict[str, Callable] = {
    "batched_contrastive_loss": batched_contrastive_loss,
    "sparse_mx_to_torch_sparse_tensor": sparse_mx_to_torch_sparse_tensor,
}


def patch(*modules: types.ModuleType) -> _patching.Patch:
    """Installs the drop-ins into ``modules`` (the published ``Models``, ``utility.norm``,
    ``utility.batch_test`` and the training script's own module, whichever hold the names):
    each function of ``FUNCTIONS`` and ``test_torch`` found at module level, each method of
    ``METHODS`` found on a class defined there. Returns the ``Patch`` (``.replaced`` lists what
    changed); ``unpatch(patch)`` restores it. Nothing found is an error."""
    if not modules:
        raise InputError("patch needs at least one module")
    p = _patching.begin()
    try:
        for mod in modules:
            if not isinstance(mod, types.ModuleType):
                raise InputTypeError(f"patch takes modules, got {type(mod).__name__}")
            for name, fn in FUNCTIONS.items():
                if callable(getattr(mod, name, None)):
                    p.set(mod, name, fn)
            original = getattr(mod, "test_torch", None)
            if callable(original):
                p.set(mod, "test_torch", published_test_torch(original))
            for cls in _classes_of(mod):
                for name, fn in METHODS.items():
                    if name in vars(cls) and callable(vars(cls)[name]):
                        p.set(cls, name, fn)
        if not p.changes:
            names = ", ".join([*FUNCTIONS, "test_torch", *METHODS])
            raise InputError(f"patch found none of {names} in {[m.__name__ for m in modules]}")
    except BaseException:
        p.restore()
        raise
    return p


def _classes_of(mod: types.ModuleType) -> list[type]:
    return [v for v in vars(mod).values()
            if isinstance(v, type) and v.__module__ == mod.__name__]


def unpatch(patch: _patching.Patch | None = None) -> None:
    """Restores what ``patch`` replaced (every active patch when ``None``)."""
    if patch is None:
        _patching.restore_all()
    else:
        patch.restore()


__all__ = [
    "SimilarityHandle", "batched_contrastive_loss", "build_knn_neighbourhood",
    "build_knn_normalized_graph", "build_sim", "compute_normalized_laplacian",
    "get_sparse_laplacian", "patch", "sparse_mx_to_torch_sparse_tensor",
    "unpatch", "user_item_adjacency",
]
