"""Error-bound arithmetic: how far from the exact result a computation in a given dtype may land.

Tests compare a kernel's output with an independent dense statement of the same math, computed
in float64 (the "exact" value, see ``oracles.py``). How close must they be? Each comparison
takes its tolerance from the dtype the kernel computes in, the length of every reduction and
the magnitude of every term, entry by entry: the exact statement is evaluated on ``Bounded``
values, which carry next to each float64 value a first-order bound of the rounding error that a
computation with unit roundoff ``u`` accumulates along the same formula:

* an elementwise operation rounds its result once: ``u |result|``, plus the propagated input
  errors times the operation's local derivative (in absolute value);
* a reduction of ``n`` terms (a sum, a dot product, a matrix product) makes
  ``u sqrt(n) sum |terms|``: the expected error of a float sum whose rounding errors have random
  signs (Higham & Mary, "A new approach to probabilistic rounding error analysis", 2019). The
  worst case is ``n u sum |terms|``; blocked and SIMD sums (what the kernels do) stay near the
  expected one;
* an exponential adds ``C_EXP`` ulps (the compiled kernels use polynomial exponentials).

The tolerance of a comparison is ``TOL_FACTOR`` times the bound (``tolerance``): 5x the expected
error of a float32 kernel, and 5x the sum of the two expected errors (10x one) when a float64
kernel meets the float64 exact statement, whose own rounding is of the same size. Products that
land in the subnormal range lose relative precision; ``floor`` adds their absolute error.
``MICRO_FAST_TOLERANCE_LOG=FILE`` appends the largest error-to-tolerance ratio of every
comparison to FILE, to see how much of the tolerance real errors use.
"""

from __future__ import annotations

import math
import os

import torch

#: Tolerance = TOL_FACTOR x the expected error (``tolerance``). Over the fuzz and op suites
#: (hypothesis "dev" profile, 17,500 comparisons) the largest error seen was 1.2x the bound.
TOL_FACTOR = 5.0
#: Rounding of an exponential in ulps (polynomial approximations are accurate to 1-2 ulps).
C_EXP = 4.0

_UNIT = {torch.float32: 2.0**-24, torch.float64: 2.0**-53}


def unit_roundoff(dtype: torch.dtype) -> float:
    """Half an ulp of 1: the relative error of one rounding in ``dtype``."""
    return _UNIT[dtype]


def floor(dtype: torch.dtype, n: int = 1) -> float:
    """Absolute error of ``n`` roundings in the subnormal range of ``dtype``."""
    return n * torch.finfo(dtype).tiny * unit_roundoff(dtype)


def _abs(x):
    return x.abs() if isinstance(x, torch.Tensor) else abs(x)


class Bounded:
    """A float64 tensor ``value`` with ``err`` >= 0 of the same shape: a bound of the rounding
    error an evaluation of the same formula with unit roundoff ``u`` makes (first order)."""

    __slots__ = ("value", "err", "u")

    def __init__(self, value: torch.Tensor, err: torch.Tensor | None = None, u: float = 0.0):
        self.value = value.double()
        self.err = torch.zeros_like(self.value) if err is None else err.double()
        self.u = u

    @classmethod
    def exact(cls, t: torch.Tensor, dtype: torch.dtype) -> Bounded:
        """An input: exactly representable in ``dtype`` (no error), computed on with
        ``dtype``'s unit roundoff."""
        return cls(t.detach(), None, unit_roundoff(dtype))

    # plumbing ---------------------------------------------------------------------------
    def _new(self, value, err) -> Bounded:
        return Bounded(value, err, self.u)

    @staticmethod
    def _parts(x) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        if isinstance(x, Bounded):
            return x.value, x.err
        return (x.double() if isinstance(x, torch.Tensor) else x), 0.0

    @property
    def shape(self) -> torch.Size:
        return self.value.shape

    @property
    def T(self) -> Bounded:  # noqa: N802
        return self._new(self.value.T, self.err.T)

    def __getitem__(self, idx) -> Bounded:
        return self._new(self.value[idx], self.err[idx])

    def masked_fill(self, mask: torch.Tensor, value: float) -> Bounded:
        """``value`` (exact: an absent term, -inf, or a zero) where ``mask``."""
        return self._new(self.value.masked_fill(mask, value), self.err.masked_fill(mask, 0.0))

    def apply(self, fn) -> Bounded:
        """A structural (exact) operation on value and bound alike: indexing, reshaping,
        gathering, masking with zeros."""
        return self._new(fn(self.value), fn(self.err))

    # elementwise --------------------------------------------------------------------------
    def __add__(self, other) -> Bounded:
        ov, oe = self._parts(other)
        v = self.value + ov
        return self._new(v, self.err + oe + self.u * v.abs())

    __radd__ = __add__

    def __neg__(self) -> Bounded:
        return self._new(-self.value, self.err)

    def __sub__(self, other) -> Bounded:
        ov, oe = self._parts(other)
        v = self.value - ov
        return self._new(v, self.err + oe + self.u * v.abs())

    def __rsub__(self, other) -> Bounded:
        return (-self).__add__(other)

    def __mul__(self, other) -> Bounded:
        ov, oe = self._parts(other)
        v = self.value * ov
        err = self.err * _abs(ov) + self.value.abs() * oe + self.u * v.abs()
        return self._new(v, err)

    __rmul__ = __mul__

    def __truediv__(self, other) -> Bounded:
        ov, oe = self._parts(other)
        v = self.value / ov
        err = (self.err + v.abs() * oe) / _abs(ov) + self.u * v.abs()
        return self._new(v, err)

    def __rtruediv__(self, other) -> Bounded:
        ov, oe = self._parts(other)
        v = ov / self.value
        err = (_abs(oe) + v.abs() * self.err) / self.value.abs() + self.u * v.abs()
        return self._new(v, err)

    def exp(self) -> Bounded:
        v = self.value.exp()
        return self._new(v, v * self.err + C_EXP * self.u * v)

    def log(self) -> Bounded:
        v = self.value.log()
        return self._new(v, self.err / self.value.abs() + self.u * v.abs())

    def sqrt(self) -> Bounded:
        v = self.value.sqrt()
        return self._new(v, 0.5 * self.err / v + self.u * v)

    def pow(self, p: float) -> Bounded:
        """x^p for x > 0 (a few roundings: sqrt, divide)."""
        v = self.value.pow(p)
        return self._new(v, abs(p) * v * self.err / self.value.abs() + 2 * self.u * v.abs())

    # reductions ---------------------------------------------------------------------------
    def sum(self, dim: int, keepdim: bool = False, n: int | None = None) -> Bounded:
        """Sum over ``dim``; ``n`` = the number of nonzero terms when the tensor is a dense
        image of a sparse one (defaults to the dimension's size)."""
        n = self.value.shape[dim] if n is None else n
        v = self.value.sum(dim, keepdim=keepdim)
        err = self.err.sum(dim, keepdim=keepdim) \
            + self.u * math.sqrt(max(n, 1)) * self.value.abs().sum(dim, keepdim=keepdim)
        return self._new(v, err)

    def __matmul__(self, other) -> Bounded:
        return matmul(self, other)

    def __rmatmul__(self, other) -> Bounded:
        return matmul(other, self)

    def logsumexp(self, dim: int) -> Bounded:
        """log sum exp over ``dim`` (-inf entries are absent terms)."""
        v = torch.logsumexp(self.value, dim)
        p = torch.exp(self.value - v.unsqueeze(dim)).nan_to_num(0.0)
        n = int(torch.isfinite(self.value).sum(dim).max()) if self.value.numel() else 1
        propagated = (p * self.err.nan_to_num(0.0, posinf=0.0)).sum(dim)
        rounding = self.u * (C_EXP + math.sqrt(max(n, 1)) + v.abs())
        return self._new(v, propagated + rounding)


