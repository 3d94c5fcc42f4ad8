r"""MICRO / LATTICE modality-aware structure learning for one modality.

With raw item features :math:`F \in R^{N \times d_m}` (trainable), a linear projection
:math:`P = F W^T + b` to ``dim`` columns, and ``knn_graph`` as the top-k cosine graph
normalized as a Laplacian:

.. math:: A^{orig} = \mathrm{knn}(F_0), \qquad A^{learn} = \mathrm{knn}(P), \qquad
          A = (1 - \lambda) A^{learn} + \lambda A^{orig}

:math:`A^{orig}` is built once from the initial features and kept constant (as buffers, so it
is saved in checkpoints and moves with ``.to()``); :math:`A^{learn}` carries gradient into
:math:`W`, :math:`b` and :math:`F` through its kept similarities. The mixture is never stored:
each propagation layer computes :math:`A h = (1-\lambda) A^{learn} h + \lambda A^{orig} h`,
which equals the product with the summed matrix for any number of layers. The graphs are
built by the ``knn`` function the module is given: ``ops.knn_graph`` by default, or e.g.
``micro_fast.distributed.knn_graph`` to split the searches over the ranks of a process group
(the same graph on every rank).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from micro_fast.errors import InputError
from micro_fast.graph import CSRGraph, graph_on
from micro_fast.interop import GraphLike, as_graph
from micro_fast.ops.knn_graph import knn_graph
from micro_fast.ops.spmm import spmm

#: ``knn(features [N, d], k, *, normalization, backend) -> CSRGraph``
KNNBuilder = Callable[..., CSRGraph]


class KNNGraphLearner(nn.Module):
    """Learned + original kNN item graph of one modality.

    Args:
        features: float [N, d_m] initial raw features; copied into the trainable parameter
            ``features`` (``trainable_features=False`` keeps them fixed, as a buffer).
        dim: projection width (64 in MICRO).
        k: neighbours per item, self included (10).
        normalization: ``"sym"``, ``"rw"`` or ``"none"`` (see ``knn_graph``).
        lambda_coeff: weight of the original graph in the mixture (0.9).
        knn: the graph builder (``ops.knn_graph`` by default).
    """

    def __init__(self, features: torch.Tensor, dim: int = 64, *, k: int = 10,
                 normalization: str = "sym", lambda_coeff: float = 0.9,
                 trainable_features: bool = True, backend: str = "auto",
                 knn: KNNBuilder = knn_graph) -> None:
        super().__init__()
        if not isinstance(features, torch.Tensor) or features.dim() != 2:
            raise InputError("features must be a 2-D tensor [items, feature_dim]")
        if not 0.0 <= lambda_coeff <= 1.0:
            raise InputError(f"lambda_coeff must be in [0, 1], got {lambda_coeff}")
        self.k, self.normalization, self.lambda_coeff = k, normalization, float(lambda_coeff)
        self.backend, self.knn = backend, knn
        feats = features.detach().clone()
        if trainable_features:
            self.features = nn.Parameter(feats)
        else:
            self.register_buffer("features", feats)
        self.projection = nn.Linear(feats.shape[1], dim, dtype=feats.dtype)
        orig = knn(feats, k, normalization=normalization, backend=backend)
        self.register_buffer("orig_indptr", orig.indptr)
        self.register_buffer("orig_indices", orig.indices)
        self.register_buffer("orig_values", orig.values.detach())
        # the CSRGraph over these buffers, kept so that its transpose (which every backward
        # through A^orig needs) is built once, not on every batch
        self._orig: CSRGraph | None = None

    @property
    def n_items(self) -> int:
        return self.features.shape[0]

    def original(self) -> CSRGraph:
        """:math:`A^{orig}` (constant)."""
        args = (self.orig_indptr, self.orig_indices, self.orig_values, (self.n_items,) * 2)
        if torch.compiler.is_compiling():  # compiled code builds it in its graph, uncached
            return graph_on(*args)
        self._orig = graph_on(*args, cache=self._orig)
        return self._orig

    def learn(self) -> CSRGraph:
        """:math:`A^{learn}` from the current features, differentiable through its values."""
        return self.knn(self.projection(self.features), self.k,
                        normalization=self.normalization, backend=self.backend)

    def propagate(self, learned: GraphLike, x: torch.Tensor, layers: int = 1) -> torch.Tensor:
        """:math:`A^L x` for the mixture :math:`A` of ``learned`` (a ``CSRGraph``, or a torch
        sparse tensor / scipy.sparse matrix: ``micro_fast.interop.as_graph``) and the original
        graph."""
        learned = as_graph(learned, "learned")
        orig = self.original()
        if orig.dtype != x.dtype:
            orig = orig.to(dtype=x.dtype)
        lam = self.lambda_coeff
        h = x
        for _ in range(layers):
            h = (1.0 - lam) * spmm(learned, h, backend=self.backend) + \
                lam * spmm(orig, h, backend=self.backend)
        return h

    def forward(self, x: torch.Tensor, layers: int = 1) -> torch.Tensor:
        """Builds :math:`A^{learn}` and returns :math:`A^L x` (x: [N, d])."""
        return self.propagate(self.learn(), x, layers)

    def extra_repr(self) -> str:
        return (f"items={self.n_items}, k={self.k}, normalization={self.normalization!r}, "
                f"lambda_coeff={self.lambda_coeff}")
