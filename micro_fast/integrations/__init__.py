"""Drop-ins for code users already run, installed with one call.

* ``micro_fast.integrations.micro``: the published MICRO code (CRIPAC-DIG/MICRO, ``codes/``):
  its graph, loss, adjacency and evaluation functions with their signatures and numbers,
  backed by this library's kernels; ``patch(...)`` installs them into the published modules
  and ``unpatch`` restores them.

An integration imports the library (ops, graphs, metrics), never the training application.
"""
