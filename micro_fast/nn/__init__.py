"""Drop-in ``nn.Module``s built on ``micro_fast.ops``."""

from micro_fast.nn.fusion import ContrastiveFusion
from micro_fast.nn.graph_learner import KNNGraphLearner
from micro_fast.nn.propagation import GraphPropagation, LightGCN

__all__ = ["ContrastiveFusion", "GraphPropagation", "KNNGraphLearner", "LightGCN"]
