r"""fastMRI-style multi-coil HDF5 k-space: reader, writer and coil-map estimation.

A file holds ``kspace`` ``(slices, coils, H, W)`` complex and optionally ``mask`` (``(W,)`` as
fastMRI's test set, or broadcastable to ``(H, W)``). Without ``mask`` the sampling pattern is
taken from the non-zero k-space samples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from invseg.files import atomic_path
from invseg.recon.fft import ifftc

__all__ = ["estimate_coil_maps", "read_fastmri_h5", "write_fastmri_h5"]


def _calib_lines(mask_1d: np.ndarray) -> int:
    """Width of the contiguous fully sampled block around the centre of a 1D mask."""
    n = len(mask_1d)
    c = n // 2
    if not mask_1d[c]:
        return 0
    lo, hi = c, c
    while lo - 1 >= 0 and mask_1d[lo - 1]:
        lo -= 1
    while hi + 1 < n and mask_1d[hi + 1]:
        hi += 1
    return hi - lo + 1


def estimate_coil_maps(
    kspace: Tensor, *, calib: int | None = None, mask: Tensor | None = None, eps: float = 1e-6
) -> Tensor:
    r"""Simple ACS coil-map estimate: low-resolution coil images normalised by their RSS.

    .. math::

        c_j = \mathcal{F}^{-1}(W\,y_j), \qquad S_j = c_j / \sqrt{\sum_k |c_k|^2 + \epsilon},

    with :math:`W` keeping the ``calib`` central phase-encode lines (last dim) and a matching
    central band of readout (a 2D box), so :math:`\sum_j |S_j|^2 \approx 1` inside the object.
    This is no ESPIRiT (sigpy is not a dependency) but is adequate for SENSE on smooth maps.

    Args:
        kspace: ``(..., coils, H, W)`` complex.
        calib: width of the calibration region; detected from ``mask`` (the fully sampled
            centre) when omitted, else 24 lines.
        mask: sampling mask broadcastable to ``(H, W)`` (or ``(W,)``).
        eps: stabiliser of the normalisation.

    Returns:
        complex maps with the shape of ``kspace``.

    Example:
        >>> k = torch.randn(2, 8, 8, dtype=torch.complex64)
        >>> S = estimate_coil_maps(k, calib=4)
        >>> bool(((S.abs() ** 2).sum(0) <= 1 + 1e-5).all())
        True
    """
    if not kspace.is_complex():
        raise TypeError(f"kspace must be complex, got {kspace.dtype}")
    H, W = kspace.shape[-2:]
    if calib is None:
        if mask is not None:
            m1 = torch.as_tensor(mask).reshape(-1, mask.shape[-1]).amax(0).cpu().numpy() > 0
            calib = _calib_lines(m1) or 24
        else:
            calib = 24
    calib = max(1, min(calib, W))
    win = torch.zeros(H, W, dtype=kspace.real.dtype, device=kspace.device)
    w0, h_c = W // 2 - calib // 2, min(calib, H)
    h0 = H // 2 - h_c // 2
    win[h0 : h0 + h_c, w0 : w0 + calib] = 1
    coil_imgs = ifftc(kspace * win, 2)  # (..., coils, H, W)
    rss = (coil_imgs.abs().square().sum(-3, keepdim=True) + eps).sqrt()
    return coil_imgs / rss


def write_fastmri_h5(path: Path, kspace: np.ndarray | Tensor, *, mask: object = None) -> Path:
    """Write a fastMRI-style multi-coil file (``kspace`` complex64 and optional ``mask``).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.h5"
        >>> _ = write_fastmri_h5(p, np.ones((1, 2, 4, 4), np.complex64))
        >>> read_fastmri_h5(p)["kspace"].shape
        torch.Size([1, 2, 4, 4])
    """
    import h5py

    path = Path(path)
    k = np.asarray(kspace.detach().cpu() if isinstance(kspace, Tensor) else kspace)
    if k.ndim != 4 or not np.iscomplexobj(k):
        raise ValueError(f"kspace must be complex (slices, coils, H, W), got {k.dtype} {k.shape}")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("kspace", data=k.astype(np.complex64))
        if mask is not None:
            m = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
            f.create_dataset("mask", data=m)
        f.attrs["acquisition"] = "simulated"
    return path


def read_fastmri_h5(path: Path, *, calib: int | None = None) -> dict[str, Tensor]:
    """Read a fastMRI-style multi-coil HDF5 file and estimate coil maps.

    Args:
        path: the ``.h5`` file.
        calib: calibration width for :func:`estimate_coil_maps` (detected when omitted).

    Returns:
        ``{"kspace": (slices, coils, H, W) complex64, "mask": (1, 1, H or 1, W) float32,
        "coil_maps": (slices, coils, H, W) complex64}``; the mask broadcasts over
        ``(slices, coils, H, W)``.

    Raises:
        ValueError: missing ``kspace``, wrong rank, non-complex data or a mask that does not fit.
    """
    import h5py

    path = Path(path)
    with h5py.File(path, "r") as f:
        if "kspace" not in f:
            raise ValueError(f"{path}: no 'kspace' dataset (found {list(f.keys())})")
        k = np.asarray(f["kspace"])
        m = np.asarray(f["mask"]) if "mask" in f else None
    if k.ndim == 3:
        k = k[None]
    if k.ndim != 4:
        raise ValueError(f"{path}: kspace must be (slices, coils, H, W), got shape {k.shape}")
    if not np.iscomplexobj(k):
        raise ValueError(f"{path}: kspace must be complex, got {k.dtype}")
    kspace = torch.from_numpy(k.astype(np.complex64))
    H, W = kspace.shape[-2:]
    if m is None:
        mask = (kspace.abs() > 0).flatten(0, 1).any(0).float()
        if bool((mask == mask[:1]).all()):  # identical rows: a 1D Cartesian pattern
            mask = mask[:1]
    else:
        mask = torch.from_numpy(np.asarray(m, dtype=np.float32))
        if mask.dim() == 1:
            mask = mask[None]
        if mask.dim() != 2 or mask.shape[-1] != W or mask.shape[0] not in (1, H):
            raise ValueError(
                f"{path}: mask of shape {tuple(m.shape)} does not fit k-space (H, W) = ({H}, {W});"
                " give (W,), (1, W) or (H, W)"
            )
    mask = mask[None, None]  # (1, 1, H or 1, W)
    maps = estimate_coil_maps(kspace, calib=calib, mask=mask[0, 0])
    return {"kspace": kspace * mask, "mask": mask, "coil_maps": maps}
