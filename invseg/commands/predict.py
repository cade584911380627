r"""Predict label maps for NIfTI/Analyze cases with a trained checkpoint: folder in, folder out.

For each case: :func:`invseg.data.check_case`, the inference transforms the model was trained
with (orientation RAS, resampling to the training spacing, intensity normalisation), sliding-window
inference (optionally averaged over the 8 axis flips, "TTA"), the activation, MONAI ``Invertd``
back to the input's exact geometry, then the label values of the input's layout (BraTS 2023+:
ET=3; ``labels=`` overrides). Written: ``<output>/<case_id>.nii.gz`` (uint8, affine and header
of the first modality) and, when asked for, ``<output>/probabilities/<case_id>.nii.gz``
(float32, channels last). One bad case prints one line on stderr and the others still finish;
no partial file is left.
"""

from __future__ import annotations

import itertools
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from invseg.runtime.checkpoint import load_checkpoint
from invseg.runtime.config import instantiate_model
from invseg.runtime.distributed import resolve_device

__all__ = ["load_model", "predict", "predict_probabilities"]


def load_model(
    checkpoint: str | Path, *, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the network stored in a checkpoint (``weights_only=True`` load).

    Returns:
        ``(model in eval mode on device, meta)`` where ``meta`` holds the convention, modalities,
        spacing, roi size and sliding-window settings used in training.

    Raises:
        ValueError: not an invseg checkpoint.
    """
    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    meta = ckpt.get("meta")
    if not isinstance(meta, dict) or "target" not in meta:
        raise ValueError(
            f"{checkpoint}: checkpoint has no model description ('meta'); was it "
            "written by `invseg train`?"
        )
    model = instantiate_model({"_target_": meta["target"], **meta["kwargs"]})
    model.load_state_dict(ckpt["model"])
    dev = torch.device(device) if isinstance(device, str) else device
    return model.to(dev).eval(), meta


def predict_probabilities(
    model: torch.nn.Module,
    x: torch.Tensor,
    *,
    roi_size: Sequence[int],
    sw_batch_size: int = 1,
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
        amp = self.device.type == "cuda" and self.meta.get("amp", False)
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.float16, enabled=amp):
            probs = predict_probabilities(
                self.model,
                x,
                roi_size=self.meta["roi_size"],
                sw_batch_size=self.meta["sw_batch_size"],
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


def _input_dirs(inputs: Sequence[Path], cases: Sequence[Any]) -> set[Path]:
    dirs = {Path(p).resolve() for p in inputs if Path(p).is_dir()}
    for case in cases:
        for f in case.images:
            dirs.add(Path(f).resolve().parent)
    return dirs


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _gather(in_paths: Sequence[Path]) -> tuple[list[Any], list[Any], list[str]]:
    """``(infos, cases, errors)``: an unusable case (missing modality, ...) is one error line."""
    from invseg.data import DataError, cases_from_paths

    try:
        info, cases = cases_from_paths(in_paths)
        return [info], cases, []
    except DataError:
        pass
    infos, cases, errors = [], [], []
    for path in in_paths:
        parts = [path]
        if path.is_dir() and not (path / "dataset.json").exists():
            try:
                cases_from_paths([path])
            except DataError:  # a dataset folder with a broken case: take its cases one by one
                parts = sorted(p for p in path.iterdir() if p.is_dir()) or [path]
        for part in parts:
            try:
                info, found = cases_from_paths([part])
            except DataError as err:
                errors.append(_one_line(err))
                continue
            infos.append(info)
            cases.extend(found)
    return infos, cases, errors


def _output_convention(labels: str | None, infos: Sequence[Any], model_conv: Any) -> Any:
    """The label convention of the written maps: ``labels``, else the input's, else the model's.

    Prints the choice. Raises ValueError when ``labels`` does not fit the model's outputs.
    """
    from invseg.data import get_convention

    def fits(conv: Any) -> bool:
        return conv.kind == model_conv.kind and conv.names == model_conv.names

    found = {(i.layout, i.convention.name): i.convention for i in infos if i is not None}
    if labels is not None:
        conv, source = get_convention(labels), "--labels"
        if not fits(conv):
            raise ValueError(
                f"--labels {labels}: the model predicts {model_conv.kind} "
                f"{list(model_conv.names)}, which {conv.name} labels cannot hold; choose a "
                f"convention with the same outputs (the model's own: {model_conv.name})."
            )
    elif len(found) == 1 and fits(next(iter(found.values()))):
        (layout, _), conv = next(iter(found.items()))
        source = f"the input layout {layout}"
    else:
        conv, source = model_conv, "the checkpoint (input layout unknown or mixed)"
        if len(found) == 1:
            source = f"the checkpoint ({next(iter(found))[1]} labels do not fit this model)"
    print(f"predict: labels {conv.describe()} from {source}; override with --labels")
    return conv


def _check_output(out_dir: Path) -> None:
    """Create ``out_dir`` and write a test file in it: an unusable folder fails before inference."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ValueError(
            f"{out_dir}: output folder is not writable ({reason}); choose another folder with -o."
        ) from None


