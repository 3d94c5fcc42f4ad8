"""C++/OpenMP backend (``micro_fast._C``): CPU tensors, zero-copy through NumPy."""

from __future__ import annotations

import os

import torch

from micro_fast.backends._build import build_status
from micro_fast.errors import UnavailableError

try:
    from micro_fast import _C
except ImportError as exc:  # the extension is optional: the library falls back
    _C = None
    _import_error = f"{exc}"
else:
    _import_error = ""


def is_available() -> tuple[bool, str]:
    if _C is not None:
        return True, ""
    return False, build_status("_C") or f"micro_fast._C did not import: {_import_error}"


def supports(device: torch.device) -> bool:
    return device.type == "cpu"


def simd_isa() -> str:
    """The instruction set the compiled kernels run with ("none" without the extension)."""
    return _C.simd_isa() if _C is not None else "none"


def set_simd_isa(name: str) -> None:
    """Forces "avx512", "avx2" or "generic" (the portable build); "auto" picks the best this
    CPU runs. Raises ValueError for one the CPU or build lacks."""
    if _C is None:
        raise UnavailableError("micro_fast._C is not available")
    _C.set_simd_isa(name)


def supported_isas() -> list[str]:
    """The instruction sets of the compiled core this CPU runs, best first."""
    if _C is None:
        return []
    current, out = _C.simd_isa(), []
    for isa in ("avx512", "avx2", "generic"):
        try:
            _C.set_simd_isa(isa)
            out.append(isa)
        except ValueError:
            pass
    _C.set_simd_isa(current)
    return out


if _C is not None and os.environ.get("MICRO_FAST_SIMD", "").strip():
    # e.g. MICRO_FAST_SIMD=avx2 runs an AVX-512 machine with the AVX2 kernels
    set_simd_isa(os.environ["MICRO_FAST_SIMD"].strip())


def _np(t: torch.Tensor | None):
    return None if t is None else t.detach().numpy()


