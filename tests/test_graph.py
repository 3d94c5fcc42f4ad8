"""CSRGraph: conversions, transpose cache, validation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given
from hypothesis import strategies as st

from micro_fast import CSRGraph


@st.composite
def dense_matrices(draw):
    m, n = draw(st.integers(0, 20)), draw(st.integers(0, 20))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    dense = torch.randn(m, n, generator=gen, dtype=torch.float64)
    dense[torch.rand(m, n, generator=gen) < draw(st.floats(0, 1))] = 0
    return dense


@given(dense=dense_matrices())
def test_round_trips(dense):
    g = CSRGraph.from_dense(dense)
    assert torch.equal(g.to_dense(), dense)
    assert torch.equal(CSRGraph.from_scipy(g.to_scipy()).to_dense(), dense)
    assert torch.equal(CSRGraph.from_torch(g.to_torch_coo()).to_dense(), dense)
    assert torch.equal(CSRGraph.from_torch(g.to_torch_csr()).to_dense(), dense)
    ei = g.to_edge_index()
    assert torch.equal(CSRGraph.from_edge_index(ei, g.values, g.shape).to_dense(), dense)
    assert torch.equal(g.transpose().to_dense(), dense.T)
    assert torch.equal(g.T.T.to_dense(), dense)
    g.transpose().validate()


def test_transpose_structure_is_cached_and_shared():
    g = CSRGraph.from_dense(torch.tensor([[0, 1.0, 2], [3, 0, 0]]))
    t1 = g.transpose()
    g2 = g.with_values(g.values * 2)
    t2 = g2.transpose()
    assert t1.indices is t2.indices and t1.indptr is t2.indptr
    assert torch.equal(t2.to_dense(), 2 * g.to_dense().T)


def test_from_coo_sums_or_rejects_duplicates():
    g = CSRGraph.from_coo([0, 0, 1], [1, 1, 0], [1.0, 2.0, 5.0], (2, 2))
    assert torch.equal(g.to_dense(), torch.tensor([[0, 3.0], [5.0, 0]]))
    with pytest.raises(ValueError, match="duplicate"):
        CSRGraph.from_coo([0, 0], [1, 1], None, (2, 2), duplicates="error")


def test_values_gradient_through_transpose():
    g = CSRGraph.from_dense(torch.tensor([[0, 1.0, 2], [3, 0, 4]]))
    v = g.values.clone().requires_grad_()
    t = g.with_values(v).transpose()
    (t.values * torch.arange(1.0, 5.0)).sum().backward()
    assert v.grad is not None and sorted(v.grad.tolist()) == [1.0, 2.0, 3.0, 4.0]


def test_is_symmetric():
    a = torch.tensor([[1.0, 2, 0], [2, 0, 3], [0, 3, 0]])
    assert CSRGraph.from_dense(a).is_symmetric()
    a[0, 1] = 5
    assert not CSRGraph.from_dense(a).is_symmetric()


@pytest.mark.parametrize("indptr,indices,values,shape,match", [
    ([0, 2, 1], [0, 1], None, (2, 2), "non-decreasing|end at nnz"),
    ([0, 1, 2], [0, 5], None, (2, 3), "out of range"),
    ([0, 2, 2], [1, 0], None, (2, 2), "strictly increasing"),
    ([0, 2, 2], [1, 1], None, (2, 2), "strictly increasing"),
    ([1, 2, 2], [1], None, (2, 2), "start at 0"),
    ([0, 1], [0], None, (2, 2), "n_rows \\+ 1"),
    ([0, 1, 1], [-1], None, (2, 2), "out of range"),
    ([0, 1, 1], [0], [float("nan")], (2, 2), "finite"),
    ([0, 1, 1], [0], [1.0, 2.0], (2, 2), "values must have shape"),
    ([0, 1, 1], [0], None, (2, -1), "shape"),
])
def test_validation_errors(indptr, indices, values, shape, match):
    vals = None if values is None else torch.tensor(values)
    with pytest.raises(ValueError, match=match):
        CSRGraph(torch.tensor(indptr), torch.tensor(indices), vals, shape)


def test_type_errors():
    with pytest.raises(TypeError, match="indptr"):
        CSRGraph(torch.tensor([0.0, 1.0]), torch.tensor([0]))
    with pytest.raises(TypeError, match="values"):
        CSRGraph(torch.tensor([0, 1]), torch.tensor([0]), torch.tensor([1]))
    with pytest.raises(TypeError):
        CSRGraph.from_scipy(np.eye(2))


def test_scipy_input_with_unsorted_indices_is_canonicalized():
    m = sp.csr_matrix((np.array([1.0, 2.0]), np.array([2, 0]), np.array([0, 2])), shape=(1, 3))
    g = CSRGraph.from_scipy(m)
    assert g.indices.tolist() == [0, 2] and g.values.tolist() == [2.0, 1.0]


def test_to_has_tensor_semantics():
    g = CSRGraph.from_dense(torch.tensor([[0.0, 2.0], [3.0, 0.0]]))
    g.transposed_structure()  # cached transpose: shared by graphs on the same device
    for h in (g.to(torch.float64), g.to("cpu", torch.float64), g.to(dtype=torch.float64),
              g.double(), g.to(torch.zeros(1, dtype=torch.float64))):
        assert h.dtype == torch.float64 and h.device == g.device
        assert torch.equal(h.to_dense(), g.to_dense().double())
        assert h._s is g._s
    assert g.double().float().dtype == torch.float32
    assert g.to("cpu").values.dtype == torch.float32 and g.cpu().device.type == "cpu"
    with pytest.raises(TypeError, match="float32 or float64"):
        g.to(torch.int64)
    with pytest.raises(TypeError, match="unexpected"):
        g.to(memory_format=torch.contiguous_format)
    with pytest.raises(TypeError, match="takes a device"):
        g.to(3.5)