def _writer(infos: Sequence[Any]) -> Any:
    """The input's :class:`~invseg.data.Layout` (names and writes predictions), or a generic one."""
    from invseg.data.layouts import Layout, get_layout

    names = {i.layout if i is not None else None for i in infos}
    return get_layout(names.pop()) if len(names) == 1 and None not in names else Layout("", "")


def _predict_case(case: Any, predictor: _CasePredictor, conv: Any, out: Path, **kw: Any) -> None:
    """Predict one case and write its label map (and probabilities when asked)."""
    from invseg.data import DataError, check_case
    from invseg.data.layouts import write_nifti

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
        path = out / "probabilities" / f"{case.case_id}.nii.gz"
        write_nifti(np.moveaxis(probs, 0, -1), path, affine, header)


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
        output: folder for ``<case_id>.nii.gz`` (created; must not be a folder holding inputs;
            checked writable before any inference).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        tta: average the prediction over the 8 axis flips.
        save_probabilities: also write ``probabilities/<case_id>.nii.gz`` (float32, channels last).
        overlap: sliding-window overlap (default: the checkpoint's ``infer.overlap``).
        labels: label convention of the written maps (``"brats"``, ``"brats2023"``, ``"msd"``,
            ``"iseg"``); ``None``: from the input layout.
        skip_existing: leave cases whose ``<case_id>.nii.gz`` exists in ``output`` alone (else
            they are replaced, and the summary says how many).

    Returns:
        Number of cases that failed (each reported by one line on stderr).

    Raises:
        ValueError: bad checkpoint, device, labels or output folder; inputs that match no image.
    """
    from tqdm import tqdm

    from invseg.data import DataError, get_convention

    dev = resolve_device(device)
    if overlap is not None and not 0.0 <= float(overlap) < 1.0:
        raise ValueError(f"overlap={overlap} must be in [0, 1).")
    in_paths = [Path(p) for p in inputs]
    if not in_paths:
        raise ValueError("no inputs given: pass case folders, a dataset folder or image files.")
    infos, cases, errors = _gather(in_paths)
    if not cases and not errors:
        raise ValueError(f"no cases found in {', '.join(map(str, in_paths))}.")
    out_dir = Path(output).expanduser().resolve()
    if out_dir in _input_dirs(in_paths, cases):
        raise ValueError(
            f"output folder '{output}' holds input images; choose another folder "
            "with -o so no input can be overwritten."
        )
    _check_output(out_dir)
    model, meta = load_model(checkpoint, device=dev)
    conv = _output_convention(labels, infos, get_convention(meta["convention"]))
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    total = len(cases) + len(errors)
    writer = _writer(infos)
    existing = {c.case_id for c in cases if writer.prediction_path(out_dir, c.case_id).exists()}
    if skip_existing:
        cases = [c for c in cases if c.case_id not in existing]
    input_files = {Path(f).resolve() for c in cases for f in (*c.images, c.label) if f}
    predictor = _CasePredictor(
        model, meta, dev, tta=tta, overlap=float(meta["overlap"] if overlap is None else overlap)
    )
    kw = {
        "in_channels": int(meta["kwargs"].get("in_channels") or len(meta["modalities"])),
        "save_probabilities": save_probabilities,
        "writer": writer,
    }
    done, failures, replaced = 0, len(errors), 0
    for case in tqdm(cases, desc="predict", unit="case", leave=False, disable=len(cases) < 2):
        target = writer.prediction_path(out_dir, case.case_id)
        prob_target = out_dir / "probabilities" / f"{case.case_id}.nii.gz"
        try:
            if target in input_files or prob_target in input_files:
                raise DataError(f"{target}: would overwrite an input file; choose another -o.")
            _predict_case(case, predictor, conv, out_dir, **kw)
            done += 1
            replaced += case.case_id in existing
        except (KeyboardInterrupt, SystemExit):
            raise
        except DataError as err:
            failures += 1
            tqdm.write(f"error: {_one_line(err)}", file=sys.stderr)
        except Exception as err:
            failures += 1
            first = case.images[0] if case.images else case.case_id
            tqdm.write(f"error: {first}: {type(err).__name__}: {_one_line(err)}", file=sys.stderr)
    notes = [f"{failures} failed"] if failures else []
    if replaced:
        notes.append(f"replaced {replaced} earlier result{'s' * (replaced != 1)}")
    if skip_existing and existing:
        notes.append(f"skipped {len(existing)} with an existing result")
    print(
        f"predict: wrote {done} of {total} cases to {out_dir}"
        + (f" ({'; '.join(notes)})" if notes else "")
    )
    return failures
