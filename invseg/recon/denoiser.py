r"""Lipschitz-bounded residual CNN denoiser :math:`R(x) = x + f(x)`, invertible by fixed point."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrizations

from invseg._choices import closest

__all__ = ["ResidualDenoiser", "channels_to_complex", "complex_to_channels"]

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


class _ScaledConv(nn.Module):
    """Spectrally normalised conv times ``gain / sqrt(K)`` (operator norm <= gain)."""

    def __init__(self, conv: nn.Module, gain: float) -> None:
        super().__init__()
        self.conv = parametrizations.spectral_norm(conv, n_power_iterations=1)
        k = math.prod(conv.kernel_size)
        self.scale = gain / math.sqrt(k)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) * self.scale

    def operator_norm_bound(self) -> float:
        """Exact bound ``scale * ||W_mat||_2 * sqrt(K)`` from an SVD of the normalised weight."""
        w = self.conv.weight.detach()
        smax = torch.linalg.matrix_norm(w.flatten(1).double(), ord=2).item()
        return self.scale * smax * math.sqrt(math.prod(self.conv.kernel_size))


class ResidualDenoiser(nn.Module):
    r"""Residual CNN :math:`R(x) = x + f(x)` on complex images with :math:`\mathrm{Lip}(f) < 1`.

    ``f`` is ``layers`` 3x3 (x3) convolutions ``2 -> channels -> ... -> 2`` on the two-channel real
    view ``[Re x, Im x]`` with 1-Lipschitz activations between them (no normalisation layers).
    Every convolution weight :math:`W` is divided by its spectral norm (power iteration,
    :func:`torch.nn.utils.parametrizations.spectral_norm`) and scaled by
    :math:`\mathrm{lipschitz}^{1/\mathrm{layers}}/\sqrt{K}` with :math:`K` the kernel size: a
    convolution is :math:`W_{mat}\,\mathrm{im2col}(x)` and :math:`\|\mathrm{im2col}(x)\| \le
    \sqrt{K}\|x\|` with zero padding, so each layer is
    :math:`\mathrm{lipschitz}^{1/\mathrm{layers}}`-Lipschitz and
    :math:`\mathrm{Lip}(f) \le \mathrm{lipschitz} < 1`. Hence :math:`R` is invertible and
    :math:`x = z - f(x)` converges to :math:`R^{-1}(z)` at rate ``lipschitz`` (Banach).

    The power iteration updates its vectors only when :meth:`update_spectral_norm` is called
    (MoDL calls it once per training forward); ``forward`` itself is pure, so a block and its
    recomputation in backward use identical weights.

    Args:
        spatial_dims: 2 for 2D images, 3 for 3D volumes and 2D+time (convs over ``(t, y, x)``).
        channels: hidden channels.
        layers: number of convolutions (``>= 2``).
        lipschitz: bound on :math:`\mathrm{Lip}(f)`, in ``(0, 1)``.
        act: ``"relu"``, ``"leakyrelu"``, ``"elu"`` or ``"tanh"`` (all 1-Lipschitz).

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
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        gain = lipschitz ** (1.0 / layers)
        widths = [2] + [channels] * (layers - 1) + [2]
        mods: list[nn.Module] = []
        for i in range(layers):
            mods.append(_ScaledConv(conv(widths[i], widths[i + 1], 3, padding=1), gain))
            if i < layers - 1:
                mods.append(_ACTS[act.lower()]())
        self.f = nn.Sequential(*mods)
        self._freeze_power_iteration()

    # --------------------------------------------------------------- spectral norm
    def _sn_modules(self) -> list[nn.Module]:
        return [m.conv.parametrizations.weight[0] for m in self.f if isinstance(m, _ScaledConv)]

    def _freeze_power_iteration(self) -> None:
        for m in self._sn_modules():
            m.eval()

    def train(self, mode: bool = True) -> ResidualDenoiser:
        super().train(mode)
        self._freeze_power_iteration()  # power iteration runs only in update_spectral_norm
        return self

    @torch.no_grad()
    def update_spectral_norm(self, n_iter: int = 1) -> None:
        """Run ``n_iter`` power iterations per conv, refreshing the spectral-norm estimates."""
        for layer in self.f:
            if isinstance(layer, _ScaledConv):
                sn = layer.conv.parametrizations.weight[0]
                sn.train()
                for _ in range(n_iter):
                    _ = layer.conv.weight
                sn.eval()

    def lipschitz_bound(self) -> float:
        r"""Certified bound on :math:`\mathrm{Lip}(f)` from exact SVDs (product over layers)."""
        return math.prod(m.operator_norm_bound() for m in self.f if isinstance(m, _ScaledConv))

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
