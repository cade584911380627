"""nnU-Net v2's own steps on a tiny dataset, on the CPU, run in a fresh process by the e2e test.

nnU-Net reads ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` once, when
``nnunetv2.paths`` is first imported, so each step runs here in a child process that the test
starts with those variables set to its temporary folders::

    python -m tests.nnunet.nnunet_steps plan DATASET_ID
    python -m tests.nnunet.nnunet_steps run DATASET_ID PLANS_NAME ITERATIONS INPUT OUTPUT

Each is nnU-Net's API as its command-line entry points call it, one process at a time
(``nnUNet_n_proc_DA=0``: single-threaded augmentation), with the sizes a CPU test affords set
on nnU-Net's objects, never by subclassing: ``plan`` is ``nnUNetv2_plan_and_preprocess -d ID
-c 3d_fullres -np 1 --verify_dataset_integrity`` with the fingerprint's intensity statistics
from 10^5 foreground voxels instead of 10^8; ``train`` is ``nnUNetv2_train ID 3d_fullres all
-p PLANS -device cpu`` with one epoch of ``ITERATIONS`` steps and one validation step;
``run`` is that training, then ``nnUNetv2_predict -i INPUT -o OUTPUT -d ID -c 3d_fullres -p
PLANS -f all -device cpu --disable_tta`` without worker processes.
"""

from __future__ import annotations

import os
import sys


def plan(dataset_id: int) -> None:
    from batchgenerators.utilities.file_and_folder_operations import join
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import (
        DatasetFingerprintExtractor,
    )
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        plan_experiment_dataset,
        preprocess_dataset,
    )
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    verify_dataset_integrity(join(nnUNet_raw, convert_id_to_dataset_name(dataset_id)), 1)
    extractor = DatasetFingerprintExtractor(dataset_id, 1, verbose=False)
    extractor.num_foreground_voxels_for_intensitystats = 1e5  # 10^8 takes 30 s on a CPU
    extractor.run(overwrite_existing=True)
    os.environ["nnUNet_n_proc_DA"] = "1"  # the planner sets torch's threads to it (0 fails)
    plan_experiment_dataset(dataset_id)
    os.environ["nnUNet_n_proc_DA"] = "0"
    preprocess_dataset(dataset_id, "nnUNetPlans", ["3d_fullres"], [1], show_progress_bar=False)


def train(dataset_id: int, plans_name: str, iterations: int) -> None:
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    trainer = get_trainer_from_args(
        str(dataset_id),
        "3d_fullres",
        "all",
        "nnUNetTrainer",
        plans_name,
        device=torch.device("cpu"),
    )  # nnUNetTrainer itself, as nnUNetv2_train builds it
    trainer.num_epochs = 1
    trainer.num_iterations_per_epoch = iterations
    trainer.num_val_iterations_per_epoch = 1
    trainer.run_training()


def predict(dataset_id: int, plans_name: str, source: str, target: str) -> None:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    predictor = nnUNetPredictor(
        use_mirroring=False, perform_everything_on_device=False, device=torch.device("cpu"),
        allow_tqdm=False,
    )  # fmt: skip
    folder = get_output_folder(dataset_id, "nnUNetTrainer", plans_name, "3d_fullres")
    predictor.initialize_from_trained_model_folder(folder, use_folds=("all",))
    os.makedirs(target, exist_ok=True)  # the sequential path does not create it
    predictor.predict_from_files_sequential(source, target, save_probabilities=False)


def main(argv: list[str]) -> None:
    step, dataset_id, *rest = argv
    if step == "plan":
        plan(int(dataset_id))
    elif step == "run":
        train(int(dataset_id), rest[0], int(rest[1]))
        predict(int(dataset_id), rest[0], *rest[2:])
    else:
        raise SystemExit(f"unknown step {step!r}: plan or run")


if __name__ == "__main__":  # nnU-Net's worker pools spawn: the module must import quietly
    main(sys.argv[1:])
