"""MONAI transforms that simulate undersampled multi-coil k-space from an image."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.transforms import MapTransform, Randomizable, Transform
from torch import Tensor

from invseg._choices import closest
from invseg.recon.simulate import (
    birdcage_maps,
    cartesian_kt_mask,
    poisson_disc_mask,
    simulate_kspace,
)

__all__ = ["SimulateKSpace", "SimulateKSpaced"]

_MASKS = ("poisson", "cartesian", "kt")


class SimulateKSpace(Randomizable, Transform):
    r"""MONAI-style array transform: image ``(1, *spatial)`` -> ``(kspace, mask, coil_maps)``.

    Random parameters (the mask pattern, the noise) are drawn in :meth:`randomize` from the
    transform's own generator; the application is deterministic given them.

    Args:
        num_coils: number of birdcage coils.
        acceleration: undersampling factor.
        mask_type: ``"poisson"`` (2D variable-density Poisson disc over the last two dims,
            broadcast over the readout for 3D), ``"cartesian"`` (1D lines along the last dim) or
            ``"kt"`` (1D lines, different per frame; needs ``(1, T, H, W)``).
        calib: calibration size (box side or number of central lines).
        noise_std: complex noise level.
        seed: seed of the transform's generator.

    Returns (from ``__call__``):
        ``kspace`` ``(coils, *spatial)`` complex64, ``mask`` ``(1, *spatial)`` with size-1 dims
        where it broadcasts, ``coil_maps`` ``(coils, *spatial)`` complex64.

    Example:
        >>> k, m, S = SimulateKSpace(2, 2.0, mask_type="cartesian")(torch.ones(1, 8, 8))
        >>> k.shape, m.shape, S.shape
        (torch.Size([2, 8, 8]), torch.Size([1, 1, 8]), torch.Size([2, 8, 8]))
    """

    def __init__(
        self,
        num_coils: int = 4,
        acceleration: float = 4.0,
        *,
        mask_type: str = "poisson",
        calib: int = 8,
        noise_std: float = 0.0,
        seed: int = 0,
    ) -> None:
        if mask_type not in _MASKS:
            hint = closest(mask_type, _MASKS)
            raise ValueError(
                f"unknown mask_type {mask_type!r}; choose one of {_MASKS}"
                + (f" (did you mean {hint!r}?)" if hint else "")
            )
        self.num_coils, self.acceleration, self.mask_type = num_coils, acceleration, mask_type
        self.calib, self.noise_std = calib, noise_std
        self.set_random_state(seed)
        self._seed = 0

    def randomize(self, data: object = None) -> None:
        """Draw the seed of the next mask and noise."""
        self._seed = int(self.R.randint(2**31 - 1))

    def _mask(self, spatial: tuple[int, ...]) -> Tensor:
        if self.mask_type == "kt":
            if len(spatial) != 3:
                raise ValueError("mask_type='kt' needs a 2D+time image (1, T, H, W)")
            T, _, W = spatial
            return cartesian_kt_mask(T, W, self.acceleration, calib=self.calib, seed=self._seed)[
                None
            ]
        if self.mask_type == "cartesian":
            lines = cartesian_kt_mask(
                1, spatial[-1], self.acceleration, calib=self.calib, seed=self._seed
            )[0, 0]
            return lines.view((1,) * len(spatial) + (spatial[-1],))
        m = poisson_disc_mask(spatial[-2:], self.acceleration, calib=self.calib, seed=self._seed)
        return m.view((1,) * (len(spatial) - 1) + tuple(m.shape))

    def __call__(self, img: Tensor | np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
        img = torch.as_tensor(img)
        if img.dim() not in (3, 4) or img.shape[0] != 1:
            raise ValueError(
                f"expected a channel-first image (1, H, W), (1, D, H, W) or (1, T, H, W); "
                f"got {tuple(img.shape)}"
            )
        self.randomize()
        spatial = tuple(img.shape[1:])
        cine = self.mask_type == "kt"
        if len(spatial) == 2 or cine:
            S = birdcage_maps(self.num_coils, spatial[-2:], ndim=2)
            if cine:
                S = S[:, None].expand(-1, spatial[0], -1, -1)
            fft_ndim = 2
        else:
            S = birdcage_maps(self.num_coils, spatial, ndim=3)
            fft_ndim = 3
        mask = self._mask(spatial)
        x = img[0].to(torch.complex64)
        k = simulate_kspace(
            x, S, mask, fft_ndim=fft_ndim, noise_std=self.noise_std, seed=self._seed + 1
        )
        return k, mask, S.contiguous()


class SimulateKSpaced(Randomizable, MapTransform):
    """Dictionary version of :class:`SimulateKSpace` for a MONAI ``Compose``.

    Reads ``data[key]`` (the image) and adds ``kspace_key``, ``mask_key``, ``coil_maps_key``;
    the image stays as the reconstruction target.

    Example:
        >>> t = SimulateKSpaced("image", num_coils=2, acceleration=2.0)
        >>> d = t({"image": torch.ones(1, 8, 8)})
        >>> sorted(d)
        ['coil_maps', 'image', 'kspace', 'mask']
    """

    def __init__(
        self,
        key: Hashable = "image",
        *,
        kspace_key: Hashable = "kspace",
        mask_key: Hashable = "mask",
        coil_maps_key: Hashable = "coil_maps",
        **kwargs,
    ) -> None:
        MapTransform.__init__(self, key)
        self.key, self.kspace_key, self.mask_key = key, kspace_key, mask_key
        self.coil_maps_key = coil_maps_key
        self.transform = SimulateKSpace(**kwargs)

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> SimulateKSpaced:
        """Reset the generator of the wrapped array transform."""
        super().set_random_state(seed, state)
        self.transform.set_random_state(seed, state)
        return self

    def randomize(self, data: object = None) -> None:
        """Randomness lives in the wrapped array transform."""

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        if self.key not in d:
            raise KeyError(f"key {self.key!r} not in data (keys: {list(d)})")
        k, m, S = self.transform(d[self.key])
        d[self.kspace_key], d[self.mask_key], d[self.coil_maps_key] = k, m, S
        return d
