r"""Lipschitz-bounded residual CNN denoiser :math:`R(x) = x + f(x)`, invertible by fixed point."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from invseg._choices import closest

__all__ = [
    "ResidualDenoiser",
    "channels_to_complex",
    "complex_to_channels",
    "gram_bound",
    "grid_margin",
]

_ACTS = {"relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "elu": nn.ELU, "tanh": nn.Tanh}


def complex_to_channels(x: Tensor) -> Tensor:
    """``(B, 1, *spatial)`` complex -> ``(B, 2, *spatial)`` real ``[Re, Im]`` (norm preserving).

    Example:
        >>> complex_to_channels(torch.ones(1, 1, 2, 2, dtype=torch.complex64)).shape
        torch.Size([1, 2, 2, 2])
    """
    return torch.cat([x.real, x.imag], dim=1)


def channels_to_complex(x: Tensor) -> Tensor:
    """``(B, 2, *spatial)`` real -> ``(B, 1, *spatial)`` complex; inverse of
    :func:`complex_to_channels`.

    Example:
        >>> z = torch.randn(1, 1, 2, 2, dtype=torch.complex64)
        >>> torch.equal(channels_to_complex(complex_to_channels(z)), z)
        True
    """
    return torch.complex(x[:, :1], x[:, 1:2])


def grid_margin(grid: tuple[int, ...]) -> float:
    r"""Factor that turns the largest per-frequency singular value on ``grid`` into a bound for
    every input size, for 3-tap-per-dim kernels.

    With :math:`p(\omega) = u^H\hat K(\omega)v` at the true maximiser,
    :math:`q = |p|^2 \le \sigma_{\max}(\hat K)^2` is a non-negative trigonometric polynomial of
    degree 2 in each frequency with maximum :math:`S^2`. Along one dim, at its slice maximum
    :math:`q' = 0` and Bernstein's inequality gives :math:`|q''| \le 4\max q`, and a grid point
    lies within :math:`\pi/G_d`, so the slice's grid maximum is at least
    :math:`1 - 2(\pi/G_d)^2` of its maximum. Applied one dim after the other,
    :math:`S \le M\prod_d (1 - 2(\pi/G_d)^2)^{-1/2}` for the grid maximum :math:`M`.

    Example:
        >>> round(grid_margin((32, 32)), 3), round(grid_margin((24, 24, 24)), 3)
        (1.02, 1.054)
    """
    factors = [1.0 - 2.0 * (math.pi / g) ** 2 for g in grid]
    if min(factors) <= 0.5:
        raise ValueError(f"lipschitz grid {grid} is too coarse for a certified bound; use >= 16")
    return math.prod(f**-0.5 for f in factors)


def gram_bound(m: Tensor, iters: int = 6) -> Tensor:
    r"""Certified upper bound on the largest singular value of each matrix in a batch.

    Gram iteration (Delattre et al., ICML 2023): with :math:`G = M^H M`,
    :math:`\sigma_{\max}(M)^{2^{J+1}} = \lambda_{\max}(G^{2^J}) \le \|G^{2^J}\|_F`, computed by
    ``iters`` rescaled squarings. The bound exceeds :math:`\sigma_{\max}` by at most a factor
    :math:`\mathrm{rank}^{1/2^{J+1}}` (1.033 for rank 64 and the default 6 squarings).

    Args:
        m: ``(..., rows, cols)`` real or complex.
        iters: squarings :math:`J`.

    Returns:
        ``(...)`` bounds, float.

    Example:
        >>> m = torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64))[None]
        >>> round(float(gram_bound(m)[0]), 6)
        3.0
    """
    g = m.mH @ m  # (..., cols, cols)
    log_scale = torch.zeros(g.shape[:-2], dtype=g.real.dtype, device=g.device)
    for _ in range(iters):
        c = torch.linalg.matrix_norm(g).clamp_min(torch.finfo(log_scale.dtype).tiny)
        g = g / c[..., None, None]
        g = g @ g
        log_scale = 2 * (log_scale + c.log())
    log_top = log_scale + torch.linalg.matrix_norm(g).clamp_min(1e-300).log()
    return torch.exp(log_top / 2 ** (iters + 1))


class _CertifiedConv(nn.Module):
    r"""A 3x3(x3) conv whose weight is scaled to a certified operator norm ``gain``.

    The operator norm of a convolution is the largest singular value of its per-frequency
    matrices :math:`\hat K(\omega)` (FFT of the kernel). :meth:`refresh` finds it on a
    frequency grid (exact SVDs) whenever the weight changed, and keeps the maximiser's singular
    vectors :math:`u, v`; the forward divides the weight by the differentiable
    :math:`\sigma = \mathrm{Re}\,u^H\hat K(\omega^*)v` (equal to the grid maximum for the
    current weight) times :func:`grid_margin`.
    """

    def __init__(self, conv: nn.Module, gain: float, grid: tuple[int, ...]) -> None:
        super().__init__()
        self.conv, self.gain, self.grid = conv, gain, grid
        self.margin = grid_margin(grid)
        self._key: tuple | None = None
        self._uv: tuple[Tensor, Tensor, tuple[int, ...], float] | None = None

    def _spectrum(self, w: Tensor) -> Tensor:
        """Per-frequency matrices ``(*grid_half, out, in)`` of the kernel ``w``."""
        d = w.dim() - 2
        k = torch.fft.rfftn(w, s=self.grid, dim=tuple(range(2, 2 + d)))
        return k.permute(*range(2, 2 + d), 0, 1)

    @torch.no_grad()
    def refresh(self) -> None:
        """Exact grid maximum, its frequency and singular vectors for the current weight."""
        w = self.conv.weight.detach()
        if w.is_cuda:  # batched GEMMs: fast on a GPU, where batched SVDs of 64x64 are not
            sv = gram_bound(self._spectrum(w.double()))  # (*grid_half)
        else:
            sv = torch.linalg.svdvals(self._spectrum(w.float()))[..., 0]  # (*grid_half)
        flat = int(sv.flatten().argmax())
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), sv.shape))
        # phase of every kernel tap at the maximiser: K(w*) = sum_n W_n exp(-2 pi i k.n / G)
        taps = torch.stack(
            torch.meshgrid(
                *[torch.arange(k, dtype=torch.float64) for k in w.shape[2:]], indexing="ij"
            )
        ).flatten(1)  # (d, taps)
        k = torch.tensor(idx, dtype=torch.float64)[:, None] / torch.tensor(self.grid)[:, None]
        phase = torch.exp(-2j * math.pi * (k * taps).sum(0)).to(w.device)  # (taps,)
        m = w.double().flatten(2).to(phase.dtype) @ phase  # (out, in) at the maximiser
        U, S, Vh = torch.linalg.svd(m)
        # float32 SVD rounding: certify the larger of the float64 value and the float32 max
        ratio = max(1.0, float(sv.max()) * (1 + 1e-5) / max(float(S[0]), 1e-300))
        self._uv = (U[:, 0], Vh[0].conj(), phase, ratio)
        self._key = self._state_key()

    def _state_key(self) -> tuple:
        w = self.conv.weight
        return (w.data_ptr(), w._version, w.dtype, w.device)

    def sigma(self) -> Tensor:
        """Differentiable certified norm of the raw weight (grid maximum times margin)."""
        if self._key != self._state_key():
            self.refresh()
        u, v, phase, ratio = self._uv
        w = self.conv.weight
        cdtype = torch.complex128 if w.dtype == torch.float64 else torch.complex64
        m = w.flatten(2).to(cdtype) @ phase.to(cdtype)  # (out, in) at the maximiser
        s = (u.to(cdtype).conj() @ m @ v.to(cdtype)).real
        return s * (ratio * self.margin)

    def weight(self) -> Tensor:
        """The weight used in the forward: operator norm <= ``gain`` (certified)."""
        return self.conv.weight * (self.gain / self.sigma())

    def forward(self, x: Tensor) -> Tensor:
        conv = F.conv2d if self.conv.weight.dim() == 4 else F.conv3d
        return conv(x, self.weight(), self.conv.bias, padding=1)

    @torch.no_grad()
    def certified_norm(self) -> float:
        """Certified operator norm of the weight used now (fresh SVDs, no cache)."""
        self.refresh()
        w = self.weight()
        sv = torch.linalg.svdvals(self._spectrum(w.double()))[..., 0]
        return float(sv.max()) * self.margin


class ResidualDenoiser(nn.Module):
    r"""Residual CNN :math:`R(x) = x + f(x)` on complex images with :math:`\mathrm{Lip}(f) < 1`.

    ``f`` is ``layers`` 3x3 (x3) convolutions ``2 -> channels -> ... -> 2`` on the two-channel real
    view ``[Re x, Im x]`` with 1-Lipschitz activations between them (no normalisation layers).
    Each convolution's weight is scaled, in every forward, to a certified operator norm
    :math:`\mathrm{lipschitz}^{1/\mathrm{layers}}`: the exact norm of a convolution is the
    largest singular value of the per-frequency matrices of its kernel's FFT, computed by SVD on
    a ``grid`` of frequencies whenever the weight changed, times :func:`grid_margin` (1.02 for
    the 2D default, 1.05 for 3D) so the bound holds for every input size. Hence
    :math:`\mathrm{Lip}(f) \le \mathrm{lipschitz} < 1`, :math:`R` is invertible and
    :math:`x = z - f(x)` converges to :math:`R^{-1}(z)` at rate ``lipschitz`` (Banach).
    :meth:`certified_lipschitz` recomputes the bound from the weights.

    Args:
        spatial_dims: 2 for 2D images, 3 for 3D volumes and 2D+time (convs over ``(t, y, x)``).
        channels: hidden channels.
        layers: number of convolutions (``>= 2``).
        lipschitz: bound on :math:`\mathrm{Lip}(f)`, in ``(0, 1)``.
        act: ``"relu"``, ``"leakyrelu"``, ``"elu"`` or ``"tanh"`` (all 1-Lipschitz).
        grid: frequencies per dim of the certified bound (default 32 in 2D, 24 in 3D).

    Shape:
        ``(B, 1, *spatial)`` complex -> same.

    Raises:
        ValueError: bad ``spatial_dims``/``layers``/``lipschitz``/``act`` or input shape.
        TypeError: non-complex input.

    Example:
        >>> R = ResidualDenoiser(channels=8, layers=3)
        >>> x = torch.randn(1, 1, 16, 16, dtype=torch.complex64)
        >>> torch.allclose(R.inverse(R(x), max_iter=200, tol=1e-7), x, atol=1e-4)
        True
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        channels: int = 64,
        layers: int = 5,
        *,
        lipschitz: float = 0.9,
        act: str = "relu",
        grid: int | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(
                f"spatial_dims must be 2 or 3 (3 also for 2D+time), got {spatial_dims}"
            )
        if layers < 2:
            raise ValueError(f"layers must be >= 2, got {layers}")
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if not 0 < lipschitz < 1:
            raise ValueError(
                "lipschitz must be in (0, 1) for the fixed-point inverse to converge, "
                f"got {lipschitz}"
            )
        if act.lower() not in _ACTS:
            hint = closest(act.lower(), list(_ACTS))
            raise ValueError(
                f"unknown act {act!r}; choose one of {sorted(_ACTS)}"
                + (f" (did you mean {hint!r}?)" if hint else "")
            )
        self.spatial_dims, self.lipschitz = spatial_dims, lipschitz
        grid = (32 if spatial_dims == 2 else 24) if grid is None else int(grid)
        self.grid = (grid,) * spatial_dims
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        gain = lipschitz ** (1.0 / layers)
        widths = [2] + [channels] * (layers - 1) + [2]
        mods: list[nn.Module] = []
        for i in range(layers):
            mods.append(
                _CertifiedConv(conv(widths[i], widths[i + 1], 3, padding=1), gain, self.grid)
            )
            if i < layers - 1:
                mods.append(_ACTS[act.lower()]())
        self.f = nn.Sequential(*mods)

    def _convs(self) -> list[_CertifiedConv]:
        return [m for m in self.f if isinstance(m, _CertifiedConv)]

    @torch.no_grad()
    def update_spectral_norm(self, n_iter: int = 1) -> None:
        """Refresh every conv's certified norm now (forward also does it when weights change).

        ``n_iter`` is ignored (kept for compatibility: the norm is exact, not iterated).
        """
        for c in self._convs():
            c.refresh()

    def certified_lipschitz(self) -> float:
        r"""Certified bound on :math:`\mathrm{Lip}(f)` of the weights used now (fresh SVDs)."""
        return math.prod(c.certified_norm() for c in self._convs())

    def lipschitz_bound(self) -> float:
        """Alias of :meth:`certified_lipschitz`."""
        return self.certified_lipschitz()

    # --------------------------------------------------------------- maths
    def _check(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or not x.is_complex():
            raise TypeError("ResidualDenoiser expects a complex tensor (B, 1, *spatial)")
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != 1:
            raise ValueError(
                f"expected (B, 1, *spatial) with {self.spatial_dims} spatial dims, got "
                f"{tuple(x.shape)}"
            )

    def residual(self, x: Tensor) -> Tensor:
        """The residual branch :math:`f(x)` (complex in, complex out)."""
        self._check(x)
        return channels_to_complex(self.f(complex_to_channels(x)))

    def forward(self, x: Tensor) -> Tensor:
        """:math:`R(x) = x + f(x)`."""
        return x + self.residual(x)

    def inverse(self, z: Tensor, max_iter: int = 50, tol: float = 1e-6) -> Tensor:
        r"""Solve :math:`x + f(x) = z` by the fixed point :math:`x_{k+1} = z - f(x_k)`.

        Starts from :math:`x_0 = z`.

        Stops after ``max_iter`` steps or when
        :math:`\|x_{k+1} - x_k\| \le \mathrm{tol}\,\|z\|` for every batch element; the error
        after :math:`k` steps is at most :math:`L^k/(1-L)\,\|x_1 - x_0\|`, :math:`L` the Lipschitz
        bound.
        """
        self._check(z)
        if max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_iter}")
        x = z
        zn = z.flatten(1).norm(dim=1).clamp_min(torch.finfo(z.real.dtype).tiny)
        for _ in range(max_iter):
            x_new = z - self.residual(x)
            step = (x_new - x).flatten(1).norm(dim=1)
            x = x_new
            if bool((step <= tol * zn).all()):
                break
        return x
