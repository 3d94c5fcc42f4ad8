"""Build the kNN item graph of a catalog and search it, without an N x N matrix."""

import torch

import micro_fast as mf

torch.manual_seed(0)
items = torch.randn(20_000, 64, requires_grad=True)            # e.g. projected image features
graph = mf.knn_graph(items, k=10, normalization="sym")         # CSRGraph, 10 neighbours per item
print(graph, "backend:", mf.backends.available()[0])
values, neighbours = mf.topk_similarity(items[:5], items, k=3, normalize=True)
print("top-3 neighbours of the first 5 items:\n", neighbours)
graph.values.sum().backward()                                  # gradients reach the features
print("grad norm:", items.grad.norm().item())
