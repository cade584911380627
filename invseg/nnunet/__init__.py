"""invseg's nets inside nnU-Net v2 (the optional extra ``invseg[nnunet]``).

* :class:`PartiallyInvResNNUNet`, :class:`FullyInvResNNUNet` — the InvRes U-Nets with nnU-Net
  v2's network signature (:mod:`invseg.nnunet.networks`), for a plans file's
  ``architecture.network_class_name``; plain torch modules, importable without nnunetv2.
* :func:`net_options` — how nnU-Net's ``arch_kwargs`` become the nets' options
  (:mod:`invseg.nnunet.arch`).
* :mod:`invseg.nnunet.plans` — the plans file of ``invseg nnunet plans``: nnU-Net's plans with
  an invseg net and the patch size that fits a memory budget.
"""

from __future__ import annotations

from invseg.nnunet.arch import net_options
from invseg.nnunet.networks import FullyInvResNNUNet, PartiallyInvResNNUNet

__all__ = ["FullyInvResNNUNet", "PartiallyInvResNNUNet", "net_options"]
