r"""The normalized user-item adjacency of LightGCN and of the published MICRO code.

Nodes are the users :math:`0..U-1` followed by the items :math:`U..U+I-1`;
:math:`A = \begin{bmatrix} 0 & R \\ R^T & 0 \end{bmatrix}` (plus :math:`I` with
``self_loops``), :math:`R_{ui}` the number of (u, i) interactions, and with :math:`D` the row
sums of that matrix:

* ``"sym"``:  :math:`D^{-1/2} A D^{-1/2}` (LightGCN)
* ``"rw"``:   :math:`D^{-1} A` (with ``self_loops=True``: the :math:`D^{-1}(A + I)` of the
  published MICRO / LATTICE code)
* ``"none"``: :math:`A`

Zero-degree nodes keep zero rows. Repeated (user, item) pairs are summed into
:math:`R_{ui}` (``duplicates="sum"``), counted once (``duplicates="once"``: :math:`R_{ui} = 1`,
the published code's dok matrix, where a repeated assignment of 1 stays 1) or rejected
(``duplicates="error"``). The result records
``symmetric=True`` for "sym" and "none", so backward passes reuse the graph as its own transpose.
"""

from __future__ import annotations

import numpy as np
import torch

from micro_fast import dispatch, memory
from micro_fast.errors import InputError, InputTypeError
from micro_fast.graph import CSRGraph
from micro_fast.ops._checks import FLOAT_DTYPES

NORMALIZATIONS = ("sym", "rw", "none")
DUPLICATES = ("sum", "once", "error")


def _as_ids(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(np.asarray(t))
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise InputTypeError(f"{name} must be an integer tensor, got {t.dtype}")
    if t.dim() != 1:
        raise InputError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    return t.to(torch.int64).contiguous()


@torch.library.custom_op("micro_fast::bipartite_graph", mutates_args=())
def bipartite_kernel(users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int,
                     normalization: str, self_loops: bool, duplicates: str,
                     dtype: torch.dtype, backend: str,
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(indptr, indices, values)`` of the normalized adjacency; the id range checks run
    here (the number of stored entries depends on the data: duplicates are merged)."""
    for name, ids, hi in (("users", users, n_users), ("items", items, n_items)):
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= hi):
            raise InputError(f"{name}: index out of range [0, {hi})")
    impl = dispatch.module(backend)
    indptr, indices, values = impl.bipartite_graph(users, items, n_users, n_items, normalization,
                                                   self_loops, duplicates, dtype)
    dev = users.device
    return indptr.to(dev), indices.to(dev), values.to(dev)


@bipartite_kernel.register_fake
def _(users, items, n_users, n_items, normalization, self_loops, duplicates, dtype, backend):
    nnz = torch.library.get_ctx().new_dynamic_size()
    return (users.new_empty(n_users + n_items + 1), users.new_empty(nnz),
            users.new_empty(nnz, dtype=dtype))


def bipartite_graph(users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int, *,
                    normalization: str = "sym", self_loops: bool = False,
                    duplicates: str = "sum", dtype: torch.dtype = torch.float32,
                    backend: str = "auto") -> CSRGraph:
    """(U+I) x (U+I) normalized adjacency from interaction lists.

    Args:
        users, items: integer [nnz], the interacting pairs (any order).
        n_users, n_items: node counts; ids must lie in [0, n_users) and [0, n_items).
        normalization: ``"sym"``, ``"rw"`` or ``"none"``.
        self_loops: add the identity before normalizing.
        duplicates: ``"sum"``, ``"once"`` or ``"error"``.
        dtype: float32 or float64 values.

    Returns:
        ``CSRGraph`` on the device of ``users``.
    """
    users, items = _as_ids("users", users), _as_ids("items", items)
    if users.numel() != items.numel():
        raise InputError(f"users and items differ in length ({users.numel()} vs {items.numel()})")
    if users.device != items.device:
        raise InputError(f"items are on {items.device} but users are on {users.device}")
    for name, n in (("n_users", n_users), ("n_items", n_items)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InputError(f"{name} must be a non-negative int, got {n!r}")
    if normalization not in NORMALIZATIONS:
        raise InputError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if duplicates not in DUPLICATES:
        raise InputError(f"duplicates must be one of {DUPLICATES}, got {duplicates!r}")
    if dtype not in FLOAT_DTYPES:
        raise InputTypeError(f"dtype must be float32 or float64, got {dtype}")
    if duplicates == "once" and users.numel():
        check_ids = users.min() < 0 or items.min() < 0 or users.max() >= n_users \
            or items.max() >= n_items
        if not bool(check_ids):  # out-of-range ids are reported by the kernel's own check
            pairs = torch.unique(users * max(n_items, 1) + items)
            users, items = pairs // max(n_items, 1), pairs % max(n_items, 1)
        duplicates = "sum"
    elif duplicates == "once":
        duplicates = "sum"
    nnz = 2 * users.numel() + (n_users + n_items if self_loops else 0)
    memory.check("bipartite_graph", nnz * 40 + (n_users + n_items) * 16,
                 f"about {nnz} nonzeros")
    name = dispatch.plan("bipartite_graph", backend, users.device).backend
    indptr, indices, values = bipartite_kernel(users, items, n_users, n_items, normalization,
                                               self_loops, duplicates, dtype,
                                               name)
    return CSRGraph(indptr, indices, values, (n_users + n_items, n_users + n_items),
                    symmetric=normalization != "rw", validate=False)
