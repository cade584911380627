r"""Centred, orthonormal FFTs over the last 2 or 3 dimensions (fastMRI / deepinv convention).

.. math::

    \operatorname{fftc}(x) = \operatorname{fftshift}\big(\mathcal{F}\,
    \operatorname{ifftshift}(x)\big), \qquad \|\operatorname{fftc}(x)\|_2 = \|x\|_2 .
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["fftc", "ifftc"]


def _check(x: Tensor, ndim: int) -> tuple[int, ...]:
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3 (the number of trailing FFT dims), got {ndim}")
    if x.dim() < ndim:
        raise ValueError(f"input has {x.dim()} dims, fewer than ndim={ndim}")
    if not x.is_complex():
        raise TypeError(
            f"fftc/ifftc expect a complex tensor, got {x.dtype}; "
            "convert with torch.complex(real, imag) or x.to(torch.complex64)"
        )
    return tuple(range(-ndim, 0))


def fftc(x: Tensor, ndim: int = 2) -> Tensor:
    r"""Centred orthonormal FFT over the last ``ndim`` dimensions.

    Args:
        x: complex tensor (complex64 or complex128).
        ndim: number of trailing dimensions to transform (2 or 3).

    Returns:
        k-space, same shape and dtype as ``x``.

    Raises:
        TypeError: if ``x`` is not complex.
        ValueError: if ``ndim`` is not 2 or 3.

    Example:
        >>> x = torch.randn(1, 4, 4, dtype=torch.complex64)
        >>> torch.allclose(ifftc(fftc(x)), x, atol=1e-6)
        True
    """
    dims = _check(x, ndim)
    x = torch.fft.ifftshift(x, dim=dims)
    x = torch.fft.fftn(x, dim=dims, norm="ortho")
    return torch.fft.fftshift(x, dim=dims)


def ifftc(k: Tensor, ndim: int = 2) -> Tensor:
    r"""Centred orthonormal inverse FFT over the last ``ndim`` dimensions (adjoint of :func:`fftc`).

    Args:
        k: complex k-space tensor.
        ndim: number of trailing dimensions to transform (2 or 3).

    Returns:
        image, same shape and dtype as ``k``.

    Example:
        >>> k = torch.randn(2, 8, 8, dtype=torch.complex128)
        >>> torch.allclose(fftc(ifftc(k)), k)
        True
    """
    dims = _check(k, ndim)
    k = torch.fft.ifftshift(k, dim=dims)
    k = torch.fft.ifftn(k, dim=dims, norm="ortho")
    return torch.fft.fftshift(k, dim=dims)
