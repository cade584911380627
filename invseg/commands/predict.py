r"""Predict label maps for NIfTI/Analyze cases with a trained checkpoint: folder in, folder out.

For each case: :func:`invseg.data.check_case`, the inference transforms the model was trained
with (orientation RAS, resampling to the training spacing, intensity normalisation), sliding-window
inference (optionally averaged over the 8 axis flips, "TTA"), the activation (sigmoid per region or
softmax), then MONAI ``Invertd`` back to the input's exact shape, affine and orientation, and the
dataset's own label values (:meth:`~invseg.data.LabelConvention.to_native`). The label map is
written as ``<output>/<case_id>.nii.gz`` (uint8, affine and header of the first modality);
probability maps, when asked for, as ``<output>/probabilities/<case_id>.nii.gz`` (float32,
channels last).

One bad case (corrupt or truncated file, missing modality, shapes that disagree, NaN voxels, wrong
channel count) prints one line on stderr and the others still finish; no partial file is left.
"""

from __future__ import annotations

import itertools
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from invseg.runtime.checkpoint import load_model
from invseg.runtime.distributed import resolve_device

__all__ = ["load_model", "predict"]


def _nifti_write(arr: np.ndarray, affine: np.ndarray, header: Any, path: Path) -> None:
    """Write a NIfTI file through a temporary name in the same folder and :func:`os.replace`."""
    import nibabel as nib

    img = nib.Nifti1Image(arr, affine, header=header)
    img.set_data_dtype(arr.dtype)
    img.header.set_slope_inter(1.0, 0.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:-7]}.", suffix=".nii.gz")
    os.close(fd)
    try:
        nib.save(img, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        meta: dict[str, Any],
        device: torch.device,
        *,
        tta: bool,
        overlap: float,
    ) -> None:
        from invseg.data import get_convention, inference_transforms

        self.model, self.meta, self.device = model, meta, device
        self.tta, self.overlap = tta, overlap
        self.convention = get_convention(meta["convention"])
        self.transforms = inference_transforms(spacing=meta["spacing"])

    def _infer(self, x: torch.Tensor) -> torch.Tensor:
        from monai.inferers import sliding_window_inference

        amp = self.device.type == "cuda" and self.meta.get("amp", False)
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.float16, enabled=amp):
            logits = sliding_window_inference(
                x,
                roi_size=self.meta["roi_size"],
                sw_batch_size=self.meta["sw_batch_size"],
                predictor=self.model,
                overlap=self.overlap,
            )
        logits = torch.as_tensor(logits).float()
        if self.convention.activation == "sigmoid":
            return torch.sigmoid(logits)
        return torch.softmax(logits, dim=1)

    def __call__(self, case: Any) -> tuple[np.ndarray, np.ndarray]:
        """(native uint8 label map (X, Y, Z), probabilities (C, X, Y, Z)) in input geometry."""
        from monai.data import MetaTensor
        from monai.transforms import Invertd

        from invseg.data import case_dicts

        item = dict(case_dicts([case])[0])
        item.pop("label", None)
        data = self.transforms(item)
        image = data["image"]
        x = torch.as_tensor(image)[None].float().to(self.device)
        if self.tta:
            flips = [d for r in range(4) for d in itertools.combinations((2, 3, 4), r)]
            probs = torch.zeros(())
            for dims in flips:
                xf = torch.flip(x, dims) if dims else x
                p = self._infer(xf)
                probs = probs + (torch.flip(p, dims) if dims else p)
            probs = probs / len(flips)
        else:
            probs = self._infer(x)
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
        probs_native = torch.as_tensor(inverted).float()
        labels = self.convention.to_native(probs_native)
        labels = np.asarray(torch.as_tensor(labels).cpu().numpy()).astype(np.uint8)
        return labels.reshape(labels.shape[-3:]), probs_native.cpu().numpy().astype(np.float32)


