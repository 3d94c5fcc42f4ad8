"""micro_fast: compiled kernels for MICRO-style multimodal recommenders.

Fused similarity top-k and kNN item graphs that never form the N x N matrix, CSR propagation
with a full backward, MICRO's all-pairs contrastive losses, with C++/OpenMP, CUDA, Numba and
pure-torch backends behind one contract (see ``micro_fast.backends``).
"""

import os as _os
import sys as _sys

if "torch" not in _sys.modules:
    # torch backs its CPU tensors of 2 MB and more with transparent huge pages when this is set
    # before its first allocation: a features-sized gradient (7,050 x 4,096 floats at Baby
    # size) is then allocated in a few milliseconds instead of tens, spent faulting in 4 KB
    # pages. THP_MEM_ALLOC_ENABLE=0 in the environment keeps torch's default.
    _os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from micro_fast import backends, dispatch, nn, tuning  # noqa: E402
from micro_fast.graph import CSRGraph
from micro_fast.interop import as_graph
from micro_fast.ops import (
    bipartite_graph,
    contrastive_fusion_loss,
    contrastive_loss,
    knn_graph,
    project_rows,
    propagate,
    sample_edges,
    spmm,
    topk_similarity,
)

__version__ = "0.1.0"

__all__ = ["CSRGraph", "__version__", "as_graph", "backends", "bipartite_graph", "dispatch",
           "contrastive_fusion_loss", "contrastive_loss",
           "knn_graph", "nn",
           "project_rows", "propagate", "sample_edges", "spmm", "topk_similarity", "tuning"]
