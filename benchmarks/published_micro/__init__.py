"""A fixture shaped like the published MICRO code (CRIPAC-DIG/MICRO, ``codes/``), written for
this project from its description (MICRO.md): the modules and the names, signatures and call
patterns that ``micro_fast.integrations.micro.patch`` acts on, computing what the published code
computes, in torch, without its dependencies (torch_scatter, a process pool):

* ``norm``       ``build_sim``, ``build_knn_normalized_graph``, ``get_sparse_laplacian``;
* ``models``     ``MICRO`` with ``forward(adj, build_item_graph)``, ``mm``, ``sim`` and
                 ``batched_contrastive_loss``, configured by the module's ``args``;
* ``batch_test`` ``test_torch`` over the module's ``data_generator`` and ``Ks``;
* ``trainer``    ``Trainer``: the scipy adjacency converted by ``sparse_mx_to_torch_sparse_tensor``,
                 the BPR step.

The tests (tests/test_integration_micro.py) and benchmarks/published_step.py build the model
with and without the patch from the same weights and data. Not part of the library.
"""
