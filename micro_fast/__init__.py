"""micro_fast: compiled kernels for MICRO-style multimodal recommenders.

Fused similarity top-k and kNN item graphs that never form the N x N matrix, CSR propagation
with a full backward, MICRO's all-pairs contrastive losses, with C++/OpenMP, CUDA, Numba and
pure-torch backends behind one contract (see ``micro_fast.backends``).
"""

from micro_fast import backends, nn, tuning
from micro_fast.graph import CSRGraph
from micro_fast.ops import (
    bipartite_graph,
    contrastive_fusion_loss,
    contrastive_loss,
    knn_graph,
    propagate,
    sample_edges,
    spmm,
    topk_similarity,
)

__version__ = "0.1.0"

__all__ = ["CSRGraph", "__version__", "backends", "bipartite_graph",
           "contrastive_fusion_loss", "contrastive_loss",
           "knn_graph", "nn",
           "propagate", "sample_edges", "spmm", "topk_similarity", "tuning"]
