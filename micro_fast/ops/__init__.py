"""Autograd-aware ops on torch tensors; each calls a backend from ``micro_fast.backends``."""

from micro_fast.ops.bipartite_graph import bipartite_graph
from micro_fast.ops.contrastive_fusion import contrastive_fusion_loss
from micro_fast.ops.contrastive_loss import contrastive_loss
from micro_fast.ops.knn_graph import knn_graph
from micro_fast.ops.project_rows import project_rows
from micro_fast.ops.propagate import propagate
from micro_fast.ops.sample_edges import sample_edges
from micro_fast.ops.spmm import spmm
from micro_fast.ops.topk_similarity import topk_similarity

__all__ = ["bipartite_graph", "contrastive_fusion_loss", "contrastive_loss", "knn_graph",
           "project_rows", "propagate", "sample_edges", "spmm", "topk_similarity"]