def topk_similarity(queries: torch.Tensor, keys: torch.Tensor | None, k: int,
                    exclude: tuple[torch.Tensor, torch.Tensor] | None,
                    block_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    indptr, indices = exclude if exclude is not None else (None, None)
    values, idx = _C.topk_similarity(_np(queries), _np(keys), int(k), _np(indptr), _np(indices),
                                     int(block_size or 0), torch.get_num_threads())
    return torch.from_numpy(values), torch.from_numpy(idx)


def topk_similarity_shard(queries: torch.Tensor, k: int,
                          exclude: tuple[torch.Tensor, torch.Tensor] | None,
                          block_size: int | None, shard: int,
                          num_shards: int) -> tuple[torch.Tensor, torch.Tensor]:
    indptr, indices = exclude if exclude is not None else (None, None)
    values, idx = _C.topk_similarity(_np(queries), None, int(k), _np(indptr), _np(indices),
                                     int(block_size or 0), torch.get_num_threads(), int(shard),
                                     int(num_shards))
    return torch.from_numpy(values), torch.from_numpy(idx)


# Outputs are allocated by torch (see output_array in csrc/bindings.cpp).
# The ops pass structures of validated CSRGraphs, so the O(nnz) re-check is skipped on these
# hot paths (the compiled entry points check by default).
def spmm(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor,
         x: torch.Tensor) -> torch.Tensor:
    y = torch.empty(indptr.numel() - 1, x.shape[1], dtype=x.dtype)
    _C.spmm(_np(indptr), _np(indices), _np(values), _np(x), torch.get_num_threads(),
            checked=False, out=_np(y))
    return y


def sddmm(indptr: torch.Tensor, indices: torch.Tensor, a: torch.Tensor,
          b: torch.Tensor) -> torch.Tensor:
    out = torch.empty(indices.numel(), dtype=a.dtype)
    _C.sddmm(_np(indptr), _np(indices), _np(a), _np(b), torch.get_num_threads(),
             checked=False, out=_np(out))
    return out


def project_rows_forward(x: torch.Tensor, rows: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None) -> torch.Tensor:
    z = torch.empty(rows.numel(), weight.shape[0], dtype=x.dtype)
    _C.project_rows_forward(_np(x), _np(rows), _np(weight), _np(bias), torch.get_num_threads(),
                            out=_np(z))
    return z


def project_rows_backward(x: torch.Tensor, rows: torch.Tensor, weight: torch.Tensor,
                          grad: torch.Tensor, need_x: bool, need_weight: bool,
                          ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    grad_x = torch.empty_like(x) if need_x else None
    grad_w = torch.empty_like(weight) if need_weight else None
    _C.project_rows_backward(_np(x), _np(rows), _np(weight), _np(grad), torch.get_num_threads(),
                             grad_x=_np(grad_x), grad_w=_np(grad_w))
    return grad_x, grad_w


def sample_edges(weights: torch.Tensor, m: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(_C.sample_edges(_np(weights), int(m), int(seed),
                                            torch.get_num_threads()))


def bipartite_graph(users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int,
                    normalization: str, self_loops: bool, duplicates: str,
                    dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    out = _C.bipartite_graph(_np(users), _np(items), int(n_users), int(n_items), normalization,
                             bool(self_loops), duplicates, str(dtype).removeprefix("torch."))
    return tuple(torch.from_numpy(a) for a in out)


#: The contrastive kernels take ``shard=(index, count)`` (see the package docstring).
CONTRASTIVE_SHARDS = True
# as in csrc/cpu: blocks of the top-k and contrastive drivers, the fused kernel's, and the cap
# on the private per-thread top-k lists
_BLOCK, _FUSION_BLOCK, _PRIVATE_LISTS = 256, 128, 256 << 20


def workspace_bytes(op: str, *, m: int = 0, n: int = 0, d: int = 0, k: int = 0,
                    views: int = 1, elem: int = 4, **_: int) -> int:
    """The compiled kernels' working memory (see the package docstring)."""
    threads = torch.get_num_threads()
    if op == "topk_similarity":  # private lists, the packed keys, per-thread tiles
        lists = min((threads - 1) * m * k * (elem + 8), _PRIVATE_LISTS)
        return lists + n * d * elem + threads * _BLOCK * (_BLOCK + d) * elem
    if op == "contrastive_loss":  # packed panels of both views, per-thread gradients and tiles
        return (4 + 2 * (threads - 1)) * n * d * elem + threads * 2 * _BLOCK * _BLOCK * elem
    if op == "contrastive_fusion_loss":  # packed panels, per-thread gradients, m^2 + 2m tiles
        tiles = (views * views + 2 * views) * _FUSION_BLOCK * _FUSION_BLOCK
        return (2 + threads - 1) * views * n * d * elem + threads * tiles * elem
    return 0


def contrastive_forward(n1: torch.Tensor, n2: torch.Tensor, tau: float, symmetric: bool,
                        block_size: int | None, shard: tuple[int, int] = (0, 1),
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    lse1, lse2 = _C.contrastive_forward(_np(n1), _np(n2), float(tau), bool(symmetric),
                                        int(block_size or 0), torch.get_num_threads(), *shard)
    return torch.from_numpy(lse1), None if lse2 is None else torch.from_numpy(lse2)


def contrastive_backward(n1: torch.Tensor, n2: torch.Tensor, tau: float, lse1: torch.Tensor,
                         lse2: torch.Tensor | None, g1: torch.Tensor, g2: torch.Tensor | None,
                         block_size: int | None, shard: tuple[int, int] = (0, 1),
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    grad1, grad2 = torch.empty(n1.shape, dtype=n1.dtype), torch.empty(n2.shape, dtype=n2.dtype)
    _C.contrastive_backward(_np(n1), _np(n2), float(tau), _np(lse1), _np(lse2), _np(g1),
                            _np(g2), int(block_size or 0), torch.get_num_threads(),
                            _np(grad1), _np(grad2), *shard)
    return grad1, grad2


def contrastive_fusion_forward(u: torch.Tensor, coef: torch.Tensor, tau: float,
                               block_size: int | None,
                               shard: tuple[int, int] = (0, 1)) -> torch.Tensor:
    return torch.from_numpy(_C.contrastive_fusion_forward(_np(u), _np(coef), float(tau),
                                                          int(block_size or 0),
                                                          torch.get_num_threads(), *shard))


def contrastive_fusion_backward(u: torch.Tensor, coef: torch.Tensor, tau: float,
                                lse: torch.Tensor, g: torch.Tensor, block_size: int | None,
                                shard: tuple[int, int] = (0, 1),
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    grad_u, grad_coef = torch.empty(u.shape, dtype=u.dtype), torch.empty(coef.shape,
                                                                          dtype=coef.dtype)
    _C.contrastive_fusion_backward(_np(u), _np(coef), float(tau), _np(lse), _np(g),
                                   int(block_size or 0), torch.get_num_threads(), _np(grad_u),
                                   _np(grad_coef), *shard)
    return grad_u, grad_coef