def _input_dirs(inputs: Sequence[Path], cases: Sequence[Any]) -> set[Path]:
    dirs = {Path(p).resolve() for p in inputs if Path(p).is_dir()}
    for case in cases:
        for f in case.images:
            dirs.add(Path(f).resolve().parent)
    return dirs


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def predict(
    checkpoint: str | Path,
    inputs: Sequence[str | Path],
    output: str | Path,
    *,
    device: str = "auto",
    tta: bool = False,
    save_probabilities: bool = False,
    overlap: float | None = None,
) -> int:
    """Write a label map for every case found in ``inputs``.

    Args:
        checkpoint: ``best.pt`` or ``last.pt`` written by :func:`invseg.commands.train.train`.
        inputs: case folders, dataset folders or image files (NIfTI ``.nii``/``.nii.gz``,
            Analyze ``.hdr``); several modality files of one case are grouped by the dataset
            naming.
        output: folder for ``<case_id>.nii.gz`` (created; must not be a folder holding inputs).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        tta: average the prediction over the 8 axis flips.
        save_probabilities: also write ``probabilities/<case_id>.nii.gz`` (float32, channels last).
        overlap: sliding-window overlap (default: the checkpoint's ``infer.overlap``).

    Returns:
        Number of cases that failed (each reported by one line on stderr).

    Raises:
        ValueError: bad checkpoint, device or output folder; inputs that match no image.

    Example:
        >>> from invseg.commands.predict import predict  # a full run: see tests/commands
    """
    from tqdm import tqdm

    from invseg.data import DataError, cases_from_paths, check_case

    dev = resolve_device(device)
    if overlap is not None and not 0.0 <= float(overlap) < 1.0:
        raise ValueError(f"overlap={overlap} must be in [0, 1).")
    model, meta = load_model(checkpoint, device=dev)
    in_paths = [Path(p) for p in inputs]
    if not in_paths:
        raise ValueError("no inputs given: pass case folders, a dataset folder or image files.")
    failures = 0
    try:
        _, cases = cases_from_paths(in_paths)
    except DataError:
        # one unusable input (e.g. a case folder missing a modality): skip it, keep the others
        cases = []
        for path in in_paths:
            try:
                cases.extend(cases_from_paths([path])[1])
            except DataError as err:
                failures += 1
                print(f"error: {_one_line(err)}", file=sys.stderr)
    if not cases and not failures:
        raise ValueError(f"no cases found in {', '.join(map(str, in_paths))}.")
    out_dir = Path(output).expanduser().resolve()
    if out_dir in _input_dirs(in_paths, cases):
        raise ValueError(
            f"output folder '{output}' holds input images; choose another folder "
            "with -o so no input can be overwritten."
        )
    input_files = {Path(f).resolve() for c in cases for f in (*c.images, c.label) if f}
    in_channels = int(meta["kwargs"].get("in_channels") or len(meta["modalities"]))
    predictor = _CasePredictor(
        model, meta, dev, tta=tta, overlap=float(meta["overlap"] if overlap is None else overlap)
    )
    done = 0
    for case in tqdm(cases, desc="predict", unit="case", leave=False, disable=len(cases) < 2):
        target = out_dir / f"{case.case_id}.nii.gz"
        prob_target = out_dir / "probabilities" / f"{case.case_id}.nii.gz"
        try:
            if target in input_files or prob_target in input_files:
                raise DataError(f"{target}: would overwrite an input file; choose another -o.")
            check_case(case, in_channels=in_channels)
            shape, affine, header = _reference(Path(case.images[0]))
            labels, probs = predictor(case)
            if labels.shape != shape:
                raise DataError(
                    f"{case.images[0]}: prediction shape {labels.shape} does not "
                    f"match the input shape {shape}."
                )
            _nifti_write(labels, affine, header, target)
            if save_probabilities:
                _nifti_write(
                    np.moveaxis(probs, 0, -1),
                    affine,
                    header.copy() if header is not None else None,
                    prob_target,
                )
            done += 1
        except (KeyboardInterrupt, SystemExit):
            raise
        except DataError as err:
            failures += 1
            tqdm.write(f"error: {_one_line(err)}", file=sys.stderr)
        except Exception as err:
            failures += 1
            first = case.images[0] if case.images else case.case_id
            tqdm.write(f"error: {first}: {type(err).__name__}: {_one_line(err)}", file=sys.stderr)
    print(
        f"predict: wrote {done} of {len(cases)} cases to {out_dir}"
        + (f" ({failures} failed)" if failures else "")
    )
    return failures
