"""Autograd-aware ops on torch tensors; each calls a backend from ``micro_fast.backends``."""

from micro_fast.ops.knn_graph import knn_graph
from micro_fast.ops.topk_similarity import topk_similarity

__all__ = ["knn_graph", "topk_similarity"]
