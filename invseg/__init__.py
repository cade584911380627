"""invseg: memory-efficient invertible 3D networks for medical imaging.

One coupling engine (:mod:`invseg.engine`) trains invertible blocks without storing their
activations; on it stand the Partially-InvRes and Fully-InvRes 3D U-Nets (:mod:`invseg.nets`)
and MoDL reconstruction with memory-efficient learning (:mod:`invseg.recon`).
"""

from __future__ import annotations

__version__ = "0.1.0"
