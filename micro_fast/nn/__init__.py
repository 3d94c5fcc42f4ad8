"""Drop-in ``nn.Module``s built on ``micro_fast.ops``."""

from micro_fast.nn.propagation import GraphPropagation, LightGCN

__all__ = ["GraphPropagation", "LightGCN"]
