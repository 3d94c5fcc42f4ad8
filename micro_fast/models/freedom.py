r"""FREEDOM (Zhou et al., "A Tale of Two Graphs: Freezing and Denoising Graph Structures for
Multimodal Recommendation", ACM MM 2023) as MMRec computes it, built from this library's ops.

* **Frozen item graph**, built once from the raw features: per modality the cosine kNN graph
  (k neighbours, the item itself included) with unit weights, normalized as
  :math:`D^{-1/2} A D^{-1/2}` with :math:`D = \mathrm{rowsum}(A) + 10^{-7}` (so every entry is
  :math:`1 / (k + 10^{-7})`); the modality graphs mixed as
  :math:`S = w\,S_{image} + (1 - w)\,S_{other}` (``image_weight``; one modality: its graph).
* **Denoised user-item graph**, drawn before every epoch: of the E training interactions,
  :math:`\lfloor E (1 - \mathrm{dropout}) \rfloor` are kept, drawn without replacement with
  probability proportional to their normalized weight
  :math:`1 / \sqrt{(d_u + \epsilon)(d_i + \epsilon)}` (``sample_edges``), and the kept ones are
  normalized again with the degrees of the kept graph. Evaluation uses the full graph with the
  same normalization.
* **Representations**: LightGCN (layer mean) over the user-item graph gives :math:`(e_u, e_i)`;
  the item ID embeddings propagated ``item_layers`` times over :math:`S` give :math:`h`; items are
  :math:`e_i + h_i`.
* **Loss**: :math:`\mathrm{BPR}(e_u, e_{i^+}, e_{i^-}) + \mathrm{reg} \sum_m
  \mathrm{BPR}(e_u, W_m x^m_{i^+} + b_m, W_m x^m_{i^-} + b_m)`, BPR being
  :math:`-\mathrm{mean}\log\sigma(\langle u, i^+\rangle - \langle u, i^-\rangle)` and
  :math:`x^m` the (trainable) raw features of modality m projected by a linear layer.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from micro_fast.errors import InputError
from micro_fast.graph import CSRGraph, graph_on
from micro_fast.models._mmrec import add_embeddings, check_features, check_positive_ints
from micro_fast.ops.bipartite_graph import bipartite_graph
from micro_fast.ops.project_rows import project_rows
from micro_fast.ops.propagate import propagate
from micro_fast.ops.sample_edges import sample_edges
from micro_fast.ops.topk_similarity import topk_similarity

#: MMRec's epsilon in the degree normalizations.
EPS = 1e-7


def mmrec_normalized(graph: CSRGraph, eps: float = EPS) -> CSRGraph:
    """``graph`` with values :math:`a_{ij} / \\sqrt{(r_i + \\epsilon)(r_j + \\epsilon)}`,
    :math:`r` its row sums (a symmetric graph: the row sums are the column sums)."""
    deg = torch.zeros(graph.shape[0], dtype=graph.dtype, device=graph.device)
    deg.index_add_(0, graph.row_indices(), graph.values)
    dinv = (deg + eps).pow(-0.5)
    values = dinv[graph.row_indices()] * graph.values * dinv[graph.indices]
    return CSRGraph(graph.indptr, graph.indices, values, graph.shape, symmetric=True,
                    validate=False)


def interaction_graph(users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int,
                      dtype: torch.dtype = torch.float32, backend: str = "auto") -> CSRGraph:
    """The (U+I) x (U+I) user-item graph of the interactions with MMRec's normalization
    (:math:`D^{-1/2} A D^{-1/2}`, :math:`D` the degrees plus :math:`10^{-7}`)."""
    g = bipartite_graph(users, items, n_users, n_items, normalization="none",
                        duplicates="sum", dtype=dtype, backend=backend)
    ones = CSRGraph(g.indptr, g.indices, torch.ones_like(g.values), g.shape, validate=False)
    return mmrec_normalized(ones)  # A > 0: repeated interactions count once, as in MMRec


def edge_weights(users: torch.Tensor, items: torch.Tensor, n_users: int,
                 n_items: int) -> torch.Tensor:
    """Each interaction's :math:`1 / \\sqrt{(d_u + \\epsilon)(d_i + \\epsilon)}` (float64),
    the pruning's sampling weights."""
    du = torch.bincount(users, minlength=n_users).double()
    di = torch.bincount(items, minlength=n_items).double()
    return ((du[users] + EPS) * (di[items] + EPS)).rsqrt()


