"""Additive and affine coupling: exactly invertible residual blocks."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from invseg.engine import _rng
from invseg.engine._tape import Tape
from invseg.engine._unit import unit_vjp


class _Coupling(nn.Module):
    """Two half-steps ``y1 = c(x1, F(x2))``, ``y2 = c(x2, G(y1))`` with an invertible ``c``.

    Subclasses define the elementwise combination ``c`` and its inverse. The fused
    :meth:`reverse` evaluates F and G once each with grad while rebuilding the input, the
    RevNet algorithm (Gomez et al., 2017).
    """

    def __init__(self, f: nn.Module, g: nn.Module | None = None, *, split_dim: int = 1) -> None:
        super().__init__()
        if not isinstance(f, nn.Module) or (g is not None and not isinstance(g, nn.Module)):
            raise TypeError("f and g must be nn.Modules (the residual functions of the coupling).")
        self.f = f
        self.g = copy.deepcopy(f) if g is None else g
        self.split_dim = split_dim

    # --- the maths -------------------------------------------------------------------------
    def _combine(self, x: Tensor, h: Tensor) -> Tensor:
        raise NotImplementedError

    def _separate(self, y: Tensor, h: Tensor) -> Tensor:
        raise NotImplementedError

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        size = x.shape[self.split_dim]
        if size % 2:
            raise ValueError(
                f"{type(self).__name__} splits dim {self.split_dim} in two halves, but it has "
                f"odd size {size}; use an even number of channels."
            )
        x1, x2 = torch.chunk(x, 2, dim=self.split_dim)
        return x1, x2

    def forward(self, x: Tensor, *context: object) -> Tensor:
        x1, x2 = self._split(x)
        _rng.mark(x.device)
        y1 = self._combine(x1, self.f(x2, *context))
        _rng.mark(x.device)
        y2 = self._combine(x2, self.g(y1, *context))
        return torch.cat([y1, y2], dim=self.split_dim)

    #: without a graph, :meth:`forward_in_place` may overwrite its input
    forwards_in_place = True

    def forward_in_place(self, x: Tensor, *context: object) -> Tensor:
        """:meth:`forward` without a graph, computed in ``x``'s storage (returns ``x``).

        Each half is overwritten once its residual function has read it; the numbers are those
        of :meth:`forward`.
        """
        x1, x2 = self._split(x)
        _rng.mark(x.device)
        self._combine_into(x1, self.f(x2, *context))
        _rng.mark(x.device)
        self._combine_into(x2, self.g(x1, *context))
        return x

    def _combine_into(self, x: Tensor, h: Tensor) -> None:
        x.copy_(self._combine(x, h))

    def inverse(self, y: Tensor, *context: object) -> Tensor:
        y1, y2 = self._split(y)
        x2 = self._separate(y2, self.g(y1, *context))
        x1 = self._separate(y1, self.f(x2, *context))
        return torch.cat([x1, x2], dim=self.split_dim)

    # --- the engine hook ---------------------------------------------------------------------
    def reverse(self, y: Tensor, grad_y: Tensor, tape: Tape) -> tuple[Tensor, Tensor]:
        """Rebuild ``x`` from ``y`` and back-propagate ``grad_y`` in one pass.

        Each half-step ``out = c(inp, fn(cond))`` is undone by evaluating ``h = fn(cond)``
        once with grad, solving ``inp`` from ``out`` and ``h``, and differentiating the cheap
        elementwise ``c(inp, h)`` with respect to ``inp`` and (through ``h``) ``cond``.
        """
        y1, y2 = self._split(y)
        dy1, dy2 = self._split(grad_y)
        state_g, state_f = tape.pop_rng(), tape.pop_rng()
        x2, dx2, dy1_from_g = self._reverse_half(self.g, y2, dy2, y1, state_g, tape)
        dy1 = dy1 + dy1_from_g
        x1, dx1, dx2_from_f = self._reverse_half(self.f, y1, dy1, x2, state_f, tape)
        x = torch.cat([x1, x2], dim=self.split_dim)
        return x, torch.cat([dx1, dx2 + dx2_from_f], dim=self.split_dim)

    def _reverse_half(
        self,
        fn: nn.Module,
        out: Tensor,
        grad_out: Tensor,
        cond: Tensor,
        state: _rng.RNGState | None,
        tape: Tape,
    ) -> tuple[Tensor, Tensor, Tensor]:
        cond_leaf = cond.detach().requires_grad_()
        with torch.enable_grad():
            with _rng.replay(state):
                h = fn(cond_leaf, *tape.context)
            inp = self._separate(out, h.detach())
            inp_leaf = inp.detach().requires_grad_()
            out_again = self._combine(inp_leaf, h)
        grad_inp, grad_cond = tape.vjp(self, [out_again], [grad_out], [inp_leaf, cond_leaf])
        return inp.detach(), grad_inp, grad_cond


class AdditiveCoupling(_Coupling):
    r"""RevNet coupling :math:`y_1 = x_1 + F(x_2),\ y_2 = x_2 + G(y_1)`, exactly invertible.

    The inverse is :math:`x_2 = y_2 - G(y_1),\ x_1 = y_1 - F(x_2)`. Same numbers as
    ``memcnn.AdditiveCoupling`` with the same weights.

    Args:
        f: residual function on one half of the channels (shape-preserving).
        g: second residual function; a deep copy of ``f`` when omitted.
        split_dim: dimension that is halved (channels by default).

    Shape:
        ``x``: ``(B, C, *spatial)`` with even ``C``; output has the same shape.

    Raises:
        ValueError: if the split dimension has odd size.

    Example:
        >>> import torch
        >>> block = AdditiveCoupling(torch.nn.Conv3d(2, 2, 3, padding=1))
        >>> x = torch.randn(1, 4, 8, 8, 8)
        >>> torch.allclose(block.inverse(block(x)), x, atol=1e-5)
        True
    """

    def _combine(self, x: Tensor, h: Tensor) -> Tensor:
        return x + h

    def _separate(self, y: Tensor, h: Tensor) -> Tensor:
        return y - h

    def _combine_into(self, x: Tensor, h: Tensor) -> None:
        x.add_(h)

    #: the engine may let :meth:`reverse` overwrite ``y`` and ``grad_y`` (``in_place=True``)
    reverses_in_place = True

    def reverse(
        self, y: Tensor, grad_y: Tensor, tape: Tape, *, in_place: bool = False
    ) -> tuple[Tensor, Tensor]:
        """The fused RevNet pass, writing both halves of ``x`` and its gradient in place.

        Same maths as the generic coupling's :meth:`reverse`; the halves go straight into
        preallocated outputs (no concatenation copies) and the additions' identity Jacobians
        are applied directly. With ``in_place=True`` the outputs are ``y``'s and ``grad_y``'s
        own storage (each half is overwritten once nothing reads it any more), so a chain's
        backward allocates no new feature map per block.
        """
        return self._reverse(y, grad_y, tape, need_input=True, in_place=in_place)

    def reverse_gradient(
        self, y: Tensor, grad_y: Tensor, tape: Tape, *, in_place: bool = False
    ) -> Tensor:
        """:meth:`reverse` for a block whose rebuilt input nobody reads (a chain's first block).

        :math:`x_1 = y_1 - F(x_2)` is not formed, so F's output is not needed: when F is an
        ``nn.Sequential`` ending in a convolution, that convolution is differentiated from its
        input alone and never evaluated (the early stop of torch's non-reentrant checkpoint).
        Returns the gradient of the input.
        """
        return self._reverse(y, grad_y, tape, need_input=False, in_place=in_place)[1]

    def reverse_exact(self, x: Tensor, y: Tensor, grad_y: Tensor, tape: Tape) -> Tensor:
        """Engine hook for a block whose input and output are both held exactly (anchors).

        With :math:`x_2` and :math:`y_1` known, neither F nor G needs to be evaluated: when
        they end with a convolution, only their norm/activation prefixes are recomputed and the
        convolutions are differentiated from their inputs. Returns the gradient of ``x``.
        """
        _, x2 = self._split(x)
        y1, _ = self._split(y)
        dy1, dy2 = self._split(grad_y)
        grad_x = torch.empty_like(grad_y)
        dx1, dx2 = torch.chunk(grad_x, 2, dim=self.split_dim)
        state_g, state_f = tape.pop_rng(), tape.pop_rng()
        torch.add(dy1, unit_vjp(self, self.g, y1, dy2, state_g, tape), out=dx1)
        torch.add(dy2, unit_vjp(self, self.f, x2, dx1, state_f, tape), out=dx2)
        return grad_x

    def _reverse(
        self, y: Tensor, grad_y: Tensor, tape: Tape, *, need_input: bool, in_place: bool
    ) -> tuple[Tensor | None, Tensor]:
        y1, y2 = self._split(y)
        dy1, dy2 = self._split(grad_y)
        grad_x = grad_y if in_place else torch.empty_like(grad_y)
        dx1, dx2 = torch.chunk(grad_x, 2, dim=self.split_dim)
        if need_input:
            x = y if in_place else torch.empty_like(y)
            x1, x2 = torch.chunk(x, 2, dim=self.split_dim)
        else:  # only x2 (F's input) is formed
            x, x1, x2 = None, None, y2 if in_place else torch.empty_like(y2)
        state_g, state_f = tape.pop_rng(), tape.pop_rng()
        # each residual's output h is consumed (x2 = y2 - h) before its gradient is formed
        rebuild = lambda h: torch.sub(y2, h, out=x2)  # noqa: E731
        grad_cond = unit_vjp(self, self.g, y1, dy2, state_g, tape, rebuild)
        torch.add(dy1, grad_cond, out=dx1)  # dx1 = dy1 + G'(y1)^T dy2
        del grad_cond
        rebuild = (lambda h: torch.sub(y1, h, out=x1)) if need_input else None
        grad_cond = unit_vjp(self, self.f, x2, dx1, state_f, tape, rebuild)
        torch.add(dy2, grad_cond, out=dx2)
        return x, grad_x


class AffineCoupling(_Coupling):
    r"""Affine coupling :math:`y_1 = x_1 \odot s_F + t_F,\ y_2 = x_2 \odot s_G + t_G`.

    ``F(x_2)`` returns ``2·C/2`` channels: the even channels are the shift ``t`` and the odd
    channels ``h`` give the scale ``s = sigmoid(h + 2)`` (in ``(0, 1)``, so the inverse never
    divides by zero). This is memcnn's ``AffineCoupling`` with ``AffineAdapterSigmoid``.

    Args:
        f: maps ``C/2`` channels to ``C`` channels (interleaved shift and log-scale).
        g: second function; a deep copy of ``f`` when omitted.
        split_dim: dimension that is halved.

    Example:
        >>> import torch
        >>> block = AffineCoupling(torch.nn.Conv3d(2, 4, 3, padding=1))
        >>> x = torch.randn(1, 4, 8, 8, 8)
        >>> torch.allclose(block.inverse(block(x)), x, atol=1e-5)
        True
    """

    def _scale_shift(self, h: Tensor) -> tuple[Tensor, Tensor]:
        pairs = h.unflatten(self.split_dim, (-1, 2))  # channel 2c + k -> (c, k)
        shift, logit = pairs.select(self.split_dim + 1, 0), pairs.select(self.split_dim + 1, 1)
        return torch.sigmoid(logit + 2.0), shift

    def _combine(self, x: Tensor, h: Tensor) -> Tensor:
        scale, shift = self._scale_shift(h)
        return x * scale + shift

    def _separate(self, y: Tensor, h: Tensor) -> Tensor:
        scale, shift = self._scale_shift(h)
        return (y - shift) / scale
