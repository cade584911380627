"""Writers of synthetic cases in the real on-disk layouts (BraTS, MSD, nnU-Net, iSeg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from invseg.data.io import save_image, save_json
from invseg.data.synth.iseg import ISEG_LABELS

__all__ = ["BRATS_LAYOUTS", "ISEG_LAYOUTS", "write_brats", "write_dataset_json", "write_iseg"]

BRATS_LAYOUTS = ("brats2020", "brats2021", "brats2023", "msd", "nnunet")
ISEG_LAYOUTS = ("iseg", "nnunet")


def _geometry(
    data: np.ndarray, spacing: Sequence[float], orientation: str
) -> tuple[np.ndarray, np.ndarray]:
    """RAS-ordered ``data`` -> (array, affine) in the requested axis codes; 1st 3 dims spatial."""
    import nibabel as nib

    shape = np.asarray(data.shape[:3])
    affine = np.diag([*map(float, spacing), 1.0])
    # Centre near the world origin, with an offset so the affine is not trivially symmetric.
    affine[:3, 3] = -(shape - 1) / 2 * np.asarray(spacing, dtype=float) + np.array(
        [1.5, -17.0, 9.0]
    )
    ornt = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt(tuple(orientation))
    )
    out = nib.orientations.apply_orientation(data, ornt)
    return np.ascontiguousarray(out), affine @ nib.orientations.inv_ornt_aff(ornt, data.shape[:3])


def _nifti(data: np.ndarray, affine: np.ndarray):
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def write_iseg(
    out: Path,
    n: int,
    images: dict[str, np.ndarray],
    label: np.ndarray | None,
    spacing: Sequence[float],
    *,
    layout: str = "iseg",
    orientation: str = "RAS",
    ext: str = ".nii.gz",
) -> None:
    """Write subject ``n`` (labels 0/10/150/250; ``None``: an unlabelled case) in a layout.

    ``"iseg"``: ``subject-{n}-{T1,T2,label}.hdr/.img`` (Analyze 7.5, trailing unit dimension,
    no orientation). ``"nnunet"``: ``images{Tr,Ts}/iSeg_{n:03d}_{0000,0001}`` (T1, T2) and
    ``labelsTr/iSeg_{n:03d}`` with nnU-Net's consecutive labels 0/1/2/3 (background, CSF, GM,
    WM), stored in the axis codes ``orientation``; :func:`write_dataset_json` names them.
    """
    if layout == "nnunet":
        case, split = f"iSeg_{n:03d}", "Tr" if label is not None else "Ts"
        for c, mod in enumerate(("T1", "T2")):
            _put(images[mod], out / f"images{split}" / f"{case}_{c:04d}{ext}", spacing, orientation)
        if label is not None:
            _put(_ISEG_TO_NNUNET[label], out / "labelsTr" / f"{case}{ext}", spacing, orientation)
        return
    import nibabel as nib

    affine = np.diag([*map(float, spacing), 1.0])
    files = dict(images) if label is None else {**images, "label": label}
    for mod, data in files.items():
        img = nib.AnalyzeImage(data[..., None], affine)  # iSeg files carry a trailing unit dim
        img.header.set_zooms((*map(float, spacing), 1.0))
        save_image(img, out / f"subject-{n}-{mod}.hdr")


def _put(data: np.ndarray, path: Path, spacing: Sequence[float], orientation: str) -> None:
    """Write RAS-ordered ``data`` as NIfTI in the axis codes ``orientation``."""
    arr, affine = _geometry(data, spacing, orientation)
    save_image(_nifti(arr, affine), path)


_ISEG_TO_NNUNET = np.zeros(256, dtype=np.uint8)  # iSeg's 0/10/150/250 -> nnU-Net's 0/1/2/3
_ISEG_TO_NNUNET[list(ISEG_LABELS)] = (1, 2, 3)

_BRATS_VALUES = {  # internal tumour codes 1 necrotic, 2 edema, 3 enhancing -> native labels
    "brats2020": (0, 1, 2, 4),
    "brats2021": (0, 1, 2, 4),
    "brats2023": (0, 1, 2, 3),
    "msd": (0, 2, 1, 3),
    "nnunet": (0, 2, 1, 3),
}


def write_brats(
    out: Path,
    layout: str,
    i: int,
    labelled: bool,
    images: dict[str, np.ndarray],
    tumour: np.ndarray,
    orientation: str,
    spacing: Sequence[float],
    ext: str,
    n_labelled: int,
) -> None:
    """Write case ``i`` (internal labels ``tumour``) in a BraTS, MSD or nnU-Net layout."""
    label = np.asarray(_BRATS_VALUES[layout], dtype=np.uint8)[tumour]

    def put(data: np.ndarray, path: Path) -> None:
        _put(data, path, spacing, orientation)

    if layout in ("brats2020", "brats2021", "brats2023"):
        if layout == "brats2020":
            case = (
                f"BraTS20_Training_{i + 1:03d}"
                if labelled
                else (f"BraTS20_Validation_{i - n_labelled + 1:03d}")
            )
            names = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"}
        elif layout == "brats2021":
            case = f"BraTS2021_{i:05d}"
            names = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"}
        else:
            case = f"BraTS-GLI-{i:05d}-000"
            names = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
        sep = "-" if layout == "brats2023" else "_"
        for mod, data in images.items():
            put(data, out / case / f"{case}{sep}{names[mod]}{ext}")
        if labelled:
            put(label, out / case / f"{case}{sep}seg{ext}")
        return

    split = "Tr" if labelled else "Ts"
    if layout == "msd":
        case = f"BRATS_{i + 1:03d}"
        stack = np.stack([images[m] for m in ("flair", "t1", "t1ce", "t2")], axis=-1)
        put(stack.astype(np.float32), out / f"images{split}" / f"{case}{ext}")
    else:
        case = f"BraTS_{i + 1:03d}"
        for c, mod in enumerate(("t1", "t1ce", "t2", "flair")):
            put(images[mod], out / f"images{split}" / f"{case}_{c:04d}{ext}")
    if labelled:
        put(label, out / "labelsTr" / f"{case}{ext}")


def write_dataset_json(
    out: Path,
    layout: str,
    cases: int,
    unlabeled: int,
    ext: str,
    first: int = 0,
    *,
    kind: str = "brats",
) -> None:
    """Write the ``dataset.json`` of an MSD (BraTS only) or nnU-Net (BraTS, iSeg) dataset of
    cases ``first + 1`` to ``first + cases + unlabeled`` (the first ``cases`` labelled)."""
    labelled = range(first + 1, first + cases + 1)
    if layout == "msd":
        meta = {
            "name": "BRATS",
            "description": "Synthetic brain tumour data in the MSD Task01 layout (invseg)",
            "tensorImageSize": "4D",
            "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
            "labels": {
                "0": "background",
                "1": "edema",
                "2": "non-enhancing tumor",
                "3": "enhancing tumour",
            },
            "numTraining": cases,
            "numTest": unlabeled,
            "training": [
                {
                    "image": f"./imagesTr/BRATS_{i:03d}{ext}",
                    "label": f"./labelsTr/BRATS_{i:03d}{ext}",
                }
                for i in labelled
            ],
            "test": [
                f"./imagesTs/BRATS_{i:03d}{ext}"
                for i in range(labelled.stop, first + cases + unlabeled + 1)
            ],
        }
    else:  # nnU-Net v2 lists no files: imagesTr/ and labelsTr/ say which cases there are
        meta = {**_NNUNET_META[kind], "numTraining": cases, "file_ending": ext}
    save_json(meta, out / "dataset.json")


_NNUNET_META = {  # nnU-Net v2's dataset.json of each kind, but for numTraining and file_ending
    "brats": {
        "name": "BraTSSynth",
        "channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"},
        "labels": {
            "background": 0,
            "whole tumor": [1, 2, 3],
            "tumor core": [2, 3],
            "enhancing tumor": 3,
        },
        "regions_class_order": [1, 2, 3],
    },
    "iseg": {
        "name": "iSegSynth",
        "channel_names": {"0": "T1", "1": "T2"},
        "labels": {"background": 0, "CSF": 1, "GM": 2, "WM": 3},
    },
}