def frozen_item_graph(features: Mapping[str, torch.Tensor], k: int, image_weight: float,
                      backend: str = "auto") -> CSRGraph:
    """The mixed kNN item graph :math:`S` of the raw features (see the module docstring)."""
    names = list(features)
    if len(names) == 1:
        mix = {names[0]: 1.0}
    elif len(names) == 2 and "image" in names:
        other = names[1 - names.index("image")]
        mix = {"image": image_weight, other: 1.0 - image_weight}
    else:
        raise InputError(f"FREEDOM mixes one modality or 'image' and one other, got {names}")
    rows, cols, vals = [], [], []
    for name, x in features.items():
        x = x.detach()
        _, idx = topk_similarity(x, None, k, normalize=True, backend=backend,
                                 names=(f"features[{name!r}]", f"features[{name!r}]"))
        n = x.shape[0]
        rows.append(torch.arange(n, device=x.device).repeat_interleave(k))
        cols.append(idx.reshape(-1))
        # unit weights, every row sum k: D^-1/2 A D^-1/2 is 1 / (k + eps) everywhere
        vals.append(torch.full((n * k,), mix[name] / (k + EPS), dtype=x.dtype, device=x.device))
    n = next(iter(features.values())).shape[0]
    return CSRGraph.from_coo(torch.cat(rows), torch.cat(cols), torch.cat(vals), shape=(n, n),
                             duplicates="sum")


