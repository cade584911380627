r"""Cartesian multi-coil MRI forward model (SENSE), deepinv style.

.. math::

    A x = M\,\mathcal{F}\,S x, \qquad A^H y = S^H \mathcal{F}^H M y, \qquad
    A^H A x = S^H \mathcal{F}^H M^2 \mathcal{F} S x,

with :math:`S` the coil sensitivities, :math:`\mathcal{F}` the centred orthonormal FFT
(:func:`invseg.recon.fft.fftc`) and :math:`M` the (real) sampling mask.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from invseg.recon.fft import fftc, ifftc

__all__ = ["LinearOperator", "SenseOperator"]


@runtime_checkable
class LinearOperator(Protocol):
    r"""The operator protocol of :mod:`invseg.recon`: a linear forward model and its adjoint.

    Anything with these three methods can be the physics of MoDL, CG-SENSE and the baselines
    (deepinv's ``LinearPhysics`` names). Implementations must be pure (no state change in
    any method) and satisfy :math:`\langle Ax, y\rangle = \langle x, A^H y\rangle` and
    ``normal(x) == A_adjoint(A(x))``; ``tests/recon/test_operators.py`` checks both for every
    implementation.

    Example:
        >>> op = SenseOperator(torch.ones(1, 1, 4, 4, dtype=torch.complex64), torch.ones(1, 4))
        >>> isinstance(op, LinearOperator)
        True
    """

    def A(self, x: Tensor) -> Tensor:
        """Forward model, image -> measurements."""
        ...

    def A_adjoint(self, y: Tensor) -> Tensor:
        """Adjoint, measurements -> image."""
        ...

    def normal(self, x: Tensor) -> Tensor:
        """Normal operator :math:`A^H A`, image -> image."""
        ...


class SenseOperator(LinearOperator):
    r"""Cartesian multi-coil SENSE operator :math:`A = M\mathcal{F}S` for 2D, 3D and 2D+time.

    The operator is pure: :meth:`A`, :meth:`A_adjoint` and :meth:`normal` never change its
    state, so it can be passed as context to every unroll of an invertible chain.

    Args:
        coil_maps: complex sensitivities :math:`S`, shape ``(B, coils, *spatial)``.
        mask: real or boolean sampling mask :math:`M`, broadcastable to ``(B, coils, *spatial)``
            (e.g. ``(1, 1, 1, W)`` for 1D Cartesian 2D, ``(B, 1, T, 1, W)`` for ky-t cine).
        fft_ndim: number of trailing dims the FFT runs over. Default: ``len(spatial)`` if that is
            2 or 3. Use ``fft_ndim=2`` for 2D+time (``spatial = (T, H, W)``; time is a batch-like
            dim of the image and every frame gets its own 2D FFT).

    Shape:
        - image ``x``: ``(B, 1, *spatial)`` complex.
        - k-space ``y``: ``(B, coils, *spatial)`` complex.

    Raises:
        TypeError: non-complex coil maps, complex mask, non-tensor inputs.
        ValueError: mask not broadcastable to the coil maps, bad ``fft_ndim``.

    Example:
        >>> S = torch.ones(1, 2, 8, 8, dtype=torch.complex64) / 2**0.5
        >>> M = torch.ones(1, 1, 1, 8)
        >>> op = SenseOperator(S, M)
        >>> x = torch.randn(1, 1, 8, 8, dtype=torch.complex64)
        >>> op.A(x).shape
        torch.Size([1, 2, 8, 8])
        >>> torch.allclose(op.normal(x), x, atol=1e-5)  # fully sampled, sum |S|^2 = 1
        True
    """

    def __init__(self, coil_maps: Tensor, mask: Tensor, *, fft_ndim: int | None = None) -> None:
        if not isinstance(coil_maps, Tensor) or not isinstance(mask, Tensor):
            raise TypeError("coil_maps and mask must be torch.Tensors")
        if not coil_maps.is_complex():
            raise TypeError(
                f"coil_maps must be complex (complex64/complex128), got {coil_maps.dtype}"
            )
        if coil_maps.dim() not in (4, 5):
            raise ValueError(
                "coil_maps must have shape (B, coils, H, W), (B, coils, D, H, W) or "
                f"(B, coils, T, H, W); got {tuple(coil_maps.shape)}"
            )
        if mask.is_complex():
            raise TypeError("mask must be real or boolean (a sampling pattern or weights)")
        spatial = coil_maps.dim() - 2
        if fft_ndim is None:
            fft_ndim = spatial
        if fft_ndim not in (2, 3) or fft_ndim > spatial:
            raise ValueError(
                f"fft_ndim must be 2 or 3 and at most the {spatial} spatial dims of coil_maps; "
                f"got {fft_ndim} (use fft_ndim=2 for 2D+time)"
            )
        if mask.dim() > coil_maps.dim():
            raise ValueError(
                f"mask has {mask.dim()} dims but coil_maps only {coil_maps.dim()}; "
                f"give the mask as (B or 1, 1, *spatial) with size-1 dims where it broadcasts"
            )
        try:
            shape = torch.broadcast_shapes(mask.shape, coil_maps.shape)
        except RuntimeError:
            shape = None
        if shape != coil_maps.shape:
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not broadcast to the k-space shape "
                f"{tuple(coil_maps.shape)} (B, coils, *spatial); every mask dim must equal the "
                "k-space dim or be 1"
            )
        self.coil_maps = coil_maps
        self.mask = mask.to(device=coil_maps.device, dtype=coil_maps.real.dtype)
        self.fft_ndim = fft_ndim

    # ----------------------------------------------------------------- shapes
    @property
    def kspace_shape(self) -> torch.Size:
        """Shape ``(B, coils, *spatial)`` of the k-space :math:`y`."""
        return self.coil_maps.shape

    @property
    def image_shape(self) -> torch.Size:
        """Shape ``(B, 1, *spatial)`` of the image :math:`x`."""
        s = self.coil_maps.shape
        return torch.Size((s[0], 1, *s[2:]))

    @property
    def dtype(self) -> torch.dtype:
        """Complex dtype of the coil maps."""
        return self.coil_maps.dtype

    def to(self, *args, **kwargs) -> SenseOperator:
        """A new operator with coil maps (and mask) moved/cast like :meth:`torch.Tensor.to`."""
        maps = self.coil_maps.to(*args, **kwargs)
        return SenseOperator(maps, self.mask.to(maps.device), fft_ndim=self.fft_ndim)

    def _check(self, t: Tensor, expected: torch.Size, name: str) -> None:
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_complex():
            raise TypeError(
                f"{name} must be complex, got {t.dtype}; "
                "build it with torch.complex(real, imag) or .to(torch.complex64)"
            )
        if t.shape != expected:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)} but this operator expects {tuple(expected)} "
                "(image (B, 1, *spatial), k-space (B, coils, *spatial))"
            )

    # ----------------------------------------------------------------- maths
    def A(self, x: Tensor) -> Tensor:
        r"""Forward model :math:`y = M\mathcal{F}Sx`.

        Args:
            x: image, ``(B, 1, *spatial)`` complex.

        Returns:
            k-space, ``(B, coils, *spatial)``.
        """
        self._check(x, self.image_shape, "image x")
        Sx = self.coil_maps * x  # (B, coils, *spatial)
        FSx = fftc(Sx, self.fft_ndim)  # (B, coils, *spatial)
        return self.mask * FSx

    def A_adjoint(self, y: Tensor) -> Tensor:
        r"""Adjoint :math:`x = S^H\mathcal{F}^H M y` (the zero-filled reconstruction).

        Args:
            y: k-space, ``(B, coils, *spatial)`` complex.

        Returns:
            image, ``(B, 1, *spatial)``.
        """
        self._check(y, self.kspace_shape, "k-space y")
        My = self.mask * y  # (B, coils, *spatial)
        FhMy = ifftc(My, self.fft_ndim)  # (B, coils, *spatial)
        return (self.coil_maps.conj() * FhMy).sum(dim=1, keepdim=True)  # (B, 1, *spatial)

    def normal(self, x: Tensor) -> Tensor:
        r"""Normal operator :math:`A^H A x = S^H\mathcal{F}^H M^2\mathcal{F}Sx`.

        Args:
            x: image, ``(B, 1, *spatial)`` complex.

        Returns:
            image, ``(B, 1, *spatial)``.
        """
        self._check(x, self.image_shape, "image x")
        Sx = self.coil_maps * x  # (B, coils, *spatial)
        MFSx = self.mask.square() * fftc(Sx, self.fft_ndim)  # (B, coils, *spatial)
        FhMFSx = ifftc(MFSx, self.fft_ndim)  # (B, coils, *spatial)
        return (self.coil_maps.conj() * FhMFSx).sum(dim=1, keepdim=True)

    def __repr__(self) -> str:
        return (
            f"SenseOperator(kspace_shape={tuple(self.kspace_shape)}, fft_ndim={self.fft_ndim}, "
            f"acceleration={self.acceleration:.2f})"
        )

    @property
    def acceleration(self) -> float:
        """Nominal acceleration: k-space samples over acquired samples."""
        m = self.mask.expand(self.kspace_shape)[:, :1]
        acquired = float((m != 0).sum())
        return float(m.numel()) / max(acquired, 1.0)