def matmul(a, b, n: int | None = None) -> Bounded:
    """``a @ b`` with reduction length ``n`` (default: the inner dimension; pass the largest
    number of nonzero terms when one side is a dense image of a sparse matrix)."""
    av, ae = Bounded._parts(a)
    bv, be = Bounded._parts(b)
    u = max(x.u for x in (a, b) if isinstance(x, Bounded))
    n = av.shape[-1] if n is None else n
    v = av @ bv
    scale = av.abs() @ bv.abs()
    err = u * math.sqrt(max(n, 1)) * scale
    if isinstance(ae, torch.Tensor):
        err = err + ae @ bv.abs()
    if isinstance(be, torch.Tensor):
        err = err + av.abs() @ be
    return Bounded(v, err, u)


def cat(parts: list[Bounded], dim: int) -> Bounded:
    return Bounded(torch.cat([p.value for p in parts], dim), torch.cat([p.err for p in parts], dim),
                   max(p.u for p in parts))


def normalize_rows(x: Bounded) -> tuple[Bounded, Bounded]:
    """(x / |x| row-wise, |x| [N, 1])."""
    norm = (x * x).sum(1, keepdim=True).sqrt()
    return x / norm, norm


def tolerance(result: Bounded, kernel_dtype: torch.dtype) -> torch.Tensor:
    """The allowed |kernel - exact| per entry: ``TOL_FACTOR`` x the bound, plus the exact
    statement's own rounding when it runs in the kernel's precision (float64 kernels), plus
    the subnormal floor."""
    err = result.err
    if kernel_dtype == torch.float64:
        err = 2 * err
    return TOL_FACTOR * err + floor(kernel_dtype, 4)


def assert_close(got: torch.Tensor, expected: Bounded, kernel_dtype: torch.dtype | None = None,
                 what: str = "result") -> float:
    """|got - expected.value| <= tolerance entry by entry (NaN where expected is NaN); returns
    the largest ratio of error to tolerance (for calibration)."""
    dtype = kernel_dtype or got.dtype
    assert got.shape == expected.shape, f"{what}: shape {tuple(got.shape)} != " \
                                        f"{tuple(expected.shape)}"
    g, e = got.detach().double().cpu(), expected.value
    tol = tolerance(expected, dtype)
    nan = torch.isnan(e)
    assert torch.equal(torch.isnan(g), nan), f"{what}: NaN in different places"
    inf = torch.isinf(e)
    assert torch.equal(g[inf], e[inf]), f"{what}: infinities differ"
    ok = ~(nan | inf)
    diff = (g - e).abs()
    if not bool(ok.any()):
        return 0.0
    ratio = (diff[ok] / tol[ok]).max()
    if os.environ.get("MICRO_FAST_TOLERANCE_LOG"):
        # the largest error-to-tolerance ratio of each comparison, to see how much of the
        # tolerance real errors use (tests/README.md)
        with open(os.environ["MICRO_FAST_TOLERANCE_LOG"], "a") as log:
            log.write(f"{dtype}\t{what}\t{float(ratio):.4g}\n")
    if bool(ratio > 1):
        worst = int(torch.argmax(torch.where(ok, diff / tol, torch.zeros_like(diff))))
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), g.shape))
        raise AssertionError(
            f"{what}: |got - exact| exceeds the {dtype} tolerance by {float(ratio):.3g}x at "
            f"{idx}: got {float(g[idx]):.17g}, exact {float(e[idx]):.17g}, tolerance "
            f"{float(tol[idx]):.3g} (max error {float(diff[ok].max()):.3g})")
    return float(ratio)
