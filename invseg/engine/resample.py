"""Invertible 3D resampling: squeeze (3D pixel unshuffle) and learnable orthogonal mixing.

Every resampling takes a ``stride``: ``2`` (fold a 2×2×2 block into 8 channels) or a per-axis
``(D, H, W)`` tuple of 1s and 2s such as nnU-Net's ``(1, 2, 2)`` for thick slices, which folds
only the strided axes (channel factor ``prod(stride)``: 4 here; :mod:`invseg.engine.stride`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from invseg._choices import check_option
from invseg.engine._tape import Tape
from invseg.engine.sequential import Inverted, InvertibleSequential
from invseg.engine.stride import channel_factor, check_stride

INITS = ("identity", "haar")


def squeeze3d(x: Tensor, stride: int | Sequence[int] = 2) -> Tensor:
    r"""3D pixel unshuffle by ``stride``: ``(B, C, D, H, W) -> (B, fC, D/s_d, H/s_h, W/s_w)``.

    ``f = s_d s_h s_w`` is the channel factor (8 for ``stride=2``).

    Output channel ``f c + (i s_h + j) s_w + k`` holds voxel
    ``(s_d d + i, s_h h + j, s_w w + k)`` of input channel ``c``; for ``stride=2`` that is
    ``8c + 4i + 2j + k`` (the order of ``monai.networks.utils.pixelunshuffle`` and of
    ``F.pixel_unshuffle`` in 2D; note ``F.pixel_unshuffle`` itself only acts on the last two
    dims of a 5-D tensor).

    Args:
        x: a ``(B, C, D, H, W)`` tensor.
        stride: ``2`` or a per-axis tuple of 1s and 2s (:func:`~invseg.engine.stride.check_stride`).

    Raises:
        ValueError: for a bad ``stride`` or a spatial size not divisible by its stride.

    Example:
        >>> x = torch.arange(8.0).reshape(1, 1, 2, 2, 2)
        >>> squeeze3d(x).flatten().tolist()
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
        >>> squeeze3d(x, (1, 2, 2)).shape
        torch.Size([1, 4, 2, 1, 1])
    """
    sd, sh, sw = check_stride(stride)
    if x.ndim != 5:
        raise ValueError(f"squeeze3d expects a (B, C, D, H, W) tensor, got shape {tuple(x.shape)}.")
    b, c, d, h, w = x.shape
    if d % sd or h % sh or w % sw:
        raise ValueError(
            f"squeeze3d needs spatial sizes divisible by stride={(sd, sh, sw)}, got {(d, h, w)}; "
            "pad the input to a multiple of the stride per down-sampling level."
        )
    x = x.reshape(b, c, d // sd, sd, h // sh, sh, w // sw, sw)
    return x.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(b, c * sd * sh * sw, d // sd, h // sh, w // sw)


def unsqueeze3d(x: Tensor, stride: int | Sequence[int] = 2) -> Tensor:
    """Inverse of :func:`squeeze3d`: ``(B, fC, D, H, W) -> (B, C, s_d D, s_h H, s_w W)``.

    Raises:
        ValueError: for a bad ``stride`` or channels not divisible by ``f = prod(stride)``.

    Example:
        >>> x = torch.randn(2, 3, 4, 6, 8)
        >>> torch.equal(unsqueeze3d(squeeze3d(x)), x)
        True
    """
    sd, sh, sw = check_stride(stride)
    f = sd * sh * sw
    if x.ndim != 5 or x.shape[1] % f:
        raise ValueError(
            f"unsqueeze3d expects (B, {f}C, D, H, W) with channels divisible by {f} for "
            f"stride={(sd, sh, sw)}, got {tuple(x.shape)}."
        )
    b, cf, d, h, w = x.shape
    x = x.reshape(b, cf // f, sd, sh, sw, d, h, w)
    return x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, cf // f, d * sd, h * sh, w * sw)


class Squeeze3d(nn.Module):
    """Invertible block for :func:`squeeze3d` (inverse: :func:`unsqueeze3d`).

    Args:
        stride: ``2`` or a per-axis tuple of 1s and 2s (:func:`~invseg.engine.stride.check_stride`).

    Example:
        >>> block = Squeeze3d()
        >>> x = torch.randn(1, 2, 4, 4, 4)
        >>> block(x).shape, torch.equal(block.inverse(block(x)), x)
        (torch.Size([1, 16, 2, 2, 2]), True)
        >>> Squeeze3d((1, 2, 2))(x).shape
        torch.Size([1, 8, 4, 2, 2])
    """

    def __init__(self, stride: int | Sequence[int] = 2) -> None:
        super().__init__()
        self.stride = check_stride(stride)

    def extra_repr(self) -> str:
        return f"stride={self.stride}"

    def forward(self, x: Tensor, *context: object) -> Tensor:
        return squeeze3d(x, self.stride)

    def inverse(self, y: Tensor, *context: object) -> Tensor:
        return unsqueeze3d(y, self.stride)

    def reverse(self, y: Tensor, grad_y: Tensor, tape: Tape) -> tuple[Tensor, Tensor]:
        """Engine hook: a permutation, so input and gradient are both unsqueezed."""
        return unsqueeze3d(y, self.stride), unsqueeze3d(grad_y, self.stride)

    def reverse_inverse(self, x: Tensor, grad_x: Tensor, tape: Tape) -> tuple[Tensor, Tensor]:
        """:meth:`reverse` of :meth:`inverse`: both are squeezed back."""
        return squeeze3d(x, self.stride), squeeze3d(grad_x, self.stride)


def haar_matrix3d(dtype: torch.dtype | None = None, *, stride: int | Sequence[int] = 2) -> Tensor:
    """The orthonormal 3D Haar transform in :func:`squeeze3d`'s channel order.

    ``f × f`` with ``f = prod(stride)``: the Kronecker product of the 2-tap Haar filter over the
    strided axes (8×8 for ``stride=2``). Row 0 is the low-pass (average) filter; the other rows
    are the ``f - 1`` detail filters.
    """
    h = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=dtype) / torch.tensor(2.0, dtype=dtype).sqrt()
    return reduce(torch.kron, [h for s in check_stride(stride) if s == 2])


class OrthogonalMix(nn.Module):
    r"""Learnable orthogonal channel mixing, a 1×1×1 convolution with weight :math:`W`.

    :math:`W = \mathrm{Cayley}(A)\,W_0` with :math:`A = P - P^\top` skew-symmetric and
    :math:`\mathrm{Cayley}(A) = (I + A)^{-1}(I - A)`, so :math:`W` is orthogonal for every
    :math:`P` and the inverse is the transpose. :math:`P` starts at zero, so
    :math:`W = W_0` at initialisation: the identity, or (``init="haar"``) a Haar transform
    (:func:`haar_matrix3d`) on each group of ``prod(stride)`` channels, which after
    :class:`Squeeze3d` with the same ``stride`` is a wavelet down-sampling (the iUNets
    initialisation).

    Args:
        channels: number of channels (a multiple of ``prod(stride)`` for ``init="haar"``).
        init: ``"identity"`` or ``"haar"``.
        stride: the squeeze stride before the mix; sets the Haar groups (8 channels for ``2``).

    Shape:
        ``(B, channels, *spatial)`` in and out.

    Example:
        >>> mix = OrthogonalMix(8, init="haar")
        >>> x = torch.randn(1, 8, 2, 2, 2, dtype=torch.float64)
        >>> torch.allclose(mix.inverse(mix.double()(x)), x)
        True
    """

    def __init__(
        self, channels: int, *, init: str = "identity", stride: int | Sequence[int] = 2
    ) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be positive, got {channels}.")
        self.init = check_option("init", init, INITS)
        self.stride = check_stride(stride)
        f = channel_factor(self.stride)
        if init == "haar" and channels % f:
            raise ValueError(
                f"init='haar' needs channels divisible by {f} (the channel factor of "
                f"stride={self.stride}), got {channels}."
            )
        self.skew = nn.Parameter(torch.zeros(channels, channels))
        self._cached: tuple[tuple, Tensor, Tensor] | None = None  # (key, W, Cayley(A))
        self._w0: dict[tuple, Tensor] = {}  # W0 per (dtype, device), built once

    def weight(self) -> Tensor:
        """The current orthogonal matrix ``W`` (channels × channels).

        Without grad the matrix is cached until ``skew`` changes (its version counter), so a
        forward, an inverse and a backward of one training step solve the Cayley system once
        each at most instead of once per call.
        """
        if torch.is_grad_enabled() and self.skew.requires_grad:
            return self._weight()[0]
        return self._cached_weight()[0]

    def _cached_weight(self) -> tuple[Tensor, Tensor]:
        """``(W, Cayley(A))`` without grad, cached until ``skew`` changes."""
        skew = self.skew
        autocast = torch.is_autocast_enabled(skew.device.type)
        key = (
            skew._version,
            skew.data_ptr(),
            skew.dtype,
            skew.device,
            torch.get_autocast_dtype(skew.device.type) if autocast else None,
        )
        if self._cached is None or self._cached[0] != key:
            with torch.no_grad():
                self._cached = (key, *self._weight())
        return self._cached[1:]

    def _weight(self) -> tuple[Tensor, Tensor]:
        """``(W, Cayley(A))``, differentiable."""
        a = self.skew - self.skew.transpose(0, 1)
        eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
        cayley = torch.linalg.solve(eye + a, eye - a)
        w0 = self._initial(a)
        return (cayley if w0 is None else cayley @ w0), cayley

    def _initial(self, like: Tensor) -> Tensor | None:
        """``W0`` in ``like``'s dtype and device (``None`` for the identity).

        Built in the parameter's dtype so it is orthogonal to that dtype's precision.
        """
        if self.init == "identity":
            return None
        key = (like.dtype, like.device)
        if key not in self._w0:
            haar = haar_matrix3d(like.dtype, stride=self.stride).to(like.device)
            self._w0[key] = torch.block_diag(*[haar] * (like.shape[0] // haar.shape[0]))
        return self._w0[key]

    def _accumulate_weight_grad(self, grad_w: Tensor, tape: Tape) -> None:
        r"""Add :math:`\partial L / \partial P` for :math:`\bar W` = ``grad_w`` to ``tape``.

        The Cayley map's VJP in closed form instead of autograd through the solve: with
        :math:`B = I + A`, :math:`\mathrm{Cayley}(A) = 2B^{-1} - I`, so
        :math:`\bar A = -2 B^{-\top} (\bar W W_0^\top) B^{-\top}` and
        :math:`\bar P = \bar A - \bar A^\top`; :math:`B^{-1} = (\mathrm{Cayley}(A) + I) / 2`
        comes from the cached forward solve.
        """
        skew = self.skew
        if not skew.requires_grad:
            return
        cayley = self._cached_weight()[1]  # outside the autocast switch: same cache key
        with torch.no_grad(), torch.autocast(skew.device.type, enabled=False):
            eye = torch.eye(cayley.shape[0], dtype=cayley.dtype, device=cayley.device)
            two_b_inv_t = cayley.transpose(0, 1) + eye
            grad_c = grad_w.to(skew.dtype)
            w0 = self._initial(skew)
            if w0 is not None:
                grad_c = grad_c @ w0.transpose(0, 1)
            grad_a = -0.5 * (two_b_inv_t @ grad_c @ two_b_inv_t)
            tape.accumulate(skew, grad_a - grad_a.transpose(0, 1))

    def _mix(self, x: Tensor, w: Tensor) -> Tensor:
        if x.ndim != 5:
            raise ValueError(f"OrthogonalMix expects (B, C, D, H, W), got {tuple(x.shape)}.")
        return F.conv3d(x, w.to(x.dtype)[:, :, None, None, None])

    def forward(self, x: Tensor, *context: object) -> Tensor:
        return self._mix(x, self.weight())

    def inverse(self, y: Tensor, *context: object) -> Tensor:
        return self._mix(y, self.weight().transpose(0, 1))

    def reverse(self, y: Tensor, grad_y: Tensor, tape: Tape) -> tuple[Tensor, Tensor]:
        r"""Engine hook: :math:`x = W^\top y`, :math:`\bar x = W^\top \bar y` and
        :math:`\bar W = \sum_v \bar y_v x_v^\top` (the Cayley map's VJP in closed form), no
        recompute."""
        return self._mix_back(y, grad_y, tape, transposed=True)

    def reverse_inverse(self, x: Tensor, grad_x: Tensor, tape: Tape) -> tuple[Tensor, Tensor]:
        r""":meth:`reverse` of :meth:`inverse`: rebuild ``y = W x`` and back-propagate
        ``grad_x`` (:math:`\bar y = W \bar x`, :math:`\bar W = \sum_v y_v \bar x_v^\top`)."""
        return self._mix_back(x, grad_x, tape, transposed=False)

    def _mix_back(
        self, t: Tensor, grad_t: Tensor, tape: Tape, *, transposed: bool
    ) -> tuple[Tensor, Tensor]:
        """Apply ``W`` (or ``W^T``) to ``t`` and ``grad_t``; ``W``'s gradient to ``tape``."""
        with torch.no_grad():
            w = self.weight()  # the matrix forward used (cached)
            m = w.transpose(0, 1) if transposed else w
            out, grad_out = self._mix(t, m), self._mix(grad_t, m)
            grad_w = _outer_sum(grad_t, out) if transposed else _outer_sum(out, grad_t)
        self._accumulate_weight_grad(grad_w, tape)
        return out, grad_out


def _outer_sum(a: Tensor, b: Tensor) -> Tensor:
    r""":math:`\sum_{n, v} a_{n c v} b_{n d v}`: a ``(C, C)`` matrix from two ``(B, C, *)``."""
    c = a.shape[1]
    return a.movedim(1, 0).reshape(c, -1) @ b.movedim(1, 0).reshape(c, -1).transpose(0, 1)


class InvertibleDownsample3d(InvertibleSequential):
    """Learnable invertible down-sampling: :class:`Squeeze3d` then :class:`OrthogonalMix`.

    ``(B, C, D, H, W) -> (B, fC, D/s_d, H/s_h, W/s_w)`` with ``f = prod(stride)`` (``8C`` at
    half size for ``stride=2``); initialised as a Haar wavelet transform along the strided
    axes. Runs inside an outer chain like any block (its own ``memory`` only matters when it
    is used alone).

    Args:
        in_channels: channels ``C`` of the input.
        init: ``"haar"`` (default) or ``"identity"``.
        stride: ``2`` or a per-axis tuple of 1s and 2s such as ``(1, 2, 2)``
            (:func:`~invseg.engine.stride.check_stride`).

    Raises:
        ValueError: for a bad ``stride``; in forward, a spatial size not divisible by it.

    Example:
        >>> down = InvertibleDownsample3d(2)
        >>> x = torch.randn(1, 2, 4, 4, 4)
        >>> down(x).shape, torch.allclose(down.inverse(down(x)), x, atol=1e-5)
        (torch.Size([1, 16, 2, 2, 2]), True)
        >>> InvertibleDownsample3d(2, stride=(1, 2, 2))(x).shape
        torch.Size([1, 8, 4, 2, 2])
    """

    def __init__(
        self,
        in_channels: int,
        *,
        init: str = "haar",
        memory: str = "invert",
        stride: int | Sequence[int] = 2,
    ) -> None:
        stride = check_stride(stride)
        mix = OrthogonalMix(channel_factor(stride) * in_channels, init=init, stride=stride)
        super().__init__(Squeeze3d(stride), mix, memory=memory)
        self.in_channels = in_channels
        self.stride = stride

    def reverse_inverse(self, x: Tensor, grad_x: Tensor, tape: Tape) -> tuple[Tensor, Tensor]:
        """Engine hook of the up-sampling: undo :meth:`inverse` (mix back, squeeze) and
        back-propagate through it in one pass."""
        for block in self.blocks:  # inverse ran the blocks last to first
            x, grad_x = block.reverse_inverse(x, grad_x, tape)
        return x, grad_x


class InvertibleUpsample3d(Inverted):
    """Learnable invertible up-sampling, the structural inverse of :class:`InvertibleDownsample3d`.

    ``(B, C, D, H, W) -> (B, C/f, s_d D, s_h H, s_w W)`` with ``f = prod(stride)``:
    orthogonal mixing, then unsqueeze.

    Args:
        in_channels: channels ``C`` of the input (divisible by ``f``: 8 for ``stride=2``).
        init: ``"haar"`` (default) or ``"identity"``.
        stride: ``2`` or a per-axis tuple of 1s and 2s, as for the matching down-sampling.

    Raises:
        ValueError: for a bad ``stride`` or ``in_channels`` not divisible by ``f``.

    Example:
        >>> up = InvertibleUpsample3d(16)
        >>> up(torch.randn(1, 16, 2, 2, 2)).shape
        torch.Size([1, 2, 4, 4, 4])
        >>> InvertibleUpsample3d(16, stride=(1, 2, 2))(torch.randn(1, 16, 2, 2, 2)).shape
        torch.Size([1, 4, 2, 4, 4])
    """

    def __init__(
        self, in_channels: int, *, init: str = "haar", stride: int | Sequence[int] = 2
    ) -> None:
        stride = check_stride(stride)
        f = channel_factor(stride)
        if in_channels % f:
            raise ValueError(
                f"InvertibleUpsample3d needs in_channels divisible by {f} (the channel factor "
                f"of stride={stride}), got {in_channels}."
            )
        super().__init__(InvertibleDownsample3d(in_channels // f, init=init, stride=stride))
        self.in_channels = in_channels
        self.stride = stride

    def reverse(self, y: Tensor, grad_y: Tensor, tape: Tape) -> tuple[Tensor, Tensor]:
        """Engine hook: the down-sampling's :meth:`~InvertibleDownsample3d.reverse_inverse`."""
        return self.block.reverse_inverse(y, grad_y, tape)
