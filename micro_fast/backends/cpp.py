"""C++/OpenMP backend (``micro_fast._C``): CPU tensors, zero-copy through NumPy."""

from __future__ import annotations

import torch

from micro_fast.backends._build import build_status

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
    return _C.simd_isa() if _C is not None else "none"


def _np(t: torch.Tensor | None):
    return None if t is None else t.detach().numpy()


def topk_similarity(queries: torch.Tensor, keys: torch.Tensor | None, k: int,
                    exclude: tuple[torch.Tensor, torch.Tensor] | None,
                    block_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    indptr, indices = exclude if exclude is not None else (None, None)
    values, idx = _C.topk_similarity(_np(queries), _np(keys), int(k), _np(indptr), _np(indices),
                                     int(block_size or 0), torch.get_num_threads())
    return torch.from_numpy(values), torch.from_numpy(idx)
