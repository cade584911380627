r"""Predict label maps for NIfTI/Analyze cases with a trained checkpoint: folder in, folder out.

For each case: :func:`invseg.data.check_case`, the inference transforms the model was trained
with (orientation RAS, resampling to the training spacing, intensity normalisation), sliding-window
inference (optionally averaged over the 8 axis flips, "TTA"), the activation, MONAI ``Invertd``
back to the input's exact geometry, then the label values of the input's layout (BraTS 2023+:
ET=3; ``labels=`` overrides). Written: ``<output>/<case_id>.nii.gz`` (uint8, affine and header
of the first modality) and, when asked for, ``<output>/probabilities/<case_id>.nii.gz``
(float32, channels last). One bad case prints one line on stderr and the others still finish;
no partial file is left. Temporary files that a killed earlier run left in the output folder
(``.CASE.<hex>.tmp.nii.gz``, only invseg's own temporary names) are removed at the start, and
the last line says how many, as it says how many earlier results were replaced.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from invseg.commands.predict_inputs import (
    output_convention,
    plan,
    problem_line,
    summary,
    writer_for,
)
from invseg.runtime.checkpoint import RunMeta
from invseg.runtime.distributed import resolve_device
from invseg.runtime.restore import load_model

__all__ = ["load_model", "predict", "predict_probabilities"]


def predict_probabilities(
    model: torch.nn.Module,
    x: torch.Tensor,
    *,
    roi_size: Sequence[int],
    sw_batch_size: int = 2,
    overlap: float = 0.5,
    activation: str = "sigmoid",
    tta: bool = False,
) -> torch.Tensor:
    r"""Sliding-window probabilities, optionally averaged over the 8 axis flips (TTA).

    With flips :math:`F_s` over the subsets :math:`s` of the spatial axes,

    .. math::
        p(x) = \frac18 \sum_s F_s\big(\sigma(f(F_s x))\big)

    (:math:`F_s` is its own inverse), so a flip-equivariant network gives the same
    probabilities with and without TTA.

    Args:
        model: the network (logits out).
        x: ``(N, in_channels, X, Y, Z)`` image.
        roi_size, sw_batch_size, overlap: sliding-window settings.
        activation: ``"sigmoid"`` (regions) or ``"softmax"`` (classes, over dim 1).
        tta: average over the 8 flips of the 3 spatial axes.

    Shape:
        ``(N, in_channels, X, Y, Z)`` -> ``(N, out_channels, X, Y, Z)``.

    Example:
        >>> net = torch.nn.Conv3d(2, 3, 1)
        >>> x = torch.randn(1, 2, 6, 5, 4)
        >>> a = predict_probabilities(net, x, roi_size=(8, 8, 8))
        >>> b = predict_probabilities(net, x, roi_size=(8, 8, 8), tta=True)
        >>> a.shape, bool(torch.allclose(a, b, atol=1e-6))
        (torch.Size([1, 3, 6, 5, 4]), True)
    """
    from monai.inferers import sliding_window_inference

    def once(xi: torch.Tensor) -> torch.Tensor:
        logits = sliding_window_inference(
            xi,
            roi_size=list(roi_size),
            sw_batch_size=sw_batch_size,
            predictor=model,
            overlap=overlap,
        )
        logits = torch.as_tensor(logits).float()
        return torch.sigmoid(logits) if activation == "sigmoid" else torch.softmax(logits, dim=1)

    if not tta:
        return once(x)
    flips = [d for r in range(4) for d in itertools.combinations((2, 3, 4), r)]
    total = torch.zeros(())
    for dims in flips:
        p = once(torch.flip(x, dims)) if dims else once(x)
        total = total + (torch.flip(p, dims) if dims else p)
    return total / len(flips)


def _reference(path: Path) -> tuple[tuple[int, ...], np.ndarray, Any]:
    """Spatial shape, affine and (NIfTI) header of the first modality file."""
    import nibabel as nib

    img = nib.load(str(path))
    header = img.header.copy() if isinstance(img, nib.Nifti1Image) else None
    return tuple(int(s) for s in img.shape[:3]), np.asarray(img.affine), header


class _CasePredictor:
    def __init__(
        self,
        model: torch.nn.Module,
        meta: RunMeta,
        device: torch.device,
        *,
        tta: bool,
        overlap: float,
    ) -> None:
        from invseg.data import get_convention, inference_transforms

        self.model, self.meta, self.device = model, meta, device
        self.tta, self.overlap = tta, overlap
        self.convention = get_convention(meta.convention)
        self.transforms = inference_transforms(spacing=meta.spacing)

    def __call__(self, case: Any) -> np.ndarray:
        """Probabilities ``(C, X, Y, Z)`` in the input geometry."""
        from monai.data import MetaTensor
        from monai.transforms import Invertd

        from invseg.data import case_dicts

        item = dict(case_dicts([case])[0])
        item.pop("label", None)
        data = self.transforms(item)
        image = data["image"]
        x = torch.as_tensor(image)[None].float().to(self.device)
        amp = self.device.type == "cuda" and self.meta.amp
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.float16, enabled=amp):
            probs = predict_probabilities(
                self.model,
                x,
                roi_size=self.meta.roi_size,
                sw_batch_size=self.meta.sw_batch_size,
                overlap=self.overlap,
                activation=self.convention.activation,
                tta=self.tta,
            )
        pred = MetaTensor(
            probs[0].cpu(), meta=dict(image.meta), applied_operations=list(image.applied_operations)
        )
        data["pred"] = pred
        inverted = Invertd(
            keys="pred",
            transform=self.transforms,
            orig_keys="image",
            nearest_interp=False,
            to_tensor=True,
        )(data)["pred"]
        return torch.as_tensor(inverted).float().cpu().numpy().astype(np.float32)


def _predict_case(case: Any, predictor: _CasePredictor, conv: Any, out: Path, **kw: Any) -> None:
    """Predict one case and write its label map (and probabilities when asked)."""
    from invseg.data import DataError, check_case
    from invseg.data.layouts import write_nifti

    target = kw["writer"].prediction_path(out, case.case_id)
    prob_target = out / "probabilities" / f"{case.case_id}.nii.gz"
    if target in kw["input_files"] or prob_target in kw["input_files"]:
        raise DataError(f"{target}: would overwrite an input file; choose another -o.")
    check_case(case, in_channels=kw["in_channels"])
    shape, affine, header = _reference(Path(case.images[0]))
    probs = predictor(case)
    labels = np.asarray(conv.to_native(torch.from_numpy(probs))).astype(np.uint8)
    labels = labels.reshape(labels.shape[-3:])
    if labels.shape != shape:
        raise DataError(
            f"{case.images[0]}: prediction shape {labels.shape} does not "
            f"match the input shape {shape}."
        )
    kw["writer"].write_prediction(labels, out, case.case_id, affine=affine, header=header)
    if kw["save_probabilities"]:
        write_nifti(np.moveaxis(probs, 0, -1), prob_target, affine, header)


def _case_error(case: Any, run: Any) -> str | None:
    """``run()``; a failure becomes one line naming the file (interrupts pass through)."""
    try:
        run()
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as err:
        return problem_line(err, case.images[0] if case.images else case.case_id)
    return None


def predict(
    checkpoint: str | Path,
    inputs: Sequence[str | Path],
    output: str | Path,
    *,
    device: str = "auto",
    tta: bool = False,
    save_probabilities: bool = False,
    overlap: float | None = None,
    labels: str | None = None,
    skip_existing: bool = False,
    model_class: str | None = None,
) -> int:
    """Write a label map for every case found in ``inputs``.

    The label values follow the input's layout (BraTS 2020/2021: ET=4, BraTS 2023+: ET=3, MSD,
    iSeg, an nnU-Net ``dataset.json``); ``labels`` overrides it; loose files of no known layout
    get the checkpoint's convention. The choice is printed.

    Args:
        checkpoint: ``best.pt`` or ``last.pt`` written by :func:`invseg.commands.train.train`.
        inputs: case folders, dataset folders or image files (NIfTI ``.nii``/``.nii.gz``,
            Analyze ``.hdr``); several modality files of one case are grouped by the dataset
            naming.
        output: folder for ``<case_id>.nii.gz`` (created, checked writable before inference,
            cleared of a killed run's temporary files; must not be a folder holding inputs).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        tta: average the prediction over the 8 axis flips.
        save_probabilities: also write ``probabilities/<case_id>.nii.gz`` (float32, channels last).
        overlap: sliding-window overlap (default: the checkpoint's ``infer.overlap``).
        labels: label convention of the written maps (``"brats"``, ``"brats2023"``, ``"msd"``,
            ``"iseg"``); ``None``: from the input layout.
        skip_existing: leave cases whose ``<case_id>.nii.gz`` exists in ``output`` alone (else
            they are replaced, and the summary says how many).
        model_class: dotted path of a network class *you* trust, for a checkpoint whose
            ``meta.target`` is not in invseg's registry (the file itself never names code).

    Returns:
        Number of cases that failed (each reported by one line on stderr).

    Raises:
        ValueError: bad checkpoint, device, labels or output folder; inputs that match no image.
    """
    from tqdm import tqdm

    dev = resolve_device(device)
    if overlap is not None and not 0.0 <= float(overlap) < 1.0:
        raise ValueError(f"overlap={overlap} must be in [0, 1).")
    infos, cases, errors, out_dir, removed = plan(inputs, output)
    model, meta = load_model(checkpoint, device=dev, model_class=model_class)
    conv = output_convention(labels, infos, meta.convention)
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    total = len(cases) + len(errors)
    writer = writer_for(infos)
    existing = {c.case_id for c in cases if writer.prediction_path(out_dir, c.case_id).exists()}
    if skip_existing:
        cases = [c for c in cases if c.case_id not in existing]
    predictor = _CasePredictor(
        model, meta, dev, tta=tta, overlap=float(meta.overlap if overlap is None else overlap)
    )
    kw = {
        "in_channels": int(meta.kwargs.get("in_channels") or len(meta.modalities)),
        "save_probabilities": save_probabilities,
        "writer": writer,
        "input_files": {Path(f).resolve() for c in cases for f in (*c.images, c.label) if f},
    }
    done, failures, replaced = 0, len(errors), 0
    for case in tqdm(cases, desc="predict", unit="case", leave=False, disable=len(cases) < 2):
        err = _case_error(case, lambda c=case: _predict_case(c, predictor, conv, out_dir, **kw))
        if err is not None:
            failures += 1
            tqdm.write(f"error: {err}", file=sys.stderr)
        else:
            done += 1
            replaced += case.case_id in existing
    counts = {"failed": failures, "replaced": replaced, "removed": removed}
    print(summary(done, total, out_dir, skipped=len(existing) if skip_existing else 0, **counts))
    return failures
