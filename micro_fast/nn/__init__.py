"""Drop-in ``nn.Module``s built on ``micro_fast.ops``; ``GraphBuffer`` holds a graph in a module
(moved by ``.to()``, saved in ``state_dict``)."""

from micro_fast.nn.fusion import ContrastiveFusion
from micro_fast.nn.graph_buffer import GraphBuffer
from micro_fast.nn.graph_learner import KNNGraphLearner
from micro_fast.nn.propagation import GraphPropagation, LightGCN

__all__ = ["ContrastiveFusion", "GraphBuffer", "GraphPropagation", "KNNGraphLearner", "LightGCN"]
