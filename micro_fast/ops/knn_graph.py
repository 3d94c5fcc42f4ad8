r"""kNN item graph: MICRO/LATTICE ``build_sim`` + ``build_knn_normalized_graph``, fused.

For item features :math:`F \in R^{N \times d}`, :math:`S = \hat F \hat F^T` with
:math:`\hat F` the L2-normalized rows (cosine similarity). Each row keeps its :math:`k` largest
entries (the item itself included, as published), giving :math:`A` with
:math:`a_{ij} = s_{ij}` on the kept pairs. With degrees :math:`d_i = \sum_j a_{ij}` (row sums of
the kept values):

* ``"sym"``:  :math:`d_i^{-1/2} a_{ij} d_j^{-1/2}`
* ``"rw"``:   :math:`d_i^{-1} a_{ij}`
* ``"none"``: :math:`a_{ij}`

(a zero degree gives zero weights, as published). The result is a ``CSRGraph`` whose ``values``
are differentiable w.r.t. ``features`` through the kept similarities; :math:`S` is never formed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from micro_fast.errors import InputError
from micro_fast.graph import CSRGraph
from micro_fast.ops._checks import any_true, check_float_2d, check_k
from micro_fast.ops.topk_similarity import topk_similarity

NORMALIZATIONS = ("sym", "rw", "none")


def _inverse_power(deg: torch.Tensor, power: float) -> torch.Tensor:
    # deg ** -power with 0 -> 0 (the published masked_fill of inf), without NaN gradients
    safe = torch.where(deg == 0, torch.ones_like(deg), deg)
    return torch.where(deg == 0, torch.zeros_like(deg), safe.pow(-power))


def normalize_knn(values: torch.Tensor, indices: torch.Tensor, normalization: str) -> torch.Tensor:
    """Laplacian-normalizes per-row kNN weights ``values`` [N, k] with columns ``indices``."""
    if normalization not in NORMALIZATIONS:
        raise InputError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if normalization == "none":
        return values
    deg = values.sum(dim=1)
    if normalization == "sym":
        negative = deg.detach() < 0
        if torch.compiler.is_compiling() or deg.device.type != "cpu":
            # no read-back in compiled code or on a GPU: a check the device runs
            torch._assert_async(~negative.any(), "features: rows with a negative degree (sum "
                                "of kept similarities); 'sym' normalization is undefined")
        elif any_true(negative):
            rows = torch.nonzero(negative).flatten()[:5].tolist()
            raise InputError(f"features: rows {rows} have a negative degree (sum of kept "
                             "similarities); 'sym' normalization is undefined for them")
        dinv = _inverse_power(deg, 0.5)
        # index_select, not dinv[indices]: the backward of advanced indexing accumulates
        # repeated indices in a thread-dependent order on CPU (not reproducible)
        dinv_cols = dinv.index_select(0, indices.reshape(-1)).reshape(indices.shape)
        return dinv.unsqueeze(1) * values * dinv_cols
    return _inverse_power(deg, 1.0).unsqueeze(1) * values


def knn_graph(features: torch.Tensor, k: int, *, normalization: str = "sym",
              block_size: int | None = None, backend: str = "auto",
              search: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
              ) -> CSRGraph:
    """Cosine kNN graph of the rows of ``features`` [N, d], Laplacian-normalized.

    Args:
        features: float32/float64 [N, d], no zero rows.
        k: neighbours kept per row (self included), 1 <= k <= N.
        normalization: ``"sym"`` (D^-1/2 A D^-1/2, the default), ``"rw"`` (D^-1 A) or
            ``"none"``; degrees are row sums of the kept similarities.
        block_size, backend: as in ``topk_similarity``.
        search: the symmetric top-k search (``topk_similarity`` by default;
            ``micro_fast.distributed`` passes its sharded one).

    Returns:
        ``CSRGraph`` of shape (N, N) with exactly k entries per row, columns sorted.
    """
    check_float_2d("features", features)  # the search checks the values
    if features.shape[0] == 0 or features.shape[1] == 0:
        raise InputError(f"features must be non-empty, got shape {tuple(features.shape)}")
    check_k(k, features.shape[0], "items (rows of features)")
    if normalization not in NORMALIZATIONS:
        raise InputError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    values, indices = (search or topk_similarity)(features, None, k, normalize=True,
                                                  block_size=block_size, backend=backend,
                                                  names=("features", "features"))
    return graph_from_topk(values, indices, normalization)


def graph_from_topk(values: torch.Tensor, indices: torch.Tensor,
                    normalization: str = "sym") -> CSRGraph:
    """The normalized kNN ``CSRGraph`` (N, N) of per-row top-k ``values``/``indices`` [N, k]
    (columns sorted per row; values keep their autograd history)."""
    if normalization not in NORMALIZATIONS:
        raise InputError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    n, k = indices.shape
    order = torch.argsort(indices, dim=1)
    indices = torch.gather(indices, 1, order)
    values = torch.gather(values, 1, order)
    weights = normalize_knn(values, indices, normalization)
    indptr = torch.arange(0, n * k + 1, k, dtype=torch.int64, device=indices.device)
    return CSRGraph(indptr, indices.reshape(-1), weights.reshape(-1), (n, n), validate=False)
