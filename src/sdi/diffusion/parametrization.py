"""Conversions between eps, x0 and v predictions at level a (x_t = sqrt(a) x0 + sqrt(1 - a) eps)."""

from __future__ import annotations

from torch import Tensor


def _coeffs(alpha: Tensor) -> tuple[Tensor, Tensor]:
    return alpha.sqrt(), (1 - alpha).sqrt()


def x0_from_eps(x_t: Tensor, eps: Tensor, alpha: Tensor) -> Tensor:
    """x0 = (x_t - sqrt(1 - a) eps) / sqrt(a) (paper Eq. 5, times sqrt(a))."""
    s, n = _coeffs(alpha)
    return (x_t - n * eps) / s


def eps_from_x0(x_t: Tensor, x0: Tensor, alpha: Tensor) -> Tensor:
    """eps = (x_t - sqrt(a) x0) / sqrt(1 - a)."""
    s, n = _coeffs(alpha)
    return (x_t - s * x0) / n


def eps_from_v(x_t: Tensor, v: Tensor, alpha: Tensor) -> Tensor:
    """v = sqrt(a) eps - sqrt(1 - a) x0 (Salimans & Ho 2022)  =>  eps = sqrt(a) v + sqrt(1 - a) x_t."""
    s, n = _coeffs(alpha)
    return s * v + n * x_t


def x0_from_v(x_t: Tensor, v: Tensor, alpha: Tensor) -> Tensor:
    """x0 = sqrt(a) x_t - sqrt(1 - a) v."""
    s, n = _coeffs(alpha)
    return s * x_t - n * v


def v_from_eps(x_t: Tensor, eps: Tensor, alpha: Tensor) -> Tensor:
    """v = sqrt(a) eps - sqrt(1 - a) x0."""
    s, n = _coeffs(alpha)
    return s * eps - n * x0_from_eps(x_t, eps, alpha)


def add_noise(x0: Tensor, eps: Tensor, alpha: Tensor) -> Tensor:
    """x_t = sqrt(a) x0 + sqrt(1 - a) eps (the forward process; SDS's and SDI's x_t)."""
    s, n = _coeffs(alpha)
    return s * x0 + n * eps
