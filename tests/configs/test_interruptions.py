"""Interrupted and concurrent runs lose nothing: SIGKILL during training, two inference runs into one folder."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import REPO, bundle_command, kill_bundle_at, run_bundle

pytestmark = pytest.mark.slow

TRAINING = [
    "--demo_studies",
    "3",
    "--num_val",
    "1",
    "--val_interval",
    "1",
    "--samples_per_study",
    "2",
    "--num_workers",
    "0",
    "--max_epochs",
    "3",
]


def test_training_killed_mid_epoch_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    out, demo = tmp_path / "run", tmp_path / "phantom"
    args = [*TRAINING, "--demo_dir", str(demo), "--output_dir", str(out)]
    kill_bundle_at("Epoch: 2/3, Iter: 1/", "training", "train.json", *args)  # epoch 1 saved, epoch 2 under way
    killed = torch.load(out / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert killed["trainer"]["iteration"] == killed["trainer"]["epoch_length"] == 2  # epoch 1 only: 1 epoch lost
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left behind

    for flags in ([], ["--resume", "false"], ["--resume", "False"]):  # the earlier run is not overwritten by a new one
        fresh = run_bundle("training", "train.json", *args, *flags)
        assert fresh.returncode != 0, flags
        assert "checkpoint_last.pt: an earlier training run is in this output folder" in fresh.stdout + fresh.stderr

    resumed = run_bundle("training", "train.json", *args, "--resume", "true")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "epoch 1 of 3 done" in resumed.stdout
    assert "Epoch: 1/3" not in resumed.stdout and "Epoch: 2/3, Iter: 1/2" in resumed.stdout
    final = torch.load(out / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert final["trainer"]["iteration"] == 3 * 2
    assert not torch.equal(final["model"]["key_encoder.stem.0.weight"], killed["model"]["key_encoder.stem.0.weight"])
    assert 1 <= final["best"]["epoch"] <= 3
    best = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert best["model"].keys() == final["model"].keys()


def test_two_inference_runs_into_one_folder_both_finish(phantom_studies: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = bundle_command(
        "inference",
        "inference.json",
        "--dataset_dir",
        str(phantom_studies),
        "--output_dir",
        str(out),
        "--overwrite",
        "true",
    )
    procs = [
        subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    for study in sorted(p for p in phantom_studies.iterdir() if p.is_dir()):
        labels = np.asarray(nib.load(out / study.name / "label_4d.nii.gz").dataobj)  # complete and readable
        assert labels.shape == nib.load(study / "image.nii.gz").shape and set(np.unique(labels)) == {0, 1, 2, 3}
    assert not list(out.rglob(".*"))  # no temporary files left behind