class FREEDOM(nn.Module):
    """The FREEDOM recommender with MMRec's defaults as keyword defaults.

    Args:
        n_users, n_items: sizes.
        features: modality name -> float [n_items, d_m] raw features ("image" and one other,
            or a single modality); trainable, as in MMRec.
        dim: ID embedding size (64). feat_dim: projection size (64).
        k: kNN neighbours of the frozen item graph (10).
        image_weight: weight of the image graph in the mixture (``mm_image_weight``, 0.1).
        item_layers: propagations over the item graph (``n_mm_layers``, 1).
        ui_layers: LightGCN layers (``n_ui_layers``, 2).
        dropout: share of the interactions pruned before each epoch (0.8; 0 keeps all).
        reg_weight: weight of the modality BPR terms (MMRec's grid: 0, 1e-5, 1e-4, 1e-3).
        backend: kernel backend for every op.
    """

    def __init__(self, n_users: int, n_items: int, features: Mapping[str, torch.Tensor], *,
                 dim: int = 64, feat_dim: int = 64, k: int = 10, image_weight: float = 0.1,
                 item_layers: int = 1, ui_layers: int = 2, dropout: float = 0.8,
                 reg_weight: float = 1e-4, backend: str = "auto") -> None:
        super().__init__()
        check_positive_ints(n_users=n_users, n_items=n_items, dim=dim, feat_dim=feat_dim, k=k)
        if not features:
            raise InputError("FREEDOM needs at least one modality's features")
        if not 0.0 <= dropout < 1.0:
            raise InputError(f"dropout must be in [0, 1), got {dropout!r}")
        if not 0.0 <= image_weight <= 1.0:
            raise InputError(f"image_weight must be in [0, 1], got {image_weight!r}")
        check_features(features, n_items)
        self.n_users, self.n_items = n_users, n_items
        self.item_layers, self.ui_layers = item_layers, ui_layers
        self.dropout, self.reg_weight, self.backend = dropout, reg_weight, backend
        self.modalities = list(features)
        add_embeddings(self, n_users, n_items, features, dim, feat_dim)
        g = frozen_item_graph(self.features, k, image_weight, backend)
        self.register_buffer("item_indptr", g.indptr)
        self.register_buffer("item_indices", g.indices)
        self.register_buffer("item_values", g.values)
        self._item_graph: CSRGraph | None = None  # over the buffers, with its transpose

    # --- graphs -----------------------------------------------------------------------
    @property
    def item_graph(self) -> CSRGraph:
        args = (self.item_indptr, self.item_indices, self.item_values, (self.n_items,) * 2)
        if torch.compiler.is_compiling():
            return graph_on(*args)
        # kept, so that the transpose every batch's backward needs is built once
        self._item_graph = graph_on(*args, cache=self._item_graph)
        return self._item_graph

    def pruned_graph(self, users: torch.Tensor, items: torch.Tensor, *,
                     weights: torch.Tensor | None = None, kept: torch.Tensor | None = None,
                     generator: torch.Generator | None = None) -> CSRGraph:
        """The denoised user-item graph of one epoch from the training interactions: ``kept``
        interaction ids, or a draw by ``weights`` (``edge_weights`` by default)."""
        if self.dropout == 0.0 and kept is None:
            return interaction_graph(users, items, self.n_users, self.n_items,
                                     self.item_values.dtype, self.backend)
        if kept is None:
            if weights is None:
                weights = edge_weights(users, items, self.n_users, self.n_items)
            m = int(users.numel() * (1.0 - self.dropout))
            kept = sample_edges(weights, m, generator=generator, backend=self.backend)
        return interaction_graph(users[kept], items[kept], self.n_users, self.n_items,
                                 self.item_values.dtype, self.backend)

    # --- model ------------------------------------------------------------------------
    def forward(self, ui_graph: CSRGraph) -> tuple[torch.Tensor, torch.Tensor]:
        """``(users [U, dim], items [I, dim])`` over ``ui_graph`` (the pruned graph in
        training, ``interaction_graph`` of all interactions in evaluation)."""
        h = propagate(self.item_graph, self.item_embedding, self.item_layers,
                      backend=self.backend)
        ego = torch.cat([self.user_embedding, self.item_embedding])
        out = propagate(ui_graph, ego, self.ui_layers, combine="mean", backend=self.backend)
        users, items = out[:self.n_users], out[self.n_users:]
        return users, items + h

    def embeddings(self, ui_graph: CSRGraph) -> tuple[torch.Tensor, torch.Tensor]:
        """Evaluation representations (the score of (u, i) is their inner product)."""
        with torch.no_grad():
            return self(ui_graph)

    @staticmethod
    def bpr(u: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        return -F.logsigmoid((u * pos).sum(dim=1) - (u * neg).sum(dim=1)).mean()

    def loss(self, ui_graph: CSRGraph, users: torch.Tensor, pos: torch.Tensor,
             neg: torch.Tensor, *, batch_weight: float = 1.0, **_ignored: object,
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss, parts)`` of one batch over the epoch's pruned ``ui_graph``; the batch
        terms are multiplied by ``batch_weight`` (a rank's share under torchrun)."""
        u_all, i_all = self(ui_graph)
        u = u_all[users]
        bpr = self.bpr(u, i_all[pos], i_all[neg])
        modal = 0.0
        # MMRec projects every item and indexes the result; projecting the batch's distinct
        # items only is the same loss and gradients (the other rows' are zero) for about half
        # the multiply-adds at Baby size
        rows, where = torch.unique(torch.cat([pos, neg]), return_inverse=True)
        wp, wn = where[:pos.numel()], where[pos.numel():]
        for m, proj in self.projections.items():
            z = project_rows(self.features[m], proj.weight, proj.bias, rows,
                             backend=self.backend)
            modal = modal + self.bpr(u, z[wp], z[wn])
        reg = self.reg_weight * modal
        loss = batch_weight * (bpr + reg)
        return loss, {"bpr": bpr.detach(), "reg": reg.detach(),
                      "contrastive": torch.zeros((), dtype=bpr.dtype)}
